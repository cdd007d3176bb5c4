"""Storage failures in words a user can act on, as the contract's error codes.

One mapping from an ``OSError`` met while writing into (or deleting from)
a storage folder to the client's error, used by the recording worker
(starting a capture, a snapshot) and the file workers (deleting):

* no space: -32007, ``"no space left on device"``;
* missing and cannot be made, read-only, not writable: -32012, with a reason
  naming the folder by its role ("the recordings folder is on a read-only
  file system"), never by a path.

:func:`from_ffmpeg` reads the same causes out of what a failed ffmpeg wrote,
for the failures only ffmpeg sees (the disk filling up mid-write).
"""

from __future__ import annotations

import errno
import os

from .errors import STORAGE_FULL, RpcError, storage_error

_WHY = {
    errno.EROFS: "is on a read-only file system",
    errno.EACCES: "is not writable (permission denied)",
    errno.EPERM: "is not writable (operation not permitted)",
    errno.ENOENT: "is missing and cannot be created",
    errno.ENOTDIR: "is missing and cannot be created (a parent is not a folder)",
    errno.EEXIST: "is missing (a file is in its place)",
    errno.EDQUOT: "is over its disk quota",
}
#: Causes worth a storage error; anything else stays the caller's business.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, *_WHY})
#: ffmpeg's wording of the same causes (strerror texts). Only causes that can
#: only be about what ffmpeg writes: "Permission denied" could be the camera.
_FFMPEG = {
    "no space left on device": errno.ENOSPC,
    "read-only file system": errno.EROFS,
    "disk quota exceeded": errno.EDQUOT,
}


def no_space(free: int | None = None, min_free: int | None = None) -> RpcError:
    """-32007: the disk is full, or below the configured floor when ``free`` is given."""
    if free is None:
        return RpcError(STORAGE_FULL, data={"reason": "no space left on device"})
    return RpcError(
        STORAGE_FULL,
        data={"reason": f"only {free} bytes free, {min_free} required", "free_bytes": free, "min_free_bytes": min_free},
    )


def from_os_error(exc: OSError, label: str) -> RpcError:
    """The client's error for ``exc``, met while writing into the ``label`` folder ("recordings")."""
    if exc.errno == errno.ENOSPC:
        return no_space()
    why = _WHY.get(exc.errno or 0) or f"cannot be written ({exc.strerror or exc})"
    return storage_error(f"the {label} folder {why}")


def from_ffmpeg(text: str, label: str) -> RpcError | None:
    """The storage error an ffmpeg failure text shows, or None when it is not about storage."""
    lowered = text.lower()
    for words, code in _FFMPEG.items():
        if words in lowered:
            return from_os_error(OSError(code, os.strerror(code)), label)
    return None
