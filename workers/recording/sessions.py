"""Snapshots and recording sessions: the recording worker's logic, without ZeroMQ.

:class:`RecordingManager` serves ``take_snapshot``, ``start_recording`` and
``stop_recording`` and keeps every session alive until it ends. It is
driven by three callables, so tests run it in-process:

* ``cameras(device_or_id) -> Camera | None`` (the worker passes its
  :class:`~camservice.cameras.CameraTable` replica's ``find``),
* ``publish(topic, data)`` (the worker's :meth:`~camservice.workers.base.Worker.publish`),
* a :class:`~.backend.MediaBackend` doing the capturing.

One supervisor task per session owns it from start to end: it polls the
capture run (new and closed segments), and ends the session on a stop
request, the timed deadline, the camera disappearing, ffmpeg exiting, or
the disk falling below ``storage.min_free_bytes``; it restarts the run when
its output stops growing for ``recording.stall_seconds`` (backoff, at most
:data:`MAX_RESTARTS` in a row) or the segment passes
``recording.segment_max_bytes``. Every end goes through one place
(:meth:`RecordingManager._end`), which finalises the files, updates the
journal and the active-files list, and publishes the events.

Crash and shutdown semantics
    *Worker killed* (SIGKILL, crash): ffmpeg gets SIGINT from the kernel
    (PDEATHSIG) and finalises its segment; the journal entry stays. The next
    worker (:meth:`recover`) kills a capture that is somehow still alive,
    resumes the session in a new segment (same session id and
    ``filename``; the gap is the restart time), keeps the timed deadline, or
    reports ``COMPLETED``/``FAILED`` if the deadline passed or the camera went
    away meanwhile.
    *Graceful stop* (SIGTERM, ``camservice stop``): every recording is
    stopped and finalised, ``recording_status_update`` ``STOPPED`` is sent with
    ``error: "service stopped"``, and the journal entry is removed, so the
    next start does *not* resume it: stopping the service ends recordings,
    as the contract implies; only an unplanned death resumes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import structlog

from camservice import errors
from camservice.active_files import ActiveFiles, active_files_path
from camservice.cameras import CONNECTED, Camera
from camservice.errors import RpcError

from . import naming, storage
from .backend import CaptureRun, MediaBackend, SegmentEvent, make_backend
from .capture import CameraBusy, CameraGone, CaptureError
from .journal import Journal, SessionRecord

#: Seconds between checks of a running session.
TICK = 0.25
#: Seconds between free-space checks of a running session.
STORAGE_INTERVAL = 2.0
#: Seconds ffmpeg gets to finalise after SIGINT before SIGKILL.
STOP_TIMEOUT = 5.0
#: Consecutive restarts without a healthy run before a session fails.
MAX_RESTARTS = 5
#: Seconds a run must keep growing before its restart count resets.
HEALTHY_AFTER = 60.0

STARTED, STOPPED, COMPLETED, FAILED = "STARTED", "STOPPED", "COMPLETED", "FAILED"

Resolver = Callable[[str], "Camera | None"]
Publisher = Callable[[str, dict[str, Any]], Any]


@dataclass
class Session:
    record: SessionRecord
    camera: Camera
    run: CaptureRun | None = None
    runs: int = 0
    request: tuple[str, str | None] | None = None  # (status, error) asked from outside
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Sessions are only made inside the loop; the future carries _end's result.
    result: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    task: asyncio.Task | None = None
    ending: bool = False
    failure: CaptureError | None = None  # why the last restart failed

    def ask(self, status: str, error: str | None) -> None:
        if self.request is None:
            self.request = (status, error)
        self.wake.set()


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
        self._pending: list[SessionRecord] = []
        self._closed = False
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

    # --- helpers -------------------------------------------------------------------------

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        try:
            self._publish(topic, data)
        except Exception:  # a full queue must not take a recording down
            self.log.exception("publish_failed", topic=topic)

    def _slot(self, camera_id: str) -> Slot:
        return self.slots.setdefault(camera_id, Slot())

    def _camera(self, device: str) -> Camera:
        camera = self.cameras(device)
        if camera is None or camera.status != CONNECTED:
            raise errors.camera_not_found(device)
        return camera

    def _recording_path(self, record: SessionRecord, index: int) -> Path:
        return self.config.recordings_dir / naming.segment_name(record.filename, index)

    def _media_error(self, exc: CaptureError, device: str) -> RpcError:
        if isinstance(exc, CameraGone):
            return errors.camera_not_found(device)
        data: dict[str, Any] = {"reason": self.backend.sanitize(exc.reason)}
        if getattr(exc, "http_status", None) is not None:  # MediaMTX answered with an error
            data["http_status"] = exc.http_status
        return RpcError(errors.MEDIA_BACKEND, data=data)

    def _file_update(
        self, kind: str, filename: str, camera: Camera, state: str, size: int, duration: float | None = None
    ) -> None:
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
        self.publish("_file_update", data)

    def _status_event(self, session: Session, status: str, duration: float, error: str | None = None) -> None:
        record = session.record
        data: dict[str, Any] = {
            "device": record.device,
            "status": status,
            "filename": record.filename,
            "session_id": record.session_id,
            "duration": duration,
        }
        if error is not None:
            data["error"] = error
        self.publish("recording_status_update", data)

    # --- snapshots -------------------------------------------------------------------------

    async def take_snapshot(self, params: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        camera = self._camera(params["device"])
        fmt = params.get("format") or "jpg"
        filename = params.get("filename") or naming.default_name(camera.id, fmt)
        folder = self.config.snapshots_dir
        await storage.ensure_space(folder, self.config.storage.min_free_bytes)
        target = folder / filename
        # Written under a hidden name and renamed, so the file worker never lists half a picture.
        temp = folder / f".snapshot-{naming.random_tag(12)}.tmp.{fmt}"
        slot = self._slot(camera.id)
        began = time.monotonic()
        deadline = began + timeout
        try:
            async with asyncio.timeout(timeout):
                async with slot.lock:
                    session = slot.session
                    if session is None:
                        await self.backend.snapshot(camera, temp, fmt, deadline - time.monotonic())
                if session is not None:
                    await self._snapshot_from_session(session, temp, fmt, deadline)
            await asyncio.to_thread(os.replace, temp, target)
            size = (await asyncio.to_thread(target.stat)).st_size
        except CaptureError as exc:
            raise self._media_error(exc, params["device"]) from None
        except TimeoutError:
            raise RpcError(errors.MEDIA_BACKEND, data={"reason": f"no picture within {timeout:.0f}s"}) from None
        finally:
            await asyncio.to_thread(_unlink_quietly, temp)
        self._file_update("snapshot", filename, camera, "complete", size)
        self.observe_snapshot(time.monotonic() - began)
        return {
            "device": camera.device,
            "filename": filename,
            "status": "completed",
            "timestamp": naming.utc_iso(),
            "file_size": size,
            "file_path": str(target),
        }

    async def _snapshot_from_session(self, session: Session, temp: Path, fmt: str, deadline: float) -> None:
        # A restart may be replacing the run: wait for the next one rather than fail.
        while session.run is None and not session.ending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        run = session.run
        if run is None:
            raise CaptureError("the recording is restarting its capture")
        await self.backend.snapshot_from_run(run, temp, fmt, max(0.5, deadline - time.monotonic()))

    # --- starting --------------------------------------------------------------------------------

    async def start_recording(self, params: dict[str, Any]) -> dict[str, Any]:
        if self._closed:
            raise RpcError(errors.SERVICE_BUSY, data={"reason": "recording worker is stopping"})
        camera = self._camera(params["device"])
        slot = self._slot(camera.id)
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
            if await asyncio.to_thread(_name_taken, self.config.recordings_dir, filename):
                raise taken
            return await self._start_named(camera, slot, params, filename)
        finally:
            if slot.session is None or slot.session.record.filename != filename:
                self._names.discard(filename)

    async def _start_named(self, camera: Camera, slot: Slot, params: dict[str, Any], filename: str) -> dict[str, Any]:
        fmt = params.get("format") or "mp4"
        duration = params.get("duration")
        folder = self.config.recordings_dir
        await storage.ensure_space(folder, self.config.storage.min_free_bytes)
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
        session = Session(record, camera)
        async with slot.lock:
            try:
                await self._start_run(session)
            except CaptureError as exc:
                raise self._media_error(exc, params["device"]) from None
            # Before the device lock is released: a snapshot waiting for it
            # must find the recording, not try to open the device again.
            self._adopt(session, slot)
        await self._commit(session, slot)
        self.log.info(
            "recording_started",
            camera=camera.id,
            session_id=record.session_id,
            filename=filename,
            duration=duration,
            pid=session.run.pid if session.run else None,
        )
        self._status_event(session, STARTED, 0)
        return {
            "device": camera.device,
            "session_id": record.session_id,
            "filename": filename,
            "status": STARTED,
            "start_time": naming.utc_iso(start),
            "duration": duration,
            "format": fmt,
        }

    async def _commit(self, session: Session, slot: Slot) -> None:
        """Register the first segment (active list, journal), then start the
        session's supervising task: registering first means only one task
        ever polls a run. On failure the session is abandoned."""
        try:
            await self._poll(session)
            await self.journal.save_async(session.record)
        except BaseException:
            await self._abandon(session, slot)
            raise
        self._launch(session)

    def _adopt(self, session: Session, slot: Slot) -> None:
        """Make a session with a running capture visible (slot, names, sessions)."""
        self._names.add(session.record.filename)
        slot.session = session
        self.sessions[session.record.session_id] = session

    def _launch(self, session: Session) -> None:
        """Hand an adopted session to its supervisor task, which owns it from now on."""
        session.task = asyncio.ensure_future(self._supervise(session))

    async def _abandon(self, session: Session, slot: Slot) -> None:
        """Undo :meth:`_adopt` after a failure before :meth:`_launch`: no unsupervised capture."""
        session.ending = True
        try:
            await self._finish_run(session, "failed")
            await self.journal.remove_async(session.record.session_id)
        finally:
            if slot.session is session:
                slot.session = None
            self.sessions.pop(session.record.session_id, None)
            self._names.discard(session.record.filename)
            if not session.result.done():
                session.result.set_result({"status": FAILED})

    async def _start_run(self, session: Session) -> None:
        """Start the next run of ``session`` at the next unused segment index."""
        record = session.record
        session.runs += 1
        tag = f"{record.session_id}-r{session.runs}"
        run = await self.backend.start_run(
            session.camera,
            tag=tag,
            fmt=record.format,
            first_index=len(record.segments),
            path_of=lambda index: self._recording_path(record, index),
            timeout=self.backend.start_timeout,
        )
        session.run = run
        record.ffmpeg_pid, record.staging = run.pid, tag
        record.worker_pid = os.getpid()

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
        slot = self.slots.get(camera.id)
        if slot is None or slot.session is None:
            return
        slot.session.camera = camera
        if camera.status != CONNECTED:
            slot.session.ask(FAILED, "camera disconnected")

    async def close(self, reason: str = "service stopped") -> None:
        """Graceful shutdown: stop and finalise every recording (journal entries removed)."""
        self._closed = True
        sessions = list(self.sessions.values())
        for session in sessions:
            session.ask(STOPPED, reason)
        futures = [s.result for s in sessions]
        if futures:
            await asyncio.wait(futures, timeout=self.stop_timeout + 3.0)
        for session in sessions:
            if session.run is not None and session.run.running():
                await session.run.stop(0.5)

    # --- supervision ------------------------------------------------------------------------------------

    async def _supervise(self, session: Session) -> None:
        status, error = FAILED, "internal error"
        try:
            status, error = await self._watch(session)
        except asyncio.CancelledError:
            status, error = FAILED, "recording worker stopped"
        except Exception as exc:
            self.log.exception("session_failed", session_id=session.record.session_id)
            status, error = FAILED, f"internal error: {type(exc).__name__}"
        finally:
            await self._end(session, status, error)

    async def _watch(self, session: Session) -> tuple[str, str | None]:
        record = session.record
        stall = self.config.recording.stall_seconds
        max_bytes = self.config.recording.segment_max_bytes
        next_storage = 0.0
        restarts, backoff = 0, 0.5
        last_progress, grew_at, healthy_since = -1, time.monotonic(), time.monotonic()
        while True:
            wait = TICK
            if record.deadline is not None:
                wait = min(wait, max(0.0, record.deadline - time.time()))
            try:
                await asyncio.wait_for(session.wake.wait(), wait)
            except asyncio.TimeoutError:
                pass
            session.wake.clear()
            if session.request is not None:
                return session.request
            if record.deadline is not None and time.time() >= record.deadline:
                return COMPLETED, None
            run = session.run
            assert run is not None
            await self._poll(session)
            if not run.running():
                if not self.backend.camera_present(session.camera):
                    return FAILED, "camera disconnected"
                return FAILED, self.backend.sanitize(
                    f"capture failed: ffmpeg exited with code {run.returncode}: {run.tail() or 'no output'}"
                )
            if not self.backend.camera_present(session.camera):
                return FAILED, "camera disconnected"
            now = time.monotonic()
            if now >= next_storage:
                next_storage = now + STORAGE_INTERVAL
                free = await storage.free_bytes(self.config.recordings_dir)
                if free < self.config.storage.min_free_bytes:
                    return FAILED, f"storage: only {free} bytes free, {self.config.storage.min_free_bytes} required"
            if run.progress != last_progress:
                last_progress, grew_at = run.progress, now
                if now - healthy_since >= HEALTHY_AFTER:
                    restarts, backoff = 0, 0.5
            if max_bytes and run.current_size() >= max_bytes:
                self.log.info("segment_size_rollover", session_id=record.session_id, size=run.current_size())
                if not await self._restart(session, delay=0.0):
                    return FAILED, self._last_failure(session)
                last_progress, grew_at, healthy_since = -1, time.monotonic(), time.monotonic()
                continue
            if now - grew_at >= stall:
                restarts += 1
                tail = self.backend.sanitize(run.tail() or "no output")
                self.log.warning(
                    "capture_stalled",
                    session_id=record.session_id,
                    restarts=restarts,
                    seconds=round(now - grew_at, 1),
                    stderr=tail,
                )
                if restarts > MAX_RESTARTS:
                    return FAILED, f"capture stalled: {tail}"
                while not await self._restart(session, delay=backoff):
                    if session.request is not None:
                        return session.request
                    if isinstance(session.failure, CameraGone):
                        return FAILED, "camera disconnected"
                    restarts += 1
                    backoff = min(backoff * 2, 30.0)
                    if restarts > MAX_RESTARTS:
                        return FAILED, self._last_failure(session)
                backoff = min(backoff * 2, 30.0)
                last_progress, grew_at, healthy_since = -1, time.monotonic(), time.monotonic()

    def _last_failure(self, session: Session) -> str:
        failure = session.failure
        if isinstance(failure, CameraGone):
            return "camera disconnected"
        return f"capture restart failed: {self.backend.sanitize(failure.reason) if failure else 'unknown'}"

    async def _restart(self, session: Session, delay: float) -> bool:
        """End the current run and start the next one; False when the start failed."""
        session.failure = None
        await self._finish_run(session, "complete")
        if delay:
            try:
                await asyncio.wait_for(session.wake.wait(), delay)
            except asyncio.TimeoutError:
                pass
            if session.request is not None:
                return False
        try:
            await self._start_run(session)
        except CaptureError as exc:
            session.failure = exc
            self.log.warning("capture_restart_failed", session_id=session.record.session_id, reason=exc.reason)
            return False
        await self._poll(session)
        await self.journal.save_async(session.record)
        self.log.info("capture_restarted", session_id=session.record.session_id, pid=session.run.pid)
        return True

    async def _finish_run(self, session: Session, state: str) -> None:
        run, session.run = session.run, None
        if run is None:
            return
        await run.stop(self.stop_timeout)
        events = await asyncio.to_thread(run.finish)
        await self._apply(session, events, closed_state=state)

    async def _poll(self, session: Session) -> None:
        if session.run is not None:
            events = await asyncio.to_thread(session.run.poll)
            await self._apply(session, events)

    async def _apply(self, session: Session, events: list[SegmentEvent], closed_state: str = "complete") -> None:
        record, camera = session.record, session.camera
        journal_changed = False
        for event in events:
            name = naming.segment_name(record.filename, event.index)
            if event.kind == "opened":
                if name not in record.segments:
                    record.segments.append(name)
                    journal_changed = True
                await self.active.add(name, camera.id, camera.device, record.session_id, naming.utc_iso())
                self._file_update("recording", name, camera, "recording", 0)
            else:
                await self.active.remove(name)
                size = await asyncio.to_thread(_size, self.config.recordings_dir / name)
                self._file_update("recording", name, camera, closed_state, size, event.duration)
        if journal_changed and not session.ending:
            await self.journal.save_async(record)

    async def _end(self, session: Session, status: str, error: str | None) -> None:
        """The one way a live session ends: finalise files, forget it, tell everyone."""
        session.ending = True
        record = session.record
        end, sizes = time.time(), 0
        try:
            # The segment(s) still open when a FAILED session ends are marked
            # failed for the file worker, though ffmpeg finalised them (playable).
            await self._finish_run(session, "failed" if status == FAILED else "complete")
            end = time.time()
            sizes = await asyncio.to_thread(
                lambda: sum(_size(self.config.recordings_dir / name) for name in record.segments)
            )
            await self.journal.remove_async(record.session_id)
            await self.active.remove(*record.segments)
        except Exception:
            self.log.exception("finish_failed", session_id=record.session_id)
        finally:
            slot = self.slots.get(record.camera_id)
            if slot is not None and slot.session is session:
                slot.session = None
            self.sessions.pop(record.session_id, None)
            self._names.discard(record.filename)
            duration = round(end - record.start_time, 3)
            log = self.log.warning if status == FAILED else self.log.info
            log(
                "recording_ended",
                camera=record.camera_id,
                session_id=record.session_id,
                status=status,
                error=error,
                duration=duration,
                segments=len(record.segments),
                bytes=sizes,
            )
            self._status_event(session, status, duration, error)
            self.observe_recording(status, duration)
            result = {
                "device": record.device,
                "session_id": record.session_id,
                "filename": record.filename,
                "status": status,
                "start_time": naming.utc_iso(record.start_time),
                "end_time": naming.utc_iso(end),
                "duration": duration,
                "file_size": sizes,
            }
            if not session.result.done():
                session.result.set_result(result)

    # --- crash recovery -----------------------------------------------------------------------------------

    async def open(self) -> None:
        """First thing at start: take over from a worker that died.

        Kills capture processes a dead worker left behind, clears staging
        folders, and resets the active-files list (nothing records before
        :meth:`recover` resumes). Journal entries are kept for :meth:`recover`.
        """
        records, bad = await asyncio.to_thread(self.journal.load_all)
        for problem in bad:
            self.log.error("journal_unreadable", entry=problem)
        for record in records:
            await self._kill_leftover(record)
        staging_root = self.config.state_dir / "run" / "recording"
        for folder in await asyncio.to_thread(lambda: list(staging_root.glob("*")) if staging_root.exists() else []):
            await asyncio.to_thread(_rmtree, folder)
        self.active.files.clear()
        await self.active.flush()
        self._pending = records

    async def recover(self) -> None:
        """Resume the sessions :meth:`open` found (call once cameras can be resolved)."""
        records, self._pending = self._pending, []
        for record in records:
            try:
                await self._resume(record)
            except Exception:
                self.log.exception("resume_failed", session_id=record.session_id)

    async def _resume(self, record: SessionRecord) -> None:
        # Segments the journal had not heard of yet (opened just before the crash).
        def scan() -> list[str]:
            found = [name for name in record.segments if (self.config.recordings_dir / name).exists()]
            index = len(record.segments)
            while self._recording_path(record, index).exists():
                found.append(naming.segment_name(record.filename, index))
                index += 1
            return found

        existing = await asyncio.to_thread(scan)
        for name in existing[len(record.segments) :]:
            record.segments.append(name)
        camera = self.cameras(record.camera_id)
        placeholder = camera or Camera(id=record.camera_id, device=record.device)
        session = Session(record, placeholder)
        for name in existing[-2:]:
            size = await asyncio.to_thread(_size, self.config.recordings_dir / name)
            self._file_update("recording", name, placeholder, "complete", size)
        self.log.info(
            "recording_recovering", session_id=record.session_id, camera=record.camera_id, segments=len(record.segments)
        )
        now = time.time()
        if record.deadline is not None and now >= record.deadline:
            # The files end where the dead worker's capture ended, not at the deadline.
            last_write = await asyncio.to_thread(
                lambda: max((_mtime(self.config.recordings_dir / n) for n in existing), default=0.0)
            )
            await self._end_unresumed(
                session,
                COMPLETED,
                "interrupted by a restart of the recording worker",
                min(record.deadline, last_write or record.deadline),
            )
            return
        if camera is None or camera.status != CONNECTED or not self.backend.camera_present(camera):
            await self._end_unresumed(session, FAILED, "camera disconnected while the recording worker restarted")
            return
        session.camera = camera
        slot = self._slot(camera.id)
        failure: CaptureError | None = None
        async with slot.lock:
            for attempt in range(20):  # the old capture may still be releasing the device
                try:
                    await self._start_run(session)
                    failure = None
                    self._adopt(session, slot)
                    break
                except CameraBusy as exc:
                    failure = exc
                    await asyncio.sleep(0.25)
                except CaptureError as exc:
                    failure = exc
                    break
        if failure is not None:
            reason = (
                "camera disconnected"
                if isinstance(failure, CameraGone)
                else f"capture could not resume: {self.backend.sanitize(failure.reason)}"
            )
            await self._end_unresumed(session, FAILED, reason)
            return
        await self._commit(session, slot)
        self.log.info(
            "recording_resumed",
            session_id=record.session_id,
            camera=camera.id,
            segment=len(record.segments) - 1,
            pid=session.run.pid if session.run else None,
        )

    async def _end_unresumed(self, session: Session, status: str, error: str, end: float | None = None) -> None:
        record = session.record
        end = end or time.time()
        duration = round(end - record.start_time, 3)
        await self.journal.remove_async(record.session_id)
        self.log.warning("recording_not_resumed", session_id=record.session_id, status=status, error=error)
        self._status_event(session, status, duration, error)
        self.observe_recording(status, duration)

    async def _kill_leftover(self, record: SessionRecord) -> None:
        """Stop a capture of a dead worker that outlived it (PDEATHSIG normally saw to that)."""
        pid = record.ffmpeg_pid
        if not pid or not record.staging or not _runs_with(pid, record.staging):
            return
        self.log.warning("leftover_capture", pid=pid, session_id=record.session_id)
        for sig, wait in ((signal.SIGINT, 3.0), (signal.SIGKILL, 2.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            until = time.monotonic() + wait
            while time.monotonic() < until:
                if not _runs_with(pid, record.staging):
                    return
                await asyncio.sleep(0.05)


# --- small blocking helpers (run in threads) ----------------------------------------------


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _name_taken(folder: Path, filename: str) -> bool:
    """A recording name is refused if it, or a segment derived from it, exists."""
    return (folder / filename).exists() or any(folder.glob(naming.segment_glob(filename)))


def _runs_with(pid: int, marker: str) -> bool:
    """Whether ``pid`` is alive (not a zombie) and has ``marker`` in its command line."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            state = stream.read().rsplit(b")", 1)[1].split()[0]
        if state in (b"Z", b"X"):
            return False
        with open(f"/proc/{pid}/cmdline", "rb") as stream:
            return marker.encode() in stream.read()
    except (OSError, IndexError):
        return False
