"""Plain HTTP/1.1 on the API port: every request that is not a WebSocket handshake.

:class:`~camservice.gateway.connection.Connection` reads the first request
head of each TCP (or TLS) connection; when it is not ``GET /ws``, it
switches the transport to an :class:`HttpExchange` with the bytes read so
far. From there ``h11`` (Sans-I/O, like the WebSocket layer) does the
framing: keep-alive, pipelining, bodies refused, malformed heads answered
400/431. Each request is routed through the server's
:class:`~camservice.gateway.routes.RouteTable`; a handler answers with an
:class:`~camservice.gateway.routes.HttpResponse` (whole or streamed with
backpressure) or takes the connection away (:meth:`HttpExchange.take_socket`,
:meth:`HttpExchange.relay`), as downloads do.

Every wait is bounded: the next request head within ``header_timeout``
(trickling bytes does not extend it), a stalled reader of a streamed body
within ``stall_timeout``.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import logging
import socket
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import h11

from .routes import HANDED_OFF, HttpRequest, HttpResponse

logger = logging.getLogger("gateway.http")

MAX_HEAD_BYTES = 16 * 1024


class HttpExchange(asyncio.Protocol):
    """Serves HTTP requests on one connection; see the module docstring."""

    def __init__(
        self,
        answer: Callable[[HttpRequest], Any],
        transport: asyncio.Transport,
        peer: str,
        scheme: str,
        *,
        header_timeout: float,
        stall_timeout: float = 30.0,
        on_close: Callable[[], None] | None = None,
    ):
        self.answer = answer
        self.transport = transport
        self.peer = peer
        self.scheme = scheme
        self.header_timeout = header_timeout
        self.stall_timeout = stall_timeout
        self.on_close = on_close
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._loop = asyncio.get_running_loop()
        self._cycle = bytearray()  # every byte received since the current request began
        self._busy = False  # a request is being answered: further bytes wait in h11
        self._writable = asyncio.Event()
        self._writable.set()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._detached = False
        self._task: asyncio.Task | None = None  # the request being answered
        self._streaming = False  # its streamed body is being sent

    def start(self, initial: bytes) -> None:
        """Take over the transport, with the bytes its previous protocol had read."""
        self.transport.set_protocol(self)
        self._arm_header_timer()
        self.data_received(initial)

    # --- asyncio.Protocol -----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._detached:
            return
        self._cycle += data
        try:
            self.conn.receive_data(data)
        except RuntimeError:  # data after the close we asked for: ignore it
            return
        if not self._busy:
            self._next()

    def eof_received(self) -> bool:
        self.conn.receive_data(b"")
        if not self._busy:
            self._next()
        # Keep a half-closed TCP connection open to finish an answer in progress
        # (_close ends it); TLS cannot stay half-open, and asyncio says so if asked.
        return self.scheme != "https"

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._writable.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._streaming and self._task is not None:
            # A streamed body waiting for its next chunk (a live preview) ends now, not at that chunk.
            self._task.cancel()
        if self.on_close is not None:
            callback, self.on_close = self.on_close, None
            callback()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # --- requests ---------------------------------------------------------------------

    def _next(self) -> None:
        while not self._busy and not self._closed and not self._detached:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._refuse(exc.error_status_hint, str(exc))
                return
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Request):
                self._start(event)
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                self._close()
                return
            # Data / EndOfMessage of a request already being refused: nothing to do

    def _start(self, event: h11.Request) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        headers: dict[str, str] = {}
        for name, value in event.headers:
            key, text = name.decode("latin-1"), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        if event.http_version not in (b"1.0", b"1.1"):
            self._refuse(505, "only HTTP/1.0 and HTTP/1.1")
            return
        if "transfer-encoding" in headers or headers.get("content-length", "0").strip() != "0":
            self._refuse(413, "request bodies are not accepted here")
            return
        self.conn.next_event()  # the request's end (it has no body): lets the cycle finish
        request = HttpRequest(
            event.method.decode("ascii", "replace"),
            event.target.decode("latin-1"),
            headers,
            self.peer,
            self.scheme,
            raw=bytes(self._cycle),
            connection=self,
        )
        self._busy = True
        self.transport.pause_reading()
        try:
            answer = self.answer(request)
        except Exception:
            logger.exception("http handler failed")
            answer = HttpResponse.text(500, "internal error\n")
        task = asyncio.ensure_future(self._finish(request, answer))
        task.add_done_callback(_log_failure)
        self._task = task

    async def _finish(self, request: HttpRequest, answer: Any) -> None:
        try:
            if inspect.isawaitable(answer):
                answer = await asyncio.wait_for(answer, self.stall_timeout)
        except Exception:
            logger.exception("http handler failed")
            answer = HttpResponse.text(500, "internal error\n")
        if answer is HANDED_OFF or self._detached:
            return
        if self._closed:
            return
        try:
            await self._send(request, answer)
        except (ConnectionError, asyncio.TimeoutError, h11.LocalProtocolError):
            self.transport.abort()
            return
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            self._cycle = bytearray(self.conn.trailing_data[0])
            self._busy = False
            self._arm_header_timer()
            self.transport.resume_reading()
            self._next()
        else:
            self._close()

    async def _send(self, request: HttpRequest, response: HttpResponse) -> None:
        headers = {
            "Date": email.utils.formatdate(usegmt=True),
            "Server": "camservice",
            **response.headers,
        }
        body = response.body
        if isinstance(body, (bytes, bytearray)):
            headers["Content-Length"] = str(len(body))
        if self._closing_after(request):
            headers["Connection"] = "close"
        self._write(self.conn.send(_response(response.status, headers)))
        head_only = request.method == "HEAD" or response.status in (204, 304)
        if isinstance(body, (bytes, bytearray)):
            if body and not head_only:
                self._write(self.conn.send(h11.Data(data=bytes(body))))
        else:
            try:
                self._streaming = True
                if not head_only:
                    async for chunk in body:
                        if self._closed:
                            raise ConnectionResetError
                        if chunk:
                            self._write(self.conn.send(h11.Data(data=chunk)))
                            await asyncio.wait_for(self._writable.wait(), self.stall_timeout)
            finally:
                self._streaming = False
                # A generator's cleanup (a preview's viewer count) runs now, not whenever it is collected.
                close = getattr(body, "aclose", None)
                if close is not None:
                    await close()
        self._write(self.conn.send(h11.EndOfMessage()))

    def _closing_after(self, request: HttpRequest) -> bool:
        return request.headers.get("connection", "").lower() == "close"

    def _write(self, data: bytes) -> None:
        if data and not self._closed:
            self.transport.write(data)

    def _refuse(self, status: int, reason: str) -> None:
        """Answer a request we cannot or will not parse, then close."""
        self._busy = True
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = f"{reason}\n".encode()
            try:
                self._write(
                    self.conn.send(
                        _response(
                            status,
                            {"Content-Type": "text/plain", "Content-Length": str(len(body)), "Connection": "close"},
                        )
                    )
                    + self.conn.send(h11.Data(data=body))
                    + self.conn.send(h11.EndOfMessage())
                )
            except h11.LocalProtocolError:
                pass
        self._close()

    def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._closed:
            self.transport.close()

    def _arm_header_timer(self) -> None:
        self._timer = self._loop.call_later(self.header_timeout, self._header_timeout)

    def _header_timeout(self) -> None:
        self._timer = None
        if not self._busy and not self._closed:
            self.transport.abort()

    # --- handing the connection over (downloads) --------------------------------------

    def take_socket(self, give: Callable[[int], bool]) -> bool:
        """Hand the connection's socket to ``give(fd)``; on True this process lets go of it.

        Only for plain TCP: the receiver must hold its own copy of the descriptor
        (``SCM_RIGHTS`` makes one) before ``give`` returns. The connection
        is not shut down here: closing our descriptor leaves the receiver's open.
        """
        sock = self.transport.get_extra_info("socket")
        if sock is None or self._closed:
            return False
        if not give(sock.fileno()):
            return False
        self._detach()
        self.transport.abort()  # our descriptor only: the TCP connection lives on in the receiver
        return True

    async def relay(self, inner: socket.socket) -> None:
        """Relay this (TLS) connection to and from ``inner``, one end of a socketpair, until either closes."""
        self._detach()
        relay = Relay(self.transport)
        await self._loop.connect_accepted_socket(lambda: relay.inner, sock=inner)
        self.transport.set_protocol(relay)
        self.transport.resume_reading()

    def _detach(self) -> None:
        self._detached = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.on_close is not None:
            callback, self.on_close = self.on_close, None
            callback()


class Relay(asyncio.Protocol):
    """Bytes both ways between a client transport and an inner stream, with backpressure.

    Used for TLS downloads: the file worker writes plain HTTP into a Unix
    socket (sendfile), and the gateway only encrypts: see README, "Downloads".
    """

    def __init__(self, outer: asyncio.Transport):
        self.outer = outer
        self.inner = _Inner(self)

    # The inner transport is there from the connection that created this relay
    # (see HttpExchange) until connection_lost: only those two check for None.
    def data_received(self, data: bytes) -> None:
        assert self.inner.transport is not None
        self.inner.transport.write(data)

    def eof_received(self) -> bool:
        if self.inner.transport is not None and self.inner.transport.can_write_eof():
            self.inner.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner.transport is not None:
            self.inner.transport.close()

    def pause_writing(self) -> None:
        assert self.inner.transport is not None
        self.inner.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.inner.transport is not None
        if not self.inner.transport.is_closing():
            self.inner.transport.resume_reading()


class _Inner(asyncio.Protocol):
    def __init__(self, relay: Relay):
        self.relay = relay
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.relay.outer.write(data)

    def eof_received(self) -> bool:
        self.relay.outer.close()  # flushes what is buffered, then closes (TLS close_notify)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.relay.outer.is_closing():
            self.relay.outer.close()

    def pause_writing(self) -> None:
        self.relay.outer.pause_reading()

    def resume_writing(self) -> None:
        if not self.relay.outer.is_closing():
            self.relay.outer.resume_reading()


def _response(status: int, headers: dict[str, str]) -> h11.Response:
    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b""
    return h11.Response(status_code=status, headers=list(headers.items()), reason=reason)


def _log_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("http exchange failed", exc_info=task.exception())
