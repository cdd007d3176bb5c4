"""Issue 11 §8: every plug and unplug of a simulated camera is an event.

Reproduced before the fix: a camera unplugged and plugged again between two
50 ms polls of the simulator folder produced no event at all (the poll saw
the same node content and reported nothing), and ``camservice camera plug``
printed the device, not the camera's id.
"""

from __future__ import annotations

import asyncio
import glob

import pytest
from camservice.workers.discovery.ids import IdStore
from camservice.workers.discovery.registry import SIM, CameraRegistry
from camservice.workers.discovery.watch import SimDirWatcher

from camservice import simnodes
from camservice.cameras import CONNECTED, DISCONNECTED

from ..harness import Client, Service, run
from ..test_discovery_worker import gateway, state_dir, stop_worker  # noqa: F401 (fixtures)
from ..test_discovery_worker import run as run_worker

WAIT = 10.0


class Changes:
    """What a watcher's scans change in a registry, awaitable by count."""

    def __init__(self, registry: CameraRegistry):
        self.registry = registry
        self.seen: list[tuple[str, str, str]] = []
        self._grew = asyncio.Event()

    def on_scan(self, found) -> None:
        self.seen.extend((c.id, c.device, c.status) for c in self.registry.merge(SIM, found))
        self._grew.set()

    async def count(self, n: int) -> list[tuple[str, str, str]]:
        async def grown() -> None:
            while len(self.seen) < n:
                self._grew.clear()
                await self._grew.wait()

        await asyncio.wait_for(grown(), WAIT)
        return self.seen


def test_unplug_and_replug_between_two_polls_are_two_events(tmp_path):
    registry = CameraRegistry(IdStore(tmp_path / "cameras.json"))
    changes = Changes(registry)
    # A poll interval far longer than the test: only notifications can report the bounce.
    watcher = SimDirWatcher(tmp_path, 3600.0, changes.on_scan, prepare=registry.assign_ids)

    async def scenario():
        simnodes.reset(tmp_path, 2)
        await watcher.scan_once()
        assert await changes.count(2) == [("camera0", "sim:0", CONNECTED), ("camera1", "sim:1", CONNECTED)]
        task = asyncio.ensure_future(watcher.run())
        try:
            await asyncio.wait_for(watcher.watching.wait(), WAIT)
            simnodes.unplug(tmp_path, 0)
            simnodes.plug(tmp_path, index=0)  # the same camera, back in the same port at once
            assert (await changes.count(4))[2:] == [("camera0", "sim:0", DISCONNECTED), ("camera0", "sim:0", CONNECTED)]
            # Bounces of two cameras and a new camera's plug, all at once: each is one event, in order.
            simnodes.unplug(tmp_path, 1)
            simnodes.plug(tmp_path, index=4)
            simnodes.plug(tmp_path, index=1)
            simnodes.unplug(tmp_path, 0)
            simnodes.plug(tmp_path, index=0)
            assert (await changes.count(9))[4:] == [
                ("camera1", "sim:1", DISCONNECTED),
                ("camera2", "sim:4", CONNECTED),
                ("camera1", "sim:1", CONNECTED),
                ("camera0", "sim:0", DISCONNECTED),
                ("camera0", "sim:0", CONNECTED),
            ]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


@pytest.mark.skipif(bool(glob.glob("/dev/video*")), reason="real cameras on this machine would join the lists")
def test_discovery_worker_publishes_both_events_of_a_bounce(state_dir, gateway):  # noqa: F811 (fixtures)
    process = run_worker(state_dir, gateway, simulate=1)
    try:
        gateway.call("discovery.snapshot")  # the worker is serving: its watcher is set up
        simnodes.unplug(state_dir, 0)
        simnodes.plug(state_dir, index=0)
        gone = gateway.next_camera_event(lambda d: d["id"] == "camera0")
        back = gateway.next_camera_event(lambda d: d["id"] == "camera0")
        assert (gone.data["status"], back.data["status"]) == (DISCONNECTED, CONNECTED)
        assert back.seq == gone.seq + 1
    finally:
        stop_worker(process)


def test_cli_plug_prints_the_id_and_clients_hear_both_halves_of_a_bounce():
    with Service(simulate=1) as svc:

        async def scenario():
            async with Client(svc.url, svc.token("operator")) as client:
                camera_id = svc.cli("camera", "plug", "--resolution", "160x120").stdout.strip()
                assert camera_id == "camera1"
                plugged = await client.notification("camera_status_update", where=lambda p: p["id"] == camera_id)
                assert (plugged["device"], plugged["status"]) == ("sim:1", CONNECTED)

                # A bounce on the running service: clients hear both halves.
                simnodes.unplug(svc.state_dir, camera_id)
                simnodes.plug(svc.state_dir, "160x120", index=1)
                gone = await client.notification("camera_status_update", where=lambda p: p["id"] == camera_id)
                back = await client.notification("camera_status_update", where=lambda p: p["id"] == camera_id)
                assert (gone["status"], back["status"]) == (DISCONNECTED, CONNECTED)

        run(scenario())
