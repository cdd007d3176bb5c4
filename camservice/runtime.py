"""The life of one service process, the same for the gateway and every worker.

:func:`boot` loads the configuration, names the process and sets up its
logs; :class:`Lifetime` turns SIGTERM, SIGINT and the loss of the parent
(the supervisor) into one thing to await. The parent is also watched by
``PR_SET_PDEATHSIG`` (:func:`camservice.process.die_with_parent`); polling
``getppid`` covers the moment between fork and that setting, and systems
without it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

from . import allocator, log, memtrace, process
from . import config as config_module

#: Seconds between checks that the parent is still there.
PARENT_POLL = 1.0


def boot(name: str, title: str) -> config_module.Config:
    """Configuration, process title and logging of a child process called ``name``."""
    config = config_module.load()
    allocator.limit_arenas(allocator.SERVICE_ARENAS)  # before any thread of the process starts
    process.set_title(title)
    log.setup(
        name, config.state_dir / "logs", config.logging.level, console=os.environ.get("CAMSERVICE_FOREGROUND") == "1"
    )
    tune_gc()
    memtrace.start_from_env(name)  # a debug knob (MEMTRACE_DIR): where this process's memory goes
    return config


#: Tracked allocations (net of frees) between two young-generation collections.
#: The default, 700, ran one every 100-200 worker calls in a busy gateway.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Cyclic garbage collection for a long-running service process; call once, after start-up.

    ``gc.freeze`` moves what exists now (modules, classes, functions, the
    configuration: most of the heap, and never garbage) out of the
    collector's sight, so that a full collection no longer walks all of it:
    in the gateway under the cost bench's worker-hop load one took ~25 ms
    (~1.3 ms frozen), one every ~13,000 calls, and collections of all
    generations cost ~3 µs per call. Reference counting still frees
    everything; only reference cycles wait for a collection, and a young
    generation of ``GC_YOUNG_THRESHOLD`` objects bounds how many pile up
    (a connection's teardown leaves a few dozen).
    """
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


#: Seconds between two collections on the clock (:func:`collect_garbage_forever`).
GC_INTERVAL = 60.0


async def collect_garbage_forever(generation: int = 2, interval: float = GC_INTERVAL) -> None:
    """Collect reference cycles every ``interval`` seconds, up to ``generation``; run as a task.

    The interpreter collects when ``GC_YOUNG_THRESHOLD`` more tracked
    objects were allocated than freed, a count the gateway and the file
    worker took about 25 minutes to reach under the endurance mix. Until
    then the cycles of closed connections (asyncio's transports make a few)
    and whatever they hold stay, and the allocators take new pages for
    them. Measured in 10-minute endurance runs (bench/README.md, "Growth
    verdicts"): the gateway grew by 4.4-5.1 MB/hour without the clock and
    by 0.6-1.3 with it; pymalloc's bytes in use in the file worker grew by
    0.4 MB in 9 minutes without it and stayed flat with it. A collection
    took 0.3-3 ms, the start-up heap being frozen (:func:`tune_gc`).
    """
    while True:
        await asyncio.sleep(interval)
        gc.collect(generation)


class Lifetime:
    """Until when a process runs: a stop signal, or its parent gone.

    Create it at the start of the process's main coroutine (it remembers the
    parent's pid then), call :meth:`install` inside the running loop, and
    ``await`` :meth:`wait`; afterwards :attr:`parent_gone` says which ended it.
    """

    def __init__(self, stopping: asyncio.Event | None = None):
        self.stopping = stopping if stopping is not None else asyncio.Event()
        self.parent = os.getppid()
        self.parent_gone = False

    def install(self, handlers: Mapping[int, Callable[[], None]] | None = None) -> None:
        """Stop on SIGTERM and SIGINT, or call ``handlers[sig]`` for the signals given instead.

        A handler decides how the process leaves (the gateway tells a planned
        stop from its supervisor's death) and is expected to call :meth:`stop`.
        """
        loop = asyncio.get_running_loop()
        for sig, handler in (handlers or {signal.SIGTERM: self.stop, signal.SIGINT: self.stop}).items():
            loop.add_signal_handler(sig, handler)

    def stop(self) -> None:
        self.stopping.set()

    def parent_alive(self) -> bool:
        """False once this process was re-parented: its parent (the supervisor) died."""
        return process.parent_alive(self.parent)

    async def wait(self, logger: Any = None) -> None:
        """Return once a stop was asked for or the parent is gone."""
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), timeout=PARENT_POLL)
            except asyncio.TimeoutError:
                if not self.parent_alive():
                    self.parent_gone = True
                    if logger is not None:
                        logger.warning("parent_gone")
                    return
