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

#: mallopt's parameter number for the arena limit (glibc's malloc.h).
M_ARENA_MAX = -8
#: Arenas of every service process (set at boot, camservice.runtime): its
#: threads (executor, ZeroMQ I/O, capture readers) mostly wait on the GIL or
#: on I/O, so sharing two costs no contention worth measuring, while one
#: arena per thread kept each thread's high-water mark apart and read as
#: growth in the endurance runs.
SERVICE_ARENAS = 2


def limit_arenas(count: int) -> bool:
    """Let this process's threads share at most ``count`` malloc arenas (glibc); False elsewhere.

    Takes effect for arenas created from now on: call it before the
    process starts its worker threads.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to bound
        return False
    return bool(mallopt(M_ARENA_MAX, count))
