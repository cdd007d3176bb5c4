"""Stable ids, the camera registry's hot-plug semantics, the simulator watcher, the MediaMTX seam."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from camservice.workers.discovery.ids import IdStore
from camservice.workers.discovery.media import StreamSync
from camservice.workers.discovery.registry import SIM, V4L2, CameraRegistry, Found
from camservice.workers.discovery.watch import SimDirWatcher, V4L2Watcher

from camservice import simnodes
from camservice.camera_ids import lowest_free, read_ids
from camservice.cameras import CONNECTED, DISCONNECTED, ERROR


def usb(key: str, device: str, **fields) -> Found:
    return Found(
        key=key,
        device=device,
        kind=V4L2,
        name="USB Camera",
        resolution="1280x720",
        fps=30,
        formats=["MJPEG"],
        resolutions=["1280x720"],
        frame_rates={"1280x720": [30]},
        source={"kind": "v4l2", "path": device},
        **fields,
    )


def sim(index: int) -> Found:
    return Found(
        key=f"sim:{index}",
        device=f"sim:{index}",
        kind=SIM,
        name=f"Simulated Camera {index}",
        resolution="640x480",
        fps=15,
    )


def registry(tmp_path, max_cameras: int = 16) -> CameraRegistry:
    return CameraRegistry(IdStore(tmp_path / "cameras.json"), max_cameras)


def states(changes) -> list[tuple[str, str, str]]:
    return [(c.id, c.device, c.status) for c in changes]


class Scans(list):
    """What a watcher reported, in order; :meth:`until` wakes on each report instead of polling."""

    def __init__(self):
        super().__init__()
        self._grew = asyncio.Event()

    def append(self, found) -> None:
        super().append(found)
        self._grew.set()

    async def until(self, predicate, timeout: float = 10.0) -> None:
        async def reached() -> None:
            while not predicate(self):
                self._grew.clear()
                await self._grew.wait()

        await asyncio.wait_for(reached(), timeout)


# --- ids ---------------------------------------------------------------------------------


def test_ids_are_lowest_free_and_persisted(tmp_path):
    store = IdStore(tmp_path / "cameras.json")
    assert store.assign(["sim:0", "sim:1", "by-path:a"]) == {
        "sim:0": "camera0",
        "sim:1": "camera1",
        "by-path:a": "camera2",
    }
    assert store.assign(["by-path:b", "sim:0"]) == {"by-path:b": "camera3", "sim:0": "camera0"}
    again = IdStore(tmp_path / "cameras.json")  # a restart
    assert again.all() == store.all()
    assert again.assign(["sim:5"]) == {"sim:5": "camera4"}
    assert read_ids(tmp_path)["sim:5"] == "camera4"
    assert lowest_free(["camera0", "camera2"]) == "camera1"


def test_two_stores_on_one_file_agree(tmp_path):
    first, second = IdStore(tmp_path / "cameras.json"), IdStore(tmp_path / "cameras.json")
    first.assign(["by-id:x"])
    assert second.assign(["by-id:y", "by-id:x"]) == {"by-id:y": "camera1", "by-id:x": "camera0"}


def test_corrupt_id_file_is_kept_aside(tmp_path):
    (tmp_path / "cameras.json").write_text('{"ids": {"a": "camera0", "b": "camera0"}}')
    store = IdStore(tmp_path / "cameras.json")
    assert store.all() == {}
    assert [p.name.startswith("cameras.json.corrupt-") for p in tmp_path.iterdir()].count(True) == 1
    assert store.assign(["a"]) == {"a": "camera0"}
    assert json.loads((tmp_path / "cameras.json").read_text())["ids"] == {"a": "camera0"}


# --- registry ------------------------------------------------------------------------------


def test_appear_disappear_reappear_keeps_the_id(tmp_path):
    reg = registry(tmp_path)
    assert states(reg.merge(V4L2, [usb("by-id:c920", "/dev/video0")], now=100.0)) == [
        ("camera0", "/dev/video0", CONNECTED)
    ]
    assert reg.merge(V4L2, [usb("by-id:c920", "/dev/video0")]) == []  # nothing new
    assert states(reg.merge(V4L2, [])) == [("camera0", "/dev/video0", DISCONNECTED)]
    assert states(reg.cameras()) == [("camera0", "/dev/video0", DISCONNECTED)]  # still listed
    # Replugged where the kernel now numbers it video2.
    changed = reg.merge(V4L2, [usb("by-id:c920", "/dev/video2")], now=200.0)
    assert states(changed) == [("camera0", "/dev/video2", CONNECTED)]
    assert changed[0].connected_since == 200.0
    assert reg.find("/dev/video2").id == "camera0"
    assert reg.find("/dev/video0") is None
    assert reg.find("camera0").device == "/dev/video2"


def test_ids_survive_a_restart(tmp_path):
    reg = registry(tmp_path)
    reg.merge(SIM, [sim(0), sim(1)])
    reg.merge(V4L2, [usb("by-path:port4", "/dev/video0")])
    restarted = registry(tmp_path)
    restarted.merge(V4L2, [usb("by-path:port4", "/dev/video0")])  # the real camera shows up first now
    restarted.merge(SIM, [sim(1), sim(0)])
    assert {c.device: c.id for c in restarted.cameras()} == {
        "sim:0": "camera0",
        "sim:1": "camera1",
        "/dev/video0": "camera2",
    }


def test_scans_of_one_kind_never_disconnect_the_other(tmp_path):
    reg = registry(tmp_path)
    reg.merge(SIM, [sim(0)])
    reg.merge(V4L2, [usb("by-id:a", "/dev/video0")])
    assert reg.merge(V4L2, [usb("by-id:a", "/dev/video0")]) == []
    assert states(reg.merge(SIM, [])) == [("camera0", "sim:0", DISCONNECTED)]
    assert reg.find("/dev/video0").status == CONNECTED


def test_error_state_and_recovery(tmp_path):
    reg = registry(tmp_path)
    broken = reg.merge(V4L2, [usb("by-id:a", "/dev/video0", error="permission denied")])
    assert states(broken) == [("camera0", "/dev/video0", ERROR)]
    assert broken[0].error == "permission denied"
    fixed = reg.merge(V4L2, [usb("by-id:a", "/dev/video0")])
    assert states(fixed) == [("camera0", "/dev/video0", CONNECTED)] and fixed[0].error is None


def test_same_serial_twice_falls_back_to_the_port(tmp_path):
    reg = registry(tmp_path)
    reg.merge(V4L2, [usb("by-id:cheap-SN0001", "/dev/video0", alt_key="by-path:port1")])
    changed = reg.merge(
        V4L2,
        [
            usb("by-id:cheap-SN0001", "/dev/video2", alt_key="by-path:port2"),
            usb("by-id:cheap-SN0001", "/dev/video0", alt_key="by-path:port1"),
        ],
    )
    assert states(changed) == [("camera1", "/dev/video2", CONNECTED)]  # the first camera kept its id
    assert reg.find("/dev/video0").id == "camera0"


def test_device_string_shared_with_an_unplugged_camera_finds_the_connected_one(tmp_path):
    reg = registry(tmp_path)
    reg.merge(V4L2, [usb("by-id:a", "/dev/video0")])
    reg.merge(V4L2, [])
    reg.merge(V4L2, [usb("by-id:b", "/dev/video0")])
    assert states(reg.cameras()) == [("camera0", "/dev/video0", DISCONNECTED), ("camera1", "/dev/video0", CONNECTED)]
    assert reg.find("/dev/video0").id == "camera1"
    reg.merge(V4L2, [usb("by-id:b", "/dev/video0"), usb("by-id:a", "/dev/video2")])
    assert reg.find("/dev/video0").id == "camera1"
    assert reg.find("/dev/video2").id == "camera0"


def test_max_cameras(tmp_path):
    reg = registry(tmp_path, max_cameras=2)
    changed = reg.merge(SIM, [sim(0), sim(1), sim(2)])
    assert [c.device for c in changed] == ["sim:0", "sim:1"]
    reg.merge(SIM, [sim(1), sim(2)])  # sim:0 leaves, so sim:2 fits
    assert {c.device: c.status for c in reg.cameras()} == {
        "sim:0": DISCONNECTED,
        "sim:1": CONNECTED,
        "sim:2": CONNECTED,
    }


def test_recording_and_streams_follow_events(tmp_path):
    reg = registry(tmp_path)
    reg.merge(SIM, [sim(0)])
    camera = reg.set_recording("sim:0", True)
    assert camera is not None and (camera.recording, camera.readers) == (True, 1)
    assert reg.set_recording("camera0", True) is None  # no change, no event
    assert reg.set_recording("sim:9", True) is None
    assert reg.set_streams("camera0", {"rtsp": "rtsp://h:8554/camera0"}).streams == {"rtsp": "rtsp://h:8554/camera0"}
    reg.merge(SIM, [])
    assert reg.find("camera0").streams == {}
    assert reg.set_streams("camera0", {"rtsp": "rtsp://h:8554/camera0"}) is None  # not while disconnected


def test_restore_relists_without_news(tmp_path):
    reg = registry(tmp_path)
    reg.merge(SIM, [sim(0), sim(1)])
    reg.merge(SIM, [sim(0)])
    reg.set_recording("sim:0", True)
    restarted = registry(tmp_path)
    assert restarted.restore(reg.snapshot()) == 2
    assert restarted.merge(SIM, [sim(0)]) == []  # already known as it is
    assert restarted.find("sim:1").status == DISCONNECTED and restarted.find("sim:0").recording
    assert states(restarted.merge(SIM, [])) == [("camera0", "sim:0", DISCONNECTED)]


# --- watchers on real files --------------------------------------------------------------------


class Changes:
    """The registry changes a watcher's scans cause, awaitable by count (no sleeping)."""

    def __init__(self, reg: CameraRegistry):
        self.reg = reg
        self.seen: list[tuple[str, str, str]] = []
        self._grew = asyncio.Event()

    def on_scan(self, found) -> None:
        self.seen.extend(states(self.reg.merge(SIM, found)))
        self._grew.set()

    async def count(self, n: int, timeout: float = 10.0) -> list[tuple[str, str, str]]:
        async def grown() -> None:
            while len(self.seen) < n:
                self._grew.clear()
                await self._grew.wait()

        await asyncio.wait_for(grown(), timeout)
        return self.seen


@pytest.mark.parametrize("use_inotify", [True, False], ids=["inotify", "polling"])
def test_sim_folder_watcher_reports_plug_and_unplug(tmp_path, use_inotify):
    reg = registry(tmp_path)
    changes = Changes(reg)
    watcher = SimDirWatcher(tmp_path, 0.01, changes.on_scan, use_inotify=use_inotify)

    async def scenario():
        simnodes.reset(tmp_path, 2)
        await watcher.scan_once()
        assert changes.seen == [("camera0", "sim:0", CONNECTED), ("camera1", "sim:1", CONNECTED)]
        task = asyncio.ensure_future(watcher.run())
        try:
            await asyncio.wait_for(watcher.watching.wait(), 10.0)
            assert watcher.mode == ("inotify" if use_inotify else "poll")
            simnodes.unplug(tmp_path, 0)
            assert (await changes.count(3))[2] == ("camera0", "sim:0", DISCONNECTED)
            assert simnodes.plug(tmp_path) == 0
            assert (await changes.count(4))[3] == ("camera0", "sim:0", CONNECTED)
            (tmp_path / "dev" / "sim5").write_text("garbage")  # written in place, not linked
            assert (await changes.count(5))[4] == ("camera2", "sim:5", ERROR)
            (tmp_path / "dev" / "sim5").write_text('{"index": 5}')  # repaired: a rewrite is a change too
            assert (await changes.count(6))[5] == ("camera2", "sim:5", CONNECTED)
            (tmp_path / "dev" / ".sim7.1.tmp").write_text("{}")  # plug()'s temporary files are no cameras
            os.rename(tmp_path / "dev" / "sim1", tmp_path / "dev" / "sim9")  # a move is an unplug and a plug
            assert (await changes.count(8))[6:] == [("camera1", "sim:1", DISCONNECTED), ("camera3", "sim:9", ERROR)]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


def test_sixteen_simulated_cameras_in_one_scan(tmp_path):
    reg = registry(tmp_path)
    simnodes.reset(tmp_path, 16)
    changes, merged_with_ids_known = [], []

    def merge(found):
        merged_with_ids_known.append(all(reg.ids.get(f.key) for f in found))  # assigned off the loop
        changes.extend(reg.merge(SIM, found))

    asyncio.run(SimDirWatcher(tmp_path, 0.05, merge, prepare=reg.assign_ids).scan_once())
    assert merged_with_ids_known == [True]
    assert [c.device for c in changes] == [f"sim:{i}" for i in range(16)]
    assert [c.id for c in changes] == [f"camera{i}" for i in range(16)]
    assert all(c.source["node"] == str(tmp_path / "dev" / f"sim{i}") for i, c in enumerate(changes))


def test_v4l2_watcher_without_udev_polls_dev(tmp_path):
    scans = Scans()

    class Scanner:
        def scan(self):
            return [
                usb(f"dev:{name}", str(tmp_path / name))
                for name in sorted(os.listdir(tmp_path))
                if name.startswith("video")
            ]

    watcher = V4L2Watcher(
        Scanner(),
        scans.append,
        use_udev=True,
        poll_interval=0.05,
        dev_root=str(tmp_path),
        udev_control=str(tmp_path / "no-udev"),
    )
    assert watcher.open_monitor()[0] is None
    watcher.dev_interval = 0.01  # the production minimum is DEV_POLL_MIN; no need to wait here

    async def scenario():
        task = asyncio.ensure_future(watcher.run())
        try:
            await scans.until(lambda s: len(s) == 1)
            assert scans[0] == [] and watcher.mode == "poll"
            (tmp_path / "video0").touch()
            await scans.until(lambda s: len(s) == 2)
            assert [f.device for f in scans[1]] == [str(tmp_path / "video0")]
            (tmp_path / "video0").unlink()
            await scans.until(lambda s: len(s) == 3)
            assert scans[2] == []
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


class SocketMonitor:
    """Stands in for pyudev.Monitor: one event per byte written to the other end."""

    def __init__(self):
        import socket

        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)

    def fileno(self) -> int:
        return self.ours.fileno()

    def poll(self, timeout=None):
        try:
            return self.ours.recv(1) or None
        except BlockingIOError:
            return None


def test_v4l2_watcher_rescans_on_udev_events(tmp_path):
    present: list[str] = []
    scans = Scans()

    class Scanner:
        def scan(self):
            return [usb(f"by-path:{name}", name) for name in present]

    monitor = SocketMonitor()
    watcher = V4L2Watcher(Scanner(), scans.append, use_udev=True, poll_interval=0.05)
    watcher.open_monitor = lambda: (monitor, None)

    async def scenario():
        task = asyncio.ensure_future(watcher.run())
        try:
            await scans.until(lambda s: len(s) == 1)
            assert watcher.mode == "udev"
            present.append("/dev/video0")
            monitor.theirs.send(b"ab")  # "add" of the capture and the metadata node
            await scans.until(lambda s: s[-1] != [])
            assert [f.device for f in scans[-1]] == ["/dev/video0"]
            present.clear()
            monitor.theirs.send(b"r")
            await scans.until(lambda s: s[-1] == [])
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


def test_real_udev_monitor_is_used_only_where_udev_runs(tmp_path):
    pytest.importorskip("pyudev")
    watcher = V4L2Watcher(None, print, use_udev=True, poll_interval=0.05, udev_control=str(tmp_path / "control"))
    monitor, reason = watcher.open_monitor()
    assert monitor is None and "udev is not running" in reason
    assert V4L2Watcher(None, print, use_udev=False, poll_interval=0.05).open_monitor() == (
        None,
        "cameras.udev is false",
    )
    (tmp_path / "control").touch()
    monitor, reason = watcher.open_monitor()
    if monitor is None:
        pytest.skip(f"no netlink sockets here: {reason}")
    assert monitor.fileno() >= 0 and monitor.poll(timeout=0) is None


def test_v4l2_watcher_survives_a_failing_scan(tmp_path):
    calls = []

    class Scanner:
        def scan(self):
            calls.append(1)
            if len(calls) == 1:
                raise OSError("libudev went away")
            return []

    reported = []
    watcher = V4L2Watcher(Scanner(), reported.append, use_udev=False, poll_interval=0.05, dev_root=str(tmp_path))

    async def scenario():
        assert await watcher.scan_once() is False
        assert await watcher.scan_once() is True

    asyncio.run(scenario())
    assert reported == [[]]


# --- MediaMTX seam --------------------------------------------------------------------------------


class FakePaths:
    """Stands in for camservice.workers.discovery.mediamtx_paths.MediaMTXPaths."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.calls: list[tuple[str, str]] = []

    async def add_camera(self, camera):
        self.calls.append(("add", camera.id))
        if self.fail:
            raise ConnectionError("mediamtx down")
        return {"rtsp": f"rtsp://h:8554/{camera.id}"}

    async def remove_camera(self, camera):
        self.calls.append(("remove", camera.id))

    async def reconcile(self, cameras):
        self.calls.append(("reconcile", ",".join(c.id for c in cameras)))
        return {c.id: {"rtsp": f"rtsp://h:8554/{c.id}"} for c in cameras}


def test_stream_sync_adds_and_removes_paths(tmp_path):
    reg = registry(tmp_path)
    paths, published = FakePaths(), []
    sync = StreamSync(paths, reg, published.append)

    async def scenario():
        for camera in reg.merge(SIM, [sim(0), sim(1)]):
            sync.changed(camera)
        await sync.reconcile()
        assert ("reconcile", "camera0,camera1") in paths.calls
        assert reg.find("camera1").streams == {"rtsp": "rtsp://h:8554/camera1"}
        for camera in reg.merge(SIM, [sim(0)]):
            sync.changed(camera)
        await sync.sync("camera1")
        assert paths.calls[-1] == ("remove", "camera1")
        assert reg.find("camera1").streams == {}

    asyncio.run(scenario())
    assert [c.id for c in published] == ["camera0", "camera1"]


def test_stream_sync_failure_leaves_streams_empty(tmp_path):
    reg = registry(tmp_path)
    reg.merge(SIM, [sim(0)])
    sync = StreamSync(FakePaths(fail=True), reg, lambda camera: pytest.fail("nothing changed"))
    asyncio.run(sync.sync("camera0"))
    assert reg.find("camera0").streams == {}


def test_ffmpeg_backend_has_no_stream_sync(tmp_path):
    from camservice import config

    cfg = config.load(overrides={"runtime.state_dir": str(tmp_path)}, environ={})
    assert StreamSync.from_config(cfg, registry(tmp_path), lambda c: None) is None


def test_stream_sync_with_the_real_mediamtx_client(tmp_path):
    from camservice import config
    from tests.fakes import mediamtx as fakes

    reg = registry(tmp_path)
    published, statuses = [], []
    with fakes.FakeMediaMTX() as fake:
        cfg = config.load(
            overrides={"runtime.state_dir": str(tmp_path), "media.backend": "mediamtx", "media.mediamtx_api": fake.url},
            environ={},
        )
        sync = StreamSync.from_config(cfg, reg, published.append, on_status=statuses.append)
        assert sync is not None

        async def scenario():
            reg.merge(SIM, [sim(0), sim(1)])
            await sync.reconcile()
            assert set(fake.paths) == {"all_others", "camera0", "camera1"}
            assert reg.find("camera0").streams["rtsp"].endswith(":8554/camera0")
            assert statuses[-1] == {"state": "running", "backend": "mediamtx"}

            for camera in reg.merge(SIM, [sim(0)]):  # sim:1 unplugged
                await sync.sync(camera.id)
            assert set(fake.paths) == {"all_others", "camera0"}

            fake.stop()  # MediaMTX goes away: no camera may advertise a stream
            await sync.reconcile()
            assert reg.find("camera0").streams == {}
            assert statuses[-1]["state"] == "unreachable"

            fake.reset()  # ...and comes back having forgotten every API-made path
            fake.start()
            await sync.reconcile()
            assert "camera0" in fake.paths and reg.find("camera0").streams
            await sync.close()

        asyncio.run(scenario())
        assert fake.violations == []
    assert [c.id for c in published] == ["camera0", "camera1", "camera0", "camera0"]
