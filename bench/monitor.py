"""Resource sampling while the suite runs, and the leak fit.

:class:`Monitor` samples every ``interval`` seconds, in a thread: for each
process of the service (by role name, ffmpeg captures included) its pid, CPU
seconds (user and system apart), RSS and open fds; for the host the CPU of
each core, memory in use, loopback network bytes and disk bytes written.
:func:`usage` turns a time range of samples into rates (CPU %, MB/s, Mbit/s);
:func:`growth` fits a line through each process's RSS and fds (MB/hour,
fds/hour), per pid so that a process restarted by a fault starts a new series.
"""

from __future__ import annotations

import threading
import time

import psutil

from .target import Target


class Monitor:
    def __init__(self, target: Target, interval: float = 1.0):
        self.target = target
        self.interval = interval
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._procs: dict[str, psutil.Process] = {}

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def sample(self) -> dict:
        self._procs = self.target.processes()  # every time: ffmpeg captures come and go
        procs = {}
        for name, proc in list(self._procs.items()):
            try:
                with proc.oneshot():
                    cpu = proc.cpu_times()
                    procs[name] = {
                        "pid": proc.pid,
                        "user": cpu.user,
                        "system": cpu.system,
                        "rss": proc.memory_info().rss,
                        "fds": proc.num_fds(),
                        "write_bytes": proc.io_counters().write_bytes,
                    }
            except psutil.Error:
                continue
        net = psutil.net_io_counters(pernic=True).get("lo")
        disk = psutil.disk_io_counters()
        return {
            "t": time.time(),
            "procs": procs,
            "cores": psutil.cpu_times(percpu=True),
            "mem_percent": psutil.virtual_memory().percent,
            "net_bytes": (net.bytes_sent + net.bytes_recv) if net else 0,
            "disk_write_bytes": disk.write_bytes if disk else 0,
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.sample())
            except Exception:  # noqa: BLE001  (a sampling hiccup must not end the run)
                pass
            self._stop.wait(self.interval)

    def between(self, t0: float, t1: float) -> list[dict]:
        return [s for s in self.samples if t0 <= s["t"] <= t1]


def _busy(core) -> float:
    return sum(core) - core.idle - getattr(core, "iowait", 0.0)


def usage(samples: list[dict]) -> dict:
    """CPU % per process (100 = one core; user/system split), per core, memory, network, disk over samples."""
    if len(samples) < 2:
        return {}
    a, b = samples[0], samples[-1]
    dt = b["t"] - a["t"]
    procs = {}
    for name, now in b["procs"].items():
        before = a["procs"].get(name)
        if before is None or before["pid"] != now["pid"]:
            continue
        procs[name] = {
            "cpu_percent": round(100 * (now["user"] + now["system"] - before["user"] - before["system"]) / dt, 1),
            "user_percent": round(100 * (now["user"] - before["user"]) / dt, 1),
            "system_percent": round(100 * (now["system"] - before["system"]) / dt, 1),
            "rss_mb": round(now["rss"] / 2**20, 1),
            "rss_max_mb": round(max(s["procs"].get(name, {}).get("rss", 0) for s in samples) / 2**20, 1),
            "fds": now["fds"],
        }
    cores = []
    for ca, cb in zip(a["cores"], b["cores"]):
        total = sum(cb) - sum(ca)
        cores.append(round(100 * (_busy(cb) - _busy(ca)) / total, 1) if total > 0 else 0.0)
    service_cpu = sum(p["cpu_percent"] for p in procs.values())
    written = sum(
        now["write_bytes"] - a["procs"][name]["write_bytes"]
        for name, now in b["procs"].items()
        if name in a["procs"] and a["procs"][name]["pid"] == now["pid"]
    )
    service_rss = sum(p["rss_mb"] for p in procs.values())
    return {
        "seconds": round(dt, 1),
        "processes": procs,
        "service_cpu_percent": round(service_cpu, 1),
        "service_cpu_percent_of_host": round(service_cpu / max(len(cores), 1), 1),
        "host_cpu_percent_per_core": cores,
        "host_cpu_percent": round(sum(cores) / max(len(cores), 1), 1),
        "mem_percent_max": max(s["mem_percent"] for s in samples),
        "service_rss_mb": round(service_rss, 1),
        "service_rss_percent": round(100 * service_rss * 2**20 / psutil.virtual_memory().total, 2),
        "service_disk_write_mb_s": round(written / dt / 1e6, 2),
        "net_mbit_s": round((b["net_bytes"] - a["net_bytes"]) * 8 / dt / 1e6, 2),
        "disk_write_mb_s": round((b["disk_write_bytes"] - a["disk_write_bytes"]) / dt / 1e6, 2),
    }


def fit(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 when undefined)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0


def growth(samples: list[dict], warmup_fraction: float = 0.2, limit_mb_h: float = 5.0) -> dict:
    """Per process: RSS MB/hour and fds/hour fitted after the warm-up, and a verdict.

    The first ``warmup_fraction`` of the run is left out (caches, pools and
    allocator arenas fill up then). A process whose pid changed (restarted by
    a fault) is fitted over its longest series. ffmpeg captures come and go
    with recordings and are not fitted.
    """
    if len(samples) < 3:
        return {}
    t_from = samples[0]["t"] + warmup_fraction * (samples[-1]["t"] - samples[0]["t"])
    series: dict[tuple[str, int], list[tuple[float, int, int]]] = {}
    for s in samples:
        if s["t"] < t_from:
            continue
        for name, p in s["procs"].items():
            if not name.startswith("ffmpeg"):
                series.setdefault((name, p["pid"]), []).append((s["t"], p["rss"], p["fds"]))
    best: dict[str, list] = {}
    for (name, _), points in series.items():
        if len(points) > len(best.get(name, [])):
            best[name] = points
    out = {}
    for name, points in sorted(best.items()):
        hours = [(t - points[0][0]) / 3600 for t, _, _ in points]
        minutes = hours[-1] * 60
        mb_h = fit(hours, [rss / 2**20 for _, rss, _ in points])
        fds_h = fit(hours, [fds for _, _, fds in points])
        out[name] = {
            "rss_mb_per_hour": round(mb_h, 2),
            "fds_per_hour": round(fds_h, 1),
            "rss_start_mb": round(points[0][1] / 2**20, 1),
            "rss_end_mb": round(points[-1][1] / 2**20, 1),
            "fds_start": points[0][2],
            "fds_end": points[-1][2],
            "minutes": round(minutes, 1),
            # Under 5 minutes a page or two of RSS extrapolates to MB/hour: no verdict from that.
            "verdict": "too short" if minutes < 5 else ("growing" if mb_h > limit_mb_h else "flat"),
        }
    return out
