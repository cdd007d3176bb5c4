"""What survives a crash of the recording worker or of its supervisor: the session journal.

``state_dir/journal/<session_id>.json``
    One JSON document per active session (see :class:`SessionRecord`). It is
    written when a recording starts, whenever its capture process or segment
    list changes, and removed when the session ends (stopped, completed,
    failed). A worker that starts and finds entries was killed mid-recording
    (or lost its supervisor) and resumes them.

Written with :func:`~camservice.active_files.atomic_write_json` (temporary
file, fsync, rename), so a reader never sees a half-written document and a
crash leaves either the old or the new version. The async methods run the
write in a thread (an fsync on an SD card can take long enough to stall the
loop) under a lock, and take their snapshot of the data inside the lock, so
the last write on disk is always the newest state. The list of files being
recorded (``recording-active.json``) is :mod:`camservice.active_files`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from camservice.active_files import atomic_write_json

JOURNAL_VERSION = 1


@dataclass
class SessionRecord:
    """The journal entry of one recording session."""

    session_id: str
    camera_id: str
    device: str
    filename: str  # first segment, the name start_recording returned
    format: str  # mp4 or mkv
    start_time: float  # epoch seconds
    duration: int | None  # requested seconds, None: until stop_recording
    deadline: float | None  # epoch seconds of the timed stop
    segments: list[str] = field(default_factory=list)  # names known so far, in order
    ffmpeg_pid: int | None = None  # capture process of the current run
    staging: str | None = None  # staging folder of the current run (identifies its ffmpeg)
    worker_pid: int | None = None
    version: int = JOURNAL_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionRecord:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


class Journal:
    """One JSON file per active session in ``state_dir/journal``."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = asyncio.Lock()

    def _path(self, session_id: str) -> Path:
        return self.folder / f"{session_id}.json"

    def save(self, record: SessionRecord) -> None:
        atomic_write_json(self._path(record.session_id), record.to_json())

    def remove(self, session_id: str) -> None:
        try:
            self._path(session_id).unlink()
        except FileNotFoundError:
            pass

    async def save_async(self, record: SessionRecord) -> None:
        async with self._lock:
            document = record.to_json()
            await asyncio.to_thread(atomic_write_json, self._path(record.session_id), document)

    async def remove_async(self, session_id: str) -> None:
        async with self._lock:
            await asyncio.to_thread(self.remove, session_id)

    def load_all(self) -> tuple[list[SessionRecord], list[str]]:
        """Every readable entry, and the names of unreadable ones.

        An unreadable entry is renamed to ``*.bad`` (kept for a human, never
        retried) so that one corrupt file cannot stop every later start.
        """
        records, bad = [], []
        for path in sorted(self.folder.glob("*.json")):
            try:
                records.append(SessionRecord.from_json(json.loads(path.read_text())))
            except (OSError, ValueError, TypeError) as exc:
                bad.append(f"{path.name}: {exc}")
                try:
                    path.rename(path.with_suffix(".bad"))
                except OSError:
                    pass
        return records, bad
