"""The discovery worker as a real process, driven through a minimal fake gateway.

The fake binds what a gateway and the supervisor's event proxy bind (the
request ROUTER, the events-in SUB, the events-out PUB), so the worker runs
unmodified: ``python -m camservice.process discovery 0``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import zmq

from camservice import comms, config, simnodes
from camservice.envelope import Event, Ready, Reply, Request, unpack

WAIT = 20.0  # seconds any single expected message may take on a slow CI machine

pytestmark = pytest.mark.skipif(
    bool(glob.glob("/dev/video*")), reason="real cameras on this machine would join the lists"
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class FakeGateway:
    def __init__(self, state_dir: str):
        cfg = config.load(overrides={"runtime.state_dir": state_dir}, environ={})
        comms.prepare_ipc_dir(cfg)
        endpoints = comms.Endpoints.from_config(cfg)
        self.ctx = zmq.Context()
        self.router = comms.router(self.ctx)
        self.router.bind(endpoints.gateways[0])
        self.events = self.ctx.socket(zmq.SUB)
        self.events.setsockopt(zmq.SUBSCRIBE, b"")
        self.events.bind(endpoints.events_in)
        self.bus = self.ctx.socket(zmq.PUB)
        self.bus.bind(endpoints.events_out)
        self.worker: bytes | None = None
        self.seq = 0
        self.published: list[Event] = []  # every event from discovery, any topic, in arrival order

    def close(self) -> None:
        for sock in (self.router, self.events, self.bus):
            sock.close(linger=0)
        self.ctx.term()

    def wait_ready(self) -> Ready:
        """READY from a live worker (heartbeats of a previous, stopped one may still be queued)."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.router.poll(100):
                identity, frame = self.router.recv_multipart()
                for message in unpack(frame):
                    if isinstance(message, Ready) and alive(message.pid):
                        self.worker = identity
                        return message
        raise AssertionError("the worker never sent READY")

    def call(self, method: str, params: dict | None = None):
        """(error, result) of one request."""
        self.seq += 1
        request = Request(self.seq, method, params or {}, time.time() + WAIT, f"test-{self.seq}", {})
        self.router.send_multipart([self.worker, request.pack()])
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.router.poll(100):
                identity, frame = self.router.recv_multipart()
                for message in unpack(frame):
                    if isinstance(message, Reply) and message.seq == self.seq:
                        return message.error, json.loads(message.result) if message.encoded else message.result
        raise AssertionError(f"no reply to {method}")

    def next_camera_event(self, match, timeout: float = WAIT, poke=None) -> Event:
        return self.next_event("camera_status_update", match, timeout, poke)

    def next_event(self, topic: str, match, timeout: float = WAIT, poke=None) -> Event:
        """The next event of ``topic`` whose data satisfies ``match``.

        ``poke`` is called every 100 ms while waiting (to re-send an event
        the worker's subscription may not have been ready for).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if poke is not None:
                poke()
            if self.events.poll(100):
                event = Event.from_frames(self.events.recv_multipart())
                if event.source.startswith("discovery"):
                    self.published.append(event)
                if event.topic == topic and match(event.data):
                    return event
        raise AssertionError(f"expected {topic} event never came")

    def publish(self, topic: str, data: dict) -> None:
        self.bus.send_multipart(Event(topic, "recording-0", 1, data, time.time()).frames())


def start_worker(state_dir: str, simulate: int, via_shell: bool = False, **settings: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMSERVICE_")}
    env.update({config.env_name(key): value for key, value in settings.items()})
    env.update(
        CAMSERVICE_RUNTIME_STATE_DIR=state_dir,
        CAMSERVICE_CAMERAS_SIMULATE=str(simulate),
        CAMSERVICE_CAMERAS_UDEV="false",
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
    )
    command = [sys.executable, "-m", "camservice.process", "discovery", "0"]
    if via_shell:  # a different parent: what a new service run looks like to the worker
        command = ["sh", "-c", " ".join(command) + "; exit $?"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop_worker(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=WAIT)


@pytest.fixture
def state_dir():
    # ipc socket paths are limited to ~100 bytes: pytest's tmp_path can be too long.
    path = tempfile.mkdtemp(prefix="csd-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def gateway(state_dir):
    fake = FakeGateway(state_dir)
    yield fake
    fake.close()


def run(state_dir: str, gateway: FakeGateway, simulate: int, via_shell: bool = False, **settings: str):
    process = start_worker(state_dir, simulate, via_shell, **settings)
    try:
        ready = gateway.wait_ready()
    except AssertionError:
        stop_worker(process)
        raise AssertionError(process.stderr.read().decode()[-3000:]) from None
    assert ready.kind == "discovery"
    # The worker's PUB connects to our SUB on its own time (ZeroMQ's slow joiner): READY
    # can arrive first. Its stats (every 2 s) show that what it publishes now reaches us.
    gateway.next_event("_worker_stats", lambda d: True)
    return process


def snapshot(gateway: FakeGateway) -> dict:
    error, result = gateway.call("discovery.snapshot")
    assert error is None
    return result


def test_worker_lists_simulated_cameras_and_follows_hotplug(state_dir, gateway):
    process = run(state_dir, gateway, simulate=3)
    try:
        snap = snapshot(gateway)
        assert snap["source"] == "discovery-0"
        assert [(c["id"], c["device"], c["status"]) for c in snap["cameras"]] == [
            ("camera0", "sim:0", "CONNECTED"),
            ("camera1", "sim:1", "CONNECTED"),
            ("camera2", "sim:2", "CONNECTED"),
        ]
        assert snap["cameras"][0]["source"]["node"] == str(Path(state_dir).resolve() / "dev" / "sim0")
        assert snap["seq"] >= 3  # one event per camera, published before any gateway listened

        simnodes.plug(state_dir, "1280x720", 30)
        plugged = gateway.next_camera_event(lambda d: d["device"] == "sim:3")
        assert (plugged.data["id"], plugged.data["status"], plugged.data["resolution"]) == (
            "camera3",
            "CONNECTED",
            "1280x720",
        )

        simnodes.unplug(state_dir, "sim:1")
        gone = gateway.next_camera_event(lambda d: d["device"] == "sim:1")
        assert (gone.data["id"], gone.data["status"]) == ("camera1", "DISCONNECTED")

        # The snapshot's seq is the publisher's own counter, shared by every
        # topic: what follows it continues without a hole.
        later = snapshot(gateway)
        after = [e.seq for e in gateway.published if e.seq > snap["seq"]]
        assert after == list(range(snap["seq"] + 1, snap["seq"] + 1 + len(after)))
        assert gone.seq <= later["seq"]
        snap = later
        assert {c["id"]: c["status"] for c in snap["cameras"]} == {
            "camera0": "CONNECTED",
            "camera1": "DISCONNECTED",
            "camera2": "CONNECTED",
            "camera3": "CONNECTED",
        }

        error, caps = gateway.call("get_camera_capabilities", {"device": "camera3"})
        assert error is None
        assert caps["device"] == "sim:3" and caps["formats"] == ["YUYV", "MJPEG"]
        assert caps["resolutions"][0] == "1280x720" and caps["frame_rates"]["1280x720"][0] == 30
        for device in ("sim:1", "camera1", "/dev/video0", "camera99"):
            error, _ = gateway.call("get_camera_capabilities", {"device": device})
            assert error["code"] == -32004, device

        error, streams = gateway.call("get_streams")
        assert error is None
        assert [(s["name"], s["source"], s["ready"], s["readers"]) for s in streams] == [
            ("camera0", "sim:0", False, 0),
            ("camera2", "sim:2", False, 0),
            ("camera3", "sim:3", False, 0),
        ]

        recording = gateway.next_camera_event(
            lambda d: d["id"] == "camera0" and d["recording"],
            poke=lambda: gateway.publish("recording_status_update", {"device": "sim:0", "status": "STARTED"}),
        )
        assert recording.data["readers"] == 1
        gateway.publish("recording_status_update", {"device": "camera0", "status": "COMPLETED"})
        stopped = gateway.next_camera_event(lambda d: d["id"] == "camera0")
        assert (stopped.data["recording"], stopped.data["readers"]) == (False, 0)
        error, streams = gateway.call("get_streams")
        assert streams[0]["ready"] is False
    finally:
        stop_worker(process)
    assert process.returncode == 0


def test_restarted_worker_keeps_the_run_and_a_new_run_starts_fresh(state_dir, gateway):
    process = run(state_dir, gateway, simulate=2)
    try:
        simnodes.unplug(state_dir, 1)
        gateway.next_camera_event(lambda d: d["device"] == "sim:1" and d["status"] == "DISCONNECTED")
        simnodes.plug(state_dir, index=5)
        gateway.next_camera_event(lambda d: d["device"] == "sim:5")
    finally:
        stop_worker(process)

    # The supervisor restarts discovery: same parent, same run.
    process = run(state_dir, gateway, simulate=2)
    try:
        cameras = {c["device"]: (c["id"], c["status"]) for c in snapshot(gateway)["cameras"]}
        assert cameras == {
            "sim:0": ("camera0", "CONNECTED"),
            "sim:1": ("camera1", "DISCONNECTED"),
            "sim:5": ("camera2", "CONNECTED"),
        }
    finally:
        stop_worker(process)

    # A new service run: simulated cameras reset, unplugged ones forgotten, ids kept.
    process = run(state_dir, gateway, simulate=2, via_shell=True)
    try:
        cameras = {c["device"]: (c["id"], c["status"]) for c in snapshot(gateway)["cameras"]}
        assert cameras == {"sim:0": ("camera0", "CONNECTED"), "sim:1": ("camera1", "CONNECTED")}
        simnodes.plug(state_dir, index=5)
        assert gateway.next_camera_event(lambda d: d["device"] == "sim:5").data["id"] == "camera2"
    finally:
        stop_worker(process)


def test_service_without_cameras(state_dir, gateway):
    process = run(state_dir, gateway, simulate=0)
    try:
        snap = snapshot(gateway)
        assert (snap["cameras"], snap["source"]) == ([], "discovery-0")
        assert gateway.call("get_streams") == (None, [])
        error, _ = gateway.call("get_camera_capabilities", {"device": "/dev/video0"})
        assert error["code"] == -32004
    finally:
        stop_worker(process)
    log = (Path(state_dir) / "logs" / "discovery-0.log").read_text()
    assert '"mode": "poll"' in log  # no udev here (cameras.udev false): /dev polling, said once


def test_mediamtx_backend_fills_stream_urls(state_dir, gateway):
    from tests.fakes import mediamtx as fakes

    with fakes.FakeMediaMTX() as fake:
        process = run(state_dir, gateway, simulate=2, **{"media.backend": "mediamtx", "media.mediamtx_api": fake.url})
        try:
            status = gateway.next_event("_media_status", lambda d: True)
            assert status.data == {"state": "running", "backend": "mediamtx"}
            cameras = {c["id"]: c for c in snapshot(gateway)["cameras"]}
            assert cameras["camera1"]["streams"]["rtsp"].endswith(":8554/camera1")
            assert {"camera0", "camera1"} <= set(fake.paths)

            simnodes.unplug(state_dir, 1)
            gateway.next_camera_event(lambda d: d["id"] == "camera1" and d["status"] == "DISCONNECTED")
            assert fake.wait_until(lambda: "camera1" not in fake.paths, WAIT)
            assert "camera0" in fake.paths
        finally:
            stop_worker(process)
        assert fake.violations == []
