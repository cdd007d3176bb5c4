"""Who may download: the hook the download server asks before serving a file.

The contract: ``GET /files/...`` needs the viewer role; no credentials is
401, a bad one 403. Credentials arrive as ``Authorization: Bearer <jwt>`` or
``X-API-Key: <key>``. The security work fills in :func:`make_authorizer`;
until then every request is allowed.

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


def make_authorizer(config) -> Authorizer:
    """The authorizer for this configuration (placeholder: allows everything)."""
    return allow_all
