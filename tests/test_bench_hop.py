"""Micro-benchmarks of the worker hop's hot functions (pytest-benchmark).

Disabled in ordinary runs (``--benchmark-disable``: each runs once, as a
check that it still works); time them with
``pytest -n 0 --benchmark-enable -k bench_ tests/test_bench_hop.py``.
The service-level figure is ``python -m bench cost`` (bench/README.md).
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import zmq
from camservice.gateway.calls import Call
from camservice.gateway.pool import WorkerPool

from camservice import comms
from camservice.envelope import Ready, Reply, Request, pack, unpack

IDENTITY = b"discovery-0:1"
CALLS_PER_TICK = 5  # about what one event-loop tick of the gateway carries at 100 connections
RESULT = json.dumps({"device": "sim:0", "formats": ["YUYV", "MJPEG"], "resolutions": ["640x480"]})


@pytest.fixture
def pool_and_worker(tmp_path):
    """A started pool (its loop not running: the benchmark drives it) and one registered worker."""
    loop = asyncio.new_event_loop()
    ctx = zmq.Context()
    endpoint = f"ipc://{tmp_path}/pool.sock"
    pool = WorkerPool(ctx, endpoint, heartbeat_interval=60.0, liveness=3)
    pool.start(loop)
    worker = comms.dealer(ctx, IDENTITY)
    worker.connect(endpoint)
    worker.send(Ready("discovery", 1, 1_000_000, 0).pack())
    deadline = time.monotonic() + 10
    while not pool.workers and time.monotonic() < deadline:
        pool.drain()
        worker.poll(10)
    assert pool.workers, "the worker never registered"
    yield pool, worker
    pool.close()
    worker.close(linger=0)
    ctx.term()
    loop.close()


def test_bench_pool_call_and_reply(pool_and_worker, benchmark):
    """A tick of calls through ``WorkerPool``: call, flush (one frame), the replies' frame drained.

    The fake worker's recv/unpack/pack is inside the timing too (a small,
    constant part).
    """
    pool, worker = pool_and_worker
    answers: list = []
    params = {"device": "camera0"}
    caller = {"sub": "bench", "role": "viewer"}

    def answer(error, result) -> None:
        answers.append((error, result))

    def tick() -> None:
        pool._flush_scheduled = True  # the benchmark flushes by hand: nothing queued on the idle loop
        for _ in range(CALLS_PER_TICK):
            pool.call(Call("discovery", "get_camera_capabilities", params, 10.0, answer, "g0-1", caller))
        pool._flush()
        requests = unpack(worker.recv())
        worker.send(pack(*[Reply(r.seq, None, RESULT, True) for r in requests]))
        while pool.pending:  # the replies' frame read back through the pool's Drain
            pool.socket.poll(1000)
            pool.drain()
        pool.sweep()

    benchmark(tick)
    assert answers and all(error is None and str(result) == RESULT for error, result in answers)
    assert not pool.pending and not pool._deadlines


@pytest.mark.parametrize("shape", ["requests", "replies"])
def test_bench_envelope_unpack(benchmark, shape):
    """One frame of five messages decoded: requests on the worker's side, replies on the gateway's."""
    if shape == "requests":
        caller = {"sub": "bench", "role": "viewer"}
        messages = [
            Request(i, "get_camera_capabilities", {"device": "camera0"}, 1.7e9, f"g0-{i}", caller) for i in range(5)
        ]
    else:
        messages = [Reply(i, None, RESULT, True) for i in range(5)]
    frame = pack(*messages)
    decoded = benchmark(unpack, frame)
    assert decoded == messages and all(type(m) is type(messages[0]) for m in decoded)
