"""The gateway's request pipeline and the methods it answers itself.

:meth:`RequestPipeline.handle` runs the checks of ``shared/API.md`` in its order —
method exists (-32601), authentication (-32001), role (-32003), rate limit
(-32002), parameters (-32602) — then either answers from the gateway's own
state (``ping``, ``authenticate``, camera list and status from the replica,
subscriptions, server info, metrics, status) or forwards the call to a
worker as a :class:`~camservice.gateway.calls.Call` through ``send_call``
(the worker pool's ``call``). It performs no I/O itself: the WebSocket layer
hands it calls and sends what it returns, so the whole pipeline is
unit-tested and benchmarked without a socket.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from typing import Any

import structlog

from camservice import __version__, jsonrpc
from camservice.auth import Authenticator, authenticate_result
from camservice.cameras import CameraTable
from camservice.errors import (
    AUTH_REQUIRED,
    INTERNAL_ERROR,
    METHOD_NOT_FOUND,
    PERMISSION_DENIED,
    RATE_LIMITED,
    RpcError,
    camera_not_found,
)
from camservice.methods import GATEWAY, METHODS, WORKER_KINDS, Method, role_allows
from camservice.ratelimit import AuthFailureThrottle, RateLimiter, TokenBucket

from .calls import Call, SendCall
from .session import Session
from .stats import RequestStats

log = structlog.get_logger("gateway")

#: reply(response) for calls answered later: called exactly once per PENDING call,
#: with None when the call was a notification.
Reply = Callable[[dict | None], None]

#: Returned by :meth:`RequestPipeline.handle` when the answer will come through ``reply``.
PENDING = object()

CAPABILITIES = [
    "camera_discovery",
    "hot_plug_events",
    "snapshots",
    "recordings",
    "segmented_recordings",
    "file_management",
    "retention",
    "jwt_auth",
    "api_keys",
    "event_subscriptions",
]


class RequestPipeline:
    """The checks every call goes through, and the state shared by every connection of one gateway process."""

    def __init__(self, config, send_call: SendCall, index: int = 0, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.index = index
        #: Hands a :class:`Call` to the worker pool.
        self.send_call = send_call
        self.clock = clock
        self.started = time.time()
        self.cameras = CameraTable()
        self.auth = Authenticator(config)
        self.identity_limits = RateLimiter(config.security.rate_limit, config.security.rate_burst)
        self.auth_failures = AuthFailureThrottle(config.security.auth_failures_per_minute)
        self.stats = RequestStats()
        self.sessions: set[Session] = set()
        self.request_ids = itertools.count(1)
        #: Latest process table from the supervisor (``_process_stats`` events).
        self.processes: list[dict[str, Any]] = []
        self.host_stats: dict[str, Any] = {}
        #: The supervisor's upgrade figures (canary, generations), from process_stats.
        self.upgrade: dict[str, Any] = {}
        #: Latest counters of every gateway process (``_gateway_stats`` events), by index.
        self.gateway_stats: dict[int, dict[str, Any]] = {}
        self.workers_alive: Callable[[], dict[str, int]] = lambda: {k: 0 for k in WORKER_KINDS}
        # ffmpeg is found at start or nothing works; MediaMTX reports itself (_media_status).
        self.media_status: dict[str, Any] = (
            {"state": "running", "backend": "ffmpeg"}
            if config.media.backend == "ffmpeg"
            else {"state": "unknown", "backend": "mediamtx"}
        )

    # --- sessions -------------------------------------------------------------------

    def open_session(self, peer: str, connection: Any = None) -> Session:
        session = Session(peer, connection)
        session.bucket = TokenBucket(self.config.security.rate_limit, self.config.security.rate_burst)
        self.sessions.add(session)
        return session

    def close_session(self, session: Session) -> None:
        self.sessions.discard(session)

    # --- the pipeline ------------------------------------------------------------------

    def handle(self, session: Session, call: jsonrpc.Call, reply: Reply) -> Any:
        """Process one call.

        Returns the response, None for a notification answered at once, or
        :data:`PENDING` when the call went to a worker and ``reply`` will be
        called (exactly once) with the response.
        """
        started = self.clock()
        method = METHODS.get(call.method)
        try:
            if method is None:
                raise RpcError(METHOD_NOT_FOUND, data={"method": call.method[:100]})
            identity = self._identify(session, call, method)
            now = self.clock()
            self._rate_limit(session, identity, now, method)
            params = method.validate(call.params)
            if method.target == GATEWAY:
                result = self._local(method.name, session, params, identity)
            else:
                self._forward(session, call, method, params, identity, reply, started)
                return PENDING
        except RpcError as exc:
            self.stats.record(call.method if method else "unknown", exc.code, self.clock() - started)
            if call.is_notification:
                return None
            return jsonrpc.error_response(call.id, exc)
        except Exception:
            log.exception("gateway_handler_failed", method=call.method)
            self.stats.record(call.method, INTERNAL_ERROR, self.clock() - started)
            return None if call.is_notification else jsonrpc.error_response(call.id, RpcError(INTERNAL_ERROR))
        self.stats.record(method.name, 0, self.clock() - started)
        return None if call.is_notification else jsonrpc.response(call.id, result)

    def _identify(self, session: Session, call: jsonrpc.Call, method: Method):
        """Authentication and role checks; returns the identity for this call."""
        identity = session.identity
        token = call.params.get("auth_token") if isinstance(call.params, dict) else None
        if token is not None and method.name != "authenticate":
            identity = self._authenticate(session, token)  # this call only
        if method.role is None:
            return identity
        if identity is None:
            raise RpcError(AUTH_REQUIRED, data={"reason": "authenticate first, or pass auth_token"})
        if not self.auth.still_valid(identity):
            if identity is session.identity:
                session.identity = None
            raise RpcError(AUTH_REQUIRED, data={"reason": "credentials expired or revoked"})
        if not role_allows(identity.role, method.role):
            raise RpcError(PERMISSION_DENIED, data={"required_role": method.role, "role": identity.role})
        return identity

    def _authenticate(self, session: Session, token: Any):
        now = time.time()
        wait = self.auth_failures.blocked(session.peer, now)
        if wait:
            raise RpcError(
                RATE_LIMITED, data={"reason": "too many failed authentications", "retry_after_ms": int(wait * 1000) + 1}
            )
        if not isinstance(token, str) or not token:
            raise RpcError(AUTH_REQUIRED, data={"reason": "auth_token must be a non-empty string"})
        try:
            identity = self.auth.authenticate(token)
        except RpcError:
            self.auth_failures.record_failure(session.peer, now)
            log.warning("auth_failed", peer=session.peer)  # never the token
            raise
        self.auth_failures.record_success(session.peer)
        return identity

    def _rate_limit(self, session: Session, identity, now: float, method: Method) -> None:
        if method.target != GATEWAY and session.in_flight >= self.config.server.max_in_flight:
            raise RpcError(RATE_LIMITED, data={"reason": "too many requests in flight", "retry_after_ms": 100})
        wait = session.bucket.take(now)
        if not wait and identity is not None:
            wait = self.identity_limits.take((identity.kind, identity.subject), now)
        if wait:
            raise RpcError(RATE_LIMITED, data={"retry_after_ms": int(wait * 1000) + 1})

    def _forward(
        self, session: Session, call: jsonrpc.Call, method: Method, params: dict, identity, reply: Reply, started: float
    ) -> None:
        request_id = f"g{self.index}-{next(self.request_ids)}"
        caller = identity.caller() if identity is not None else {}
        call_id = call.id
        notification = call.is_notification
        session.in_flight += 1

        def done(error: RpcError | None, result: Any) -> None:
            session.in_flight -= 1
            self.stats.record(method.name, error.code if error else 0, self.clock() - started)
            if notification:
                reply(None)
            elif error is not None:
                reply(jsonrpc.error_response(call_id, error))
            else:
                reply({"jsonrpc": "2.0", "result": result, "id": call_id})

        timeout = method.timeout or self.config.gateway.request_timeout
        self.send_call(Call(method.target, method.name, params, timeout, done, request_id, caller, method.idempotent))

    # --- methods answered by the gateway ------------------------------------------------

    def _local(self, name: str, session: Session, params: dict, identity) -> Any:
        if name == "ping":
            return "pong"
        if name == "get_camera_status":
            camera = self.cameras.find(params["device"])
            if camera is None:
                raise camera_not_found(params["device"])
            return jsonrpc.Raw(self.cameras.status_json(camera))
        if name == "get_camera_list":
            return jsonrpc.Raw(self.cameras.list_json())
        if name == "authenticate":
            identity = self._authenticate(session, params["auth_token"])
            session.identity = identity
            return authenticate_result(identity)
        if name == "subscribe_events":
            return {"subscribed": session.subscribe(params["topics"])}  # the sorted topics now held
        if name == "unsubscribe_events":
            return {"unsubscribed": session.unsubscribe(params["topics"])}
        if name == "get_server_info":
            return {
                "name": "camservice",
                "version": __version__,
                "capabilities": CAPABILITIES,
                "supported_formats": ["mp4", "mkv", "jpg", "png"],
                "max_cameras": self.config.cameras.max_cameras,
            }
        if name == "get_status":
            return self.status()
        if name == "get_metrics":
            return self.metrics()
        raise RpcError(METHOD_NOT_FOUND, data={"method": name})  # pragma: no cover - table and code agree

    # --- status and metrics ------------------------------------------------------------

    def components(self) -> dict[str, str]:
        alive = self.workers_alive()
        components = {"gateway": "running"}
        for kind in WORKER_KINDS:
            components[kind] = "running" if alive.get(kind) else "down"
        components["media_backend"] = self.media_status.get("state", "unknown")
        return components

    def status(self) -> dict[str, Any]:
        components = self.components()
        workers_down = [k for k in WORKER_KINDS if components[k] != "running"]
        if workers_down:
            # A role with no process serves nothing of its part of the API (issue 11 §5).
            overall = "unhealthy"
        elif workers_down or components["media_backend"] not in ("running", "unknown"):
            overall = "degraded"
        else:
            overall = "healthy"
        return {
            "status": overall,
            "uptime": round(time.time() - self.started, 3),
            "version": __version__,
            "components": components,
        }

    def own_counters(self) -> dict[str, Any]:
        return {
            "connections": len(self.sessions),
            "requests": self.stats.total,
            "errors": self.stats.errors,
            "latency_sum": self.stats.latency_sum,
            "pid": os.getpid(),
        }

    def metrics(self) -> dict[str, Any]:
        counters = dict(self.gateway_stats)
        counters[self.index] = self.own_counters()
        requests = sum(c["requests"] for c in counters.values())
        errors = sum(c["errors"] for c in counters.values())
        latency = sum(c["latency_sum"] for c in counters.values())
        return {
            "active_connections": sum(c["connections"] for c in counters.values()),
            "total_requests": requests,
            "average_response_time": round(latency / requests * 1000, 3) if requests else 0.0,
            "error_rate": round(errors / requests, 6) if requests else 0.0,
            "memory_usage": self.host_stats.get("memory_percent", 0.0),
            "cpu_usage": self.host_stats.get("cpu_percent", 0.0),
            "processes": [
                {
                    "name": p["name"],
                    "pid": p["pid"],
                    "cpu_percent": p["cpu_percent"],
                    "rss_bytes": p["rss_bytes"],
                    "restarts": p["restarts"],
                }
                for p in self.processes
            ],
        }

    def ready(self) -> bool:
        alive = self.workers_alive()
        return all(alive.get(kind) for kind in WORKER_KINDS) and self.cameras.source is not None
