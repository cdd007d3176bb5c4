"""HTTP downloads of recordings and snapshots, served by the file workers.

``GET|HEAD /files/recordings/{name}``, ``/files/snapshots/{name}`` (and
``/files/health``). Connections arrive two ways, and are served the same:

* **handed off by the gateway** (the normal way): the gateway accepts the
  client on the API port, reads the request head and passes the socket
  itself over a Unix socket (:mod:`camservice.handoff`, ``SCM_RIGHTS``),
  with the bytes already read; over TLS it passes one end of a socketpair
  and relays the encrypted side (README, "Downloads");
* on ``files.http_port``, when that option is set (off by default).

Design: an asyncio loop on a dedicated thread reads requests and writes
response heads; a body goes by ``os.sendfile`` (file pages go from the page
cache to the socket without passing through Python, in constant memory),
sent by a bulk thread at ``files.download_priority`` (:mod:`.bulk`) and
paced per download and in total (:mod:`.pacing`). Over TLS (the optional
file port with a certificate) asyncio's ``loop.sendfile`` reads and
encrypts on the loop thread instead. The worker's main loop (JSON-RPC,
events) never runs a download, and ``sendfile`` releases the GIL.

HTTP/1.1 framing, keep-alive and error handling are ``h11``'s (a Sans-I/O
library, the same model as the WebSocket layer); what a request means (its
target, RFC 9110 conditions and ranges) is :mod:`.rules`, pure functions.
Every wait has a timeout: the whole request head must arrive within
``head_timeout`` (not per byte), a stalled reader is dropped after
``stall_timeout``, and connections still sending their head are bounded per
address and in total (:class:`camservice.connlimits.PendingLimiter`).

Only regular files inside the folder are served, as only they are listed:
the name is opened with ``O_NOFOLLOW`` after the containment check, which
also closes the window in which it could be swapped for a symlink.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import socket
import ssl
import stat
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h11
import structlog

from camservice import handoff
from camservice.connlimits import PendingLimiter
from camservice.cors import CorsPolicy

from .auth import Authorizer, allow_all
from .bulk import BulkSenders, send_on_loop
from .names import Escape, admitted, content_type, resolve_inside
from .pacing import Pacer, SharedPacer
from .rules import ROUTES, HttpError, busy_response, parse_target, plan, response_event

MAX_HEAD_BYTES = 16 * 1024
#: How far (seconds) the shared budget lets the downloads run ahead of it together.
BUDGET_SLACK = 0.005
READ_BYTES = 64 * 1024


class _Span:
    """Stands for a file's bytes in h11's bookkeeping; the bytes themselves go by ``sendfile``."""

    __slots__ = ("length",)

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length


class DownloadServer:
    """The HTTP server; :meth:`start` and :meth:`stop` are called from any thread.

    ``port`` None serves hand-offs only (no TCP listener); ``handoff_path``
    None takes no hand-offs.
    """

    def __init__(
        self,
        folders: Mapping[str, Path],
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        authorize: Authorizer = allow_all,
        cors: CorsPolicy | None = None,
        handoff_path: Path | None = None,
        reuse_port: bool = True,
        max_connections: int = 1024,
        max_pending: int = 2048,
        max_pending_per_address: int = 16,
        head_timeout: float = 10.0,
        stall_timeout: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        log=None,
        rate_limit: int = 0,
        budget: int = 0,
        priority: str = "normal",
    ):
        self.folders = {url: Path(folders[kind]) for url, kind in ROUTES.items()}
        self.host = host
        self.port = port
        self.authorize = authorize
        self.cors = cors or CorsPolicy()
        self.handoff_path = handoff_path
        self.reuse_port = reuse_port
        self.max_connections = max_connections
        self.pending = PendingLimiter(max_pending, max_pending_per_address)
        self.head_timeout = head_timeout
        self.stall_timeout = stall_timeout
        self.ssl_context = ssl_context
        #: Bytes per second per download (0: unpaced). Over loopback a download
        #: runs at memory speed and the copying alone doubled the P95 of
        #: concurrent status calls (bench/download.py).
        self.rate_limit = rate_limit
        #: Bytes per second for all this server's downloads together (0: none).
        self.budget = SharedPacer(budget, BUDGET_SLACK) if budget else None
        self.priority = priority
        self.bulk = BulkSenders(max_connections, priority)  # checks priority; start() makes a fresh pool
        self._sleep = asyncio.sleep  # the TLS path's pacing waits; tests substitute a recorder
        self.log = log or structlog.get_logger("files.http")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[asyncio.Task] = set()
        self._error: BaseException | None = None
        self._handoff: socket.socket | None = None
        self.handed_off = 0

    # --- lifecycle (caller's thread) -----------------------------------------------------

    def start(self, timeout: float = 5.0) -> int | None:
        """Bind and serve; returns the TCP port (useful with port 0), None without one. Blocking."""
        ready = threading.Event()
        self.bulk = BulkSenders(self.max_connections, self.priority)
        self._thread = threading.Thread(target=self._run, args=(ready,), name="files-http", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("download server did not start in time")
        if self._error is not None:
            raise self._error
        return self.port

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, cut open connections, join the thread. Blocking."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
        self.bulk.shutdown()

    # --- server thread -------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        server = None
        try:
            if self.port is not None:
                server = loop.run_until_complete(
                    asyncio.start_server(
                        self._accepted,
                        self.host,
                        self.port,
                        reuse_port=self.reuse_port,
                        limit=MAX_HEAD_BYTES,
                        backlog=1024,
                        ssl=self.ssl_context,
                        ssl_handshake_timeout=self.head_timeout if self.ssl_context else None,
                    )
                )
                self.port = server.sockets[0].getsockname()[1]
            if self.handoff_path is not None:
                self._handoff = handoff.bind_receiver(self.handoff_path)
                loop.add_reader(self._handoff.fileno(), self._receive_handoffs)
        except OSError as exc:
            self._error = exc
            ready.set()
            if server is not None:
                server.close()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            if self._handoff is not None:
                loop.remove_reader(self._handoff.fileno())
                self._handoff.close()
                try:
                    os.unlink(self.handoff_path)
                except OSError:
                    pass
            if server is not None:
                server.close()
            for task in list(self._connections):
                task.cancel()
            if self._connections:
                loop.run_until_complete(asyncio.wait(list(self._connections), timeout=2.0))
            if server is not None:
                loop.run_until_complete(server.wait_closed())
            loop.close()

    def _receive_handoffs(self) -> None:
        for sock, raw, peer, _scheme in handoff.receive(self._handoff):
            self.handed_off += 1
            task = asyncio.ensure_future(self._handed(sock, raw, peer))
            task.add_done_callback(self._connections.discard)
            self._connections.add(task)

    async def _handed(self, sock: socket.socket, raw: bytes, peer: str) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_HEAD_BYTES)
        except OSError:
            sock.close()
            return
        # The gateway admitted this connection and read its head: no pending slot needed.
        await self._serve(reader, writer, raw, peer, None)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            peername = writer.get_extra_info("peername")
            peer = peername[0] if peername else "?"
            ticket = self.pending.admit(peer, writer.transport.abort)
            if ticket is None or len(self._connections) > self.max_connections:
                if ticket is not None:
                    ticket.done()
                writer.write(busy_response())
                writer.close()
                return
            await self._serve(reader, writer, b"", peer, ticket)
        finally:
            self._connections.discard(task)

    # --- one connection ------------------------------------------------------------------

    async def _serve(self, reader, writer, initial: bytes, peer: str, ticket) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        if initial:
            conn.receive_data(initial)
        served = 0
        try:
            while True:
                try:
                    request = await self._next_request(conn, reader)
                except h11.RemoteProtocolError as exc:
                    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        await self._send_json(conn, writer, exc.error_status_hint, str(exc), "GET", close=True)
                    return
                finally:
                    if ticket is not None:
                        ticket.done()
                        ticket = None
                if request is None:
                    return
                if initial and served and not request.target.startswith(b"/files/"):
                    # A handed-off connection kept alive, now asking for something of the gateway's
                    # (the console's next fetch, a preview): close unanswered, and the client sends
                    # it again on a new connection (RFC 9110 9.2.2), which the gateway serves.
                    return
                served += 1
                if not await self._respond(conn, writer, request, peer):
                    return
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError, ssl.SSLError, h11.ProtocolError):
            pass  # the client went away or stalled: nothing left to tell it
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("download_failed")
        finally:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 2.0)
            except (ConnectionError, asyncio.TimeoutError, asyncio.CancelledError, ssl.SSLError):
                pass

    async def _next_request(self, conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
        """The next request head, read within ``head_timeout`` in all; None when the client closed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.head_timeout
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise asyncio.TimeoutError
                data = await asyncio.wait_for(reader.read(READ_BYTES), remaining)
                conn.receive_data(data)  # b"" is EOF
                continue
            if isinstance(event, h11.Request):
                # A request without a body ends right here: take its end now so the
                # cycle can finish. A body (never expected) closes the connection.
                conn.next_event()
                return event
            return None  # ConnectionClosed (or PAUSED after a close): done

    async def _respond(self, conn: h11.Connection, writer, request: h11.Request, peer: str) -> bool:
        """Answer one request; False when the connection must close afterwards."""
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("latin-1")
        headers: dict[str, str] = {}
        for name, value in request.headers:
            key, text = name.decode("latin-1"), value.decode("latin-1")
            # Repeated headers fold into one list (RFC 9110 5.3): a doubled Range
            # becomes a multi-range and is ignored, a doubled credential is invalid.
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        # A request with a body has framing we do not read: answer, then close.
        has_body = "transfer-encoding" in headers or headers.get("content-length", "0").strip() != "0"
        cors = self.cors.headers(headers)
        try:
            if request.http_version not in (b"1.0", b"1.1"):
                raise HttpError(505, "only HTTP/1.0 and HTTP/1.1")
            if self.cors.is_preflight(method, headers):
                status, extra = self.cors.preflight(headers)
                return await self._send_empty(conn, writer, status, extra, has_body)
            if method not in ("GET", "HEAD"):
                raise HttpError(405, "only GET and HEAD", {"Allow": "GET, HEAD"})
            route, name = parse_target(target)
            if route == "health":
                return await self._send_json(conn, writer, 200, {"status": "ok"}, method, cors, has_body)
            path, _, query = target.partition("?")
            denied = self.authorize(peer, headers, path, query)
            if inspect.isawaitable(denied):
                denied = await asyncio.wait_for(denied, 5.0)
            if denied is not None:
                raise HttpError(denied.status, denied.reason, denied.headers)
            return await self._send_file(conn, writer, method, headers, route, name, cors, has_body)
        except HttpError as exc:
            close = has_body or exc.status >= 500 or exc.status == 400 or exc.status == 505
            return await self._send_json(
                conn, writer, exc.status, {"error": exc.reason}, method, {**cors, **exc.headers}, close
            )

    def _open(self, route: str, name: str) -> tuple[int, os.stat_result]:
        if not admitted(ROUTES[route], name):
            raise HttpError(404, "no such file")
        try:
            resolve_inside(self.folders[route], name)
        except Escape:
            raise HttpError(404, "no such file") from None
        # O_NOFOLLOW refuses a symlink, including one swapped in after the check above.
        path = os.path.join(os.path.realpath(self.folders[route]), name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:  # missing, a symlink (ELOOP), unreadable
            raise HttpError(404, "no such file") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device never reaches a read
            os.close(fd)
            raise HttpError(404, "no such file")
        return fd, st

    async def _send_file(self, conn, writer, method, headers, route, name, cors, close: bool) -> bool:
        fd, st = self._open(route, name)
        with os.fdopen(fd, "rb", buffering=0) as file:
            answer = plan(method, headers, st)
            extra = {**cors, **answer.headers}
            if answer.status in (304, 412, 416):
                return await self._send_empty(conn, writer, answer.status, extra, close)
            extra.update(
                {
                    "Content-Type": content_type(name),
                    "Content-Disposition": f'attachment; filename="{name}"',
                    "X-Content-Type-Options": "nosniff",
                    "Content-Length": str(answer.length),
                }
            )
            await self._write(writer, conn.send(response_event(answer.status, extra, close)))
            if method == "HEAD" or answer.length == 0:
                await self._write(writer, conn.send(h11.EndOfMessage()))
                return not close
            conn.send_with_data_passthrough(h11.Data(data=_Span(answer.length)))
            sent = await self._sendfile(writer, file, answer.offset, answer.length)
            self.log.info(
                "download", route=route, filename=name, status=answer.status, bytes=sent, offset=answer.offset
            )
            if sent != answer.length:
                # A file truncated under us: we promised more bytes than exist, so
                # the only honest end is to close the connection.
                return False
            conn.send(h11.EndOfMessage())
            return not close

    async def _sendfile(self, writer, file, offset: int, length: int) -> int:
        own = (Pacer(self.rate_limit),) if self.rate_limit else ()
        pacers = own + ((self.budget,) if self.budget is not None else ())
        if writer.transport.get_extra_info("sslcontext") is not None:
            return await send_on_loop(writer, file, offset, length, pacers, self.stall_timeout, self._sleep)
        return await self.bulk.send(writer, file, offset, length, pacers, self.stall_timeout)

    async def _write(self, writer, data: bytes) -> None:
        if data:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), self.stall_timeout)

    async def _send_empty(self, conn, writer, status: int, headers: dict[str, str], close: bool) -> bool:
        """A response without a body (204, 304, 412, 416...)."""
        headers = dict(headers)
        if status not in (204, 304):
            headers["Content-Length"] = "0"
        await self._write(writer, conn.send(response_event(status, headers, close)) + conn.send(h11.EndOfMessage()))
        return not close

    async def _send_json(
        self, conn, writer, status: int, body: Any, method: str, extra: dict[str, str] | None = None, close=False
    ) -> bool:
        payload = json.dumps(body if isinstance(body, dict) else {"error": body}).encode()
        headers = {
            **(extra or {}),
            "Content-Type": "application/json",
            "Content-Length": str(len(payload)),
            "Cache-Control": "no-store",
        }
        if status >= 400:
            self.log.debug("http_refused", status=status, reason=body)
        data = conn.send(response_event(status, headers, close))
        if method != "HEAD":
            data += conn.send(h11.Data(data=payload))
        await self._write(writer, data + conn.send(h11.EndOfMessage()))
        return not close
