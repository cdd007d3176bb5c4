"""Shared helpers for the bench scripts.

Percentiles, one-line JSON output, CPU and RSS accounting of server processes
(optionally a whole process tree, e.g. the service's supervisor and its
workers), waiting for a port, and starting the baseline server in a
subprocess.

The one copy of each: ``percentile``, ``die_with_parent``, the raised rate
limits every bench run uses (``FAST_LIMITS``), the way to run another bench
module in a subprocess (``module_cmd``).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import psutil

from tests.harness import free_port  # noqa: F401  (re-exported: bench's callers use common.free_port)

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
BASELINE_SCRIPT = BENCH_DIR / "baseline_server.py"
NS = 1_000_000_000
#: Raised limits: every client of a bench run shares one identity (the token's subject).
FAST_LIMITS = {"security.rate_limit": 1000000, "security.rate_burst": 1000000}


# ---------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence (None if empty).

    Nearest rank always returns an observed value, so p100 is the maximum and
    percentiles of the same data are ordered.
    """
    n = len(sorted_values)
    if n == 0:
        return None
    rank = max(1, math.ceil(p / 100.0 * n))
    return sorted_values[min(rank, n) - 1]


def percentiles(values: Iterable[float], ps: Sequence[float] = (50, 95, 99, 100)) -> dict:
    """{p: value} for each p in ps (values need not be sorted)."""
    ordered = sorted(values)
    return {p: percentile(ordered, p) for p in ps}


def ms(ns: float | None) -> float | None:
    """Nanoseconds to milliseconds, 3 decimals (None stays None)."""
    return None if ns is None else round(ns / 1e6, 3)


def latency_summary(values_ns: Iterable[int]) -> dict:
    """{"n", "p50_ms", "p95_ms", "p99_ms", "max_ms"} of latencies in nanoseconds."""
    values = list(values_ns)
    pct = percentiles(values, (50, 95, 99, 100))
    return {
        "n": len(values),
        "p50_ms": ms(pct[50]),
        "p95_ms": ms(pct[95]),
        "p99_ms": ms(pct[99]),
        "max_ms": ms(pct[100]),
    }


def print_json(obj) -> None:
    """Print obj as ONE JSON line on stdout and flush (scripts parse this)."""
    sys.stdout.write(json.dumps(obj, separators=(", ", ": ")) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------- process accounting


def processes(pids: Iterable[int], tree: bool = False) -> list[psutil.Process]:
    """psutil.Process objects for pids (and all their descendants if tree).

    Processes that vanished are skipped: a worker may restart mid-run.
    """
    seen: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            seen[proc.pid] = proc
            if tree:
                for child in proc.children(recursive=True):
                    seen[child.pid] = child
        except psutil.Error:
            continue
    return list(seen.values())


def cpu_snapshot(pids: Iterable[int], tree: bool = False) -> dict:
    """{(pid, create_time): user+system seconds} for each live process.

    Keyed by create_time too so that a recycled pid is not mistaken for the
    process it replaced.
    """
    snap = {}
    for proc in processes(pids, tree):
        try:
            with proc.oneshot():
                t = proc.cpu_times()
                snap[(proc.pid, proc.create_time())] = t.user + t.system
        except psutil.Error:
            continue
    return snap


def cpu_delta(before: dict, after: dict) -> float:
    """CPU seconds spent between two snapshots by the processes alive at the end.

    A process that started in between counts fully; one that died in between
    is lost (its last CPU time is unknowable), which only happens on crashes.
    """
    return sum(v - before.get(k, 0.0) for k, v in after.items())


def cpu_seconds(pids: Iterable[int], tree: bool = False) -> float:
    """Total user+system CPU seconds used so far by pids (or their trees)."""
    return sum(cpu_snapshot(pids, tree).values())


def absolute_url(base: str, url: str) -> str:
    """A listing's ``download_url`` (absolute, or a path on the API's host) as an absolute URL."""
    return url if url.startswith(("http://", "https://")) else base + url


def cpu_ns(pid: int) -> int | None:
    """CPU time of every thread of ``pid`` in nanoseconds (``/proc/PID/task/*/schedstat``).

    psutil's cpu_times tick at 10 ms; the scheduler's own account is exact,
    which a per-call figure over a few hundred calls needs.
    """
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    except OSError:
        return None
    return total


def host_busy() -> float:
    """CPU seconds the whole host spent not idle so far (all cores)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def rss_bytes(pids: Iterable[int], tree: bool = False) -> int:
    """Sum of resident set sizes of pids (or their trees).

    Summing RSS counts pages shared between processes (Python runtime, shared
    libraries) once per process, so for a multi-process service this is an
    upper bound of its real memory use.
    """
    total = 0
    for proc in processes(pids, tree):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


# ------------------------------------------------------------------- servers


def wait_port(host: str, port: int, timeout: float = 10.0) -> bool:
    """Wait until host:port accepts TCP connections; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def start_baseline(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> subprocess.Popen:
    """Start bench/baseline_server.py in a subprocess, return once it listens.

    The caller owns the process: terminate() it and wait() when done.
    """
    proc = subprocess.Popen(
        [sys.executable, str(BASELINE_SCRIPT), "--host", host, "--port", str(port)],
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"baseline server exited with {proc.returncode}")
        if wait_port(host, port, timeout=0.2):
            return proc
    proc.kill()
    proc.wait()
    raise RuntimeError(f"baseline server did not listen on {host}:{port} within {timeout}s")


def module_cmd(module: str, *args: str) -> list[str]:
    """argv to run ``python -m bench.MODULE ARGS`` (run it with ``cwd=REPO``)."""
    return [sys.executable, "-m", f"bench.{module}", *args]


def raise_nofile_limit() -> int:
    """Raise the soft fd limit to the hard one (10k connections); returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphan load)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: pipe EOF still ends the child when it next waits


def on_sigterm(signum, frame):
    """SIGTERM handler of the bench commands: the same clean-up path as Ctrl-C."""
    raise KeyboardInterrupt


def run_child(pipe, body: Callable[[], object]) -> None:
    """The life of a load-generating child process.

    Ctrl-C is the parent's to handle; the child dies with the parent (no
    orphaned load) and reports a crash on ``pipe`` instead of leaving the
    parent waiting. ``body`` may return a coroutine, which is run.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent()
    if os.getppid() == 1:  # the parent died before prctl
        return
    try:
        result = body()
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    except (EOFError, BrokenPipeError):
        pass  # the parent is gone
    except Exception as exc:
        pipe.send(("fatal", repr(exc)))


def load_result(out: str, err: str, returncode: int | None) -> dict:
    """The JSON line ``python -m bench.load`` printed last."""
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"load.py printed no result (exit {returncode}): {err[-2000:]}")
    return json.loads(lines[-1])
