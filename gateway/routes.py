"""The gateway's HTTP route table: (method, path pattern) -> handler, and the request/response shapes.

Anyone serving plain HTTP on the API port registers here
(:meth:`RouteTable.add`): health checks, ``/metrics``, downloads, the web
console. Patterns are literal paths with ``{name}`` placeholders, each
matching one non-empty path segment (``/files/{folder}/{name}``), or, as
``{name*}`` at the end, the rest of the path (``/files/{path*}``); the
matched values arrive, still percent-encoded, in :attr:`HttpRequest.params`.

A handler takes an :class:`HttpRequest` and returns an :class:`HttpResponse`,
an awaitable of one, or :data:`HANDED_OFF` when it took the connection
itself (downloads passed to a file worker). No I/O happens here.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

#: A handler's answer meaning "the connection is no longer the gateway's".
HANDED_OFF = object()


@dataclass
class HttpRequest:
    method: str
    #: The request target as sent (path and query, percent-encoded).
    target: str
    #: Header names lower-cased; repeated headers joined with ", " (RFC 9110 5.3).
    headers: Mapping[str, str]
    peer: str = "?"
    scheme: str = "http"
    #: Pattern placeholders, still percent-encoded.
    params: dict[str, str] = field(default_factory=dict)
    #: Everything read from the socket so far: the head and any bytes after it (pipelined requests).
    raw: bytes = b""
    #: The transport-level connection (gateway.connection.Connection), for handlers that take it over.
    connection: Any = None

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> str:
        return urlsplit(self.target).query


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    #: The whole body, or chunks produced asynchronously (streamed with backpressure).
    body: bytes | AsyncIterator[bytes] = b""

    @classmethod
    def text(cls, status: int, text: str, headers: dict[str, str] | None = None) -> HttpResponse:
        return cls(status, {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}, text.encode())


Handler = Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse] | object]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\*?)\}")


def _compile(pattern: str) -> re.Pattern:
    if not pattern.startswith("/"):
        raise ValueError(f"route pattern must start with '/': {pattern!r}")
    regex, position = "", 0
    for match in _PLACEHOLDER.finditer(pattern):
        if match.group(2) and match.end() != len(pattern):
            raise ValueError(f"{{{match.group(1)}*}} must end the pattern: {pattern!r}")
        matches = ".*" if match.group(2) else "[^/]+"
        regex += re.escape(pattern[position : match.start()]) + f"(?P<{match.group(1)}>{matches})"
        position = match.end()
    return re.compile(regex + re.escape(pattern[position:]))


@dataclass
class Route:
    methods: frozenset[str]
    pattern: str
    regex: re.Pattern
    handler: Handler


class RouteTable:
    """Ordered routes; the first pattern matching the path decides (then the method)."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, methods: str | tuple[str, ...], pattern: str, handler: Handler) -> None:
        """Serve ``pattern`` for ``methods`` ("GET" or ("GET", "HEAD")) with ``handler``.

        Registering the same method and pattern twice is an error: two
        owners of one URL would be a silent bug.
        """
        wanted = frozenset((methods,) if isinstance(methods, str) else methods)
        for route in self.routes:
            if route.pattern == pattern and route.methods & wanted:
                raise ValueError(f"route {sorted(route.methods & wanted)} {pattern} is already registered")
        self.routes.append(Route(wanted, pattern, _compile(pattern), handler))

    def match(self, method: str, path: str) -> tuple[Handler | None, dict[str, str], frozenset[str]]:
        """``(handler, params, allowed)``: handler None with ``allowed`` empty is 404, else 405."""
        allowed: set[str] = set()
        for route in self.routes:
            found = route.regex.fullmatch(path)
            if found is None:
                continue
            if method in route.methods:
                return route.handler, found.groupdict(), frozenset()
            allowed |= route.methods
        return None, {}, frozenset(allowed)

    def paths(self) -> list[str]:
        return list(dict.fromkeys(route.pattern for route in self.routes))
