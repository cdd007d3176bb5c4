"""Plain HTTP on the WebSocket port: health checks, metrics, download redirects.

Each function returns ``(status, content_type, body, extra_headers)`` and
does no I/O, so the routing is tested without a server. Downloads are not
served here: the gateway's event loop must never push gigabytes, so
``/files/...`` is redirected (307, same method, same credentials) to the file
workers' HTTP server, which streams with ``sendfile`` in its own process.
"""

from __future__ import annotations

import json
from typing import Any, Callable
from urllib.parse import urlsplit

from camservice.timestamps import utc_iso

from .core import RequestPipeline

HttpResponse = tuple[int, str, bytes, dict[str, str]]

JSON = "application/json"


def _json(status: int, body: dict[str, Any]) -> HttpResponse:
    return status, JSON, json.dumps(body).encode(), {}


def health(gateway: RequestPipeline, which: str) -> HttpResponse:
    """``/health/{live,ready,system,cameras,mediamtx}``: 200 healthy/degraded, 503 otherwise."""
    now = utc_iso()
    if which == "live":
        return _json(200, {"status": "healthy", "timestamp": now, "details": {"process": "gateway"}})
    if which == "ready":
        ready = gateway.ready()
        return _json(
            200 if ready else 503,
            {"status": "healthy" if ready else "unhealthy", "timestamp": now, "components": gateway.components()},
        )
    if which == "system":
        status = gateway.status()
        code = 200 if status["status"] in ("healthy", "degraded") else 503
        return _json(code, {"status": status["status"], "timestamp": now, "components": status["components"]})
    if which == "cameras":
        listing = gateway.cameras.api_list()
        loaded = gateway.cameras.source is not None
        state = "healthy" if loaded else "unhealthy"
        if loaded and listing["total"] and listing["connected"] < listing["total"]:
            state = "degraded"
        return _json(
            200 if loaded else 503,
            {
                "status": state,
                "timestamp": now,
                "details": {
                    "total": listing["total"],
                    "connected": listing["connected"],
                    "cameras": {c["id"]: c["status"] for c in listing["cameras"]},
                },
            },
        )
    if which == "mediamtx":
        media = dict(gateway.media_status)
        backend = gateway.config.media.backend
        if backend != "mediamtx":
            return _json(
                200, {"status": "healthy", "timestamp": now, "details": {"backend": backend, "mediamtx": "not used"}}
            )
        up = media.get("state") == "running"
        return _json(
            200 if up else 503,
            {
                "status": "healthy" if up else "unhealthy",
                "timestamp": now,
                "details": {"backend": backend, "state": media.get("state", "unknown")},
            },
        )
    return _json(404, {"error": "unknown health check"})


def _without_port(host: str) -> str:
    """``example:8002`` -> ``example``; ``[::1]:8002`` and ``[::1]`` -> ``[::1]``."""
    if host.startswith("["):
        return host[: host.find("]") + 1] or host
    return host.rsplit(":", 1)[0]


def route(
    gateway: RequestPipeline,
    path: str,
    host_header: str | None,
    scheme: str,
    metrics: Callable[[], tuple[bytes, str]] | None,
) -> HttpResponse | None:
    """The response for a plain HTTP request, or None to go on with the WebSocket handshake."""
    target = urlsplit(path)
    if target.path == "/ws":
        return None
    if target.path.startswith("/health/"):
        return health(gateway, target.path[len("/health/") :])
    if target.path == "/metrics" and metrics is not None:
        body, content_type = metrics()
        return 200, content_type, body, {}
    if target.path.startswith("/files/"):
        host = _without_port(host_header) if host_header else gateway.config.public_host
        location = f"{scheme}://{host}:{gateway.config.files.http_port}{path}"
        return 307, "text/plain", b"", {"Location": location}
    return _json(404, {"error": "not found", "endpoints": ["/ws", "/health/live", "/health/ready", "/metrics"]})
