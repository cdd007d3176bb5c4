"""Handing an accepted HTTP connection to a file worker: the socket itself, over a Unix socket.

The gateway reads a download's request head, then passes the connection's
file descriptor (``SCM_RIGHTS``) together with every byte it has read from
it, so the file worker answers as if it had accepted the connection itself
and the file's bytes go from the page cache to the socket with ``sendfile``
in the worker: the gateway's event loop never touches them.

Transport: one ``SOCK_DGRAM`` Unix socket per file worker process, bound at
``state_dir/run/files-<index>.handoff``. A datagram is one whole hand-off
(no framing, no connection to keep), sent without blocking: a worker that
is gone (``ENOENT``, ``ECONNREFUSED``) or whose queue is full (``EAGAIN``)
is skipped for the next one, and when none takes it the caller answers 503.
The message is msgpack: ``{"raw": bytes, "peer": str, "scheme": str}``
(``peer`` for logs and the credential throttle, since a TLS connection
arrives as one end of a socketpair).
"""

from __future__ import annotations

import array
import errno
import os
import socket
import threading
import time
from pathlib import Path

import msgpack

#: Largest message: a request head (16 KiB at most) plus what a client pipelined behind it.
MAX_MESSAGE = 96 * 1024
SUFFIX = ".handoff"
#: Seconds a sender trusts its list of worker sockets before looking again.
RESCAN_SECONDS = 1.0
#: Each receiving thread's datagram buffer, reused: ``recvmsg(MAX_MESSAGE)``
#: allocates a MAX_MESSAGE bytes object per call (and a wake-up makes one call
#: more, to find the queue empty) only to shrink it to the datagram's size.
_buffers = threading.local()


def socket_path(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / f"files-{index}{SUFFIX}"


def pack(raw: bytes, peer: str, scheme: str) -> bytes:
    return msgpack.packb({"raw": bytes(raw), "peer": peer, "scheme": scheme})


def unpack(data: bytes | memoryview) -> tuple[bytes, str, str]:
    message = msgpack.unpackb(data)
    if not isinstance(message, dict):
        raise TypeError("hand-off message is not a map")
    raw, peer, scheme = message.get("raw"), message.get("peer"), message.get("scheme")
    if not isinstance(raw, bytes) or not isinstance(peer, str) or scheme not in ("http", "https"):
        raise ValueError("malformed hand-off message")
    return raw, peer, scheme


class Sender:
    """The gateway's end: spreads hand-offs over the file workers' sockets, round robin."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self._paths: list[str] = []
        self._listed = -RESCAN_SECONDS
        self._next = 0

    def _targets(self, rescan: bool) -> list[str]:
        now = time.monotonic()
        if rescan or now - self._listed >= RESCAN_SECONDS:
            try:
                names = sorted(p for p in os.listdir(self.run_dir) if p.endswith(SUFFIX))
            except OSError:
                names = []
            self._paths = [str(self.run_dir / name) for name in names]
            self._listed = now
        return self._paths

    def send(self, fd: int, message: bytes) -> bool:
        """Pass ``fd`` and ``message`` to one file worker; False when none took it."""
        if len(message) > MAX_MESSAGE:
            return False
        fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        for rescan in (False, True):
            paths = self._targets(rescan)
            for step in range(len(paths)):
                path = paths[(self._next + step) % len(paths)]
                try:
                    self.sock.sendmsg([message], fds, 0, path)
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN, errno.ENOBUFS):
                        continue
                    raise
                self._next = (self._next + step + 1) % len(paths)
                return True
        return False

    def close(self) -> None:
        self.sock.close()


def bind_receiver(path: Path) -> socket.socket:
    """The worker's end, bound at ``path`` (a stale socket file from a dead process is replaced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    sock.bind(str(path))
    return sock


def receive(sock: socket.socket) -> list[tuple[socket.socket, bytes, str, str]]:
    """Every hand-off waiting on ``sock``: ``(connection, raw bytes, peer, scheme)``.

    The connections are non-blocking sockets owned by the caller. A
    malformed or truncated message closes the descriptors that came with it.
    """
    received: list[tuple[socket.socket, bytes, str, str]] = []
    space = socket.CMSG_SPACE(4 * array.array("i").itemsize)
    try:
        buffer = _buffers.view
    except AttributeError:
        buffer = _buffers.view = memoryview(bytearray(MAX_MESSAGE))
    while True:
        try:
            size, ancillary, flags, _ = sock.recvmsg_into([buffer], space)
        except (BlockingIOError, InterruptedError):
            return received
        data = buffer[:size]
        fds = array.array("i")
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        try:
            if len(fds) != 1 or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise ValueError("a hand-off carries one descriptor and fits one datagram")
            raw, peer, scheme = unpack(data)
        except (ValueError, msgpack.UnpackException, TypeError):
            for fd in fds:
                os.close(fd)
            continue
        connection = socket.socket(fileno=fds[0])
        connection.setblocking(False)
        received.append((connection, raw, peer, scheme))
