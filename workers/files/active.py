"""Which files the recording worker is writing right now.

The recording worker keeps ``state_dir/run/recording-active.json`` =
``{"files": {filename: {"camera_id", "device", "session_id", "started"}}}``
up to date by writing a temporary file and renaming it, so a reader sees
either the old or the new list, never half of one. That file, not the
``_file_update`` events, is the authority on "being recorded": an event can
be lost (worker restarting, slow subscriber), the file cannot be out of date
by more than one rename.

Reading it costs one ``stat`` when nothing changed (the parsed content is
cached by inode, size and mtime), so a delete can afford to check it.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


class ActiveFiles:
    def __init__(self, path: Path, log=None):
        self.path = Path(path)
        self._log = log
        self._lock = threading.Lock()  # retention runs in a thread, handlers in the loop
        self._key: tuple[int, int, int] | None = None
        self._files: dict[str, dict[str, Any]] | None = None

    def read(self) -> dict[str, dict[str, Any]] | None:
        """``{filename: info}`` of the files being recorded; ``None`` when the
        recording worker keeps no such file (then the index flags decide)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            with self._lock:
                self._key, self._files = None, None
            return None
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if key == self._key:
                return self._files
        try:
            with open(self.path, "rb") as handle:
                document = json.load(handle)
            files = document.get("files", {})
            if not isinstance(files, dict):
                raise ValueError("'files' is not an object")
            files = {str(name): (info if isinstance(info, dict) else {}) for name, info in files.items()}
        except FileNotFoundError:  # renamed away between stat and open: next call sees the new one
            return self._files
        except (OSError, ValueError) as exc:
            # Keep the previous answer rather than forget every active file:
            # forgetting would let a delete through mid-recording.
            if self._log is not None:
                self._log.warning("active_list_unreadable", path=str(self.path), error=str(exc))
            return self._files
        with self._lock:
            self._key, self._files = key, files
        return files

    def names(self) -> set[str] | None:
        files = self.read()
        return None if files is None else set(files)
