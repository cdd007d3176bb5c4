"""Method table and parameter validation."""

import pytest

from camservice import methods
from camservice.errors import INVALID_PARAMS, RpcError


def bad(validator, params, param=None):
    with pytest.raises(RpcError) as info:
        validator(params)
    assert info.value.code == INVALID_PARAMS
    assert "reason" in info.value.data
    if param:
        assert info.value.data["param"] == param


def test_every_contract_method_is_in_the_table():
    contract = {
        "ping",
        "authenticate",
        "get_camera_list",
        "get_camera_status",
        "get_camera_capabilities",
        "get_streams",
        "list_recordings",
        "list_snapshots",
        "get_recording_info",
        "get_snapshot_info",
        "get_download_link",
        "subscribe_events",
        "unsubscribe_events",
        "get_server_info",
        "take_snapshot",
        "start_recording",
        "stop_recording",
        "delete_recording",
        "delete_snapshot",
        "get_metrics",
        "get_status",
        "get_storage_info",
        "set_retention_policy",
        "cleanup_old_files",
    }
    assert set(methods.METHODS) == contract


def test_role_order():
    assert methods.role_allows("admin", "viewer") and methods.role_allows("operator", "operator")
    assert not methods.role_allows("viewer", "operator") and not methods.role_allows(None, "viewer")
    assert not methods.role_allows("superuser", "viewer")
    assert methods.role_allows(None, None)


def test_durations_normalise_to_seconds_and_are_exclusive():
    v = methods.start_recording
    assert v({"device": "camera0", "duration_minutes": 2})["duration"] == 120
    assert v({"device": "camera0", "duration_hours": 1})["duration"] == 3600
    assert v({"device": "camera0"})["duration"] is None
    bad(v, {"device": "camera0", "duration_seconds": 5, "duration": 5})
    bad(v, {"device": "camera0", "duration_seconds": 0}, "duration_seconds")
    bad(v, {"device": "camera0", "duration_hours": 25}, "duration_hours")
    bad(v, {"device": "camera0", "duration": "10"}, "duration")
    bad(v, {"device": "camera0", "duration": True}, "duration")
    bad(v, {}, "device")


@pytest.mark.parametrize("name", ["../x.mp4", "a/b.mp4", ".hidden", "x\x00.mp4", "x y.mp4", "%2e%2e", "a" * 256, ""])
def test_filenames_that_could_escape_are_refused(name):
    bad(methods.filename_only, {"filename": name}, "filename")


def test_extension_rules():
    v = methods.start_recording
    assert v({"device": "c", "filename": "clip"})["filename"] == "clip.mp4"
    assert v({"device": "c", "filename": "clip.mkv", "format": "mkv"})["filename"] == "clip.mkv"
    bad(v, {"device": "c", "filename": "clip.mkv"}, "filename")
    assert methods.take_snapshot({"device": "c", "filename": "shot", "format": "png"})["filename"] == "shot.png"
    assert methods.take_snapshot({"device": "c", "filename": "shot.JPEG"})["filename"] == "shot.JPEG"
    bad(methods.take_snapshot, {"device": "c", "filename": "shot.jpeg", "format": "png"}, "filename")


def test_list_defaults_and_bounds():
    assert methods.list_files(None) == {"limit": 100, "offset": 0, "device": None}
    bad(methods.list_files, {"limit": 0}, "limit")
    bad(methods.list_files, {"limit": 1001}, "limit")
    bad(methods.list_files, {"offset": -1}, "offset")
    bad(methods.list_files, {"limit": float("inf")}, "limit")  # JSON 1e400; int() of it used to raise
    bad(methods.start_recording, {"device": "c", "duration": float("-inf")}, "duration")
    # Issue 11 §1: offsets beyond 64 bits broke msgpack, beyond 63 bits SQLite.
    assert methods.list_files({"offset": 2**31 - 1})["offset"] == 2**31 - 1
    for offset in (2**31, 2**63, 2**64, 10**300, 1e300, 10.0, 0.5):
        bad(methods.list_files, {"offset": offset}, "offset")


def test_every_numeric_param_is_bounded():
    """Each bound refuses one past either end, a float and a non-finite number, for every method naming it."""
    numeric = {**methods.INTEGER_BOUNDS, **methods.NUMBER_BOUNDS}
    seen = set()
    for method in methods.METHODS.values():
        for param in set(method.params) & set(numeric):
            seen.add(param)
            low, high = numeric[param]
            base = {"device": "c"} if "device" in method.params else {}
            if method.name == "set_retention_policy":
                base = {"policy_type": "manual", "enabled": False}
            if method.name == "get_download_link":
                base = {"filename": "a.mp4", "kind": "recordings"}
            method.validate({**base, param: low})  # both ends are inside
            method.validate({**base, param: high})
            step = 1 if param in methods.INTEGER_BOUNDS else 0.0001
            for value in (low - step, high + step, float("nan"), float("inf"), 2**64, -(2**64)):
                bad(method.validate, {**base, param: value}, param)
            if param in methods.INTEGER_BOUNDS:
                bad(method.validate, {**base, param: float(low)}, param)
    # Every bound belongs to a method.
    assert seen == set(numeric)


def test_the_table_lists_the_params_each_validator_accepts():
    for method in methods.METHODS.values():
        with pytest.raises(RpcError) as info:
            method.validate({"not_a_param": 1})
        assert info.value.data["param"] == "not_a_param", method.name
        for param in method.params:
            try:
                method.validate({param: None})
            except RpcError as exc:
                assert "unknown parameter" not in exc.data["reason"], (method.name, param)


def test_unknown_and_positional_params_refused():
    bad(methods.no_params, {"x": 1}, "x")
    bad(methods.no_params, [1, 2])
    assert methods.no_params({"auth_token": "t"}) == {}


def test_retention_policy_validation():
    v = methods.retention_policy
    assert v({"policy_type": "age", "enabled": True, "max_age_days": 7})["max_age_days"] == 7
    bad(v, {"policy_type": "age", "enabled": True}, "max_age_days")
    bad(v, {"policy_type": "weekly", "enabled": True}, "policy_type")
    bad(v, {"policy_type": "size", "enabled": "yes"}, "enabled")


def test_authenticate_accepts_the_old_shape():
    assert methods.authenticate({"token": "t", "auth_type": "jwt"}) == {"auth_token": "t"}
    bad(methods.authenticate, {}, "auth_token")


def test_an_explicit_null_format_means_the_default():
    # It used to leak through: filename "shot.None", format None.
    snapshot = methods.take_snapshot({"device": "c", "filename": "shot", "format": None})
    assert (snapshot["filename"], snapshot["format"]) == ("shot.jpg", "jpg")
    recording = methods.start_recording({"device": "c", "filename": "clip", "format": None})
    assert (recording["filename"], recording["format"]) == ("clip.mp4", "mp4")
