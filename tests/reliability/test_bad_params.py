"""Issue 11 §1: one caller's bad number must never hurt anybody else's call.

Reproduced against a real service: ``list_recordings {"offset": 1e300}``
used to pass validation as the integer 10^300, which msgpack cannot encode;
the exception escaped ``WorkerPool._flush`` and lost every message of that
event-loop tick, so every call sharing the tick (other clients' included)
got -32011 ten seconds later. An offset between 2^63 and 2^64-1 reached
SQLite and came back -32603.

The fixes checked here: every numeric param is bounded (-32602 with
``data.param`` and ``data.reason``), and a message that cannot be encoded
fails alone. The property test at the end throws extreme values at every
param of every method in :data:`camservice.methods.METHODS`.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import zmq
from camservice.gateway.calls import Call
from camservice.gateway.pool import WorkerPool
from camservice.workers.base import Worker, _Link
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from camservice import comms, config, methods
from camservice.envelope import Ready, unpack
from camservice.errors import INTERNAL_ERROR, INVALID_PARAMS, PARSE_ERROR, SERVICE_BUSY, RpcError

from ..harness import Client, Service

pytestmark = pytest.mark.slow

#: Generous limits: the property test sends many calls from one connection.
LIMITS = {"security.rate_limit": 100000.0, "security.rate_burst": 100000, "storage.min_free_bytes": 0}


class Loop:
    """One event loop for the module: the clients stay connected between examples."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()

    def run(self, coro, timeout: float = 60.0):
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))


@pytest.fixture(scope="module")
def api():
    with Service(simulate=1, **LIMITS) as svc:
        loop = Loop()
        attacker = loop.run(Client(svc.url, svc.token("admin")).__aenter__())
        bystander = loop.run(Client(svc.url, svc.token("viewer")).__aenter__())
        yield svc, loop, attacker, bystander
        loop.run(attacker.__aexit__(None, None, None))
        loop.run(bystander.__aexit__(None, None, None))
        loop.loop.close()


async def batch(client: Client, *calls: tuple[str, dict]) -> list[dict]:
    """Send ``calls`` as one batch (so the gateway handles them in one tick); replies in call order."""
    ids = [f"b{next(client._ids)}" for _ in calls]
    text = json.dumps([{"jsonrpc": "2.0", "method": m, "params": p, "id": i} for (m, p), i in zip(calls, ids)])
    future = asyncio.get_running_loop().create_future()
    client._waiting["batch"] = future
    await client.ws.send(text)
    replies = await asyncio.wait_for(future, client.timeout)
    by_id = {reply["id"]: reply for reply in replies}
    return [by_id[i] for i in ids]


def assert_invalid(reply: dict, param: str) -> None:
    assert "error" in reply, reply
    assert reply["error"]["code"] == INVALID_PARAMS, reply
    assert reply["error"]["data"]["param"] == param
    assert reply["error"]["data"]["reason"]


@pytest.mark.parametrize("offset", [1e300, 2**64, 2**63, 2**31, -1, 1.5, 10.0])
def test_an_out_of_range_offset_is_refused_and_its_tick_neighbours_are_answered(api, offset):
    _svc, loop, attacker, bystander = api

    async def scenario():
        # One batch: the bad call and a good one share the gateway's tick and
        # the frame to the file worker; another client's call runs alongside.
        together = batch(attacker, ("list_recordings", {"offset": offset}), ("list_recordings", {"limit": 1}))
        other = bystander.request("get_camera_capabilities", {"device": "sim:0"})
        return await asyncio.gather(together, other)

    (bad, good), other = loop.run(scenario())
    assert_invalid(bad, "offset")
    assert "result" in good, good
    assert "result" in other, other


# --- every param of every method ---------------------------------------------------------------


class RawJSON(str):
    """A literal spliced into the request text as is: NaN and Infinity are not JSON."""


EXTREME_NUMBERS = st.sampled_from(
    [0, -1, 1, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**64), 10**300, 1e300, -1e300, 1e-300, 0.5]
)
LEAVES = st.one_of(
    EXTREME_NUMBERS,
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=20),
    st.just(RawJSON("1e400")),  # valid JSON that parses as infinity
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
RAW_ONLY = st.sampled_from([RawJSON("NaN"), RawJSON("Infinity"), RawJSON("-Infinity")])


def to_json(value) -> str:
    if isinstance(value, RawJSON):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{to_json(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


#: (method, param) for every param every method names in the table.
#: A method without params gets an unexpected one.
CASES = [(name, param) for name, method in methods.METHODS.items() for param in method.params or ("unexpected",)]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=st.sampled_from(CASES), value=VALUES | RAW_ONLY)
def test_extreme_values_at_every_param_never_hurt_a_bystander(api, case, value):
    _svc, loop, attacker, bystander = api
    name, param = case

    async def scenario():
        request_id = f"x{next(attacker._ids)}"
        text = f'{{"jsonrpc":"2.0","method":{json.dumps(name)},"params":{{{json.dumps(param)}:{to_json(value)}}},"id":{json.dumps(request_id)}}}'
        key = json.dumps(request_id)
        if isinstance(value, RawJSON) and value in ("NaN", "Infinity", "-Infinity"):
            key = "null"  # not JSON: the parse error cannot echo the id
        attempt = attacker.raw(text, key)
        watch = asyncio.gather(
            bystander.request("get_camera_capabilities", {"device": "sim:0"}),
            bystander.request("list_recordings", {"limit": 1}),
        )
        return await asyncio.gather(attempt, watch)

    reply, (capabilities, listing) = loop.run(scenario())
    assert ("result" in reply) != ("error" in reply), reply
    if "error" in reply:
        # Refused for what it is, never an internal failure or a lost message.
        assert reply["error"]["code"] not in (INTERNAL_ERROR, SERVICE_BUSY), (case, value, reply)
        if reply["error"]["code"] == INVALID_PARAMS:
            assert reply["error"]["data"]["reason"]
        if reply["error"]["code"] == PARSE_ERROR:
            assert isinstance(value, RawJSON)
    assert "result" in capabilities, capabilities
    assert "result" in listing, listing


# --- one unencodable message fails alone (real ZeroMQ, no service) ---------------------------------


def test_a_request_msgpack_cannot_carry_fails_alone_and_its_frame_neighbours_travel(tmp_path):
    """Defence behind validation: WorkerPool._flush used to lose the whole tick's outbox."""

    async def scenario():
        ctx = zmq.Context()
        endpoint = f"ipc://{tmp_path}/pool.sock"
        pool = WorkerPool(ctx, endpoint, heartbeat_interval=1.0, liveness=3)
        pool.start(asyncio.get_running_loop())
        worker = comms.dealer(ctx, b"files-0:1")
        worker.connect(endpoint)
        try:
            worker.send(Ready("files", 1, 8, 0).pack())
            while not pool.alive()["files"]:
                await asyncio.sleep(0.01)
                pool.drain()
            answers = {}

            def answer(name):
                return lambda error, result: answers.setdefault(name, (error, result))

            # Two calls in one tick: one frame to the same worker.
            pool.call(Call("files", "list_recordings", {"offset": 2**64}, 5.0, answer("bad")))
            pool.call(Call("files", "list_recordings", {"offset": 0}, 5.0, answer("good")))
            await asyncio.sleep(0)  # the flush runs at the end of the tick
            await asyncio.sleep(0)
            error, _ = answers["bad"]  # at once, not after the deadline
            assert error.code == INVALID_PARAMS and error.data["reason"]
            assert "good" not in answers
            assert await asyncio.wait_for(asyncio.to_thread(worker.poll, 5000), 6) == zmq.POLLIN
            (request,) = unpack(worker.recv())
            assert request.method == "list_recordings" and request.params == {"offset": 0}
            assert pool.pending.keys() == {request.seq}
        finally:
            pool.close()
            worker.close(linger=0)
            ctx.term()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_worker_reply_msgpack_cannot_carry_becomes_an_error_alone(tmp_path):
    """The worker side's flush: a reply whose error data cannot be encoded is -32603, its neighbours go."""

    async def scenario():
        ctx = zmq.Context()
        endpoint = f"ipc://{tmp_path}/link.sock"
        gateway = comms.router(ctx)
        gateway.bind(endpoint)
        sock = comms.dealer(ctx, b"w")
        sock.connect(endpoint)
        worker = Worker(config.load(environ={}))
        link = _Link(endpoint, sock)
        try:
            worker._reply(link, 1, RpcError(-32000, "odd", {"n": 2**64}))
            worker._reply(link, 2, None, {"ok": True})
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            replies = []
            while len(replies) < 2:
                assert await asyncio.wait_for(asyncio.to_thread(gateway.poll, 5000), 6) == zmq.POLLIN
                _identity, frame = gateway.recv_multipart()
                replies.extend(unpack(frame))
            by_seq = {reply.seq: reply for reply in replies}
            assert by_seq[1].error["code"] == INTERNAL_ERROR
            assert by_seq[2].error is None and json.loads(by_seq[2].result) == {"ok": True}
        finally:
            sock.close(linger=0)
            gateway.close(linger=0)
            ctx.term()

    asyncio.run(asyncio.wait_for(scenario(), 30))
