"""``recording-active.json``: which files the recording worker is writing right now.

The one definition of that file, for its writer (the recording worker) and
its readers (the file workers: retention never deletes such a file, a
delete by hand is ``-32005``)::

    {"files": {filename: {"camera_id", "device", "session_id", "started"}}}

at ``state_dir/run/recording-active.json`` (:func:`active_files_path`).

* Written with :func:`atomic_write_json` (temporary file, fsync, rename), so
  a reader sees the old or the new list, never half of one; the file, not the
  ``_file_update`` events, is the authority on "being recorded": an event can
  be lost (worker restarting, slow subscriber), the file cannot be out of
  date by more than one rename.
* The async writer methods (:meth:`ActiveFiles.add`, :meth:`~ActiveFiles.remove`,
  :meth:`~ActiveFiles.flush`) run the write in a thread (an fsync on an SD card
  can stall a loop) under a lock, and take their copy of the list inside the
  lock, so the last write on disk is always the newest state.
* :meth:`ActiveFiles.read` costs one ``stat`` when nothing changed (the
  parsed content is cached by inode, size and mtime), so a delete can afford
  to check it; thread-safe (retention runs in a thread).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

FILE_NAME = "recording-active.json"


def active_files_path(state_dir: Path) -> Path:
    return Path(state_dir) / "run" / FILE_NAME


def atomic_write_json(path: Path, document: Any) -> None:
    """Replace ``path`` with ``document`` so that readers see old or new, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as stream:
            json.dump(document, stream, separators=(",", ":"))
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


class ActiveFiles:
    """The list of files being recorded: written by one process, read by others."""

    def __init__(self, path: Path, log: Any = None):
        self.path = Path(path)
        self._log = log
        #: The writer's list (only the recording worker changes it).
        self.files: dict[str, dict[str, Any]] = {}
        self._write_lock: asyncio.Lock | None = None  # made in the writer's loop
        self._read_lock = threading.Lock()
        self._key: tuple[int, int, int] | None = None
        self._cached: dict[str, dict[str, Any]] | None = None

    # --- writing (the recording worker) ------------------------------------------------------

    async def add(self, filename: str, camera_id: str, device: str, session_id: str, started: str) -> None:
        self.files[filename] = {"camera_id": camera_id, "device": device, "session_id": session_id, "started": started}
        await self.flush()

    async def remove(self, *filenames: str) -> None:
        changed = False
        for name in filenames:
            changed |= self.files.pop(name, None) is not None
        if changed:
            await self.flush()

    async def clear(self) -> None:
        self.files.clear()
        await self.flush()

    async def flush(self) -> None:
        if self._write_lock is None:
            self._write_lock = asyncio.Lock()
        async with self._write_lock:
            document = {"files": dict(self.files)}
            await asyncio.to_thread(atomic_write_json, self.path, document)

    # --- reading (the file workers) ----------------------------------------------------------

    def read(self) -> dict[str, dict[str, Any]] | None:
        """``{filename: info}`` of the files being recorded; ``None`` when the
        recording worker keeps no such file (then the index flags decide)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            with self._read_lock:
                self._key, self._cached = None, None
            return None
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._read_lock:
            if key == self._key:
                return self._cached
        try:
            with open(self.path, "rb") as handle:
                document = json.load(handle)
            files = document.get("files", {})
            if not isinstance(files, dict):
                raise ValueError("'files' is not an object")
            files = {str(name): (info if isinstance(info, dict) else {}) for name, info in files.items()}
        except FileNotFoundError:  # renamed away between stat and open: next call sees the new one
            return self._cached
        except (OSError, ValueError) as exc:
            # Keep the previous answer rather than forget every active file:
            # forgetting would let a delete through mid-recording.
            if self._log is not None:
                self._log.warning("active_list_unreadable", path=str(self.path), error=str(exc))
            return self._cached
        with self._read_lock:
            self._key, self._cached = key, files
        return files

    def names(self) -> set[str] | None:
        files = self.read()
        return None if files is None else set(files)
