"""One client connection: websockets' Sans-I/O protocol driven by asyncio callbacks.

The gateway speaks WebSocket through :class:`websockets.server.ServerProtocol`,
the library's I/O-free core: it parses the opening handshake and RFC 6455
frames, checks masks, opcodes and sizes, answers pings and runs the closing
handshake. What it leaves to the caller, this module does, in plain
:class:`asyncio.Protocol` callbacks: feed it bytes, hand each complete
message to the gateway at once, write what it wants sent.

Why not websockets' own asyncio server: it runs a task per connection and
moves every message through an assembler, a future and an ``await`` before
the handler sees it. For a JSON-RPC call that the gateway answers in a few
microseconds, that machinery cost more CPU than the call itself, and the
gateway shares two cores with the workers. Here replies go out with one
``transport.write`` per batch of frames read.

Two shortcuts around the protocol object carry nearly all traffic: frames
read (whole, masked, unfragmented data frames are unmasked and handed over
directly; every other frame goes, whole, to ``ServerProtocol``) and replies
framed without it. Both, and why they are safe, are in :mod:`.frames`.

The rest of what the asyncio layer did lives here too:

- an opening-handshake timeout; a request that is not a WebSocket
  handshake is handed, raw, to the handler's ``http_request`` (plain HTTP
  on the same port: health, metrics, downloads), and ``process_request``
  may still refuse a handshake (503), synchronously or with a coroutine;
- messages reassembled from fragments, text checked to be UTF-8 (close
  code 1007 otherwise, RFC 6455 8.1);
- backpressure: when a client stops reading and its write buffer passes
  ``write_limit``, reading its requests pauses; a client that stays stuck
  for ``slow_client_timeout`` is closed with 1008;
- keepalive: :meth:`Connection.keepalive`, called by the server every
  ``ping_interval``, pings, and fails the connection (1011) when the
  previous ping is still unanswered;
- closing: the server half-closes TCP after the closing handshake (RFC 6455
  7.1.1) and aborts a peer that does not finish within ``close_timeout``.
"""

from __future__ import annotations

import asyncio
import http
import inspect
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from typing import Protocol as Interface

# apply_mask from websockets.frames is the C speedup where built (websockets.utils has the pure-Python one).
from websockets.frames import CloseCode, Frame, Opcode, apply_mask
from websockets.http11 import Request, Response
from websockets.protocol import SEND_EOF, State
from websockets.server import ServerProtocol

from .frames import next_frame, text_frame

logger = logging.getLogger("websockets.server")

OPEN, CONNECTING = State.OPEN, State.CONNECTING
#: Longest opening request head read before deciding between WebSocket and plain HTTP.
MAX_HEAD_BYTES = 16 * 1024
HEAD_TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
TEXT, BINARY, CONT, PONG = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.PONG


@dataclass(frozen=True)
class Limits:
    """Per-connection limits and timeouts (seconds)."""

    max_size: int = 2**20
    write_limit: int = 4 * 2**20
    open_timeout: float = 10.0
    close_timeout: float = 2.0
    slow_client_timeout: float = 10.0
    server_header: str = "camservice"


class Handler(Interface):
    """What a :class:`Connection` reports to the server that owns it."""

    def connection_made(self, connection: Connection) -> None: ...

    def process_request(self, connection: Connection, request: Request) -> Any:
        """A response, None to accept the WebSocket, or an awaitable of either."""

    # Optional: ``http_request(connection, head, rest) -> bool`` sees every
    # complete opening request first (raw bytes, and what followed it); True
    # means it took the transport over (plain HTTP), False lets the
    # WebSocket handshake go on.

    def connection_open(self, connection: Connection) -> None: ...

    def message_received(self, connection: Connection, data: str | bytes) -> None:
        """One complete message: str for a text message, bytes for binary."""

    def connection_lost(self, connection: Connection) -> None: ...


class Connection(asyncio.Protocol):
    """A WebSocket server connection; see the module docstring."""

    def __init__(self, handler: Handler, limits: Limits):
        self.handler = handler
        self.limits = limits
        self.protocol = ServerProtocol(max_size=limits.max_size, logger=logger)
        # Set by connection_made, which asyncio calls before any other callback:
        # typed as always there, so that the callbacks need no None checks.
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.remote_address: Any = None
        #: Whatever the handler keeps per connection (the gateway's Session).
        self.session: Any = None
        #: Whatever the handler keeps while the opening request is read (the gateway's admission ticket).
        self.admission: Any = None
        self._loop = asyncio.get_running_loop()
        self._reading = False  # inside data_received: replies wait for one write at the end
        #: True while we cut frames ourselves (see the module docstring); False
        #: during the handshake and once closing, when everything goes to the protocol.
        self._framing = False
        self._partial = bytearray()  # the start of a frame, or frames sent before our 101
        self._request = bytearray()  # the opening request, until its blank line
        self._request_complete = False
        self._answering = False  # process_request's coroutine is running
        self._out: list[bytes] = []  # frames waiting for that write, in order
        self._fragments: list[bytes] = []
        self._fragmented_text = False
        self._ping_unanswered = False
        self._timer: asyncio.TimerHandle | None = None  # opening handshake, then closing handshake
        self._slow_timer: asyncio.TimerHandle | None = None
        self._lost = False

    # --- public API -------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.protocol.state is OPEN

    @property
    def close_code(self) -> int | None:
        return self.protocol.close_code

    def send(self, text: str) -> None:
        """Send a text message; dropped silently once closing (as websockets.broadcast does)."""
        if self.protocol.state is not OPEN:
            return
        queued = self.protocol.data_to_send()
        if queued:
            self._out.extend(queued)
        self._out.append(text_frame(text.encode()))
        if not self._reading:
            self._flush()

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake (or drop a connection still in its opening one)."""
        state = self.protocol.state
        if state is OPEN:
            self.protocol.send_close(code, reason)
            if not self._reading:
                self._flush()
        elif state is CONNECTING and self.transport is not None:
            self.transport.close()

    def keepalive(self) -> None:
        """Ping; fail the connection if the previous ping got no pong."""
        if self.protocol.state is not OPEN:
            return
        if self._ping_unanswered:
            self.protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        else:
            self._ping_unanswered = True
            self.protocol.send_ping(os.urandom(4))
        if not self._reading:
            self._flush()

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: uvloop's transports do everything asyncio.Transport
        # does without subclassing it.
        self.transport = transport  # type: ignore[assignment]
        self.remote_address = transport.get_extra_info("peername")
        self.transport.set_write_buffer_limits(high=self.limits.write_limit, low=self.limits.write_limit // 2)
        self._timer = self._loop.call_later(self.limits.open_timeout, self._give_up)
        self.handler.connection_made(self)

    def data_received(self, data: bytes) -> None:
        self._reading = True
        try:
            if self._framing:
                self._receive_frames(data)
            elif self.protocol.state is CONNECTING and not self.protocol.close_expected():
                self._receive_request(data)
            else:
                self._receive(data)
        finally:
            self._reading = False
            self._flush()

    def eof_received(self) -> None:
        self.protocol.receive_eof()
        self._flush()
        # Returning None lets asyncio close the transport once our writes are out.

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        for timer in (self._timer, self._slow_timer):
            if timer is not None:
                timer.cancel()
        try:
            self.protocol.receive_eof()  # idempotent; the state becomes CLOSED
        finally:
            self.handler.connection_lost(self)

    def pause_writing(self) -> None:
        # The client does not read its replies: stop reading its requests.
        self.transport.pause_reading()
        self._slow_timer = self._loop.call_later(self.limits.slow_client_timeout, self._slow_client)

    def resume_writing(self) -> None:
        if self._slow_timer is not None:
            self._slow_timer.cancel()
            self._slow_timer = None
        if not self._answering and not self.transport.is_closing():
            self.transport.resume_reading()

    # --- internals ----------------------------------------------------------------

    def _receive_request(self, data: bytes) -> None:
        """The opening request: read whole, then either the protocol or the handler's HTTP side gets it.

        The protocol gets the request and nothing after it: frames a client
        sends right behind its request wait in ``_partial`` until the 101 is
        out (fed to the protocol early, they would be parsed, and pings
        answered, before the handshake is answered). A request that is not a
        WebSocket handshake goes, with the bytes behind it, to the handler's
        ``http_request`` (plain HTTP: health, metrics, downloads), which may
        take the transport over.
        """
        if self._request_complete:
            self._partial += data
            return
        seen = len(self._request)
        self._request += data
        end = self._request.find(b"\r\n\r\n", max(0, seen - 3))
        if end < 0:
            if len(self._request) > MAX_HEAD_BYTES:
                self._request = bytearray()
                self.transport.write(HEAD_TOO_LARGE)
                self.transport.close()
            return
        head, rest = bytes(self._request[: end + 4]), bytes(self._request[end + 4 :])
        self._request_complete, self._request = True, bytearray()
        take = getattr(self.handler, "http_request", None)
        if take is not None and take(self, head, rest):
            # The transport belongs to another protocol now: nothing more happens here.
            self._lost = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        self._partial += rest
        self._receive(head)

    def _receive(self, data: bytes | bytearray) -> None:
        """Through the protocol: the request, frames other than simple data frames, a closing stream."""
        protocol = self.protocol
        try:
            protocol.receive_data(data)
        except EOFError:  # bytes after the peer's EOF: nothing to do with them
            return
        self._process(protocol.events_received())

    def _receive_frames(self, data: bytes) -> None:
        buffer: bytes | bytearray = data
        if self._partial:
            self._partial += data
            buffer = self._partial
        protocol, max_size = self.protocol, self.limits.max_size
        position = 0
        while (found := next_frame(buffer, position)) is not None:
            start, end, length = found
            if length > max_size or end > len(buffer):
                break  # too large (the protocol refuses it below), or not all here yet
            first = buffer[position]
            if (first == 0x81 or first == 0x82) and buffer[position + 1] & 0x80 and not self._fragments:
                self._deliver(apply_mask(buffer[start:end], buffer[start - 4 : start]), first == 0x81)
            else:
                self._receive(buffer[position:end])
            position = end
            if protocol.state is not OPEN:
                break
        if protocol.state is OPEN and (found is None or found[2] <= max_size):
            if position < len(buffer):
                if position or buffer is not self._partial:
                    self._partial = bytearray(buffer[position:])
            elif self._partial:
                self._partial = bytearray()
            return
        # Closing, or a frame too large: from here on the protocol reads the stream.
        self._framing = False
        rest, self._partial = buffer[position:], bytearray()
        if rest:
            self._receive(rest)

    def _process(self, events: list) -> None:
        for event in events:
            if isinstance(event, Request):
                self._handshake(event)
            elif self.protocol.state is OPEN:
                self._frame(event)

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        # The parser makes bytes; the wider BytesLike type is for frames we build.
        payload: bytes = frame.data  # type: ignore[assignment]
        if opcode is TEXT or opcode is BINARY:
            if frame.fin:
                self._deliver(payload, opcode is TEXT)
            else:
                self._fragments = [payload]
                self._fragmented_text = opcode is TEXT
        elif opcode is CONT:
            self._fragments.append(payload)
            if frame.fin:
                data, self._fragments = b"".join(self._fragments), []
                self._deliver(data, self._fragmented_text)
        elif opcode is PONG:
            self._ping_unanswered = False
        # PING and CLOSE: ServerProtocol has already queued the pong or the close reply.

    def _deliver(self, data: bytes, text: bool) -> None:
        if text:
            try:
                message: str | bytes = data.decode()
            except UnicodeDecodeError as exc:
                self.protocol.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                return
        else:
            message = data
        try:
            self.handler.message_received(self, message)
        except Exception:
            logger.error("message handler failed", exc_info=True)
            if self.protocol.state is OPEN:
                self.protocol.fail(CloseCode.INTERNAL_ERROR)

    def _handshake(self, request: Request) -> None:
        """Answer the opening handshake, now or when process_request's coroutine is done."""
        try:
            response = self.handler.process_request(self, request)
        except Exception:
            logger.error("process_request failed", exc_info=True)
            response = self._internal_error()
        if inspect.isawaitable(response):
            self._answering = True
            self.transport.pause_reading()
            task = asyncio.ensure_future(asyncio.wait_for(response, self.limits.open_timeout))
            task.add_done_callback(lambda done: self._handshake_answered(request, done))
            return
        self._respond(request, response)

    def _handshake_answered(self, request: Request, task: asyncio.Future) -> None:
        if self._lost:
            return
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                logger.error("process_request failed", exc_info=task.exception())
            response = self._internal_error()
        else:
            response = task.result()
        self._answering = False
        self._reading = True
        try:
            self._respond(request, response)
        finally:
            self._reading = False
            self._flush()
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def _respond(self, request: Request, response: Response | None) -> None:
        if response is None:
            response = self.protocol.accept(request)
        response.headers["Server"] = self.limits.server_header
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.protocol.send_response(response)
        early, self._partial = self._partial, bytearray()
        if self.protocol.state is OPEN:
            self._framing = True  # the protocol has read exactly the request: frames start here
            self.handler.connection_open(self)
            if early:
                self._receive_frames(bytes(early))

    def _internal_error(self) -> Response:
        return self.protocol.reject(http.HTTPStatus.INTERNAL_SERVER_ERROR, "internal error\n")

    def _flush(self) -> None:
        writes = self.protocol.data_to_send()
        if self._out:
            writes, self._out = self._out + writes, []
        if not writes or self._lost:
            return
        eof = SEND_EOF in writes  # half-close after what comes before it; nothing can follow it
        if eof:
            del writes[writes.index(SEND_EOF) :]
        if writes:
            self.transport.write(writes[0] if len(writes) == 1 else b"".join(writes))
        if eof:
            if self.transport.can_write_eof():
                self.transport.write_eof()
            else:
                self.transport.close()
        if self._timer is None and (eof or self.protocol.close_expected()):
            self._timer = self._loop.call_later(self.limits.close_timeout, self._give_up)

    def _give_up(self) -> None:
        """The opening or closing handshake did not finish in time."""
        self._timer = None
        if not self._lost:
            self.transport.abort()

    def _slow_client(self) -> None:
        self._slow_timer = None
        if self.protocol.state is OPEN:
            self.close(CloseCode.POLICY_VIOLATION, "client does not read its replies")
        # The close frame waits behind the unread replies: the close timer aborts.
        if self._timer is None:
            self._timer = self._loop.call_later(self.limits.close_timeout, self._give_up)


def broadcast(connections: Iterable[Connection], text: str) -> None:
    """Send one text message to many connections, skipping those not open."""
    for connection in connections:
        connection.send(text)
