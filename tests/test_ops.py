"""The files in ops/, checked by the tools that consume them, and against the live service.

* ``promtool`` checks the rules and the Prometheus configuration and runs
  ``alerts_test.yml``; every alert must have a case where it fires and one
  where it does not.
* ``systemd-analyze verify`` reads the unit; the MediaMTX sample is checked
  against MediaMTX's own API schema and camservice's defaults.
* The integration test starts the real service (two gateways,
  ``metrics_require_auth``), sends traffic, starts a real Prometheus that
  scrapes it every second with the alert rules loaded, and evaluates every
  alert and dashboard expression through Prometheus' HTTP API: each must
  parse, and every ``camservice_*`` metric each one names must have data.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from camservice.gateway.metrics import SERVER_ERROR_CODES

from camservice import config as config_module

from .harness import Client, RpcFailure, Service, free_port, run, wait_for

REPO = Path(__file__).resolve().parent.parent
OPS = REPO / "ops"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
NO_PROMETHEUS = "promtool/prometheus not installed (Debian package 'prometheus'; .ci/run installs it)"
METRIC = re.compile(r"\bcamservice_[a-zA-Z0-9_]+")

#: Metrics fed by a worker's stats() (gateway/metrics.py docstring), for failure messages.
PROVIDERS = {
    "camservice_snapshot_duration_seconds": "recording worker stats()['snapshot_seconds']",
    "camservice_recording_duration_seconds": "recording worker stats()['recording_seconds']",
    "camservice_recordings_failed": "recording worker stats()['failed_recordings']",
    "camservice_storage_content_bytes": "files worker stats()['recordings_bytes'/'snapshots_bytes']",
    "camservice_storage_files": "files worker stats()['recordings_files'/'snapshots_files']",
    "camservice_camera_hotplug_events": "discovery worker stats()['hotplug_events']",
}


def alert_rules() -> list[dict]:
    document = yaml.safe_load((OPS / "prometheus/alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads((OPS / "grafana/camservice.json").read_text())


def dashboard_panels() -> list[dict]:
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows keep theirs inside
    return panels


def dashboard_exprs() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in dashboard_panels() for target in panel.get("targets", [])]


def grafana_to_promql(expr: str) -> str:
    """Grafana's interval variables as Prometheus would receive them from Grafana."""
    return expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "1h")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=OPS / "prometheus", capture_output=True, text=True, timeout=60)


# --- Prometheus rules and configuration --------------------------------------------------------


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMETHEUS)
def test_promtool_checks_rules_and_config():
    rules = promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in rules.stdout
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMETHEUS)
def test_promtool_alert_unit_tests_pass():
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case():
    tests = yaml.safe_load((OPS / "prometheus/alerts_test.yml").read_text())
    firing, quiet = set(), set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert set(names) - firing == set(), "alerts never tested firing"
    assert set(names) - quiet == set(), "alerts never tested quiet"
    assert (firing | quiet) - set(names) == set(), "tests of alerts that do not exist"


def test_every_alert_has_severity_summary_and_a_dashboard_panel():
    panel_metrics = set()
    for _, expr in dashboard_exprs():
        panel_metrics.update(METRIC.findall(expr))
    panel_text = json.dumps(dashboard())
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        used = set(METRIC.findall(rule["expr"]))
        assert used <= panel_metrics, f"{rule['alert']}: no panel shows {used - panel_metrics}"
        if not used:  # up{job="camservice"}
            assert 'up{job=\\"camservice\\"}' in panel_text, rule["alert"]


def test_error_rates_count_the_codes_the_exporter_calls_server_errors():
    selector = 'code=~"' + "|".join(str(code) for code in SERVER_ERROR_CODES) + '"'
    rules = [rule for rule in alert_rules() if rule["alert"].startswith("CamserviceErrorRate")]
    panels = [expr for title, expr in dashboard_exprs() if "error ratio" in title.lower()]
    assert rules and panels
    for expr in [rule["expr"] for rule in rules] + panels:
        assert selector in expr, expr
        assert "code=~" not in expr.replace(selector, ""), expr


def test_warning_and_critical_pairs_share_a_condition_label():
    """What the Alertmanager inhibit rule of ops/README.md matches on."""
    rules = {rule["alert"]: rule for rule in alert_rules()}
    pairs = [(name[: -len("Critical")] + "High", name) for name in rules if name.endswith("Critical")]
    assert pairs
    for warning, critical in pairs:
        assert rules[warning]["labels"]["severity"] == "warning"
        assert rules[warning]["labels"]["condition"] == rules[critical]["labels"]["condition"]
        # Same condition, another threshold.
        assert re.sub(r"[0-9.]+\s*$", "", rules[warning]["expr"]) == re.sub(r"[0-9.]+\s*$", "", rules[critical]["expr"])
    paired = {name for pair in pairs for name in pair}
    assert all("condition" not in rule["labels"] for name, rule in rules.items() if name not in paired)


def test_dashboard_is_well_formed():
    board = dashboard()
    panels = dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert any(v["name"] == "datasource" and v["type"] == "datasource" for v in board["templating"]["list"])
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


# --- systemd and MediaMTX --------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path):
    unit = (OPS / "systemd/camservice.service").read_text()
    # verify insists that ExecStart exists; the venv path is the installation's.
    executable = re.search(r"^ExecStart=(\S+)", unit, re.M).group(1)
    checked = tmp_path / "camservice.service"
    checked.write_text(unit.replace(executable, shutil.which("true")))
    result = subprocess.run(["systemd-analyze", "verify", str(checked)], capture_output=True, text=True, timeout=60)
    # Unknown keys and bad values are only printed, not reflected in the exit code.
    messages = [line for line in (result.stdout + result.stderr).splitlines() if "camservice.service" in line]
    assert result.returncode == 0 and messages == [], result.stdout + result.stderr


def test_systemd_unit_agrees_with_the_service():
    settings: dict[str, list[str]] = {}
    for line in (OPS / "systemd/camservice.service").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    assert settings["ExecStart"][0].endswith("camservice start --foreground")
    assert settings["Type"] == ["exec"] and settings["KillMode"] == ["mixed"]
    assert settings["Restart"] == ["on-failure"] and settings["NoNewPrivileges"] == ["yes"]
    assert settings["ProtectSystem"] == ["strict"] and settings["PrivateTmp"] == ["yes"]
    assert "char-video4linux rw" in settings["DeviceAllow"]
    # The state folder the service is pointed at is writable despite ProtectSystem=strict.
    state_dir = next(
        v.split("=", 1)[1] for v in settings["Environment"] if v.startswith("CAMSERVICE_RUNTIME_STATE_DIR=")
    )
    assert state_dir in " ".join(settings["ReadWritePaths"])
    assert state_dir == "/var/lib/" + settings["StateDirectory"][0]
    # systemd must not SIGKILL the supervisor while it still stops its children.
    default_stop = config_module.load(environ={}).runtime.stop_timeout
    assert int(settings["TimeoutStopSec"][0]) > default_stop


def _openapi_schemas() -> dict:
    for candidate in (
        REPO / "tests/fakes/mediamtx_openapi.yaml",
        REPO / "shared/mediamtx/openapi.yaml",
        Path("/work/shared/mediamtx/openapi.yaml"),
    ):
        if candidate.exists():
            return yaml.safe_load(candidate.read_text())["components"]["schemas"]
    pytest.skip("MediaMTX OpenAPI spec not found (tests/fakes/mediamtx_openapi.yaml)")


def test_mediamtx_sample_uses_only_real_keys():
    sample = yaml.safe_load((OPS / "mediamtx/mediamtx.yml").read_text())
    schemas = _openapi_schemas()
    global_keys = set(schemas["GlobalConf"]["properties"])
    path_keys = set(schemas["PathConf"]["properties"])
    assert set(sample) - {"pathDefaults", "paths"} - global_keys == set()
    assert set(sample["pathDefaults"]) - path_keys == set()
    for conf in (sample.get("paths") or {}).values():
        assert set(conf or {}) - path_keys == set()
    user_keys = set(schemas["AuthInternalUser"]["properties"]) if "AuthInternalUser" in schemas else None
    for user in sample["authInternalUsers"]:
        if user_keys is not None:
            assert set(user) - user_keys == set()


def test_mediamtx_sample_matches_the_backend_defaults():
    sample = yaml.safe_load((OPS / "mediamtx/mediamtx.yml").read_text())
    media = config_module.load(environ={}).media
    api = urllib.parse.urlsplit(media.mediamtx_api)
    assert sample["api"] is True
    assert sample["apiAddress"] == f"{api.hostname}:{api.port}"
    assert sample["rtspAddress"].rsplit(":", 1)[1] == str(media.rtsp_port)
    assert sample["webrtcAddress"].rsplit(":", 1)[1] == str(media.webrtc_port)
    assert sample["hlsAddress"].rsplit(":", 1)[1] == str(media.hls_port)
    assert sample["rtsp"] and sample["webrtc"] and sample["hls"]
    assert sample["pathDefaults"]["record"] is False
    # The API and publishing (runOnDemand ffmpeg) from this host only.
    for user in sample["authInternalUsers"]:
        actions = {p["action"] for p in user["permissions"]}
        if actions & {"api", "publish"}:
            assert set(user["ips"]) <= {"127.0.0.1", "::1"} and user["ips"], user


# --- the live service, scraped by a real Prometheus ------------------------------------------------


def http(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


class Prometheus:
    """A real Prometheus server scraping ``target`` every second, with the ops alert rules."""

    def __init__(self, root: Path, target: str, credentials: Path):
        config = yaml.safe_load((OPS / "prometheus/prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(OPS / "prometheus" / name) for name in config["rule_files"]]
        job = config["scrape_configs"][0]
        job["static_configs"] = [{"targets": [target]}]
        job["authorization"] = {"type": "Bearer", "credentials_file": str(credentials)}
        self.config = root / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "prometheus.log"
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={root / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
        )

    def api(self, endpoint: str, **params) -> dict:
        status, _, body = http(f"{self.url}/api/v1/{endpoint}?{urllib.parse.urlencode(params, doseq=True)}")
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", (endpoint, params, answer)
        return answer["data"]

    def query(self, expr: str) -> list:
        return self.api("query", query=expr)["result"]

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log.read_text()[-3000:]}")
        try:
            return http(f"{self.url}/-/ready")[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


async def traffic(service: Service) -> None:
    """Requests of every kind, over several connections so both gateways serve some."""

    # One token, made before any connection opens: service.token() runs the CLI
    # (a blocking subprocess), which would stall the other clients' handshakes.
    token = service.token("operator")

    async def one_client(number: int) -> None:
        async with Client(service.url, token) as client:
            await client.call("get_camera_list")
            await client.call("get_camera_status", {"device": f"sim:{number % 2}"})
            with pytest.raises(RpcFailure):
                await client.call("get_camera_status", {"device": "no-such-camera"})
            await client.call("list_snapshots", {"limit": 5})

    await asyncio.gather(*(one_client(n) for n in range(6)))
    async with Client(service.url, token) as client:
        await client.call("take_snapshot", {"device": "sim:0"})
        await client.call("start_recording", {"device": "sim:1"})
        await client.notification("recording_status_update", where=lambda p: p["status"] == "STARTED")
        await asyncio.sleep(1.0)
        await client.call("stop_recording", {"device": "sim:1"})


@pytest.mark.slow
@pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None, reason=NO_PROMETHEUS)
def test_prometheus_scrapes_the_live_service_and_every_expression_has_data(tmp_path):
    with Service(
        simulate=2, **{"gateway.processes": 2, "runtime.sample_interval": 0.5, "security.metrics_require_auth": True}
    ) as service:
        metrics_url = f"http://127.0.0.1:{service.port}/metrics"
        key = service.cli("keys", "create", "--role", "admin", "--name", "prometheus").stdout.strip().split()[-1]
        credentials = tmp_path / "camservice.key"
        credentials.write_text(key + "\n")

        # /metrics needs an admin credential.
        assert http(metrics_url)[0] == 401
        assert http(metrics_url, {"Authorization": f"Bearer {service.token('viewer')}"})[0] == 403
        assert http(metrics_url, {"X-API-Key": key})[0] == 200

        run(traffic(service))

        # Each gateway's answer covers both gateways. Connections land on
        # either (SO_REUSEPORT): ask until both answered, after their reports
        # went round (every 2 s).
        def both_gateways_everywhere() -> bool:
            answered = set()
            for _ in range(40):
                status, headers, body = http(metrics_url, {"X-API-Key": key})
                assert status == 200
                text = body.decode()
                if not all(re.search(rf'camservice_requests_total{{[^}}]*gateway="{g}"', text) for g in "01"):
                    return False
                answered.add(headers["X-Camservice-Gateway"])
                if answered == {"0", "1"}:
                    return True
            raise AssertionError(f"only gateway {answered} answered 40 scrapes")

        wait_for(both_gateways_everywhere, timeout=15, interval=0.5, message="both gateways in every scrape")

        prometheus = Prometheus(tmp_path, f"127.0.0.1:{service.port}", credentials)
        try:
            wait_for(prometheus.ready, timeout=20, interval=0.2, message="prometheus ready")
            # A few scrapes, so rate() has points; all of them successful.
            wait_for(
                lambda: prometheus.query('count_over_time(up{job="camservice"}[1m]) >= 4'),
                timeout=20,
                interval=0.5,
                message="four scrapes",
            )
            assert [s["value"][1] for s in prometheus.query('up{job="camservice"}')] == ["1"]
            loaded = {rule["name"] for group in prometheus.api("rules")["groups"] for rule in group["rules"]}
            assert loaded == {rule["alert"] for rule in alert_rules()}

            expressions = [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
            expressions += [(f"panel {title!r}", grafana_to_promql(expr)) for title, expr in dashboard_exprs()]
            used: dict[str, list[str]] = {}
            for where, expr in expressions:
                prometheus.query(expr)  # must parse and evaluate (status success)
                for name in METRIC.findall(expr):
                    used.setdefault(name, []).append(where)
            missing = {
                name: places for name, places in used.items() if not prometheus.api("series", **{"match[]": name})
            }
            assert not missing, "metrics with no data in Prometheus:\n" + "\n".join(
                f"  {name} (used by {', '.join(sorted(set(places))[:3])}; "
                f"{next((v for k, v in PROVIDERS.items() if name.startswith(k)), 'gateway')})"
                for name, places in sorted(missing.items())
            )

            # The traffic is there, by method and code, from both gateways.
            by_gateway = {s["metric"]["gateway"] for s in prometheus.query("camservice_requests_total")}
            assert by_gateway == {"0", "1"}
            not_found = prometheus.query('sum(camservice_requests_total{method="get_camera_status",code="-32004"})')
            assert float(not_found[0]["value"][1]) == 6
            snapshots = prometheus.query('sum(camservice_request_duration_seconds_count{method="take_snapshot"})')
            assert float(snapshots[0]["value"][1]) == 1
            processes = {s["metric"]["process"] for s in prometheus.query("camservice_process_up == 1")}
            assert processes == {"bus-0", "gateway-0", "gateway-1", "discovery-0", "recording-0", "files-0"}
            assert float(prometheus.query('camservice_cameras{status="CONNECTED"}')[0]["value"][1]) == 2
        finally:
            prometheus.stop()
