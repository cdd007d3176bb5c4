"""A small ctypes binding of Linux inotify: a non-blocking descriptor and its events.

Only what the simulator watcher needs: one descriptor (``inotify_init1``
with ``IN_NONBLOCK | IN_CLOEXEC``), watches on folders
(``inotify_add_watch``), and :meth:`Inotify.read` that parses whatever the
kernel has queued into :class:`InotifyEvent` records without blocking. The
caller puts :meth:`Inotify.fileno` on its event loop (``add_reader``), so no
thread waits on it.

Why not a package: the three libc calls and the event layout
(``struct inotify_event``: ``int wd; uint32 mask, cookie, len; char name[len]``)
fit in this file, and the kernel ABI has not changed since 2.6.13.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from dataclasses import dataclass

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000  # the kernel queue overflowed: events were lost
IN_IGNORED = 0x00008000  # the watch is gone (its folder was removed)
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_HEADER = struct.Struct("iIII")
_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        _libc = libc
    return _libc


def _check(result: int, what: str) -> int:
    if result < 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")
    return result


@dataclass(frozen=True)
class InotifyEvent:
    wd: int
    mask: int
    cookie: int
    name: str  # empty for events about the watched folder itself


def parse(buffer: bytes) -> list[InotifyEvent]:
    """The events packed in one ``read`` of an inotify descriptor (pure)."""
    events, offset = [], 0
    while offset + _HEADER.size <= len(buffer):
        wd, mask, cookie, length = _HEADER.unpack_from(buffer, offset)
        offset += _HEADER.size
        raw = buffer[offset : offset + length]
        offset += length
        events.append(InotifyEvent(wd, mask, cookie, os.fsdecode(raw.split(b"\0", 1)[0])))
    return events


class Inotify:
    """One inotify descriptor; ``OSError`` from the constructor when the kernel refuses one
    (``EMFILE``: ``fs.inotify.max_user_instances`` reached, or no inotify at all)."""

    def __init__(self) -> None:
        self.fd = _check(_lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")

    def fileno(self) -> int:
        return self.fd

    def add_watch(self, path: str | os.PathLike, mask: int) -> int:
        return _check(_lib().inotify_add_watch(self.fd, os.fsencode(path), mask), f"inotify_add_watch {path}")

    def read(self) -> list[InotifyEvent]:
        """Every queued event, without blocking; [] when none is queued."""
        events = []
        while True:
            try:
                buffer = os.read(self.fd, 65536)
            except BlockingIOError:
                return events
            if not buffer:
                return events
            events.extend(parse(buffer))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
