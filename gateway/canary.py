"""The figures a reload's canary compares, as each gateway keeps them.

Two fixed-bucket latency histograms (``get_status`` calls, and calls
forwarded to workers), a request counter and a counter of server-side errors
(``-32603`` internal, ``-32011`` busy: what a bad version causes, unlike a
client's invalid params). They ride along in the gateway's ``_gateway_stats``
event every two seconds as cumulative counts; the supervisor
(:mod:`camservice.supervisor.canary`) turns them into per-generation windows.

``upgrade.test_status_delay`` (tests only, default 0) delays every
``get_status`` reply by that many seconds: a deliberately slowed new
generation, to show that the canary rolls it back.
"""

from __future__ import annotations

import asyncio
import bisect
import time

from camservice.errors import INTERNAL_ERROR, SERVICE_BUSY
from camservice.methods import GATEWAY, METHODS

from .core import PENDING

#: Upper bounds (seconds) of the latency buckets; the last one catches everything.
BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, float("inf"))
SERVER_ERRORS = frozenset((INTERNAL_ERROR, SERVICE_BUSY))
_FORWARDED = frozenset(name for name, method in METHODS.items() if method.target != GATEWAY)


class Figures:
    def __init__(self) -> None:
        self.status = [0] * len(BUCKETS)
        self.worker = [0] * len(BUCKETS)
        self.requests = 0
        self.errors = 0
        #: True when the test knob measures get_status itself (with its delay).
        self.status_elsewhere = False

    def observe(self, method: str, code: int, seconds: float) -> None:
        self.requests += 1
        if code in SERVER_ERRORS:
            self.errors += 1
        if method == "get_status":
            if self.status_elsewhere:
                return
            self.status[bisect.bisect_left(BUCKETS, seconds)] += 1
        elif method in _FORWARDED:
            self.worker[bisect.bisect_left(BUCKETS, seconds)] += 1

    def snapshot(self) -> dict:
        return {
            "status": list(self.status),
            "worker": list(self.worker),
            "requests": self.requests,
            "errors": self.errors,
        }


def attach(server) -> Figures:
    """Chain onto the gateway's request observer (Prometheus keeps its own); apply the test knob."""
    figures = Figures()
    previous = server.pipeline.stats.observer

    if previous is None:
        server.pipeline.stats.observer = figures.observe
    else:

        def observe(method: str, code: int, seconds: float) -> None:
            previous(method, code, seconds)
            figures.observe(method, code, seconds)

        server.pipeline.stats.observer = observe
    # Rides along in this gateway's _gateway_stats every two seconds.
    server.stats_sources.append(lambda counters: {"canary": figures.snapshot()})
    delay = server.config.upgrade.test_status_delay
    if delay:
        _slow_status(server, figures, delay)
    return figures


def _slow_status(server, figures: Figures, delay: float) -> None:
    handle = server.pipeline.handle
    loop_time = time.monotonic
    figures.status_elsewhere = True

    def slowed(session, call, reply):
        if call.method != "get_status":
            return handle(session, call, reply)
        began = loop_time()
        response = handle(session, call, reply)
        if response is None or response is PENDING:
            return response

        def later() -> None:
            # Measured here, delay included, so that the canary sees what clients see.
            figures.status[bisect.bisect_left(BUCKETS, loop_time() - began)] += 1
            reply(response)

        asyncio.get_running_loop().call_later(delay, later)
        return PENDING

    server.pipeline.handle = slowed
