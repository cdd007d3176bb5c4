"""Resource sampling while the suite runs, and the leak fit.

:class:`Monitor` samples every ``interval`` seconds, in a thread: for each
process of the service (by role name, ffmpeg captures included) its pid, CPU
seconds (user and system apart), RSS and open fds; for the host the CPU of
each core, memory in use, loopback network bytes and disk bytes written.
:func:`usage` turns a time range of samples into rates (CPU %, MB/s, Mbit/s);
:mod:`bench.growth` turns them into the leak verdict (each sample carries
every process's start time for it).
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
                        "started": proc.create_time(),
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
