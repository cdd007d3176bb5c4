"""How a gateway leaves: stop accepting, tell every client, drain, close.

Three ways out, told apart by how the gateway was asked to go:

=================  ============  ===========  ================================================
cause              signal        reason       close code
=================  ============  ===========  ================================================
``camservice stop``  SIGTERM       ``stop``     1001 (going away)
reload             SIGUSR1       ``reload``   1012 (service restart): a new gateway already
                                              listens on the port (``SO_REUSEPORT``)
rollback           SIGUSR2       ``rollback`` 1012: the previous generation serves again
supervisor lost    SIGHUP from   ``stop``     1012: the supervisor died (PDEATHSIG), systemd
                   the kernel                 (or the operator) starts the service again
=================  ============  ===========  ================================================

A reload watched by a canary does not stop the old gateways: it *parks* them
(``camservice.process.PARK_SIGNAL``): they drain exactly as for a reload (``server_restarting``
reason ``reload``, close 1012) but stay alive, not listening, with their
workers, replica and event bus, and tell the supervisor (``parked``). A
rollback *resumes* them (``RESUME_SIGNAL``): they listen again and say
``hello``, so the previous generation serves again without any process start.

Every open connection gets the contract's ``server_restarting`` notification
(whatever its topics) with a ``reconnect_after_ms`` spread over a window, so
that hundreds of clients do not reconnect in the same millisecond; calls
already in flight are answered; then the connection is closed with the code
above. Each step has a deadline: a gateway drains within a bounded time.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from dataclasses import dataclass
from typing import Protocol

import structlog
from websockets.frames import CloseCode

from camservice.process import TAKES_OVER_ENV

log = structlog.get_logger("gateway.restarting")

#: ``reconnect_after_ms`` is drawn from [base, 2 * base) per connection.
RECONNECT_BASE_MS = {"reload": 50, "rollback": 50, "stop": 1000}
#: Seconds given to a client to close after our close frame.
CLOSE_GRACE = 3.0


@dataclass(frozen=True)
class Exit:
    reason: str  # "stop", "reload" or "rollback"
    close_code: int
    close_text: str


STOP = Exit("stop", CloseCode.GOING_AWAY, "server shutting down")
RELOAD = Exit("reload", CloseCode.SERVICE_RESTART, "server reloading: reconnect")
ROLLBACK = Exit("rollback", CloseCode.SERVICE_RESTART, "server rolling back: reconnect")
SUPERVISOR_LOST = Exit("stop", CloseCode.SERVICE_RESTART, "service restarting: reconnect")

#: The signals a gateway drains on, and what each means.
SIGNALS = {
    signal.SIGTERM: STOP,
    signal.SIGINT: STOP,
    signal.SIGUSR1: RELOAD,
    signal.SIGUSR2: ROLLBACK,
    signal.SIGHUP: SUPERVISOR_LOST,  # the gateway's PDEATHSIG (camservice.supervisor.watcher)
}


def ready(pipeline, pool, environ=os.environ) -> bool:
    """The gateway's readiness to listen, less the kinds this generation takes over later."""
    later = {kind for kind in environ.get(TAKES_OVER_ENV, "").split(",") if kind}
    if not later:
        return pipeline.ready()
    alive = pool.alive()
    return pipeline.cameras.source is not None and all(n for kind, n in alive.items() if kind not in later)


def notification(reason: str, reconnect_after_ms: int) -> str:
    """The ``server_restarting`` notification as sent on the wire."""
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "method": "server_restarting",
            "params": {"reason": reason, "reconnect_after_ms": reconnect_after_ms},
        },
        separators=(",", ":"),
    )


class _Random(Protocol):
    """What the reconnect jitter needs: the ``random`` module, or a seeded ``random.Random``."""

    def random(self) -> float: ...


def reconnect_after_ms(reason: str, rng: _Random = random) -> int:
    base = RECONNECT_BASE_MS.get(reason, 1000)
    return base + int(rng.random() * base)


async def drain(server, how: Exit, timeout: float) -> dict:
    """Take ``server`` (a GatewayServer) out of service; returns what happened, for the log.

    ``timeout`` bounds the wait for in-flight calls; the close handshakes get
    :data:`CLOSE_GRACE` more.
    """
    began = time.monotonic()
    if server._server is not None:
        server._server.close()  # stop accepting: the kernel sends new connections to the other listeners
    told = 0
    for connection in list(server.connections):
        if connection.is_open:
            connection.send(notification(how.reason, reconnect_after_ms(how.reason)))
            told += 1
    deadline = began + timeout
    while server.pool.pending and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    unanswered = len(server.pool.pending)
    for connection in list(server.connections):
        connection.close(how.close_code, how.close_text)
    deadline = time.monotonic() + CLOSE_GRACE
    while server.connections and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    for connection in list(server.connections):  # a client that never answered our close frame
        if connection.transport is not None:
            connection.transport.abort()
    summary = {
        "reason": how.reason,
        "close_code": int(how.close_code),
        "told": told,
        "unanswered": unanswered,
        "seconds": round(time.monotonic() - began, 3),
    }
    log.info("gateway_drained", **summary)
    return summary
