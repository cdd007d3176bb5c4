"""camservice.gateway.connection: the WebSocket layer, over real sockets and byte by byte.

Most tests run a tiny echo server made of :class:`camservice.gateway.connection.Connection`
on a real TCP port and talk to it with the ``websockets`` client or with raw
frames written by hand on a plain socket (what a buggy or hostile client
would send). The property test feeds a recorded byte stream cut at random
places straight into ``data_received``: the framing shortcut must deliver
exactly what the protocol alone would have.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import pytest
import websockets
from camservice.gateway.connection import Connection, Limits
from camservice.gateway.frames import next_frame, text_frame
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.datastructures import Headers
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.utils import apply_mask

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def client_frame(opcode: Opcode, data: bytes, fin: bool = True, mask: bool = True, rsv1: bool = False) -> bytes:
    """A client frame written by hand, so it can break the rules on purpose."""
    length = len(data)
    if length < 126:
        header = bytes((0x80 * fin | 0x40 * rsv1 | opcode, 0x80 * mask | length))
    elif length < 65536:
        header = bytes((0x80 * fin | 0x40 * rsv1 | opcode, 0x80 * mask | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 * fin | 0x40 * rsv1 | opcode, 0x80 * mask | 127)) + length.to_bytes(8, "big")
    if not mask:
        return header + data
    key = os.urandom(4)
    return header + key + apply_mask(data, key)


class Echo:
    """Handler that answers every message with its text (binary: its hex, prefixed)."""

    def __init__(self):
        self.connections: set[Connection] = set()
        self.opened = 0
        self.lost = asyncio.Event()
        self.lost_count = 0

    def connection_made(self, connection):
        self.connections.add(connection)

    def process_request(self, connection, request):
        if request.path == "/http":
            return Response(200, "OK", Headers({"Content-Length": "2", "Connection": "close"}), b"ok")
        if request.path == "/later":

            async def answer():
                await asyncio.sleep(0.05)
                return Response(200, "OK", Headers({"Content-Length": "5", "Connection": "close"}), b"later")

            return answer()
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        return None

    def connection_open(self, connection):
        self.opened += 1

    def message_received(self, connection, data):
        if data == "bye":
            connection.close(4000, "asked to leave")
        elif data.startswith("flood") if isinstance(data, str) else False:
            for _ in range(int(data[5:])):
                connection.send("x" * 65536)
        else:
            connection.send(data if isinstance(data, str) else "binary:" + data.hex())

    def connection_lost(self, connection):
        self.connections.discard(connection)
        self.lost_count += 1
        self.lost.set()


class EchoServer:
    def __init__(self, **limits):
        self.limits = Limits(**{"max_size": 1024 * 1024, **limits})
        self.handler = Echo()

    async def __aenter__(self):
        loop = asyncio.get_running_loop()
        # An exception in a protocol callback is only logged by asyncio: collect them.
        self.callback_errors: list[dict] = []
        loop.set_exception_handler(lambda _, context: self.callback_errors.append(context))
        self.server = await loop.create_server(lambda: Connection(self.handler, self.limits), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        return self

    async def __aexit__(self, *exc):
        for connection in list(self.handler.connections):
            connection.transport.abort()
        self.server.close()
        await asyncio.wait_for(self.server.wait_closed(), 5)
        await asyncio.sleep(0)  # let aborted connections report connection_lost
        assert not self.callback_errors, self.callback_errors

    async def raw(self, handshake: bytes = HANDSHAKE) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        client = RawClient(reader, writer)
        if handshake:
            writer.write(handshake)
            status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert status.startswith(b"HTTP/1.1 101"), status
        return client


class RawClient:
    """A WebSocket client written by hand: sends any bytes, reads server frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def frame(self) -> Frame:
        head = await asyncio.wait_for(self.reader.readexactly(2), 5)
        assert not head[1] & 0x80, "server frames are never masked"
        length = head[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        payload = await asyncio.wait_for(self.reader.readexactly(length), 5)
        return Frame(Opcode(head[0] & 0x0F), payload, bool(head[0] & 0x80))

    async def close_frame(self) -> Close:
        while (frame := await self.frame()).opcode is not Opcode.CLOSE:
            pass
        return Close.parse(frame.data)


def run(coro):
    asyncio.run(asyncio.wait_for(coro, 30))


# --- over real sockets ----------------------------------------------------------------


def test_text_and_binary_messages_are_answered_in_order():
    async def scenario():
        async with EchoServer() as server:
            async with websockets.connect(server.url) as ws:
                sent = [f"message {n} " + "é" * n for n in range(60)] + [b"\x00\xff" * 40000]
                for message in sent:
                    await ws.send(message)
                replies = [await asyncio.wait_for(ws.recv(), 5) for _ in sent]
                assert replies[:-1] == sent[:-1]
                assert replies[-1] == "binary:" + (b"\x00\xff" * 40000).hex()  # a 127-length reply frame

    run(scenario())


def test_fragmented_message_with_a_ping_between_fragments():
    async def scenario():
        async with EchoServer() as server:
            client = await server.raw()
            client.send(
                client_frame(Opcode.TEXT, b"hel", fin=False)
                + client_frame(Opcode.PING, b"p1")
                + client_frame(Opcode.CONT, b"lo ", fin=False)
                + client_frame(Opcode.CONT, "wörld".encode(), fin=True)
            )
            pong = await client.frame()
            assert (pong.opcode, pong.data) == (Opcode.PONG, b"p1")
            reply = await client.frame()
            assert (reply.opcode, reply.data) == (Opcode.TEXT, "hello wörld".encode())

    run(scenario())


def test_a_stream_written_one_byte_at_a_time():
    async def scenario():
        async with EchoServer() as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = RawClient(reader, writer)
            stream = HANDSHAKE + b"".join(client_frame(Opcode.TEXT, f"m{n}".encode() * (n * 40)) for n in range(1, 6))
            for byte in stream:
                writer.write(bytes((byte,)))
                await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
            for n in range(1, 6):
                assert (await client.frame()).data == f"m{n}".encode() * (n * 40)

    run(scenario())


def test_frames_sent_together_with_the_handshake_are_answered():
    async def scenario():
        async with EchoServer() as server:
            client = await server.raw(handshake=b"")
            cut = client_frame(Opcode.TEXT, b"x" * 200)
            client.send(HANDSHAKE + client_frame(Opcode.TEXT, b"early") + cut[:5])
            await client.reader.readuntil(b"\r\n\r\n")
            assert (await client.frame()).data == b"early"
            client.send(cut[5:] + client_frame(Opcode.TEXT, b"late"))
            assert (await client.frame()).data == b"x" * 200
            assert (await client.frame()).data == b"late"

    run(scenario())


@pytest.mark.parametrize(
    "payload, code",
    [
        (client_frame(Opcode.TEXT, b"\xff\xfe not utf-8"), 1007),
        (client_frame(Opcode.TEXT, b"unmasked", mask=False), 1002),
        (client_frame(Opcode.CONT, b"nothing to continue"), 1002),
        (client_frame(Opcode.TEXT, b"a", fin=False) + client_frame(Opcode.TEXT, b"b"), 1002),
        (client_frame(Opcode.TEXT, b"x", rsv1=True), 1002),  # RSV1 without an extension
        (client_frame(Opcode.PING, b"p" * 126), 1002),  # control frame over 125 bytes
    ],
    # Named ids: the frames carry random masks, and every pytest-xdist worker must collect the same ids.
    ids=["bad-utf8", "unmasked", "stray-continuation", "unfinished-then-text", "rsv1", "long-ping"],
)
def test_protocol_violations_close_with_the_rfc_code(payload, code):
    async def scenario():
        async with EchoServer() as server:
            client = await server.raw()
            client.send(client_frame(Opcode.TEXT, b"fine") + payload + client_frame(Opcode.TEXT, b"ignored"))
            assert (await client.frame()).data == b"fine"
            assert (await client.close_frame()).code == code
            await asyncio.wait_for(server.handler.lost.wait(), 5)

    run(scenario())


def test_too_large_frame_is_refused_from_its_header():
    async def scenario():
        async with EchoServer(max_size=1000) as server:
            client = await server.raw()
            # Announces 2**40 bytes and sends none: refused at once, nothing buffered.
            client.send(bytes((0x81, 0x80 | 127)) + (2**40).to_bytes(8, "big") + os.urandom(4))
            assert (await client.close_frame()).code == 1009
            client = await server.raw()
            client.send(client_frame(Opcode.TEXT, b"a" * 600, fin=False) + client_frame(Opcode.CONT, b"b" * 600))
            assert (await client.close_frame()).code == 1009  # the message, not each frame, is limited
            async with websockets.connect(server.url) as ws:
                await ws.send("y" * 1000)  # exactly the limit is fine
                assert await asyncio.wait_for(ws.recv(), 5) == "y" * 1000

    run(scenario())


def test_closing_handshakes_both_ways():
    async def scenario():
        async with EchoServer() as server:
            ws = await websockets.connect(server.url)
            await ws.close(1000, "done")
            assert ws.close_code == 1000
            await asyncio.wait_for(server.handler.lost.wait(), 5)
            server.handler.lost.clear()
            async with websockets.connect(server.url) as ws:
                await ws.send("bye")
                await asyncio.wait_for(ws.wait_closed(), 5)
                assert (ws.close_code, ws.close_reason) == (4000, "asked to leave")
            await asyncio.wait_for(server.handler.lost.wait(), 5)
            assert not server.handler.connections

    run(scenario())


def test_keepalive_fails_a_client_that_never_answers_pings():
    async def scenario():
        async with EchoServer() as server:
            silent = await server.raw()
            async with websockets.connect(server.url) as answering:
                await answering.send("hello")
                await answering.recv()
                for _ in range(3):
                    for connection in list(server.handler.connections):
                        connection.keepalive()
                    await asyncio.sleep(0.2)  # the client library answers the ping meanwhile
                ping = await silent.frame()
                assert ping.opcode is Opcode.PING
                assert (await silent.close_frame()).code == 1011
                await answering.send("still here")
                assert await asyncio.wait_for(answering.recv(), 5) == "still here"

    run(scenario())


def test_a_client_that_stops_reading_is_dropped_and_others_are_not():
    async def scenario():
        async with EchoServer(write_limit=256 * 1024, slow_client_timeout=0.3, close_timeout=0.3) as server:
            stuck = await server.raw()
            stuck.writer.transport.pause_reading()
            stuck.send(client_frame(Opcode.TEXT, b"flood200"))  # 13 MB of replies, never read
            async with websockets.connect(server.url, max_size=None) as reading:
                await reading.send("flood40")
                for _ in range(40):
                    assert len(await asyncio.wait_for(reading.recv(), 5)) == 65536
                await asyncio.wait_for(server.handler.lost.wait(), 10)
                assert server.handler.lost_count == 1
                await reading.send("alive")
                assert await asyncio.wait_for(reading.recv(), 5) == "alive"

    run(scenario())


def test_plain_http_answers_and_handshake_failures():
    async def get(port: int, request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), 5)  # read to EOF: the server closes
        writer.close()
        return answer

    async def scenario():
        async with EchoServer() as server:
            answer = await get(server.port, b"GET /http HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"\r\n\r\nok")
            assert b"\r\nServer: camservice\r\n" in answer
            answer = await get(server.port, b"GET /later HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"later")
            answer = await get(server.port, b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 500")
            answer = await get(server.port, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")  # no Upgrade
            assert answer.startswith(b"HTTP/1.1 426")
            assert await get(server.port, b"NOT HTTP AT ALL\r\n\r\n") == b""
            assert server.handler.opened == 0

    run(scenario())


def test_a_connection_that_never_finishes_its_handshake_is_dropped():
    async def scenario():
        async with EchoServer(open_timeout=0.3) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /ws HTTP/1.1\r\n")  # and nothing more
            assert await asyncio.wait_for(reader.read(), 5) == b""
            await asyncio.wait_for(server.handler.lost.wait(), 5)

    run(scenario())


# --- the framing shortcut, byte stream cut anywhere --------------------------------------


class RecordingTransport(asyncio.Transport):
    def __init__(self):
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 1) if name == "peername" else default

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def write(self, data):
        self.written += data

    def can_write_eof(self):
        return True

    def write_eof(self):
        self.closing = True

    def is_closing(self):
        return self.closing

    def close(self):
        self.closing = True

    def abort(self):
        self.closing = True

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


def server_frames(data: bytes) -> list[Frame]:
    frames, position = [], 0
    while position < len(data):
        start, end, length = next_frame(data, position)
        frames.append(Frame(Opcode(data[position] & 0x0F), bytes(data[start:end]), bool(data[position] & 0x80)))
        position = end
    return frames


messages = st.lists(
    st.tuples(st.one_of(st.text(max_size=300), st.binary(max_size=70000)), st.integers(1, 4), st.booleans()),
    min_size=1,
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(messages=messages, cuts=st.lists(st.integers(0, 400000), max_size=12))
def test_any_cut_of_the_stream_delivers_the_same_messages(messages, cuts):
    stream = bytearray(HANDSHAKE)
    expected, pings = [], 0
    for content, pieces, ping_inside in messages:
        is_text = isinstance(content, str)
        data = content.encode() if is_text else content
        expected.append(data if is_text else b"binary:" + data.hex().encode())
        size = max(1, -(-len(data) // pieces))
        chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        for number, chunk in enumerate(chunks):
            opcode = (Opcode.TEXT if is_text else Opcode.BINARY) if number == 0 else Opcode.CONT
            stream += client_frame(opcode, chunk, fin=number == len(chunks) - 1)
            if ping_inside and number == 0:
                stream += client_frame(Opcode.PING, b"%d" % pings)
                pings += 1
    stream += client_frame(Opcode.CLOSE, Close(1000, "").serialize())
    positions = sorted({0, len(stream), *(c % len(stream) for c in cuts)})

    async def feed():
        connection = Connection(Echo(), Limits(max_size=1 << 20))
        transport = RecordingTransport()
        connection.connection_made(transport)
        for start, end in zip(positions, positions[1:]):
            connection.data_received(bytes(stream[start:end]))
        connection.connection_lost(None)
        return bytes(transport.written)

    written = asyncio.run(feed())
    assert written.startswith(b"HTTP/1.1 101")
    frames = server_frames(written[written.index(b"\r\n\r\n") + 4 :])
    assert [f.data for f in frames if f.opcode is Opcode.TEXT] == expected
    assert [f.data for f in frames if f.opcode is Opcode.PONG] == [b"%d" % n for n in range(pings)]
    assert frames[-1].opcode is Opcode.CLOSE and Close.parse(frames[-1].data).code == 1000


def test_text_frame_headers():
    assert text_frame(b"a" * 125)[:2] == b"\x81\x7d"
    assert text_frame(b"a" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert text_frame(b"a" * 65536)[:10] == b"\x81\x7f" + (65536).to_bytes(8, "big")
    for size in (0, 125, 126, 65535, 65536):
        frame = server_frames(text_frame(b"z" * size))[0]
        assert frame.fin and frame.data == b"z" * size
