"""Recording worker with real ffmpeg and simulated cameras, driven in-process.

Each test builds a :class:`RecordingManager` with a configuration rooted in
its own temporary folder, simulated cameras plugged with the discovery
worker's simulator, a dictionary as the camera table and a list as the
event bus. Waits poll with generous timeouts; asserts never depend on how
fast the machine is. Run as a script (``python this_file.py child STATE``)
it is the process the SIGKILL test kills.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from camservice.workers.recording import sessions as sessions_module
from camservice.workers.recording.sessions import RecordingManager

from camservice import config as config_module
from camservice import errors, ffmpeg, methods
from camservice import simnodes as simulator
from camservice.cameras import DISCONNECTED, Camera
from camservice.errors import RpcError
from tests.harness import free_port

pytestmark = pytest.mark.slow

SIZE = "320x240"


# --- harness ---------------------------------------------------------------------------


def make_config(state: Path, **overrides: Any):
    values = {
        "runtime.state_dir": str(state),
        "runtime.transport": "tcp",
        "storage.min_free_bytes": 0,
        "recording.stall_seconds": 10.0,
    }
    values.update(overrides)
    return config_module.load(overrides=values, environ={})


def plug_camera(state: Path, index: int, size: str = SIZE, fps: int = 15) -> Camera:
    simulator.plug(state, size, fps, index=index)
    node = simulator.read_node(simulator.node_path(state, index))
    return Camera(
        id=f"camera{index}", device=f"sim:{index}", resolution=size, fps=fps, simulated=True, source=node.source()
    )


class Harness:
    def __init__(self, state: Path, cameras: int = 1, **overrides: Any):
        self.state = state
        self.config = make_config(state, **overrides)
        self.cameras = {f"camera{i}": plug_camera(state, i) for i in range(cameras)}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.manager = self.new_manager()

    def new_manager(self) -> RecordingManager:
        manager = RecordingManager(self.config, self.find, lambda topic, data: self.events.append((topic, data)))
        manager.stop_timeout = 3.0
        return manager

    def find(self, device: str) -> Camera | None:
        for camera in self.cameras.values():
            if device in (camera.id, camera.device):
                return camera
        return None

    def statuses(self, session_id: str) -> list[dict[str, Any]]:
        return [d for t, d in self.events if t == "recording_status_update" and d["session_id"] == session_id]

    def file_updates(self, **match: Any) -> list[dict[str, Any]]:
        return [d for t, d in self.events if t == "_file_update" and all(d.get(k) == v for k, v in match.items())]

    async def wait_status(self, session_id: str, status: str, timeout: float = 20.0) -> dict[str, Any]:
        await until(lambda: any(d["status"] == status for d in self.statuses(session_id)), timeout)
        return next(d for d in self.statuses(session_id) if d["status"] == status)

    def recording(self, name: str) -> Path:
        return self.config.recordings_dir / name

    def node(self, index: int = 0) -> Path:
        return simulator.node_path(self.state, index)


async def until(predicate, timeout: float = 20.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def start_params(
    device: str = "sim:0", duration: int | None = None, fmt: str = "mp4", filename: str | None = None
) -> dict[str, Any]:
    """Parameters as the gateway's validator hands them to the worker."""
    params = {"device": device, "duration": duration, "format": fmt, "filename": filename}
    return methods.start_recording({k: v for k, v in params.items() if v is not None})


def snap_params(device: str = "sim:0", fmt: str = "jpg", filename: str | None = None) -> dict[str, Any]:
    params = {"device": device, "format": fmt, "filename": filename}
    return methods.take_snapshot({k: v for k, v in params.items() if v is not None})


def holders(path: Path) -> set[int]:
    """Processes holding ``path`` open (the simulated device's lock goes with the fd)."""
    pids = set()
    target = str(path)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd).removesuffix(" (deleted)") == target:
                    pids.add(int(entry.name))
        except OSError:
            continue
    return pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def probe(path: Path) -> ffmpeg.MediaInfo:
    return ffmpeg.probe(path)


# --- snapshots ---------------------------------------------------------------------------


def test_snapshot_of_an_idle_camera_jpg_and_png(tmp_path: Path):
    h = Harness(tmp_path)

    async def scenario():
        await h.manager.open()
        jpg = await h.manager.take_snapshot(snap_params("sim:0", "jpg"))
        png = await h.manager.take_snapshot(snap_params("camera0", "png", "still"))
        return jpg, png

    jpg, png = asyncio.run(scenario())
    assert jpg["status"] == "completed" and jpg["device"] == "sim:0" and jpg["timestamp"].endswith("Z")
    assert Path(jpg["file_path"]).parent == h.config.snapshots_dir
    assert jpg["file_size"] == Path(jpg["file_path"]).stat().st_size > 0
    info = probe(Path(jpg["file_path"]))
    assert info.codec == "mjpeg" and info.resolution == SIZE
    assert png["filename"] == "still.png"
    info = probe(Path(png["file_path"]))
    assert info.codec == "png" and info.resolution == SIZE
    assert not holders(h.node())  # the idle camera was released
    assert [d["filename"] for d in h.file_updates(kind="snapshot")] == [jpg["filename"], "still.png"]
    assert not [p for p in h.config.snapshots_dir.iterdir() if p.name.startswith(".")]


# --- recordings ----------------------------------------------------------------------------


def test_timed_recording_with_snapshots_while_recording(tmp_path: Path):
    h = Harness(tmp_path)

    async def scenario():
        await h.manager.open()
        started = await h.manager.start_recording(start_params(duration=3))
        session = h.manager.sessions[started["session_id"]]
        pid = session.run.pid
        second = None
        try:
            await h.manager.start_recording(start_params(device="camera0"))
        except RpcError as exc:
            second = exc
        jpg = await h.manager.take_snapshot(snap_params("sim:0", "jpg"))
        png = await h.manager.take_snapshot(snap_params("sim:0", "png"))
        lock_holders = holders(h.node())
        same_run = session.run is not None and session.run.pid == pid
        active = json.loads((h.state / "run" / "recording-active.json").read_text())
        completed = await h.wait_status(started["session_id"], "COMPLETED")
        return started, second, jpg, png, lock_holders, pid, same_run, active, completed

    started, second, jpg, png, lock_holders, pid, same_run, active, completed = asyncio.run(scenario())
    assert started["status"] == "STARTED" and started["duration"] == 3 and started["format"] == "mp4"
    assert started["start_time"].endswith("Z")
    assert second is not None and second.code == errors.IN_PROGRESS
    # The snapshots came from the running capture: one process holds the device, the recording's.
    assert lock_holders == {pid} and same_run
    assert probe(Path(jpg["file_path"])).resolution == SIZE
    assert probe(Path(png["file_path"])).codec == "png"
    assert list(active["files"]) == [started["filename"]]
    assert active["files"][started["filename"]]["session_id"] == started["session_id"]
    info = probe(h.recording(started["filename"]))
    assert info.codec == "h264" and info.resolution == SIZE
    assert abs(info.duration - 3) <= 1
    assert [d["status"] for d in h.statuses(started["session_id"])] == ["STARTED", "COMPLETED"]
    assert "error" not in completed
    assert h.file_updates(filename=started["filename"], state="complete")
    assert json.loads((h.state / "run" / "recording-active.json").read_text()) == {"files": {}}
    assert not list((h.state / "journal").iterdir())
    assert not holders(h.node()) and not alive(pid)


def test_four_cameras_record_at_once(tmp_path: Path):
    h = Harness(tmp_path, cameras=4)

    async def scenario():
        await h.manager.open()
        started = [await h.manager.start_recording(start_params(device=f"sim:{i}")) for i in range(4)]
        pids = {h.manager.sessions[s["session_id"]].run.pid for s in started}
        await asyncio.sleep(2)
        stopped = await asyncio.gather(*(h.manager.stop_recording({"device": f"camera{i}"}) for i in range(4)))
        return started, pids, stopped

    started, pids, stopped = asyncio.run(scenario())
    assert len(pids) == 4
    for begin, end in zip(started, stopped):
        assert end["status"] == "STOPPED" and end["session_id"] == begin["session_id"]
        assert end["file_size"] == h.recording(begin["filename"]).stat().st_size
        info = probe(h.recording(begin["filename"]))
        assert info.codec == "h264" and info.resolution == SIZE and info.duration > 0
        assert [d["status"] for d in h.statuses(begin["session_id"])] == ["STARTED", "STOPPED"]


def test_segment_rollover_by_time(tmp_path: Path):
    h = Harness(tmp_path, **{"recording.segment_seconds": 2})

    async def scenario():
        await h.manager.open()
        started = await h.manager.start_recording(start_params(duration=5, fmt="mkv", filename="clip"))
        await h.wait_status(started["session_id"], "COMPLETED")
        return started

    started = asyncio.run(scenario())
    assert started["filename"] == "clip.mkv"
    names = sorted(p.name for p in h.config.recordings_dir.iterdir())
    assert names[0] == "clip.mkv" and names[1] == "clip_part001.mkv" and len(names) >= 2
    for name in names:
        assert probe(h.recording(name)).codec == "h264"
    assert {d["filename"] for d in h.file_updates(state="complete")} == set(names)


def test_segment_rollover_by_size(tmp_path: Path):
    h = Harness(tmp_path, **{"recording.segment_max_bytes": 40_000})

    async def scenario():
        await h.manager.open()
        started = await h.manager.start_recording(start_params())
        await until(lambda: h.recording(f"{started['filename'][:-4]}_part001.mp4").exists())
        stopped = await h.manager.stop_recording({"device": "sim:0"})
        return started, stopped

    started, stopped = asyncio.run(scenario())
    names = sorted(p.name for p in h.config.recordings_dir.iterdir())
    assert len(names) >= 2 and started["filename"] in names
    assert stopped["file_size"] == sum(h.recording(n).stat().st_size for n in names)
    for name in names:
        assert probe(h.recording(name)).codec == "h264"


def test_stalled_capture_is_restarted(tmp_path: Path):
    h = Harness(tmp_path, **{"recording.stall_seconds": 1.0})
    h.manager.stop_timeout = 0.5

    async def scenario():
        await h.manager.open()
        started = await h.manager.start_recording(start_params())
        session = h.manager.sessions[started["session_id"]]
        first = session.run.pid
        os.kill(first, signal.SIGSTOP)  # a capture that hangs without exiting
        await until(lambda: session.run is not None and session.run.pid != first)
        await until(lambda: h.recording(f"{started['filename'][:-4]}_part001.mp4").exists())
        stopped = await h.manager.stop_recording({"device": "sim:0"})
        return started, first, stopped

    started, first, stopped = asyncio.run(scenario())
    assert stopped["status"] == "STOPPED" and not alive(first)
    assert probe(h.recording(started["filename"][:-4] + "_part001.mp4")).codec == "h264"


def test_unplug_mid_recording_fails_the_session(tmp_path: Path):
    h = Harness(tmp_path, cameras=2)

    async def scenario():
        await h.manager.open()
        by_node = await h.manager.start_recording(start_params(device="sim:0"))
        by_event = await h.manager.start_recording(start_params(device="sim:1"))
        await asyncio.sleep(1.5)
        simulator.unplug(h.state, 0)
        h.cameras["camera1"] = Camera(**{**h.cameras["camera1"].__dict__, "status": DISCONNECTED})
        h.manager.camera_changed(h.cameras["camera1"])
        failed = [
            await h.wait_status(by_node["session_id"], "FAILED"),
            await h.wait_status(by_event["session_id"], "FAILED"),
        ]
        after = None
        try:
            await h.manager.stop_recording({"device": "sim:0"})
        except RpcError as exc:
            after = exc
        return by_node, by_event, failed, after

    by_node, by_event, failed, after = asyncio.run(scenario())
    for started, event in zip((by_node, by_event), failed):
        assert event["error"] == "camera disconnected"
        assert probe(h.recording(started["filename"])).codec == "h264"
        assert h.file_updates(filename=started["filename"], state="failed")
    assert after is not None and after.code == errors.INVALID_PARAMS
    assert not list((h.state / "journal").iterdir())
    assert not holders(h.node(1))


def test_disk_low_refuses_and_stops_recordings(tmp_path: Path, monkeypatch):
    h = Harness(tmp_path, **{"storage.min_free_bytes": 1 << 62})

    async def refused():
        await h.manager.open()
        codes = []
        for call in (h.manager.start_recording(start_params()), h.manager.take_snapshot(snap_params("sim:0", "jpg"))):
            try:
                await call
            except RpcError as exc:
                codes.append(exc.code)
        return codes

    assert asyncio.run(refused()) == [errors.STORAGE_FULL, errors.STORAGE_FULL]
    assert not list(h.config.recordings_dir.iterdir())

    h.config = make_config(tmp_path, **{"storage.min_free_bytes": 1000})
    h.manager = h.new_manager()

    async def runs_low():
        await h.manager.open()
        started = await h.manager.start_recording(start_params())
        await asyncio.sleep(0.5)

        async def no_space(folder):
            return 10

        monkeypatch.setattr(sessions_module.storage, "free_bytes", no_space)
        return started, await h.wait_status(started["session_id"], "FAILED")

    started, failed = asyncio.run(runs_low())
    assert failed["error"].startswith("storage")
    assert probe(h.recording(started["filename"])).codec == "h264"


def test_errors_for_unknown_camera_idle_stop_and_ffmpeg_failure(tmp_path: Path):
    h = Harness(tmp_path)
    fake = tmp_path / "video9"  # a regular file is no capture device
    fake.write_text("")
    h.cameras["camera9"] = Camera(
        id="camera9",
        device=str(fake),
        source={"kind": "v4l2", "path": str(fake), "input_format": "mjpeg", "size": "320x240", "fps": 15},
    )

    async def scenario():
        await h.manager.open()
        found = {}
        for name, call in (
            ("start_unknown", h.manager.start_recording(start_params(device="sim:7"))),
            ("snapshot_unknown", h.manager.take_snapshot(snap_params("nope", "jpg"))),
            ("stop_unknown", h.manager.stop_recording({"device": "sim:7"})),
            ("stop_idle", h.manager.stop_recording({"device": "sim:0"})),
            ("start_broken", h.manager.start_recording(start_params(device="camera9"))),
            ("snapshot_broken", h.manager.take_snapshot(snap_params("camera9", "jpg"))),
        ):
            try:
                await call
            except RpcError as exc:
                found[name] = exc
        return found

    found = asyncio.run(scenario())
    assert found["start_unknown"].code == errors.CAMERA_NOT_FOUND
    assert found["snapshot_unknown"].code == errors.CAMERA_NOT_FOUND
    assert found["stop_unknown"].code == errors.CAMERA_NOT_FOUND
    assert found["stop_idle"].code == errors.INVALID_PARAMS and found["stop_idle"].data["reason"]
    for name in ("start_broken", "snapshot_broken"):
        reason = found[name].data["reason"]
        assert found[name].code == errors.MEDIA_BACKEND and reason
        assert str(tmp_path) not in reason  # no paths outside the storage folders
    assert not h.manager.sessions and not list((h.state / "journal").iterdir())
    assert not list(h.config.recordings_dir.iterdir())  # a failed start leaves no empty file behind


def test_concurrent_start_snapshot_and_same_file_name(tmp_path: Path):
    h = Harness(tmp_path, cameras=2)

    async def scenario():
        await h.manager.open()
        outcomes = await asyncio.gather(
            h.manager.start_recording(start_params(device="sim:0", filename="same")),
            h.manager.take_snapshot(snap_params("sim:0")),
            h.manager.start_recording(start_params(device="sim:1", filename="same")),
            return_exceptions=True,
        )
        for device in ("sim:0", "sim:1"):
            try:
                await h.manager.stop_recording({"device": device})
            except RpcError:
                pass
        return outcomes

    started, snap, clash = asyncio.run(scenario())
    assert started["filename"] == "same.mp4"
    assert snap["status"] == "completed"  # taken from the starting recording, or before it opened the device
    assert isinstance(clash, RpcError) and clash.code == errors.IN_PROGRESS
    assert probe(h.recording("same.mp4")).codec == "h264"


def test_recovery_after_the_deadline_passed_reports_completed(tmp_path: Path):
    h = Harness(tmp_path)
    from camservice.workers.recording.journal import Journal, SessionRecord

    (h.config.recordings_dir).mkdir(parents=True, exist_ok=True)
    h.recording("old.mp4").write_bytes(b"x")
    Journal(h.state / "journal").save(
        SessionRecord(
            "s-old",
            "camera0",
            "sim:0",
            "old.mp4",
            "mp4",
            time.time() - 60,
            30,
            time.time() - 30,
            ["old.mp4"],
            ffmpeg_pid=os.getpid(),
            staging="not-in-my-cmdline",
        )
    )

    async def scenario():
        await h.manager.open()
        await h.manager.recover()

    asyncio.run(scenario())
    [event] = h.statuses("s-old")
    assert event["status"] == "COMPLETED" and "restart" in event["error"]
    assert not list((h.state / "journal").iterdir()) and not h.manager.sessions


# --- MediaMTX backend ------------------------------------------------------------------------


def test_mediamtx_backend_reads_the_stream_not_the_device(tmp_path: Path):
    from camservice.workers.recording.capture import DeviceInput
    from camservice.workers.recording.mediamtx_backend import MediaMTXBackend
    from camservice.workers.recording.sessions import make_backend

    h = Harness(
        tmp_path,
        **{"media.backend": "mediamtx", "media.mediamtx_api": "http://10.1.2.3:9997", "media.rtsp_port": 18554},
    )
    backend = make_backend(h.config)
    assert isinstance(backend, MediaMTXBackend)
    assert backend.open_input(h.cameras["camera0"]).args[-4:] == [
        "-rtsp_transport",
        "tcp",
        "-i",
        "rtsp://10.1.2.3:18554/camera0",
    ]

    # No MediaMTX here: an ffmpeg publishing H.264 over TCP to one reader stands
    # in for the camera's RTSP path, so the copy-into-segments pipeline runs for real.
    port = free_port()
    publisher = subprocess.Popen(
        [
            ffmpeg.locate(),
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={SIZE}:rate=15",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-pix_fmt",
            "yuv420p",
            "-g",
            "15",
            "-f",
            "mpegts",
            f"tcp://127.0.0.1:{port}?listen=1",
        ]
    )

    class StandIn(MediaMTXBackend):
        def open_input(self, camera):
            return DeviceInput([*self.INPUT_OPTIONS, "-i", f"tcp://127.0.0.1:{port}"])

        async def check_path(self, camera, timeout=None):
            pass  # no MediaMTX API here either: test_recording_mediamtx.py tests the check

    h.manager = RecordingManager(h.config, h.find, lambda t, d: h.events.append((t, d)), backend=StandIn(h.config))

    # The publisher accepts one connection only: look at its socket's state instead of connecting.
    deadline = time.monotonic() + 10
    while not any(
        c.status == psutil.CONN_LISTEN and c.laddr.port == port
        for c in psutil.Process(publisher.pid).net_connections("tcp")
    ):
        assert time.monotonic() < deadline and publisher.poll() is None, "the publisher never listened"
        time.sleep(0.02)

    async def scenario():
        await h.manager.open()
        started = await h.manager.start_recording(start_params())
        await asyncio.sleep(1.5)
        snap = await h.manager.take_snapshot(snap_params())
        stopped = await h.manager.stop_recording({"device": "sim:0"})
        return started, snap, stopped

    try:
        started, snap, stopped = asyncio.run(scenario())
    finally:
        publisher.kill()
        publisher.wait(10)
    info = probe(h.recording(started["filename"]))
    assert info.codec == "h264" and info.resolution == SIZE and info.duration > 0
    assert probe(Path(snap["file_path"])).resolution == SIZE
    assert stopped["status"] == "STOPPED"
    assert not holders(h.node())  # the device itself was never opened


# --- crash of the process running the manager -------------------------------------------


def child(state: Path) -> None:
    """Start a timed recording, report it, then wait to be killed."""
    from camservice import log

    log.setup("recording-test-child", None)  # keep stdout for the report line
    h = Harness(state)

    async def run():
        await h.manager.open()
        started = await h.manager.start_recording(start_params(duration=6))
        run = h.manager.sessions[started["session_id"]].run
        print(json.dumps({**started, "pid": run.pid}), flush=True)
        await asyncio.sleep(3600)

    asyncio.run(run())


def test_sigkill_mid_recording_then_resume(tmp_path: Path):
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.test_recording_ffmpeg", "child", str(state)],
        cwd=Path(__file__).resolve().parent.parent,  # the checkout: tests/ and bench/ import as packages
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line, "the child did not start a recording"
        started = json.loads(line)
        time.sleep(1.5)
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    ffmpeg_pid = started["pid"]
    asyncio.run(until(lambda: not alive(ffmpeg_pid), timeout=10))  # no orphaned capture
    h = Harness.__new__(Harness)
    h.state, h.events = state, []
    h.config = make_config(state)
    h.cameras = {
        "camera0": Camera(
            id="camera0",
            device="sim:0",
            resolution=SIZE,
            fps=15,
            simulated=True,
            source=simulator.read_node(simulator.node_path(state, 0)).source(),
        )
    }
    first = h.recording(started["filename"])
    assert probe(first).codec == "h264"  # the killed capture left a playable file
    [entry] = list((state / "journal").iterdir())
    assert json.loads(entry.read_text())["session_id"] == started["session_id"]
    h.manager = h.new_manager()

    async def resume():
        await h.manager.open()
        await h.manager.recover()
        session = h.manager.sessions[started["session_id"]]
        resumed_pid = session.run.pid
        active = json.loads((state / "run" / "recording-active.json").read_text())
        completed = await h.wait_status(started["session_id"], "COMPLETED")
        return resumed_pid, active, completed

    resumed_pid, active, completed = asyncio.run(resume())
    second = first.with_name(first.stem + "_part001.mp4")
    assert list(active["files"]) == [second.name]
    assert resumed_pid != ffmpeg_pid and not alive(resumed_pid)
    assert probe(second).codec == "h264" and probe(first).codec == "h264"
    assert completed["filename"] == started["filename"]  # the deadline was kept across the crash
    assert not list((state / "journal").iterdir())


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    child(Path(sys.argv[2]))
