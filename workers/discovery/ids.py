"""Stable camera ids: ``camera0``, ``camera1``... persisted per stable key.

Every camera has a *stable key* that names the physical (or simulated)
device rather than its momentary ``/dev/videoN``:

* ``sim:N`` for the simulated camera ``sim:N``;
* ``by-id:...`` (USB serial number) or ``by-path:...`` (USB port) for V4L2
  cameras, see :func:`camservice.workers.discovery.v4l2.stable_keys`.

The first time a key is seen it gets the lowest ``cameraN`` that no key has
ever held, and the mapping is written to ``state_dir/cameras.json``. Real
and simulated cameras share one numbering, so their ids cannot collide; an
unplugged camera keeps its number reserved, so a replugged one (even after a
restart) gets its old id back. On a fresh state folder, simulated cameras
created at start are assigned first, in index order, so ``sim:N`` gets
``cameraN``.

The file is only rewritten when a new key appears. Writers take an
``flock`` on ``cameras.json.lock`` and merge with what is on disk, so even
two discovery processes would agree on every id.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from camservice.camera_ids import VERSION, lowest_free, parse


class IdStore:
    """The key -> id map of one state folder (blocking file I/O, small and rare)."""

    def __init__(self, path: str | os.PathLike, log=None):
        self.path = Path(path)
        self._log = log
        self._ids: dict[str, str] = {}
        self._lock = threading.Lock()  # scanners assign from their threads
        self._load()

    def _load(self) -> None:
        try:
            self._ids = parse(self.path.read_text())
        except FileNotFoundError:
            self._ids = {}
        except (OSError, ValueError) as exc:
            # Keep the evidence; ids restart from camera0 rather than refusing to run.
            backup = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            try:
                os.replace(self.path, backup)
            except OSError:
                backup = None
            self._warn("camera_ids_unreadable", error=str(exc), moved_to=str(backup) if backup else None)
            self._ids = {}

    def get(self, key: str) -> str | None:
        return self._ids.get(key)

    def key_of(self, camera_id: str) -> str | None:
        return next((key for key, value in self._ids.items() if value == camera_id), None)

    def all(self) -> dict[str, str]:
        return dict(self._ids)

    def assign(self, keys: Iterable[str]) -> dict[str, str]:
        """Ids for ``keys`` (in order), creating and persisting those not known yet.

        Blocking only when a key is new (a write and an fsync); thread-safe.
        """
        keys = list(dict.fromkeys(keys))
        ids = self._ids
        if all(key in ids for key in keys):
            return {key: ids[key] for key in keys}
        with self._lock:
            return self._assign_new(keys)

    def _assign_new(self, keys: list[str]) -> dict[str, str]:
        try:
            self._assign_locked(keys)
        except OSError as exc:
            # A read-only state folder: ids stay stable for this run only.
            self._warn("camera_ids_not_saved", error=str(exc), path=str(self.path))
            for key in keys:
                if key not in self._ids:
                    self._ids = {**self._ids, key: lowest_free(self._ids.values())}
        return {key: self._ids[key] for key in keys}

    def _assign_locked(self, keys: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)  # held for microseconds by any writer
            try:
                on_disk = parse(self.path.read_text())
            except (FileNotFoundError, ValueError):
                on_disk = {}
            merged = dict(on_disk)
            for key, camera_id in self._ids.items():
                if key not in merged and camera_id not in merged.values():
                    merged[key] = camera_id
            for key in keys:
                if key not in merged:
                    merged[key] = lowest_free(merged.values())
            self._ids = merged
            self._write(merged)
        finally:
            os.close(lock_fd)

    def _write(self, ids: dict[str, str]) -> None:
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(temporary, "w") as handle:
            json.dump({"version": VERSION, "ids": ids}, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())  # an id handed out must survive a power cut
        os.replace(temporary, self.path)

    def _warn(self, event: str, **fields) -> None:
        if self._log is not None:
            self._log.warning(event, **fields)
