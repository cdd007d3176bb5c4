"""Running timed phases of the mix: the live progress line, and the mixes themselves."""

from __future__ import annotations

import sys
import time

from . import walltime
from .mix import MixClients, summarize
from .monitor import Monitor, usage


def read_mix(cameras: int) -> list[tuple[str, dict | None, float]]:
    """What many viewers do: mostly status and lists, some capabilities and file lists, a few pings."""
    mix: list[tuple[str, dict | None, float]] = [
        ("get_camera_status", {"device": f"camera{i}"}, 40 / cameras) for i in range(cameras)
    ]
    mix += [
        ("get_camera_list", None, 20),
        ("list_recordings", {"limit": 20}, 10),
        ("list_snapshots", {"limit": 20}, 5),
        ("get_streams", None, 5),
        ("get_camera_capabilities", {"device": "camera0"}, 10),
        ("get_server_info", None, 5),
        ("ping", None, 5),
    ]
    return mix


STATUS_MIX = [("get_camera_status", {"device": "camera0"}, 1.0)]
WORKER_MIX = [("get_camera_capabilities", {"device": "camera0"}, 1.0)]


class Progress:
    """One live line on stderr: category/phase, elapsed/total, current req/s and P95 (ms)."""

    def __init__(self, category: str, quiet: bool = False):
        self.category = category
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._last_print = 0.0

    def show(self, phase: str, elapsed: float, total: float, rps: float | None, p95: float | None, errors: int) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if not self.tty and now - self._last_print < 5:
            return
        self._last_print = now
        line = (
            f"[{self.category}] {phase:<28} {elapsed:5.0f}/{total:<5.0f}s "
            f"{(rps or 0):>8.0f} req/s  P95 {'-' if p95 is None else f'{p95:.1f}':>6} ms  errors {errors}"
        )
        sys.stderr.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        sys.stderr.flush()

    def note(self, text: str) -> None:
        if self.quiet:
            return
        sys.stderr.write(("\r\x1b[K" if self.tty else "") + f"[{self.category}] {text}\n")
        sys.stderr.flush()


def run_phase(
    clients: MixClients,
    monitor: Monitor | None,
    progress: Progress,
    name: str,
    mode: str,
    connections: int,
    seconds: float,
    rate: float = 0.0,
    depth: int | None = None,
    settle: float = 1.0,
    stop_when=None,
) -> dict:
    """Run one phase for ``seconds`` (after ``settle`` unmeasured seconds); its summary and resource usage.

    ``stop_when(last_second_summary)`` may end the phase early (True).
    """
    with walltime.spent(walltime.MEASURED):
        return _run_phase(clients, monitor, progress, name, mode, connections, seconds, rate, depth, settle, stop_when)


def _run_phase(clients, monitor, progress, name, mode, connections, seconds, rate, depth, settle, stop_when) -> dict:
    # Paced: a few requests may queue on a connection (an open loop sheds only when the server is behind).
    depth = depth or (1 if mode == "closed" else 8)
    clients.phase(name, mode, connections, rate, depth)
    t_start = time.time()
    t_from = t_start + settle
    t_end = t_from + seconds
    while (now := time.time()) < t_end:
        time.sleep(min(1.0, t_end - now))
        last = summarize(clients.since(time.time() - 1.0, name), clients.names, 1.0)
        progress.show(name, time.time() - t_start, settle + seconds, last["rps"], last["p95_ms"], last["errors"])
        if stop_when is not None and time.time() > t_from + 1 and stop_when(last):
            break
    t_to = time.time()
    windows = [w for w in clients.since(t_from, name) if w.t <= t_to + 0.5]
    result = summarize(windows, clients.names, max(t_to - t_from, 1e-3))
    result.update({"phase": name, "mode": mode, "connections": connections, "offered_rps": rate or None})
    if monitor is not None:
        result["resources"] = usage(monitor.between(t_from, t_to))
    result["window"] = [t_from, t_to]
    return result


def cpu_us_per_request(phase: dict) -> float | None:
    """Server CPU (every role process) per answered request, from the phase's resource usage.

    The operators' recordings' ffmpeg processes are left out: they encode
    video whatever the request rate, and one counts only when it lived through
    the whole window (a pid per name), so including them made the figure
    depend on when the operators happened to restart their recordings.
    """
    res = phase.get("resources") or {}
    if not res or not phase.get("rps"):
        return None
    roles = [p["cpu_percent"] for name, p in res["processes"].items() if not name.startswith("ffmpeg")]
    return round(sum(roles) / 100 / phase["rps"] * 1e6, 1)
