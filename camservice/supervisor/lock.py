"""One supervisor per ``state_dir``: the ``flock`` on ``camservice.lock``, the pid file, the port check.

The lock is held for the life of the supervisor, across its re-execs too
(:mod:`camservice.supervisor.reexec` keeps the descriptor open through ``execve``).
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path


class AlreadyRunning(RuntimeError):
    pass


def acquire_lock(state_dir: Path) -> int:
    """Hold ``camservice.lock`` for the life of this process; raise if taken."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / "camservice.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = read_pid(state_dir)
        raise AlreadyRunning(f"camservice already runs on {state_dir} (pid {pid})") from None
    return fd


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on ``host:port``.

    Gateways bind with SO_REUSEPORT so that several of them share the port;
    the same option would let them silently share it with *another* instance
    (same user) as well, splitting its clients between two services. So the
    port must be bindable without the option before any gateway starts.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are fine
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def read_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / "camservice.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def lock_is_held(state_dir: Path) -> bool:
    try:
        fd = os.open(state_dir / "camservice.lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
