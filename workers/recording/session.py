"""One recording session from its first capture run to its end: :class:`Session`.

A session owns its capture runs (one at a time), its segment list and its
watch loop, started by :meth:`Session.launch` once the first run delivers
video. Each tick (:data:`TICK`) the loop polls the run for new and closed
segments and decides:

* a stop request (``stop_recording``, the camera going away, the worker
  stopping) or the timed deadline ends the session;
* the camera disappearing, or the disk falling below
  ``storage.min_free_bytes``, ends it as ``FAILED``;
* a segment passing ``recording.segment_max_bytes`` rolls over to a new run;
* a capture that *broke* is restarted in a new segment, paced by one
  :class:`~camservice.backoff.Backoff` (at most :data:`MAX_RESTARTS` in a
  row; a run that lasted :data:`HEALTHY_AFTER` seconds forgets earlier
  failures). Broken means: no output for ``recording.stall_seconds``;
  ffmpeg exited on its own (killed, crashed); or the file being written
  vanished (the recordings folder or the segment was deleted), in which
  case the folder is made again and the vanished files are announced as
  deleted so that no listing shows them. A failure that is about storage
  (no space, read-only) ends the session at once: retrying cannot help.

Every end goes through :meth:`Session.end`, which finalises the files,
updates the journal and the active-files list, publishes the events and
settles :attr:`Session.result`. A *suspended* session (the worker lost its
supervisor: a crash, not a stop) finalises its files but keeps its journal
entry and tells no one, so that the next start resumes it.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

from camservice import storage_errors
from camservice.backoff import Backoff
from camservice.cameras import Camera
from camservice.errors import RpcError

from . import naming, storage
from .backend import CaptureRun, SegmentEvent
from .capture import CameraGone, CaptureError
from .journal import SessionRecord

if TYPE_CHECKING:
    from .sessions import RecordingManager

#: Seconds between checks of a running session.
TICK = 0.25
#: Seconds between free-space checks of a running session.
STORAGE_INTERVAL = 2.0
#: Consecutive restarts without a healthy run before a session fails.
MAX_RESTARTS = 5
#: Seconds a run must last before its failure no longer counts as "in a row".
HEALTHY_AFTER = 60.0

STARTED, STOPPED, COMPLETED, FAILED = "STARTED", "STOPPED", "COMPLETED", "FAILED"
#: Internal end state: files finalised, journal kept for the next start.
SUSPENDED = "SUSPENDED"


class Session:
    """One recording: its record (the journal entry), camera, current run and watch loop."""

    def __init__(self, owner: RecordingManager, record: SessionRecord, camera: Camera):
        self.owner = owner
        self.record = record
        self.camera = camera
        self.run: CaptureRun | None = None
        self.runs = 0  # runs started, for staging folder names
        self.restarts = 0  # restarts after a broken capture, for logs
        self.request: tuple[str, str | None] | None = None  # (status, error) asked from outside
        self.wake = asyncio.Event()
        self.result: asyncio.Future = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task | None = None
        self.ending = False
        self.failure: CaptureError | None = None  # why the last restart failed
        self.backoff = Backoff(initial=0.5, ceiling=30.0, immediate=1, limit=MAX_RESTARTS, stable_after=HEALTHY_AFTER)

    @property
    def log(self):
        return self.owner.log

    def ask(self, status: str, error: str | None) -> None:
        """Ask the watch loop to end the session with ``status`` (the first request wins)."""
        if self.request is None:
            self.request = (status, error)
        self.wake.set()

    def path(self, index: int):
        return self.owner.config.recordings_dir / naming.segment_name(self.record.filename, index)

    # --- runs ----------------------------------------------------------------------------

    async def start_run(self) -> None:
        """Start the next run at the next unused segment index (the folder made again if it went)."""
        record = self.record
        await storage.ensure_writable(self.owner.config.recordings_dir, "recordings")
        self.runs += 1
        tag = f"{record.session_id}-r{self.runs}"
        backend = self.owner.backend
        run = await backend.start_run(
            self.camera,
            tag=tag,
            fmt=record.format,
            first_index=len(record.segments),
            path_of=self.path,
            timeout=backend.start_timeout,
        )
        self.run = run
        record.ffmpeg_pid, record.staging = run.pid, tag
        record.worker_pid = os.getpid()

    async def finish_run(self, state: str) -> None:
        run, self.run = self.run, None
        if run is None:
            return
        await run.stop(self.owner.stop_timeout)
        events = await asyncio.to_thread(run.finish)
        await self.apply(events, closed_state=state)

    async def poll(self) -> None:
        if self.run is not None:
            events = await asyncio.to_thread(self.run.poll)
            await self.apply(events)

    async def apply(self, events: list[SegmentEvent], closed_state: str = "complete") -> None:
        """Record new segments, announce opened and closed ones (closed ones probed when ffmpeg could not say)."""
        record, camera, owner = self.record, self.camera, self.owner
        journal_changed = False
        for event in events:
            name = naming.segment_name(record.filename, event.index)
            if event.kind == "opened":
                if name not in record.segments:
                    record.segments.append(name)
                    journal_changed = True
                await owner.active.add(name, camera.id, camera.device, record.session_id, naming.utc_iso())
                owner.file_update(name, camera, "recording", 0)
            else:
                await owner.active.remove(name)
                path = owner.config.recordings_dir / name
                size = await asyncio.to_thread(storage.size, path)
                duration = event.duration
                if duration is None and size:
                    duration = await owner.probe_duration(path)
                owner.file_update(name, camera, closed_state, size, duration)
        if journal_changed and not self.ending:
            await owner.journal.save_async(record)

    async def restart(self, delay: float) -> bool:
        """End the current run and start the next one; False when the start failed or a request came."""
        self.failure = None
        await self.finish_run("complete")
        if delay:
            try:
                await asyncio.wait_for(self.wake.wait(), delay)
            except asyncio.TimeoutError:
                pass
        if self.request is not None:
            return False
        try:
            await self.start_run()
        except CaptureError as exc:
            self.failure = exc
            self.log.warning("capture_restart_failed", session_id=self.record.session_id, reason=exc.reason)
            return False
        except RpcError as exc:  # the folder cannot be written (storage.ensure_writable)
            self.failure = CaptureError(f"storage: {exc.data['reason']}")
            self.log.warning("capture_restart_failed", session_id=self.record.session_id, reason=self.failure.reason)
            return False
        await self.poll()
        await self.owner.journal.save_async(self.record)
        self.log.info("capture_restarted", session_id=self.record.session_id, pid=self.run.pid if self.run else None)
        return True

    # --- the watch loop -------------------------------------------------------------------

    def launch(self) -> None:
        """Hand the session to its watch loop, which owns it from now on."""
        self.task = asyncio.ensure_future(self._supervise())

    async def _supervise(self) -> None:
        status, error = FAILED, "internal error"
        try:
            status, error = await self._watch()
        except asyncio.CancelledError:
            status, error = FAILED, "recording worker stopped"
        except Exception as exc:
            self.log.exception("session_failed", session_id=self.record.session_id)
            status, error = FAILED, f"internal error: {type(exc).__name__}"
        finally:
            await self.end(status, error)

    async def _watch(self) -> tuple[str, str | None]:
        record, owner = self.record, self.owner
        config = owner.config
        stall, max_bytes = config.recording.stall_seconds, config.recording.segment_max_bytes
        next_storage = 0.0
        last_progress, grew_at = -1, time.monotonic()
        self.backoff.started()
        while True:
            wait = TICK
            if record.deadline is not None:
                wait = min(wait, max(0.0, record.deadline - time.time()))
            try:
                await asyncio.wait_for(self.wake.wait(), wait)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            if self.request is not None:
                return self.request
            if record.deadline is not None and time.time() >= record.deadline:
                return COMPLETED, None
            run = self.run
            assert run is not None
            await self.poll()
            if not owner.backend.camera_present(self.camera):
                return FAILED, "camera disconnected"
            now = time.monotonic()
            if now >= next_storage:
                next_storage = now + STORAGE_INTERVAL
                free = await storage.free_bytes(config.recordings_dir)
                if free < config.storage.min_free_bytes:
                    return FAILED, f"storage: only {free} bytes free, {config.storage.min_free_bytes} required"
            if run.progress != last_progress:
                last_progress, grew_at = run.progress, now
            broken = await self._broken(run, now - grew_at >= stall, round(now - grew_at, 1))
            if broken is None and max_bytes and run.current_size() >= max_bytes:
                self.log.info("segment_size_rollover", session_id=record.session_id, size=run.current_size())
                if not await self.restart(delay=0.0):
                    return self.request or (FAILED, self._last_failure())
                last_progress, grew_at = -1, time.monotonic()
                continue
            if broken is not None:
                outcome = await self._recover(broken)
                if outcome is not None:
                    return outcome
                last_progress, grew_at = -1, time.monotonic()

    async def _broken(self, run: CaptureRun, stalled: bool, seconds: float) -> str | None:
        """Why the run must be replaced, or None while it is healthy."""
        record = self.record
        if run.current_missing:  # seen by the poll just before
            await self._files_lost()
            return "the file being recorded was deleted"
        if not run.running():
            tail = self.owner.backend.sanitize(run.tail() or "no output")
            self.log.warning(
                "capture_exited", session_id=record.session_id, code=run.returncode, restarts=self.restarts, stderr=tail
            )
            return f"ffmpeg exited with code {run.returncode}: {tail}"
        if stalled:
            tail = self.owner.backend.sanitize(run.tail() or "no output")
            self.log.warning(
                "capture_stalled", session_id=record.session_id, restarts=self.restarts, seconds=seconds, stderr=tail
            )
            return f"capture stalled: {tail}"
        return None

    async def _files_lost(self) -> None:
        """The file being written is gone (folder or file deleted): say so, and unlist what vanished."""
        record, owner = self.record, self.owner
        folder = owner.config.recordings_dir
        gone = await asyncio.to_thread(lambda: [n for n in record.segments if not (folder / n).exists()])
        self.log.error(
            "recording_files_deleted",
            session_id=record.session_id,
            files=gone,
            folder_missing=not await asyncio.to_thread(folder.is_dir),
            action="continuing in a new segment",
        )
        await owner.active.remove(*gone)
        for name in gone:
            owner.file_update(name, self.camera, "deleted", 0)

    async def _recover(self, problem: str) -> tuple[str, str | None] | None:
        """Restart a broken capture, paced by the backoff; the end state when that is over."""
        about_storage = storage_errors.from_ffmpeg(problem, "recordings")
        if about_storage is not None:  # the disk filled up, or became read-only: retrying cannot help
            return FAILED, f"storage: {about_storage.data['reason']}"
        while True:
            delay = self.backoff.failed()
            if delay is None:
                return FAILED, problem if self.failure is None else self._last_failure()
            self.restarts += 1
            if await self.restart(delay):
                self.backoff.started()
                return None
            if self.request is not None:
                return self.request
            failure = self._last_failure()
            if failure == "camera disconnected" or failure.startswith("storage:"):
                return FAILED, failure

    def _last_failure(self) -> str:
        """Why the last restart failed, as a session's ``error``."""
        failure = self.failure
        if isinstance(failure, CameraGone):
            return "camera disconnected"
        if failure is None:
            return "capture restart failed: unknown"
        reason = self.owner.backend.sanitize(failure.reason)
        if reason.startswith("storage:"):
            return reason
        about_storage = storage_errors.from_ffmpeg(reason, "recordings")
        if about_storage is not None:
            return f"storage: {about_storage.data['reason']}"
        return f"capture restart failed: {reason}"

    # --- the end --------------------------------------------------------------------------

    async def end(self, status: str, error: str | None) -> None:
        """The one way a live session ends: finalise files, forget it, tell everyone (unless suspended)."""
        self.ending = True
        owner, record = self.owner, self.record
        end, sizes = time.time(), 0
        try:
            # The segment(s) still open when a FAILED session ends are marked
            # failed for the file worker, though ffmpeg finalised them (playable).
            await self.finish_run("failed" if status == FAILED else "complete")
            end = time.time()
            sizes = await asyncio.to_thread(
                lambda: sum(storage.size(owner.config.recordings_dir / name) for name in record.segments)
            )
            if status == SUSPENDED:
                record.ffmpeg_pid = record.staging = None
                await owner.journal.save_async(record)  # the segment list as finalised: resumed next start
            else:
                await owner.journal.remove_async(record.session_id)
            await owner.active.remove(*record.segments)
        except Exception:
            self.log.exception("finish_failed", session_id=record.session_id)
        finally:
            owner.forget(self)
            duration = round(end - record.start_time, 3)
            if status == SUSPENDED:
                self.log.warning("recording_suspended", session_id=record.session_id, reason=error, duration=duration)
            else:
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
                owner.status_event(record, status, duration, error)
                owner.observe_recording(status, duration)
            result: dict[str, Any] = {
                "device": record.device,
                "session_id": record.session_id,
                "filename": record.filename,
                "status": status,
                "start_time": naming.utc_iso(record.start_time),
                "end_time": naming.utc_iso(end),
                "duration": duration,
                "file_size": sizes,
            }
            if not self.result.done():
                self.result.set_result(result)
