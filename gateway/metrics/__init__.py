"""Prometheus metrics of every process of the service, in one scrape of one gateway.

Modules, one job each: :mod:`.local` (this gateway's hot-path histograms),
:mod:`.storage` (disk usage measured in a thread), :mod:`.exporter` (the
latest figures of every process, and the ``/metrics`` endpoint),
:mod:`.collector` (figures -> Prometheus families), and :func:`attach` here
(registration on the gateway's explicit hooks). Credentials are checked by
:class:`camservice.httpauth.HttpGuard`, like every HTTP endpoint.

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
  by (method, code). :meth:`.local.LocalMetrics.observe_request`, installed as its
  ``observer``, adds the latency histogram: one dict lookup, one ``bisect``
  into fixed bounds, two float/int additions on a plain list. Notifications
  are counted the same way through ``EventRelay.on_delivery``.
* **Other processes.** ``_process_stats`` (supervisor: CPU seconds, RSS,
  restarts, uptime, state of every process; host CPU, memory, load,
  network), ``_worker_stats`` (each worker's :meth:`Worker.stats`, shapes
  below, received through ``EventRelay.subscribe``) and
  ``_gateway_stats`` (each gateway's counters, which the exporter extends
  with a ``"metrics"`` member through ``GatewayServer.stats_sources``).
* **Scrape.** :class:`.collector.ServiceCollector`, the only collector of a private
  registry, turns the latest of all that into metric families and
  ``generate_latest`` renders them. Disk usage of the storage folders is
  measured by :class:`.storage.StorageProbe` in a thread (a hung mount must never
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
for values above ``bn`` -- what :meth:`camservice.histogram.Histogram.export` produces.

* recording: ``{"active_recordings": int, "failed_recordings": int (since
  start), "snapshot_seconds": histogram (time to take a snapshot),
  "recording_seconds": histogram (length of each finished recording)}``
* files: ``{"recordings_bytes": int, "snapshots_bytes": int,
  "recordings_files": int, "snapshots_files": int, "retention": {"policy_type",
  "enabled", "max_age_days", "max_size_gb", "read_at"} (the policy as last read or
  written by that worker; the newest over all file workers is rendered)}``
* recording also sends ``"preview_captures": int`` (live preview captures running).
* discovery: ``{"hotplug_events": int (plugs and unplugs seen since start)}``
* mqtt (the bridge): ``{"connected": 0|1, "queued": int, "reconnects": int,
  "published": {kind: int}, "dropped": {kind: int}, "commands": {"ok": int, "error": int}}``

Every worker's ``in_flight`` (sent by the worker runtime) is exported too.
"""

from __future__ import annotations

from camservice import topics
from camservice.histogram import LATENCY_BUCKETS, RECORDING_BUCKETS, SNAPSHOT_BUCKETS, Histogram

from .exporter import SERVER_ERROR_CODES, STALE_AFTER, MetricsExporter
from .local import LocalMetrics
from .storage import StorageProbe

__all__ = [
    "LATENCY_BUCKETS",
    "RECORDING_BUCKETS",
    "SERVER_ERROR_CODES",
    "SNAPSHOT_BUCKETS",
    "STALE_AFTER",
    "Histogram",
    "LocalMetrics",
    "MetricsExporter",
    "StorageProbe",
    "attach",
]


def attach(server) -> MetricsExporter | None:
    """Install metrics on a :class:`~camservice.gateway.server.GatewayServer`; None when ``metrics.enabled`` is off.

    Only public hooks: ``RequestStats.observer`` and ``EventRelay.on_delivery``
    (histograms), ``server.routes`` (``GET /metrics``),
    ``server.stats_sources`` (this gateway's report, added to the
    ``_gateway_stats`` it publishes) and ``EventRelay.subscribe``
    (``_worker_stats``).
    """
    if not server.config.metrics.enabled:
        return None
    exporter = MetricsExporter(server)
    server.pipeline.stats.observer = exporter.local.observe_request
    server.events.on_delivery = exporter.local.observe_delivery
    server.routes.add(("GET", "HEAD"), "/metrics", exporter.handle)
    server.stats_sources.append(exporter.extend_stats)
    server.events.subscribe(topics.WORKER_STATS, lambda event: exporter.on_worker_stats(event.data))
    return exporter
