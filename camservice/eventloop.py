"""Which asyncio event loop a process runs on (``gateway.event_loop``).

``asyncio`` (the default) is the standard loop; ``uvloop`` uses uvloop (and
fails loudly when it is missing); ``auto`` uses uvloop where installed
(``pip install 'camservice[bench]'`` or ``uvloop`` alone). Measured by
``python -m bench cost`` on the 2-core reference machine: uvloop cut the
whole service's CPU per status read from ~48 to ~32 µs and per worker-hop
call from ~95 to ~77 µs (bench/README.md). It is not yet the default: the
full suite has not run through on it (see the bench note). Only the gateway
uses it: the file workers' download server relies on ``loop.sendfile``.
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
