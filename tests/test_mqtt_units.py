"""The MQTT bridge's pure parts: topics, command parsing, the outbox, the camera model, HA discovery.

Home Assistant discovery payloads are checked against the keys Home
Assistant documents for each MQTT platform (the table below, from the
integration pages ``camera.mqtt``, ``button.mqtt``, ``switch.mqtt``,
``binary_sensor.mqtt`` and ``sensor.mqtt``); the same check runs on the
messages a real bridge publishes in ``test_mqtt_bridge.py``.
"""

from __future__ import annotations

import json

import pytest
from camservice.workers.mqtt import commands
from camservice.workers.mqtt.homeassistant import Discovery
from camservice.workers.mqtt.outbox import Message, Outbox
from camservice.workers.mqtt.state import STATE_FIELDS, Model
from camservice.workers.mqtt.topics import Topics, check_prefix, default_prefix

from camservice.errors import INVALID_PARAMS, INVALID_REQUEST

from .test_metrics import deliver, make_server, names, scrape  # noqa: F401  (make_server is a fixture)

# --- Home Assistant's documented discovery keys ----------------------------------------------

#: Keys every MQTT entity platform accepts (availability, device, identity, QoS...).
HA_COMMON = {
    "availability",
    "availability_mode",
    "availability_template",
    "availability_topic",
    "device",
    "enabled_by_default",
    "encoding",
    "entity_category",
    "entity_picture",
    "icon",
    "json_attributes_template",
    "json_attributes_topic",
    "name",
    "object_id",
    "default_entity_id",
    "origin",
    "payload_available",
    "payload_not_available",
    "qos",
    "unique_id",
}
#: Per platform: (required keys, further optional keys).
HA_PLATFORMS = {
    "camera": ({"topic"}, {"image_encoding"}),
    "button": ({"command_topic"}, {"command_template", "device_class", "payload_press", "retain"}),
    "switch": (
        {"command_topic"},
        {
            "command_template",
            "device_class",
            "optimistic",
            "payload_off",
            "payload_on",
            "retain",
            "state_off",
            "state_on",
            "state_topic",
            "value_template",
        },
    ),
    "binary_sensor": (
        {"state_topic"},
        {"device_class", "expire_after", "force_update", "off_delay", "payload_off", "payload_on", "value_template"},
    ),
    "sensor": (
        {"state_topic"},
        {
            "device_class",
            "expire_after",
            "force_update",
            "last_reset_value_template",
            "options",
            "state_class",
            "suggested_display_precision",
            "unit_of_measurement",
            "value_template",
        },
    ),
}
HA_DEVICE = {
    "configuration_url",
    "connections",
    "hw_version",
    "identifiers",
    "manufacturer",
    "model",
    "model_id",
    "name",
    "serial_number",
    "suggested_area",
    "sw_version",
    "via_device",
}
HA_AVAILABILITY = {"topic", "payload_available", "payload_not_available", "value_template"}
HA_ORIGIN = {"name", "sw_version", "support_url"}


def check_ha_config(topic: str, payload: dict, prefix: str = "homeassistant") -> str:
    """Assert ``payload`` is a valid discovery config for ``topic``; returns its platform."""
    parts = topic.split("/")
    assert parts[0] == prefix and parts[-1] == "config" and len(parts) == 5, topic
    platform = parts[1]
    assert platform in HA_PLATFORMS, platform
    required, optional = HA_PLATFORMS[platform]
    keys = set(payload)
    assert required <= keys, (topic, required - keys)
    assert keys <= required | optional | HA_COMMON, (topic, keys - required - optional - HA_COMMON)
    assert set(payload["device"]) <= HA_DEVICE and payload["device"]["identifiers"]
    assert set(payload["origin"]) <= HA_ORIGIN and payload["origin"]["name"]
    for entry in payload["availability"]:
        assert set(entry) <= HA_AVAILABILITY and entry["topic"]
    assert payload["qos"] in (0, 1, 2)
    for key in ("topic", "state_topic", "command_topic"):
        if key in payload:
            assert not set(payload[key]) & {"+", "#"}, payload[key]
    return platform


# --- topics ------------------------------------------------------------------------------------


def test_topic_tree_and_parsing():
    topics = Topics("camservice/box-1/")
    assert topics.state("camera0") == "camservice/box-1/cameras/camera0/state"
    assert topics.command("camera0", "recording") == "camservice/box-1/cameras/camera0/recording/set"
    assert topics.parse_command("camservice/box-1/cameras/camera0/recording/set") == ("camera0", "recording")
    assert topics.parse_command("camservice/box-1/cameras/camera0/zoom/set") == ("camera0", "zoom")
    for other in (
        "camservice/box-1/cameras/camera0/state",
        "camservice/box-2/cameras/camera0/recording/set",
        "camservice/box-1/cameras//recording/set",
        "camservice/box-1/cameras/camera0/recording/set/more",
    ):
        assert topics.parse_command(other) is None, other
    assert topics.parse_state("camservice/box-1/cameras/camera7/state") == "camera7"
    assert topics.parse_state("camservice/box-1/cameras/camera7/snapshot") is None


def test_prefix_defaults_to_the_host_name_and_refuses_wildcards():
    assert default_prefix("edge box#1") == "camservice/edge_box_1"
    for bad in ("", "/", "a/+/b", "a/#", "$SYS/x"):
        assert check_prefix(bad), bad
        with pytest.raises(ValueError):
            Topics(bad)


# --- commands ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "payload", "method", "params"),
    [
        ("snapshot", b"", "take_snapshot", {"device": "camera0", "format": "jpg"}),
        ("snapshot", b"PRESS", "take_snapshot", {"device": "camera0", "format": "jpg"}),
        ("snapshot", b'{"filename": "x.jpg"}', "take_snapshot", {"device": "camera0", "format": "jpg", "filename": "x.jpg"}),
        ("recording", b"on", "start_recording", {"device": "camera0"}),
        ("recording", b" OFF\n", "stop_recording", {"device": "camera0"}),
        ("recording", b'{"duration": 30}', "start_recording", {"device": "camera0", "duration": 30}),
        ("recording", b'{"duration_minutes": 2, "format": "mkv"}', "start_recording",
         {"device": "camera0", "duration_minutes": 2, "format": "mkv"}),
        ("recording", b'{"state": "OFF"}', "stop_recording", {"device": "camera0"}),
    ],
)  # fmt: skip
def test_commands_become_one_api_call(action, payload, method, params):
    command = commands.parse("camera0", action, payload)
    assert (command.method, command.params) == (method, params)


def test_command_id_is_echoed():
    assert commands.parse("camera0", "recording", b'{"duration": 5, "id": "r-1"}').request_id == "r-1"
    assert commands.request_id_of(b'{"id": 7, "duration": "bad"}') == 7
    assert commands.request_id_of(b"\xff") is None


@pytest.mark.parametrize(
    ("action", "payload", "code", "param"),
    [
        ("recording", b"MAYBE", INVALID_PARAMS, None),
        ("recording", b"", INVALID_PARAMS, None),
        ("recording", b"[1, 2]", INVALID_PARAMS, None),
        ("recording", b"\xff\xfe", INVALID_PARAMS, None),
        ("recording", b'{"bogus": 1}', INVALID_PARAMS, "bogus"),
        ("recording", b'{"state": "SIDEWAYS"}', INVALID_PARAMS, "state"),
        ("recording", b'{"state": "OFF", "duration": 5}', INVALID_PARAMS, "duration"),
        ("recording", b'{"duration": 5, "duration_hours": 1}', INVALID_PARAMS, "duration_hours"),
        ("recording", b'{"id": [1]}', INVALID_PARAMS, "id"),
        ("snapshot", b'{"format": "png"}', INVALID_PARAMS, "format"),
        ("zoom", b"ON", INVALID_PARAMS, "action"),
        ("recording", b"ON" * 3000, INVALID_PARAMS, None),
    ],
)
def test_malformed_commands_raise_the_contracts_errors(action, payload, code, param):
    with pytest.raises(commands.RpcError) as caught:
        commands.parse("camera0", action, payload)
    assert caught.value.code == code
    assert caught.value.data["reason"]
    assert caught.value.data.get("param") == param


def test_a_retained_command_is_refused():
    with pytest.raises(commands.RpcError) as caught:
        commands.parse("camera0", "snapshot", b"ON", retained=True)
    assert caught.value.code == INVALID_REQUEST


# --- outbox --------------------------------------------------------------------------------------


def test_outbox_keeps_latest_state_per_topic_and_bounds_events():
    box = Outbox(limit=3)
    box.put(Message("s/a", b"1", True, "state"))
    box.put(Message("s/a", b"2", True, "state"))
    for number in range(5):
        box.put(Message("e", str(number).encode(), False, "event"))
    assert box.dropped == {"event": 2}
    sent = []
    while (message := box.next()) is not None:
        sent.append(message.payload)
        box.sent(message)
    assert sent == [b"2", b"2", b"3", b"4"]
    # Nothing changed: the same state is not queued again...
    box.put(Message("s/a", b"2", True, "state"))
    assert box.next() is None
    # ...but every retained message goes out again after a reconnection, availability first.
    box.put(Message("avail", b"online", True, "availability"))
    box.sent(box.next())
    box.reconnected(first="avail")
    assert [box.next().topic, box.next().topic, box.next()] == ["avail", "s/a", None]


def test_outbox_puts_failed_messages_back_in_order_and_forgets_cleared_topics():
    box = Outbox(limit=10)
    for number in range(3):
        box.put(Message("e", bytes([number]), False))
    first, second = box.next(), box.next()
    box.failed(second)
    box.failed(first)
    assert [box.next().payload, box.next().payload, box.next().payload] == [b"\0", b"\1", b"\2"]
    clear = Message("s/gone", b"", True, "state")
    box.put(clear)
    box.sent(box.next())
    box.reconnected()
    assert box.next() is None
    # A state replaced while its older value was on the wire is not put back.
    box.put(Message("s/x", b"old", True))
    old = box.next()
    box.put(Message("s/x", b"new", True))
    box.failed(old)
    assert box.next().payload == b"new" and box.next() is None


# --- camera model -----------------------------------------------------------------------------


def camera(cid="camera0", device="sim:0", status="CONNECTED", recording=False, **extra):
    record = {
        "id": cid,
        "device": device,
        "status": status,
        "name": "Cam",
        "resolution": "640x480",
        "fps": 15,
        "streams": {"rtsp": "rtsp://h/x"},
        "recording": recording,
        "readers": 2,
    }
    return record | extra


def test_model_publishes_state_discovery_and_events():
    topics = Topics("cs/box")
    model = Model(topics, Discovery(topics, "homeassistant", "box", 1))
    messages = model.camera_event(camera(), now=1.0)
    kinds = [m.kind for m in messages]
    assert kinds == ["discovery"] * 4 + ["state", "event"]
    state = json.loads(messages[4].payload)
    assert tuple(state) == STATE_FIELDS and messages[4].retain
    event = json.loads(messages[5].payload)
    assert set(event) == {"device", "id", "status", "name", "resolution", "fps", "streams"}
    assert messages[5].topic == "cs/box/events/camera_status_update" and not messages[5].retain
    # The same camera again: no discovery, no state, still the event.
    assert [m.kind for m in model.camera_event(camera(), now=2.0)] == ["event"]
    messages, unknown = model.recording_event({"device": "sim:0", "status": "STARTED"}, now=3.0)
    assert not unknown and json.loads(messages[0].payload)["recording"] is True
    _, unknown = model.recording_event({"device": "sim:9", "status": "STARTED"}, now=3.0)
    assert unknown


def test_a_list_never_overrides_a_newer_event_and_stale_cameras_are_cleared():
    topics = Topics("cs/box")
    model = Model(topics, Discovery(topics, "homeassistant", "box", 1))
    assert model.stale("camera5") == []  # nothing is known before the first list
    model.camera_event(camera(status="DISCONNECTED"), now=10.0)
    model.camera_list([camera(status="CONNECTED"), camera("camera1", "sim:1")], asked_at=9.0)
    assert model.cameras["camera0"]["status"] == "DISCONNECTED"
    assert model.cameras["camera1"]["status"] == "CONNECTED"
    assert model.stale("camera1") == []
    cleared = model.stale("camera5")
    assert {m.topic for m in cleared} >= {"cs/box/cameras/camera5/state", "cs/box/cameras/camera5/snapshot"}
    assert sum(m.topic.startswith("homeassistant/") for m in cleared) == 4
    assert all(m.payload == b"" and m.retain for m in cleared)


def test_discovery_configs_follow_home_assistants_schema():
    topics = Topics("camservice/box")
    discovery = Discovery(topics, "homeassistant", "box", 1)
    model = Model(topics, discovery)
    configs = [(m.topic, json.loads(m.payload)) for m in model.camera_event(camera(), 0.0) if m.kind == "discovery"]
    configs += discovery.service_configs()
    platforms = sorted(check_ha_config(topic, payload) for topic, payload in configs)
    assert platforms == ["binary_sensor", "button", "camera", "sensor", "sensor", "switch"]
    assert len({payload["unique_id"] for _, payload in configs}) == len(configs)
    assert {t for t in discovery.camera_config_topics("camera0")} == {t for t, _ in configs[:4]}


# --- /metrics ------------------------------------------------------------------------------------


def test_bridge_stats_become_metrics(make_server):  # noqa: F811
    server = make_server()
    assert not any(name.startswith("camservice_mqtt") for name in names(scrape(server)))
    stats = {
        "connected": 1,
        "queued": 3,
        "reconnects": 2,
        "published": {"state": 10, "event": 4},
        "dropped": {"event": 7},
        "commands": {"ok": 5, "error": 1},
    }
    deliver(
        server,
        "_worker_stats",
        {"name": "mqtt-0", "kind": "mqtt", "index": 0, "pid": 9, "in_flight": 0, "stats": stats},
    )
    found = scrape(server)
    assert found[("camservice_mqtt_connected", frozenset())] == 1
    assert found[("camservice_mqtt_queued_messages", frozenset())] == 3
    assert found[("camservice_mqtt_reconnects_total", frozenset())] == 2
    assert found[("camservice_mqtt_messages_dropped_total", frozenset({("kind", "event")}))] == 7
    assert found[("camservice_mqtt_messages_published_total", frozenset({("kind", "state")}))] == 10
    assert found[("camservice_mqtt_commands_total", frozenset({("result", "error")}))] == 1
