"""Prometheus metrics of every process of the service, in one scrape of one gateway.

Design
------
Prometheus scrapes ``GET /metrics`` on the service port, and the kernel hands
the connection to whichever gateway process it picks (``SO_REUSEPORT``): that
one answer has to cover the supervisor, every gateway and every worker.

* **No multiprocess files.** prometheus_client's multiprocess mode keeps an
  mmap file per process and metric in a shared folder that must be wiped at
  the right moments, takes a lock and a label lookup per increment, and still
  knows nothing of the supervisor's psutil samples. Instead every process
  sends its numbers over the event bus it already has.
* **Hot path.** :class:`~camservice.gateway.stats.RequestStats` already counts requests
  by (method, code). :meth:`LocalMetrics.observe_request`, installed as its
  ``observer``, adds the latency histogram: one dict lookup, one ``bisect``
  into fixed bounds, two float/int additions on a plain list. Notifications
  are counted the same way through ``EventRelay.on_delivery``.
* **Other processes.** ``_process_stats`` (supervisor: CPU seconds, RSS,
  restarts, uptime, state of every process; host CPU, memory, load,
  network), ``_worker_stats`` (each worker's :meth:`Worker.stats`, shapes
  below, stored by a wrapper around ``EventRelay.dispatch``) and
  ``_gateway_stats`` (each gateway's counters, which :func:`attach` extends
  with a ``"metrics"`` member built by :meth:`MetricsExporter.gateway_report`).
* **Scrape.** :class:`ServiceCollector`, the only collector of a private
  registry, turns the latest of all that into metric families and
  ``generate_latest`` renders them. Disk usage of the storage folders is
  measured by :class:`StorageProbe` in a thread (a hung mount must never
  stall the event loop); a scrape waits for it briefly, else serves the
  previous figures.

Several gateways
----------------
Every gateway series carries a ``gateway`` label, so a restarted gateway
resets only its own counters. Two scrapes in a row may reach two different
gateways; if the second showed a counter lower than the first did, ``rate()``
would take it for a reset and report a spike. So with more than one gateway,
each one renders *every* gateway's figures, its own included, as last
published on the bus (every ``gateway.server.STATS_INTERVAL`` seconds): two
gateways then differ only while an event is in transit. The price is up to
two seconds of staleness; with one gateway the figures are live. A gateway
or worker not heard from for :data:`STALE_AFTER` seconds is left out.

Worker statistics (``Worker.stats()``)
--------------------------------------
Every key is optional: a key that is absent renders nothing. A histogram is
``{"bounds": [b1, ..., bn], "counts": [c1, ..., cn, c_inf], "sum": s}`` with
increasing upper bounds and *per-bucket* (not cumulative) counts, the last
for values above ``bn`` -- what :meth:`Histogram.export` produces.

* recording: ``{"active_recordings": int, "failed_recordings": int (since
  start), "snapshot_seconds": histogram (time to take a snapshot),
  "recording_seconds": histogram (length of each finished recording)}``
* files: ``{"recordings_bytes": int, "snapshots_bytes": int,
  "recordings_files": int, "snapshots_files": int}``
* discovery: ``{"hotplug_events": int (plugs and unplugs seen since start)}``

Every worker's ``in_flight`` (sent by the worker runtime) is exported too.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import threading
import time
from bisect import bisect_left
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from camservice import __version__
from camservice.cameras import CONNECTED, DISCONNECTED, ERROR
from camservice.errors import RpcError
from camservice.methods import WORKER_KINDS, role_allows

log = structlog.get_logger("gateway.metrics")

#: Request latency bounds, seconds: fine around 1 ms (the P95 target of status
#: calls) and exact at the alert thresholds 0.2, 1 and 4 s, where
#: ``histogram_quantile`` must not interpolate across a wide bucket.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.0002,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.3,
    0.5,
    1.0,
    2.0,
    4.0,
    6.0,
    10.0,
)
#: Suggested bounds for the recording worker's ``snapshot_seconds``.
SNAPSHOT_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
#: Suggested bounds for the recording worker's ``recording_seconds``.
RECORDING_BUCKETS: tuple[float, ...] = (1, 10, 30, 60, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)

#: Seconds after which another process's last report no longer counts.
STALE_AFTER = 30.0
#: JSON-RPC codes that mean the service failed (not the caller): these feed the error-rate alert.
SERVER_ERROR_CODES = (-32603, -32006, -32011)


# --- the hot path ----------------------------------------------------------------------


class Histogram:
    """Counts per bucket as a plain list; ``observe`` is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (Prometheus' "le").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def export(self) -> dict[str, Any]:
        """The wire shape (see the module docstring), for ``_gateway_stats`` and ``Worker.stats()``."""
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum}


class LocalMetrics:
    """What one gateway measures itself, beyond ``RequestStats``."""

    def __init__(self) -> None:
        self.latency: dict[str, Histogram] = {}
        self.notifications: dict[str, int] = {}
        self.delivery = Histogram()

    def observe_request(
        self, method: str, code: int, seconds: float, _bisect=bisect_left, _bounds=LATENCY_BUCKETS
    ) -> None:
        """``RequestStats.observer``: called once per request, so kept to the bare minimum.

        ``method`` is bounded: the gateway records unknown names as ``"unknown"``.
        """
        histogram = self.latency.get(method)
        if histogram is None:
            histogram = self.latency[method] = Histogram()
        histogram.counts[_bisect(_bounds, seconds)] += 1
        histogram.sum += seconds

    def observe_delivery(self, topic: str, recipients: int, seconds: float) -> None:
        """``EventRelay.on_delivery``: one notification sent to ``recipients`` connections."""
        self.notifications[topic] = self.notifications.get(topic, 0) + recipients
        self.delivery.observe(seconds)


# --- disk usage off the event loop -----------------------------------------------------------


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent: a folder not created yet lives on that file system."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


class StorageProbe:
    """``shutil.disk_usage`` of the storage folders, measured in a daemon thread.

    At most one measurement runs at a time, so a hung file system ties up
    one thread, not one per scrape; :meth:`refresh` waits at most
    ``timeout`` seconds, and meanwhile :attr:`values` keeps the last
    figures. A daemon thread rather than the loop's executor, whose shutdown
    would wait for a stuck ``statvfs`` and keep the gateway from exiting.
    """

    def __init__(
        self,
        folders: dict[str, Path],
        max_age: float = 5.0,
        timeout: float = 1.0,
        disk_usage: Callable[[Path], Any] = shutil.disk_usage,
    ):
        self.folders = folders
        self.max_age = max_age
        self.timeout = timeout
        self.disk_usage = disk_usage
        #: folder -> (total, used, available) bytes, as of :attr:`measured`.
        self.values: dict[str, tuple[int, int, int]] = {}
        self.measured = -math.inf
        self._running: threading.Event | None = None

    def _measure(self, finished: threading.Event) -> None:  # runs in the thread
        try:
            values = {}
            for name, path in self.folders.items():
                try:
                    usage = self.disk_usage(_existing(Path(path)))
                except OSError:
                    continue
                values[name] = (int(usage.total), int(usage.used), int(usage.free))
            self.values = values  # one reference swap: the loop never sees half an update
            self.measured = time.monotonic()
        except Exception:
            log.exception("storage_probe_failed")
        finally:
            finished.set()

    async def refresh(self) -> None:
        if time.monotonic() - self.measured < self.max_age:
            return
        if self._running is None or self._running.is_set():
            self._running = threading.Event()
            threading.Thread(target=self._measure, args=(self._running,), name="storage-probe", daemon=True).start()
        finished = self._running
        deadline = time.monotonic() + self.timeout
        # Polling a threading.Event keeps the loop free and needs no loop
        # callback from the thread, which may outlive the loop.
        while not finished.is_set():
            if time.monotonic() >= deadline:
                log.warning("storage_probe_slow", timeout=self.timeout)
                return
            await asyncio.sleep(0.005)


# --- helpers for rendering ------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _histogram_buckets(data: Any) -> tuple[list[tuple[str, float]], float] | None:
    """Cumulative ``(le, count)`` pairs and the sum from the wire shape, None when malformed."""
    if not isinstance(data, dict):
        return None
    bounds, counts, total = data.get("bounds"), data.get("counts"), _number(data.get("sum"))
    if not isinstance(bounds, list) or not isinstance(counts, list) or total is None:
        return None
    if len(counts) != len(bounds) + 1 or not bounds:
        return None
    numbers = [_number(b) for b in bounds]
    values = [_number(c) for c in counts]
    if None in numbers or None in values or any(v < 0 for v in values):
        return None
    if any(low >= high for low, high in zip(numbers, numbers[1:])):
        return None
    buckets, running = [], 0.0
    for bound, count in zip(numbers, values):
        running += count
        buckets.append((floatToGoString(bound), running))
    buckets.append(("+Inf", running + values[-1]))
    return buckets, total


def _fresh(report: dict[str, Any] | None, now: float) -> bool:
    return isinstance(report, dict) and now - report.get("time", 0.0) <= STALE_AFTER


# --- the exporter -------------------------------------------------------------------------


class MetricsExporter:
    """Everything :func:`attach` wires into one gateway process."""

    def __init__(self, server, storage: StorageProbe | None = None):
        self.server = server
        self.gateway = server.gateway
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
        gateway, pool = self.gateway, self.server.pool
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

    def on_publish(self, topic: str, data: dict[str, Any]) -> dict[str, Any]:
        """Called for every event this gateway publishes; extends ``_gateway_stats``."""
        if topic != "_gateway_stats":
            return data
        report = self.gateway_report()
        self.published = report
        return {**data, "metrics": report}

    def on_worker_stats(self, data: dict[str, Any]) -> None:
        name = data.get("name")
        if isinstance(name, str):
            self.workers[name] = {**data, "time": time.time()}

    # --- views used by the collector ------------------------------------------------------

    def gateway_views(self, now: float) -> dict[int, dict[str, Any]]:
        views: dict[int, dict[str, Any]] = {}
        for index, counters in list(self.gateway.gateway_stats.items()):
            report = counters.get("metrics") if isinstance(counters, dict) else None
            if index != self.gateway.index and _fresh(report, now):
                views[index] = report
        if self.multi_gateway and self.published is not None:
            views[self.gateway.index] = self.published
        else:
            views[self.gateway.index] = self.gateway_report()
        return views

    def worker_views(self, now: float) -> list[dict[str, Any]]:
        return [data for data in self.workers.values() if _fresh(data, now)]

    def worker_stats(self, kind: str, now: float) -> dict[str, Any]:
        """The freshest ``stats`` of a worker of ``kind`` (kind-wide figures: any one will do)."""
        reports = [w for w in self.worker_views(now) if w.get("kind") == kind and isinstance(w.get("stats"), dict)]
        return max(reports, key=lambda w: w["time"])["stats"] if reports else {}

    # --- HTTP ------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def check_access(self, peer: str, headers) -> tuple[int, str, bytes, dict[str, str]] | None:
        """None when the request may read /metrics, else the error response.

        Same rules as the downloads of ``shared/API.md``: no credentials 401,
        bad credentials 403, and here a role below admin 403 as well. Failed
        attempts count towards the address's authentication-failure throttle,
        as on the WebSocket, so /metrics is no side door for guessing keys.
        """
        if not self.config.security.metrics_require_auth:
            return None
        now = time.time()
        throttle = self.gateway.auth_failures
        wait = throttle.blocked(peer, now)
        if wait:
            return 429, "text/plain", b"too many failed authentications\n", {"Retry-After": str(math.ceil(wait))}
        try:
            identity = self.gateway.auth.authenticate_http(headers)
        except RpcError:
            throttle.record_failure(peer, now)
            return 403, "text/plain", b"invalid credentials\n", {}
        if identity is None:
            return 401, "text/plain", b"admin credentials required\n", {"WWW-Authenticate": 'Bearer realm="camservice"'}
        throttle.record_success(peer)
        if not role_allows(identity.role, "admin"):
            return 403, "text/plain", b"admin role required\n", {}
        return None

    async def respond(self, peer: str, headers) -> tuple[int, str, bytes, dict[str, str]]:
        denied = self.check_access(peer, headers)
        if denied is not None:
            return denied
        await self.storage.refresh()
        body, content_type = self.render()
        # Which gateway answered: several share the port and the kernel picks one.
        return 200, content_type, body, {"X-Camservice-Gateway": str(self.gateway.index)}


# --- the collector ------------------------------------------------------------------------


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _counter(name: str, doc: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    # prometheus_client appends "_total" itself; names here are given without it.
    return CounterMetricFamily(name, doc, labels=list(labels))


class ServiceCollector(Collector):
    """Renders the exporter's inputs as metric families at scrape time."""

    def __init__(self, exporter: MetricsExporter):
        self.exporter = exporter

    def collect(self) -> Iterator:
        now = time.time()
        exporter = self.exporter
        info = _gauge("camservice_build_info", "Version of the answering gateway (always 1).", ["version"])
        info.add_metric([__version__], 1)
        yield info
        yield from self._gateways(exporter.gateway_views(now))
        yield from self._processes(exporter.gateway.processes)
        yield from self._host(exporter.gateway.host_stats)
        yield from self._workers(exporter.worker_views(now))
        yield from self._storage(exporter.storage.values, exporter.worker_stats("files", now))
        yield from self._cameras(exporter.gateway, exporter.worker_stats("recording", now))
        yield from self._recording(exporter.worker_stats("recording", now))
        yield from self._discovery(exporter.worker_stats("discovery", now))
        yield from self._media(exporter.config.media.backend, exporter.gateway.media_status)
        yield from self._upgrade(getattr(exporter.gateway, "upgrade", {}))

    @staticmethod
    def _upgrade(figures: dict[str, Any]) -> Iterator:
        """Reloads and automatic rollbacks (camservice.supervisor.reload), from ``_process_stats``."""
        generation = _gauge("camservice_generation", "Generation of processes serving (0 at start, +1 per reload).")
        generation.add_metric([], figures.get("generation", 0))
        yield generation
        reloads = _counter("camservice_reloads", "Reloads completed since the supervisor started.")
        reloads.add_metric([], figures.get("reloads", 0))
        yield reloads
        rollbacks = _counter("camservice_rollbacks", "Automatic rollbacks (canary or failed start) since start.")
        rollbacks.add_metric([], figures.get("rollbacks", 0))
        yield rollbacks

    # --- gateways ------------------------------------------------------------------------

    @staticmethod
    def _gateways(views: dict[int, dict[str, Any]]) -> Iterator:
        requests = _counter(
            "camservice_requests",
            "JSON-RPC requests answered, by method and result code (0 = success, else the JSON-RPC error code).",
            ["gateway", "method", "code"],
        )
        latency = HistogramMetricFamily(
            "camservice_request_duration_seconds",
            "Time from a request's arrival to its answer, by method.",
            labels=["gateway", "method"],
        )
        connections = _gauge("camservice_open_connections", "Open WebSocket connections.", ["gateway"])
        in_flight = _gauge(
            "camservice_requests_in_flight", "Requests sent to workers and not answered yet.", ["gateway"]
        )
        notifications = _counter(
            "camservice_notifications_sent",
            "Notifications sent to clients (one per receiving connection), by topic.",
            ["gateway", "topic"],
        )
        delivery = HistogramMetricFamily(
            "camservice_notification_delivery_seconds",
            "Time from an event's publication to the notification's send.",
            labels=["gateway"],
        )
        timeouts = _counter(
            "camservice_worker_request_timeouts",
            "Requests a worker did not answer within their deadline (-32011), by worker kind.",
            ["gateway", "kind"],
        )
        queued = _gauge(
            "camservice_worker_queue_depth", "Requests waiting for a free worker, by kind.", ["gateway", "kind"]
        )
        alive = _gauge("camservice_workers_alive", "Workers sending heartbeats, by kind.", ["gateway", "kind"])
        losses = _counter("camservice_worker_losses", "Workers lost (missed heartbeats or exit).", ["gateway"])
        for index, report in sorted(views.items()):
            g = str(index)
            for method, code, count in report.get("requests", []):
                requests.add_metric([g, str(method), str(code)], count)
            for method, data in sorted(report.get("latency", {}).items()):
                parsed = _histogram_buckets(data)
                if parsed is not None:
                    latency.add_metric([g, str(method)], parsed[0], parsed[1])
            connections.add_metric([g], report.get("connections", 0))
            in_flight.add_metric([g], report.get("in_flight", 0))
            for topic, count in sorted(report.get("notifications", {}).items()):
                notifications.add_metric([g, str(topic)], count)
            parsed = _histogram_buckets(report.get("delivery"))
            if parsed is not None:
                delivery.add_metric([g], parsed[0], parsed[1])
            for kind in WORKER_KINDS:
                timeouts.add_metric([g, kind], report.get("timeouts", {}).get(kind, 0))
                queued.add_metric([g, kind], report.get("queue_depth", {}).get(kind, 0))
                alive.add_metric([g, kind], report.get("workers_alive", {}).get(kind, 0))
            losses.add_metric([g], report.get("worker_losses", 0))
        yield from (requests, latency, connections, in_flight, notifications, delivery, timeouts, queued, alive, losses)

    # --- supervisor's samples ------------------------------------------------------------------

    @staticmethod
    def _processes(rows: list[dict[str, Any]]) -> Iterator:
        labels = ["process", "role"]
        up = _gauge(
            "camservice_process_up",
            "1 while the process runs, 0 while it is restarting, stopped or given up on.",
            labels,
        )
        cpu = _counter("camservice_process_cpu_seconds", "CPU time (user + system) of the process.", labels)
        rss = _gauge("camservice_process_resident_memory_bytes", "Resident memory of the process.", labels)
        child_cpu = _gauge(
            "camservice_process_children_cpu_seconds",
            "CPU time of the process's live children (ffmpeg); drops when a child exits.",
            labels,
        )
        child_rss = _gauge(
            "camservice_process_children_resident_memory_bytes",
            "Resident memory of the process's children (ffmpeg).",
            labels,
        )
        restarts = _counter("camservice_process_restarts", "Restarts by the supervisor since it started.", labels)
        uptime = _gauge("camservice_process_uptime_seconds", "Seconds since the process (re)started.", labels)
        for row in rows:
            key = [str(row.get("name")), str(row.get("role"))]
            running = row.get("state") == "running" and bool(row.get("pid"))
            up.add_metric(key, 1 if running else 0)
            restarts.add_metric(key, row.get("restarts", 0))
            uptime.add_metric(key, row.get("uptime", 0.0) if running else 0.0)
            if running:  # a stopped process has no CPU or memory to speak of
                cpu.add_metric(key, row.get("cpu_seconds", 0.0))
                rss.add_metric(key, row.get("rss_bytes", 0))
                child_cpu.add_metric(key, row.get("children_cpu_seconds", 0.0))
                child_rss.add_metric(key, row.get("children_rss_bytes", 0))
        yield from (up, cpu, rss, child_cpu, child_rss, restarts, uptime)

    @staticmethod
    def _host(host: dict[str, Any]) -> Iterator:
        if not host:
            return
        cpu = _gauge("camservice_host_cpu_usage_ratio", "Host CPU busy, all cores (0-1).")
        cpu.add_metric([], host.get("cpu_percent", 0.0) / 100.0)
        cores = _gauge("camservice_host_cpu_core_usage_ratio", "Host CPU busy per core (0-1).", ["cpu"])
        for number, percent in enumerate(host.get("per_cpu_percent", [])):
            cores.add_metric([str(number)], percent / 100.0)
        total = _gauge("camservice_host_memory_total_bytes", "Host memory.")
        total.add_metric([], host.get("memory_total_bytes", 0))
        used = _gauge("camservice_host_memory_used_bytes", "Host memory in use (total minus available).")
        used.add_metric([], host.get("memory_used_bytes", 0))
        yield from (cpu, cores, total, used)
        load = host.get("load") or []
        for position, window in enumerate(("1", "5", "15")):
            if position < len(load):
                family = _gauge(f"camservice_host_load{window}", f"Host load average over {window} minute(s).")
                family.add_metric([], load[position])
                yield family
        if "net_bytes_sent" in host:
            sent = _counter("camservice_host_network_transmit_bytes", "Bytes sent by every host interface.")
            sent.add_metric([], host["net_bytes_sent"])
            received = _counter("camservice_host_network_receive_bytes", "Bytes received by every host interface.")
            received.add_metric([], host.get("net_bytes_recv", 0))
            yield from (sent, received)

    # --- workers -------------------------------------------------------------------------------

    @staticmethod
    def _workers(reports: list[dict[str, Any]]) -> Iterator:
        in_flight = _gauge(
            "camservice_worker_requests_in_flight", "Requests a worker is handling.", ["process", "kind"]
        )
        for report in sorted(reports, key=lambda r: r["name"]):
            in_flight.add_metric([report["name"], str(report.get("kind"))], report.get("in_flight", 0))
        yield in_flight

    @staticmethod
    def _storage(usage: dict[str, tuple[int, int, int]], files: dict[str, Any]) -> Iterator:
        labels = ["folder"]
        capacity = _gauge("camservice_storage_capacity_bytes", "Size of the file system holding the folder.", labels)
        used = _gauge("camservice_storage_used_bytes", "Bytes used on the folder's file system.", labels)
        available = _gauge(
            "camservice_storage_available_bytes",
            "Bytes available to the service on the folder's file system (root's reserve excluded, like df).",
            labels,
        )
        for folder, (total, in_use, free) in sorted(usage.items()):
            capacity.add_metric([folder], total)
            used.add_metric([folder], in_use)
            available.add_metric([folder], free)
        yield from (capacity, used, available)
        content = _gauge("camservice_storage_content_bytes", "Bytes of the service's files in the folder.", labels)
        count = _gauge("camservice_storage_files", "Files in the folder.", labels)
        for folder in ("recordings", "snapshots"):
            size, files_in = _number(files.get(f"{folder}_bytes")), _number(files.get(f"{folder}_files"))
            if size is not None:
                content.add_metric([folder], size)
            if files_in is not None:
                count.add_metric([folder], files_in)
        if content.samples:
            yield content
        if count.samples:
            yield count

    @staticmethod
    def _cameras(gateway, recording: dict[str, Any]) -> Iterator:
        statuses = {CONNECTED: 0, DISCONNECTED: 0, ERROR: 0}
        recording_now = 0
        for camera in gateway.cameras:
            statuses[camera.status] = statuses.get(camera.status, 0) + 1
            recording_now += 1 if camera.recording else 0
        cameras = _gauge("camservice_cameras", "Cameras listed, by status.", ["status"])
        for status, number in sorted(statuses.items()):
            cameras.add_metric([status], number)
        # The recording worker's own count is authoritative; the replica is the
        # fallback, so the gauge exists while that worker is down too.
        active = _number(recording.get("active_recordings"))
        recordings = _gauge("camservice_recordings_active", "Recordings in progress.")
        recordings.add_metric([], recording_now if active is None else active)
        yield from (cameras, recordings)

    @staticmethod
    def _recording(stats: dict[str, Any]) -> Iterator:
        for key, name, doc in (
            ("snapshot_seconds", "camservice_snapshot_duration_seconds", "Time taken to take a snapshot."),
            ("recording_seconds", "camservice_recording_duration_seconds", "Length of finished recordings."),
        ):
            parsed = _histogram_buckets(stats.get(key))
            if parsed is not None:
                family = HistogramMetricFamily(name, doc, labels=[])
                family.add_metric([], parsed[0], parsed[1])
                yield family
        failed = _number(stats.get("failed_recordings"))
        if failed is not None:
            family = _counter("camservice_recordings_failed", "Recordings that ended FAILED.")
            family.add_metric([], failed)
            yield family

    @staticmethod
    def _discovery(stats: dict[str, Any]) -> Iterator:
        events = _number(stats.get("hotplug_events"))
        if events is not None:
            family = _counter("camservice_camera_hotplug_events", "Camera plugs and unplugs seen.")
            family.add_metric([], events)
            yield family

    @staticmethod
    def _media(backend: str, status: dict[str, Any]) -> Iterator:
        state = status.get("state", "unknown")
        # The built-in ffmpeg backend has nothing to reach: up unless someone says otherwise.
        # MediaMTX is up only once it was seen answering.
        up = state == "running" or (backend == "ffmpeg" and state == "unknown")
        family = _gauge("camservice_media_backend_up", "1 when the media backend is reachable.", ["backend"])
        family.add_metric([backend], 1 if up else 0)
        yield family


# --- wiring ------------------------------------------------------------------------------------


def attach(server) -> MetricsExporter | None:
    """Install metrics on a :class:`~camservice.gateway.server.GatewayServer`; None when ``metrics.enabled`` is off.

    Wraps rather than edits: ``server.process_request`` (``/metrics``, with
    the request headers for ``security.metrics_require_auth``, answered by a
    coroutine so disk usage can be measured in a thread),
    ``server.events.publish`` (adds this gateway's report to
    ``_gateway_stats``) and ``server.events.dispatch`` (keeps
    ``_worker_stats``). Must run before ``server.run()``, which hands
    ``process_request`` to the WebSocket server.
    """
    if not server.config.metrics.enabled:
        return None
    exporter = MetricsExporter(server)
    server.gateway.stats.observer = exporter.local.observe_request
    server.events.on_delivery = exporter.local.observe_delivery
    if not server.config.security.metrics_require_auth:
        # gateway.http.route cannot see headers: give it the renderer only when
        # no credential is needed, so no path to /metrics ever skips the check.
        server.metrics_renderer = exporter.render

    original_request = server.process_request

    def process_request(connection, request):
        if request.path.split("?", 1)[0] != "/metrics":
            return original_request(connection, request)
        peer = connection.remote_address[0] if getattr(connection, "remote_address", None) else "?"

        async def answer():
            return server._response(*await exporter.respond(peer, request.headers))

        return answer()

    server.process_request = process_request

    events = server.events
    original_publish, original_dispatch = events.publish, events.dispatch

    def publish(topic: str, data: dict[str, Any]) -> None:
        original_publish(topic, exporter.on_publish(topic, data))

    def dispatch(event) -> None:
        if event.topic == "_worker_stats":
            exporter.on_worker_stats(event.data)
        else:
            original_dispatch(event)

    events.publish, events.dispatch = publish, dispatch
    return exporter
