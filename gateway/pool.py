"""The gateway's view of the workers: registration, dispatch, deadlines.

The gateway binds a ROUTER socket; every worker connects a DEALER and
repeats READY (kind, pid, capacity) as its heartbeat. :class:`WorkerPool`

* sends each call to the least-loaded live worker of the right kind, the
  least recently used among equals, never beyond a worker's capacity: a slow
  file listing never queues a camera call behind it, and two file workers
  share listings;
* queues calls while every worker of a kind is busy or restarting;
* answers -32011 when a call's deadline passes, and when the worker holding
  it dies (missed heartbeats, a GOODBYE, or the supervisor's word that the
  pid exited), except that an idempotent call is sent once more to another
  worker. A non-idempotent call (start/stop recording, delete) is never
  retried on the client's behalf: it may already have taken effect.

Replies are delivered through a callback, not a future: the hot path creates
no task and no future per request. Requests for one worker are collected
during an event-loop tick and sent as one frame at its end (see
:mod:`camservice.envelope`): no added delay, and under load one ZeroMQ send
carries dozens of calls.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import zmq

from camservice import comms
from camservice.drain import Drain
from camservice.envelope import EnvelopeError, Goodbye, Kind, Ready, Reply, Request, pack_wires_apart, unpack
from camservice.errors import INTERNAL_ERROR, METHOD_NOT_FOUND, SERVICE_BUSY, RpcError, invalid_params
from camservice.jsonrpc import Raw
from camservice.methods import WORKER_KINDS

from .calls import Call, ReplyCallback

log = structlog.get_logger("gateway.pool")

#: Why a worker was dropped when it is alive for the kernel but silent: heartbeats
#: missed (SIGSTOP, a blocked loop) or the supervisor killed it as hung.
STOPPED_ANSWERING = "stopped answering"


@dataclass(slots=True)
class WorkerHandle:
    identity: bytes
    kind: str
    pid: int
    capacity: int
    index: int
    last_seen: float
    last_used: float = 0.0
    in_flight: set[int] = field(default_factory=set)
    draining: bool = False


@dataclass(slots=True)
class PendingCall:
    """A :class:`Call` in flight, with what the pool tracks about it."""

    seq: int
    call: Call
    deadline: float  # wall clock, travels to the worker
    expires: float  # the same moment on the monotonic clock, which the sweep reads
    kind: str  # call.kind and call.callback, copied: read on every hop
    answer: ReplyCallback  # answer(error, result), exactly once
    worker: bytes | None = None
    attempts: int = 0
    sent_at: float = 0.0


class WorkerPool:
    def __init__(
        self, ctx: zmq.Context, endpoint: str, heartbeat_interval: float, liveness: int, max_queue: int = 50_000
    ):
        self.endpoint = endpoint
        self.socket = comms.router(ctx)
        self.heartbeat_timeout = heartbeat_interval * liveness
        self.max_queue = max_queue
        self.workers: dict[bytes, WorkerHandle] = {}
        self._by_kind: dict[str, list[WorkerHandle]] = {kind: [] for kind in WORKER_KINDS}
        self.pending: dict[int, PendingCall] = {}
        self.queues: dict[str, deque[PendingCall]] = {kind: deque() for kind in WORKER_KINDS}
        #: Deadlines, one FIFO of seqs per distinct timeout (see :meth:`_expire`).
        self._deadlines: dict[float, deque[int]] = {}
        self._seq = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader = Drain(self.socket, self._on_frame, multipart=True, after=self._pump_touched, name="pool")
        self._touched: set[str] = set()  # worker kinds that freed capacity during this drain
        self._outbox: dict[bytes, list[tuple]] = {}  # identity -> messages for this tick
        self._flush_scheduled = False
        #: Called with a WorkerHandle when a worker of a kind registers for the first time.
        self.on_worker_ready: Callable[[WorkerHandle], None] | None = None
        #: Monotonic time a worker of each kind was last seen alive. A kind with
        #: none for a heartbeat-timeout is down (crash loop, gave up): calls
        #: fail at once instead of waiting out their deadline.
        self._kind_seen: dict[str, float] = {kind: time.monotonic() for kind in WORKER_KINDS}
        #: Monotonic time until which the supervisor said a replacement of a dead worker
        #: is coming: its kind is restarting, not down, and its calls wait for it.
        self._kind_expected: dict[str, float] = {}
        # Counters for metrics.
        self.timeouts: dict[str, int] = {kind: 0 for kind in WORKER_KINDS}
        self.worker_deaths = 0

    # --- lifecycle --------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.socket.bind(self.endpoint)
        self._reader.start(loop)

    def drain(self) -> None:
        """Read whatever the workers sent; the socket reader does this, the sweep too as a safety net."""
        self._reader.drain()

    def close(self) -> None:
        self._flush()
        self._reader.stop()
        for call in list(self.pending.values()):
            self._fail(call, "gateway shutting down")
        self.socket.close(linger=0)

    # --- calls ---------------------------------------------------------------------

    def call(self, call: Call) -> None:
        """Send ``call`` to a worker of its kind; its callback gets the answer, exactly once."""
        kind = call.kind
        if self._kind_down(kind):
            call.callback(RpcError(SERVICE_BUSY, data={"reason": f"no {kind} worker is running"}), None)
            return
        seq = next(self._seq)
        timeout = call.timeout
        pending = PendingCall(seq, call, time.time() + timeout, time.monotonic() + timeout, kind, call.callback)
        self.pending[seq] = pending
        fifo = self._deadlines.get(timeout)
        if fifo is None:
            fifo = self._deadlines[timeout] = deque()
        fifo.append(seq)
        if not self._send(pending):
            queue = self.queues[kind]
            if len(queue) >= self.max_queue:
                del self.pending[seq]
                call.callback(RpcError(SERVICE_BUSY, data={"reason": f"{kind} queue full"}), None)
                return
            queue.append(pending)

    def _kind_down(self, kind: str) -> bool:
        if kind not in self._kind_seen:
            return False
        now = time.monotonic()
        if now < self._kind_expected.get(kind, 0.0):
            return False
        return now - self._kind_seen[kind] > self.heartbeat_timeout and not any(
            w.kind == kind and not w.draining for w in self.workers.values()
        )

    def _pick(self, kind: str, exclude: bytes | None = None) -> WorkerHandle | None:
        best = None
        best_load = 0
        for worker in self._by_kind.get(kind, ()):
            if worker.draining or worker.identity == exclude:
                continue
            load = len(worker.in_flight)
            if load >= worker.capacity:
                continue
            if best is None or load < best_load or (load == best_load and worker.last_used < best.last_used):
                best, best_load = worker, load
        return best

    def _send(self, call: PendingCall, exclude: bytes | None = None) -> bool:
        worker = self._pick(call.kind, exclude)
        if worker is None:
            return False
        # Request(...).wire() without building the NamedTuple: this is the hot path.
        c = call.call
        self._queue(
            worker.identity, (Kind.REQUEST, call.seq, c.method, c.params, call.deadline, c.request_id, c.caller)
        )
        now = time.monotonic()
        worker.in_flight.add(call.seq)
        worker.last_used = now
        call.worker, call.sent_at = worker.identity, now
        call.attempts += 1
        return True

    def _queue(self, identity: bytes, wire: tuple) -> None:
        box = self._outbox.get(identity)
        if box is None:
            self._outbox[identity] = [wire]
        else:
            box.append(wire)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self._loop is not None  # start() ran: messages are queued only after it
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send this tick's messages: one frame per worker."""
        self._flush_scheduled = False
        boxes, self._outbox = self._outbox, {}
        for identity, wires in boxes.items():
            frame, refused = pack_wires_apart(wires)
            for wire in refused:
                self._unencodable(identity, wire)
            if frame is None:
                continue
            try:
                # send_multipart's two sends, without its Python loop (0.8 µs a frame).
                self.socket.send(identity, flags=zmq.NOBLOCK | zmq.SNDMORE)
                self.socket.send(frame, flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                # EHOSTUNREACH (ROUTER_MANDATORY): the worker vanished; its calls fail over.
                worker = self.workers.get(identity)
                if worker is not None:
                    self._worker_lost(worker, "unreachable")
        self._reader.after_send()

    def _unencodable(self, identity: bytes, wire: tuple) -> None:
        """A message msgpack refused fails alone, at once: its neighbours in the frame still went."""
        log.error("message_unencodable", kind=int(wire[0]), seq=wire[1])
        if wire[0] == Kind.REQUEST:
            call = self.pending.pop(wire[1], None)
            worker = self.workers.get(identity)
            if worker is not None:
                worker.in_flight.discard(wire[1])
            if call is not None:
                call.answer(invalid_params("a parameter cannot be carried to the worker (out of range?)"), None)
        elif wire[0] == Kind.REPLY:
            # The answer to a worker's own call: it still gets one, an error.
            self._queue(identity, Reply(wire[1], RpcError(INTERNAL_ERROR).to_dict(), None).wire())

    def _pump(self, kind: str) -> None:
        queue = self.queues[kind]
        while queue:
            call = queue[0]
            if call.seq not in self.pending:
                queue.popleft()  # answered by the deadline sweep meanwhile
                continue
            if not self._send(call):
                return
            queue.popleft()

    # --- incoming ---------------------------------------------------------------------

    def _on_frame(self, frames: list[bytes]) -> None:
        try:
            identity, frame = frames
            messages = unpack(frame)
        except (EnvelopeError, ValueError) as exc:
            log.warning("bad_frame", error=str(exc))
            return
        touched = self._touched
        for message in messages:
            if isinstance(message, Reply):
                kind = self._on_reply(identity, message)
                if kind:
                    touched.add(kind)
            elif isinstance(message, Ready):
                self._on_ready(identity, message)
                touched.add(message.kind)
            elif isinstance(message, Request):
                self._on_worker_request(identity, message)
            elif isinstance(message, Goodbye):
                worker = self.workers.get(identity)
                if worker is not None:
                    worker.draining = True

    def _pump_touched(self) -> None:
        """After a drain: hand queued calls to the workers that freed capacity."""
        if not self._touched:
            return
        touched, self._touched = self._touched, set()
        for kind in touched:
            if kind in self.queues:
                self._pump(kind)

    def _on_reply(self, identity: bytes, reply: Reply) -> str | None:
        worker = self.workers.get(identity)
        if worker is not None:
            worker.in_flight.discard(reply.seq)
            worker.last_seen = time.monotonic()
        call = self.pending.pop(reply.seq, None)
        if call is None:
            return worker.kind if worker else None  # answered already (deadline), drop
        if reply.error is not None:
            call.answer(RpcError.from_dict(reply.error), None)
        else:
            call.answer(None, Raw(reply.result) if reply.encoded else reply.result)
        return call.kind

    def _on_ready(self, identity: bytes, ready: Ready) -> None:
        now = time.monotonic()
        worker = self.workers.get(identity)
        if worker is None:
            if ready.kind not in self.queues:
                log.warning("unknown_worker_kind", kind=ready.kind)
                return
            worker = WorkerHandle(identity, ready.kind, ready.pid, ready.capacity, ready.index, now)
            self.workers[identity] = worker
            self._by_kind[worker.kind].append(worker)
            log.info("worker_ready", kind=ready.kind, pid=ready.pid, index=ready.index)
            if self.on_worker_ready is not None:
                self.on_worker_ready(worker)
        else:
            worker.last_seen = now
            worker.capacity = ready.capacity

    def _on_worker_request(self, identity: bytes, request: Request) -> None:
        """A worker calls another worker kind (``discovery.snapshot``...)."""
        kind = request.method.partition(".")[0]

        def answer(error: RpcError | None, result: Any) -> None:
            wire_error = error.to_dict() if error is not None else None
            self._queue(identity, Reply(request.seq, wire_error, result, isinstance(result, Raw)).wire())

        if kind not in self.queues:
            answer(RpcError(METHOD_NOT_FOUND, data={"method": request.method}), None)
            return
        timeout = max(0.05, request.deadline - time.time())
        self.call(Call(kind, request.method, request.params, timeout, answer, request.request_id))

    # --- failure handling --------------------------------------------------------------

    def sweep(self) -> None:
        """Expire deadlines and forget silent workers; call every ~100 ms."""
        mono = time.monotonic()
        self._expire(mono)
        for worker in list(self.workers.values()):
            if mono - worker.last_seen > self.heartbeat_timeout:
                self._worker_lost(worker, STOPPED_ANSWERING)
            elif not worker.draining:
                self._kind_seen[worker.kind] = mono
        for kind, queue in self.queues.items():
            if queue and self._kind_down(kind):
                while queue:
                    self._fail(queue.popleft(), f"no {kind} worker is running")
            self._pump(kind)

    def _expire(self, now: float) -> None:
        """Answer -32011 for every call whose deadline passed; forget the answered ones.

        Calls made with the same timeout expire in the order they were made,
        so each FIFO is sorted by expiry and only its head needs looking at:
        O(1) per call. A heap of every call sent kept each entry (and the
        garbage collector's work on it) until its deadline, seconds after
        the answer; here an answered head goes at the next sweep.
        """
        pending = self.pending
        for timeout, fifo in list(self._deadlines.items()):
            while fifo:
                call = pending.get(fifo[0])
                if call is not None and call.expires > now:
                    break
                seq = fifo.popleft()
                if call is None:
                    continue  # answered
                del pending[seq]
                self.timeouts[call.kind] += 1
                worker = self.workers.get(call.worker) if call.worker else None
                if worker is not None:
                    worker.in_flight.discard(seq)
                reason = "no worker answered in time" if call.worker else f"no {call.kind} worker available"
                call.answer(RpcError(SERVICE_BUSY, data={"reason": reason}), None)
            if not fifo:
                del self._deadlines[timeout]

    def forget_pid(self, pid: int, hung: str | None = None, expect_within_s: float | None = None) -> None:
        """The supervisor reports that ``pid`` exited (or was killed as ``hung``): fail over its calls now.

        ``expect_within_s``: the supervisor restarts it, and the replacement checks in within
        that many seconds or is killed. Until then the kind counts as restarting, not down, so
        a retried idempotent call waits for the replacement however slowly the machine starts it.
        """
        for worker in list(self.workers.values()):
            if worker.pid == pid:
                if expect_within_s is None:  # stopped, or given up on after a crash loop
                    self._kind_expected.pop(worker.kind, None)
                else:
                    self._kind_expected[worker.kind] = time.monotonic() + expect_within_s
                self._worker_lost(worker, STOPPED_ANSWERING if hung else "process exited")

    def _worker_lost(self, worker: WorkerHandle, reason: str) -> None:
        if self.workers.pop(worker.identity, None) is None:
            return
        self._by_kind[worker.kind].remove(worker)
        self.worker_deaths += 1
        log.warning("worker_lost", kind=worker.kind, pid=worker.pid, reason=reason, in_flight=len(worker.in_flight))
        for seq in list(worker.in_flight):
            call = self.pending.get(seq)
            if call is None:
                continue
            retry = call.call.idempotent and call.attempts < 2
            if retry and self._send(call, exclude=worker.identity):
                continue
            if retry:
                call.worker = None
                self.queues[call.kind].appendleft(call)  # waits for the restarted worker
                continue
            self.pending.pop(seq, None)
            call.answer(
                RpcError(
                    SERVICE_BUSY,
                    data={
                        "reason": f"the {call.kind} worker "
                        f"{'stopped answering' if reason == STOPPED_ANSWERING else 'exited'} "
                        "while handling the request; it may or may not have taken effect"
                    },
                ),
                None,
            )

    def _fail(self, call: PendingCall, reason: str) -> None:
        if self.pending.pop(call.seq, None) is not None:
            call.answer(RpcError(SERVICE_BUSY, data={"reason": reason}), None)

    # --- introspection -----------------------------------------------------------------

    def alive(self) -> dict[str, int]:
        counts = {kind: 0 for kind in WORKER_KINDS}
        for worker in self.workers.values():
            if not worker.draining:
                counts[worker.kind] += 1
        return counts

    def queue_depth(self) -> dict[str, int]:
        return {kind: len(queue) for kind, queue in self.queues.items()}
