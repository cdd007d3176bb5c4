"""The API contract (shared/API.md), method by method, against one real service.

One ``camservice start`` with two simulated cameras serves the whole module
(module-scoped fixture); every call goes over a real WebSocket, every file
is a real ffmpeg output, every download a real HTTP request. Each test
checks results field by field: names, types, enums, ISO 8601 ``Z``
timestamps, and the error codes in the order the contract lists them.

Settings beyond the harness defaults, and why:

* ``storage.min_free_bytes: 0`` so that a busy or small disk cannot refuse
  a snapshot (-32007) and make an unrelated assertion fail;
* ``storage.warn_percent: 0.5`` so that every real disk is past the warning
  threshold: ``low_space_warning`` is known (true), and a restarted file
  worker announces it with a ``storage_status_update`` (the last test).

Tests run in file order and share the service; the last one stops and
kills the file worker, so it stays last.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from camservice.errors import (
    AUTH_REQUIRED,
    CAMERA_NOT_FOUND,
    FILE_NOT_FOUND,
    IN_PROGRESS,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    PERMISSION_DENIED,
    RATE_LIMITED,
)
from camservice.tokens import LEEWAY, issue_token

from .harness import Client, Service, run, wait_for

pytestmark = pytest.mark.slow

TOPICS = ["camera_status_update", "recording_status_update", "storage_status_update"]
ISO_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
DEFAULT_NAME = re.compile(
    r"(?P<id>[A-Za-z0-9._-]+)_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_[A-Z0-9]{6}\.(?P<ext>[a-z0-9]+)"
)
CAMERA_KEYS = {"device", "id", "status", "name", "resolution", "fps", "streams", "capabilities", "recording"}
NOTIFICATION_CAMERA_KEYS = {"device", "id", "status", "name", "resolution", "fps", "streams"}
FILE_KEYS = {"filename", "file_size", "modified_time", "download_url"}
#: Optional members of a file entry the contract names.
FILE_OPTIONAL = {"device", "duration"}
#: Members the service adds beyond the contract (a JSON-RPC client ignores
#: them); listed so that any other addition fails these tests.
FILE_EXTENSIONS = {"camera_id", "recording", "resolution"}

ROLE_TABLE = {
    None: ["ping", "authenticate"],
    "viewer": [
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
    ],
    "operator": ["take_snapshot", "start_recording", "stop_recording", "delete_recording", "delete_snapshot"],
    "admin": ["get_metrics", "get_status", "get_storage_info", "set_retention_policy", "cleanup_old_files"],
}


# --- fixture and helpers -------------------------------------------------------------------


class Contract:
    """The running service plus credentials for every role."""

    def __init__(self, svc: Service):
        self.svc = svc
        self.secret = yaml.safe_load(svc.config_path.read_text())["security"]["jwt_secret"]
        self.tokens = {role: self.token(role) for role in ("viewer", "operator", "admin")}
        self.api_key = svc.cli("keys", "create", "--role", "viewer", "--name", "contract-viewer").stdout.strip()
        self.http_base = f"http://127.0.0.1:{svc.port}"

    def token(self, role: str, subject: str = "contract", ttl: float = 3600) -> str:
        return issue_token(self.secret, role, subject, ttl)

    def client(self, role: str | None = "admin") -> Client:
        return Client(self.svc.url, self.tokens[role] if role else None)

    @property
    def snapshots(self) -> Path:
        return self.svc.state_dir / "snapshots"

    @property
    def recordings(self) -> Path:
        return self.svc.state_dir / "recordings"


@pytest.fixture(scope="module")
def api():
    with Service(simulate=2, **{"storage.min_free_bytes": 0, "storage.warn_percent": 0.5}) as svc:
        yield Contract(svc)


def is_iso_z(value) -> bool:
    if not isinstance(value, str) or not ISO_Z.fullmatch(value):
        return False
    return datetime.fromisoformat(value[:-1] + "+00:00").tzinfo is not None


def moment(value: str) -> datetime:
    assert is_iso_z(value), value
    return datetime.fromisoformat(value[:-1] + "+00:00")


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


async def error_of(client: Client, method: str, params=None) -> dict:
    reply = await client.request(method, params)
    assert "error" in reply and "result" not in reply, (method, params, reply)
    error = reply["error"]
    assert is_int(error["code"]) and isinstance(error["message"], str) and error["message"]
    return error


async def invalid(client: Client, method: str, params, param: str | None) -> dict:
    """-32602 with ``data.reason``, and ``data.param`` naming the parameter (absent when None)."""
    error = await error_of(client, method, params)
    assert error["code"] == INVALID_PARAMS, (method, params, error)
    assert isinstance(error["data"]["reason"], str) and error["data"]["reason"], error
    if param is None:
        assert "param" not in error["data"], error
    else:
        assert error["data"]["param"] == param, error
    return error


async def expect(client: Client, method: str, where=lambda params: True, timeout: float = 20.0) -> dict:
    """The params of the first notification ``method`` matching ``where``.

    Unlike ``Client.notification`` it keeps what it skips (in
    ``client.backlog``), so waiting for one event never loses another.
    """
    backlog = client.__dict__.setdefault("backlog", [])
    for position, message in enumerate(backlog):
        if message["method"] == method and where(message["params"]):
            return backlog.pop(position)["params"]
    deadline = time.monotonic() + timeout
    while True:
        try:
            message = await asyncio.wait_for(client.notifications.get(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise AssertionError(f"no matching {method} notification within {timeout}s") from None
        if message["method"] == method and where(message["params"]):
            return message["params"]
        backlog.append(message)


async def synced(client: Client) -> list[dict]:
    """Every notification ``client`` got and nobody consumed, up to a ping's answer.

    The gateway writes a notification to every recipient in one go, so
    once another connection has seen it, a ping answered on this one
    comes back after it: an empty result proves nothing was sent.
    """
    assert await client.call("ping") == "pong"
    seen = client.__dict__.setdefault("backlog", [])
    while not client.notifications.empty():
        seen.append(client.notifications.get_nowait())
    client.backlog = []
    return seen


def http_get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    parts = urlsplit(url)
    assert parts.scheme == "http", url
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def check_file_entry(entry: dict, kind: str) -> None:
    assert FILE_KEYS <= set(entry) <= FILE_KEYS | FILE_OPTIONAL | FILE_EXTENSIONS | {"created_time"}, entry
    assert isinstance(entry["filename"], str) and entry["filename"]
    assert is_int(entry["file_size"]) and entry["file_size"] >= 0
    assert is_iso_z(entry["modified_time"])
    folder = "recordings" if kind == "recording" else "snapshots"
    url = urlsplit(entry["download_url"])
    assert url.scheme == "http" and url.hostname == "127.0.0.1" and url.port
    assert url.path == f"/files/{folder}/{entry['filename']}"
    if "device" in entry:
        assert re.fullmatch(r"sim:\d+|/dev/video\d+", entry["device"]), entry
    if "duration" in entry:
        assert is_number(entry["duration"]) and entry["duration"] >= 0


def check_camera(camera: dict) -> None:
    assert set(camera) == CAMERA_KEYS, camera
    assert re.fullmatch(r"sim:\d+|/dev/video\d+", camera["device"])
    assert isinstance(camera["id"], str) and re.fullmatch(r"[A-Za-z0-9._-]+", camera["id"])
    assert camera["status"] in ("CONNECTED", "DISCONNECTED", "ERROR")
    assert isinstance(camera["name"], str) and camera["name"]
    assert re.fullmatch(r"\d+x\d+", camera["resolution"]) and is_int(camera["fps"])
    # The ffmpeg backend serves no streams, so none are listed.
    assert camera["streams"] == {}
    caps = camera["capabilities"]
    assert set(caps) == {"formats", "resolutions", "frame_rates"}
    assert caps["formats"] and all(isinstance(f, str) for f in caps["formats"])
    assert caps["resolutions"] and all(re.fullmatch(r"\d+x\d+", r) for r in caps["resolutions"])
    assert set(caps["frame_rates"]) <= set(caps["resolutions"])
    assert all(rates and all(is_int(r) for r in rates) for rates in caps["frame_rates"].values())
    assert isinstance(camera["recording"], bool)


def check_recording_event(params: dict, status: str) -> None:
    keys = {"device", "status", "filename", "session_id", "duration"}
    assert keys <= set(params) <= keys | {"error"}, params
    assert params["status"] == status
    assert is_number(params["duration"]) and params["duration"] >= 0
    assert isinstance(params["filename"], str) and str(uuid.UUID(params["session_id"])) == params["session_id"]
    if status == "FAILED":
        assert isinstance(params["error"], str) and params["error"]
    elif status in ("STARTED", "COMPLETED"):
        assert "error" not in params, params


# --- transport, authentication, roles ------------------------------------------------------------


def test_transport_and_the_order_of_checks(api):
    """-32600, -32601, -32001, -32003, -32602, then the target's own codes, in that order."""

    async def scenario():
        async with api.client(None) as anon, api.client("viewer") as viewer, api.client("operator") as operator:
            assert await anon.call("ping") == "pong"
            reply = await anon.raw(json.dumps({"jsonrpc": "1.0", "method": "ping", "id": 1}), "1")
            assert reply["error"]["code"] == INVALID_REQUEST and reply["id"] == 1
            # Unknown method beats missing authentication; authentication beats bad params.
            assert (await error_of(anon, "no_such_method", {"bogus": 1}))["code"] == METHOD_NOT_FOUND
            assert (await error_of(anon, "list_recordings", {"limit": 0}))["code"] == AUTH_REQUIRED
            # Role beats bad params, with the roles named.
            error = await error_of(viewer, "take_snapshot", {"format": "gif"})
            assert error["code"] == PERMISSION_DENIED
            assert error["data"] == {"required_role": "operator", "role": "viewer"}
            # Bad params beat an unknown target; then the target decides.
            await invalid(operator, "take_snapshot", {"device": "no-such-camera", "format": "gif"}, "format")
            assert (await error_of(operator, "take_snapshot", {"device": "no-such-camera"}))["code"] == CAMERA_NOT_FOUND
            assert (await error_of(viewer, "get_snapshot_info", {"filename": "missing.jpg"}))["code"] == FILE_NOT_FOUND
            # Positional params: -32602 with a reason but no single parameter at fault.
            await invalid(viewer, "get_snapshot_info", ["missing.jpg"], None)
            await invalid(viewer, "get_camera_list", {"bogus": 1}, "bogus")
            # Values JSON can carry but the service cannot echo back: a clear error, the connection stays.
            reply = await viewer.raw('{"jsonrpc":"2.0","method":"ping","id":1e400}', "null")
            assert reply["error"]["code"] == INVALID_REQUEST and reply["id"] is None
            reply = await viewer.raw(
                '{"jsonrpc":"2.0","method":"list_recordings","params":{"limit":1e400},"id":"big"}', '"big"'
            )
            assert reply["error"]["code"] == INVALID_PARAMS and reply["error"]["data"]["param"] == "limit"
            reply = await viewer.raw('{"jsonrpc":"2.0","method":"ping","id":"\\ud800"}', "null")
            assert reply["error"]["code"] == PARSE_ERROR and reply["id"] is None
            reply = await viewer.raw(
                '{"jsonrpc":"2.0","method":"get_camera_status","params":{"device":"\\udfff"},"id":"s"}', "null"
            )
            assert reply["error"]["code"] == PARSE_ERROR
            # A valid surrogate pair is just a character.
            reply = await viewer.raw('{"jsonrpc":"2.0","method":"ping","id":"\\ud83d\\ude00"}', '"\\ud83d\\ude00"')
            assert reply == {"jsonrpc": "2.0", "result": "pong", "id": "\U0001f600"}
            assert await viewer.call("ping") == "pong"

    run(scenario())


def test_every_method_enforces_its_role(api):
    async def scenario():
        async with api.client(None) as anon, api.client("viewer") as viewer, api.client("operator") as operator:
            for method in ROLE_TABLE["viewer"] + ROLE_TABLE["operator"] + ROLE_TABLE["admin"]:
                error = await error_of(anon, method, {})
                assert error["code"] == AUTH_REQUIRED and error["data"]["reason"], (method, error)
            for method in ROLE_TABLE["operator"] + ROLE_TABLE["admin"]:
                error = await error_of(viewer, method, {})
                required = "operator" if method in ROLE_TABLE["operator"] else "admin"
                assert error == {
                    "code": PERMISSION_DENIED,
                    "message": error["message"],
                    "data": {"required_role": required, "role": "viewer"},
                }, (method, error)
            for method in ROLE_TABLE["admin"]:
                error = await error_of(operator, method, {})
                assert error["data"] == {"required_role": "admin", "role": "operator"}, (method, error)

    run(scenario())


def test_rate_limit_comes_after_role_and_before_params(api):
    """Exhaust one connection's bucket; then only checks before the rate limit still answer.

    A service of its own whose buckets refill one token per 1000 s: the
    bucket cannot refill between calls however slow the machine is.
    """
    burst = 5

    async def scenario(svc):
        async with Client(svc.url, svc.token("viewer")) as client:  # authenticate takes a token
            batch = json.dumps(
                [
                    {"jsonrpc": "2.0", "method": "list_recordings", "params": {"limit": 0}, "id": n}
                    for n in range(burst - 1)
                ]
            )
            replies = await client.raw(batch, "batch")
            assert [r["error"]["code"] for r in replies] == [INVALID_PARAMS] * (burst - 1)
            # The bucket is empty: the same invalid call is now -32002, not -32602.
            limited = await error_of(client, "list_recordings", {"limit": 0})
            assert limited["code"] == RATE_LIMITED
            assert is_int(limited["data"]["retry_after_ms"]) and limited["data"]["retry_after_ms"] > 0
            # Method, authentication and role are checked before it.
            assert (await error_of(client, "no_such_method"))["code"] == METHOD_NOT_FOUND
            assert (await error_of(client, "take_snapshot", {"device": "camera0"}))["code"] == PERMISSION_DENIED
            assert (await error_of(client, "get_camera_list", {"auth_token": "not-a-token"}))["code"] == AUTH_REQUIRED

    with Service(simulate=0, **{"security.rate_limit": 0.001, "security.rate_burst": burst}) as svc:
        run(scenario(svc))


def test_authenticate_results_and_the_old_form(api):
    async def scenario():
        async with api.client(None) as client:
            result = await client.call("authenticate", {"auth_token": api.tokens["operator"]})
            assert set(result) == {"authenticated", "role", "permissions", "expires_at", "session_id"}
            assert result["authenticated"] is True and result["role"] == "operator"
            assert set(ROLE_TABLE["viewer"] + ROLE_TABLE["operator"]) <= set(result["permissions"])
            assert not set(ROLE_TABLE["admin"]) & set(result["permissions"])
            assert all(isinstance(p, str) for p in result["permissions"])
            assert moment(result["expires_at"]) > datetime.now(timezone.utc)
            assert str(uuid.UUID(result["session_id"])) == result["session_id"]
            # Older clients: {"token", "auth_type"}; auth_type is ignored.
            old = await client.call("authenticate", {"token": api.tokens["admin"], "auth_type": "whatever"})
            assert old["authenticated"] is True and old["role"] == "admin"
            assert set(ROLE_TABLE["admin"]) <= set(old["permissions"])
            assert old["session_id"] != result["session_id"]
            assert await client.call("get_status")  # the connection now holds the admin role
            # An API key: no expiry.
            keyed = await client.call("authenticate", {"auth_token": api.api_key})
            assert keyed["role"] == "viewer" and keyed["expires_at"] is None
            error = await error_of(client, "authenticate", {"auth_token": "garbage"})
            assert error["code"] == AUTH_REQUIRED and error["data"]["reason"]
            await invalid(client, "authenticate", {}, "auth_token")
        async with api.client(None) as client:
            # auth_token in any call's params authenticates that call only.
            listing = await client.call("get_camera_list", {"auth_token": api.tokens["viewer"]})
            assert listing["total"] == 2
            assert (await error_of(client, "get_camera_list"))["code"] == AUTH_REQUIRED

    run(scenario())


# --- cameras ----------------------------------------------------------------------------------------


def test_camera_list_status_capabilities_and_streams(api):
    async def scenario():
        async with api.client("viewer") as client:
            listing = await client.call("get_camera_list")
            assert set(listing) == {"cameras", "total", "connected"}
            assert listing["total"] == 2 and listing["connected"] == 2
            assert [c["device"] for c in listing["cameras"]] == ["sim:0", "sim:1"]
            for camera in listing["cameras"]:
                check_camera(camera)
                assert camera["status"] == "CONNECTED" and camera["resolution"] == "320x240"
                assert camera["fps"] == 10 and camera["recording"] is False
            assert len({c["id"] for c in listing["cameras"]}) == 2

            first = listing["cameras"][0]
            by_id = await client.call("get_camera_status", {"device": first["id"]})
            by_device = await client.call("get_camera_status", {"device": first["device"]})
            for status in (by_id, by_device):
                assert set(status) == CAMERA_KEYS | {"metrics"}
                check_camera({k: v for k, v in status.items() if k != "metrics"})
                assert {k: v for k, v in status.items() if k != "metrics"} == first
                metrics = status["metrics"]
                assert set(metrics) == {"bytes_sent", "readers", "uptime"}
                assert is_int(metrics["bytes_sent"]) and is_int(metrics["readers"]) and is_number(metrics["uptime"])
                assert metrics["uptime"] >= 0
            assert (await error_of(client, "get_camera_status", {"device": "sim:9"}))["code"] == CAMERA_NOT_FOUND
            await invalid(client, "get_camera_status", {}, "device")

            for device in (first["id"], first["device"]):
                caps = await client.call("get_camera_capabilities", {"device": device})
                assert set(caps) == {"device", "formats", "resolutions", "frame_rates"}
                assert caps["device"] == first["device"]
                assert {k: caps[k] for k in ("formats", "resolutions", "frame_rates")} == first["capabilities"]
            assert (await error_of(client, "get_camera_capabilities", {"device": "nope"}))["code"] == CAMERA_NOT_FOUND

            streams = await client.call("get_streams")
            assert isinstance(streams, list) and len(streams) == 2
            for stream in streams:
                assert set(stream) == {"name", "source", "ready", "readers", "bytes_sent"}
                assert isinstance(stream["ready"], bool) and is_int(stream["readers"])
                assert is_int(stream["bytes_sent"])
            assert sorted((s["name"], s["source"]) for s in streams) == sorted(
                (c["id"], c["device"]) for c in listing["cameras"]
            )

    run(scenario())


# --- snapshots --------------------------------------------------------------------------------------


def test_snapshots_take_list_info_delete(api):
    async def scenario():
        async with api.client("operator") as client:
            default = await client.call("take_snapshot", {"device": "sim:0"})
            assert set(default) == {"device", "filename", "status", "timestamp", "file_size", "file_path"}
            assert default["device"] == "sim:0" and default["status"] == "completed"
            match = DEFAULT_NAME.fullmatch(default["filename"])
            assert match and match["id"] == "camera0" and match["ext"] == "jpg", default["filename"]
            assert is_iso_z(default["timestamp"])
            path = Path(default["file_path"])
            assert path.name == default["filename"] and path.parent == api.snapshots
            assert path.read_bytes()[:2] == b"\xff\xd8" and default["file_size"] == path.stat().st_size

            png = await client.call(
                "take_snapshot", {"device": "camera1", "format": "png", "filename": "contract-shot"}
            )
            assert png["filename"] == "contract-shot.png" and png["device"] == "sim:1"
            assert Path(png["file_path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            same = await client.call("take_snapshot", {"device": "camera1", "filename": "contract-kept.jpg"})
            assert same["filename"] == "contract-kept.jpg"
            # .jpeg is the jpg format's extension too, not "another format".
            jpeg = await client.call("take_snapshot", {"device": "camera1", "filename": "contract-alt.jpeg"})
            assert jpeg["filename"] == "contract-alt.jpeg"
            assert Path(jpeg["file_path"]).read_bytes()[:2] == b"\xff\xd8"
            await invalid(client, "take_snapshot", {"device": "camera1", "filename": "x.png"}, "filename")
            await invalid(
                client, "take_snapshot", {"device": "camera1", "format": "png", "filename": "x.jpg"}, "filename"
            )
            for bad in (".hidden", "a/b", "../up", "sp ace", "x" * 256, "", 7):
                await invalid(client, "take_snapshot", {"device": "camera1", "filename": bad}, "filename")
            await invalid(client, "take_snapshot", {"device": "camera1", "format": "gif"}, "format")

            # Listing: newest first, limit/offset pages, device filter by id or path.
            listing = await client.call("list_snapshots")
            assert set(listing) == {"files", "total", "limit", "offset"}
            assert listing["limit"] == 100 and listing["offset"] == 0 and listing["total"] == len(listing["files"])
            names = [f["filename"] for f in listing["files"]]
            assert names[:4] == ["contract-alt.jpeg", "contract-kept.jpg", "contract-shot.png", default["filename"]]
            times = [moment(f["modified_time"]) for f in listing["files"]]
            assert times == sorted(times, reverse=True)
            for entry in listing["files"]:
                check_file_entry(entry, "snapshot")
            by_name = {f["filename"]: f for f in listing["files"]}
            assert by_name["contract-shot.png"]["file_size"] == png["file_size"]
            assert by_name["contract-shot.png"]["device"] == "sim:1"
            page = await client.call("list_snapshots", {"limit": 2, "offset": 1})
            assert (page["limit"], page["offset"], page["total"]) == (2, 1, listing["total"])
            assert [f["filename"] for f in page["files"]] == names[1:3]
            beyond = await client.call("list_snapshots", {"offset": 1000})
            assert beyond["files"] == [] and beyond["total"] == listing["total"]
            for device in ("sim:1", "camera1"):
                mine = await client.call("list_snapshots", {"device": device})
                assert [f["filename"] for f in mine["files"]] == [n for n in names if n.startswith("contract-")]
                assert mine["total"] == 3
            for params, param in (
                ({"limit": 0}, "limit"),
                ({"limit": 1001}, "limit"),
                ({"offset": -1}, "offset"),
                ({"limit": "5"}, "limit"),
            ):
                await invalid(client, "list_snapshots", params, param)

            info = await client.call("get_snapshot_info", {"filename": "contract-shot.png"})
            check_file_entry(info, "snapshot")
            assert {k: v for k, v in info.items() if k not in ("created_time", "resolution")} == by_name[
                "contract-shot.png"
            ]
            assert is_iso_z(info["created_time"]) and info["resolution"] == "320x240"
            assert moment(info["created_time"]) <= moment(info["modified_time"])

            # Names that try to leave the folder: -32602, also through a planted symlink.
            outside = api.svc.root / "outside.jpg"
            outside.write_bytes(b"\xff\xd8 not ours")
            os.symlink(outside, api.snapshots / "contract-link.jpg")
            for method in ("get_snapshot_info", "delete_snapshot"):
                for name in ("../camservice.yaml", "..", "a/../../b.jpg"):
                    await invalid(client, method, {"filename": name}, "filename")
                await invalid(client, method, {"filename": "contract-link.jpg"}, "filename")
            assert outside.exists()

            deleted = await client.call("delete_snapshot", {"filename": "contract-kept.jpg"})
            assert set(deleted) == {"filename", "deleted", "message"}
            assert deleted["filename"] == "contract-kept.jpg" and deleted["deleted"] is True
            assert isinstance(deleted["message"], str) and deleted["message"]
            assert not (api.snapshots / "contract-kept.jpg").exists()
            for method in ("delete_snapshot", "get_snapshot_info"):
                error = await error_of(client, method, {"filename": "contract-kept.jpg"})
                assert error["code"] == FILE_NOT_FOUND
            after = await client.call("list_snapshots")
            assert "contract-kept.jpg" not in [f["filename"] for f in after["files"]]

    run(scenario())


# --- recordings -------------------------------------------------------------------------------------


def test_recordings_start_stop_and_durations(api):
    async def scenario():
        async with api.client("operator") as client:
            # Every duration form, and what they normalise to.
            for params, param in (
                ({"duration_seconds": 5, "duration": 5}, "duration"),
                ({"duration_minutes": 1, "duration_hours": 1}, "duration_hours"),
                ({"duration_seconds": 0}, "duration_seconds"),
                ({"duration_seconds": 86401}, "duration_seconds"),
                ({"duration_minutes": 1441}, "duration_minutes"),
                ({"duration_hours": 25}, "duration_hours"),
                ({"duration": 86401}, "duration"),
                ({"duration": 1.5}, "duration"),
                ({"format": "avi"}, "format"),
                ({"filename": "clip.mkv"}, "filename"),
                ({"filename": ".clip"}, "filename"),
            ):
                await invalid(client, "start_recording", {"device": "camera0", **params}, param)

            # Timed, with two of the forms at once on the two cameras.
            timed = {}
            for device, form in (("camera0", {"duration_seconds": 1}), ("sim:1", {"duration": 1})):
                result = await client.call("start_recording", {"device": device, **form})
                assert set(result) == {"device", "session_id", "filename", "status", "start_time", "duration", "format"}
                assert result["status"] == "STARTED" and result["duration"] == 1 and result["format"] == "mp4"
                assert is_iso_z(result["start_time"]) and uuid.UUID(result["session_id"])
                match = DEFAULT_NAME.fullmatch(result["filename"])
                assert match and match["ext"] == "mp4", result["filename"]
                timed[result["session_id"]] = result
            assert sorted(r["device"] for r in timed.values()) == ["sim:0", "sim:1"]
            for session_id, result in timed.items():
                started = await expect(
                    client,
                    "recording_status_update",
                    where=lambda p, s=session_id: p["session_id"] == s and p["status"] == "STARTED",
                )
                check_recording_event(started, "STARTED")
                assert started["filename"] == result["filename"] and started["device"] == result["device"]
                done = await expect(
                    client,
                    "recording_status_update",
                    where=lambda p, s=session_id: p["session_id"] == s and p["status"] != "STARTED",
                )
                check_recording_event(done, "COMPLETED")
                assert done["filename"] == result["filename"] and done["duration"] >= 1
            for device in ("camera0", "camera1"):  # it ended by itself: nothing to stop
                await invalid(client, "stop_recording", {"device": device}, "device")

            # The longer forms, stopped by hand.
            for form, seconds in (({"duration_minutes": 1}, 60), ({"duration_hours": 1}, 3600)):
                result = await client.call("start_recording", {"device": "camera1", **form})
                assert result["duration"] == seconds
                stopped = await client.call("stop_recording", {"device": "camera1"})
                assert stopped["status"] == "STOPPED" and stopped["session_id"] == result["session_id"]

            # Unlimited, custom name and mkv.
            result = await client.call(
                "start_recording", {"device": "sim:0", "format": "mkv", "filename": "contract-clip"}
            )
            assert result["filename"] == "contract-clip.mkv" and result["duration"] is None
            assert result["format"] == "mkv" and result["device"] == "sim:0"
            started = await expect(
                client, "recording_status_update", where=lambda p: p["session_id"] == result["session_id"]
            )
            check_recording_event(started, "STARTED")
            again = await error_of(client, "start_recording", {"device": "camera0"})
            assert again["code"] == IN_PROGRESS and again["data"]["reason"]
            busy = await error_of(client, "delete_recording", {"filename": "contract-clip.mkv"})
            assert busy["code"] == IN_PROGRESS
            camera = await client.call("get_camera_status", {"device": "camera0"})
            assert camera["recording"] is True
            info = await client.call("get_recording_info", {"filename": "contract-clip.mkv"})
            check_file_entry(info, "recording")
            assert is_iso_z(info["created_time"])

            stopped = await client.call("stop_recording", {"device": "camera0"})
            assert set(stopped) == {
                "device",
                "session_id",
                "filename",
                "status",
                "start_time",
                "end_time",
                "duration",
                "file_size",
            }
            assert stopped["status"] == "STOPPED" and stopped["session_id"] == result["session_id"]
            assert stopped["filename"] == "contract-clip.mkv" and stopped["device"] == "sim:0"
            assert stopped["start_time"] == result["start_time"]
            assert moment(stopped["end_time"]) >= moment(stopped["start_time"])
            assert is_number(stopped["duration"]) and stopped["duration"] >= 0
            assert stopped["file_size"] == (api.recordings / "contract-clip.mkv").stat().st_size > 0
            event = await expect(
                client,
                "recording_status_update",
                where=lambda p: p["session_id"] == result["session_id"] and p["status"] != "STARTED",
            )
            check_recording_event(event, "STOPPED")
            assert "error" not in event and event["filename"] == "contract-clip.mkv"

            idle = await invalid(client, "stop_recording", {"device": "sim:0"}, "device")
            assert idle["data"]["reason"]
            assert (await error_of(client, "stop_recording", {"device": "sim:7"}))["code"] == CAMERA_NOT_FOUND
            assert (await error_of(client, "start_recording", {"device": "sim:7"}))["code"] == CAMERA_NOT_FOUND
            # The name is taken now.
            taken = await error_of(
                client, "start_recording", {"device": "camera1", "filename": "contract-clip", "format": "mkv"}
            )
            assert taken["code"] == IN_PROGRESS

    run(scenario())


def test_recording_files_list_info_delete(api):
    async def scenario():
        async with api.client("operator") as client:
            listing = await client.call("list_recordings")
            assert set(listing) == {"files", "total", "limit", "offset"}
            files = listing["files"]
            assert listing["total"] == len(files) == 5  # two timed, two stopped by hand, contract-clip.mkv
            assert files[0]["filename"] == "contract-clip.mkv"
            times = [moment(f["modified_time"]) for f in files]
            assert times == sorted(times, reverse=True)
            for entry in files:
                check_file_entry(entry, "recording")
                assert entry["file_size"] == (api.recordings / entry["filename"]).stat().st_size
            assert sorted(f["device"] for f in files) == ["sim:0", "sim:0", "sim:1", "sim:1", "sim:1"]
            page = await client.call("list_recordings", {"limit": 2, "offset": 3})
            assert [f["filename"] for f in page["files"]] == [f["filename"] for f in files[3:5]]
            by_path = await client.call("list_recordings", {"device": "sim:1"})
            by_id = await client.call("list_recordings", {"device": "camera1"})
            assert by_path == by_id and by_path["total"] == 3
            assert [f["filename"] for f in by_path["files"]] == [f["filename"] for f in files if f["device"] == "sim:1"]
            assert (await client.call("list_recordings", {"device": "sim:9"}))["total"] == 0

            for entry in files:
                info = await client.call("get_recording_info", {"filename": entry["filename"]})
                check_file_entry(info, "recording")
                assert is_iso_z(info["created_time"])
                assert moment(info["created_time"]) <= moment(info["modified_time"])
                assert is_number(info["duration"]) and info["duration"] > 0, info
                assert {k: info[k] for k in FILE_KEYS} == {k: entry[k] for k in FILE_KEYS}

            victim = files[-1]["filename"]
            deleted = await client.call("delete_recording", {"filename": victim})
            assert deleted["filename"] == victim and deleted["deleted"] is True
            assert set(deleted) == {"filename", "deleted", "message"} and deleted["message"]
            assert not (api.recordings / victim).exists()
            for method in ("delete_recording", "get_recording_info"):
                assert (await error_of(client, method, {"filename": victim}))["code"] == FILE_NOT_FOUND
                await invalid(client, method, {"filename": "../snapshots/x.mp4"}, "filename")
            assert (await client.call("list_recordings"))["total"] == 4

    run(scenario())


def test_downloads_over_http(api):
    """``download_url`` as a client gets it: credentials, Range, headers.

    It must work without a redirect: HTTP clients drop ``Authorization``
    when a redirect changes the port (browsers' fetch, python-requests), so
    a redirecting ``download_url`` is a 401 for them.
    """

    async def scenario():
        async with api.client("viewer") as client:
            recording = (await client.call("list_recordings", {"limit": 1}))["files"][0]
            snapshot = await client.call("get_snapshot_info", {"filename": "contract-shot.png"})
            return recording, snapshot

    recording, snapshot = run(scenario())
    body = (api.recordings / recording["filename"]).read_bytes()
    bearer = {"Authorization": f"Bearer {api.tokens['viewer']}"}

    status, headers, data = http_get(recording["download_url"], {**bearer, "Range": "bytes=10-109"})
    assert status == 206, (status, headers)
    assert data == body[10:110]
    assert headers["content-range"] == f"bytes 10-109/{len(body)}"
    assert headers["content-type"] == "video/x-matroska"  # contract-clip.mkv, the newest
    assert headers["content-disposition"] == f'attachment; filename="{recording["filename"]}"'

    status, headers, data = http_get(snapshot["download_url"], {"X-API-Key": api.api_key})
    assert status == 200 and data == (api.snapshots / "contract-shot.png").read_bytes()
    assert headers["content-type"] == "image/png"
    assert headers["content-disposition"] == 'attachment; filename="contract-shot.png"'

    assert http_get(recording["download_url"])[0] == 401
    assert http_get(recording["download_url"], {"Authorization": "Bearer not-a-token"})[0] == 403
    assert http_get(snapshot["download_url"].replace("contract-shot.png", "missing.png"), bearer)[0] == 404
    assert http_get(snapshot["download_url"].replace("contract-shot.png", "contract-link.jpg"), bearer)[0] == 404

    # download_url is the API's own port, and that port serves the file itself: no redirect.
    assert recording["download_url"].startswith(f"{api.http_base}/files/")
    status, _, data = http_get(f"{api.http_base}/files/recordings/{recording['filename']}", bearer)
    assert status == 200 and data == body


# --- storage and retention ----------------------------------------------------------------------


def test_storage_retention_and_cleanup(api):
    async def scenario():
        async with api.client("admin") as client:
            storage = await client.call("get_storage_info")
            assert set(storage) == {
                "total_space",
                "used_space",
                "available_space",
                "usage_percentage",
                "recordings_size",
                "snapshots_size",
                "low_space_warning",
            }
            for key in ("total_space", "used_space", "available_space", "recordings_size", "snapshots_size"):
                assert is_int(storage[key]) and storage[key] >= 0, key
            assert storage["used_space"] <= storage["total_space"]
            assert storage["available_space"] <= storage["total_space"]
            assert is_number(storage["usage_percentage"]) and 0 <= storage["usage_percentage"] <= 100
            assert storage["recordings_size"] > 0 and storage["snapshots_size"] > 0
            # warn_percent is 0.5 in this module: every real disk is past it.
            assert storage["low_space_warning"] is True

            stored = await client.call(
                "set_retention_policy", {"policy_type": "age", "enabled": True, "max_age_days": 30}
            )
            assert stored == {
                "policy_type": "age",
                "enabled": True,
                "max_age_days": 30,
                "max_size_gb": None,
                "message": stored["message"],
            }
            assert isinstance(stored["message"], str) and stored["message"]
            before = (await client.call("list_recordings"))["total"]
            cleanup = await client.call("cleanup_old_files")
            assert set(cleanup) == {"cleanup_executed", "files_deleted", "space_freed", "message"}
            assert cleanup["cleanup_executed"] is True
            assert cleanup["files_deleted"] == 0 and cleanup["space_freed"] == 0  # nothing is 30 days old
            assert isinstance(cleanup["message"], str) and cleanup["message"]
            assert (await client.call("list_recordings"))["total"] == before

            stored = await client.call("set_retention_policy", {"policy_type": "size", "enabled": False})
            assert stored["policy_type"] == "size" and stored["enabled"] is False
            cleanup = await client.call("cleanup_old_files")
            assert cleanup["cleanup_executed"] is False and cleanup["files_deleted"] == 0

            for params, param in (
                ({"policy_type": "weekly", "enabled": True}, "policy_type"),
                ({"enabled": True}, "policy_type"),
                ({"policy_type": "age"}, "enabled"),
                ({"policy_type": "age", "enabled": True}, "max_age_days"),
                ({"policy_type": "size", "enabled": True, "max_size_gb": -1}, "max_size_gb"),
            ):
                await invalid(client, "set_retention_policy", params, param)

    run(scenario())


# --- system -----------------------------------------------------------------------------------------


def test_status_metrics_and_server_info(api):
    async def scenario():
        async with api.client("admin") as client:
            status = await client.call("get_status")
            assert set(status) == {"status", "uptime", "version", "components"}
            assert status["status"] == "healthy"
            assert is_number(status["uptime"]) and status["uptime"] >= 0
            assert isinstance(status["version"], str) and status["version"]
            assert status["components"] == {
                "gateway": "running",
                "discovery": "running",
                "recording": "running",
                "files": "running",
                "media_backend": "running",
            }

            async def sampled():
                # The supervisor samples processes every runtime.sample_interval.
                for _ in range(100):
                    metrics = await client.call("get_metrics")
                    if metrics["processes"]:
                        return metrics
                    await asyncio.sleep(0.1)
                raise AssertionError("get_metrics never listed the processes")

            metrics = await sampled()
            assert set(metrics) == {
                "active_connections",
                "total_requests",
                "average_response_time",
                "error_rate",
                "memory_usage",
                "cpu_usage",
                "processes",
            }
            assert is_int(metrics["active_connections"]) and metrics["active_connections"] >= 1
            assert is_int(metrics["total_requests"]) and metrics["total_requests"] > 0
            assert is_number(metrics["average_response_time"]) and metrics["average_response_time"] >= 0
            assert is_number(metrics["error_rate"]) and 0 < metrics["error_rate"] < 1  # this module made errors
            for key in ("memory_usage", "cpu_usage"):
                assert is_number(metrics[key]) and 0 <= metrics[key] <= 100, key
            pids = api.svc.pids()
            for row in metrics["processes"]:
                assert set(row) == {"name", "pid", "cpu_percent", "rss_bytes", "restarts"}
                assert is_int(row["pid"]) and is_number(row["cpu_percent"]) and is_int(row["rss_bytes"])
                assert is_int(row["restarts"]) and row["restarts"] == 0
            assert {r["name"]: r["pid"] for r in metrics["processes"]} == pids
            assert set(pids) == {"bus-0", "gateway-0", "discovery-0", "recording-0", "files-0"}  # bus: the event bus

        async with api.client("viewer") as client:
            info = await client.call("get_server_info")
            assert set(info) == {"name", "version", "capabilities", "supported_formats", "max_cameras"}
            assert isinstance(info["name"], str) and info["version"] == status["version"]
            assert info["capabilities"] and all(isinstance(c, str) for c in info["capabilities"])
            assert {"mp4", "mkv", "jpg", "png"} <= set(info["supported_formats"])
            assert is_int(info["max_cameras"]) and info["max_cameras"] == 16

    run(scenario())


def test_http_health_and_metrics_endpoints(api):
    for which, member in (
        ("live", "details"),
        ("ready", "components"),
        ("system", "components"),
        ("cameras", "details"),
        ("mediamtx", "details"),
    ):
        status, headers, body = http_get(f"{api.http_base}/health/{which}")
        assert status == 200, (which, body)
        assert headers["content-type"].startswith("application/json")
        document = json.loads(body)
        assert set(document) == {"status", "timestamp", member}, (which, document)
        assert document["status"] == "healthy" and is_iso_z(document["timestamp"])
        assert isinstance(document[member], dict)
        assert api.secret not in body.decode()
    status, headers, body = http_get(f"{api.http_base}/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b"# TYPE " in body


# --- notifications and subscriptions ------------------------------------------------------------------


def test_subscriptions_narrow_clear_and_hot_plug_events(api):
    async def scenario():
        async with (
            api.client("viewer") as everything,
            api.client("viewer") as narrowed,
            api.client("viewer") as silent,
            api.client("operator") as operator,
        ):
            assert await narrowed.call("subscribe_events", {"topics": ["recording_status_update"]}) == {
                "subscribed": ["recording_status_update"]
            }
            assert await silent.call("unsubscribe_events") == {"unsubscribed": sorted(TOPICS)}
            await invalid(narrowed, "subscribe_events", {"topics": ["nope"]}, "topics")
            await invalid(narrowed, "subscribe_events", {}, "topics")
            await invalid(narrowed, "unsubscribe_events", {"topics": "camera_status_update"}, "topics")

            # A hot-plugged camera: everything hears it, the others do not.
            camera_id = api.svc.cli("camera", "plug", "--resolution", "160x120", "--fps", "5").stdout.strip()
            assert re.fullmatch(r"camera\d+", camera_id) and camera_id not in ("camera0", "camera1"), camera_id
            event = await expect(everything, "camera_status_update", where=lambda p: p["id"] == camera_id)
            assert set(event) == NOTIFICATION_CAMERA_KEYS, event
            assert event["status"] == "CONNECTED" and event["resolution"] == "160x120" and event["fps"] == 5
            assert event["streams"] == {} and isinstance(event["name"], str)
            plugged = event["device"]
            assert re.fullmatch(r"sim:\d+", plugged) and plugged not in ("sim:0", "sim:1"), plugged
            assert await synced(narrowed) == [] and await synced(silent) == []
            listing = await everything.call("get_camera_list")
            assert listing["total"] == 3 and listing["connected"] == 3

            # A recording on it: the narrowed connection hears that, the silent one nothing.
            started = await operator.call("start_recording", {"device": camera_id})
            heard = await expect(narrowed, "recording_status_update")
            check_recording_event(heard, "STARTED")
            assert heard["session_id"] == started["session_id"] and heard["device"] == plugged
            await operator.call("stop_recording", {"device": plugged})
            heard = await expect(narrowed, "recording_status_update")
            check_recording_event(heard, "STOPPED")
            await expect(everything, "recording_status_update", where=lambda p: p["status"] == "STOPPED")
            assert all(m["method"] == "recording_status_update" for m in await synced(narrowed))
            assert await synced(silent) == []

            # Subscribing again brings notifications back, only those asked for.
            assert await silent.call("subscribe_events", {"topics": ["camera_status_update"]}) == {
                "subscribed": ["camera_status_update"]
            }
            assert await narrowed.call(
                "unsubscribe_events", {"topics": ["recording_status_update", "camera_status_update"]}
            ) == {"unsubscribed": ["recording_status_update"]}
            api.svc.cli("camera", "unplug", plugged)
            gone = await expect(silent, "camera_status_update", where=lambda p: p["status"] == "DISCONNECTED")
            assert set(gone) == NOTIFICATION_CAMERA_KEYS and gone["id"] == camera_id and gone["device"] == plugged
            assert await synced(narrowed) == []

            # Unplugged: still listed, same id, not counted as connected.
            listing = await everything.call("get_camera_list")
            assert listing["total"] == 3 and listing["connected"] == 2
            row = next(c for c in listing["cameras"] if c["id"] == camera_id)
            check_camera(row)
            assert row["status"] == "DISCONNECTED" and row["device"] == plugged
            for method in ("get_camera_capabilities", "take_snapshot", "start_recording"):
                client = operator if method != "get_camera_capabilities" else everything
                assert (await error_of(client, method, {"device": camera_id}))["code"] == CAMERA_NOT_FOUND

    run(scenario())


def test_an_expired_token_gets_no_more_notifications(api):
    """The role is bound to the connection until the token expires: so are its notifications."""

    async def scenario():
        async with api.client(None) as expiring, api.client("viewer") as watcher, api.client("operator") as operator:
            result = await expiring.call("authenticate", {"auth_token": api.token("viewer", ttl=1)})
            expires = moment(result["expires_at"]).timestamp()
            await asyncio.sleep(max(0.0, expires + LEEWAY + 0.2 - time.time()))
            started = await operator.call("start_recording", {"device": "camera1"})
            await expect(watcher, "recording_status_update", where=lambda p: p["session_id"] == started["session_id"])
            await operator.call("stop_recording", {"device": "camera1"})
            await expect(
                watcher,
                "recording_status_update",
                where=lambda p: p["session_id"] == started["session_id"] and p["status"] == "STOPPED",
            )
            assert await synced(expiring) == []
            error = await error_of(expiring, "get_camera_list")
            assert error["code"] == AUTH_REQUIRED

    run(scenario())


# --- degradation (stays last: it stops and kills the file worker) --------------------------------------------------


def test_health_degrades_and_the_restarted_file_worker_reports_storage(api):
    base = api.http_base

    async def scenario():
        async with api.client("admin") as client:
            # A snapshot of its own: the replacement must list what was there
            # before, whichever tests of this module ran first.
            taken = await client.call("take_snapshot", {"device": "camera0"})
            files = api.svc.pids()["files-0"]
            os.kill(files, signal.SIGSTOP)
            try:
                # Missed heartbeats (runtime.heartbeat_liveness) mark it down.
                await asyncio.to_thread(
                    wait_for, lambda: http_get(f"{base}/health/ready")[0] == 503, 20, 0.2, "/health/ready to report 503"
                )
                status, _, body = http_get(f"{base}/health/ready")
                ready = json.loads(body)
                assert set(ready) == {"status", "timestamp", "components"} and ready["status"] == "unhealthy"
                assert ready["components"]["files"] == "down" and is_iso_z(ready["timestamp"])
                status, _, body = http_get(f"{base}/health/system")
                # A role with no process is unhealthy, not degraded (issue 11 §5).
                assert status == 503 and json.loads(body)["status"] == "unhealthy"
                report = await client.call("get_status")
                assert report["status"] == "unhealthy" and report["components"]["files"] == "down"
                assert report["components"]["recording"] == "running"
            finally:
                os.kill(files, signal.SIGKILL)
            # Its replacement measures the disk and, past warn_percent, says so.
            storage = await expect(client, "storage_status_update", timeout=30)
            assert (
                {"usage_percentage", "low_space_warning"}
                <= set(storage)
                <= {"usage_percentage", "low_space_warning", "level"}
            ), storage
            assert storage["low_space_warning"] is True
            assert is_number(storage["usage_percentage"]) and 0 <= storage["usage_percentage"] <= 100
            await asyncio.to_thread(
                wait_for, lambda: http_get(f"{base}/health/ready")[0] == 200, 20, 0.2, "/health/ready to recover"
            )
            assert (await client.call("get_status"))["status"] == "healthy"
            listed = await client.call("list_snapshots", {"limit": 1000})
            assert taken["filename"] in {entry["filename"] for entry in listed["files"]}

    run(scenario())
