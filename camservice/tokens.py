"""JWTs: the service's HS256 secret, issuing tokens and checking them.

A JWT is signed with HS256 using the service secret and carries ``sub``,
``role`` and ``exp`` (all required) and optionally ``iat``/``nbf``; at most
:data:`LEEWAY` seconds of clock skew are tolerated (shared/API.md,
"Authentication and roles"). The secret is ``security.jwt_secret``, else a
file generated once in ``runtime.state_dir`` and shared by every process.
Who holds a valid token is :class:`camservice.auth.Authenticator`'s business.

Nothing here logs or returns a credential: error data carries a fixed
``reason`` string, never text taken from the token.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt

from . import log
from .config import Config, ConfigError
from .errors import auth_failed
from .methods import ROLES

#: Seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat`` (the contract allows at most 1).
LEEWAY = 1.0
ALGORITHM = "HS256"
#: RFC 7518 section 3.2: an HS256 key MUST be at least as long as the hash output.
MIN_SECRET_BYTES = 32
#: 9999-12-31T23:59:59Z: later expiry times cannot be written as ISO 8601 timestamps.
MAX_TIMESTAMP = 253402300799

SECRET_FILE = "jwt_secret"

_log = log.get(__name__)


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


def decode_token(token: str, secret: str, now: float) -> tuple[str, str, float]:
    """``(subject, role, expiry)`` of a JWT valid at ``now``, or RpcError(-32001, data.reason).

    HS256 only; ``sub``, ``role`` and ``exp`` are required, and at most
    :data:`LEEWAY` seconds of clock skew are tolerated on ``exp``, ``nbf`` and ``iat``.
    """
    try:
        claims = jwt.decode(
            token,
            secret,
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
        raise auth_failed(f"token lacks the '{exc.claim}' claim") from None
    except jwt.InvalidAlgorithmError:
        raise auth_failed("token algorithm not allowed (HS256 only)") from None
    except jwt.InvalidSignatureError:
        raise auth_failed("invalid token signature") from None
    except jwt.DecodeError:
        raise auth_failed("malformed token") from None
    except jwt.InvalidTokenError:
        raise auth_failed("invalid token") from None
    exp = _number_claim(claims, "exp")
    if exp > MAX_TIMESTAMP:
        raise auth_failed("token 'exp' is out of range")
    if exp <= now - LEEWAY:
        raise auth_failed("token expired")
    for name in ("nbf", "iat"):
        if name in claims and _number_claim(claims, name) > now + LEEWAY:
            raise auth_failed("token not yet valid")
    subject, role = claims["sub"], claims["role"]
    if not isinstance(subject, str) or not subject:
        raise auth_failed("token 'sub' must be a non-empty string")
    if role not in ROLES:
        raise auth_failed("token has an unknown role")
    return subject, role, float(exp)


def _number_claim(claims: Mapping[str, Any], name: str) -> float:
    value = claims[name]
    # bool is an int; NaN compares false with everything and would never expire.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise auth_failed(f"token '{name}' must be a number")
    return value
