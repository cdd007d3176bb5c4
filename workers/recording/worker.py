"""The recording worker process: ZeroMQ plumbing around :class:`RecordingManager`.

It keeps a :class:`~camservice.replica.CameraReplica` of the discovery
worker's cameras to resolve ``device`` (id, ``/dev/videoN`` or ``sim:N``)
to a camera, and tells the manager of every camera change, so that a
recording fails promptly when its camera goes away.

Requests wait (within their deadline) until the first snapshot arrived and
interrupted sessions were resumed: answering ``-32004`` because the table is
still empty would be a lie.

Stopping: a SIGTERM from the supervisor (its ordered stop) stops every
recording. The same SIGTERM also arrives when the supervisor *died*
(``PR_SET_PDEATHSIG``), or the parent-pid watchdog notices it gone; then this
process has been re-parented (or its parent is a zombie: see
:func:`_supervisor_alive`), and that is a crash, not a stop: the sessions are
suspended with their journal entries kept, and the next start resumes them
(:mod:`.recovery`).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from camservice.workers.base import CallContext, Worker, run_worker

from camservice import process, topics
from camservice.envelope import Event, Native
from camservice.errors import SERVICE_BUSY, RpcError
from camservice.histogram import RECORDING_BUCKETS, SNAPSHOT_BUCKETS, Histogram
from camservice.replica import CameraReplica, Change

from .sessions import FAILED, RecordingManager

#: Seconds a handler leaves for the reply to travel back before its deadline.
REPLY_MARGIN = 0.5


class RecordingWorker(Worker):
    kind = "recording"
    subscriptions = (topics.CAMERA_STATUS,)

    def __init__(self, config, index: int = 0):
        super().__init__(config, index)
        #: The supervisor that started us: still our parent at stop time means an ordered stop.
        self._parent = os.getppid()
        self.cameras = CameraReplica(
            lambda: self.call("discovery.snapshot", {}, timeout=5.0), self._camera_changed, self.log
        )
        self.manager = RecordingManager(config, self.cameras.find, self.publish, logger=self.log)
        # Finalising must fit in the supervisor's SIGTERM grace period, after
        # the half of it the base class spends draining in-flight requests.
        self.manager.stop_timeout = min(self.manager.stop_timeout, max(1.0, config.runtime.stop_timeout * 0.3))
        self._ready: asyncio.Event | None = None
        self._snapshot_seconds = Histogram(SNAPSHOT_BUCKETS)
        self._recording_seconds = Histogram(RECORDING_BUCKETS)
        self._failed = 0
        self.manager.observe_snapshot = self._snapshot_seconds.observe
        self.manager.observe_recording = self._recording_ended

    def _recording_ended(self, status: str, seconds: float) -> None:
        self._recording_seconds.observe(seconds)
        if status == FAILED:
            self._failed += 1

    def stats(self) -> dict[str, Any]:
        """Figures for ``gateway.metrics`` (shape documented there)."""
        return {
            "active_recordings": len(self.manager.sessions),
            "failed_recordings": self._failed,
            "snapshot_seconds": self._snapshot_seconds.export(),
            "recording_seconds": self._recording_seconds.export(),
            "preview_captures": len(self.manager.previews.captures),
        }

    def handlers(self):
        return {
            "take_snapshot": self.take_snapshot,
            "start_recording": self.start_recording,
            "stop_recording": self.stop_recording,
            # Internal (gateways' GET /cameras/{id}/preview), not in the public method table.
            "preview_frame": self.preview_frame,
        }

    async def start(self) -> None:
        self._ready = asyncio.Event()
        await self.manager.open()
        # Gateways are connected only after start() returns: sync in the background.
        self.spawn(self._first_sync())

    async def stop(self) -> None:
        self.cameras.close()
        if _supervisor_alive(self._parent):
            await self.manager.close()
            return
        # Our supervisor died (SIGKILL, crash): not an ordered stop.
        self.log.warning("supervisor_lost", parent=self._parent, sessions=len(self.manager.sessions))
        await self.manager.close("supervisor lost", suspend=True)

    async def _first_sync(self) -> None:
        await self.cameras.request_snapshot()  # retried until discovery answers
        await self.manager.recover()
        self._ready.set()
        self.log.info("recording_ready", cameras=len(self.cameras))

    def _camera_changed(self, change: Change) -> None:
        self.manager.camera_changed(change.camera)

    async def on_event(self, event: Event) -> None:
        if event.topic == topics.CAMERA_STATUS and self._ready is not None:
            self.cameras.on_event(event)

    async def _await_ready(self, ctx: CallContext) -> None:
        if self._ready.is_set():
            return
        try:
            await asyncio.wait_for(self._ready.wait(), max(0.1, ctx.remaining() - REPLY_MARGIN))
        except asyncio.TimeoutError:
            raise RpcError(SERVICE_BUSY, data={"reason": "camera list not available yet"}) from None

    def _budget(self, ctx: CallContext) -> float:
        return max(1.0, ctx.remaining() - REPLY_MARGIN)

    async def take_snapshot(self, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        await self._await_ready(ctx)
        return await self.manager.take_snapshot(params, timeout=min(10.0, self._budget(ctx)))

    async def start_recording(self, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        await self._await_ready(ctx)
        return await self.manager.start_recording(params)

    async def stop_recording(self, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        await self._await_ready(ctx)
        return await self.manager.stop_recording(params, timeout=self._budget(ctx))

    async def preview_frame(self, params: dict[str, Any], ctx: CallContext) -> Native:
        """The next live preview frame of a camera (see :mod:`.preview`); the wait fits the deadline."""
        await self._await_ready(ctx)
        wait = min(float(params.get("wait", 1.0)), max(0.0, ctx.remaining() - REPLY_MARGIN))
        return Native(await self.manager.previews.frame({**params, "wait": wait}))  # JPEG bytes: msgpack, not JSON


def _supervisor_alive(parent: int) -> bool:
    """Whether the supervisor that started us is alive, so that a SIGTERM is its ordered stop.

    ``getppid()`` alone is not enough: PDEATHSIG fires when the *thread* that
    forked us exits, and while the rest of a SIGKILLed supervisor is still
    being torn down we are re-parented to one of its other threads, so
    ``getppid()`` still names it. Its main thread gone makes it a zombie
    ("Z") in ``/proc`` until the last thread exits: that is a dead supervisor.
    """
    if not process.parent_alive(parent):
        return False
    try:
        with open(f"/proc/{parent}/stat", "rb") as stream:
            state = stream.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def main(index: int) -> None:
    run_worker(RecordingWorker, index)
