"""Client side of the supervisor's control socket (the CLI, and gateways at start).

One JSON request, one JSON answer, over a REQ socket with timeouts; blocking,
so async callers run it in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import json
from typing import Any

import zmq


def request(endpoint: str, command: str, timeout: float = 2.0, **fields: Any) -> dict | None:
    """Send ``{"command": command, **fields}``; the answer, or None when nothing answers in time."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
    try:
        sock.connect(endpoint)
        sock.send(json.dumps({"command": command, **fields}).encode())
        return json.loads(sock.recv())
    except (zmq.ZMQError, ValueError):
        return None
    finally:
        sock.close(linger=0)
