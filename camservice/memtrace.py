"""Memory-growth tracing for one process: a debug knob, off unless ``MEMTRACE_DIR`` is set.

The endurance bench fits each process's RSS over time; when a process
grows, this says where. With ``MEMTRACE_DIR=/some/dir`` in the service's
environment every service process (:func:`start_from_env`, called at boot) starts
``tracemalloc`` (one frame per allocation, to keep its cost down) and a
daemon thread that appends one JSON line every ``MEMTRACE_EVERY`` seconds
(default 60) to ``DIR/NAME-PID.jsonl``:

* ``rss_kb``/``anon_kb``/``file_kb``: ``/proc/self/smaps_rollup`` (anonymous
  memory is the heap; file-backed is libraries and mapped files);
* ``py_kb``: what Python's allocators hold (``tracemalloc``), and ``top``: the
  ten source lines whose allocations grew most since the first line;
* ``sqlite_kb``/``sqlite_peak_kb``: ``sqlite3_memory_used()`` of the process's
  libsqlite3 (page caches, statements, schema);
* ``malloc``: glibc's ``mallinfo2()`` (``arena`` = main-arena bytes from
  ``brk``, ``mmap`` = bytes in mmapped chunks, ``used``/``free`` = bytes in
  use / free inside the arenas, all arenas summed), and ``threads``;
* whatever ``extra()`` returns (the files worker: its SQLite connections).

``MEMTRACE_FRAMES=N`` keeps N frames per allocation (default 1) and adds
``stacks``: the five tracebacks that grew most, innermost frame last.
``MEMTRACE_TYPES=1`` adds ``types``: the ten types whose live objects (as
the garbage collector tracks them) grew most in number since the first
line (after a full collection: live objects, not garbage waiting for one),
tuples by length and first items: what holds memory, where tracemalloc
says only where it was made.
``MEMTRACE_TRIM=1`` calls ``malloc_trim(0)`` before each line: RSS that
drops then was free memory glibc kept, not live data.

The environment variable names do not start with ``CAMSERVICE_`` on
purpose: those are configuration overrides, and the test harness and the
bench strip them from the service's environment.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import linecache
import os
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import allocator

DIR_ENV = "MEMTRACE_DIR"
EVERY_ENV = "MEMTRACE_EVERY"
TRIM_ENV = "MEMTRACE_TRIM"
FRAMES_ENV = "MEMTRACE_FRAMES"
TYPES_ENV = "MEMTRACE_TYPES"


def _sqlite() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
    except OSError:
        return None


def smaps_rollup() -> dict[str, int]:
    """``/proc/self/smaps_rollup`` in kB (Linux), ``{}`` elsewhere."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/smaps_rollup") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        pass
    return out


class MemTrace(threading.Thread):
    def __init__(self, path: Path, every: float, trim: bool, extra: Callable[[], dict] | None):
        super().__init__(daemon=True, name="memtrace")
        self.path, self.every, self.trim, self.extra = path, every, trim, extra
        self.libc = allocator.libc()
        self.sqlite = _sqlite()
        if self.sqlite is not None:
            self.sqlite.sqlite3_memory_used.restype = ctypes.c_int64
            self.sqlite.sqlite3_memory_highwater.restype = ctypes.c_int64
        self.first: tracemalloc.Snapshot | None = None
        self.first_types: Counter[str] | None = None
        self.t0 = time.time()

    def line(self) -> dict:
        if self.trim:
            self.libc.malloc_trim(0)
        rollup = smaps_rollup()
        current, peak = tracemalloc.get_traced_memory()
        # Leave out tracemalloc's own and linecache's (the source lines that formatting the stacks reads).
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, linecache.__file__)]
        )
        if self.first is None:
            self.first = snap
        top = [
            {"where": str(d.traceback[0]), "kb": round(d.size / 1024, 1), "grew_kb": round(d.size_diff / 1024, 1)}
            for d in snap.compare_to(self.first, "lineno")[:10]
        ]
        mi = self.libc.mallinfo2()
        out: dict[str, Any] = {
            "t_s": round(time.time() - self.t0),
            "rss_kb": rollup.get("Rss"),
            "anon_kb": rollup.get("Anonymous"),
            "file_kb": (rollup.get("Rss", 0) - rollup.get("Anonymous", 0)) if rollup else None,
            "py_kb": round(current / 1024),
            "py_peak_kb": round(peak / 1024),
            "malloc": {
                "arena_kb": mi.arena // 1024,
                "mmap_kb": mi.hblkhd // 1024,
                "used_kb": mi.uordblks // 1024,
                "free_kb": mi.fordblks // 1024,
                "top_free_kb": mi.keepcost // 1024,
            },
            "threads": threading.active_count(),
            "os_threads": len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None,
            "top": top,
        }
        if tracemalloc.get_traceback_limit() > 1:
            out["stacks"] = [
                {"grew_kb": round(d.size_diff / 1024, 1), "count_diff": d.count_diff, "stack": d.traceback.format()}
                for d in snap.compare_to(self.first, "traceback")[:5]
            ]
        if os.environ.get(TYPES_ENV) == "1":
            gc.collect()  # live objects only, not the cycles the next collection frees
            counts = Counter(_kind(o) for o in gc.get_objects())
            if self.first_types is None:
                self.first_types = counts
            counts.subtract(self.first_types)
            out["types"] = dict(counts.most_common(10))
        if self.sqlite is not None:
            out["sqlite_kb"] = self.sqlite.sqlite3_memory_used() // 1024
            out["sqlite_peak_kb"] = self.sqlite.sqlite3_memory_highwater(0) // 1024
        if self.extra is not None:
            out.update(self.extra())
        return out

    def run(self) -> None:
        while True:
            try:
                record = self.line()
            except Exception as exc:  # noqa: BLE001  (a debug aid never ends its process)
                record = {"error": repr(exc)}
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            time.sleep(self.every)


_tracer: MemTrace | None = None


def _kind(obj: object) -> str:
    """A type name; a tuple's says its length and what its first items are (tuples are most objects)."""
    if type(obj) is tuple:
        return f"tuple/{len(obj)}({','.join(type(item).__name__ for item in obj[:4])})"
    return type(obj).__qualname__


def start_from_env(name: str, extra: Callable[[], dict] | None = None) -> MemTrace | None:
    """Start tracing when ``MEMTRACE_DIR`` is set (a debug knob; nothing happens otherwise).

    Every process calls it once at boot (:func:`camservice.runtime.boot`); a
    later call adds ``extra`` to the tracer already running.
    """
    global _tracer
    folder = os.environ.get(DIR_ENV)
    if not folder:
        return None
    if _tracer is not None:
        if extra is not None:
            _tracer.extra = extra
        return _tracer
    Path(folder).mkdir(parents=True, exist_ok=True)
    tracemalloc.start(int(os.environ.get(FRAMES_ENV) or 1))
    tracer = MemTrace(
        Path(folder) / f"{name}-{os.getpid()}.jsonl",
        float(os.environ.get(EVERY_ENV) or 60),
        os.environ.get(TRIM_ENV) == "1",
        extra,
    )
    tracer.start()
    _tracer = tracer
    return tracer
