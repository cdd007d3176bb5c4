"""Stream URLs of connected cameras with ``media.backend: mediamtx``.

With the ffmpeg backend no process serves streams, so ``Camera.streams``
stays empty and this module is not used. With MediaMTX
(:mod:`.mediamtx_paths` through :mod:`camservice.mediamtx`), every camera that becomes CONNECTED gets a
MediaMTX path (``MediaMTXPaths.add_camera`` answers its URLs), every camera
that leaves loses it, and the whole set is reconciled every
:data:`RECONCILE_INTERVAL` seconds and as soon as MediaMTX is reachable
again, which repairs a MediaMTX restart (it forgets API-made paths) and
anything that failed while it was down. While MediaMTX is unreachable,
reconcile answers ``{}`` for every camera, so no camera advertises a stream
nobody serves.

Changes are queued per camera and applied one at a time against the
camera's status at that moment, so a fast unplug/replug never ends with a
removed path for a connected camera.

Each reconcile also reports MediaMTX's reachability as a ``_media_status``
event (``{"state": "running"|"unreachable", "backend": "mediamtx"}``), which
gateways show in ``get_status`` and ``/health/mediamtx``; the periodic
repeat lets a gateway that started later learn it too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from camservice.cameras import CONNECTED, Camera
from camservice.mediamtx import MediaMTXClient

from .mediamtx_paths import MediaMTXPaths
from .registry import CameraRegistry

RECONCILE_INTERVAL = 15.0
#: Seconds one MediaMTX operation may take before it counts as failed.
CALL_TIMEOUT = 10.0


class StreamSync:
    def __init__(
        self,
        paths: MediaMTXPaths,
        registry: CameraRegistry,
        on_change: Callable[[Camera], None],
        log=None,
        client: MediaMTXClient | None = None,
        on_status: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.paths = paths
        self.registry = registry
        self.on_change = on_change  # publishes a camera whose streams changed
        self.on_status = on_status  # publishes MediaMTX's reachability
        self.client = client
        self._log = log
        self._dirty: set[str] = set()
        self._reconcile_due = False
        self._wake = asyncio.Event()

    @classmethod
    def from_config(
        cls,
        config,
        registry: CameraRegistry,
        on_change: Callable[[Camera], None],
        log=None,
        on_status: Callable[[dict[str, Any]], None] | None = None,
    ) -> StreamSync | None:
        """A StreamSync for the mediamtx backend; None for ffmpeg."""
        if config.media.backend != "mediamtx":
            return None
        client = MediaMTXClient.from_config(config)
        return cls(MediaMTXPaths(client, config), registry, on_change, log, client, on_status)

    def changed(self, camera: Camera) -> None:
        """A camera's status changed: bring its MediaMTX path in line."""
        self._dirty.add(camera.id)
        self._wake.set()

    async def run(self) -> None:
        """Apply queued changes and reconcile (cancel to stop)."""
        unsubscribe = None
        if self.client is not None:
            unsubscribe = self.client.on_availability(self._availability)
        try:
            await self.reconcile()
            while True:
                try:
                    await asyncio.wait_for(self._wake.wait(), RECONCILE_INTERVAL)
                except asyncio.TimeoutError:
                    self._reconcile_due = True
                self._wake.clear()
                if self._reconcile_due:
                    self._reconcile_due = False
                    self._dirty.clear()  # a reconcile covers every camera
                    await self.reconcile()
                    continue
                dirty, self._dirty = self._dirty, set()
                for camera_id in sorted(dirty):
                    await self.sync(camera_id)
        finally:
            if unsubscribe is not None:
                unsubscribe()

    def _availability(self, available: bool) -> None:
        if available:
            self._reconcile_due = True
            self._wake.set()
        else:
            self._status(False)

    async def sync(self, camera_id: str) -> None:
        camera = self.registry.table.find(camera_id)
        if camera is None:
            return
        try:
            if camera.status == CONNECTED:
                streams = await asyncio.wait_for(self.paths.add_camera(camera), CALL_TIMEOUT)
                self._set(camera_id, streams or {})
            else:
                await asyncio.wait_for(self.paths.remove_camera(camera), CALL_TIMEOUT)
        except Exception as exc:  # MediaMTX down or refusing: the next reconcile retries
            self._warn("mediamtx_path_failed", camera=camera_id, status=camera.status, error=repr(exc))

    async def reconcile(self) -> None:
        cameras = self.registry.cameras()
        try:
            streams = await asyncio.wait_for(self.paths.reconcile(cameras), CALL_TIMEOUT)
        except Exception as exc:
            self._warn("mediamtx_reconcile_failed", error=repr(exc))
            streams = {}
        for camera in self.registry.connected():
            self._set(camera.id, (streams or {}).get(camera.id, {}))
        await self._report()

    async def _report(self) -> None:
        if self.on_status is None or self.client is None:
            return
        try:
            up = bool(await asyncio.wait_for(self.client.ping(), CALL_TIMEOUT))
        except Exception:
            up = False
        self._status(up)

    def _status(self, up: bool) -> None:
        if self.on_status is not None:
            self.on_status({"state": "running" if up else "unreachable", "backend": "mediamtx"})

    def _set(self, camera_id: str, streams: dict[str, str]) -> None:
        camera = self.registry.set_streams(camera_id, streams)
        if camera is not None:
            self.on_change(camera)

    async def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def _warn(self, event: str, **fields) -> None:
        if self._log is not None:
            self._log.warning(event, **fields)
