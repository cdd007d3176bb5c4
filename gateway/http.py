"""The gateway's own plain-HTTP endpoints on the API port: health checks.

:func:`register` puts them on the server's :class:`~camservice.gateway.routes.RouteTable`;
:func:`health` returns ``(status, content_type, body, extra_headers)`` and
does no I/O, so it is tested without a server.
"""

from __future__ import annotations

import json
from typing import Any

from camservice.cors import CorsPolicy
from camservice.timestamps import utc_iso

from .core import RequestPipeline
from .routes import HttpRequest, HttpResponse, RouteTable

#: ``(status, content_type, body, extra_headers)``.
Answer = tuple[int, str, bytes, dict[str, str]]

JSON = "application/json"


def _json(status: int, body: dict[str, Any]) -> Answer:
    return status, JSON, json.dumps(body).encode(), {}


def health(gateway: RequestPipeline, which: str) -> Answer:
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


def to_response(answer: Answer) -> HttpResponse:
    status, content_type, body, extra = answer
    return HttpResponse(status, {"Content-Type": content_type, **extra}, body)


def register(routes: RouteTable, gateway: RequestPipeline, cors: CorsPolicy) -> None:
    """The gateway's own endpoints: ``/health/*`` (public; CORS headers for allowed origins)."""

    def health_route(request: HttpRequest) -> HttpResponse:
        response = to_response(health(gateway, request.params["which"]))
        response.headers.update(cors.headers(request.headers))
        return response

    def preflight(request: HttpRequest) -> HttpResponse:
        if cors.is_preflight(request.method, request.headers):
            status, headers = cors.preflight(request.headers)
            return HttpResponse(status, headers)
        return HttpResponse(204, {"Allow": "GET, HEAD, OPTIONS"})

    routes.add(("GET", "HEAD"), "/health/{which}", health_route)
    routes.add("OPTIONS", "/health/{which}", preflight)


def not_found(routes: RouteTable) -> HttpResponse:
    return to_response(_json(404, {"error": "not found", "endpoints": ["/ws", *routes.paths()]}))
