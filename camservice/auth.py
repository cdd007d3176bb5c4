"""Authentication: JWTs, API keys, and the identity bound to a connection.

Two kinds of credential are accepted (shared/API.md, "Authentication and roles"):

* a JWT signed with HS256 using the service secret, carrying ``sub``,
  ``role`` and ``exp`` (all required) and optionally ``iat``/``nbf``; at
  most :data:`LEEWAY` seconds of clock skew are tolerated;
* an API key ``csk_<43 base64url characters>`` (256 random bits), created
  with ``camservice keys create`` and stored only as its SHA-256 hash in
  ``state_dir/api_keys.json``.

Several gateway processes run at once, so everything shared lives in files
in ``runtime.state_dir``: the generated secret (``jwt_secret``) and the key
store. Every process keeps its own in-memory copy of the key store and
re-reads the file when it changes, so a revocation reaches every gateway
within about :data:`KeyStore.REFRESH_INTERVAL` seconds.

Nothing here logs or returns a credential: error data carries a fixed
``reason`` string, never text taken from the token.
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
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from . import log
from .config import Config, ConfigError
from .errors import AUTH_REQUIRED, RpcError
from .methods import ROLES, permissions
from .timestamps import utc_iso

#: Seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat`` (the contract allows at most 1).
LEEWAY = 1.0
ALGORITHM = "HS256"
#: RFC 7518 section 3.2: an HS256 key MUST be at least as long as the hash output.
MIN_SECRET_BYTES = 32
#: Longest credential looked at; anything longer is refused before parsing.
MAX_TOKEN_CHARS = 8192
#: 9999-12-31T23:59:59Z: later expiry times cannot be written as ISO 8601 timestamps.
MAX_TIMESTAMP = 253402300799

SECRET_FILE = "jwt_secret"
KEYS_FILE = "api_keys.json"
API_KEY_PREFIX = "csk_"
_API_KEY = re.compile(r"csk_[A-Za-z0-9_-]{43}")
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_log = log.get(__name__)


def _fail(reason: str) -> RpcError:
    return RpcError(AUTH_REQUIRED, data={"reason": reason})


# --- the JWT secret ---------------------------------------------------------------


def load_or_create_secret(config: Config) -> str:
    """The HS256 secret: ``security.jwt_secret``, else ``state_dir/jwt_secret``.

    The file is generated on first use (384 random bits, mode 0600). Several
    processes may start at once, so it is written completely under a private
    temporary name and then hard-linked into place: ``link`` fails with
    EEXIST for every process but the first, and no reader can ever see a
    partly written file. Everyone then reads the one that won.

    Raises :class:`ConfigError` for a configured secret shorter than
    :data:`MIN_SECRET_BYTES` or an unreadable/empty secret file.
    """
    configured = config.security.jwt_secret
    if configured:
        if len(configured.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"security.jwt_secret: must be at least {MIN_SECRET_BYTES} bytes for HS256 "
                "(RFC 7518 section 3.2); generate one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        return configured
    state_dir = Path(config.runtime.state_dir)
    path = state_dir / SECRET_FILE
    if not path.exists():
        _create_secret_file(state_dir, path)
    try:
        secret = path.read_text().strip()
        if path.stat().st_mode & 0o077:
            _log.warning(
                "jwt_secret_file_not_private",
                path=str(path),
                hint="other users may read it: chmod 600 it and consider replacing the secret",
            )
    except OSError as exc:
        raise ConfigError(f"security.jwt_secret: cannot read {path}: {exc.strerror}") from None
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"security.jwt_secret: {path} holds no usable secret; delete it to generate a new one")
    return secret


def _create_secret_file(state_dir: Path, path: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = state_dir / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48) + "\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another process won the race
            os.link(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def issue_token(secret: str, role: str, subject: str, ttl_seconds: float, *, now: float | None = None) -> str:
    """A JWT for ``subject`` holding ``role``, valid ``ttl_seconds`` from ``now``."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; known: {', '.join(ROLES)}")
    if not subject:
        raise ValueError("subject must be a non-empty string")
    if not ttl_seconds > 0:
        raise ValueError("ttl_seconds must be greater than 0")
    issued = int(time.time() if now is None else now)
    claims = {"sub": subject, "role": role, "iat": issued, "exp": issued + int(math.ceil(ttl_seconds))}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


# --- identities -------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who a connection (or one call) authenticated as."""

    subject: str
    role: str
    expires_at: float | None  # seconds since the epoch; None: until revoked
    kind: str  # "jwt" or "api_key"
    key_name: str | None = None
    session_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: SHA-256 of the API key, so a key re-created under a revoked key's name
    #: (after the store file was deleted by hand) does not revive old sessions.
    key_hash: str | None = field(default=None, repr=False)

    def caller(self) -> dict[str, Any]:
        """The ``caller`` member of a forwarded request envelope."""
        return {"sub": self.subject, "role": self.role, "kind": self.kind}


def authenticate_result(identity: Identity) -> dict[str, Any]:
    """The result of the ``authenticate`` method."""
    return {
        "authenticated": True,
        "role": identity.role,
        "permissions": permissions(identity.role),
        "expires_at": None if identity.expires_at is None else utc_iso(identity.expires_at, "seconds"),
        "session_id": identity.session_id,
    }


# --- the API key store --------------------------------------------------------------


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


# --- the authenticator ------------------------------------------------------------------


class Authenticator:
    """Turns credentials into :class:`Identity` objects; one per gateway process.

    ``clock`` (wall time, for ``exp``) and ``monotonic`` (for the key store's
    re-read interval) are injectable so that tests drive time.
    """

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        keys: KeyStore | None = None,
    ):
        self._secret = load_or_create_secret(config)
        self._clock = clock
        self.keys = keys if keys is not None else KeyStore.for_config(config, monotonic=monotonic)

    def authenticate(self, token: str) -> Identity:
        """The identity a JWT or API key stands for, or RpcError(-32001, data.reason)."""
        if not isinstance(token, str) or not token:
            raise _fail("no credentials given")
        if len(token) > MAX_TOKEN_CHARS:
            raise _fail("credential too long")
        if token.startswith(API_KEY_PREFIX):
            return self._api_key(token)
        return self._jwt(token)

    def _api_key(self, token: str) -> Identity:
        if not _API_KEY.fullmatch(token):
            raise _fail("malformed API key")
        record = self.keys.lookup(token)
        if record is None:
            raise _fail("unknown or revoked API key")
        return Identity(
            subject=record.name,
            role=record.role,
            expires_at=None,
            kind="api_key",
            key_name=record.name,
            key_hash=record.sha256,
        )

    def _jwt(self, token: str) -> Identity:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                # Time claims are checked below against the injectable clock;
                # PyJWT still checks presence, the signature, aud and sub's type.
                options={
                    "require": ["sub", "role", "exp"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            raise _fail(f"token lacks the '{exc.claim}' claim") from None
        except jwt.InvalidAlgorithmError:
            raise _fail("token algorithm not allowed (HS256 only)") from None
        except jwt.InvalidSignatureError:
            raise _fail("invalid token signature") from None
        except jwt.DecodeError:
            raise _fail("malformed token") from None
        except jwt.InvalidTokenError:
            raise _fail("invalid token") from None
        now = self._clock()
        exp = _number_claim(claims, "exp")
        if exp > MAX_TIMESTAMP:
            raise _fail("token 'exp' is out of range")
        if exp <= now - LEEWAY:
            raise _fail("token expired")
        for name in ("nbf", "iat"):
            if name in claims and _number_claim(claims, name) > now + LEEWAY:
                raise _fail("token not yet valid")
        subject, role = claims["sub"], claims["role"]
        if not isinstance(subject, str) or not subject:
            raise _fail("token 'sub' must be a non-empty string")
        if role not in ROLES:
            raise _fail("token has an unknown role")
        return Identity(subject=subject, role=role, expires_at=float(exp), kind="jwt")

    def authenticate_http(self, headers: Mapping[str, str]) -> Identity | None:
        """The identity of an HTTP request, None without credentials.

        Accepts ``Authorization: Bearer <credential>`` or ``X-API-Key:
        <credential>`` (either may hold a JWT or an API key). Bad credentials,
        another auth scheme, or both headers at once raise RpcError(-32001):
        the caller answers 401 for None and 403 for an exception.
        """
        authorization = _header(headers, "authorization")
        api_key = _header(headers, "x-api-key")
        if authorization is None and api_key is None:
            return None
        if authorization is not None and api_key is not None:
            raise _fail("send either Authorization or X-API-Key, not both")
        if authorization is not None:
            scheme, _, credential = authorization.strip().partition(" ")
            if scheme.lower() != "bearer":
                raise _fail("unsupported authorization scheme (use Bearer)")
            return self.authenticate(credential.strip())
        assert api_key is not None  # the first check: one of the two headers is there
        return self.authenticate(api_key.strip())

    def still_valid(self, identity: Identity) -> bool:
        """False once the identity's token expired or its API key was revoked.

        Cheap enough for every request: a clock read, and for API keys a dict
        lookup plus a ``stat`` at most once per :data:`KeyStore.REFRESH_INTERVAL`.
        """
        if identity.expires_at is not None and identity.expires_at <= self._clock() - LEEWAY:
            return False
        if identity.kind == "api_key":
            return identity.key_name is not None and self.keys.active(identity.key_name, identity.key_hash)
        return True


def _number_claim(claims: Mapping[str, Any], name: str) -> float:
    value = claims[name]
    # bool is an int; NaN compares false with everything and would never expire.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(f"token '{name}' must be a number")
    return value


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that works on plain dicts as well as header classes."""
    try:
        value = headers.get(name)
        if value is None:
            for key, candidate in headers.items():
                if key.lower() == name:
                    return candidate
    except LookupError:  # websockets' Headers raises MultipleValuesError for a repeated header
        raise _fail(f"repeated {name} header") from None
    return value
