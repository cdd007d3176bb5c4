"""Who may download: the hook the download server asks before serving a file.

The contract: ``GET /files/...`` needs the viewer role; no credentials is
401, a bad one 403; a signed link (``get_download_link``) stands in for
credentials on exactly its path until it expires. The check is the one
every HTTP endpoint uses, :class:`camservice.httpauth.HttpGuard`, with its
failure throttle (the download port is no side door for guessing keys).

An authorizer is called as ``authorize(peer, headers, path, query)``
(header names lower-cased, repeated headers joined with ``", "``; ``path``
still percent-encoded) and returns None to allow or a
:class:`~camservice.httpauth.Denial`. It runs on the download server's own
event loop thread: it may be a coroutine function, but must not block for
long (verifying an HS256 JWT inline is fine).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from camservice.auth import Authenticator
from camservice.httpauth import Denial, HttpGuard, LinkSigner
from camservice.ratelimit import AuthFailureThrottle
from camservice.tokens import load_or_create_secret

Authorizer = Callable[[str, Mapping[str, str], str, str], Denial | None | Awaitable[Denial | None]]


def allow_all(peer: str, headers: Mapping[str, str], path: str, query: str) -> Denial | None:
    return None


def make_authorizer(config, authenticator=None) -> Authorizer:
    """The contract's viewer rule, signed links included, with the failure throttle."""
    guard = HttpGuard(
        authenticator if authenticator is not None else Authenticator(config),
        AuthFailureThrottle(config.security.auth_failures_per_minute),
        LinkSigner(load_or_create_secret(config)),
    )

    def authorize(peer: str, headers: Mapping[str, str], path: str, query: str) -> Denial | None:
        return guard.check(peer, headers, "viewer", path=path, query=query)

    return authorize
