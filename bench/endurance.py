"""Category ``endurance``: the steady mix for ``duration`` seconds, optionally with faults.

The load's mix (viewers paced at 10 req/s each, an operator per camera
recording and snapshotting, downloads, hot-plugs, get_metrics polling) runs
for the whole duration while every process's RSS and open fds are sampled
every 2 s. Reported:

* growth: per process a linear fit of RSS (MB/hour) and fds (per hour) after
  its warm-up (the first 2 minutes after it or the load started), and per
  role a verdict that also compares each restarted process with its
  predecessor at the same age (:mod:`bench.growth`; growing above 5 MB/hour);
* latency drift: P50/P95 of the first tenth against the last tenth;
* hung calls (unanswered after 30 s) and errors;
* every recording file in the recordings folder checked with ffmpeg
  (demuxed end to end; the first 20 also decoded).

``faults=True`` injects one fault every ``fault_every`` seconds, in turn: a
worker SIGKILLed, a worker SIGSTOPped for 20 s (then SIGCONT if the
supervisor has not replaced it), a capture ffmpeg killed, the gateway
SIGKILLed. Each fault's "healed after" is the time until the role runs a
new process (or ffmpeg captures are back to their count).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import walltime
from .actors import Actors
from .growth import LIMIT_MB_H, MIN_FIT_S, WARMUP_S, describe, growth
from .mix import MixClients, per_second, summarize
from .monitor import Monitor
from .phases import Progress, read_mix, run_phase
from .target import Target

FAULTS = [
    ("SIGKILL", "files-0"),
    ("SIGSTOP 20 s", "recording-0"),
    ("kill ffmpeg", "ffmpeg"),
    ("SIGKILL", "gateway-0"),
    ("SIGKILL", "discovery-0"),
    ("SIGSTOP 20 s", "files-0"),
    ("SIGKILL", "recording-0"),
]


class Injector(threading.Thread):
    def __init__(self, target: Target, every: float, progress: Progress, duration: float = float("inf")):
        super().__init__(daemon=True)
        self.target, self.every, self.progress = target, every, progress
        self.stop = threading.Event()
        self.log: list[dict] = []
        self.t0 = time.time()
        # No new fault in the run's last 10 s: each must have time to heal while the mix still runs.
        self.last_at = self.t0 + duration - 10

    def run(self) -> None:
        i = 0
        while not self.stop.wait(self.every if i else self.every / 2):
            if time.time() > self.last_at:
                return
            fault, role = FAULTS[i % len(FAULTS)]
            i += 1
            try:
                self.log.append(self.inject(fault, role))
            except Exception as exc:  # noqa: BLE001  (a fault that could not be injected is reported, not fatal)
                self.log.append(
                    {"at_s": round(time.time() - self.t0), "fault": fault, "target": role, "error": repr(exc)}
                )

    def _wait_new(self, role: str, old: int, limit: float = 30.0) -> float | None:
        t0 = time.time()
        while time.time() - t0 < limit:  # bounded; the run's end waits for it (join), so healing is seen
            pid = self.target.role_pids().get(role)
            if pid and pid != old:
                return round(time.time() - t0, 2)
            time.sleep(0.05)
        return None

    def inject(self, fault: str, role: str) -> dict:
        at = round(time.time() - self.t0, 1)
        self.progress.note(f"fault: {fault} {role}")
        if role == "ffmpeg":
            procs = {n: p for n, p in self.target.processes().items() if n.startswith("ffmpeg")}
            if not procs:
                return {"at_s": at, "fault": fault, "target": "ffmpeg (none running)", "healed_s": None}
            victim = next(iter(procs.values()))
            count = len(procs)
            victim.kill()
            t0 = time.time()
            healed = None
            while time.time() - t0 < 30:
                now = [p.pid for n, p in self.target.processes().items() if n.startswith("ffmpeg")]
                if len(now) >= count and victim.pid not in now:
                    healed = round(time.time() - t0, 2)
                    break
                time.sleep(0.05)
            return {"at_s": at, "fault": fault, "target": f"ffmpeg pid {victim.pid}", "healed_s": healed}
        pid = self.target.role_pids().get(role)
        if pid is None:
            return {"at_s": at, "fault": fault, "target": f"{role} (not running)", "healed_s": None}
        if fault == "SIGKILL":
            os.kill(pid, signal.SIGKILL)
            return {"at_s": at, "fault": fault, "target": f"{role} pid {pid}", "healed_s": self._wait_new(role, pid)}
        os.kill(pid, signal.SIGSTOP)
        healed = self._wait_new(role, pid, 20.0)  # the supervisor may replace a frozen worker
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        return {
            "at_s": at,
            "fault": fault,
            "target": f"{role} pid {pid}",
            "healed_s": healed,
            "replaced": healed is not None,
        }


def check_recordings(folder: Path | None, made: list[str] | None = None) -> dict:
    """Every recording file (or those named in ``made``): demuxed end to end by ffmpeg (the first 20 also decoded).

    Two ffmpeg processes at a time (one per core of the 2-core reference machine).
    """
    if folder is None or not folder.exists():
        return {"checked": 0, "playable": 0, "bad": [], "note": "recordings folder not reachable (--url)"}
    import imageio_ffmpeg

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".mp4", ".mkv") and p.is_file())
    if made is not None:
        wanted = set(made)
        files = [p for p in files if p.name in wanted or str(p.relative_to(folder)) in wanted]

    def check(item: tuple[int, Path]) -> str | None:
        i, path = item
        mode = [] if i < 20 else ["-c", "copy"]
        done = subprocess.run(
            [ffmpeg, "-v", "error", "-nostdin", "-i", str(path), *mode, "-f", "null", "-"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode == 0 and "Invalid" not in done.stderr and "moov atom not found" not in done.stderr:
            return None
        return f"{path.name}: {done.stderr.strip()[:160]}"

    with ThreadPoolExecutor(2) as pool:
        verdicts = list(pool.map(check, enumerate(files)))
    bad = [v for v in verdicts if v is not None]
    return {"checked": len(files), "playable": len(files) - len(bad), "bad": bad}


def report_lines(en: dict) -> list[str]:
    """The endurance figures to report, as ``python -m bench endurance`` prints them."""
    rule = en.get("growth_rule") or {}
    lines = [
        f"endurance: {en.get('duration_s')} s of the steady mix, {en.get('clients')} clients, "
        f"{en.get('cameras')} cameras; growth fitted per process after its warm-up "
        f"({rule.get('warmup_s')} s after it or the load started; a verdict needs {rule.get('min_fit_s')} s "
        f"fitted; limit {rule.get('limit_mb_h')} MB/hour; times are s into the mix); "
        f"load average at the end {en.get('loadavg_end')}"
    ]
    lines += describe(en.get("growth") or {})
    d, p = en.get("drift") or {}, en.get("playable") or {}
    lines.append(
        f"  latency drift: P95 {d.get('first_p95_ms')} ms (first tenth) -> {d.get('last_p95_ms')} ms (last tenth); "
        f"hung {en.get('hung')}; recordings {p.get('made')} made, {p.get('checked')} checked, "
        f"{p.get('playable')} playable"
    )
    for f in en.get("faults") or []:
        lines.append(
            f"  fault at {f.get('at_s')} s: {f.get('fault')} of {f.get('target')}, healed {f.get('healed_s')} s"
        )
    return lines


def drift(windows, names) -> dict:
    if not windows:
        return {}
    t0, t1 = windows[0].t, windows[-1].t
    tenth = (t1 - t0) / 10
    first = summarize([w for w in windows if w.t <= t0 + tenth], names)
    last = summarize([w for w in windows if w.t >= t1 - tenth], names)
    return {
        "first_p50_ms": first["p50_ms"],
        "first_p95_ms": first["p95_ms"],
        "last_p50_ms": last["p50_ms"],
        "last_p95_ms": last["p95_ms"],
        "p95_ratio": round(last["p95_ms"] / first["p95_ms"], 2) if first["p95_ms"] and last["p95_ms"] else None,
    }


def run(
    target: Target,
    duration: float,
    cameras: int,
    clients: int = 50,
    progress: Progress | None = None,
    faults: bool = False,
    fault_every: float = 60.0,
) -> dict:
    progress = progress or Progress("endurance")
    monitor = Monitor(target, interval=2.0).start()
    actors = Actors(target, operators=cameras)
    mix = MixClients(target.url, target.token, read_mix(cameras), hang_s=30)
    injector = Injector(target, fault_every, progress, duration) if faults and target.local else None
    try:
        if injector:
            injector.start()
        steady = run_phase(
            mix, monitor, progress, "steady mix", "paced", clients, duration, rate=clients * 10.0, settle=0
        )
        windows = mix.since(steady["window"][0], "steady mix")
    finally:
        if injector:
            injector.stop.set()
            injector.join(40)
        mix.stop()
        ops = actors.finish(120)
        monitor.stop()
    progress.note(f"checking {len(ops['recordings'])} recordings with ffmpeg")
    folder = target.state_dir / "recordings" if target.state_dir else None
    with walltime.spent(walltime.FFMPEG):
        playable = check_recordings(folder, ops["recordings"])
    playable["made"] = len(ops["recordings"])
    t_first = monitor.samples[0]["t"] if monitor.samples else 0
    rss_series: dict[str, list] = {}
    pids: dict[str, int] = {}
    for s in monitor.samples[::5]:
        for name, p in s["procs"].items():
            if not name.startswith("ffmpeg"):
                points = rss_series.setdefault(name, [])
                if pids.setdefault(name, p["pid"]) != p["pid"]:
                    pids[name] = p["pid"]
                    points.append((round(s["t"] - t_first, 1), None))  # a restart: a gap in the plotted line
                points.append((round(s["t"] - t_first, 1), round(p["rss"] / 2**20, 1)))
    steady.pop("resources", None)
    return {
        "duration_s": duration,
        "clients": clients,
        "cameras": cameras,
        "steady": {k: v for k, v in steady.items() if k != "methods"},
        "methods": steady["methods"],
        "endpoints": {**steady["methods"], **{op: row for op, row in ops["lat_summary"].items()}},
        "growth": growth(monitor.between(*steady["window"]), load_start=steady["window"][0]),
        "growth_rule": {"warmup_s": WARMUP_S, "min_fit_s": MIN_FIT_S, "limit_mb_h": LIMIT_MB_H},
        "rss_series": rss_series,
        "drift": drift(windows, mix.names),
        "series": per_second(windows, mix.names),
        "playable": playable,
        "actor_errors": ops["errors"],
        "faults": injector.log if injector else None,
        "hung": steady["hung"] + sum(v for k, v in ops["errors"].items() if k.endswith(":hung")),
        "samples": len(monitor.samples),
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
