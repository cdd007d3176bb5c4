"""MediaMTX client, camera paths and the fake MediaMTX they are tested against."""

from __future__ import annotations

import asyncio
import http.client
import json
import shlex
import subprocess
from pathlib import Path

import pytest
from camservice.workers.discovery.mediamtx_paths import (
    PUBLISH_URL,
    MediaMTXPaths,
    camera_path_conf,
    conf_drift,
    duration_ns,
    is_managed,
)

from camservice import config as config_module
from camservice.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from camservice.cameras import DISCONNECTED, Camera
from camservice.errors import MEDIA_BACKEND, RpcError
from camservice.mediamtx import UNREACHABLE, MediaMTXClient, MediaMTXError
from tests.fakes.mediamtx import SPEC_FILE, FakeMediaMTX, format_duration, parse_duration
from tests.harness import Clock

FFMPEG = "/usr/bin/ffmpeg"  # only written into commands; the test that runs one locates a real ffmpeg


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(fake, clock) -> MediaMTXClient:
    return MediaMTXClient(fake.url, timeout=1.0, failure_threshold=2, reset_timeout=30.0, clock=clock)


@pytest.fixture
def config(tmp_path):
    return config_module.load(
        overrides={"runtime.state_dir": str(tmp_path), "server.public_host": "cams.example"}, environ={}
    )


@pytest.fixture
def paths(client, config) -> MediaMTXPaths:
    return MediaMTXPaths(client, config, ffmpeg_exe=FFMPEG)


def run(coro):
    return asyncio.run(coro)


def sim_camera(index: int = 0, **changes) -> Camera:
    camera = Camera(
        id=f"camera{index}",
        device=f"sim:{index}",
        simulated=True,
        resolution="640x480",
        fps=15,
        source={"kind": "sim", "size": "640x480", "fps": 15},
    )
    for name, value in changes.items():
        setattr(camera, name, value)
    return camera


def raw(fake: FakeMediaMTX, method: str, target: str, body=None, content_type="application/json"):
    """One HTTP exchange with the fake, bypassing the client."""
    connection = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    headers = {"Content-Type": content_type} if body is not None else {}
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    connection.request(method, target, body=data, headers=headers)
    response = connection.getresponse()
    status, payload = response.status, json.loads(response.read())
    connection.close()
    return status, payload


# --- the spec copy -------------------------------------------------------------------------


def test_spec_copy_is_identical_to_shared():
    shared = Path(__file__).resolve().parents[2] / "shared" / "mediamtx" / "openapi.yaml"
    if not shared.exists():
        pytest.skip("no ../shared/mediamtx/openapi.yaml beside this clone")
    assert SPEC_FILE.read_bytes() == shared.read_bytes()


def test_spec_is_read_with_yaml_1_2_booleans(spec):
    # PyYAML's default would turn the first value into False and reject "no" as a valid value.
    assert spec.components["Encryption"]["enum"] == ["no", "optional", "strict"]
    assert spec.errors("GlobalConf", {"rtspEncryption": "no"}) == []


def test_openapi_nullable_and_unsigned_become_json_schema(spec):
    assert spec.errors("Path", {"source": None, "readyTime": None, "inboundBytes": 0}) == []
    assert spec.errors("Path", {"source": {"type": "rtspSession", "id": "x"}}) == []
    assert spec.errors("Path", {"source": {"type": "carrier pigeon"}}) != []
    assert spec.errors("Path", {"ready": None}) != []  # not nullable
    assert spec.errors("Path", {"inboundBytes": -1}) != []  # format: uint64


# --- the fake validates ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, target, body, fragment",
    [
        ("POST", "/v3/config/paths/add/cam", {"source": "publisher", "colour": "red"}, "'colour' was unexpected"),
        ("POST", "/v3/config/paths/add/cam", {"record": "yes"}, "not of type 'boolean'"),
        ("POST", "/v3/config/paths/add/cam", {"recordFormat": "mp4"}, "is not one of"),
        ("POST", "/v3/config/paths/add/cam", {"runOnDemandCloseAfter": "10 seconds"}, "invalid duration"),
        ("POST", "/v3/config/paths/add/bad%20name", {}, "invalid path name"),
        (
            "POST",
            "/v3/config/paths/add/cam",
            {"source": "rtsp://10.0.0.9/s", "runOnDemand": "ffmpeg"},
            "can be used only when source is 'publisher'",
        ),
        ("POST", "/v3/config/paths/add/cam", {"record": True, "recordPath": "/rec/%Y-%m-%d"}, "must contain %path"),
        ("POST", "/v3/config/paths/add/cam", None, "a JSON request body is required"),
        ("POST", "/v3/config/paths/add/cam", b"source: publisher", "invalid JSON body"),
        ("PATCH", "/v3/config/global/patch", {"rtspEncryption": "sometimes"}, "is not one of"),
        ("GET", "/v3/config/paths/list?items_per_page=5", None, "unknown query parameter 'items_per_page'"),
        ("GET", "/v3/paths/list?page=first", None, "is not an integer"),
        ("GET", "/v3/paths/list?itemsPerPage=0", None, "invalid items per page"),
        ("DELETE", "/v3/recordings/deletesegment?path=cam", None, "'start' is required"),
        ("DELETE", "/v3/config/paths/delete/cam", {"source": "publisher"}, "takes no request body"),
        ("GET", "/v3/config/paths/add/cam", None, "method GET not allowed"),
        ("GET", "/v2/paths/list", None, "no such operation"),
    ],
)
def test_fake_rejects_requests_the_spec_does_not_allow(fake, spec, method, target, body, fragment):
    status, answer = raw(fake, method, target, body)
    assert status == (404 if "operation" in fragment or "not allowed" in fragment else 400)
    assert spec.errors("Error", answer) == [] and answer["status"] == "error"
    assert fragment in answer["error"]
    assert len(fake.violations) == 1 and fragment in fake.violations[0]
    assert "cam" not in fake.paths  # nothing half-applied
    fake.violations.clear()


def test_fake_state_conflicts_are_errors_but_not_violations(fake):
    assert raw(fake, "POST", "/v3/config/paths/add/cam", {})[0] == 200
    assert raw(fake, "POST", "/v3/config/paths/add/cam", {}) == (
        400,
        {"status": "error", "error": "path already exists"},
    )
    assert raw(fake, "PATCH", "/v3/config/paths/patch/nope", {})[0] == 404
    assert raw(fake, "DELETE", "/v3/config/paths/delete/nope")[0] == 404
    assert fake.violations == []


def test_every_fake_answer_matches_the_spec(fake, spec):
    """Call every operation of the spec; check each answer against its response schema here."""
    fake.paths["camera0"] = {"runOnDemand": "ffmpeg"}
    fake.set_path_state("camera0", ready=True, inbound_bytes=10, outbound_bytes=20, readers=2)
    fake.add_recording("camera0", "2026-01-02T03:04:05.123456Z")
    statuses = {}
    for op in spec.operations:
        target = op.template.replace("{name}", "camera0").replace("{id}", "0b7c3b3a-5c1e-4a51-a9f5-1c2f0c5e9d11")
        if op.operation_id == "recordingsDeleteSegment":
            target += "?path=camera0&start=2026-01-02T03:04:05.123456Z"
        elif op.operation_id.endswith("List"):
            target += "?page=0&itemsPerPage=5"
        status, answer = raw(fake, op.method, target, {} if op.body_schema else None)
        schema = op.responses.get(str(status))
        assert str(status) in op.responses, (op.operation_id, status, answer)
        assert schema is None or spec.errors(schema, answer) == [], (op.operation_id, answer)
        statuses[op.operation_id] = status
    assert len(statuses) == len(spec.operations) == 41
    # The stateful ones really answered from state, not from an error branch.
    for operation_id in (
        "configPathsGet",
        "configPathsPatch",
        "configPathsDelete",
        "pathsList",
        "recordingsList",
        "recordingsGet",
        "recordingsDeleteSegment",
        "configGlobalGet",
    ):
        assert statuses[operation_id] == 200, operation_id
    assert statuses["configPathsAdd"] == 400  # camera0 existed
    assert fake.response_errors == []


def test_fake_restarts_on_the_same_port_and_reset_forgets_api_paths(fake):
    port = fake.port
    raw(fake, "POST", "/v3/config/paths/add/cam", {})
    fake.stop()
    with pytest.raises(ConnectionRefusedError):
        raw(fake, "GET", "/v3/info")
    fake.reset()
    fake.start()
    assert fake.port == port
    status, answer = raw(fake, "GET", "/v3/config/paths/list")
    assert status == 200 and [item["name"] for item in answer["items"]] == ["all_others"]


def test_durations_are_answered_as_mediamtx_writes_them():
    assert [format_duration(parse_duration(t)) for t in ("600s", "90s", "1d", "0s", "1.5s", "500ms")] == [
        "10m0s",
        "1m30s",
        "1d",
        "",
        "1.5s",
        "500ms",
    ]
    with pytest.raises(ValueError):
        parse_duration("10")


# --- the client -------------------------------------------------------------------------------


def test_add_get_patch_delete(client, fake):
    async def scenario():
        await client.add_path("cam", {"source": "publisher", "runOnDemandCloseAfter": "600s"})
        conf = await client.get_path_config("cam")
        assert conf["name"] == "cam" and conf["source"] == "publisher"
        assert conf["runOnDemandCloseAfter"] == "10m0s"  # MediaMTX normalises durations
        assert conf["recordFormat"] == "fmp4"  # defaults filled in
        await client.patch_path("cam", {"runOnDemandRestart": True})
        conf = await client.get_path_config("cam")
        assert conf["runOnDemandRestart"] is True and conf["runOnDemandCloseAfter"] == "10m0s"
        await client.delete_path("cam")
        assert await client.get_path_config("cam") is None

    run(scenario())
    assert [m for m, _ in fake.requests] == ["POST", "GET", "PATCH", "GET", "DELETE", "GET"]


def test_error_answers_become_32006_with_mediamtx_reason(client, fake):
    async def scenario():
        await client.add_path("cam", {})
        with pytest.raises(MediaMTXError) as exists:
            await client.add_path("cam", {})
        with pytest.raises(MediaMTXError) as missing:
            await client.delete_path("other")
        fake.fail_next(500, "database is on fire")
        with pytest.raises(MediaMTXError) as broken:
            await client.list_path_configs()
        return exists.value, missing.value, broken.value

    exists, missing, broken = run(scenario())
    assert isinstance(exists, RpcError) and exists.code == MEDIA_BACKEND == -32006
    assert exists.to_dict()["data"] == {"reason": "path already exists", "http_status": 400}
    assert missing.data == {"reason": "path not found", "http_status": 404}
    assert broken.data == {"reason": "database is on fire", "http_status": 500}
    assert client.available  # an error answer proves MediaMTX is up


def test_invalid_configuration_reason_is_passed_on(client, fake):
    async def scenario():
        await client.add_path("cam", {"source": "rtsp://10.0.0.9/stream", "runOnDemand": "ffmpeg"})

    with pytest.raises(MediaMTXError) as error:
        run(scenario())
    assert error.value.data["reason"] == "'runOnDemand' and 'runOnUnDemand' can be used only when source is 'publisher'"
    assert len(fake.violations) == 1
    fake.violations.clear()


def test_unreachable_and_timeout_are_32006(fake):
    client = MediaMTXClient(fake.url, timeout=0.2)
    fake.delay = 30.0  # the answer would come long after the client's timeout
    with pytest.raises(MediaMTXError) as slow:
        run(client.list_path_configs())
    fake.stop()
    with pytest.raises(MediaMTXError) as down:
        run(client.list_path_configs())
    for error in (slow.value, down.value):
        assert error.code == -32006 and error.data == {"reason": UNREACHABLE} and error.unreachable


def test_lists_are_read_page_by_page(client, fake):
    names = [f"cam{i}" for i in range(7)]
    client.page_size = 3

    async def scenario():
        for name in names:
            await client.add_path(name, {})
        return await client.list_path_configs()

    configs = run(scenario())
    assert [c["name"] for c in configs] == ["all_others", *names]  # 8 items over 3 pages
    pages = [t for m, t in fake.requests if t.startswith("/v3/config/paths/list")]
    assert pages == [f"/v3/config/paths/list?page={i}&itemsPerPage=3" for i in range(3)]


def test_an_item_shifted_onto_a_later_page_is_listed_once(client, fake):
    for name in ("a", "b", "c"):
        fake.paths[name] = {}
    client.page_size = 2
    read_page = client.request

    async def request(method, path, query=None, body=None):
        answer = await read_page(method, path, query, body)
        if query and query.get("page") == 0:
            fake.paths["0"] = {}  # sorts first: pushes 'all_others' from page 0 onto page 1
        return answer

    client.request = request
    names = [c["name"] for c in run(client.list_path_configs())]
    assert names == ["a", "all_others", "b", "c"]


def test_live_state_of_a_path(client, fake):
    async def scenario():
        await client.add_path("camera0", {})
        fake.set_path_state("camera0", ready=True, inbound_bytes=500, outbound_bytes=1234, readers=2)
        return await client.get_path("camera0"), await client.get_path("nope")

    path, missing = run(scenario())
    assert missing is None
    assert path["ready"] is True and path["confName"] == "camera0"


def test_calls_share_one_kept_alive_connection(client, fake):
    async def scenario():
        for index in range(5):
            await client.add_path(f"cam{index}", {})
        await client.list_path_configs()
        await client.delete_path("cam0")

    run(scenario())
    assert len(fake.requests) == 7 and fake.connections == 1
    assert client.connections_opened == 1


def test_a_kept_connection_closed_by_a_restart_is_replaced_without_an_error(client, fake):
    run(client.add_path("cam", {}))
    fake.stop()  # closes the kept connection, as a restarting MediaMTX does
    fake.start()
    assert run(client.get_path_config("cam"))["name"] == "cam"
    assert client.connections_opened == 2 and client.available


def test_an_error_answer_keeps_the_connection(client, fake):
    fake.fail_next(500, "injected")
    with pytest.raises(MediaMTXError) as error:
        run(client.get_path_config("cam"))
    assert error.value.status == 500
    assert run(client.get_path_config("cam")) is None
    assert client.connections_opened == 1 and fake.connections == 1


def test_path_names_are_checked_before_any_request(client, fake):
    for name in ("../config/global", "a b", "/lead", ""):
        with pytest.raises(ValueError):
            run(client.delete_path(name))
    assert fake.requests == []


# --- circuit breaker --------------------------------------------------------------------------


def test_breaker_opens_fails_fast_and_recovers(client, fake, clock):
    events = []

    async def scenario():
        async def on_change(available):  # a coroutine listener runs in this loop
            events.append(available)

        client.on_availability(on_change)
        assert await client.ping()
        fake.stop()
        first = await _error(client.list_path_configs())
        assert client.available and client.breaker.state == CLOSED  # one failure is not enough
        second = await _error(client.list_path_configs())
        await asyncio.sleep(0)
        assert not client.available and client.breaker.state == OPEN and events == [False]

        fake.start()  # MediaMTX is back, but the cool-down has not passed:
        sent = len(fake.requests)
        fast = await _error(client.list_path_configs())
        assert len(fake.requests) == sent  # failed without touching the network

        clock.now += 30.0  # cool-down over: the next call is the probe
        assert [c["name"] for c in await client.list_path_configs()] == ["all_others"]
        await asyncio.sleep(0)
        return first, second, fast

    first, second, fast = run(scenario())
    assert first.data == second.data == {"reason": UNREACHABLE}
    assert fast.code == -32006 and fast.unreachable and UNREACHABLE in fast.data["reason"]
    assert "circuit open" in fast.data["reason"]
    assert client.available and client.breaker.state == CLOSED
    assert events == [False, True]


def test_failed_probe_reopens_for_another_cool_down(client, fake, clock):
    fake.stop()
    changes = []
    client.on_availability(changes.append)  # outside a loop: runs in the calling thread
    for _ in range(2):
        run(_error(client.list_path_configs()))
    clock.now += 30.0
    assert run(_error(client.list_path_configs())).data == {"reason": UNREACHABLE}  # the probe went out and failed
    assert client.breaker.state == OPEN
    clock.now += 29.0
    assert "circuit open" in run(_error(client.list_path_configs())).data["reason"]
    assert changes == [False]


def test_breaker_lets_one_probe_through_at_a_time(clock):
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=5.0, clock=clock)
    moves = []
    breaker.add_listener(lambda old, new: moves.append((old, new)))
    assert breaker.acquire()
    breaker.failure()
    assert breaker.state == OPEN and not breaker.acquire() and breaker.retry_in() == 5.0
    clock.now += 5.0
    assert breaker.acquire() and breaker.state == HALF_OPEN  # the probe
    assert not breaker.acquire()  # everyone else waits for its outcome
    breaker.success()
    assert breaker.state == CLOSED and breaker.acquire()
    assert moves == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


async def _error(coro) -> MediaMTXError:
    try:
        await coro
    except MediaMTXError as error:
        return error
    raise AssertionError("no MediaMTXError raised")


# --- camera path configuration -----------------------------------------------------------------


def test_sim_camera_conf_matches_the_spec(spec, config):
    conf = camera_path_conf(sim_camera(), FFMPEG, config)
    assert spec.errors("PathConf", conf) == []
    assert conf["source"] == "publisher" and conf["runOnDemandRestart"] is True
    assert parse_duration(conf["runOnDemandStartTimeout"]) > 0 and parse_duration(conf["runOnDemandCloseAfter"]) > 0
    words = shlex.split(conf["runOnDemand"])  # how MediaMTX splits it (go-shellquote)
    assert words[0] == FFMPEG and words[-1] == PUBLISH_URL
    assert "-re -f lavfi -i testsrc2=size=640x480:rate=15" in " ".join(words)
    assert is_managed(conf)


def test_v4l2_camera_conf(spec, config):
    camera = Camera(
        id="camera1",
        device="/dev/video2",
        resolution="1280x720",
        fps=30,
        source={"kind": "v4l2", "input_format": "mjpeg"},
    )
    conf = camera_path_conf(camera, FFMPEG, config)
    assert spec.errors("PathConf", conf) == []
    assert "-f v4l2 -input_format mjpeg -video_size 1280x720 -framerate 30 -i /dev/video2" in " ".join(
        shlex.split(conf["runOnDemand"])
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"source": {"kind": "sim", "size": "640x480:rate=1,drawtext=x"}},
        {"source": {"kind": "sim", "fps": "15 -y /tmp/x"}},
        {"source": {"kind": "sim", "pattern": "movie=/etc/passwd"}},
        {"source": {"kind": "v4l2"}, "device": "/dev/../etc/passwd", "simulated": False},
        {"source": {"kind": "v4l2", "input_format": "mjpeg -y"}, "device": "/dev/video0", "simulated": False},
        {"source": {"kind": "rtsp"}},
    ],
)
def test_conf_refuses_capture_values_that_are_not_plain(config, changes):
    with pytest.raises(ValueError):
        camera_path_conf(sim_camera(**changes), FFMPEG, config)


def test_sim_publish_command_runs_in_real_ffmpeg(config):
    from camservice import ffmpeg

    try:
        exe = ffmpeg.locate()
    except ffmpeg.FFmpegNotFound:
        pytest.skip("no ffmpeg")
    words = shlex.split(camera_path_conf(sim_camera(), exe, config)["runOnDemand"])
    cut = next(i for i in range(len(words) - 1) if words[i : i + 2] == ["-f", "rtsp"])
    # Same capture, encoder and metadata options; three frames to nowhere instead of RTSP.
    proc = subprocess.run(
        words[:cut] + ["-frames:v", "3", "-f", "null", "-"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_drift_compares_durations_by_value():
    assert (
        conf_drift(
            {"runOnDemandCloseAfter": "600s", "source": "publisher"},
            {"runOnDemandCloseAfter": "10m0s", "source": "publisher"},
        )
        == {}
    )
    assert conf_drift({"runOnDemandCloseAfter": "10s"}, {"runOnDemandCloseAfter": "1m0s"}) == {
        "runOnDemandCloseAfter": "10s"
    }
    assert duration_ns("1d1h0m0.5s") == (25 * 3600 + 0.5) * 10**9 and duration_ns("") == 0


# --- camera paths -----------------------------------------------------------------------------


URLS0 = {
    "rtsp": "rtsp://cams.example:8554/camera0",
    "webrtc": "http://cams.example:8889/camera0",
    "hls": "http://cams.example:8888/camera0",
}


def test_add_camera_answers_the_urls_served(paths, fake):
    assert run(paths.add_camera(sim_camera())) == URLS0
    assert is_managed(fake.path_conf("camera0"))
    assert run(paths.add_camera(sim_camera())) == URLS0  # again: nothing to change
    assert [m for m, _ in fake.requests].count("POST") == 1


def test_urls_use_mediamtx_host_and_only_enabled_protocols(client, fake, tmp_path):
    config = config_module.load(
        overrides={"runtime.state_dir": str(tmp_path), "media.mediamtx_host": "media.lan", "media.rtsp_port": 18554},
        environ={},
    )
    paths = MediaMTXPaths(client, config, ffmpeg_exe=FFMPEG)
    assert raw(fake, "PATCH", "/v3/config/global/patch", {"hls": False})[0] == 200
    assert run(paths.add_camera(sim_camera())) == {
        "rtsp": "rtsp://media.lan:18554/camera0",
        "webrtc": "http://media.lan:8889/camera0",
    }


def test_add_camera_while_mediamtx_is_down_serves_nothing(paths, fake):
    fake.stop()
    assert run(paths.add_camera(sim_camera())) == {}


def test_remove_camera_deletes_only_its_own_path(paths, client, fake):
    async def scenario():
        await paths.add_camera(sim_camera(0))
        await client.add_path("camera3", {"source": "rtsp://10.0.0.3/live"})
        return (
            await paths.remove_camera(sim_camera(0)),
            await paths.remove_camera("camera3"),
            await paths.remove_camera("camera9"),
        )

    assert run(scenario()) == (True, False, False)
    assert sorted(fake.paths) == ["all_others", "camera3"]


def test_reconcile_adds_fixes_and_removes_only_its_own_paths(paths, client, fake):
    doorbell = {"source": "rtsp://10.0.0.5/stream"}
    lookalike = {"runOnDemand": "ffmpeg -f v4l2 -i /dev/video7 -f rtsp rtsp://localhost:$RTSP_PORT/$MTX_PATH"}

    async def setup():
        await client.add_path("doorbell", doorbell)
        await client.add_path("camera7", lookalike)  # our naming, someone else's path
        for index in (1, 2, 5):
            await paths.add_camera(sim_camera(index))
        await client.patch_path("camera1", {"runOnDemandCloseAfter": "1m", "runOnDemandRestart": False})

    run(setup())
    foreign_before = {name: fake.path_conf(name) for name in ("all_others", "doorbell", "camera7")}
    cameras = [sim_camera(0), sim_camera(1), sim_camera(2, status=DISCONNECTED), sim_camera(7)]
    result = run(paths.reconcile(cameras))

    assert sorted(fake.paths) == ["all_others", "camera0", "camera1", "camera7", "doorbell"]
    assert {name: fake.path_conf(name) for name in foreign_before} == foreign_before
    fixed = fake.path_conf("camera1")
    assert fixed["runOnDemandCloseAfter"] == "10s" and fixed["runOnDemandRestart"] is True
    assert result == {
        "camera0": URLS0,
        "camera1": {k: v.replace("camera0", "camera1") for k, v in URLS0.items()},
        "camera2": {},
        "camera7": {},
    }

    changes = len([m for m, _ in fake.requests if m != "GET"])
    assert run(paths.reconcile(cameras)) == result
    assert len([m for m, _ in fake.requests if m != "GET"]) == changes  # nothing left to do


def test_reconcile_restores_paths_after_a_mediamtx_restart(paths, fake):
    cameras = [sim_camera(0), sim_camera(1)]
    run(paths.reconcile(cameras))
    fake.stop()
    assert run(paths.reconcile(cameras)) == {"camera0": {}, "camera1": {}}
    fake.reset()  # a restarted MediaMTX has forgotten API-added paths
    fake.start()
    assert run(paths.reconcile(cameras))["camera0"] == URLS0
    assert sorted(fake.paths) == ["all_others", "camera0", "camera1"]
