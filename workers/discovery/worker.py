"""The discovery worker: owns the camera table and publishes every change.

It watches simulated cameras (``state_dir/dev``) and V4L2 devices (udev, or
``/dev`` polling), merges each scan into a :class:`CameraRegistry`, and
publishes every changed camera as a ``camera_status_update`` event carrying
``Camera.to_state()``. Gateways keep replicas: ``discovery.snapshot`` gives
them every camera plus the sequence number of the last event published, and
the events after it keep them current.

Methods served: ``discovery.snapshot`` (internal), ``get_camera_capabilities``
and ``get_streams``. It listens to ``recording_status_update`` to keep each
camera's ``recording`` and ``readers`` current: it is the only writer of
those fields, as of every camera field, so that one ordered event stream
carries them to every replica (:mod:`camservice.replica`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from camservice import simnodes, topics
from camservice.camera_ids import FILENAME as IDS_FILENAME
from camservice.cameras import CONNECTED, Camera
from camservice.envelope import Event
from camservice.errors import camera_not_found, invalid_params

from ..base import CallContext, Worker, run_worker
from .ids import IdStore
from .media import StreamSync
from .registry import SIM, V4L2, CameraRegistry, Found
from .v4l2 import V4L2Scanner
from .watch import SimDirWatcher, V4L2Watcher

#: Seconds start() waits for the first V4L2 scan; later results arrive as events.
INITIAL_V4L2_TIMEOUT = 5.0
#: The cameras listed in this service run, kept across discovery restarts. It
#: lives in the simulator folder because that folder is reset with every run.
LISTING_FILE = ".listed.json"


def load_listing(path: Path) -> list[dict[str, Any]]:
    try:
        states = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [s for s in states if isinstance(s, dict)] if isinstance(states, list) else []


def save_listing(path: Path, states: list[dict[str, Any]]) -> None:
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(states))
    os.replace(temporary, path)


def run_owner() -> str:
    """Names this service run: the parent (supervisor) pid and its start time.

    A discovery worker restarted by the same supervisor sees the same owner
    and keeps the simulated cameras as they are.
    """
    parent = os.getppid()
    try:
        import psutil

        started = psutil.Process(parent).create_time()
    except Exception:  # psutil missing or the parent already gone
        started = 0.0
    return f"{parent}:{started:.3f}"


class DiscoveryWorker(Worker):
    kind = "discovery"
    fast_loop = True  # answers most worker-hop calls; nothing it uses needs the standard loop
    subscriptions = (topics.RECORDING_STATUS,)

    def __init__(self, config, index: int = 0):
        super().__init__(config, index)
        self.registry = CameraRegistry(
            IdStore(config.state_dir / IDS_FILENAME, self.log), config.cameras.max_cameras, self.log
        )
        self.last_seq = 0  # seq of the last camera_status_update this process published
        self.media: StreamSync | None = None
        self.sims: SimDirWatcher | None = None
        self.v4l2: V4L2Watcher | None = None
        self.listing = simnodes.dev_dir(config.state_dir) / LISTING_FILE
        self._listing_dirty = False
        self._listing_task: asyncio.Task | None = None

    def handlers(self):
        return {
            "discovery.snapshot": self.snapshot,
            "get_camera_capabilities": self.get_camera_capabilities,
            "get_streams": self.get_streams,
        }

    # --- life cycle ---------------------------------------------------------------

    async def start(self) -> None:
        began = time.monotonic()
        cameras = self.config.cameras
        reset = await asyncio.to_thread(
            simnodes.prepare_run,
            self.config.state_dir,
            cameras.simulate,
            cameras.sim_resolution,
            cameras.sim_fps,
            run_owner(),
        )
        if reset:
            self.listing.unlink(missing_ok=True)
        else:
            restored = self.registry.restore(await asyncio.to_thread(load_listing, self.listing))
            self.log.info("discovery_restarted", restored_cameras=restored)
        self.media = StreamSync.from_config(
            self.config,
            self.registry,
            self._publish,
            self.log,
            on_status=lambda data: self.publish(topics.MEDIA_STATUS, data),
        )
        # Ids of new cameras are handed out (and cameras.json written) in the
        # scanning threads, so merging on the loop never touches the disk.
        self.sims = SimDirWatcher(
            self.config.state_dir,
            cameras.poll_interval,
            lambda found: self.merge(SIM, found),
            self.log,
            prepare=self.registry.assign_ids,
        )
        self.v4l2 = V4L2Watcher(
            V4L2Scanner(self.log),
            lambda found: self.merge(V4L2, found),
            cameras.udev,
            cameras.poll_interval,
            self.log,
            prepare=self.registry.assign_ids,
        )
        # Simulated cameras first, so that on a fresh state folder sim:N gets cameraN.
        await self.sims.scan_once()
        await self.v4l2.scan_once(timeout=INITIAL_V4L2_TIMEOUT)
        self.spawn(self.sims.run())
        self.spawn(self.v4l2.run())
        if self.media is not None:
            self.spawn(self.media.run())
        self.log.info(
            "discovery_started",
            simulated_reset=reset,
            cameras=len(self.registry.table),
            connected=len(self.registry.connected()),
            ms=round((time.monotonic() - began) * 1000, 1),
        )

    async def stop(self) -> None:
        if self.media is not None:
            await self.media.close()
        if self._listing_dirty:
            await self._write_listing()

    # --- changes --------------------------------------------------------------------

    def merge(self, kind: str, found: list[Found]) -> list[Camera]:
        """Apply one scan and publish what changed."""
        changed = self.registry.merge(kind, found)
        for camera in changed:
            self.log.info(
                "camera_status",
                id=camera.id,
                device=camera.device,
                status=camera.status,
                name=camera.name,
                resolution=camera.resolution,
                fps=camera.fps,
                error=camera.error,
            )
            self._publish(camera)
            if self.media is not None:
                self.media.changed(camera)
        return changed

    def publish(self, topic: str, data: dict[str, Any]) -> Event:
        event = super().publish(topic, data)
        # Sequence numbers are per topic: the snapshot's seq is that of the
        # last camera event, the topic replicas follow.
        if topic == topics.CAMERA_STATUS:
            self.last_seq = event.seq
        return event

    def stats(self) -> dict[str, Any]:
        cameras = self.registry.cameras()
        return {
            "cameras": len(cameras),
            "cameras_connected": sum(1 for c in cameras if c.status == CONNECTED),
            "hotplug_events": self.registry.hotplug_events,
            "cameras_simulated": sum(1 for c in cameras if c.simulated),
            "udev": 1 if self.v4l2 is not None and self.v4l2.mode == "udev" else 0,
        }

    def _publish(self, camera: Camera) -> None:
        self.publish(topics.CAMERA_STATUS, camera.to_state())
        self._listing_dirty = True
        if self._listing_task is None or self._listing_task.done():
            self._listing_task = self.spawn(self._write_listing())

    async def _write_listing(self) -> None:
        # Coalesced: a burst of changes costs one or two writes, in a thread.
        while self._listing_dirty:
            self._listing_dirty = False
            try:
                await asyncio.to_thread(save_listing, self.listing, self.registry.snapshot())
            except OSError as exc:
                self.log.warning("listing_not_saved", error=str(exc))
                return

    async def on_event(self, event: Event) -> None:
        if event.topic != topics.RECORDING_STATUS:
            return
        data = event.data or {}
        device = data.get("device")
        if not isinstance(device, str):
            return
        camera = self.registry.set_recording(device, data.get("status") == "STARTED", data.get("readers"))
        if camera is not None:
            self._publish(camera)

    # --- methods ------------------------------------------------------------------

    def snapshot(self, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        # Built and answered on the loop thread, where events are published too,
        # so no event can fall between the cameras and the seq.
        return {"cameras": self.registry.snapshot(), "seq": self.last_seq, "source": self.name}

    def get_camera_capabilities(self, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        device = params.get("device")
        if not isinstance(device, str) or not device:
            raise invalid_params("'device' is required", "device")
        camera = self.registry.find(device)
        if camera is None or camera.status != CONNECTED:
            raise camera_not_found(device)
        return {"device": camera.device, **camera.capabilities()}

    def get_streams(self, params: dict[str, Any], ctx: CallContext) -> list[dict[str, Any]]:
        # The ffmpeg backend serves no streams: a camera is "ready" while a
        # capture (recording) runs on it, and its readers are what recording reports.
        return [
            {
                "name": camera.id,
                "source": camera.device,
                "ready": camera.recording or camera.readers > 0,
                "readers": camera.readers,
                "bytes_sent": camera.bytes_sent,
            }
            for camera in self.registry.connected()
        ]


def main(index: int) -> None:
    run_worker(DiscoveryWorker, index)
