"""psutil figures of every supervised process, and the process table built from them.

:func:`sample` runs in a thread every ``runtime.sample_interval`` (CPU% needs
two readings, so a process's first CPU% is 0.0). :func:`process_table` is what
``camservice status``, ``get_metrics`` and ``/metrics`` show: every process the
supervisor knows, at once, with the figures it has. A process started since
the last sample gets its RSS read on the spot rather than being left out or
shown as zero (issue 11 §8: ``processes: []`` for the first two seconds).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from .watcher import Watcher

_FIGURES = ("cpu_percent", "rss_bytes", "cpu_seconds", "children_rss_bytes", "children_cpu_seconds")


def sample(watchers: Iterable[Watcher], cache: dict[int, psutil.Process]) -> tuple[dict[str, dict], dict]:
    """CPU% and RSS of every process and its children (ffmpeg); ``cache`` keeps psutil handles."""
    rows: dict[str, dict] = {}
    for watcher in list(watchers):
        pid = watcher.pid
        if pid is None:
            continue
        try:
            proc = cache.get(pid)
            if proc is None:
                proc = cache[pid] = psutil.Process(pid)
                proc.cpu_percent(None)
            with proc.oneshot():
                cpu = proc.cpu_percent(None)
                rss = proc.memory_info().rss
                times = proc.cpu_times()
            children_rss = children_cpu = 0.0
            for child in proc.children(recursive=True):
                try:
                    children_rss += child.memory_info().rss
                    ct = child.cpu_times()
                    children_cpu += ct.user + ct.system
                except psutil.Error:
                    pass
            rows[watcher.key] = {
                "pid": pid,
                "cpu_percent": round(cpu, 1),
                "rss_bytes": rss,
                "cpu_seconds": times.user + times.system,
                "children_rss_bytes": int(children_rss),
                "children_cpu_seconds": children_cpu,
            }
        except psutil.Error:
            continue
    memory = psutil.virtual_memory()
    host = {
        "cpu_percent": psutil.cpu_percent(None),
        "per_cpu_percent": psutil.cpu_percent(None, percpu=True),
        "memory_percent": memory.percent,
        "memory_total_bytes": memory.total,
        "memory_used_bytes": memory.total - memory.available,
        "load": list(os.getloadavg()),
    }
    net = psutil.net_io_counters()
    if net is not None:
        host["net_bytes_sent"], host["net_bytes_recv"] = net.bytes_sent, net.bytes_recv
    return rows, host


def _quick(pid: int) -> dict:
    """What can be read at once about a process not sampled yet."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            times = proc.cpu_times()
            return {"rss_bytes": proc.memory_info().rss, "cpu_seconds": times.user + times.system}
    except psutil.Error:
        return {}


def process_table(watchers: Iterable[Watcher], samples: dict[str, dict]) -> list[dict]:
    table = []
    for watcher in watchers:
        row = watcher.describe()
        pid = watcher.pid
        figures = samples.get(watcher.key, {}) if pid else {}
        if pid and figures.get("pid") != pid:
            figures = _quick(pid)
        for name in _FIGURES:
            row[name] = figures.get(name, 0.0 if "cpu" in name else 0)
        table.append(row)
    return table


def stopped(pid: int) -> bool:
    """True when the kernel has ``pid`` stopped (SIGSTOP, or a tracer): state T or t."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return False
    # The command name is in parentheses and may hold spaces: the state follows the last ')'.
    return text[text.rfind(b")") + 2 : text.rfind(b")") + 3] in (b"T", b"t")
