"""The gateway process: WebSocket JSON-RPC server in front of the workers.

Wires together the pieces: :class:`~gateway.core.Gateway` (checks and
gateway-local methods), :class:`~gateway.pool.WorkerPool` (ZeroMQ ROUTER to
the workers), :class:`~gateway.events.EventRelay` (replica and notifications)
and the ``websockets`` server. Several gateway processes share one port with
``SO_REUSEPORT``; the kernel spreads connections over them.

Replies are pushed with ``websockets.broadcast`` (synchronous, no task per
reply). Backpressure: when a client stops reading and its write buffer grows
past :data:`WRITE_BUFFER_LIMIT`, the gateway stops reading its requests until
the buffer drains, and closes it if that takes too long.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import time
from typing import Any

import structlog
import zmq
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from camservice import comms, config as config_module, jsonrpc, log, process

from . import http
from .core import PENDING, Gateway
from .events import EventRelay
from .pool import WorkerPool

logger = structlog.get_logger("gateway")

WRITE_BUFFER_LIMIT = 4 * 1024 * 1024
SLOW_CLIENT_TIMEOUT = 10.0
STATS_INTERVAL = 2.0


class GatewayServer:
    def __init__(self, config, index: int = 0):
        self.config = config
        self.index = index
        self.endpoints = comms.Endpoints.from_config(config)
        self.ctx = zmq.Context()
        self.pool = WorkerPool(self.ctx, self.endpoints.gateways[index], config.runtime.heartbeat_interval,
                               config.runtime.heartbeat_liveness)
        self.gateway = Gateway(config, self.pool.call, index)
        self.gateway.workers_alive = self.pool.alive
        self.events = EventRelay(self.gateway, self.pool, self.ctx, self.endpoints)
        self.pool.on_worker_ready = self._worker_ready
        self.metrics_renderer = None  # set by gateway.metrics when enabled
        self.max_batch = config.server.max_in_flight
        self._stop = asyncio.Event()
        self._server = None

    def _worker_ready(self, worker) -> None:
        if worker.kind == "discovery":
            self.events.request_snapshot()

    # --- HTTP -----------------------------------------------------------------------

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?", 1)[0] == "/ws" and len(self.gateway.sessions) >= self.config.server.max_connections:
            return self._response(503, "text/plain", b"too many connections\n", {"Retry-After": "5"})
        scheme = "https" if self.config.server.tls.cert_file else "http"
        routed = http.route(self.gateway, request.path, request.headers.get("Host"), scheme, self.metrics_renderer)
        if routed is None:
            return None
        return self._response(*routed)

    @staticmethod
    def _response(status: int, content_type: str, body: bytes, extra: dict[str, str]) -> Response:
        from http import HTTPStatus

        headers = Headers({"Content-Type": content_type, "Content-Length": str(len(body)),
                           "Connection": "close", **extra})
        return Response(status, HTTPStatus(status).phrase, headers, body)

    # --- WebSocket --------------------------------------------------------------------

    async def handle_connection(self, connection: ServerConnection) -> None:
        peer = connection.remote_address[0] if connection.remote_address else "?"
        session = self.gateway.open_session(peer, connection)
        gateway, max_batch = self.gateway, self.max_batch
        transport = connection.transport

        def reply(message: dict | None) -> None:
            if message is not None:
                broadcast((connection,), jsonrpc.encode(message))

        try:
            async for data in connection:
                session.last_activity = time.monotonic()
                frame = jsonrpc.parse_frame(data, max_batch)
                if frame.batch:
                    self._handle_batch(session, frame, connection)
                else:
                    item = frame.items[0]
                    if isinstance(item, dict):
                        response = item
                    else:
                        response = gateway.handle(session, item, reply)
                    if response is not None and response is not PENDING:
                        broadcast((connection,), jsonrpc.encode(response))
                if transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
                    await self._wait_for_drain(connection)
        except ConnectionClosed:
            pass
        finally:
            gateway.close_session(session)

    def _handle_batch(self, session, frame: jsonrpc.Frame, connection: ServerConnection) -> None:
        """Answer a batch with one array once every call in it is answered."""
        slots: list[Any] = [None] * len(frame.items)
        waiting = [0]
        finished = [False]

        def flush() -> None:
            responses = [r for r in slots if r is not None]
            if responses:
                broadcast((connection,), jsonrpc.encode(responses))

        def filler(position: int):
            def fill(message: dict | None) -> None:
                slots[position] = message
                waiting[0] -= 1
                if finished[0] and waiting[0] == 0:
                    flush()
            return fill

        for position, item in enumerate(frame.items):
            if isinstance(item, dict):
                slots[position] = item
                continue
            waiting[0] += 1
            response = self.gateway.handle(session, item, filler(position))
            if response is not PENDING:
                waiting[0] -= 1
                slots[position] = response
        finished[0] = True
        if waiting[0] == 0:
            flush()

    async def _wait_for_drain(self, connection: ServerConnection) -> None:
        deadline = time.monotonic() + SLOW_CLIENT_TIMEOUT
        while connection.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT // 2:
            if time.monotonic() > deadline:
                await connection.close(1008, "client does not read its replies")
                return
            await asyncio.sleep(0.01)

    # --- lifecycle --------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self.pool.start(loop)
        self.events.start(loop)
        tls = None
        if self.config.server.tls.cert_file:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.load_cert_chain(self.config.server.tls.cert_file, self.config.server.tls.key_file)
        ping = self.config.server.ping_interval or None
        self._server = await serve(
            self.handle_connection, self.config.server.host, self.config.server.port,
            process_request=self.process_request, max_size=self.config.server.max_frame_bytes,
            compression=None, ping_interval=ping, ping_timeout=ping, ssl=tls,
            reuse_port=True, close_timeout=2, max_queue=64, server_header="camservice",
        )
        logger.info("gateway_listening", host=self.config.server.host, port=self.config.server.port,
                    pid=os.getpid(), tls=tls is not None)
        background = [asyncio.ensure_future(c) for c in
                      (self._sweep(), self._publish_stats(), self.events.resync_forever(),
                       self._close_idle_unauthenticated())]
        parent = os.getppid()
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                if not process.parent_alive(parent):
                    logger.warning("parent_gone")
                    break
        await self.shutdown(background)

    async def shutdown(self, background: list[asyncio.Future]) -> None:
        logger.info("gateway_draining", in_flight=len(self.pool.pending))
        self._server.close(close_connections=False)  # stop accepting
        deadline = time.monotonic() + self.config.runtime.stop_timeout * 0.5
        while self.pool.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in background:
            task.cancel()
        self._server.close(close_connections=True)
        try:
            await asyncio.wait_for(self._server.wait_closed(), timeout=3.0)
        except asyncio.TimeoutError:
            pass
        self.events.close()
        self.pool.close()
        self.ctx.term()
        logger.info("gateway_stopped")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self.pool.sweep()
            self.pool._drain()  # belt and braces for the edge-triggered FD
            self.events.drain()

    async def _publish_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            counters = self.gateway.own_counters()
            counters["index"] = self.index
            self.events.publish("_gateway_stats", counters)

    async def _close_idle_unauthenticated(self) -> None:
        timeout = self.config.security.unauthenticated_timeout
        while True:
            await asyncio.sleep(min(5.0, timeout / 2))
            now = time.monotonic()
            for session in list(self.gateway.sessions):
                if session.identity is None and now - session.last_activity > timeout and session.connection:
                    asyncio.ensure_future(session.connection.close(1008, "authentication timeout"))


def main(index: int = 0) -> None:
    config = config_module.load()
    process.set_title(f"camservice: gateway {index}")
    log.setup(f"gateway-{index}", config.state_dir / "logs", config.logging.level,
              console=os.environ.get("CAMSERVICE_FOREGROUND") == "1")
    server = GatewayServer(config, index)
    try:
        from .metrics import attach

        attach(server)
    except ImportError:
        pass
    asyncio.run(server.run())
