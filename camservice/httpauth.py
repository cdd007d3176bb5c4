"""The one credential check of every HTTP endpoint (downloads, /metrics, previews).

Rules (``shared/API.md``, "Authentication and roles" and "Files"):
``Authorization: Bearer <jwt|key>`` or ``X-API-Key: <key>``; no credentials
401, bad ones 403, a role below the endpoint's 403. Downloads also accept a
signed link (:class:`LinkSigner`) instead of credentials.

Every failure counts towards the address's
:class:`~camservice.ratelimit.AuthFailureThrottle`, as on the WebSocket, and
a blocked address gets 429 with ``Retry-After`` before any HMAC or hash is
computed: no HTTP endpoint is a side door for guessing keys. The throttle
lives in the process that checks (each gateway and each file worker has its
own); an address is slowed down in every one of them.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import parse_qs, quote

from .errors import RpcError
from .methods import role_allows
from .ratelimit import AuthFailureThrottle

if TYPE_CHECKING:
    from .auth import Authenticator

#: Longest a signed link may live (the contract's ``expires_in`` bound).
MAX_LINK_SECONDS = 86400


class Denial(NamedTuple):
    """Why a request may not go on: the HTTP status, a short text and extra headers."""

    status: int
    reason: str
    headers: dict[str, str]


class LinkSigner:
    """HMAC-SHA256 over a URL path and an expiry time, keyed from the service secret.

    The key is derived (HMAC of the secret with a fixed label), so a link's
    signature says nothing usable about the JWT key. Links look like
    ``/files/recordings/x.mp4?expires=1767225600&sig=<64 hex>``.
    """

    def __init__(self, secret: str):
        self._key = hmac.new(secret.encode(), b"camservice download link v1", hashlib.sha256).digest()

    def _mac(self, path: str, expires: int) -> str:
        return hmac.new(self._key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def sign(self, path: str, expires: int) -> str:
        """The query string (without ``?``) that makes ``path`` downloadable until ``expires`` (Unix time)."""
        return f"expires={expires}&sig={self._mac(path, expires)}"

    def verify(self, path: str, query: str, now: float) -> bool | None:
        """None when ``query`` carries no signature, else whether it is valid and unexpired for ``path``.

        ``path`` is the request's path as sent (still percent-encoded), the
        same string :meth:`sign` was given, so no decoding can make two
        paths share a signature.
        """
        fields = parse_qs(query, keep_blank_values=True, max_num_fields=8) if query else {}
        if "sig" not in fields and "expires" not in fields:
            return None
        expires, sig = fields.get("expires", [""]), fields.get("sig", [""])
        if len(expires) != 1 or len(sig) != 1 or not expires[0].isdigit() or len(expires[0]) > 12:
            return False
        stamp = int(expires[0])
        if stamp < now or stamp > now + MAX_LINK_SECONDS + 60:
            return False
        return hmac.compare_digest(sig[0], self._mac(path, stamp))


def link_path(folder: str, filename: str) -> str:
    """The path a signed link signs: ``/files/<folder>/<percent-encoded name>``."""
    return f"/files/{folder}/{quote(filename)}"


class HttpGuard:
    """Checks one HTTP request's credentials; see the module docstring."""

    def __init__(self, authenticator: Authenticator, throttle: AuthFailureThrottle, signer: LinkSigner | None = None):
        self.authenticator = authenticator
        self.throttle = throttle
        self.signer = signer

    def check(
        self,
        peer: str,
        headers: Mapping[str, str],
        role: str,
        *,
        path: str | None = None,
        query: str = "",
        now: float | None = None,
    ) -> Denial | None:
        """None when the request may go on, else the answer to give.

        ``path`` (raw request path) enables signed links for this endpoint:
        a link valid for exactly that path stands in for viewer credentials.
        """
        now = time.time() if now is None else now
        wait = self.throttle.blocked(peer, now)
        if wait:
            return Denial(429, "too many failed authentications", {"Retry-After": str(math.ceil(wait))})
        if path is not None and self.signer is not None:
            signed = self.signer.verify(path, query, now)
            if signed is True:
                return None
            if signed is False:
                self.throttle.record_failure(peer, now)
                return Denial(403, "invalid or expired link", {})
        try:
            identity = self.authenticator.authenticate_http(headers)
        except RpcError:
            self.throttle.record_failure(peer, now)
            return Denial(403, "invalid credentials", {})
        if identity is None:
            return Denial(401, f"{role} credentials required", {"WWW-Authenticate": 'Bearer realm="camservice"'})
        self.throttle.record_success(peer)
        if not role_allows(identity.role, role):
            return Denial(403, f"{role} role required", {})
        return None
