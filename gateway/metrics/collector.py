"""Renders an exporter's figures as Prometheus metric families at scrape time."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Iterator
from typing import Any, cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from camservice import __version__
from camservice.cameras import CONNECTED, DISCONNECTED, ERROR
from camservice.methods import WORKER_KINDS


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
    maybe_bounds = [_number(b) for b in bounds]
    maybe_counts = [_number(c) for c in counts]
    if None in maybe_bounds or None in maybe_counts:
        return None
    # None is ruled out just above (mypy does not narrow list items).
    numbers, values = cast(list[float], maybe_bounds), cast(list[float], maybe_counts)
    if any(v < 0 for v in values):
        return None
    if any(low >= high for low, high in itertools.pairwise(numbers)):
        return None
    buckets, running = [], 0.0
    for bound, count in zip(numbers, values):
        running += count
        buckets.append((floatToGoString(bound), running))
    buckets.append(("+Inf", running + values[-1]))
    return buckets, total


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _counter(name: str, doc: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    # prometheus_client appends "_total" itself; names here are given without it.
    return CounterMetricFamily(name, doc, labels=list(labels))


class ServiceCollector(Collector):
    """Renders the exporter's inputs as metric families at scrape time."""

    def __init__(self, exporter):
        self.exporter = exporter

    def collect(self) -> Iterator:
        now = time.time()
        exporter = self.exporter
        info = _gauge("camservice_build_info", "Version of the answering gateway (always 1).", ["version"])
        info.add_metric([__version__], 1)
        yield info
        yield from self._gateways(exporter.gateway_views(now))
        yield from self._processes(exporter.pipeline.processes)
        yield from self._host(exporter.pipeline.host_stats)
        yield from self._workers(exporter.worker_views(now))
        yield from self._storage(exporter.storage.values, exporter.worker_stats("files", now))
        yield from self._thresholds(exporter.config.storage)
        yield from self._retention(exporter.newest_retention(now))
        yield from self._cameras(exporter.pipeline, exporter.worker_stats("recording", now))
        yield from self._recording(exporter.worker_stats("recording", now))
        yield from self._discovery(exporter.worker_stats("discovery", now))
        yield from self._mqtt(exporter.worker_stats("mqtt", now))
        yield from self._media(exporter.config.media.backend, exporter.pipeline.media_status)
        yield from self._upgrade(getattr(exporter.pipeline, "upgrade", {}))

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
    def _thresholds(storage) -> Iterator:
        """The configured usage levels (the console marks them on its meter; alert rules can use them)."""
        for level, percent in (("warn", storage.warn_percent), ("critical", storage.critical_percent)):
            gauge = _gauge(f"camservice_storage_{level}_ratio", f"Usage (0-1) from which storage is reported {level}.")
            gauge.add_metric([], percent / 100.0)
            yield gauge

    @staticmethod
    def _retention(policy: Any) -> Iterator:
        """The retention policy in force, as the file workers last read it (``set_retention_policy``'s fields)."""
        if not isinstance(policy, dict):
            return
        info = _gauge(
            "camservice_retention_policy_info", "The retention policy in force (always 1).", ["policy_type", "enabled"]
        )
        info.add_metric([str(policy.get("policy_type")), "true" if policy.get("enabled") else "false"], 1)
        yield info
        # Base units (seconds, bytes), as Prometheus names want; the API's days and GB (10^9 bytes) scaled.
        for key, name, doc, scale in (
            ("max_age_days", "camservice_retention_max_age_seconds", "Age limit of the retention policy.", 86400),
            ("max_size_gb", "camservice_retention_max_size_bytes", "Size limit of the retention policy.", 10**9),
        ):
            limit = _number(policy.get(key))
            if limit is not None:
                gauge = _gauge(name, doc)
                gauge.add_metric([], limit * scale)
                yield gauge

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
                histogram = HistogramMetricFamily(name, doc, labels=[])
                histogram.add_metric([], parsed[0], parsed[1])
                yield histogram
        previews = _number(stats.get("preview_captures"))
        if previews is not None:
            captures = _gauge("camservice_preview_captures", "Live preview captures of idle cameras running.")
            captures.add_metric([], previews)
            yield captures
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
    def _mqtt(stats: dict[str, Any]) -> Iterator:
        if not stats:
            return  # no bridge (mqtt.host unset), or not heard from
        for key, name, doc in (
            ("connected", "camservice_mqtt_connected", "1 while the MQTT bridge is connected to its broker."),
            ("queued", "camservice_mqtt_queued_messages", "Messages waiting for the MQTT broker."),
        ):
            value = _number(stats.get(key))
            if value is not None:
                family = _gauge(name, doc)
                family.add_metric([], value)
                yield family
        reconnects = _number(stats.get("reconnects"))
        if reconnects is not None:
            counter = _counter("camservice_mqtt_reconnects", "Connections to the MQTT broker lost since start.")
            counter.add_metric([], reconnects)
            yield counter
        for key, name, doc, label in (
            ("published", "camservice_mqtt_messages_published", "Messages the MQTT broker acknowledged.", "kind"),
            (
                "dropped",
                "camservice_mqtt_messages_dropped",
                "Events dropped because the MQTT broker was too slow.",
                "kind",
            ),
            ("commands", "camservice_mqtt_commands", "MQTT commands answered, by result (ok, error).", "result"),
        ):
            values = stats.get(key)
            counter = _counter(name, doc, [label])
            for label_value, number in sorted(values.items()) if isinstance(values, dict) else ():
                if _number(number) is not None:
                    counter.add_metric([str(label_value)], number)
            yield counter

    @staticmethod
    def _media(backend: str, status: dict[str, Any]) -> Iterator:
        state = status.get("state", "unknown")
        # The built-in ffmpeg backend has nothing to reach: up unless someone says otherwise.
        # MediaMTX is up only once it was seen answering.
        up = state == "running" or (backend == "ffmpeg" and state == "unknown")
        family = _gauge("camservice_media_backend_up", "1 when the media backend is reachable.", ["backend"])
        family.add_metric([backend], 1 if up else 0)
        yield family
