"""Authentication: who a credential stands for, and the identity bound to a connection.

Two kinds of credential are accepted (shared/API.md, "Authentication and roles"):
a JWT (:mod:`camservice.tokens`: the HS256 secret, issuing and checking) and an
API key (:mod:`camservice.apikeys`: the key format and the store shared by every
process). :class:`Authenticator` tells them apart, reads them from HTTP headers,
and says when an identity stops being valid (its token expired, its key revoked).

Nothing here logs or returns a credential: error data carries a fixed
``reason`` string, never text taken from the token.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import apikeys, tokens
from .config import Config
from .errors import auth_failed
from .methods import permissions
from .timestamps import utc_iso

#: Longest credential looked at; anything longer is refused before parsing.
MAX_TOKEN_CHARS = 8192


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
        keys: apikeys.KeyStore | None = None,
    ):
        self._secret = tokens.load_or_create_secret(config)
        self._clock = clock
        self.keys = keys if keys is not None else apikeys.KeyStore.for_config(config, monotonic=monotonic)

    def authenticate(self, token: str) -> Identity:
        """The identity a JWT or API key stands for, or RpcError(-32001, data.reason)."""
        if not isinstance(token, str) or not token:
            raise auth_failed("no credentials given")
        if len(token) > MAX_TOKEN_CHARS:
            raise auth_failed("credential too long")
        if token.startswith(apikeys.API_KEY_PREFIX):
            return self._api_key(token)
        subject, role, exp = tokens.decode_token(token, self._secret, self._clock())
        return Identity(subject=subject, role=role, expires_at=exp, kind="jwt")

    def _api_key(self, token: str) -> Identity:
        if not apikeys.well_formed(token):
            raise auth_failed("malformed API key")
        record = self.keys.lookup(token)
        if record is None:
            raise auth_failed("unknown or revoked API key")
        return Identity(
            subject=record.name,
            role=record.role,
            expires_at=None,
            kind="api_key",
            key_name=record.name,
            key_hash=record.sha256,
        )

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
            raise auth_failed("send either Authorization or X-API-Key, not both")
        if authorization is not None:
            scheme, _, credential = authorization.strip().partition(" ")
            if scheme.lower() != "bearer":
                raise auth_failed("unsupported authorization scheme (use Bearer)")
            return self.authenticate(credential.strip())
        assert api_key is not None  # the first check: one of the two headers is there
        return self.authenticate(api_key.strip())

    def still_valid(self, identity: Identity) -> bool:
        """False once the identity's token expired or its API key was revoked.

        Cheap enough for every request: a clock read, and for API keys a dict
        lookup plus a ``stat`` at most once per :data:`~camservice.apikeys.KeyStore.REFRESH_INTERVAL`.
        """
        if identity.expires_at is not None and identity.expires_at <= self._clock() - tokens.LEEWAY:
            return False
        if identity.kind == "api_key":
            return identity.key_name is not None and self.keys.active(identity.key_name, identity.key_hash)
        return True


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that works on plain dicts as well as header classes."""
    try:
        value = headers.get(name)
        if value is None:
            for key, candidate in headers.items():
                if key.lower() == name:
                    return candidate
    except LookupError:  # websockets' Headers raises MultipleValuesError for a repeated header
        raise auth_failed(f"repeated {name} header") from None
    return value
