"""The exporter: the latest figures of every process, as one gateway sees them, served on ``/metrics``."""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry

from ..routes import HttpRequest, HttpResponse
from .collector import ServiceCollector
from .local import LocalMetrics
from .storage import StorageProbe

#: Seconds after which another process's last report no longer counts.
STALE_AFTER = 30.0
#: JSON-RPC codes that mean the service failed (not the caller): these feed the error-rate alert.
SERVER_ERROR_CODES = (-32603, -32006, -32011)


def _fresh(report: dict[str, Any] | None, now: float) -> bool:
    return isinstance(report, dict) and now - report.get("time", 0.0) <= STALE_AFTER


class MetricsExporter:
    """The latest figures of every process as this gateway knows them, and ``GET /metrics``."""

    def __init__(self, server, storage: StorageProbe | None = None):
        self.server = server
        self.pipeline = server.pipeline
        self.config = server.config
        self.local = LocalMetrics()
        self.multi_gateway = self.config.gateway.processes > 1
        #: The report this gateway last published (what every other gateway renders for it).
        self.published: dict[str, Any] | None = None
        #: Latest ``_worker_stats`` data by process name, with ``"time"`` of arrival.
        self.workers: dict[str, dict[str, Any]] = {}
        self.storage = storage or StorageProbe(
            {"recordings": self.config.recordings_dir, "snapshots": self.config.snapshots_dir}
        )
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ServiceCollector(self))

    # --- inputs --------------------------------------------------------------------

    def gateway_report(self) -> dict[str, Any]:
        """This gateway's figures in the shape other gateways render (``_gateway_stats["metrics"]``)."""
        gateway, pool = self.pipeline, self.server.pool
        return {
            "time": time.time(),
            "pid": os.getpid(),
            "requests": [[method, code, count] for (method, code), count in gateway.stats.by_method.items()],
            "latency": {method: h.export() for method, h in self.local.latency.items()},
            "notifications": dict(self.local.notifications),
            "delivery": self.local.delivery.export(),
            "connections": len(gateway.sessions),
            "in_flight": len(pool.pending),
            "timeouts": dict(pool.timeouts),
            "queue_depth": pool.queue_depth(),
            "workers_alive": pool.alive(),
            "worker_losses": pool.worker_deaths,
        }

    def on_worker_stats(self, data: dict[str, Any]) -> None:
        name = data.get("name")
        if isinstance(name, str):
            self.workers[name] = {**data, "time": time.time()}

    # --- views used by the collector ------------------------------------------------------

    def gateway_views(self, now: float) -> dict[int, dict[str, Any]]:
        views: dict[int, dict[str, Any]] = {}
        for index, counters in list(self.pipeline.gateway_stats.items()):
            report = counters.get("metrics") if isinstance(counters, dict) else None
            if report is not None and index != self.pipeline.index and _fresh(report, now):
                views[index] = report
        if self.multi_gateway and self.published is not None:
            views[self.pipeline.index] = self.published
        else:
            views[self.pipeline.index] = self.gateway_report()
        return views

    def worker_views(self, now: float) -> list[dict[str, Any]]:
        return [data for data in self.workers.values() if _fresh(data, now)]

    def worker_stats(self, kind: str, now: float) -> dict[str, Any]:
        """The freshest ``stats`` of a worker of ``kind`` (kind-wide figures: any one will do)."""
        reports = [w for w in self.worker_views(now) if w.get("kind") == kind and isinstance(w.get("stats"), dict)]
        return max(reports, key=lambda w: w["time"])["stats"] if reports else {}

    def newest_retention(self, now: float) -> dict[str, Any] | None:
        """The retention policy most recently read or written by any file worker (only the
        leader re-reads the file on its own, another one knows what it saved)."""
        policies = [
            w["stats"]["retention"]
            for w in self.worker_views(now)
            if w.get("kind") == "files"
            and isinstance(w.get("stats"), dict)
            and isinstance(w["stats"].get("retention"), dict)
        ]
        return max(policies, key=lambda p: p.get("read_at") or 0.0) if policies else None

    # --- HTTP ------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def extend_stats(self, counters: dict[str, Any]) -> dict[str, Any]:
        """``GatewayServer.stats_sources``: this gateway's report goes out with its ``_gateway_stats``."""
        report = self.gateway_report()
        self.published = report
        return {"metrics": report}

    async def handle(self, request: HttpRequest) -> HttpResponse:
        """``GET /metrics``: public unless ``security.metrics_require_auth``, then admin only."""
        if self.config.security.metrics_require_auth:
            denied = self.server.guard.check(request.peer, request.headers, "admin")
            if denied is not None:
                return HttpResponse.text(denied.status, denied.reason + "\n", denied.headers)
        await self.storage.refresh()
        body, content_type = self.render()
        # Which gateway answered: several share the port and the kernel picks one.
        return HttpResponse(200, {"Content-Type": content_type, "X-Camservice-Gateway": str(self.pipeline.index)}, body)
