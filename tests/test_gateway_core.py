"""The gateway pipeline without sockets: check order, roles, local methods, forwarding."""

import json

import pytest
from camservice.gateway.core import PENDING, RequestPipeline
from hypothesis import given
from hypothesis import strategies as st

from camservice import config as config_module
from camservice import jsonrpc
from camservice.cameras import Camera
from camservice.errors import (
    AUTH_REQUIRED,
    CAMERA_NOT_FOUND,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    PERMISSION_DENIED,
    RATE_LIMITED,
    RpcError,
)
from camservice.methods import GATEWAY, METHODS, ROLES, role_allows
from camservice.tokens import issue_token, load_or_create_secret


class Recorder:
    """Stands in for the worker pool: records forwarded calls, answers on demand."""

    def __init__(self):
        self.calls = []

    def __call__(self, call):
        self.calls.append(call)


@pytest.fixture
def setup(tmp_path):
    cfg = config_module.load(
        overrides={
            "runtime.state_dir": str(tmp_path / "s"),
            "security.rate_burst": 1000,
            "security.rate_limit": 1000.0,
        },
        environ={},
    )
    forward = Recorder()
    gw = RequestPipeline(cfg, forward)
    gw.cameras.load_snapshot([Camera("camera0", "sim:0", resolution="640x480", fps=15).to_state()], 1, "discovery-0")
    secret = load_or_create_secret(cfg)
    tokens = {role: issue_token(secret, role, f"user-{role}", 3600) for role in ROLES}
    return gw, forward, tokens


def call(gw, session, method, params=None, request_id=1):
    """Run one call; the response comes back decoded, as a client sees it."""
    replies = []
    result = gw.handle(session, jsonrpc.Call(method, params, request_id), replies.append)
    if isinstance(result, dict):
        result = json.loads(jsonrpc.encode(result))
    return result, replies


def code_of(response):
    return response["error"]["code"] if "error" in response else 0


def test_ping_needs_no_auth(setup):
    gw, _, _ = setup
    response, _ = call(gw, gw.open_session("1.2.3.4"), "ping")
    assert response == {"jsonrpc": "2.0", "result": "pong", "id": 1}


def test_unknown_method_comes_before_authentication(setup):
    gw, _, _ = setup
    response, _ = call(gw, gw.open_session("p"), "no_such_method")
    assert code_of(response) == METHOD_NOT_FOUND


def test_authentication_comes_before_params(setup):
    gw, _, _ = setup
    response, _ = call(gw, gw.open_session("p"), "get_camera_status", {"bogus": 1})
    assert code_of(response) == AUTH_REQUIRED


def test_role_comes_before_params(setup):
    gw, _, tokens = setup
    session = gw.open_session("p")
    call(gw, session, "authenticate", {"auth_token": tokens["viewer"]})
    response, _ = call(gw, session, "start_recording", {"nonsense": True})
    assert code_of(response) == PERMISSION_DENIED
    assert response["error"]["data"] == {"required_role": "operator", "role": "viewer"}


def test_authenticate_binds_role_and_reports_permissions(setup):
    gw, _, tokens = setup
    session = gw.open_session("p")
    response, _ = call(gw, session, "authenticate", {"auth_token": tokens["operator"]})
    result = response["result"]
    assert result["authenticated"] is True and result["role"] == "operator"
    assert "start_recording" in result["permissions"] and "get_metrics" not in result["permissions"]
    assert session.identity.role == "operator"


def test_auth_token_param_authenticates_one_call_only(setup):
    gw, _, tokens = setup
    session = gw.open_session("p")
    response, _ = call(gw, session, "get_camera_list", {"auth_token": tokens["viewer"]})
    assert response["result"]["total"] == 1
    assert session.identity is None
    response, _ = call(gw, session, "get_camera_list")
    assert code_of(response) == AUTH_REQUIRED


@pytest.mark.parametrize("role", [None, *ROLES])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_role_matrix(setup, name, role):
    gw, forward, tokens = setup
    session = gw.open_session("p")
    if role:
        call(gw, session, "authenticate", {"auth_token": tokens[role]})
    response, _ = call(gw, session, name, {})
    required = METHODS[name].role
    if role_allows(role, required):
        # Allowed: the call reached its validator and then its handler.
        method = METHODS[name]
        try:
            method.validate({})
        except RpcError as refused:  # the validator's own -32602 ("'device' is required"...)
            assert response["error"] == json.loads(jsonrpc.encode(refused.to_dict())), response
            assert forward.calls == []
            return
        if method.target == GATEWAY:
            assert "result" in response, response  # answered by the gateway's handler
        else:
            assert response is PENDING
            (sent,) = forward.calls
            assert (sent.kind, sent.method) == (method.target, name)
    elif role is None:
        assert code_of(response) == AUTH_REQUIRED
    else:
        assert code_of(response) == PERMISSION_DENIED


def test_status_from_the_replica(setup):
    gw, forward, tokens = setup
    session = gw.open_session("p")
    call(gw, session, "authenticate", {"auth_token": tokens["viewer"]})
    by_device, _ = call(gw, session, "get_camera_status", {"device": "sim:0"})
    by_id, _ = call(gw, session, "get_camera_status", {"device": "camera0"})
    assert by_device["result"]["id"] == "camera0" and by_id["result"]["device"] == "sim:0"
    assert set(by_device["result"]["metrics"]) == {"bytes_sent", "readers", "uptime"}
    missing, _ = call(gw, session, "get_camera_status", {"device": "camera9"})
    assert code_of(missing) == CAMERA_NOT_FOUND
    assert forward.calls == []  # answered without a hop


def test_forwarded_call_carries_validated_params_and_caller(setup):
    gw, forward, tokens = setup
    session = gw.open_session("p")
    call(gw, session, "authenticate", {"auth_token": tokens["operator"]})
    response, replies = call(gw, session, "start_recording", {"device": "camera0", "duration_minutes": 1}, "abc")
    assert response is PENDING and session.in_flight == 1
    (sent,) = forward.calls
    assert (sent.kind, sent.method, sent.params["duration"], sent.idempotent) == (
        "recording",
        "start_recording",
        60,
        False,
    )
    assert sent.caller["sub"] == "user-operator" and sent.caller["role"] == "operator"
    sent.callback(None, {"status": "STARTED"})
    assert replies == [{"jsonrpc": "2.0", "result": {"status": "STARTED"}, "id": "abc"}]
    assert session.in_flight == 0


def test_invalid_params_after_auth(setup):
    gw, _, tokens = setup
    session = gw.open_session("p")
    call(gw, session, "authenticate", {"auth_token": tokens["admin"]})
    response, _ = call(gw, session, "list_recordings", {"limit": 5000})
    assert code_of(response) == INVALID_PARAMS and response["error"]["data"]["param"] == "limit"


def test_rate_limit_and_in_flight_cap(tmp_path):
    cfg = config_module.load(
        overrides={
            "runtime.state_dir": str(tmp_path / "s"),
            "security.rate_burst": 5,
            "security.rate_limit": 0.001,
            "server.max_in_flight": 2,
        },
        environ={},
    )
    gw = RequestPipeline(cfg, Recorder())
    session = gw.open_session("p")
    codes = [code_of(call(gw, session, "ping")[0]) for _ in range(7)]
    assert codes[:5] == [0] * 5 and codes[5:] == [RATE_LIMITED] * 2
    limited = call(gw, session, "ping")[0]
    assert limited["error"]["data"]["retry_after_ms"] > 0


def test_notification_gets_no_response(setup):
    gw, _, _ = setup
    result = gw.handle(gw.open_session("p"), jsonrpc.Call("ping", None), lambda m: None)
    assert result is None


def test_subscriptions_narrow_and_clear(setup):
    gw, _, tokens = setup
    session = gw.open_session("p")
    assert not session.wants("camera_status_update")  # unauthenticated: nothing
    call(gw, session, "authenticate", {"auth_token": tokens["viewer"]})
    assert session.wants("recording_status_update")
    response, _ = call(gw, session, "subscribe_events", {"topics": ["camera_status_update"]})
    assert response["result"] == {"subscribed": ["camera_status_update"]}
    assert not session.wants("recording_status_update")
    response, _ = call(gw, session, "unsubscribe_events", {})
    assert response["result"] == {"unsubscribed": ["camera_status_update"]}
    assert not session.wants("camera_status_update")


def test_pipeline_benchmark(setup, benchmark):
    gw, _, tokens = setup
    session = gw.open_session("p")
    call(gw, session, "authenticate", {"auth_token": tokens["viewer"]})
    request = jsonrpc.Call("get_camera_status", {"device": "camera0"}, 1)
    response = benchmark(lambda: jsonrpc.encode(gw.handle(session, request, None)))
    assert json.loads(response)["result"]["id"] == "camera0"


def test_cached_status_json_matches_a_fresh_encoding_and_follows_changes(setup):
    gw, _, _ = setup
    table = gw.cameras
    camera = table.find("camera0")
    assert json.loads(table.status_json(camera, now=camera.connected_since + 5)) == camera.to_status(
        now=camera.connected_since + 5
    )
    assert json.loads(table.list_json()) == table.api_list()
    table.put(Camera("camera0", "sim:0", recording=True, readers=1))
    assert json.loads(table.status_json(table.find("camera0")))["recording"] is True
    assert json.loads(table.list_json())["cameras"][0]["recording"] is True
    table.put(Camera("camera0", "sim:0", status="DISCONNECTED"))
    fresh = json.loads(table.status_json(table.find("camera0")))
    assert fresh["status"] == "DISCONNECTED" and fresh["streams"] == {} and fresh["metrics"]["uptime"] == 0


@given(
    status=st.sampled_from(["CONNECTED", "DISCONNECTED", "ERROR"]),
    bytes_sent=st.integers(min_value=0, max_value=2**63),
    readers=st.integers(min_value=0, max_value=1000),
    since=st.floats(min_value=0, max_value=4e9),
    age=st.floats(min_value=0, max_value=1e8),
)
def test_hand_written_metrics_json_is_what_the_encoder_writes(status, bytes_sent, readers, since, age):
    camera = Camera("camera0", "sim:0", status=status, bytes_sent=bytes_sent, readers=readers, connected_since=since)
    text = camera.metrics_json(since + age)
    assert text == json.dumps(camera.metrics(since + age), separators=(",", ":"))


def test_repeated_auth_failures_from_one_address_are_throttled(tmp_path):
    cfg = config_module.load(
        overrides={"runtime.state_dir": str(tmp_path / "s"), "security.auth_failures_per_minute": 3}, environ={}
    )
    gw = RequestPipeline(cfg, Recorder())
    good = issue_token(load_or_create_secret(cfg), "viewer", "v", 60)
    attacker, bystander = gw.open_session("10.0.0.9"), gw.open_session("10.0.0.7")
    codes = [code_of(call(gw, attacker, "authenticate", {"auth_token": "x" * 40})[0]) for _ in range(5)]
    assert codes[:3] == [AUTH_REQUIRED] * 3 and set(codes[3:]) == {RATE_LIMITED}
    # Even a valid token waits out the throttle from that address; other addresses are unaffected.
    throttled, _ = call(gw, attacker, "authenticate", {"auth_token": good})
    assert code_of(throttled) == RATE_LIMITED and throttled["error"]["data"]["retry_after_ms"] > 0
    assert call(gw, bystander, "authenticate", {"auth_token": good})[0]["result"]["authenticated"] is True
