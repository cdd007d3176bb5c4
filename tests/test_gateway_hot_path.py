"""The gateway's hottest path, whole and in process: a status read from bytes in to bytes out.

One :class:`~camservice.gateway.server.GatewayServer`, wired as ``main``
wires it (Prometheus metrics and the canary attached), holds one camera in
its replica; one :class:`~camservice.gateway.connection.Connection` over a
transport that records what it is given has done its real opening handshake
and authenticated. Each ``get_camera_status`` frame then goes through
``data_received`` exactly as uvloop would hand it over: unmasking, JSON-RPC
parsing, the pipeline's checks, the cached camera JSON, framing and one
write. What this leaves out of a request's server CPU is the event loop and
the kernel (``python -m bench cost`` measures the whole).
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from camservice.gateway import canary, metrics
from camservice.gateway.connection import Connection
from camservice.gateway.frames import next_frame
from camservice.gateway.server import GatewayServer
from websockets.frames import apply_mask

from camservice import config as config_module
from camservice.cameras import Camera
from camservice.tokens import issue_token, load_or_create_secret

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class Transport:
    """Keeps every write; the rest of what Connection asks of a transport, as no-ops."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def set_write_buffer_limits(self, high=None, low=None): ...

    def is_closing(self) -> bool:
        return False

    def pause_reading(self): ...

    def resume_reading(self): ...

    def close(self): ...

    def abort(self): ...


def masked_text(obj: dict) -> bytes:
    data = json.dumps(obj).encode()
    assert len(data) < 65536
    length = bytes((0x80 | len(data),)) if len(data) < 126 else bytes((0x80 | 126,)) + len(data).to_bytes(2, "big")
    key = os.urandom(4)
    return b"\x81" + length + key + apply_mask(data, key)


def reply_of(written: bytes) -> dict:
    start, end, _ = next_frame(written, 0)
    assert end == len(written)  # one frame per reply
    return json.loads(written[start:end])


@pytest.fixture
def status_read(tmp_path):
    """(feed, transport): feed() hands one get_camera_status frame to an open, authenticated connection."""
    cfg = config_module.load(
        overrides={
            "runtime.state_dir": str(tmp_path / "state"),
            "security.rate_limit": 1e9,  # the benchmark calls flat out
            "security.rate_burst": 10**9,
        },
        environ={},
    )
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    async def build():
        server = GatewayServer(cfg, 0)
        metrics.attach(server)
        canary.attach(server)
        server.pipeline.cameras.put(
            Camera("camera0", "/dev/video0", resolution="640x480", fps=15, streams={"rtsp": "rtsp://h/camera0"})
        )
        connection = Connection(server, server.limits)  # needs the running loop
        return server, connection

    server, connection = loop.run_until_complete(build())
    try:
        yield from _opened(cfg, connection)
    finally:
        server.events.close()
        server.pool.close()
        server.ctx.term()
        loop.close()
        asyncio.set_event_loop(None)


def _opened(cfg, connection: Connection):
    transport = Transport()
    connection.connection_made(transport)
    connection.data_received(HANDSHAKE)
    assert transport.writes.pop().startswith(b"HTTP/1.1 101")
    token = issue_token(load_or_create_secret(cfg), "viewer", "bench", 3600)
    connection.data_received(
        masked_text({"jsonrpc": "2.0", "method": "authenticate", "params": {"auth_token": token}, "id": 0})
    )
    assert reply_of(transport.writes.pop())["result"]["authenticated"] is True
    frame = masked_text({"jsonrpc": "2.0", "method": "get_camera_status", "params": {"device": "camera0"}, "id": 7})

    def feed() -> None:
        connection.data_received(frame)

    yield feed, transport


def test_a_status_read_is_answered_with_one_write_of_one_frame(status_read):
    feed, transport = status_read
    for _ in range(3):
        feed()
    assert len(transport.writes) == 3
    replies = [reply_of(w) for w in transport.writes]
    assert all(r["id"] == 7 and r["result"]["id"] == "camera0" for r in replies)
    assert replies[0]["result"]["metrics"]["uptime"] >= 0 and replies[0]["result"]["streams"] == {
        "rtsp": "rtsp://h/camera0"
    }


@pytest.mark.benchmark(group="gateway-hot-path")
def test_benchmark_status_read_through_the_connection(status_read, benchmark):
    feed, transport = status_read
    benchmark(feed)
    assert reply_of(transport.writes[-1])["result"]["id"] == "camera0"
