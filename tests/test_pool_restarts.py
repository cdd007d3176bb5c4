"""A worker kind the supervisor is restarting is not down: its calls wait for the replacement.

The gateway's pool fails a kind's calls at once when no worker of it has been
seen for a heartbeat timeout (a crash loop the supervisor gave up on must not
cost every caller its whole deadline). But a restart on a slow, loaded machine
can take longer than that timeout, and then a retried idempotent call was
failed with "no ... worker is running" although a replacement was on its way.
The supervisor's process-exit event now says how long the replacement may take
(``expect_within_s``); these tests drive a real pool over real ZeroMQ.
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

HEARTBEAT = 0.05  # x liveness 2: a kind unseen for 0.1 s counts as down unless a restart is expected


async def _register(pool: WorkerPool, ctx: zmq.Context, endpoint: str, pid: int) -> zmq.Socket:
    worker = comms.dealer(ctx, f"files-0:{pid}".encode())
    worker.connect(endpoint)
    worker.send(Ready("files", pid, 8, 0).pack())
    for _ in range(500):
        pool.drain()
        if any(w.pid == pid for w in pool.workers.values()):
            return worker
        await asyncio.sleep(0.01)
    raise AssertionError(f"worker {pid} never registered")


async def _past_the_heartbeat_timeout(pool: WorkerPool) -> None:
    # Time has to pass the (tiny) timeout: sleeping longer than it is enough, whatever the load.
    await asyncio.sleep(pool.heartbeat_timeout * 4)
    pool.sweep()


def _scenario(tmp_path, expect_within_s: float | None) -> tuple[list, list]:
    answers: list = []
    asked: list = []

    async def scenario():
        ctx = zmq.Context()
        endpoint = f"ipc://{tmp_path}/pool.sock"
        pool = WorkerPool(ctx, endpoint, heartbeat_interval=HEARTBEAT, liveness=2)
        pool.start(asyncio.get_running_loop())
        sockets = []
        try:
            sockets.append(await _register(pool, ctx, endpoint, 11))
            pool.forget_pid(11, None, expect_within_s)  # the supervisor: files-0 exited
            await _past_the_heartbeat_timeout(pool)
            pool.call(Call("files", "list_recordings", {}, 20.0, lambda error, result: answers.append((error, result))))
            await _past_the_heartbeat_timeout(pool)
            if answers:  # failed at once: the kind counted as down
                return
            replacement = await _register(pool, ctx, endpoint, 12)
            sockets.append(replacement)
            pool.sweep()  # pumps the queued call to the new worker
            assert await asyncio.wait_for(asyncio.to_thread(replacement.poll, 5000), 6) == zmq.POLLIN
            (request,) = unpack(replacement.recv())
            assert isinstance(request, Request)
            asked.append(request.method)
            replacement.send(pack(Reply(request.seq, None, json.dumps({"files": []}), True)))
            for _ in range(500):
                pool.drain()
                if answers:
                    break
                await asyncio.sleep(0.01)
        finally:
            pool.close()
            for sock in sockets:
                sock.close(linger=0)
            ctx.term()

    asyncio.run(asyncio.wait_for(scenario(), 30))
    return answers, asked


def test_a_call_waits_for_the_replacement_the_supervisor_announced(tmp_path):
    answers, asked = _scenario(tmp_path, expect_within_s=30.0)
    assert asked == ["list_recordings"]
    ((error, result),) = answers
    assert error is None and json.loads(result) == {"files": []}


def test_without_a_restart_coming_the_kind_is_down_and_calls_fail_at_once(tmp_path):
    answers, asked = _scenario(tmp_path, expect_within_s=None)
    assert asked == []
    ((error, _),) = answers
    assert error.code == SERVICE_BUSY and error.data["reason"] == "no files worker is running"
