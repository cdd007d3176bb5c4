"""The gateway's side of the event bus.

Subscribes to every topic on the supervisor's event proxy and

* keeps the camera replica current: snapshot from the discovery worker
  first, then ``camera_status_update`` events newer than it; events that
  arrive while a snapshot is on its way are held and replayed after it, and
  a sequence gap or a new discovery process triggers a fresh snapshot (PUB/SUB
  drops messages for late joiners and at the high-water mark);
* fans client notifications out to the connections that want them, encoding
  each message once (:func:`camservice.gateway.connection.broadcast` writes without awaiting);
* records the supervisor's process samples and exits (an exited worker's
  calls are failed over at once instead of waiting for missed heartbeats).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Callable

import structlog
import zmq

from camservice import comms, jsonrpc, topics
from camservice.cameras import Camera
from camservice.drain import Drain
from camservice.envelope import Event, EnvelopeError
from camservice.errors import RpcError

from .calls import Call
from .connection import broadcast
from .core import RequestPipeline
from .pool import WorkerPool

log = structlog.get_logger("gateway.events")

#: Seconds between background snapshots that catch anything PUB/SUB lost silently.
RESYNC_INTERVAL = 10.0


class EventRelay:
    def __init__(self, gateway: RequestPipeline, pool: WorkerPool, ctx: zmq.Context, endpoints: comms.Endpoints):
        self.gateway = gateway
        self.pool = pool
        self.sub = comms.subscriber(ctx, endpoints)
        self.pub = comms.publisher(ctx, endpoints)
        self._reader = Drain(self.sub, self._on_frames, multipart=True, name="events")
        self._snapshot_pending = False
        self._held: list[Event] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Hook for metrics: (topic, recipients, seconds from publish to send).
        self.on_delivery: Callable[[str, int, float], None] | None = None
        self.delivered = 0
        #: topic -> handlers registered with :meth:`subscribe`, called before the relay's own handling.
        self._subscribers: dict[str, list[Callable[[Event], None]]] = {}

    def subscribe(self, topic: str, handler: Callable[[Event], None]) -> None:
        """Call ``handler(event)`` for every event on ``topic`` this gateway receives."""
        self._subscribers.setdefault(topic, []).append(handler)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._reader.start(loop)

    def close(self) -> None:
        self._reader.stop()
        self.sub.close(linger=0)
        self.pub.close(linger=0)

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        event = Event(topic, f"gateway-{self.gateway.index}", 0, data, time.time())
        try:
            self.pub.send_multipart(event.frames(), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    # --- incoming ---------------------------------------------------------------

    def drain(self) -> None:
        """Handle every event waiting (the socket reader does this; the gateway's sweep too, as a safety net)."""
        self._reader.drain()

    def _on_frames(self, frames: list[bytes]) -> None:
        try:
            event = Event.from_frames(frames)
        except EnvelopeError as exc:
            log.warning("bad_event", error=str(exc))
            return
        try:
            self.dispatch(event)
        except Exception:
            log.exception("event_failed", topic=event.topic)

    def dispatch(self, event: Event) -> None:
        topic = event.topic
        for handler in self._subscribers.get(topic, ()):
            handler(event)
        if topic == topics.CAMERA_STATUS:
            self._on_camera(event)
        elif topic == topics.RECORDING_STATUS:
            device = event.data.get("device")
            if device:
                self.gateway.cameras.set_recording(device, event.data.get("status") == "STARTED")
            self.notify(topic, event.data, event.time)
        elif topic == topics.STORAGE_STATUS:
            self.notify(topic, event.data, event.time)
        elif topic == topics.PROCESS_EXIT:
            self.pool.forget_pid(event.data["pid"])
        elif topic == topics.PROCESS_STATS:
            self.gateway.processes = event.data.get("processes", [])
            self.gateway.host_stats = event.data.get("host", {})
        elif topic == topics.GATEWAY_STATS:
            index = event.data.get("index")
            if index is not None and index != self.gateway.index:
                self.gateway.gateway_stats[index] = event.data
        elif topic == topics.MEDIA_STATUS:
            self.gateway.media_status = event.data

    def _on_camera(self, event: Event) -> None:
        if self._snapshot_pending:
            self._held.append(event)
            return
        camera = self._apply(event)
        if camera is not None:
            self.notify(topics.CAMERA_STATUS, camera.to_notification(), event.time)

    def _apply(self, event: Event) -> Camera | None:
        table = self.gateway.cameras
        if table.apply(event.data, event.seq, event.source):
            return table.find(event.data["id"])
        # A gap or a new discovery process: the event itself is still news.
        self.request_snapshot()
        return Camera.from_state(event.data)

    # --- snapshots -------------------------------------------------------------------

    def request_snapshot(self) -> None:
        if self._snapshot_pending:
            return
        self._snapshot_pending = True
        self.pool.call(
            Call("discovery", "discovery.snapshot", {}, 5.0, self._on_snapshot, f"g{self.gateway.index}-snapshot")
        )

    def _on_snapshot(self, error: RpcError | None, result: Any) -> None:
        self._snapshot_pending = False
        held, self._held = self._held, []
        if error is not None:
            log.warning("snapshot_failed", error=error)
            for event in held:
                self.notify(topics.CAMERA_STATUS, Camera.from_state(event.data).to_notification(), event.time)
            return
        if isinstance(result, jsonrpc.Raw):
            result = json.loads(result)
        table = self.gateway.cameras
        table.load_snapshot(result["cameras"], result["seq"], result["source"])
        for event in held:
            if event.source == table.source and event.seq > table.seq:
                table.apply(event.data, event.seq, event.source)
            # Every held event is a change clients have not heard about yet.
            self.notify(topics.CAMERA_STATUS, Camera.from_state(event.data).to_notification(), event.time)

    async def resync_forever(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_INTERVAL)
            if self.pool.alive().get("discovery"):
                self.request_snapshot()

    # --- outgoing ----------------------------------------------------------------------

    def notify(self, topic: str, params: dict[str, Any], published: float) -> None:
        # The role is bound to a connection only until its token expires (or
        # its API key is revoked): a connection that makes no further call
        # would otherwise keep hearing events with a dead credential.
        still_valid = self.gateway.auth.still_valid
        recipients = [
            s.connection
            for s in self.gateway.sessions
            if s.connection is not None and s.wants(topic) and still_valid(s.identity)
        ]
        if not recipients:
            return
        broadcast(recipients, jsonrpc.encode(jsonrpc.notification(topic, params)))
        self.delivered += len(recipients)
        if self.on_delivery is not None:
            self.on_delivery(topic, len(recipients), max(0.0, time.time() - published))
