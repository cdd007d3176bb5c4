"""The gateway process: WebSocket JSON-RPC server in front of the workers.

Wires together the pieces: :class:`~camservice.gateway.core.RequestPipeline` (checks and
gateway-local methods), :class:`~camservice.gateway.pool.WorkerPool` (ZeroMQ ROUTER to
the workers), :class:`~camservice.gateway.events.EventRelay` (replica and notifications)
and the WebSocket connections (:mod:`camservice.gateway.connection`), which hand every
message to :meth:`GatewayServer.message_received` synchronously. Several
gateway processes share one port with ``SO_REUSEPORT``; the kernel spreads
connections over them.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any

import structlog
import zmq
from websockets.datastructures import Headers
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from camservice import comms, control, eventloop, handoff, jsonrpc, process, topics
from camservice import tls as tls_module
from camservice.connlimits import PendingLimiter
from camservice.cors import CorsPolicy
from camservice.httpauth import HttpGuard, LinkSigner
from camservice.runtime import Lifetime, boot, collect_garbage_forever
from camservice.tokens import load_or_create_secret

from . import canary, console, http, metrics, restarting
from .connection import Connection, Limits
from .core import PENDING, RequestPipeline
from .downloads import Downloads
from .events import EventRelay
from .exchange import HttpExchange
from .pool import WorkerPool
from .preview import Previews
from .routes import HttpRequest, HttpResponse, RouteTable

logger = structlog.get_logger("gateway")

WRITE_BUFFER_LIMIT = 4 * 1024 * 1024
SLOW_CLIENT_TIMEOUT = 10.0
STATS_INTERVAL = 2.0
#: Pending TCP connections the kernel queues per gateway process (burst of clients reconnecting).
LISTEN_BACKLOG = 1024
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n"
)
#: Seconds a starting gateway waits, beyond one heartbeat timeout, for its replica before it listens anyway.
READY_GRACE = 2.0
#: Seconds between checks of that; the replica and the workers arrive through socket readers meanwhile.
READY_POLL = 0.01


class GatewayServer:
    def __init__(self, config, index: int = 0):
        self.config = config
        self.index = index
        self.endpoints = comms.Endpoints.from_config(config)
        self.ctx = zmq.Context()
        self.pool = WorkerPool(
            self.ctx,
            self.endpoints.gateways[index],
            config.runtime.heartbeat_interval,
            config.runtime.heartbeat_liveness,
        )
        self.pipeline = RequestPipeline(config, self.pool.call, index)
        self.pipeline.workers_alive = self.pool.alive
        self.events = EventRelay(self.pipeline, self.pool, self.ctx, self.endpoints)
        self.pool.on_worker_ready = self._worker_ready
        #: Plain HTTP on the API port: every endpoint registers here (health, /metrics, downloads, console).
        self.scheme = "https" if config.server.tls.cert_file else "http"
        self.routes = RouteTable()
        self.cors = CorsPolicy(config.server.cors_origins)
        http.register(self.routes, self.pipeline, self.cors)
        self.downloads = Downloads(handoff.Sender(config.state_dir / "run"), self.cors)
        self.downloads.register(self.routes)
        self.routes.add(("GET", "HEAD"), "/", self._console)  # the web console (issue 14)
        self.routes.add(("GET", "HEAD"), "/console/{path*}", self._console)
        #: Connections still sending their opening request head (slowloris defence).
        self.pending = PendingLimiter(config.server.max_pending, config.server.max_pending_per_address)
        #: The credential check of every HTTP endpoint (one throttle with the WebSocket's authenticate).
        signer = LinkSigner(load_or_create_secret(config))
        self.guard = HttpGuard(self.pipeline.auth, self.pipeline.auth_failures, signer)
        #: GET /cameras/{id}/preview: live MJPEG from the recording worker's capture (issue 14).
        self.previews = Previews(config, self.pool.call, self.pipeline.cameras, self.guard, signer)
        self.previews.register(self.routes)
        #: Callables adding members to the ``_gateway_stats`` this gateway publishes (metrics' report).
        self.stats_sources: list[Callable[[dict[str, Any]], dict[str, Any]]] = []
        self.max_batch = config.server.max_in_flight
        self.limits = Limits(
            max_size=config.server.max_frame_bytes,
            open_timeout=config.server.header_timeout,
            write_limit=WRITE_BUFFER_LIMIT,
            slow_client_timeout=SLOW_CLIENT_TIMEOUT,
        )
        #: Every TCP connection, from accept to close (handshake included).
        self.connections: set[Connection] = set()
        self._stop = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        #: How this gateway leaves (gateway.restarting): set by the signal that stops it.
        self._exit = restarting.STOP
        #: The last park or resume (gateway.restarting): the next one waits for it.
        self._steps: asyncio.Future | None = None

    def _worker_ready(self, worker) -> None:
        if worker.kind == "discovery":
            self.events.request_snapshot()

    # --- HTTP -----------------------------------------------------------------------

    def http_request(self, connection: Connection, head: bytes, rest: bytes) -> bool:
        """Every complete opening request: plain HTTP goes to an :class:`HttpExchange`; False for ``GET /ws``."""
        if connection.admission is not None:
            connection.admission.done()  # the head is here: no longer a slowloris suspect
            connection.admission = None
        method, _, remainder = head.partition(b" ")
        target = remainder.split(b" ", 1)[0]
        if method == b"GET" and target.split(b"?", 1)[0] == b"/ws":
            return False
        self.connections.discard(connection)
        peer = connection.remote_address[0] if connection.remote_address else "?"
        exchange = HttpExchange(
            self.answer_http,
            connection.transport,
            peer,
            self.scheme,
            header_timeout=self.config.server.header_timeout,
        )
        exchange.start(head + rest)
        return True

    def process_request(self, connection: Connection, request: Request) -> Response | None:
        """A ``GET /ws`` handshake: None accepts it; 503 while stopping or at ``server.max_connections``."""
        if self._stop.is_set():
            return ws_response(HttpResponse.text(503, "server shutting down\n"))
        if len(self.pipeline.sessions) >= self.config.server.max_connections:
            return ws_response(HttpResponse.text(503, "too many connections\n", {"Retry-After": "5"}))
        return None

    def _console(self, request: HttpRequest) -> HttpResponse:
        # Headers() for the console's case-insensitive lookups (If-None-Match, Accept-Encoding).
        answer = console.serve(request.target, Headers(request.headers))
        assert answer is not None  # only the console's paths are routed here
        return http.to_response(answer)

    def answer_http(self, request: HttpRequest) -> Any:
        """Route one plain HTTP request: an HttpResponse, an awaitable of one, or routes.HANDED_OFF."""
        if self._stop.is_set():
            return HttpResponse.text(503, "server shutting down\n", {"Retry-After": "1"})
        if not request.target.startswith("/") and not request.target.startswith(("http://", "https://")):
            return HttpResponse.text(400, "request target must be an absolute path\n")  # "*", authority-form
        handler, params, allowed = self.routes.match(request.method, request.path)
        if handler is None:
            if allowed:
                return HttpResponse.text(405, "method not allowed\n", {"Allow": ", ".join(sorted(allowed))})
            return http.not_found(self.routes)
        request.params = params
        return handler(request)

    # --- WebSocket (gateway.connection.Handler) ------------------------------------------

    def connection_made(self, connection: Connection) -> None:
        peer = connection.remote_address[0] if connection.remote_address else "?"
        connection.admission = self.pending.admit(peer, connection.transport.abort)
        if connection.admission is None:
            # Too many connections from this address still sending their head: say so at once.
            connection.transport.write(BUSY)
            connection.transport.close()
            return
        self.connections.add(connection)

    def connection_open(self, connection: Connection) -> None:
        peer = connection.remote_address[0] if connection.remote_address else "?"
        connection.session = self.pipeline.open_session(peer, connection)

    def connection_lost(self, connection: Connection) -> None:
        if connection.admission is not None:
            connection.admission.done()
            connection.admission = None
        self.connections.discard(connection)
        if connection.session is not None:
            self.pipeline.close_session(connection.session)

    def message_received(self, connection: Connection, data: str | bytes) -> None:
        session = connection.session
        session.last_activity = time.monotonic()
        frame = jsonrpc.parse_frame(data, self.max_batch)
        if frame.batch:
            self._handle_batch(session, frame, connection)
            return
        item = frame.items[0]
        if isinstance(item, dict):
            response = item
        else:

            def reply(message: dict | None) -> None:
                if message is not None:
                    connection.send(jsonrpc.encode(message))

            response = self.pipeline.handle(session, item, reply)
        if response is not None and response is not PENDING:
            connection.send(jsonrpc.encode(response))

    def _handle_batch(self, session, frame: jsonrpc.Frame, connection: Connection) -> None:
        """Answer a batch with one array once every call in it is answered."""
        slots: list[Any] = [None] * len(frame.items)
        waiting = [0]
        finished = [False]

        def flush() -> None:
            responses = [r for r in slots if r is not None]
            if responses:
                connection.send(jsonrpc.encode(responses))

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
            response = self.pipeline.handle(session, item, filler(position))
            if response is not PENDING:
                waiting[0] -= 1
                slots[position] = response
        finished[0] = True
        if waiting[0] == 0:
            flush()

    # --- lifecycle --------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        lifetime = Lifetime(self._stop)  # the signal that stops the gateway also says how it leaves
        lifetime.install({sig: functools.partial(self._leave, how) for sig, how in restarting.SIGNALS.items()})
        self.pool.start(loop)
        self.events.start(loop)
        background = [
            asyncio.ensure_future(c)
            for c in (
                self._sweep(),
                self._publish_stats(),
                self.events.resync_forever(),
                self._close_idle_unauthenticated(),
                self._keepalive(),
                # Up to the middle generation only: the oldest holds every open connection's
                # objects, which a full collection would walk each minute however many clients
                # there are; the gateway's garbage is young (closed connections), and collecting
                # the young generations alone took its growth from 5.1 to 1.3 MB/hour.
                collect_garbage_forever(generation=1),
            )
        ]
        loop.add_signal_handler(process.PARK_SIGNAL, self._standby, self._park)
        loop.add_signal_handler(process.RESUME_SIGNAL, self._standby, self._resume)
        await self._until_ready()
        await self._listen()
        background.append(asyncio.ensure_future(self._hello()))
        await lifetime.wait(logger)
        if not lifetime.parent_alive():
            # The supervisor died (its SIGTERM came from the kernel, PDEATHSIG): the
            # service is being restarted, not stopped, so clients hear 1012.
            self._exit = restarting.SUPERVISOR_LOST
        await self.shutdown(background)

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        tls = tls_module.server_context(self.config)
        self._server = await loop.create_server(
            lambda: Connection(self, self.limits),
            self.config.server.host,
            self.config.server.port,
            ssl=tls,
            reuse_port=True,
            backlog=LISTEN_BACKLOG,
        )
        logger.info(
            "gateway_listening",
            host=self.config.server.host,
            port=self.config.server.port,
            pid=os.getpid(),
            tls=tls is not None,
        )

    def _standby(self, step: Callable[[], Any]) -> None:
        """Park or resume (gateway.restarting), one at a time, never while leaving."""
        if not self._stop.is_set():
            self._steps = asyncio.ensure_future(self._after(self._steps, step))

    async def _after(self, previous: asyncio.Future | None, step: Callable[[], Any]) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        if not self._stop.is_set():
            await step()

    async def _park(self) -> None:
        if self._server is None:
            return
        await restarting.drain(self, restarting.RELOAD, self.config.runtime.stop_timeout * 0.5)
        self._server = None
        logger.info("gateway_parked", pid=os.getpid())
        await asyncio.to_thread(control.request, self.endpoints.control, "parked", 2.0, pid=os.getpid())

    async def _resume(self) -> None:
        if self._server is None:
            await self._listen()
        await asyncio.to_thread(control.request, self.endpoints.control, "hello", 2.0, pid=os.getpid())

    def _leave(self, how: restarting.Exit) -> None:
        if not self._stop.is_set():
            self._exit = how
            self._stop.set()  # the Lifetime's event: run() goes on to drain

    async def _until_ready(self) -> None:
        """Listen only once the camera replica is loaded and every worker kind has been heard.

        A restarted gateway that listened at once answered from an empty
        replica for up to 0.74 s: no cameras, -32004 for existing ones,
        "unhealthy" (issue 11 §4). Until it listens, clients are refused and
        retry, or land on another gateway process sharing the port. Bounded:
        with a worker kind down for good the gateway still serves what it can.
        """
        runtime = self.config.runtime
        deadline = time.monotonic() + runtime.heartbeat_interval * runtime.heartbeat_liveness + READY_GRACE
        while not restarting.ready(self.pipeline, self.pool) and not self._stop.is_set():
            if time.monotonic() >= deadline:
                logger.warning(
                    "listening_before_ready", workers=self.pool.alive(), cameras=self.pipeline.cameras.source
                )
                return
            await asyncio.sleep(READY_POLL)

    async def shutdown(self, background: Sequence[asyncio.Future]) -> None:
        logger.info("gateway_draining", in_flight=len(self.pool.pending), reason=self._exit.reason)
        # The sweep keeps running while draining: it completes in-flight calls.
        await restarting.drain(self, self._exit, self.config.runtime.stop_timeout * 0.5)
        for task in background:
            task.cancel()
        self.events.close()
        self.pool.close()
        self.downloads.sender.close()
        self.ctx.term()
        logger.info("gateway_stopped")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self.pool.sweep()
            self.pool.drain()  # belt and braces for the edge-triggered FD
            self.events.drain()

    async def _hello(self) -> None:
        """Tell the supervisor this gateway serves (a reload waits for it), and learn the process table.

        Said once the camera replica is loaded, so that a client the reload
        moves here sees the same cameras; the answer fills ``get_metrics``'s
        process list from the start, not only after the first ``_process_stats``.
        """
        deadline = time.monotonic() + self.config.runtime.start_timeout
        while self.pipeline.cameras.source is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        answer = await asyncio.to_thread(control.request, self.endpoints.control, "hello", 2.0, pid=os.getpid())
        if answer and not self.pipeline.processes:
            self.pipeline.processes = answer.get("processes", [])
            self.pipeline.host_stats = answer.get("host") or self.pipeline.host_stats

    async def _keepalive(self) -> None:
        interval = self.config.server.ping_interval
        if not interval:
            return
        while True:
            await asyncio.sleep(interval)
            for connection in list(self.connections):
                connection.keepalive()

    async def _publish_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            self.publish_stats()

    def publish_stats(self) -> None:
        """Publish this gateway's counters (``_gateway_stats``), extended by every ``stats_sources`` entry."""
        counters = self.pipeline.own_counters()
        counters["index"] = self.index
        for source in self.stats_sources:
            counters.update(source(counters))
        self.events.publish(topics.GATEWAY_STATS, counters)

    async def _close_idle_unauthenticated(self) -> None:
        timeout = self.config.security.unauthenticated_timeout
        while True:
            await asyncio.sleep(min(5.0, timeout / 2))
            now = time.monotonic()
            for session in list(self.pipeline.sessions):
                if session.identity is None and now - session.last_activity > timeout and session.connection:
                    session.connection.close(CloseCode.POLICY_VIOLATION, "authentication timeout")


def main(index: int = 0) -> None:
    config = boot(f"gateway-{index}", f"camservice: gateway {index}")
    server = GatewayServer(config, index)
    metrics.attach(server)
    canary.attach(server)
    eventloop.run(server.run(), config.gateway.event_loop)


def ws_response(response: HttpResponse) -> Response:
    """An answer to the opening request, for websockets' protocol (whole body, then close)."""
    body = response.body if isinstance(response.body, bytes) else b""
    headers = Headers({**response.headers, "Content-Length": str(len(body)), "Connection": "close"})
    return Response(response.status, HTTPStatus(response.status).phrase, headers, body)
