"""Shared helpers for the bench scripts.

Percentiles, one-line JSON output, CPU and RSS accounting of server processes
(optionally a whole process tree, e.g. the service's supervisor and its
workers), waiting for a port, and starting the baseline server in a
subprocess.

The bench scripts are run as plain files (``python bench/load.py``), so this
module is imported as ``common`` with ``bench/`` on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import psutil

BENCH_DIR = Path(__file__).resolve().parent
BASELINE_SCRIPT = BENCH_DIR / "baseline_server.py"


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


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the usual bind-to-0 trick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


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


def run_child(pipe, body: Callable[[], object]) -> None:
    """The life of a load-generating child process.

    Ctrl-C is the parent's to handle; the child dies with the parent (no
    orphaned load) and reports a crash on ``pipe`` instead of leaving the
    parent waiting. ``body`` may return a coroutine, which is run.
    """
    import load  # bench/load.py: its die_with_parent keeps it usable on its own

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    load.die_with_parent()
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
    """The JSON line ``bench/load.py`` printed last."""
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"load.py printed no result (exit {returncode}): {err[-2000:]}")
    return json.loads(lines[-1])
