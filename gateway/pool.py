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
import heapq
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import structlog
import zmq

from camservice import comms
from camservice.envelope import EnvelopeError, Goodbye, Kind, Ready, Reply, Request, pack_wires_apart, unpack
from camservice.errors import INTERNAL_ERROR, METHOD_NOT_FOUND, SERVICE_BUSY, RpcError, invalid_params
from camservice.jsonrpc import Raw
from camservice.methods import WORKER_KINDS

#: callback(error, result): exactly one is not None (result may legitimately be None);
#: a result a worker sent as JSON text arrives as :class:`~camservice.jsonrpc.Raw`.
ReplyCallback = Callable[[dict | None, Any], None]

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
    seq: int
    kind: str
    method: str
    params: dict
    deadline: float  # wall clock, travels to the worker
    request_id: str
    caller: dict
    idempotent: bool
    callback: ReplyCallback
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
        self._deadlines: list[tuple[float, int]] = []
        self._seq = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_scheduled = False
        self._outbox: dict[bytes, list[tuple]] = {}  # identity -> messages for this tick
        self._flush_scheduled = False
        #: Called with a WorkerHandle when a worker of a kind registers for the first time.
        self.on_worker_ready: Callable[[WorkerHandle], None] | None = None
        #: Monotonic time a worker of each kind was last seen alive. A kind with
        #: none for a heartbeat-timeout is down (crash loop, gave up): calls
        #: fail at once instead of waiting out their deadline.
        self._kind_seen: dict[str, float] = {kind: time.monotonic() for kind in WORKER_KINDS}
        # Counters for metrics.
        self.timeouts: dict[str, int] = {kind: 0 for kind in WORKER_KINDS}
        self.worker_deaths = 0

    # --- lifecycle --------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.socket.bind(self.endpoint)
        loop.add_reader(self.socket.getsockopt(zmq.FD), self._drain)

    def close(self) -> None:
        self._flush()
        if self._loop is not None:
            try:
                self._loop.remove_reader(self.socket.getsockopt(zmq.FD))
            except (ValueError, zmq.ZMQError):
                pass
        for call in list(self.pending.values()):
            self._fail(call, "gateway shutting down")
        self.socket.close(linger=0)

    # --- calls ---------------------------------------------------------------------

    def call(
        self,
        kind: str,
        method: str,
        params: dict,
        timeout: float,
        request_id: str,
        caller: dict,
        idempotent: bool,
        callback: ReplyCallback,
    ) -> None:
        """Send ``method`` to a worker of ``kind``; ``callback`` gets the answer."""
        if self._kind_down(kind):
            callback(RpcError(SERVICE_BUSY, data={"reason": f"no {kind} worker is running"}).to_dict(), None)
            return
        seq = next(self._seq)
        deadline = time.time() + timeout
        call = PendingCall(seq, kind, method, params, deadline, request_id, caller, idempotent, callback)
        self.pending[seq] = call
        heapq.heappush(self._deadlines, (deadline, seq))
        if not self._send(call):
            queue = self.queues[kind]
            if len(queue) >= self.max_queue:
                del self.pending[seq]
                callback(RpcError(SERVICE_BUSY, data={"reason": f"{kind} queue full"}).to_dict(), None)
                return
            queue.append(call)

    def _kind_down(self, kind: str) -> bool:
        if kind not in self._kind_seen:
            return False
        return time.monotonic() - self._kind_seen[kind] > self.heartbeat_timeout and not any(
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
        self._queue(
            worker.identity,
            (Kind.REQUEST, call.seq, call.method, call.params, call.deadline, call.request_id, call.caller),
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
                self.socket.send_multipart((identity, frame), flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                # EHOSTUNREACH (ROUTER_MANDATORY): the worker vanished; its calls fail over.
                worker = self.workers.get(identity)
                if worker is not None:
                    self._worker_lost(worker, "unreachable")
        self._after_send()

    def _unencodable(self, identity: bytes, wire: tuple) -> None:
        """A message msgpack refused fails alone, at once: its neighbours in the frame still went."""
        log.error("message_unencodable", kind=int(wire[0]), seq=wire[1])
        if wire[0] == Kind.REQUEST:
            call = self.pending.pop(wire[1], None)
            worker = self.workers.get(identity)
            if worker is not None:
                worker.in_flight.discard(wire[1])
            if call is not None:
                call.callback(
                    invalid_params("a parameter cannot be carried to the worker (out of range?)").to_dict(), None
                )
        elif wire[0] == Kind.REPLY:
            # The answer to a worker's own call: it still gets one, an error.
            self._queue(identity, Reply(wire[1], RpcError(INTERNAL_ERROR).to_dict(), None).wire())

    def _after_send(self) -> None:
        # ZeroMQ's FD is edge-triggered and a send can consume the edge of
        # pending input: look again soon so no reply sits unread.
        if not self._drain_scheduled and self.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

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

    def _drain(self) -> None:
        self._drain_scheduled = False
        sock = self.socket
        touched: set[str] = set()
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                identity, frame = sock.recv_multipart(flags=zmq.NOBLOCK)
                messages = unpack(frame)
            except zmq.Again:
                break
            except (EnvelopeError, ValueError) as exc:
                log.warning("bad_frame", error=str(exc))
                continue
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
        call.callback(reply.error, Raw(reply.result) if reply.encoded else reply.result)
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

        def answer(error: dict | None, result: Any) -> None:
            self._queue(identity, Reply(request.seq, error, result, isinstance(result, Raw)).wire())

        if kind not in self.queues:
            answer(RpcError(METHOD_NOT_FOUND, data={"method": request.method}).to_dict(), None)
            return
        timeout = max(0.05, request.deadline - time.time())
        self.call(kind, request.method, request.params, timeout, request.request_id, {}, True, answer)

    # --- failure handling --------------------------------------------------------------

    def sweep(self) -> None:
        """Expire deadlines and forget silent workers; call every ~100 ms."""
        now = time.time()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, seq = heapq.heappop(self._deadlines)
            call = self.pending.pop(seq, None)
            if call is None:
                continue
            self.timeouts[call.kind] += 1
            worker = self.workers.get(call.worker) if call.worker else None
            if worker is not None:
                worker.in_flight.discard(seq)
            reason = "no worker answered in time" if call.worker else f"no {call.kind} worker available"
            call.callback(RpcError(SERVICE_BUSY, data={"reason": reason}).to_dict(), None)
        mono = time.monotonic()
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

    def forget_pid(self, pid: int, hung: str | None = None) -> None:
        """The supervisor reports that ``pid`` exited (or was killed as ``hung``): fail over its calls now."""
        for worker in list(self.workers.values()):
            if worker.pid == pid:
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
            if call.idempotent and call.attempts < 2 and self._send(call, exclude=worker.identity):
                continue
            if call.idempotent and call.attempts < 2:
                call.worker = None
                self.queues[call.kind].appendleft(call)  # waits for the restarted worker
                continue
            self.pending.pop(seq, None)
            call.callback(
                RpcError(
                    SERVICE_BUSY,
                    data={
                        "reason": f"the {call.kind} worker "
                        f"{'stopped answering' if reason == STOPPED_ANSWERING else 'exited'} "
                        "while handling the request; it may or may not have taken effect"
                    },
                ).to_dict(),
                None,
            )

    def _fail(self, call: PendingCall, reason: str) -> None:
        if self.pending.pop(call.seq, None) is not None:
            call.callback(RpcError(SERVICE_BUSY, data={"reason": reason}).to_dict(), None)

    # --- introspection -----------------------------------------------------------------

    def alive(self) -> dict[str, int]:
        counts = {kind: 0 for kind in WORKER_KINDS}
        for worker in self.workers.values():
            if not worker.draining:
                counts[worker.kind] += 1
        return counts

    def queue_depth(self) -> dict[str, int]:
        return {kind: len(queue) for kind, queue in self.queues.items()}
