"""The discovery worker's camera table and how scans change it.

Scanners (the simulator folder, V4L2) report *complete* lists of what is
present now, as :class:`Found` records; :meth:`CameraRegistry.merge` compares
such a list with the table and returns the cameras that changed. That one
function is the whole of hot-plug: a record that appears becomes (or turns
back to) ``CONNECTED``, one that is missing from its scanner's next list
turns ``DISCONNECTED`` and stays listed with its id, one carrying an error
turns ``ERROR``. Simulated and V4L2 cameras take exactly the same path.

No I/O happens here except through :class:`~camservice.workers.discovery.ids.IdStore`
when a new key needs an id; the worker calls :meth:`merge` on its event loop.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from camservice.cameras import CONNECTED, DISCONNECTED, ERROR, Camera, CameraTable

from .ids import IdStore

SIM, V4L2 = "sim", "v4l2"


@dataclass
class Found:
    """A capture device present right now, as a scanner saw it."""

    key: str  # stable key (see ids.py)
    device: str  # /dev/videoN or sim:N
    kind: str  # SIM or V4L2: which scanner reports it
    name: str
    resolution: str = ""
    fps: int = 0
    formats: list[str] = field(default_factory=list)
    resolutions: list[str] = field(default_factory=list)
    frame_rates: dict[str, list[int]] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # present but unusable (e.g. permission denied)
    #: Used instead of ``key`` when another present device has the same key
    #: (two cameras sharing a "unique" serial number).
    alt_key: str | None = None


def _natural(text: str) -> list:
    """Sort key that orders embedded numbers by value: video2 < video10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


#: Camera fields a scan determines; a change in any of them is news.
_SCANNED = ("device", "name", "resolution", "fps", "formats", "resolutions", "frame_rates", "source", "error")


class CameraRegistry:
    def __init__(self, ids: IdStore, max_cameras: int = 16, log=None):
        self.ids = ids
        self.max_cameras = max_cameras
        self.table = CameraTable()
        self._kind: dict[str, str] = {}  # camera id -> SIM or V4L2
        self._refused: set[str] = set()  # keys over max_cameras, logged once
        self.hotplug_events = 0  # arrivals and departures seen (a counter for metrics)
        self._log = log

    # --- reading ------------------------------------------------------------------

    def find(self, device_or_id: str) -> Camera | None:
        """By id, else by device, preferring a CONNECTED camera.

        Several listed cameras can share a device string (``/dev/video0`` of a
        camera unplugged earlier and of the one plugged there now), so this
        searches the few cameras rather than trusting one device -> id entry.
        """
        camera = self.table.find(device_or_id)
        if camera is not None and camera.id == device_or_id:
            return camera
        same = [c for c in self.table if c.device == device_or_id]
        return next((c for c in same if c.status == CONNECTED), same[-1] if same else None)

    def cameras(self) -> list[Camera]:
        return list(self.table)

    def connected(self) -> list[Camera]:
        return [c for c in self.table if c.status == CONNECTED]

    def snapshot(self) -> list[dict[str, Any]]:
        return self.table.snapshot()

    # --- changing -----------------------------------------------------------------

    def restore(self, states: Iterable[dict[str, Any]]) -> int:
        """Re-list the cameras a previous worker of this service run had listed.

        They keep their status until the first scan of their kind confirms or
        corrects it, so a discovery restart neither forgets unplugged cameras
        nor reports the present ones as reconnected. Returns how many.
        """
        restored = 0
        for state in states:
            try:
                camera = Camera.from_state(state)
            except TypeError:
                continue  # a record of an incompatible version
            if self.table.find(camera.id) is not None:
                continue
            self._kind[camera.id] = SIM if camera.simulated else V4L2
            self.table.put(camera)
            restored += 1
        return restored

    def assign_ids(self, found: Iterable[Found]) -> None:
        """Give never-seen keys their ids, in natural device order.

        Blocking when a key is new (cameras.json is written): scanners call it
        in their thread, so that :meth:`merge` on the event loop finds every
        id in memory. Thread-safe.
        """
        self.ids.assign(f.key for f in sorted(found, key=lambda f: _natural(f.device)))

    def merge(self, kind: str, found: Iterable[Found], now: float | None = None) -> list[Camera]:
        """Apply one complete scan of ``kind``; returns the cameras that changed.

        Departures are applied before arrivals, so a camera leaving makes room
        under ``max_cameras`` for one arriving in the same scan. New keys get
        ids in natural device order (``sim:2`` before ``sim:10``).
        """
        now = time.time() if now is None else now
        found = sorted(self._resolve_duplicates(list(found)), key=lambda f: _natural(f.device))
        present_ids = self.ids.assign(f.key for f in found) if found else {}
        present = set(present_ids.values())
        changed = [
            self._disconnect(camera)
            for camera in list(self.table)
            if self._kind.get(camera.id) == kind and camera.id not in present and camera.status != DISCONNECTED
        ]
        for record in found:
            camera_id = present_ids[record.key]
            camera = self.table.find(camera_id)
            if (camera is None or camera.status == DISCONNECTED) and self._active_count() >= self.max_cameras:
                self._refuse(record)
                continue
            camera = self._apply(camera_id, kind, record, camera, now)
            if camera is not None:
                changed.append(camera)
        return changed

    def set_recording(self, device_or_id: str, recording: bool, readers: int | None = None) -> Camera | None:
        """Follow a recording state change; returns the camera if anything changed."""
        camera = self.find(device_or_id)
        if camera is None:
            return None
        readers = (1 if recording else 0) if readers is None else max(0, int(readers))
        if camera.recording == recording and camera.readers == readers:
            return None
        camera.recording, camera.readers = recording, readers
        return camera

    def set_streams(self, camera_id: str, streams: dict[str, str]) -> Camera | None:
        """Set a camera's stream URLs; returns it if they changed. Only CONNECTED cameras have any."""
        camera = self.table.find(camera_id)
        if camera is None or camera.id != camera_id:
            return None
        streams = dict(streams) if camera.status == CONNECTED else {}
        if camera.streams == streams:
            return None
        camera.streams = streams
        return camera

    # --- internals ----------------------------------------------------------------

    def _active_count(self) -> int:
        return sum(1 for c in self.table if c.status != DISCONNECTED)

    def _refuse(self, record: Found) -> None:
        if record.key not in self._refused:
            self._refused.add(record.key)
            if self._log is not None:
                self._log.warning("camera_limit_reached", device=record.device, max_cameras=self.max_cameras)

    def _resolve_duplicates(self, found: list[Found]) -> list[Found]:
        """Give every record a distinct key: later duplicates fall back to their ``alt_key``.

        The record already connected under the key (same device) keeps it, so
        plugging a second camera with the same serial never renames the first.
        """
        by_key: dict[str, list[Found]] = {}
        for record in found:
            by_key.setdefault(record.key, []).append(record)
        for key, records in by_key.items():
            if len(records) < 2:
                continue
            current = self.table.find(self.ids.get(key) or "")
            keeper = next(
                (
                    r
                    for r in records
                    if current is not None and current.status != DISCONNECTED and r.device == current.device
                ),
                records[0],
            )
            for record in records:
                if record is not keeper and record.alt_key:
                    record.key = record.alt_key
        unique: dict[str, Found] = {}
        for record in found:
            unique.setdefault(record.key, record)  # no alt key either: first one wins
        return list(unique.values())

    def _apply(self, camera_id: str, kind: str, record: Found, camera: Camera | None, now: float) -> Camera | None:
        status = ERROR if record.error else CONNECTED
        # Copies: scanners cache their records and hand the same lists out again.
        values = {name: copy.deepcopy(getattr(record, name)) for name in _SCANNED}
        if (
            camera is not None
            and camera.status == status
            and all(getattr(camera, name) == value for name, value in values.items())
        ):
            return None
        if camera is None:
            camera = Camera(id=camera_id, device=record.device, status=DISCONNECTED, simulated=kind == SIM)
        # A new object, not an in-place change: CameraTable.put only drops the
        # old device -> id entry when it sees the old record.
        updated = replace(camera, status=status, **values)
        if status != CONNECTED:
            updated.streams, updated.readers = {}, 0
        elif camera.status != CONNECTED:
            updated.connected_since = now
        if camera.status == DISCONNECTED:
            self.hotplug_events += 1  # an arrival (ERROR -> CONNECTED is a repair, not a plug)
        self._kind[camera_id] = kind
        self.table.put(updated)
        return updated

    def _disconnect(self, camera: Camera) -> Camera:
        self.hotplug_events += 1
        camera.status = DISCONNECTED
        camera.streams, camera.readers, camera.bytes_sent = {}, 0, 0
        camera.error = None
        return camera
