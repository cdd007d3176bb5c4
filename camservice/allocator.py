"""The C allocator's per-thread arenas, bounded for a process that runs its work in threads.

glibc's ``malloc`` gives each new thread that contends for the main arena
an arena of its own, up to 8 per core. Memory freed in an arena stays with
that arena: a thread whose work peaks at a few MB now and then (the file
worker's index rescans build structures as large as the index) keeps that
peak's pages in its own arena, and the next peak in another thread's arena
takes new ones. With six executor threads the process so keeps several
copies of its largest peak, which grow with the index (README.md, design notes,
"The file worker's memory"). Fewer arenas share the freed memory instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Mapping

#: mallopt's parameter number for the arena limit (glibc's malloc.h).
M_ARENA_MAX = -8
#: Arenas of every service process (set at boot, camservice.runtime): its
#: threads (executor, ZeroMQ I/O, capture readers) mostly wait on the GIL or
#: on I/O, so sharing two costs no contention worth measuring, while one
#: arena per thread kept each thread's high-water mark apart and read as
#: growth in the endurance runs.
SERVICE_ARENAS = 2


#: glibc tunables (``GLIBC_TUNABLES``, read once, when a process starts) per
#: role. Measured for the file worker in 10-minute endurance runs
#: (bench/README.md, "Growth verdicts"), whose ten threads (executor,
#: downloads, ZeroMQ) all call malloc:
#:
#: * ``tcache_count=0``: each thread keeps a cache of the chunks it freed (up
#:   to 7 per size class, up to some 240 KB a thread) that no other thread can
#:   reuse. These caches filled slowly: mallinfo2, which counts a cached chunk
#:   as in use, read the C heap in use growing by 0.4 MB in 9 minutes, the
#:   largest part of the worker's RSS growth; without tcache it was flat. Its
#:   small objects go to pymalloc, not malloc, so the cache saved it little.
#: * ``arena_max=1`` (instead of :data:`SERVICE_ARENAS`): what is left is
#:   fragmentation, free space growing in both heaps; one heap to reuse it
#:   took the worker from 4.8-5.2 MB/hour to 2.9-3.7.
ROLE_TUNABLES: dict[str, dict[str, str]] = {
    "files": {"glibc.malloc.tcache_count": "0", "glibc.malloc.arena_max": "1"},
}


def role_environment(role: str, env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a process of ``role``, with the role's glibc tunables added.

    A tunable already in ``env``'s ``GLIBC_TUNABLES`` (an operator's choice)
    is kept as it is; the others are appended.
    """
    out = dict(env)
    tunables = ROLE_TUNABLES.get(role)
    if not tunables:
        return out
    present = _tunables(out.get("GLIBC_TUNABLES", ""))
    present.update((name, value) for name, value in tunables.items() if name not in present)
    out["GLIBC_TUNABLES"] = ":".join(f"{name}={value}" for name, value in present.items())
    return out


def _tunables(text: str) -> dict[str, str]:
    """``GLIBC_TUNABLES``'s ``name=value:name=value`` as a dict, in order."""
    return dict(item.partition("=")[::2] for item in text.split(":") if item)


class Mallinfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (2.33+): what ``mallinfo2()`` returns, in bytes."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def libc() -> ctypes.CDLL:
    """The C library, ``mallinfo2`` (glibc 2.33+) declared to return :class:`Mallinfo2`. OSError without one."""
    lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if hasattr(lib, "mallinfo2"):
        lib.mallinfo2.restype = Mallinfo2
    return lib


def limit_arenas(count: int, env: Mapping[str, str] = os.environ) -> bool:
    """Let this process's threads share at most ``count`` malloc arenas (glibc); False elsewhere.

    Takes effect for arenas created from now on: call it before the
    process starts its worker threads. A limit set by ``GLIBC_TUNABLES``
    (the role's, :data:`ROLE_TUNABLES`, or an operator's) stands instead.
    """
    if "glibc.malloc.arena_max" in _tunables(env.get("GLIBC_TUNABLES", "")):
        return False
    try:
        mallopt = libc().mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to bound
        return False
    return bool(mallopt(M_ARENA_MAX, count))
