"""Blocking work (disk, SQLite) run in a thread, bounded by the call's deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from camservice.workers.base import CallContext

from camservice.errors import SERVICE_BUSY, RpcError

#: Longest a handler waits for a thread (disk, SQLite) when the call's deadline allows more.
THREAD_WAIT_CAP = 30.0


async def in_thread(ctx: CallContext, func: Callable[..., Any], *args: Any, cap: float = THREAD_WAIT_CAP) -> Any:
    """Run blocking work in a thread, waiting no longer than the call is worth (-32011 past that)."""
    timeout = max(0.1, min(cap, ctx.remaining()))
    try:
        return await asyncio.wait_for(asyncio.to_thread(func, *args), timeout)
    except asyncio.TimeoutError:
        raise RpcError(SERVICE_BUSY, data={"reason": "storage did not answer in time"}) from None
