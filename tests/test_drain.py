"""camservice.drain: the one edge-triggered ZeroMQ reader, over real sockets."""

import asyncio

import zmq

from camservice.drain import Drain


def pair(ctx, tmp_path):
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind(f"ipc://{tmp_path}/pair.sock")
    b.connect(f"ipc://{tmp_path}/pair.sock")
    return a, b


def test_every_waiting_message_is_handled_and_a_failing_one_stops_nothing(tmp_path):
    async def scenario():
        ctx = zmq.Context()
        ours, theirs = pair(ctx, tmp_path)
        got, drains = [], []
        done = asyncio.Event()

        def handle(frame):
            if frame == b"bad":
                raise ValueError("a handler bug")
            got.append(frame)
            if frame == b"last":
                done.set()

        reader = Drain(ours, handle, after=lambda: drains.append(len(got)))
        try:
            for frame in (b"1", b"bad", b"2", b"last"):
                theirs.send(frame)
            reader.start()
            await asyncio.wait_for(done.wait(), 10)
            assert got == [b"1", b"2", b"last"]
            assert drains and drains[-1] == 3  # ``after`` ran once the batch was in
        finally:
            reader.stop()
            ours.close(linger=0)
            theirs.close(linger=0)
            ctx.term()

    asyncio.run(scenario())


def test_input_that_arrives_around_a_send_is_not_left_waiting(tmp_path):
    """A send may consume the FD's edge: after_send looks again, so the echo's answer is read."""

    async def scenario():
        ctx = zmq.Context()
        ours, theirs = pair(ctx, tmp_path)
        answers = asyncio.Queue()
        reader = Drain(ours, answers.put_nowait)
        try:
            reader.start()
            for n in range(200):
                ours.send(b"%d" % n)
                reader.after_send()
                assert theirs.recv() == b"%d" % n  # the peer answers at once
                theirs.send(b"re %d" % n)
                assert await asyncio.wait_for(answers.get(), 10) == b"re %d" % n
        finally:
            reader.stop()
            ours.close(linger=0)
            theirs.close(linger=0)
            ctx.term()

    asyncio.run(scenario())


# A ROUTER's messages are read without asking RCVMORE between the first two parts
# (Drain._recv_routed): messages of two, three and four parts from different peers
# must still arrive as exactly the parts sent.
def test_a_router_drain_hands_over_each_message_with_exactly_its_parts(tmp_path):
    got: list[list[bytes]] = []

    async def scenario() -> None:
        ctx = zmq.Context()
        endpoint = f"ipc://{tmp_path}/drain.sock"
        router = ctx.socket(zmq.ROUTER)
        router.bind(endpoint)
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.IDENTITY, b"dealer")
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.IDENTITY, b"req")
        drain = Drain(router, got.append, multipart=True)
        try:
            dealer.connect(endpoint)
            req.connect(endpoint)
            drain.start()
            dealer.send(b"one")
            dealer.send_multipart([b"two", b"three", b"four"])
            req.send(b"five")  # REQ adds an empty delimiter: identity, b"", body
            dealer.send(b"six")
            loop = asyncio.get_running_loop()
            end = loop.time() + 10
            while len(got) < 4 and loop.time() < end:
                await asyncio.sleep(0.01)  # the loop's reader drains when the socket's FD fires
        finally:
            drain.stop()
            for sock in (router, dealer, req):
                sock.close(linger=0)
            ctx.term()

    asyncio.run(scenario())
    by_peer: dict[bytes, list[list[bytes]]] = {}
    for message in got:
        by_peer.setdefault(message[0], []).append(message[1:])
    assert by_peer == {
        b"dealer": [[b"one"], [b"two", b"three", b"four"], [b"six"]],
        b"req": [[b"", b"five"]],
    }
