"""The bridge's view of the cameras, and the messages each change produces (pure: no I/O).

Fed from two sources: the event bus (``camera_status_update`` carries a
camera's whole record, ``recording_status_update`` its recording state)
and ``get_camera_list`` answers (at start, after a sequence gap on the bus,
and every few seconds in case PUB/SUB lost something). A list answer never
overrides a camera that an event changed after the list was asked for: the
event is newer.
"""

from __future__ import annotations

import json
from typing import Any

from camservice import topics as bus
from camservice.cameras import CONNECTED, NOTIFICATION_FIELDS

from .homeassistant import Discovery, encode
from .outbox import Message
from .topics import Topics

#: The fields of a camera's retained state message.
STATE_FIELDS = ("id", "device", "name", "status", "resolution", "fps", "recording")
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def camera_state(record: dict[str, Any]) -> dict[str, Any]:
    """The state message of a camera record (bus state or API camera object)."""
    return {key: record.get(key) for key in STATE_FIELDS} | {"recording": bool(record.get("recording"))}


def notification(record: dict[str, Any]) -> dict[str, Any]:
    """A ``camera_status_update`` as clients of the WebSocket API get it (shared/API.md)."""
    params = {key: record.get(key) for key in NOTIFICATION_FIELDS}
    if params.get("status") != CONNECTED:
        params["streams"] = {}
    return params


class Model:
    def __init__(self, topics: Topics, discovery: Discovery | None):
        self.topics = topics
        self.discovery = discovery
        self.cameras: dict[str, dict[str, Any]] = {}
        self._changed_at: dict[str, float] = {}  # monotonic time of the last event per camera
        self._announced: set[str] = set()  # cameras whose discovery configs went out
        self.loaded = False  # a full camera list has been applied once

    def by_device(self, device: str) -> str | None:
        for cid, state in self.cameras.items():
            if state["device"] == device or cid == device:
                return cid
        return None

    def active_recordings(self) -> int:
        return sum(1 for state in self.cameras.values() if state["recording"])

    # --- changes -> messages ----------------------------------------------------------

    def camera_event(self, record: dict[str, Any], now: float) -> list[Message]:
        """A bus ``camera_status_update``: new state (if changed) then the event."""
        cid = record.get("id")
        if not isinstance(cid, str) or not cid:
            return []
        self._changed_at[cid] = now
        messages = self._set(cid, camera_state(record))
        messages.append(self.event(bus.CAMERA_STATUS, notification(record)))
        return messages

    def recording_event(self, data: dict[str, Any], now: float) -> tuple[list[Message], bool]:
        """A bus ``recording_status_update``; the flag says the camera is unknown (resync)."""
        cid = self.by_device(str(data.get("device")))
        messages: list[Message] = []
        if cid is not None:
            self._changed_at[cid] = now
            state = dict(self.cameras[cid], recording=data.get("status") == "STARTED")
            messages = self._set(cid, state)
        messages.append(self.event(bus.RECORDING_STATUS, data))
        return messages, cid is None

    def camera_list(self, cameras: list[dict[str, Any]], asked_at: float) -> list[Message]:
        """A ``get_camera_list`` answer asked for at monotonic time ``asked_at``."""
        messages: list[Message] = []
        for record in cameras:
            cid = record.get("id")
            if not isinstance(cid, str) or self._changed_at.get(cid, float("-inf")) > asked_at:
                continue
            messages += self._set(cid, camera_state(record))
        self.loaded = True
        return messages

    def stale(self, camera_id: str) -> list[Message]:
        """A camera's retained state found on the broker: clear it unless the camera is listed."""
        if not self.loaded or camera_id in self.cameras:
            return []
        topics = [self.topics.state(camera_id), self.topics.snapshot(camera_id)]
        if self.discovery is not None:
            topics += self.discovery.camera_config_topics(camera_id)
        return [Message(topic, b"", True, "discovery") for topic in topics]

    def event(self, topic: str, data: dict[str, Any]) -> Message:
        return Message(self.topics.event(topic), _encode(data).encode(), False, "event")

    def _set(self, cid: str, state: dict[str, Any]) -> list[Message]:
        messages: list[Message] = []
        if self.discovery is not None and (
            cid not in self._announced or self.cameras.get(cid, {}).get("name") != state["name"]
        ):
            self._announced.add(cid)
            messages += [Message(t, encode(p), True, "discovery") for t, p in self.discovery.camera_configs(state)]
        if self.cameras.get(cid) != state:
            self.cameras[cid] = state
            messages.append(Message(self.topics.state(cid), _encode(state).encode(), True, "state"))
        return messages
