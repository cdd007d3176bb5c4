"""The recording worker's logic, without ZeroMQ: :class:`RecordingManager`.

It serves ``take_snapshot`` (:mod:`.snapshots`), ``start_recording`` and
``stop_recording``, and keeps the table of live sessions; each session is a
:class:`~.session.Session` that owns its capture runs and watch loop until
it ends. Crash recovery is :mod:`.recovery`. The manager is driven by three
callables, so tests run it in-process:

* ``cameras(device_or_id) -> Camera | None`` (the worker passes its
  :class:`~camservice.cameras.CameraTable` replica's ``find``),
* ``publish(topic, data)`` (the worker's :meth:`~camservice.workers.base.Worker.publish`),
* a :class:`~.backend.MediaBackend` doing the capturing.

Shutdown: :meth:`RecordingManager.close` ends every session. An ordered
stop (``camservice stop``) ends them ``STOPPED`` ("service stopped") and
removes their journal entries; with ``suspend=True`` (the worker lost its
supervisor: a crash, not a stop) they are suspended instead, so that the
next start resumes them (see :mod:`.recovery`).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from camservice import errors, ffmpeg, storage_errors, topics
from camservice.active_files import ActiveFiles, active_files_path
from camservice.cameras import CONNECTED, Camera
from camservice.errors import RpcError

from . import naming, recovery, snapshots, storage
from .backend import FfmpegBackend, MediaBackend
from .capture import CameraGone, CaptureError
from .journal import Journal, SessionRecord
from .mediamtx_backend import MediaMTXBackend, MediaMTXUnavailable
from .preview import Previews
from .session import COMPLETED, FAILED, STARTED, STOPPED, SUSPENDED, Session

__all__ = ["COMPLETED", "FAILED", "STARTED", "STOPPED", "RecordingManager", "Session", "make_backend"]

#: Seconds ffmpeg gets to finalise after SIGINT before SIGKILL.
STOP_TIMEOUT = 5.0
#: Seconds a read-back of a segment's duration may take.
PROBE_TIMEOUT = 10.0

Resolver = Callable[[str], "Camera | None"]
Publisher = Callable[[str, dict[str, Any]], Any]


def make_backend(config) -> MediaBackend:
    """The backend ``media.backend`` names (``ffmpeg`` or ``mediamtx``)."""
    if config.media.backend == "mediamtx":
        return MediaMTXBackend(config)
    return FfmpegBackend(config)


@dataclass
class Slot:
    """Per camera: who may open the device, and its session if it records."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    session: Session | None = None
    starting: bool = False


class RecordingManager:
    def __init__(self, config, cameras: Resolver, publish: Publisher, backend: MediaBackend | None = None, logger=None):
        self.config = config
        self.cameras = cameras
        self._publish = publish
        self.backend = backend or make_backend(config)
        self.log = logger or structlog.get_logger("recording")
        self.journal = Journal(config.state_dir / "journal")
        self.active = ActiveFiles(active_files_path(config.state_dir))
        self.slots: dict[str, Slot] = {}
        self.sessions: dict[str, Session] = {}
        #: Short-lived preview captures of idle cameras (GET /cameras/{id}/preview).
        self.previews = Previews(self)
        self._pending: list[SessionRecord] = []
        self._closed = False
        self._ffmpeg: str | None = None  # for probes, found on first use
        #: First-segment names of sessions starting or running: two cameras
        #: asked for the same file name at once must not share one file.
        self._names: set[str] = set()
        #: Seconds ffmpeg gets to finalise after SIGINT (tests shorten it).
        self.stop_timeout = STOP_TIMEOUT
        #: Metrics hooks (the worker feeds its histograms): seconds a snapshot
        #: took; status and length of every recording that ended.
        self.observe_snapshot: Callable[[float], None] = lambda seconds: None
        self.observe_recording: Callable[[str, float], None] = lambda status, seconds: None
        config.recordings_dir.mkdir(parents=True, exist_ok=True)
        config.snapshots_dir.mkdir(parents=True, exist_ok=True)

    # --- services for sessions, snapshots and recovery ----------------------------------------

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        try:
            self._publish(topic, data)
        except Exception:  # a full queue must not take a recording down
            self.log.exception("publish_failed", topic=topic)

    def slot(self, camera_id: str) -> Slot:
        return self.slots.setdefault(camera_id, Slot())

    def connected_camera(self, device: str) -> Camera:
        camera = self.cameras(device)
        if camera is None or camera.status != CONNECTED:
            raise errors.camera_not_found(device)
        return camera

    def media_error(self, exc: CaptureError, device: str, folder: str) -> RpcError:
        """The client's error for a capture that failed: -32004 (camera gone), -32007/-32012
        (what ffmpeg said is about the ``folder``'s storage), else -32006 with the reason."""
        if isinstance(exc, CameraGone):
            return errors.camera_not_found(device)
        reason = self.backend.sanitize(exc.reason)
        about_storage = storage_errors.from_ffmpeg(reason, folder)
        if about_storage is not None:
            return about_storage
        data: dict[str, Any] = {"reason": reason}
        if isinstance(exc, MediaMTXUnavailable) and exc.http_status is not None:  # MediaMTX answered
            data["http_status"] = exc.http_status
        return RpcError(errors.MEDIA_BACKEND, data=data)

    def file_update(
        self,
        filename: str,
        camera: Camera,
        state: str,
        size: int,
        duration: float | None = None,
        kind: str = "recording",
    ) -> None:
        """Tell the file workers about a file (``state``: recording, complete, failed, deleted)."""
        data: dict[str, Any] = {
            "kind": kind,
            "filename": filename,
            "camera_id": camera.id,
            "device": camera.device,
            "state": state,
            "size": size,
        }
        if duration is not None:
            data["duration"] = duration
        self.publish(topics.FILE_UPDATE, data)

    def status_event(self, record: SessionRecord, status: str, duration: float, error: str | None = None) -> None:
        data: dict[str, Any] = {
            "device": record.device,
            "status": status,
            "filename": record.filename,
            "session_id": record.session_id,
            "duration": duration,
        }
        if error is not None:
            data["error"] = error
        self.publish(topics.RECORDING_STATUS, data)

    async def probe_duration(self, path: Path) -> float | None:
        """Seconds of video in ``path``, read back with ``ffmpeg -i`` in a thread; None when unknown."""
        try:
            if self._ffmpeg is None:
                self._ffmpeg = ffmpeg.locate(self.config.media.ffmpeg_path)
            info = await ffmpeg.probe_async(path, self._ffmpeg, PROBE_TIMEOUT)
        except (ffmpeg.FFmpegNotFound, ffmpeg.ProbeError, OSError) as exc:
            self.log.info("segment_probe_failed", filename=path.name, error=str(exc))
            return None
        return round(info.duration, 3) if info.duration is not None else None

    def adopt(self, session: Session, slot: Slot) -> None:
        """Make a session with a running capture visible (slot, names, sessions)."""
        self._names.add(session.record.filename)
        slot.session = session
        self.sessions[session.record.session_id] = session

    def forget(self, session: Session) -> None:
        """Undo :meth:`adopt` (the session ended)."""
        record = session.record
        slot = self.slots.get(record.camera_id)
        if slot is not None and slot.session is session:
            slot.session = None
        self.sessions.pop(record.session_id, None)
        self._names.discard(record.filename)

    async def commit(self, session: Session, slot: Slot) -> None:
        """Register the first segment (active list, journal), then launch the
        session's watch loop: registering first means only one task ever polls
        a run. On failure the session is abandoned (no unsupervised capture)."""
        try:
            await session.poll()
            await self.journal.save_async(session.record)
        except BaseException:
            session.ending = True
            try:
                await session.finish_run("failed")
                await self.journal.remove_async(session.record.session_id)
            finally:
                self.forget(session)
                if not session.result.done():
                    session.result.set_result({"status": FAILED})
            raise
        session.launch()

    # --- snapshots --------------------------------------------------------------------------

    async def take_snapshot(self, params: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        return await snapshots.take_snapshot(self, params, timeout)

    # --- starting --------------------------------------------------------------------------------

    async def start_recording(self, params: dict[str, Any]) -> dict[str, Any]:
        if self._closed:
            raise RpcError(errors.SERVICE_BUSY, data={"reason": "recording worker is stopping"})
        camera = self.connected_camera(params["device"])
        slot = self.slot(camera.id)
        if slot.session is not None or slot.starting:
            raise RpcError(
                errors.IN_PROGRESS, data={"reason": f"{camera.id} is already recording", "device": camera.device}
            )
        slot.starting = True
        try:
            return await self._start(camera, slot, params)
        finally:
            slot.starting = False

    async def _start(self, camera: Camera, slot: Slot, params: dict[str, Any]) -> dict[str, Any]:
        filename = params.get("filename") or naming.default_name(camera.id, params.get("format") or "mp4")
        taken = RpcError(
            errors.IN_PROGRESS, data={"reason": "a recording with this file name exists", "filename": filename}
        )
        if filename in self._names:
            raise taken
        self._names.add(filename)  # reserved before the first await: no second start can pass
        try:
            folder = self.config.recordings_dir

            def check() -> bool:
                # -32012 naming the cause beats ffmpeg's words about a file it could not open.
                storage.check_writable(folder, "recordings")
                return storage.name_taken(folder, filename)

            if await asyncio.to_thread(check):  # one thread hop: starting is latency-sensitive
                raise taken
            return await self._start_named(camera, slot, params, filename)
        finally:
            if slot.session is None or slot.session.record.filename != filename:
                self._names.discard(filename)

    async def _start_named(self, camera: Camera, slot: Slot, params: dict[str, Any], filename: str) -> dict[str, Any]:
        fmt = params.get("format") or "mp4"
        duration = params.get("duration")
        await storage.ensure_space(self.config.recordings_dir, self.config.storage.min_free_bytes)
        start = time.time()
        record = SessionRecord(
            session_id=str(uuid.uuid4()),
            camera_id=camera.id,
            device=camera.device,
            filename=filename,
            format=fmt,
            start_time=start,
            duration=duration,
            deadline=start + duration if duration else None,
            worker_pid=os.getpid(),
        )
        session = Session(self, record, camera)
        async with slot.lock:
            try:
                await self.previews.release(camera.id)  # one reader: the recording's run takes over the preview
                await session.start_run(check_folder=False)  # checked just before
            except CaptureError as exc:
                raise self.media_error(exc, params["device"], "recordings") from None
            # Before the device lock is released: a snapshot waiting for it
            # must find the recording, not try to open the device again.
            self.adopt(session, slot)
        await self.commit(session, slot)
        self.log.info(
            "recording_started",
            camera=camera.id,
            session_id=record.session_id,
            filename=filename,
            duration=duration,
            pid=session.run.pid if session.run else None,
        )
        self.status_event(record, STARTED, 0)
        return {
            "device": camera.device,
            "session_id": record.session_id,
            "filename": filename,
            "status": STARTED,
            "start_time": naming.utc_iso(start),
            "duration": duration,
            "format": fmt,
        }

    # --- stopping -----------------------------------------------------------------------------------

    async def stop_recording(self, params: dict[str, Any], timeout: float = 12.0) -> dict[str, Any]:
        camera = self.cameras(params["device"])
        if camera is None:
            raise errors.camera_not_found(params["device"])
        slot = self.slots.get(camera.id)
        session = slot.session if slot is not None else None
        if session is None or session.ending:
            raise errors.invalid_params(f"no recording in progress on {params['device']}", "device")
        session.ask(STOPPED, None)
        try:
            result = await asyncio.wait_for(asyncio.shield(session.result), timeout)
        except asyncio.TimeoutError:
            raise RpcError(errors.MEDIA_BACKEND, data={"reason": "the recording did not stop in time"}) from None
        if result["status"] != STOPPED:
            raise errors.invalid_params(
                f"the recording on {params['device']} had already ended ({result['status']})", "device"
            )
        return result

    def camera_changed(self, camera: Camera) -> None:
        """A camera's record changed (discovery event): fail its recording if it went away."""
        self.previews.camera_changed(camera, camera.status == CONNECTED)
        slot = self.slots.get(camera.id)
        if slot is None or slot.session is None:
            return
        slot.session.camera = camera
        if camera.status != CONNECTED:
            slot.session.ask(FAILED, "camera disconnected")

    async def close(self, reason: str = "service stopped", suspend: bool = False) -> None:
        """End every session: stopped (journal entries removed), or suspended (kept, resumed next start)."""
        self._closed = True
        await self.previews.close()
        sessions = list(self.sessions.values())
        for session in sessions:
            session.ask(SUSPENDED if suspend else STOPPED, reason)
        futures = [s.result for s in sessions]
        if futures:
            await asyncio.wait(futures, timeout=self.stop_timeout + 3.0)
        for session in sessions:
            if session.run is not None and session.run.running():
                await session.run.stop(0.5)

    # --- crash recovery -----------------------------------------------------------------------------------

    async def open(self) -> None:
        """First thing at start: take over from a worker that died (see :mod:`.recovery`)."""
        self._pending = await recovery.open_journal(self)

    async def recover(self) -> None:
        """Resume the sessions :meth:`open` found (call once cameras can be resolved)."""
        records, self._pending = self._pending, []
        await recovery.recover(self, records)
