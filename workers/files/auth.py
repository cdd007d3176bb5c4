"""Who may download: the hook the download server asks before serving a file.

The contract: ``GET /files/...`` needs the viewer role; no credentials is
401, a bad one 403. Credentials arrive as ``Authorization: Bearer <jwt>`` or
``X-API-Key: <key>``.

An authorizer receives the request headers (names lower-cased, repeated
headers joined with ``", "``) and returns ``None`` to allow, or the HTTP
status to answer (401 or 403). It runs on the download server's own event
loop thread: it may be a coroutine function, but must not block for long
(verifying an HS256 JWT inline is fine; a network round trip should be
awaited with a timeout).
"""

from __future__ import annotations

from typing import Awaitable, Callable, Mapping, Union

Authorizer = Callable[[Mapping[str, str]], Union[int, None, Awaitable[Union[int, None]]]]


def allow_all(headers: Mapping[str, str]) -> int | None:
    return None


def viewer_authorizer(config, authenticator=None) -> Authorizer:
    """The contract's rule, built on :class:`camservice.auth.Authenticator`:
    no credentials 401, bad ones (or a role below viewer) 403.
    """
    from camservice.auth import Authenticator
    from camservice.errors import RpcError
    from camservice.methods import role_allows

    authn = authenticator if authenticator is not None else Authenticator(config)

    def authorize(headers: Mapping[str, str]) -> int | None:
        try:
            identity = authn.authenticate_http(headers)
        except RpcError:
            return 403
        if identity is None:
            return 401
        return None if role_allows(identity.role, "viewer") else 403

    return authorize


def make_authorizer(config) -> Authorizer:
    """The authorizer the download server uses: the contract's viewer rule."""
    return viewer_authorizer(config)
