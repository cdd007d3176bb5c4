"""Taking over from a recording worker that died, or lost its supervisor.

Crash semantics
    *Worker killed* (SIGKILL, crash): ffmpeg gets SIGINT from the kernel
    (PDEATHSIG) and finalises its segment; the journal entry stays.
    *Supervisor lost* (the worker's parent died): the worker suspends every
    session (files finalised, journal entry kept, nothing announced).
    Either way the next worker (:func:`open_journal`, then :func:`recover`
    once cameras can be resolved) kills a capture that is somehow still
    alive, resumes the session in a new segment (same session id and
    ``filename``; the gap is the restart time), keeps the timed deadline, or
    reports ``COMPLETED``/``FAILED`` if the deadline passed or the camera went
    away meanwhile. Segments the dead capture cut short are announced with
    a duration read back from the file (ffmpeg could not write it down).

    *Ordered stop* (``camservice stop``): every recording is stopped and
    finalised, ``STOPPED`` is sent with ``error: "service stopped"`` and the
    journal entry removed; the next start does not resume it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from typing import TYPE_CHECKING

from camservice.cameras import CONNECTED, Camera
from camservice.errors import RpcError

from . import naming, storage
from .capture import CameraBusy, CameraGone, CaptureError
from .journal import SessionRecord
from .session import COMPLETED, FAILED, Session

if TYPE_CHECKING:
    from .sessions import RecordingManager

#: Attempts (0.25 s apart) to open a device the dead worker's capture may still hold.
BUSY_ATTEMPTS = 20


async def open_journal(owner: RecordingManager) -> list[SessionRecord]:
    """First thing at start: the sessions to resume.

    Kills capture processes a dead worker left behind, clears staging
    folders, and resets the active-files list (nothing records before
    :func:`recover` resumes). Journal entries are kept for :func:`recover`.
    """
    records, bad = await asyncio.to_thread(owner.journal.load_all)
    for problem in bad:
        owner.log.error("journal_unreadable", entry=problem)
    for record in records:
        await _kill_leftover(owner, record)
    staging_root = owner.config.state_dir / "run" / "recording"
    folders = await asyncio.to_thread(lambda: list(staging_root.glob("*")) if staging_root.exists() else [])
    for folder in folders:
        await asyncio.to_thread(shutil.rmtree, folder, True)
    await owner.active.clear()
    return records


async def recover(owner: RecordingManager, records: list[SessionRecord]) -> None:
    """Resume the sessions :func:`open_journal` found."""
    for record in records:
        try:
            await _resume(owner, record)
        except Exception:
            owner.log.exception("resume_failed", session_id=record.session_id)


async def _resume(owner: RecordingManager, record: SessionRecord) -> None:
    folder = owner.config.recordings_dir

    def scan() -> list[str]:
        # Segments the journal had not heard of yet (opened just before the crash).
        found = [name for name in record.segments if (folder / name).exists()]
        index = len(record.segments)
        while (folder / naming.segment_name(record.filename, index)).exists():
            found.append(naming.segment_name(record.filename, index))
            index += 1
        return found

    existing = await asyncio.to_thread(scan)
    for name in existing:
        if name not in record.segments:
            record.segments.append(name)
    camera = owner.cameras(record.camera_id)
    placeholder = camera or Camera(id=record.camera_id, device=record.device)
    for name in existing[-2:]:  # the ones the dead capture may have cut short
        size = await asyncio.to_thread(storage.size, folder / name)
        duration = await owner.probe_duration(folder / name) if size else None
        owner.file_update(name, placeholder, "complete", size, duration)
    owner.log.info(
        "recording_recovering", session_id=record.session_id, camera=record.camera_id, segments=len(record.segments)
    )
    if record.deadline is not None and time.time() >= record.deadline:
        # The files end where the dead worker's capture ended, not at the deadline.
        last_write = await asyncio.to_thread(lambda: max((storage.mtime(folder / n) for n in existing), default=0.0))
        end = min(record.deadline, last_write or record.deadline)
        await _end_unresumed(owner, record, COMPLETED, "interrupted by a restart of the recording worker", end)
        return
    if camera is None or camera.status != CONNECTED or not owner.backend.camera_present(camera):
        await _end_unresumed(owner, record, FAILED, "camera disconnected while the recording worker restarted")
        return
    session = Session(owner, record, camera)
    slot = owner.slot(camera.id)
    failure: CaptureError | None = None
    async with slot.lock:
        for _attempt in range(BUSY_ATTEMPTS):  # the old capture may still be releasing the device
            try:
                await session.start_run()
                failure = None
                owner.adopt(session, slot)
                break
            except CameraBusy as exc:
                failure = exc
                await asyncio.sleep(0.25)
            except CaptureError as exc:
                failure = exc
                break
            except RpcError as exc:  # the recordings folder cannot be written
                failure = CaptureError(f"storage: {exc.data['reason']}")
                break
    if failure is not None:
        reason = (
            "camera disconnected"
            if isinstance(failure, CameraGone)
            else f"capture could not resume: {owner.backend.sanitize(failure.reason)}"
        )
        await _end_unresumed(owner, record, FAILED, reason)
        return
    await owner.commit(session, slot)
    owner.log.info(
        "recording_resumed",
        session_id=record.session_id,
        camera=camera.id,
        segment=len(record.segments) - 1,
        pid=session.run.pid if session.run else None,
    )


async def _end_unresumed(
    owner: RecordingManager, record: SessionRecord, status: str, error: str, end: float | None = None
) -> None:
    duration = round((end or time.time()) - record.start_time, 3)
    await owner.journal.remove_async(record.session_id)
    owner.log.warning("recording_not_resumed", session_id=record.session_id, status=status, error=error)
    owner.status_event(record, status, duration, error)
    owner.observe_recording(status, duration)


async def _kill_leftover(owner: RecordingManager, record: SessionRecord) -> None:
    """Stop a capture of a dead worker that outlived it (PDEATHSIG normally saw to that)."""
    pid = record.ffmpeg_pid
    if not pid or not record.staging or not _runs_with(pid, record.staging):
        return
    owner.log.warning("leftover_capture", pid=pid, session_id=record.session_id)
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
