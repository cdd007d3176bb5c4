"""Retention: which old files to delete, and the policy that says so.

The decision is pure (:func:`plan`: rows in, victims out, no I/O), so it is
tested with fabricated rows; the worker feeds it rows from the index, oldest
first, and carries the deletions out.

Rules (every limit present in the policy applies; the policy type names the
limit that must be present and says whether enforcement is automatic):

* ``enabled: false``: nothing is ever deleted, not even by ``cleanup_old_files``.
* ``age``: recordings and snapshots older than ``max_age_days`` (by mtime).
* ``size``: the oldest recordings until the recordings total is at most
  ``max_size_gb`` (GB = 10**9 bytes, as disk vendors and ``df -H`` count).
* free-space floor (whenever enabled): while the filesystem has less than
  ``storage.min_free_bytes`` free, the oldest finished recordings go.
* ``manual``: the same limits, applied only when ``cleanup_old_files`` is called.
* A file being recorded is never a victim, whatever it weighs.

The policy lives in ``state_dir/files/retention.json`` (written atomically),
so every file worker process and every restart sees the same one. One
process at a time carries out retention, serialised by :class:`FileLock`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GB = 10**9
DAY = 86400.0


@dataclass(frozen=True)
class Policy:
    policy_type: str = "manual"
    enabled: bool = False
    max_age_days: float | None = None
    max_size_gb: float | None = None

    @property
    def automatic(self) -> bool:
        return self.enabled and self.policy_type in ("age", "size")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        return cls(
            policy_type=str(data.get("policy_type", "manual")),
            enabled=bool(data.get("enabled", False)),
            max_age_days=data.get("max_age_days"),
            max_size_gb=data.get("max_size_gb"),
        )


@dataclass(frozen=True)
class Candidate:
    """One file as retention sees it."""

    kind: str
    filename: str
    size: int
    mtime: float
    recording: bool = False


@dataclass(frozen=True)
class Victim:
    kind: str
    filename: str
    size: int
    reason: str  # "age" | "size" | "free_space"


def plan(
    oldest_first: Iterable[Candidate],
    policy: Policy,
    *,
    now: float,
    recordings_bytes: int = 0,
    free_bytes: int | None = None,
    min_free_bytes: int = 0,
) -> list[Victim]:
    """The files to delete, in deletion order; consumes the input only as far as needed.

    ``oldest_first`` holds the files of one kind; the size limit and the
    free-space floor only ever pick recordings. ``recordings_bytes`` is the
    current total of recordings (including files being recorded: they take
    space even though they cannot go), ``free_bytes`` the filesystem's free
    space (``None``: unknown, no floor).
    """
    if not policy.enabled:
        return []
    cutoff = now - policy.max_age_days * DAY if policy.max_age_days is not None else None
    max_bytes = policy.max_size_gb * GB if policy.max_size_gb is not None else None
    floor = free_bytes is not None and min_free_bytes > 0
    victims: list[Victim] = []
    freed = 0
    for file in oldest_first:
        is_recording_kind = file.kind == "recording"
        too_old = cutoff is not None and file.mtime < cutoff
        over_size = is_recording_kind and max_bytes is not None and recordings_bytes - freed > max_bytes
        short = is_recording_kind and floor and free_bytes + freed < min_free_bytes
        if not (too_old or over_size or short):
            # Rows come oldest first: no later row is older; the size and
            # floor conditions only depend on what was freed, which stays put.
            break
        if file.recording:
            continue
        reason = "age" if too_old else "size" if over_size else "free_space"
        victims.append(Victim(file.kind, file.filename, file.size, reason))
        freed += file.size
    return victims


# --- persistence ------------------------------------------------------------------


class PolicyStore:
    """The policy file, re-read when another process changed it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._key: tuple[int, int] | None = None
        self._policy = Policy()
        self._lock = threading.Lock()
        #: Unix time the file was last read or written here (None: never): the newest wins across workers.
        self.read_at: float | None = None

    def load(self) -> Policy:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            with self._lock:
                self._key, self._policy, self.read_at = None, Policy(), time.time()
            return self._policy
        key = (st.st_ino, st.st_mtime_ns)
        with self._lock:
            if key == self._key:
                self.read_at = time.time()
                return self._policy
            try:
                policy = Policy.from_dict(json.loads(self.path.read_text()))
            except (OSError, ValueError, TypeError):
                # Unreadable: keep the last good policy; with none, the safe default (disabled).
                return self._policy
            self._key, self._policy, self.read_at = key, policy, time.time()
            return policy

    def current(self) -> dict[str, Any] | None:
        """The policy last loaded or saved here with ``read_at``, without touching the disk (for stats)."""
        if self.read_at is None:
            return None
        return {**self._policy.to_dict(), "read_at": self.read_at}

    def save(self, policy: Policy) -> Policy:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {**policy.to_dict(), "updated_at": time.time()}
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(temp, "w") as handle:
            json.dump(document, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.path)
        with self._lock:
            self._key, self._policy, self.read_at = None, policy, time.time()  # re-read at the next load
        return policy


class FileLock:
    """An exclusive ``flock`` on a file; released by the kernel if the process dies.

    ``flock`` locks belong to the open file description, so two holders in
    one process conflict just like two processes do.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, timeout: float = 0.0, poll: float = 0.05) -> bool:
        """Take the lock, waiting at most ``timeout`` seconds (blocking: a thread)."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                return True
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
            if time.monotonic() >= deadline:
                os.close(fd)
                return False
            time.sleep(poll)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None
