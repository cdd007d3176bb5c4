"""The gateway's side of the event bus.

Subscribes to every topic on the supervisor's event proxy and

* keeps the gateway's :class:`~camservice.replica.CameraReplica` current
  (the one replica implementation: snapshot, sequence numbers, events held
  during a snapshot) and tells clients about a camera only when a field of
  ``camera_status_update`` changed: a recording start changes the camera's
  ``recording`` and ``readers`` (the discovery worker owns them, like every
  camera field) but nothing a notification carries;
* holds a client's ``recording_status_update`` until the replica shows the
  recording it announces (discovery republishes the camera one hop later;
  at most :data:`RECORDING_HOLD` seconds), so a client that heard STARTED
  and asks ``get_camera_status`` reads ``"recording": true``;
* fans client notifications out to the connections that want them, encoding
  each message once (:func:`camservice.gateway.connection.broadcast` writes without awaiting);
* records the supervisor's process samples and exits (an exited worker's
  calls are failed over at once instead of waiting for missed heartbeats).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import structlog
import zmq

from camservice import comms, jsonrpc, topics
from camservice.drain import Drain
from camservice.envelope import EnvelopeError, Event
from camservice.errors import RpcError
from camservice.replica import CameraReplica, Change

from .calls import Call
from .connection import broadcast
from .core import RequestPipeline
from .pool import WorkerPool

log = structlog.get_logger("gateway.events")

#: Seconds between background snapshots that catch anything PUB/SUB lost silently.
RESYNC_INTERVAL = 10.0
#: Longest a recording_status_update waits for the replica to show its recording.
RECORDING_HOLD = 1.0


class EventRelay:
    def __init__(self, pipeline: RequestPipeline, pool: WorkerPool, ctx: zmq.Context, endpoints: comms.Endpoints):
        self.pipeline = pipeline
        self.pool = pool
        self.sub = comms.subscriber(ctx, endpoints)
        self.pub = comms.publisher(ctx, endpoints)
        self._reader = Drain(self.sub, self._on_frames, multipart=True, name="events")
        self.replica = CameraReplica(self._fetch_snapshot, self._camera_changed, log, table=pipeline.cameras)
        #: Recording notifications waiting for the replica, per camera id, with their timer.
        self._waiting: dict[str, tuple[list[Event], asyncio.TimerHandle | None]] = {}
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
        self.replica.close()
        self._reader.stop()
        self.sub.close(linger=0)
        self.pub.close(linger=0)

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        event = Event(topic, f"gateway-{self.pipeline.index}", 0, data, time.time())
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
            self.replica.on_event(event)
        elif topic == topics.RECORDING_STATUS:
            self._on_recording(event)
        elif topic == topics.STORAGE_STATUS:
            self.notify(topic, event.data, event.time)
        elif topic == topics.PROCESS_EXIT:
            self.pool.forget_pid(event.data["pid"], event.data.get("hung"), event.data.get("expect_within_s"))
        elif topic == topics.PROCESS_STATS:
            self.pipeline.processes = event.data.get("processes", [])
            self.pipeline.host_stats = event.data.get("host", {})
            self.pipeline.upgrade = event.data.get("upgrade", {})
        elif topic == topics.GATEWAY_STATS:
            index = event.data.get("index")
            if index is not None and index != self.pipeline.index:
                self.pipeline.gateway_stats[index] = event.data
        elif topic == topics.MEDIA_STATUS:
            self.pipeline.media_status = event.data

    # --- cameras -------------------------------------------------------------------------

    def _camera_changed(self, change: Change) -> None:
        if change.visible:
            self.notify(topics.CAMERA_STATUS, change.camera.to_notification(), change.time)
        if change.camera.id in self._waiting:
            self._release_recordings(change.camera.id)

    def request_snapshot(self) -> None:
        self.replica.request_snapshot()

    async def _fetch_snapshot(self) -> Any:
        future = asyncio.get_running_loop().create_future()

        def answered(error: RpcError | None, result: Any) -> None:
            if not future.done():
                future.set_result((error, result))

        self.pool.call(Call("discovery", "discovery.snapshot", {}, 5.0, answered, f"g{self.pipeline.index}-snapshot"))
        error, result = await future  # the pool answers every call by its deadline
        if error is not None:
            raise error
        return json.loads(result) if isinstance(result, jsonrpc.Raw) else result

    # --- recordings ----------------------------------------------------------------------

    def _on_recording(self, event: Event) -> None:
        device = event.data.get("device")
        camera = self.replica.find(device) if isinstance(device, str) else None
        if camera is None or self._loop is None:
            self.notify(topics.RECORDING_STATUS, event.data, event.time)
            return
        events, timer = self._waiting.get(camera.id, ([], None))
        events.append(event)
        if timer is None:
            timer = self._loop.call_later(RECORDING_HOLD, self._release_recordings, camera.id, True)
        self._waiting[camera.id] = (events, timer)
        self._release_recordings(camera.id)

    def _release_recordings(self, camera_id: str, expired: bool = False) -> None:
        """Send the held recording notifications of a camera whose recording the replica
        shows (in order; all of them once :data:`RECORDING_HOLD` has passed)."""
        events, timer = self._waiting.pop(camera_id, ([], None))
        camera = self.replica.find(camera_id)
        while events and (expired or camera is None or camera.recording == _announces_recording(events[0])):
            event = events.pop(0)
            self.notify(topics.RECORDING_STATUS, event.data, event.time)
        if events:
            self._waiting[camera_id] = (events, timer)
        elif timer is not None:
            timer.cancel()

    async def resync_forever(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_INTERVAL)
            if self.pool.alive().get("discovery"):
                self.replica.request_snapshot()

    # --- outgoing ----------------------------------------------------------------------

    def notify(self, topic: str, params: dict[str, Any], published: float) -> None:
        # The role is bound to a connection only until its token expires (or
        # its API key is revoked): a connection that makes no further call
        # would otherwise keep hearing events with a dead credential.
        still_valid = self.pipeline.auth.still_valid
        recipients = [
            s.connection
            for s in self.pipeline.sessions
            if s.connection is not None and s.wants(topic) and still_valid(s.identity)
        ]
        if not recipients:
            return
        broadcast(recipients, jsonrpc.encode(jsonrpc.notification(topic, params)))
        self.delivered += len(recipients)
        if self.on_delivery is not None:
            self.on_delivery(topic, len(recipients), max(0.0, time.time() - published))


def _announces_recording(event: Event) -> bool:
    return event.data.get("status") == "STARTED"
