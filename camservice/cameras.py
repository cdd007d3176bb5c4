"""The camera model: one :class:`Camera` record, and :class:`CameraTable` to hold them.

The discovery worker owns every record (a registry around a
:class:`CameraTable`) and publishes every change as a
``camera_status_update`` event carrying the whole record
(``Camera.to_state()``). Other processes hold a
:class:`~camservice.replica.CameraReplica` around a table of their own;
that is how the gateway answers ``get_camera_list`` and
``get_camera_status`` without a ZeroMQ hop. The table caches the encoded
API views, dropped whenever a camera is put.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

CONNECTED, DISCONNECTED, ERROR = "CONNECTED", "DISCONNECTED", "ERROR"

#: Fields of a camera in ``camera_status_update`` notifications (shared/API.md).
NOTIFICATION_FIELDS = ("device", "id", "status", "name", "resolution", "fps", "streams")


@dataclass
class Camera:
    id: str  # stable short name: camera0, camera1...
    device: str  # /dev/videoN or sim:N
    status: str = CONNECTED
    name: str = "Camera"
    resolution: str = ""  # current capture resolution, "WxH"
    fps: int = 0
    formats: list[str] = field(default_factory=list)
    resolutions: list[str] = field(default_factory=list)
    frame_rates: dict[str, list[int]] = field(default_factory=dict)
    streams: dict[str, str] = field(default_factory=dict)
    recording: bool = False
    simulated: bool = False
    #: Capture parameters for the media backend (input format, sim pattern...).
    source: dict[str, Any] = field(default_factory=dict)
    connected_since: float = field(default_factory=time.time)
    bytes_sent: int = 0
    readers: int = 0
    error: str | None = None

    def to_state(self) -> dict[str, Any]:
        """The full record, as published on the event bus."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Camera:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in state.items() if k in known})

    def to_api(self) -> dict[str, Any]:
        """The camera object of ``get_camera_list``."""
        return {
            "device": self.device,
            "id": self.id,
            "status": self.status,
            "name": self.name,
            "resolution": self.resolution,
            "fps": self.fps,
            "streams": dict(self.streams) if self.status == CONNECTED else {},
            "capabilities": self.capabilities(),
            "recording": self.recording,
        }

    def capabilities(self) -> dict[str, Any]:
        return {
            "formats": list(self.formats),
            "resolutions": list(self.resolutions),
            "frame_rates": {k: list(v) for k, v in self.frame_rates.items()},
        }

    def metrics(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        connected = self.status == CONNECTED
        return {
            "bytes_sent": self.bytes_sent,
            "readers": self.readers if connected else 0,
            "uptime": round(now - self.connected_since, 3) if connected else 0,
        }

    def metrics_json(self, now: float) -> str:
        """``metrics(now)`` as compact JSON text, without the encoder: it runs on every status read."""
        if self.status != CONNECTED:
            return f'{{"bytes_sent":{self.bytes_sent},"readers":0,"uptime":0}}'
        # repr() of a float is what json writes for it; both fields are plain ints.
        uptime = round(now - self.connected_since, 3)
        return f'{{"bytes_sent":{self.bytes_sent},"readers":{self.readers},"uptime":{uptime!r}}}'

    def to_status(self, now: float | None = None) -> dict[str, Any]:
        """The result of ``get_camera_status``: the camera object plus metrics."""
        result = self.to_api()
        result["metrics"] = self.metrics(now)
        return result

    def to_notification(self) -> dict[str, Any]:
        api = self.to_api()
        return {name: api[name] for name in NOTIFICATION_FIELDS}


class CameraTable:
    """Cameras by id, findable by id or device; the owner's or a replica's.

    A changed record goes back in through :meth:`put`, which keeps the
    device index and drops the camera's cached JSON.
    """

    def __init__(self) -> None:
        self._by_id: dict[str, Camera] = {}
        self._by_device: dict[str, str] = {}
        self.seq = 0  # last applied event sequence of the owner
        self.source: str | None = None  # owner process name
        # Encoded JSON of the API views, dropped whenever a camera changes.
        self._api_json: dict[str, str] = {}
        self._list_json: str | None = None

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Camera]:
        return iter(self._sorted())

    def _sorted(self) -> list[Camera]:
        return sorted(self._by_id.values(), key=lambda c: (len(c.id), c.id))

    def find(self, device_or_id: str) -> Camera | None:
        """By id, else by device; a device node reused by a newly plugged
        camera finds the connected one, not the unplugged one it replaced."""
        camera = self._by_id.get(device_or_id)
        if camera is None:
            camera_id = self._by_device.get(device_or_id)
            camera = self._by_id.get(camera_id) if camera_id else None
        return camera

    def _changed(self, camera_id: str | None = None) -> None:
        self._list_json = None
        if camera_id is None:
            self._api_json.clear()
        else:
            self._api_json.pop(camera_id, None)

    def put(self, camera: Camera) -> None:
        self._changed(camera.id)
        old = self._by_id.get(camera.id)
        if old is not None and old.device != camera.device and self._by_device.get(old.device) == camera.id:
            del self._by_device[old.device]
        holder = self._by_id.get(self._by_device.get(camera.device, ""))
        # The device path belongs to the connected camera when two share it.
        if holder is None or holder.id == camera.id or holder.status != CONNECTED or camera.status == CONNECTED:
            self._by_device[camera.device] = camera.id
        self._by_id[camera.id] = camera

    def load_snapshot(self, cameras: list[dict[str, Any]], seq: int, source: str) -> None:
        self._changed()
        self._by_id.clear()
        self._by_device.clear()
        for state in cameras:
            self.put(Camera.from_state(state))
        self.seq, self.source = seq, source

    def api_list(self) -> dict[str, Any]:
        cameras = [c.to_api() for c in self._sorted()]
        connected = sum(1 for c in cameras if c["status"] == CONNECTED)
        return {"cameras": cameras, "total": len(cameras), "connected": connected}

    def status_json(self, camera: Camera, now: float | None = None) -> str:
        """``camera.to_status()`` as JSON text, from the cached camera object."""
        api = self._api_json.get(camera.id)
        if api is None:
            api = self._api_json[camera.id] = _encode(camera.to_api())
        return f'{api[:-1]},"metrics":{camera.metrics_json(time.time() if now is None else now)}}}'

    def list_json(self) -> str:
        """``api_list()`` as JSON text, encoded once per change."""
        if self._list_json is None:
            self._list_json = _encode(self.api_list())
        return self._list_json

    def snapshot(self) -> list[dict[str, Any]]:
        return [c.to_state() for c in self._sorted()]
