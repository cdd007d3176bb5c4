"""API keys: ``csk_<43 base64url characters>`` (256 random bits), and the store shared by every process.

Keys are created with ``camservice keys create`` and stored only as their
SHA-256 hash in ``state_dir/api_keys.json``. Every gateway process keeps its
own in-memory copy of the store and re-reads the file when it changes, so a
revocation reaches every gateway within about
:data:`KeyStore.REFRESH_INTERVAL` seconds.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import log
from .config import Config
from .methods import ROLES
from .timestamps import utc_iso

KEYS_FILE = "api_keys.json"
API_KEY_PREFIX = "csk_"
_API_KEY = re.compile(r"csk_[A-Za-z0-9_-]{43}")
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_log = log.get(__name__)


def well_formed(key: str) -> bool:
    """True for a string shaped like an API key (whether it exists is :meth:`KeyStore.lookup`'s question)."""
    return _API_KEY.fullmatch(key) is not None


class KeyStoreError(RuntimeError):
    """The key store file cannot be used (corrupt, unreadable) or a request on it is wrong."""


@dataclass(frozen=True)
class KeyRecord:
    name: str
    role: str
    created: str  # ISO 8601 Z
    revoked_at: str | None
    sha256: str = field(repr=False)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def public(self) -> dict[str, Any]:
        """What ``keys list`` shows: never the hash."""
        return {
            "name": self.name,
            "role": self.role,
            "created": self.created,
            "revoked": self.revoked,
            "revoked_at": self.revoked_at,
        }


def hash_key(key: str) -> str:
    """SHA-256 of an API key.

    A fast, unsalted hash is enough because the key is 256 random bits:
    nobody can search that space, however cheap each guess is. Slow KDFs
    (scrypt, PBKDF2) exist to protect low-entropy passwords; here they would
    only make every authentication cost tens of milliseconds (a denial-of-
    service lever) and, being salted, rule out finding a key by one dict
    lookup. Lookup by hash is also why timing does not matter: an attacker
    can learn at most a prefix of a hash, which does not reveal the key.
    """
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """API keys in ``state_dir/api_keys.json``, shared by every process.

    Writers (the CLI) take an exclusive ``flock`` on ``api_keys.json.lock``
    (the data file itself is replaced on each write, so it cannot carry the
    lock), read, modify, write a 0600 temporary file and ``rename`` it over
    the old one. Readers never lock: a rename is atomic, so they see the old
    or the new file, never a mix.

    Readers cache the file and re-read it when its identity (inode, mtime,
    ctime, size) changes. :meth:`lookup` checks that on every call (a new
    key must work at once); :meth:`active` at most every
    :data:`REFRESH_INTERVAL` seconds, which keeps the per-request check to a
    clock read and a dict lookup.
    """

    REFRESH_INTERVAL = 1.0

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        refresh_interval: float = REFRESH_INTERVAL,
    ):
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._monotonic = monotonic
        self._interval = refresh_interval
        self._checked_at = -math.inf
        self._stamp: tuple[int, ...] | None = None
        self._by_name: dict[str, KeyRecord] = {}
        self._by_hash: dict[str, KeyRecord] = {}

    @classmethod
    def for_config(cls, config: Config, **kwargs: Any) -> KeyStore:
        return cls(Path(config.runtime.state_dir) / KEYS_FILE, **kwargs)

    # reading (every process)

    def refresh(self, force: bool = False) -> None:
        """Re-read the file if it changed; without ``force``, look at most every interval."""
        now = self._monotonic()
        if not force and now - self._checked_at < self._interval:
            return
        self._checked_at = now
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._stamp is not None or self._by_name:
                self._install([], None)
            return
        if _stamp(st) == self._stamp:
            return
        try:
            with open(self.path, "rb") as src:
                stamp = _stamp(os.fstat(src.fileno()))
                records = _parse(src.read())
        except (OSError, KeyStoreError) as exc:
            # Fail closed: a store that cannot be read accepts no key. The stamp is
            # kept, so the file is only read again once someone fixes it.
            _log.error("api_key_store_unreadable", path=str(self.path), error=str(exc))
            self._install([], _stamp(st))
            return
        self._install(records, stamp)

    def _install(self, records: list[KeyRecord], stamp: tuple[int, ...] | None) -> None:
        self._by_name = {r.name: r for r in records}
        self._by_hash = {r.sha256: r for r in records}
        self._stamp = stamp

    def lookup(self, key: str) -> KeyRecord | None:
        """The active (not revoked) record of ``key``, or None."""
        self.refresh(force=True)
        record = self._by_hash.get(hash_key(key))
        return None if record is None or record.revoked else record

    def active(self, name: str, sha256: str | None = None) -> bool:
        """True while the key ``name`` (with that hash, when given) exists and is not revoked."""
        self.refresh()
        record = self._by_name.get(name)
        return record is not None and not record.revoked and (sha256 is None or record.sha256 == sha256)

    def list(self) -> list[dict[str, Any]]:
        """Every key, revoked ones included, oldest first."""
        self.refresh(force=True)
        return [r.public() for r in self._by_name.values()]

    # writing (the CLI)

    def create(self, role: str, name: str | None = None) -> tuple[str, str]:
        """Create a key; returns ``(name, key)``. The key is not stored and cannot be shown again.

        Names are unique for the life of the store, revoked keys included, so a
        name in a log always means one key. Without a name, ``<role>-<n>``.
        """
        if role not in ROLES:
            raise KeyStoreError(f"unknown role {role!r}; known: {', '.join(ROLES)}")
        if name is not None and not _KEY_NAME.fullmatch(name):
            raise KeyStoreError("a key name is 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit")
        key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        with self._locked() as records:
            taken = {r.name for r in records}
            if name is None:
                name = next(f"{role}-{n}" for n in range(1, len(taken) + 2) if f"{role}-{n}" not in taken)
            elif name in taken:
                raise KeyStoreError(f"an API key named '{name}' already exists (revoked keys keep their name)")
            records.append(KeyRecord(name, role, utc_iso(timespec="seconds"), None, hash_key(key)))
        return name, key

    def revoke(self, name: str) -> bool:
        """Revoke ``name``; False if it was already revoked. Unknown names raise KeyStoreError."""
        with self._locked() as records:
            for i, record in enumerate(records):
                if record.name == name:
                    if record.revoked:
                        return False
                    records[i] = KeyRecord(
                        record.name, record.role, record.created, utc_iso(timespec="seconds"), record.sha256
                    )
                    return True
        raise KeyStoreError(f"no API key named '{name}'")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[builtins.list[KeyRecord]]:  # ``list`` is a method here
        """Read-modify-write under the lock; the list is written back if the block succeeds."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                raw = None
            records = [] if raw is None else _parse(raw)  # corrupt: raise, never overwrite it
            before = list(records)
            yield records
            if records != before:
                self._write(records)
        finally:
            os.close(lock_fd)  # releases the flock
        self.refresh(force=True)

    def _write(self, records: builtins.list[KeyRecord]) -> None:
        document = {
            "version": 1,
            "keys": [
                {"name": r.name, "role": r.role, "created": r.created, "revoked_at": r.revoked_at, "sha256": r.sha256}
                for r in records
            ],
        }
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(document, out, indent=1)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    # Every write is a rename, so the inode changes even when two writes fall
    # into one mtime tick of a coarse-grained file system.
    return (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


def _parse(raw: bytes) -> list[KeyRecord]:
    try:
        document = json.loads(raw)
        records = [
            KeyRecord(k["name"], k["role"], k["created"], k.get("revoked_at"), k["sha256"]) for k in document["keys"]
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyStoreError(f"corrupt API key store: {type(exc).__name__}") from None
    for record in records:
        if record.role not in ROLES or not isinstance(record.sha256, str) or not isinstance(record.name, str):
            raise KeyStoreError(f"corrupt API key store: bad record '{record.name}'")
    return records
