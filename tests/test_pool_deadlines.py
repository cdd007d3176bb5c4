"""The pool's deadlines: a call nobody answers in time gets -32011, an answered one is forgotten.

Deadlines are kept as one FIFO per timeout (``WorkerPool._expire``): these
tests drive a real pool over real ZeroMQ with a worker that answers only
what it is told to, and check that expiry follows each call's own timeout
(a long one does not hold up a short one behind it), that a call waiting
for a worker expires too, and that answered calls leave nothing behind.
"""

from __future__ import annotations

import asyncio
import json

import zmq
from camservice.gateway.calls import Call
from camservice.gateway.pool import WorkerPool

from camservice import comms
from camservice.envelope import Ready, Reply, Request, pack, unpack
from camservice.errors import SERVICE_BUSY


async def _until(condition, pool: WorkerPool, timeout: float = 10.0) -> None:
    """Drain and sweep until ``condition()`` holds (generous timeout, never a fixed sleep)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        pool.drain()
        pool.sweep()
        await asyncio.sleep(0.01)


async def _requests(worker: zmq.Socket, count: int) -> list[Request]:
    got: list[Request] = []
    while len(got) < count:
        assert await asyncio.wait_for(asyncio.to_thread(worker.poll, 5000), 6) == zmq.POLLIN
        got.extend(m for m in unpack(worker.recv()) if isinstance(m, Request))
    return got


def _run(tmp_path, scenario):
    async def main():
        ctx = zmq.Context()
        endpoint = f"ipc://{tmp_path}/pool.sock"
        # A heartbeat timeout far beyond the test: the silent worker stays registered.
        pool = WorkerPool(ctx, endpoint, heartbeat_interval=60.0, liveness=3)
        pool.start(asyncio.get_running_loop())
        worker = comms.dealer(ctx, b"files-0:21")
        try:
            worker.connect(endpoint)
            worker.send(Ready("files", 21, 8, 0).pack())
            await _until(lambda: pool.workers, pool)
            await scenario(pool, worker)
        finally:
            pool.close()
            worker.close(linger=0)
            ctx.term()

    asyncio.run(main())


def test_each_call_expires_after_its_own_timeout_and_answered_ones_are_forgotten(tmp_path):
    answers: dict[str, tuple] = {}

    def answer(name):
        return lambda error, result: answers.setdefault(name, (error, result))

    async def scenario(pool: WorkerPool, worker: zmq.Socket) -> None:
        pool.call(Call("files", "list_recordings", {}, 60.0, answer("long")))
        pool.call(Call("files", "list_recordings", {}, 0.2, answer("short")))
        pool.call(Call("files", "list_recordings", {}, 0.2, answer("answered")))
        long_call, _, answered = await _requests(worker, 3)
        worker.send(pack(Reply(answered.seq, None, json.dumps({"files": []}), True)))
        await _until(lambda: "short" in answers, pool)
        error, _ = answers["short"]
        assert error.code == SERVICE_BUSY and error.data["reason"] == "no worker answered in time"
        assert answers["answered"][0] is None
        assert "long" not in answers  # its own deadline is a minute away
        assert pool.timeouts["files"] == 1
        # The expired and the answered call are gone; only the long one is tracked.
        assert list(pool.pending) == [long_call.seq]
        assert [list(fifo) for fifo in pool._deadlines.values()] == [[long_call.seq]]
        worker.send(pack(Reply(long_call.seq, None, json.dumps({"files": []}), True)))
        await _until(lambda: "long" in answers, pool)
        pool.sweep()
        assert pool._deadlines == {} and pool.pending == {}

    _run(tmp_path, scenario)


def test_calls_with_the_same_timeout_expire_in_the_order_they_were_made(tmp_path):
    answers: list[tuple[str, int]] = []

    async def scenario(pool: WorkerPool, worker: zmq.Socket) -> None:
        for name in ("first", "second"):
            pool.call(Call("files", "list_recordings", {}, 0.2, lambda e, r, name=name: answers.append((name, e.code))))
        await _requests(worker, 2)
        await _until(lambda: len(answers) == 2, pool)
        assert answers == [("first", SERVICE_BUSY), ("second", SERVICE_BUSY)]
        assert pool._deadlines == {}

    _run(tmp_path, scenario)


def test_a_call_queued_for_a_busy_kind_expires_too(tmp_path):
    answers: list = []

    async def scenario(pool: WorkerPool, worker: zmq.Socket) -> None:
        # The worker has capacity 8: the ninth call waits in the queue, never sent.
        for _ in range(8):
            pool.call(Call("files", "list_recordings", {}, 60.0, lambda e, r: None))
        pool.call(Call("files", "list_recordings", {}, 0.2, lambda e, r: answers.append(e)))
        await _requests(worker, 8)
        assert len(pool.queues["files"]) == 1
        await _until(lambda: answers, pool)
        assert answers[0].code == SERVICE_BUSY
        assert answers[0].data["reason"] == "no files worker available"

    _run(tmp_path, scenario)
