"""The Prometheus exporter (gateway/metrics/) on real GatewayServer objects.

No service runs here: each test builds a real :class:`GatewayServer` (its
ZeroMQ sockets exist but nothing is bound), attaches the exporter, feeds it
requests through the real pipeline and events in the shapes the supervisor,
workers and gateways publish (round-tripped through the real envelope), and
reads ``/metrics`` through the server's real route table (``answer_http``). The whole
service, scraped by a real Prometheus, is in ``test_ops.py``.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import structlog
import yaml
from camservice.gateway.metrics import (
    LATENCY_BUCKETS,
    RECORDING_BUCKETS,
    SNAPSHOT_BUCKETS,
    STALE_AFTER,
    Histogram,
    StorageProbe,
    attach,
)
from camservice.gateway.routes import HttpRequest
from camservice.gateway.server import GatewayServer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Histogram as ReferenceHistogram
from prometheus_client.parser import text_string_to_metric_families

from camservice import config as config_module
from camservice import jsonrpc
from camservice.apikeys import KeyStore
from camservice.cameras import Camera
from camservice.envelope import Event
from camservice.tokens import issue_token, load_or_create_secret

REPO = Path(__file__).resolve().parent.parent
SECRET = "metrics-test-secret-" + "y" * 32


# --- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
def make_server(tmp_path):
    servers = []

    def make(index: int = 0, attach_metrics: bool = True, **settings) -> GatewayServer:
        values = {
            "runtime.state_dir": str(tmp_path / "state"),
            "security.jwt_secret": SECRET,
            "security.rate_limit": 10000.0,
            "security.rate_burst": 10000,
            **settings,
        }
        server = GatewayServer(config_module.load(overrides=values, environ={}), index)
        servers.append(server)
        if attach_metrics:
            server.exporter = attach(server)
        return server

    yield make
    for server in servers:
        server.events.close()
        server.pool.close()
        server.ctx.term()


def deliver(server: GatewayServer, topic: str, data: dict, source: str = "test") -> None:
    """An event as the gateway's relay receives it: encoded and decoded by the real envelope."""
    frames = Event(topic, source, 1, data, time.time()).frames()
    server.events.dispatch(Event.from_frames(frames))


def http_get(server: GatewayServer, path: str = "/metrics", headers: dict | None = None, peer: str = "10.0.0.9"):
    """A GET through the server's real route table, as its HTTP exchange makes it."""
    request = HttpRequest("GET", path, {k.lower(): v for k, v in (headers or {}).items()}, peer)
    answer = server.answer_http(request)
    if asyncio.iscoroutine(answer):
        answer = asyncio.run(answer)
    return SimpleNamespace(status_code=answer.status, headers=answer.headers, body=answer.body)


def scrape(server: GatewayServer, **kwargs) -> dict[tuple[str, frozenset], float]:
    response = http_get(server, **kwargs)
    assert response.status_code == 200, response.body
    return samples(response.body.decode())


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found, name: str, **labels) -> float:
    return found[(name, frozenset(labels.items()))]


def names(found) -> set[str]:
    return {name for name, _ in found}


def call(server: GatewayServer, session, method: str, params=None):
    return server.pipeline.handle(session, jsonrpc.Call(method, params, 1), lambda _: None)


def process_rows() -> list[dict]:
    return [
        {
            "name": "gateway-0",
            "role": "gateway",
            "index": 0,
            "pid": 101,
            "state": "running",
            "restarts": 0,
            "uptime": 12.5,
            "cpu_percent": 3.0,
            "rss_bytes": 40_000_000,
            "cpu_seconds": 1.25,
            "children_rss_bytes": 0,
            "children_cpu_seconds": 0.0,
            "last_exit": None,
        },
        {
            "name": "recording-0",
            "role": "recording",
            "index": 0,
            "pid": None,
            "state": "backoff",
            "restarts": 3,
            "uptime": 0.0,
            "cpu_percent": 0.0,
            "rss_bytes": 0,
            "cpu_seconds": 0.0,
            "children_rss_bytes": 0,
            "children_cpu_seconds": 0.0,
            "last_exit": -9,
        },
        {
            "name": "files-0",
            "role": "files",
            "index": 0,
            "pid": 103,
            "state": "running",
            "restarts": 1,
            "uptime": 30.0,
            "cpu_percent": 1.0,
            "rss_bytes": 30_000_000,
            "cpu_seconds": 0.5,
            "children_rss_bytes": 9_000_000,
            "children_cpu_seconds": 2.5,
            "last_exit": 1,
        },
    ]


HOST = {
    "cpu_percent": 42.0,
    "per_cpu_percent": [40.0, 44.0],
    "memory_percent": 50.0,
    "memory_total_bytes": 8_000_000_000,
    "memory_used_bytes": 4_000_000_000,
    "load": [0.5, 0.4, 0.3],
    "net_bytes_sent": 1000,
    "net_bytes_recv": 2000,
}


def histogram_of(bounds, values) -> dict:
    histogram = Histogram(bounds)
    for item in values:
        histogram.observe(item)
    return histogram.export()


# --- the hot path ---------------------------------------------------------------------------


def test_latency_histogram_matches_prometheus_client_bucket_for_bucket(make_server):
    """Same observations, ours through the gateway's observer, theirs through prometheus_client."""
    server = make_server()
    reference_registry = CollectorRegistry()
    reference = ReferenceHistogram("ref", "reference", buckets=LATENCY_BUCKETS, registry=reference_registry)
    rng = random.Random(7)
    # Every bound exactly (the "le" edge), just above and below each, and a spread.
    values = (
        [b for b in LATENCY_BUCKETS]
        + [b * 1.0001 for b in LATENCY_BUCKETS]
        + [b * 0.9999 for b in LATENCY_BUCKETS]
        + [rng.expovariate(200) for _ in range(500)]
        + [0.0, 25.0]
    )
    for item in values:
        server.pipeline.stats.record("get_camera_list", 0, item)
        reference.observe(item)
    ours = scrape(server)
    theirs = samples(generate_latest(reference_registry).decode())
    compared = 0
    for (name, labels), expected in theirs.items():
        if not name.startswith("ref_"):
            continue
        suffix = name[len("ref") :]
        if suffix == "_created":
            continue
        got = value(
            ours, "camservice_request_duration_seconds" + suffix, gateway="0", method="get_camera_list", **dict(labels)
        )
        assert got == pytest.approx(expected), (name, dict(labels))
        compared += 1
    assert compared == len(LATENCY_BUCKETS) + 1 + 2  # buckets, +Inf, _count, _sum
    assert value(ours, "camservice_requests_total", gateway="0", method="get_camera_list", code="0") == len(values)


def test_requests_counted_by_method_and_code_through_the_real_pipeline(make_server):
    server = make_server()
    session = server.pipeline.open_session("1.2.3.4")
    for _ in range(3):
        call(server, session, "ping")
    call(server, session, "no_such_method")  # -32601, recorded as "unknown"
    call(server, session, "get_camera_list")  # not authenticated: -32001
    found = scrape(server)
    assert value(found, "camservice_requests_total", gateway="0", method="ping", code="0") == 3
    assert value(found, "camservice_requests_total", gateway="0", method="unknown", code="-32601") == 1
    assert value(found, "camservice_requests_total", gateway="0", method="get_camera_list", code="-32001") == 1
    assert value(found, "camservice_request_duration_seconds_count", gateway="0", method="ping") == 3
    assert value(found, "camservice_open_connections", gateway="0") == 1
    assert not any(dict(labels).get("method") == "no_such_method" for _, labels in found)


def test_notification_deliveries_are_counted_per_recipient(make_server):
    server = make_server()
    server.events.on_delivery("camera_status_update", 3, 0.002)  # what EventRelay.notify calls
    server.events.on_delivery("recording_status_update", 1, 0.5)
    found = scrape(server)
    assert value(found, "camservice_notifications_sent_total", gateway="0", topic="camera_status_update") == 3
    assert value(found, "camservice_notifications_sent_total", gateway="0", topic="recording_status_update") == 1
    assert value(found, "camservice_notification_delivery_seconds_count", gateway="0") == 2
    assert value(found, "camservice_notification_delivery_seconds_bucket", gateway="0", le="0.002") == 1


def test_pool_figures(make_server):
    server = make_server()
    server.pool.timeouts["recording"] = 4
    server.pool.queues["files"].extend([object(), object()])
    found = scrape(server)
    assert value(found, "camservice_worker_request_timeouts_total", gateway="0", kind="recording") == 4
    assert value(found, "camservice_worker_queue_depth", gateway="0", kind="files") == 2
    assert value(found, "camservice_workers_alive", gateway="0", kind="discovery") == 0
    assert value(found, "camservice_requests_in_flight", gateway="0") == 0


# --- other processes' numbers -----------------------------------------------------------------


def test_supervisor_samples_become_process_and_host_metrics(make_server):
    server = make_server()
    deliver(server, "_process_stats", {"processes": process_rows(), "host": HOST}, source="supervisor")
    found = scrape(server)
    assert server.pipeline.processes  # the relay's own handling still ran
    gw = {"process": "gateway-0", "role": "gateway"}
    rec = {"process": "recording-0", "role": "recording"}
    files = {"process": "files-0", "role": "files"}
    assert value(found, "camservice_process_up", **gw) == 1
    assert value(found, "camservice_process_up", **rec) == 0
    assert value(found, "camservice_process_restarts_total", **rec) == 3
    assert value(found, "camservice_process_cpu_seconds_total", **gw) == 1.25
    assert ("camservice_process_cpu_seconds_total", frozenset(rec.items())) not in found
    assert value(found, "camservice_process_resident_memory_bytes", **files) == 30_000_000
    assert value(found, "camservice_process_children_resident_memory_bytes", **files) == 9_000_000
    assert value(found, "camservice_process_children_cpu_seconds", **files) == 2.5
    assert value(found, "camservice_process_uptime_seconds", **files) == 30.0
    assert value(found, "camservice_host_cpu_usage_ratio") == pytest.approx(0.42)
    assert value(found, "camservice_host_cpu_core_usage_ratio", cpu="1") == pytest.approx(0.44)
    assert value(found, "camservice_host_memory_used_bytes") == 4_000_000_000
    assert value(found, "camservice_host_load15") == 0.3
    assert value(found, "camservice_host_network_receive_bytes_total") == 2000
    # get_metrics reads the same table: the wrapper did not swallow the event.
    assert [p["name"] for p in server.pipeline.metrics()["processes"]] == ["gateway-0", "recording-0", "files-0"]


def test_worker_stats_render_what_is_present_and_nothing_else(make_server):
    server = make_server()
    before = scrape(server)
    for name in (
        "camservice_snapshot_duration_seconds_count",
        "camservice_recording_duration_seconds_count",
        "camservice_storage_content_bytes",
        "camservice_storage_files",
        "camservice_camera_hotplug_events_total",
        "camservice_recordings_failed_total",
    ):
        assert name not in names(before)
    snapshot = histogram_of(SNAPSHOT_BUCKETS, [0.08, 0.15, 0.15, 4.0])
    recording = histogram_of(RECORDING_BUCKETS, [5, 120, 100000])
    deliver(
        server,
        "_worker_stats",
        {
            "name": "recording-0",
            "kind": "recording",
            "index": 0,
            "pid": 5,
            "in_flight": 2,
            "stats": {
                "active_recordings": 1,
                "failed_recordings": 2,
                "snapshot_seconds": snapshot,
                "recording_seconds": recording,
                "preview_captures": 1,
            },
        },
    )
    deliver(
        server,
        "_worker_stats",
        {
            "name": "files-0",
            "kind": "files",
            "index": 0,
            "pid": 6,
            "in_flight": 0,
            "stats": {"recordings_bytes": 5000, "snapshots_bytes": 70, "recordings_files": 3, "snapshots_files": 1},
        },
    )
    deliver(
        server,
        "_worker_stats",
        {
            "name": "discovery-0",
            "kind": "discovery",
            "index": 0,
            "pid": 7,
            "in_flight": 0,
            "stats": {"hotplug_events": 9},
        },
    )
    found = scrape(server)
    assert value(found, "camservice_snapshot_duration_seconds_count") == 4
    assert value(found, "camservice_snapshot_duration_seconds_bucket", le="0.1") == 1
    assert value(found, "camservice_snapshot_duration_seconds_bucket", le="0.2") == 3
    assert value(found, "camservice_snapshot_duration_seconds_sum") == pytest.approx(4.38)
    assert value(found, "camservice_recording_duration_seconds_bucket", le="86400.0") == 2
    assert value(found, "camservice_recording_duration_seconds_bucket", le="+Inf") == 3
    assert value(found, "camservice_recordings_failed_total") == 2
    assert value(found, "camservice_recordings_active") == 1
    assert value(found, "camservice_preview_captures") == 1
    assert value(found, "camservice_storage_content_bytes", folder="recordings") == 5000
    assert value(found, "camservice_storage_files", folder="snapshots") == 1
    assert value(found, "camservice_camera_hotplug_events_total") == 9
    assert value(found, "camservice_worker_requests_in_flight", process="recording-0", kind="recording") == 2


def test_storage_thresholds_and_the_newest_retention_policy(make_server):
    server = make_server(**{"storage.warn_percent": 70.0, "storage.critical_percent": 95.0})
    before = scrape(server)
    assert value(before, "camservice_storage_warn_ratio") == pytest.approx(0.7)
    assert value(before, "camservice_storage_critical_ratio") == pytest.approx(0.95)
    assert "camservice_retention_policy_info" not in names(before)  # no file worker reported one yet
    now = time.time()
    policies = {
        # files-1 saved a policy after the leader (files-0) last read the file: it wins.
        "files-0": {"policy_type": "manual", "enabled": False, "max_age_days": None, "max_size_gb": None},
        "files-1": {"policy_type": "age", "enabled": True, "max_age_days": 7, "max_size_gb": 1.5},
    }
    for index, (name, policy) in enumerate(policies.items()):
        stats = {"recordings_bytes": 1, "retention": {**policy, "read_at": now - 10 + index}}
        deliver(server, "_worker_stats", {"name": name, "kind": "files", "index": index, "pid": 9, "stats": stats})
    found = scrape(server)
    assert value(found, "camservice_retention_policy_info", policy_type="age", enabled="true") == 1
    assert (
        "camservice_retention_policy_info",
        frozenset({"policy_type": "manual", "enabled": "false"}.items()),
    ) not in found
    assert value(found, "camservice_retention_max_age_seconds") == 7 * 86400
    assert value(found, "camservice_retention_max_size_bytes") == 1.5e9


def test_malformed_or_stale_worker_stats_render_nothing(make_server):
    server = make_server()
    bad = {"bounds": [0.1, 0.2], "counts": [1, 2], "sum": 1.0}  # one count short of +Inf
    unordered = {"bounds": [0.2, 0.1], "counts": [1, 1, 0], "sum": 0.3}
    deliver(
        server,
        "_worker_stats",
        {
            "name": "recording-0",
            "kind": "recording",
            "index": 0,
            "pid": 5,
            "in_flight": 0,
            "stats": {"snapshot_seconds": bad, "recording_seconds": unordered, "active_recordings": "many"},
        },
    )
    found = scrape(server)
    assert "camservice_snapshot_duration_seconds_count" not in names(found)
    assert "camservice_recording_duration_seconds_count" not in names(found)
    assert value(found, "camservice_recordings_active") == 0  # the replica's count instead

    deliver(
        server,
        "_worker_stats",
        {"name": "files-0", "kind": "files", "index": 0, "pid": 6, "in_flight": 0, "stats": {"recordings_bytes": 1}},
    )
    assert "camservice_storage_content_bytes" in names(scrape(server))
    server.exporter.workers["files-0"]["time"] -= STALE_AFTER + 1  # not heard of since
    found = scrape(server)
    assert "camservice_storage_content_bytes" not in names(found)
    assert not any(
        name == "camservice_worker_requests_in_flight" and dict(labels)["process"] == "files-0"
        for name, labels in found
    )


def test_cameras_by_status_and_recordings_from_the_replica(make_server):
    server = make_server()
    server.pipeline.cameras.load_snapshot(
        [
            Camera("camera0", "sim:0").to_state(),
            Camera("camera1", "sim:1", recording=True, readers=1).to_state(),
            Camera("camera2", "/dev/video2", status="DISCONNECTED").to_state(),
        ],
        1,
        "discovery-0",
    )
    found = scrape(server)
    assert value(found, "camservice_cameras", status="CONNECTED") == 2
    assert value(found, "camservice_cameras", status="DISCONNECTED") == 1
    assert value(found, "camservice_cameras", status="ERROR") == 0
    assert value(found, "camservice_recordings_active") == 1


@pytest.mark.parametrize(
    "backend, state, up",
    [
        ("ffmpeg", "unknown", 1),
        ("ffmpeg", "down", 0),
        ("mediamtx", "unknown", 0),
        ("mediamtx", "down", 0),
        ("mediamtx", "running", 1),
    ],
)
def test_media_backend_up(make_server, backend, state, up):
    server = make_server(**{"media.backend": backend})
    if state != "unknown":
        deliver(server, "_media_status", {"state": state})
    assert value(scrape(server), "camservice_media_backend_up", backend=backend) == up


# --- several gateways -----------------------------------------------------------------------


def publish_stats(server: GatewayServer, outbox: list) -> dict:
    """What the server's stats timer does, with the bus replaced by ``outbox``."""
    server.publish_stats()
    return outbox[-1][1]


def bus_recorder(server: GatewayServer) -> list:
    outbox: list = []
    server.events.publish = lambda topic, data: outbox.append((topic, data))
    return outbox


def test_each_gateway_exports_the_others_requests_and_histograms(make_server):
    g0 = make_server(0, attach_metrics=False, **{"gateway.processes": 2})
    g1 = make_server(1, attach_metrics=False, **{"gateway.processes": 2})
    outbox0, outbox1 = bus_recorder(g0), bus_recorder(g1)
    g0.exporter, g1.exporter = attach(g0), attach(g1)
    g1.pipeline.stats.record("take_snapshot", 0, 0.3)
    g1.pipeline.stats.record("take_snapshot", -32011, 10.5)
    g0.pipeline.stats.record("ping", 0, 0.0001)
    deliver(g0, "_gateway_stats", publish_stats(g1, outbox1), source="gateway-1")
    deliver(g1, "_gateway_stats", publish_stats(g0, outbox0), source="gateway-0")
    for server in (g0, g1):
        found = scrape(server)
        assert value(found, "camservice_requests_total", gateway="1", method="take_snapshot", code="-32011") == 1
        assert (
            value(found, "camservice_request_duration_seconds_bucket", gateway="1", method="take_snapshot", le="0.3")
            == 1
        )
        assert (
            value(found, "camservice_request_duration_seconds_bucket", gateway="1", method="take_snapshot", le="+Inf")
            == 2
        )
        assert value(found, "camservice_requests_total", gateway="0", method="ping", code="0") == 1
    # get_metrics keeps summing over gateways from the same (extended) reports.
    assert g0.pipeline.metrics()["total_requests"] == 3


def test_counters_never_go_back_when_scrapes_alternate_between_gateways(make_server):
    """Prometheus would read a lower value as a counter reset and report a spike."""

    def run(own_live: bool) -> list[str]:
        g0 = make_server(0, attach_metrics=False, **{"gateway.processes": 2})
        g1 = make_server(1, attach_metrics=False, **{"gateway.processes": 2})
        outboxes = {0: bus_recorder(g0), 1: bus_recorder(g1)}
        g0.exporter, g1.exporter = attach(g0), attach(g1)
        # own_live: what the exporter does with a single gateway, applied to two.
        g0.exporter.multi_gateway = g1.exporter.multi_gateway = not own_live
        servers = {0: g0, 1: g1}
        seen: dict = {}
        decreases = []
        for step in range(12):
            for server in servers.values():
                server.pipeline.stats.record("get_camera_list", 0, 0.001)
            if step % 3 == 0:  # both publish now and then; the other hears it at once
                for index, server in servers.items():
                    deliver(servers[1 - index], "_gateway_stats", publish_stats(server, outboxes[index]))
            for key, current in scrape(servers[step % 2]).items():
                if key[0].endswith(("_total", "_count", "_bucket")) and current < seen.get(key, 0):
                    decreases.append(f"step {step}: {key[0]} {dict(key[1])} {seen[key]} -> {current}")
                seen[key] = max(seen.get(key, 0), current)
        return decreases

    assert run(own_live=False) == []
    # The check can fail: rendering the answering gateway live (right with one
    # gateway) does produce decreases when two take turns.
    assert run(own_live=True)


def test_a_silent_gateway_disappears(make_server):
    g0 = make_server(0, **{"gateway.processes": 2})
    report = {"time": time.time() - STALE_AFTER - 1, "requests": [["ping", 0, 5]], "latency": {}}
    g0.pipeline.gateway_stats[1] = {
        "index": 1,
        "requests": 5,
        "errors": 0,
        "latency_sum": 0.0,
        "connections": 0,
        "pid": 1,
        "metrics": report,
    }
    assert (
        "camservice_requests_total",
        frozenset({"gateway": "1", "method": "ping", "code": "0"}.items()),
    ) not in scrape(g0)
    report["time"] = time.time()
    assert value(scrape(g0), "camservice_requests_total", gateway="1", method="ping", code="0") == 5


# --- HTTP: authentication, switch, exposition --------------------------------------------------


def test_metrics_are_public_by_default(make_server):
    server = make_server()
    response = http_get(server, "/metrics?format=text")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain;")
    assert response.headers["X-Camservice-Gateway"] == "0"
    assert b"camservice_build_info" in response.body
    assert http_get(server, "/health/live").status_code == 200  # other routes untouched


def test_metrics_require_admin_when_configured(make_server):
    server = make_server(**{"security.metrics_require_auth": True, "security.auth_failures_per_minute": 3})
    secret = load_or_create_secret(server.config)
    admin = issue_token(secret, "admin", "ops", 600)
    viewer = issue_token(secret, "viewer", "someone", 600)
    _, key = KeyStore.for_config(server.config).create("admin", "prometheus")
    server.pipeline.auth.keys.refresh(force=True)

    response = http_get(server)
    assert response.status_code == 401 and "Bearer" in response.headers["WWW-Authenticate"]
    assert b"camservice_" not in response.body
    assert http_get(server, headers={"Authorization": f"Bearer {viewer}"}).status_code == 403
    assert http_get(server, headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    assert http_get(server, headers={"X-API-Key": key}).status_code == 200
    # /metrics has one owner in the route table: the exporter's checked handler.
    assert [r.handler for r in server.routes.routes if r.pattern == "/metrics"] == [server.exporter.handle]

    # Bad credentials count towards the address's throttle, as on the WebSocket.
    for _ in range(3):
        assert http_get(server, headers={"Authorization": "Bearer not-a-token"}, peer="6.6.6.6").status_code == 403
    blocked = http_get(server, headers={"X-API-Key": key}, peer="6.6.6.6")
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) >= 1
    assert http_get(server, headers={"X-API-Key": key}, peer="7.7.7.7").status_code == 200


def test_disabled_metrics_install_nothing(make_server):
    server = make_server(**{"metrics.enabled": False})
    assert server.exporter is None
    assert server.pipeline.stats.observer is None
    assert server.events.on_delivery is None
    assert "/metrics" not in server.routes.paths()
    response = http_get(server)
    assert response.status_code == 404


def test_exposition_passes_promtool_lint(make_server, tmp_path):
    promtool = pytest.importorskip("shutil").which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus')")
    import subprocess

    server = populated_server(make_server)
    body = http_get(server).body
    lint = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), (
        lint.stdout + lint.stderr
    ).decode()


# --- disk usage ---------------------------------------------------------------------------


def test_a_hung_file_system_does_not_hold_the_scrape(make_server, tmp_path):
    server = make_server()
    release = threading.Event()
    calls = []

    def slow_disk_usage(path):
        calls.append(path)
        release.wait(30)
        return SimpleNamespace(total=1000, used=600, free=300)

    server.exporter.storage = StorageProbe(
        {"recordings": tmp_path / "not" / "yet"}, max_age=0.0, timeout=0.05, disk_usage=slow_disk_usage
    )
    first = scrape(server)  # answered while the measurement hangs
    second = scrape(server)
    assert "camservice_storage_used_bytes" not in names(first) | names(second)
    assert len(calls) == 1  # one stuck thread, not one per scrape
    assert calls[0] == tmp_path  # a folder not created yet: its file system
    release.set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not server.exporter.storage.values:
        time.sleep(0.01)
    found = scrape(server)
    assert value(found, "camservice_storage_used_bytes", folder="recordings") == 600
    assert value(found, "camservice_storage_available_bytes", folder="recordings") == 300
    assert value(found, "camservice_storage_capacity_bytes", folder="recordings") == 1000


def test_real_disk_usage_of_the_storage_folders(make_server):
    server = make_server()
    found = scrape(server)
    for folder in ("recordings", "snapshots"):
        assert value(found, "camservice_storage_capacity_bytes", folder=folder) > 0
        assert value(found, "camservice_storage_used_bytes", folder=folder) > 0


# --- every metric the ops files use exists ----------------------------------------------------


def populated_server(make_server) -> GatewayServer:
    """A gateway that heard from every kind of process."""
    server = make_server()
    server.pipeline.stats.record("take_snapshot", 0, 0.2)
    server.events.on_delivery("camera_status_update", 1, 0.001)
    server.pipeline.cameras.load_snapshot([Camera("camera0", "sim:0").to_state()], 1, "discovery-0")
    deliver(server, "_process_stats", {"processes": process_rows(), "host": HOST})
    deliver(
        server,
        "_worker_stats",
        {
            "name": "recording-0",
            "kind": "recording",
            "index": 0,
            "pid": 5,
            "in_flight": 0,
            "stats": {
                "active_recordings": 0,
                "failed_recordings": 0,
                "snapshot_seconds": histogram_of(SNAPSHOT_BUCKETS, [0.1]),
                "recording_seconds": histogram_of(RECORDING_BUCKETS, [60]),
            },
        },
    )
    deliver(
        server,
        "_worker_stats",
        {
            "name": "files-0",
            "kind": "files",
            "index": 0,
            "pid": 6,
            "in_flight": 0,
            "stats": {"recordings_bytes": 1, "snapshots_bytes": 1, "recordings_files": 1, "snapshots_files": 1},
        },
    )
    deliver(
        server,
        "_worker_stats",
        {
            "name": "discovery-0",
            "kind": "discovery",
            "index": 0,
            "pid": 7,
            "in_flight": 0,
            "stats": {"hotplug_events": 1},
        },
    )
    return server


def ops_metric_names() -> dict[str, set[str]]:
    """camservice_* names used by each alert and dashboard expression, by file."""
    pattern = re.compile(r"\bcamservice_[a-zA-Z0-9_]+")
    alerts = yaml.safe_load((REPO / "ops/prometheus/alerts.yml").read_text())
    dashboard = (REPO / "ops/grafana/camservice.json").read_text()
    used = {"alerts.yml": set(), "camservice.json": set(pattern.findall(dashboard))}
    for group in alerts["groups"]:
        for rule in group["rules"]:
            used["alerts.yml"].update(pattern.findall(rule["expr"]))
    return used


def test_every_metric_used_by_the_ops_files_is_exported(make_server):
    exported = names(scrape(populated_server(make_server)))
    for source, used in ops_metric_names().items():
        assert used, source
        assert used - exported == set(), f"{source} uses metrics the exporter does not produce"


# --- cost ----------------------------------------------------------------------------------


@pytest.mark.benchmark(group="request-stats")
def test_benchmark_record_with_observer(benchmark, make_server):
    """RequestStats.record as the gateway calls it per request, histogram included."""
    server = make_server()
    record = server.pipeline.stats.record
    benchmark(record, "get_camera_list", 0, 0.00042)
    assert server.pipeline.stats.total >= 1


@pytest.mark.benchmark(group="request-stats")
def test_benchmark_record_without_observer(benchmark, make_server):
    server = make_server(**{"metrics.enabled": False})
    record = server.pipeline.stats.record
    benchmark(record, "get_camera_list", 0, 0.00042)
    assert server.pipeline.stats.total >= 1


@pytest.mark.benchmark(group="scrape")
def test_benchmark_render(benchmark, make_server):
    """A whole /metrics body (runs on the event loop at every scrape)."""
    server = populated_server(make_server)
    body, _ = benchmark(server.exporter.render)
    assert b"camservice_requests_total" in body


# --- request ids in worker logs ----------------------------------------------------------------


class _LogWorker:
    """A worker with one sync and one async handler that log, driven through Worker._on_request."""

    def __init__(self, tmp_path):
        from camservice.workers.base import Worker, _Link

        config = config_module.load(overrides={"runtime.state_dir": str(tmp_path / "w")}, environ={})

        class Probe(Worker):
            kind = "files"

            def handlers(self):
                return {"sync_method": self.sync_method, "async_method": self.async_method}

            def sync_method(self, params, ctx):
                self.log.info("sync_handled")
                return "ok"

            async def async_method(self, params, ctx):
                self.log.info("async_handled")
                return "ok"

        self.worker = Probe(config)
        self.worker._load_handlers()
        self.link = _Link("inproc://none", SimpleNamespace(send=lambda *a, **k: None))

    def request(self, method: str, request_id: str):
        from camservice.envelope import Request as Envelope

        self.worker._on_request(self.link, Envelope(1, method, {}, time.time() + 5, request_id, {}))


def _log_lines(tmp_path, methods: list[tuple[str, str]]) -> list[dict]:
    lines: list[dict] = []
    from camservice.log import add_request_id

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_request_id,
            lambda _, __, event: lines.append(dict(event)) or event,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=open(os.devnull, "w")),  # noqa: SIM115 -- lives as long as the logger
        cache_logger_on_first_use=False,
    )
    try:

        async def drive():
            probe = _LogWorker(tmp_path)
            for method, request_id in methods:
                probe.request(method, request_id)  # called from the loop, as the socket reader is
            await asyncio.sleep(0.05)
            for task in list(probe.worker._tasks):
                await task

        asyncio.run(drive())
    finally:
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
    return lines


def test_async_handlers_log_the_gateway_request_id(tmp_path):
    lines = _log_lines(tmp_path, [("async_method", "g0-41"), ("async_method", "g0-42")])
    assert sorted(line.get("request_id") for line in lines if line["event"] == "async_handled") == ["g0-41", "g0-42"]


def test_sync_handlers_log_the_gateway_request_id(tmp_path):
    lines = _log_lines(tmp_path, [("sync_method", "g0-7"), ("sync_method", "g1-8")])
    assert [line.get("request_id") for line in lines if line["event"] == "sync_handled"] == ["g0-7", "g1-8"]
