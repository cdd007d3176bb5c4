"""Which asyncio event loop a process runs on (``gateway.event_loop``).

``auto`` (the default) uses uvloop where installed (``pip install
'camservice[fast]'``, or ``uvloop`` alone) and the standard loop elsewhere;
``asyncio`` forces the standard loop; ``uvloop`` insists on uvloop (and
fails loudly when it is missing). Measured by ``python -m bench cost`` on
the 2-core reference machine, both loops in the same alternating rounds,
three runs: uvloop took less of the whole service's CPU per status read
(least disturbed round: 35.7 -> 33.4, 42.1 -> 38.0, 34.3 -> 27.4 µs) and
per worker-hop call (88.1 -> 72.9, 123.3 -> 117.9, 73.7 -> 56.2 µs) every
time, medians alike; a fourth run agreed on the hop (92.1 -> 71.5) but not on
status reads (33.7 -> 39.0): within the loaded machine's noise
(bench/README.md). The gateway uses it, and the workers whose class sets
``fast_loop`` (discovery); the file workers' download server relies on
``loop.sendfile``, which uvloop lacks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

CHOICES = ("auto", "asyncio", "uvloop")


def loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A callable making the loop ``choice`` asks for, or None for asyncio's default."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise RuntimeError("gateway.event_loop is uvloop but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, Any], choice: str = "auto") -> Any:
    """``asyncio.run(main)`` on the loop ``choice`` asks for."""
    try:
        factory = loop_factory(choice)
    except RuntimeError:
        main.close()  # never to be awaited
        raise
    if factory is None:
        return asyncio.run(main)
    if hasattr(asyncio, "Runner"):  # Python 3.11+
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main)
    loop = factory()  # Python 3.10: what asyncio.run does, on the given loop
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
