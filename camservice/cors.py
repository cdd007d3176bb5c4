"""Cross-origin access to the HTTP endpoints (``server.cors_origins``), for web clients on other origins.

Only listed origins get CORS headers; with none configured (the default)
nothing changes and browsers keep their same-origin rule. ``"*"`` in the
list allows any origin (the response still names the caller's origin, so
credentials headers work). Pure functions of the request headers: the
gateway and the file workers answer identically.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

METHODS = "GET, HEAD, OPTIONS"
ALLOW_HEADERS = "Authorization, X-API-Key, Range, If-None-Match, If-Modified-Since, If-Range"
EXPOSE_HEADERS = "Content-Length, Content-Range, Content-Disposition, Accept-Ranges, ETag, Last-Modified"
#: Seconds a browser may cache a preflight answer.
MAX_AGE = "600"


class CorsPolicy:
    def __init__(self, origins: Iterable[str] = ()):
        self.origins = {origin.rstrip("/") for origin in origins}
        self.any = "*" in self.origins

    def allowed(self, origin: str | None) -> bool:
        return bool(origin) and origin != "null" and (self.any or origin in self.origins)

    def headers(self, request_headers: Mapping[str, str]) -> dict[str, str]:
        """Headers to add to an actual response (download, health check)."""
        if not self.origins:
            return {}
        origin = request_headers.get("origin")
        if origin is None or not self.allowed(origin):
            return {"Vary": "Origin"}
        return {
            "Access-Control-Allow-Origin": origin,
            "Vary": "Origin",
            "Access-Control-Expose-Headers": EXPOSE_HEADERS,
        }

    @staticmethod
    def is_preflight(method: str, request_headers: Mapping[str, str]) -> bool:
        return (
            method == "OPTIONS" and "origin" in request_headers and "access-control-request-method" in request_headers
        )

    def preflight(self, request_headers: Mapping[str, str]) -> tuple[int, dict[str, str]]:
        """The answer to ``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``.

        204 with the allowed methods and headers for a listed origin asking
        for GET or HEAD; 403 without any CORS header otherwise, so the
        browser refuses the actual request.
        """
        origin = request_headers.get("origin")
        wanted = request_headers.get("access-control-request-method", "").strip().upper()
        if origin is None or not self.allowed(origin) or wanted not in ("GET", "HEAD"):
            return 403, {"Vary": "Origin"}
        return 204, {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": MAX_AGE,
            "Vary": "Origin",
        }
