"""The runtime every worker kind shares.

A worker is one OS process serving the methods of one kind (discovery,
recording, files). It holds one DEALER socket per gateway and announces
itself with READY, repeated every ``runtime.heartbeat_interval`` as its
heartbeat; a gateway that stops hearing it counts it dead. Requests are
answered on the socket they came from, so replies always reach the gateway
that asked.

Subclasses provide handlers, named after the methods they serve::

    class FilesWorker(Worker):
        kind = "files"

        def handlers(self):
            return {"list_recordings": self.list_recordings}

        async def list_recordings(self, params, ctx):
            ...

A handler receives the validated parameters and a :class:`CallContext`, and
returns a msgpack-serialisable result or raises :class:`RpcError`. A plain
(non-async) handler runs inline and must be quick; slow work belongs in an
async handler that awaits a thread (``asyncio.to_thread``) or a subprocess.

Workers publish events with :meth:`Worker.publish`, hear the topics listed
in ``subscriptions`` through :meth:`Worker.on_event`, and call other workers'
methods through a gateway with :meth:`Worker.call`.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import zmq

from camservice import comms, eventloop, jsonrpc, log, runtime, topics
from camservice import config as config_module
from camservice.drain import Drain
from camservice.envelope import (
    UNENCODABLE,
    EnvelopeError,
    Event,
    Goodbye,
    Kind,
    Native,
    Ready,
    Reply,
    Request,
    pack,
    pack_wires_apart,
    unpack,
)
from camservice.errors import INTERNAL_ERROR, METHOD_NOT_FOUND, SERVICE_BUSY, RpcError
from camservice.runtime import Lifetime, boot

Handler = Callable[[dict[str, Any], "CallContext"], Any]

#: Seconds between ``_worker_stats`` events.
STATS_INTERVAL = 2.0

# Results are JSON by the time they reach a client; NaN is refused here, in the
# process that produced it, rather than as invalid JSON on the wire. The
# JSON-RPC layer's encoder: orjson's fast path where installed, same errors.
_encode_json = jsonrpc.dumps


@dataclass
class CallContext:
    """What a handler knows about the call besides its parameters."""

    request_id: str
    caller: dict[str, Any]  # {"sub": ..., "role": ...}, empty for internal calls
    deadline: float  # wall-clock seconds

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.time())


@dataclass
class _Link:
    """One gateway as seen from this worker."""

    endpoint: str
    socket: zmq.Socket
    pending: dict[int, asyncio.Future] = field(default_factory=dict)
    reader: Drain | None = None
    #: Replies of this event-loop tick, sent together as one frame.
    outbox: list[tuple] = field(default_factory=list)
    flush_scheduled: bool = False


class Worker:
    kind: str = "worker"
    #: Requests this process accepts at once (the gateway never sends more).
    capacity: int = 64
    #: Event topics this worker wants to hear (prefixes, as ZeroMQ SUB matches).
    subscriptions: tuple[str, ...] = ()
    #: Run on the event loop ``gateway.event_loop`` chooses (uvloop where
    #: installed) instead of asyncio's own. uvloop runs a loop iteration in
    #: ~2.2 µs against ~6.9 µs (an fd event, a read, a write and a call_soon,
    #: in-process); a kind opts in once what it uses works there (uvloop
    #: has no ``loop.sendfile``, which the file worker's downloads need).
    fast_loop: bool = False

    def __init__(self, config: config_module.Config, index: int = 0):
        self.config = config
        self.index = index
        self.name = f"{self.kind}-{index}"
        self.log = structlog.get_logger(self.kind)
        self._links: list[_Link] = []
        self._seq = itertools.count(1)
        self._event_seq: dict[str, itertools.count] = {}  # per topic, so gaps are per topic
        self._tasks: set[asyncio.Task] = set()
        #: Tasks running an async handler: shutdown lets these finish first.
        self._requests: set[asyncio.Task] = set()
        self._event_reader: Drain | None = None
        self._stopping: asyncio.Event | None = None  # created in run(), inside the loop
        self._handlers: dict[str, tuple[Handler, bool]] = {}  # name -> (handler, is async)
        self._ctx: zmq.Context | None = None
        self._pub: zmq.Socket | None = None
        self._sub: zmq.Socket | None = None

    # --- to override --------------------------------------------------------------

    def handlers(self) -> dict[str, Handler]:
        return {}

    async def start(self) -> None:
        """Open resources; called before the first READY is sent."""

    async def stop(self) -> None:
        """Release resources; called after in-flight requests drained."""

    async def on_event(self, event: Event) -> None:
        """An event of a subscribed topic arrived."""

    def stats(self) -> dict[str, Any]:
        """Numbers for metrics (gauges and counters), published every
        :data:`STATS_INTERVAL` seconds as ``_worker_stats``; override to add."""
        return {}

    # --- services for subclasses ----------------------------------------------------

    def publish(self, topic: str, data: dict[str, Any]) -> Event:
        counter = self._event_seq.setdefault(topic, itertools.count(1))
        event = Event(topic, self.name, next(counter), data, time.time())
        if self._pub is not None:
            self._pub.send_multipart(event.frames(), flags=zmq.NOBLOCK)
        return event

    async def call(self, method: str, params: dict[str, Any], timeout: float = 5.0, request_id: str = "") -> Any:
        """Call a method served by another worker kind, through a gateway."""
        link = next((link for link in self._links), None)
        if link is None:
            raise RpcError(SERVICE_BUSY, data={"reason": "no gateway"})
        seq = next(self._seq)
        future = asyncio.get_running_loop().create_future()
        link.pending[seq] = future
        request = Request(seq, method, params, time.time() + timeout, request_id or f"{self.name}-{seq}", {})
        try:
            try:
                frame = pack(request)
            except UNENCODABLE:
                raise RpcError(INTERNAL_ERROR, data={"reason": f"{method}: a parameter cannot be encoded"}) from None
            link.socket.send(frame, flags=zmq.NOBLOCK)
            error, result = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise RpcError(SERVICE_BUSY, data={"reason": f"{method} did not answer in time"}) from None
        finally:
            link.pending.pop(seq, None)
        if error is not None:
            raise error
        return result

    def spawn(self, coro: Awaitable[Any], name: str | None = None) -> asyncio.Task:
        """Run a background task that is cancelled (and awaited) at shutdown."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._log_task_failure)
        return task

    # --- runtime ----------------------------------------------------------------------

    def _load_handlers(self) -> None:
        # Sync or async is decided once here, not per request.
        self._handlers = {
            name: (handler, inspect.iscoroutinefunction(handler)) for name, handler in self.handlers().items()
        }

    async def run(self) -> None:
        self._stopping = asyncio.Event()
        lifetime = Lifetime(self._stopping)
        lifetime.install()
        self._load_handlers()
        endpoints = comms.Endpoints.from_config(self.config)
        self._ctx = zmq.Context()
        self._pub = comms.publisher(self._ctx, endpoints)
        if self.subscriptions:
            self._sub = comms.subscriber(self._ctx, endpoints, self.subscriptions)
            self._event_reader = Drain(self._sub, self._on_event_frames, multipart=True, name="events")
            self._event_reader.start()
        await self.start()
        identity = f"{self.name}:{os.getpid()}".encode()
        for endpoint in endpoints.gateways:
            sock = comms.dealer(self._ctx, identity)
            sock.connect(endpoint)
            link = _Link(endpoint, sock)
            link.reader = Drain(
                sock,
                lambda frame, link=link: self._on_frame(link, frame),
                after=lambda link=link: self._flush(link),  # the replies of every sync handler, in one frame
                name=endpoint,
            )
            self._links.append(link)
            link.reader.start()
        self.log.info("worker_started", pid=os.getpid(), gateways=len(self._links))
        heartbeat = self.spawn(self._heartbeat())
        self.spawn(runtime.collect_garbage_forever())
        await lifetime.wait(self.log)
        await self._shutdown(heartbeat)

    async def _shutdown(self, heartbeat: asyncio.Task) -> None:
        self.log.info("worker_draining", in_flight=self._requests_in_flight())
        heartbeat.cancel()
        for link in self._links:
            self._flush(link)
            link.socket.send(pack(Goodbye(os.getpid())), flags=zmq.NOBLOCK)
        if self._requests:
            await asyncio.wait(list(self._requests), timeout=self.config.runtime.stop_timeout * 0.5)
        await self.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        for reader in [link.reader for link in self._links] + [self._event_reader]:
            if reader is not None:
                reader.stop()
        for sock in [link.socket for link in self._links] + [self._pub, self._sub]:
            if sock is not None:
                sock.close(linger=0)
        self._ctx.term()
        self.log.info("worker_stopped")

    async def _heartbeat(self) -> None:
        ready = pack(Ready(self.kind, os.getpid(), self.capacity, self.index))
        next_stats = 0.0
        while True:
            if time.monotonic() >= next_stats:
                next_stats = time.monotonic() + STATS_INTERVAL
                self._publish_stats()
            for link in self._links:
                try:
                    link.socket.send(ready, flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass
                link.reader.after_send()
            if self._event_reader is not None:
                self._event_reader.drain()  # a safety net for the edge-triggered FD
            await asyncio.sleep(self.config.runtime.heartbeat_interval)

    def _publish_stats(self) -> None:
        try:
            stats = self.stats()
        except Exception:
            self.log.exception("stats_failed")
            return
        self.publish(
            topics.WORKER_STATS,
            {
                "name": self.name,
                "kind": self.kind,
                "index": self.index,
                "pid": os.getpid(),
                "in_flight": self._requests_in_flight(),
                "stats": stats,
            },
        )

    def _requests_in_flight(self) -> int:
        return len(self._requests)

    def _on_frame(self, link: _Link, frame: bytes) -> None:
        try:
            messages = unpack(frame)
        except EnvelopeError as exc:
            self.log.warning("bad_frame", error=str(exc))
            return
        for message in messages:
            if isinstance(message, Request):
                self._on_request(link, message)
            elif isinstance(message, Reply):
                future = link.pending.get(message.seq)
                if future is not None and not future.done():
                    if message.error is not None:
                        future.set_result((RpcError.from_dict(message.error), None))
                    else:
                        future.set_result((None, json.loads(message.result) if message.encoded else message.result))

    def _on_event_frames(self, frames: list[bytes]) -> None:
        try:
            event = Event.from_frames(frames)
        except EnvelopeError as exc:
            self.log.warning("bad_event", error=str(exc))
            return
        if event.source != self.name:
            self.spawn(self.on_event(event))

    def _on_request(self, link: _Link, request: Request) -> None:
        if request.expired():
            return  # the gateway has answered -32011 already
        entry = self._handlers.get(request.method)
        if entry is None:
            self._reply(link, request.seq, RpcError(METHOD_NOT_FOUND, data={"method": request.method}))
            return
        handler, is_async = entry
        context = CallContext(request.request_id, request.caller or {}, request.deadline)
        if is_async:
            task = self.spawn(self._run_async(link, request, handler, context))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)
            return
        # Reset afterwards: the socket reader's context is shared by every message.
        token = log.REQUEST_ID.set(request.request_id)
        try:
            result = handler(request.params, context)
        except Exception as exc:
            self._reply_failure(link, request, exc)
        else:
            self._reply(link, request.seq, None, result)
        finally:
            log.REQUEST_ID.reset(token)

    async def _run_async(self, link: _Link, request: Request, handler: Handler, context: CallContext) -> None:
        log.REQUEST_ID.set(request.request_id)  # the task runs in its own copy of the context
        try:
            result = await handler(request.params, context)
        except Exception as exc:
            self._reply_failure(link, request, exc)
        else:
            self._reply(link, request.seq, None, result)

    def _reply_failure(self, link: _Link, request: Request, exc: Exception) -> None:
        """A handler raised: an RpcError goes to the client as is, anything else is a logged -32603."""
        if isinstance(exc, RpcError):
            self._reply(link, request.seq, exc)
            return
        self.log.error("handler_failed", method=request.method, exc_info=exc)
        self._reply(link, request.seq, RpcError(INTERNAL_ERROR))

    def _reply(self, link: _Link, seq: int, error: RpcError | None, result: Any = None) -> None:
        """Queue an answer for this tick's frame; results travel as JSON text."""
        encoded = error is None
        if isinstance(result, Native):  # bytes inside: msgpack as is (envelope.Native)
            result, encoded = result.value, False
        elif error is None:
            try:
                result = _encode_json(result)
            except (TypeError, ValueError):
                self.log.error("reply_unserialisable", seq=seq)
                error, result, encoded = RpcError(INTERNAL_ERROR), None, False
        wire_error = error.to_dict() if error is not None else None
        link.outbox.append((Kind.REPLY, seq, wire_error, result, encoded))
        self._schedule_flush(link)

    def _schedule_flush(self, link: _Link) -> None:
        if not link.flush_scheduled:
            link.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, link)

    def _flush(self, link: _Link) -> None:
        link.flush_scheduled = False
        if not link.outbox:
            return
        wires, link.outbox = link.outbox, []
        frame, refused = pack_wires_apart(wires)
        for wire in refused:
            # An error whose data msgpack cannot encode: that reply alone becomes -32603.
            self.log.error("reply_unencodable", seq=wire[1])
            link.outbox.append((Kind.REPLY, wire[1], RpcError(INTERNAL_ERROR).to_dict(), None, False))
        if refused:
            self._schedule_flush(link)
        if frame is None:
            return
        try:
            link.socket.send(frame, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.log.warning("replies_dropped", count=len(wires), reason="queue full")
        if link.reader is not None:
            link.reader.after_send()

    def _log_task_failure(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.log.error("task_failed", error=repr(task.exception()))


def run_worker(worker_class: type[Worker], index: int) -> None:
    """Entry point of a worker process (see :mod:`camservice.process`)."""
    config = boot(f"{worker_class.kind}-{index}", f"camservice: {worker_class.kind} {index}")
    worker = worker_class(config, index)
    eventloop.run(worker.run(), config.gateway.event_loop if worker_class.fast_loop else "asyncio")
