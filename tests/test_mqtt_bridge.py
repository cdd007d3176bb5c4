"""The MQTT bridge end to end: the real service (``camservice start``) and a real Mosquitto.

The broker runs with a password file and an ACL (:mod:`tests.mqtt_broker`);
every check goes through real MQTT clients (paho-mqtt) on the broker side
and, where the API is involved, a real WebSocket client.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import paho.mqtt.client as paho
import pytest

from camservice.errors import CAMERA_NOT_FOUND, INVALID_PARAMS, INVALID_REQUEST

from .harness import Client, Service, wait_for
from .mqtt_broker import Broker, Listener, available
from .test_mqtt_units import check_ha_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not available(), reason="mosquitto is not installed (.ci/run installs it)"),
]

A = "camservice/boxa"


@pytest.fixture(scope="module")
def broker():
    broker = Broker().start()
    yield broker
    broker.cleanup()


@pytest.fixture(scope="module")
def box(broker):
    service = Service(simulate=1, **broker.settings(A), **{"mqtt.health_interval": 1.0})
    with service:
        yield service


@pytest.fixture
def viewer(broker):
    listener = Listener(broker, "viewer", topics=(f"{A}/#", "homeassistant/#"))
    yield listener
    listener.close()


@pytest.fixture
def operator(broker):
    listener = Listener(broker, "operator", topics=(f"{A}/result",))
    yield listener
    listener.close()


def state_of(message) -> dict:
    return json.loads(message.payload)


def result_with(listener: Listener, request_id, prefix: str = A) -> dict:
    message = listener.wait(f"{prefix}/result", lambda m: json.loads(m.payload).get("id") == request_id)
    return json.loads(message.payload)


def test_state_availability_and_health_are_retained(box, broker, viewer):
    viewer.wait(f"{A}/cameras/camera0/state")
    late = Listener(broker, "viewer", topics=(f"{A}/cameras/camera0/state",))  # subscribes after the publish
    state = late.wait(f"{A}/cameras/camera0/state")
    late.close()
    assert state.retain and state_of(state) == {
        "id": "camera0",
        "device": "sim:0",
        "name": state_of(state)["name"],
        "status": "CONNECTED",
        "resolution": "320x240",
        "fps": 10,
        "recording": False,
    }
    assert viewer.wait(f"{A}/availability").payload == b"online"
    # Every mqtt.health_interval (1 s here); the first ones may predate the workers' registration.
    health = viewer.wait(f"{A}/health", lambda m: state_of(m)["status"] == "healthy", timeout=30)
    body = state_of(health)
    assert set(body["components"]) >= {"gateway", "discovery", "recording", "files"}
    assert 0 <= body["storage"]["usage_percentage"] <= 100 and body["active_recordings"] == 0


def test_hotplug_publishes_retained_state_and_event(box, broker, viewer):
    viewer.wait(f"{A}/availability")
    box.cli("camera", "plug", "--resolution", "640x480", "--fps", "5")
    event = viewer.wait(
        f"{A}/events/camera_status_update", lambda m: state_of(m)["id"] == "camera1" and state_of(m)["fps"] == 5
    )
    assert set(state_of(event)) == {"device", "id", "status", "name", "resolution", "fps", "streams"}
    # A client that subscribes afterwards is handed the state by the broker (retained).
    late = Listener(broker, "viewer", topics=(f"{A}/cameras/camera1/state",))
    try:
        state = late.wait(f"{A}/cameras/camera1/state")
        assert state.retain and state_of(state)["status"] == "CONNECTED" and state_of(state)["resolution"] == "640x480"
    finally:
        late.close()
    box.cli("camera", "unplug", "camera1")
    viewer.wait(f"{A}/cameras/camera1/state", lambda m: state_of(m)["status"] == "DISCONNECTED")


def test_commands_take_a_snapshot_and_a_timed_recording(box, viewer, operator):
    operator.publish(f"{A}/cameras/camera0/snapshot/set", json.dumps({"id": "snap-1"}))
    answer = result_with(operator, "snap-1")
    assert answer["ok"] and answer["command"] == "snapshot" and answer["result"]["status"] == "completed"
    picture = viewer.wait(f"{A}/cameras/camera0/snapshot")
    assert picture.payload[:3] == b"\xff\xd8\xff" and len(picture.payload) == answer["result"]["file_size"]

    operator.publish(f"{A}/cameras/camera0/recording/set", json.dumps({"duration": 1, "id": "rec-1"}))
    answer = result_with(operator, "rec-1")
    assert answer["ok"] and answer["result"]["status"] == "STARTED" and answer["result"]["duration"] == 1
    started = viewer.wait(f"{A}/cameras/camera0/state", lambda m: state_of(m)["recording"] is True)
    done = viewer.wait(
        f"{A}/events/recording_status_update",
        lambda m: state_of(m)["status"] == "COMPLETED" and state_of(m)["session_id"] == answer["result"]["session_id"],
        timeout=30,
    )
    assert state_of(done)["filename"] == answer["result"]["filename"]
    viewer.wait(f"{A}/cameras/camera0/state", lambda m: not state_of(m)["recording"], after=viewer.log.index(started))


def test_a_read_only_users_command_is_refused_by_the_broker(box, broker, operator, viewer):
    refused = {}

    def on_publish(client, userdata, mid, reason, properties):
        refused[mid] = reason

    sender = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    sender.username_pw_set("viewer", "viewer-pw")
    sender.on_publish = on_publish
    sender.connect("127.0.0.1", broker.port)
    sender.loop_start()
    try:
        info = sender.publish(f"{A}/cameras/camera0/recording/set", json.dumps({"id": "viewer-1"}), qos=1)
        wait_for(lambda: info.mid in refused, 10, message="PUBACK")
        assert refused[info.mid].is_failure and refused[info.mid].getName() == "Not authorized"
    finally:
        sender.loop_stop()
        sender.disconnect()
    # The bridge never heard it: the operator's next command is the next answer, and nothing records.
    operator.publish(f"{A}/cameras/camera0/snapshot/set", json.dumps({"id": "after-viewer"}))
    result_with(operator, "after-viewer")
    ids = [json.loads(m.payload).get("id") for m in operator.on(f"{A}/result")]
    assert "viewer-1" not in ids
    assert state_of(viewer.wait(f"{A}/cameras/camera0/state"))["recording"] is False


def test_malformed_commands_get_errors_and_the_bridge_lives_on(box, operator, viewer):
    bridge_pid = box.pids()["mqtt-0"]
    cases = [
        ("camera0/recording/set", b'{"id": "m1", "duration": "soon"}', INVALID_PARAMS),  # the service's check
        ("camera0/recording/set", b'{"id": "m2", "duration": 0}', INVALID_PARAMS),
        ("camera0/recording/set", b'{"id": "m3", "bogus": true}', INVALID_PARAMS),
        ("camera0/zoom/set", b'{"id": "m4"}', INVALID_PARAMS),
        ("nosuchcamera/snapshot/set", b'{"id": "m5"}', CAMERA_NOT_FOUND),
        ("camera0/snapshot/set", b'{"id": "m6", "filename": "../../etc/passwd"}', INVALID_PARAMS),
    ]
    for path, payload, _ in cases:
        operator.publish(f"{A}/cameras/{path}", payload)
    for number, (_, _, code) in enumerate(cases, 1):
        answer = result_with(operator, f"m{number}")
        assert not answer["ok"] and answer["error"]["code"] == code, answer
        assert code == CAMERA_NOT_FOUND or answer["error"]["data"]["reason"]
    for payload in (b"\xff\xfe\x00", b"MAYBE", b"[1, 2]", b"x" * 5000):
        mark = operator.mark()
        operator.publish(f"{A}/cameras/camera0/recording/set", payload)
        answer = json.loads(operator.wait(f"{A}/result", after=mark).payload)
        assert not answer["ok"] and answer["error"]["code"] == INVALID_PARAMS, (payload[:10], answer)
    operator.publish(f"{A}/cameras/camera0/snapshot/set", b'{"id": "still-alive"}')
    assert result_with(operator, "still-alive")["ok"]
    assert box.pids()["mqtt-0"] == bridge_pid
    assert state_of(viewer.wait(f"{A}/cameras/camera0/state"))["recording"] is False


def test_a_retained_command_runs_once_never_again_on_reconnection(box, operator):
    # Published with retain, it runs when it arrives...
    operator.publish(f"{A}/cameras/camera0/snapshot/set", b'{"id": "retained-1"}', retain=True)
    assert result_with(operator, "retained-1")["ok"]
    # ...but the broker hands it over again to every new subscription: a restarted bridge refuses it.
    mark = operator.mark()
    os.kill(box.pids()["mqtt-0"], signal.SIGKILL)
    replay = operator.wait(f"{A}/result", lambda m: json.loads(m.payload).get("id") == "retained-1", 60, after=mark)
    answer = json.loads(replay.payload)
    assert not answer["ok"] and answer["error"]["code"] == INVALID_REQUEST
    operator.publish(f"{A}/cameras/camera0/snapshot/set", b"", retain=True)  # clear it from the broker


def test_broker_killed_and_restarted_gets_the_state_back(box, broker):
    watcher = Listener(broker, "viewer", topics=(f"{A}/#",))
    watcher.wait(f"{A}/cameras/camera0/state")
    watcher.close()
    broker.kill()

    async def api_meanwhile():
        async with Client(box.url, box.token("operator")) as client:
            listing = await client.call("get_camera_list")
            await client.call("start_recording", {"device": "camera0", "duration": 60})
            return listing

    # The API does not care that the broker is gone; a change made meanwhile is not lost.
    assert asyncio.run(asyncio.wait_for(api_meanwhile(), 30))["total"] >= 1
    broker.start()  # same port, no persistence: it remembers nothing
    fresh = Listener(broker, "viewer", topics=(f"{A}/#", "homeassistant/#"))
    try:
        assert fresh.wait(f"{A}/availability", timeout=60).payload == b"online"
        fresh.wait(f"{A}/cameras/camera0/state", lambda m: state_of(m)["recording"] is True, timeout=30)
        fresh.wait("homeassistant/switch/camservice_boxa/camera0_recording/config")
    finally:
        fresh.close()
    # Held by the broker again (retained), for anyone who subscribes from now on.
    late = Listener(broker, "viewer", topics=(f"{A}/cameras/camera0/state",))
    assert late.wait(f"{A}/cameras/camera0/state").retain
    late.close()

    async def stop():
        async with Client(box.url, box.token("operator")) as client:
            await client.call("stop_recording", {"device": "camera0"})

    asyncio.run(asyncio.wait_for(stop(), 30))


def test_homeassistant_discovery_payloads(box, broker):
    listener = Listener(broker, "viewer", topics=("homeassistant/#",))
    try:
        expected = {
            "homeassistant/camera/camservice_boxa/camera0_snapshot/config",
            "homeassistant/button/camservice_boxa/camera0_take_snapshot/config",
            "homeassistant/switch/camservice_boxa/camera0_recording/config",
            "homeassistant/binary_sensor/camservice_boxa/camera0_connected/config",
            "homeassistant/sensor/camservice_boxa/storage_usage/config",
            "homeassistant/sensor/camservice_boxa/active_recordings/config",
        }
        configs = {topic: json.loads(listener.wait(topic).payload) for topic in sorted(expected)}
        for topic, payload in configs.items():
            check_ha_config(topic, payload)
            for key in ("topic", "state_topic", "command_topic"):
                if key in payload:
                    assert payload[key].startswith(f"{A}/"), payload[key]
        switch = configs["homeassistant/switch/camservice_boxa/camera0_recording/config"]
        assert switch["command_topic"] == f"{A}/cameras/camera0/recording/set"
        assert switch["availability"][0]["topic"] == f"{A}/availability"
    finally:
        listener.close()


def test_two_services_with_different_prefixes_share_a_broker(box, broker, viewer, operator):
    B = "camservice/boxb"
    other = Service(simulate=2, **broker.settings(B))
    with other:
        listener = Listener(broker, "viewer", topics=(f"{B}/#", f"{A}/cameras/+/state"))
        commander = Listener(broker, "operator", topics=(f"{B}/result", f"{A}/result"))
        try:
            listener.wait(f"{B}/cameras/camera1/state")
            assert state_of(listener.wait(f"{B}/cameras/camera0/state"))["device"] == "sim:0"
            assert state_of(listener.wait(f"{A}/cameras/camera0/state"))["device"] == "sim:0"
            commander.publish(f"{B}/cameras/camera1/snapshot/set", json.dumps({"id": "fleet-b"}))
            answer = result_with(commander, "fleet-b", prefix=B)
            assert answer["ok"] and answer["result"]["device"] == "sim:1"
            commander.publish(f"{A}/cameras/camera0/snapshot/set", json.dumps({"id": "fleet-a"}))
            result_with(commander, "fleet-a", prefix=A)
            # Each box answered only its own command.
            seen = [(m.topic, json.loads(m.payload).get("id")) for m in commander.log]
            assert (f"{A}/result", "fleet-b") not in seen and (f"{B}/result", "fleet-a") not in seen
            configs = Listener(broker, "viewer", topics=("homeassistant/switch/#",))
            a = json.loads(configs.wait("homeassistant/switch/camservice_boxa/camera0_recording/config").payload)
            b = json.loads(configs.wait("homeassistant/switch/camservice_boxb/camera0_recording/config").payload)
            configs.close()
            assert a["unique_id"] != b["unique_id"] and a["device"]["identifiers"] != b["device"]["identifiers"]
        finally:
            listener.close()
            commander.close()


def test_removed_cameras_are_cleared_after_a_restart(broker):
    prefix = "camservice/boxc"
    service = Service(simulate=1, **broker.settings(prefix))
    try:
        service.start()
        listener = Listener(broker, "viewer", topics=(f"{prefix}/#", "homeassistant/#"))
        service.cli("camera", "plug")
        listener.wait(f"{prefix}/cameras/camera1/state")
        switch = "homeassistant/switch/camservice_boxc/camera1_recording/config"
        listener.wait(switch, lambda m: m.payload)
        service.stop()
        listener.wait(f"{prefix}/availability", lambda m: m.payload == b"offline")
        late = Listener(broker, "viewer", topics=(f"{prefix}/availability",))
        assert late.wait(f"{prefix}/availability").payload == b"offline"  # retained
        late.close()
        service.start()  # a new run: the plugged simulated camera is gone
        listener.wait(f"{prefix}/cameras/camera1/state", lambda m: m.payload == b"")
        listener.wait(switch, lambda m: m.payload == b"")
        listener.close()
        late = Listener(broker, "viewer", topics=(f"{prefix}/cameras/+/state",))
        state = late.wait(f"{prefix}/cameras/camera0/state")
        assert state_of(state)["status"] == "CONNECTED"
        late.close()
    finally:
        service.cleanup()


def test_metrics_show_the_bridge(box):
    import urllib.request

    def scrape():
        with urllib.request.urlopen(f"http://127.0.0.1:{box.port}/metrics", timeout=10) as response:
            return response.read().decode()

    def connected():
        text = scrape()
        return text if "camservice_mqtt_connected 1.0" in text else None

    text = wait_for(connected, 20, message="the bridge in /metrics")
    assert 'camservice_mqtt_messages_published_total{kind="state"}' in text
