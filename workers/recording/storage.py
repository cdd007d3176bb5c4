"""The storage folders as the recording worker sees them.

* the free-space floor (``storage.min_free_bytes``): -32007 below it;
* writability: a folder that is missing and cannot be made, read-only, or
  not writable is -32012 with a reason naming which folder and why, checked
  before a capture starts rather than read out of ffmpeg's output;
* what a failed ffmpeg said about its output file is read with
  :func:`camservice.storage_errors.from_ffmpeg` into the same errors;
* small blocking file helpers, run in threads by the callers.

Reasons name the folder by its role ("the recordings folder"), never by a
path, so they are safe to send to clients.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

from camservice import storage_errors
from camservice.storage_errors import no_space

from . import naming


def _free(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except FileNotFoundError:  # removed behind our back: it is about to be written to
        folder.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(folder).free


async def free_bytes(folder: Path) -> int:
    # statvfs on a hung network mount blocks: keep it off the loop.
    return await asyncio.to_thread(_free, folder)


async def ensure_space(folder: Path, min_free: int) -> None:
    """Raise -32007 when ``folder``'s file system is below the floor."""
    free = await free_bytes(folder)
    if free < min_free:
        raise no_space(free, min_free)


def check_writable(folder: Path, label: str) -> None:
    """Make ``folder`` if needed and prove a file can be created in it (blocking).

    Raises -32012 (missing and cannot be made, read-only, not writable) or
    -32007 (no space even for an empty file).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise storage_errors.from_os_error(exc, label) from None


async def ensure_writable(folder: Path, label: str) -> None:
    await asyncio.to_thread(check_writable, folder, label)


# --- small blocking helpers (run in threads) ----------------------------------------------


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def name_taken(folder: Path, filename: str) -> bool:
    """A recording name is refused if it, or a segment derived from it, exists."""
    if (folder / filename).exists():
        return True
    try:
        with os.scandir(folder) as entries:
            return any(naming.is_later_segment(filename, entry.name) for entry in entries)
    except FileNotFoundError:
        return False
