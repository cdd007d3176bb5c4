"""Home Assistant MQTT discovery configs (pure: no I/O).

Home Assistant creates entities from retained JSON messages on
``<discovery prefix>/<component>/<node_id>/<object_id>/config`` and removes
them when that topic is cleared (an empty retained payload). The node id is
derived from the bridge's topic prefix, so two boxes on one broker never
collide. Per camera:

* ``camera``: shows ``<prefix>/cameras/<id>/snapshot`` (JPEG);
* ``button``: takes a snapshot (``snapshot/set``);
* ``switch``: recording on/off (``recording/set``, state from the state topic);
* ``binary_sensor`` (``connectivity``): the camera is ``CONNECTED``.

Per service: ``sensor`` storage usage (%) and active recordings, both read
from ``<prefix>/health``. Every entity goes unavailable with the bridge's
availability topic (its last will says ``offline``).
"""

from __future__ import annotations

import json
from typing import Any

from camservice import __version__

from .topics import Topics, safe_level

ORIGIN = {"name": "camservice", "sw_version": __version__}
#: (component, object id suffix) of every per-camera entity.
CAMERA_ENTITIES = (
    ("camera", "snapshot"),
    ("button", "take_snapshot"),
    ("switch", "recording"),
    ("binary_sensor", "connected"),
)
SERVICE_ENTITIES = (("sensor", "storage_usage"), ("sensor", "active_recordings"))


class Discovery:
    def __init__(self, topics: Topics, prefix: str, hostname: str, qos: int):
        self.topics = topics
        self.prefix = prefix.strip("/")
        self.node = safe_level(topics.prefix.replace("/", "_"))
        self.hostname = hostname
        self.qos = qos
        self.availability = [
            {"topic": topics.availability, "payload_available": "online", "payload_not_available": "offline"}
        ]

    def config_topic(self, component: str, object_id: str) -> str:
        return f"{self.prefix}/{component}/{self.node}/{safe_level(object_id)}/config"

    def service_device(self) -> dict[str, Any]:
        return {
            "identifiers": [self.node],
            "name": f"camservice {self.hostname}",
            "manufacturer": "camservice",
            "model": "camera service",
            "sw_version": __version__,
        }

    def _common(self, unique: str, name: str | None, device: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": name,
            "unique_id": f"{self.node}_{unique}",
            "availability": self.availability,
            "device": device,
            "origin": ORIGIN,
            "qos": self.qos,
        }

    def camera_configs(self, camera: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """``(topic, payload)`` of every entity of one camera (``camera`` as in the state topic)."""
        cid = camera["id"]
        device = {
            "identifiers": [f"{self.node}_{cid}"],
            "name": f"{camera.get('name') or cid} ({cid}, {self.hostname})",
            "manufacturer": "camservice",
            "model": camera.get("name") or "camera",
            "via_device": self.node,
        }
        state = self.topics.state(cid)
        return [
            (
                self.config_topic("camera", f"{cid}_snapshot"),
                {**self._common(f"{cid}_snapshot", None, device), "topic": self.topics.snapshot(cid)},
            ),
            (
                self.config_topic("button", f"{cid}_take_snapshot"),
                {
                    **self._common(f"{cid}_take_snapshot", "Take snapshot", device),
                    "command_topic": self.topics.command(cid, "snapshot"),
                    "payload_press": "PRESS",
                    "retain": False,
                },
            ),
            (
                self.config_topic("switch", f"{cid}_recording"),
                {
                    **self._common(f"{cid}_recording", "Recording", device),
                    "command_topic": self.topics.command(cid, "recording"),
                    "state_topic": state,
                    "value_template": "{{ 'ON' if value_json.recording else 'OFF' }}",
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "state_on": "ON",
                    "state_off": "OFF",
                    "retain": False,
                    "icon": "mdi:record-rec",
                },
            ),
            (
                self.config_topic("binary_sensor", f"{cid}_connected"),
                {
                    **self._common(f"{cid}_connected", "Connected", device),
                    "device_class": "connectivity",
                    "state_topic": state,
                    "value_template": "{{ 'ON' if value_json.status == 'CONNECTED' else 'OFF' }}",
                    "payload_on": "ON",
                    "payload_off": "OFF",
                },
            ),
        ]

    def camera_config_topics(self, camera_id: str) -> list[str]:
        """Every config topic of a camera: what is cleared when the camera is gone."""
        return [self.config_topic(component, f"{camera_id}_{suffix}") for component, suffix in CAMERA_ENTITIES]

    def service_configs(self) -> list[tuple[str, dict[str, Any]]]:
        device = self.service_device()
        return [
            (
                self.config_topic("sensor", "storage_usage"),
                {
                    **self._common("storage_usage", "Storage usage", device),
                    "state_topic": self.topics.health,
                    "value_template": "{{ value_json.storage.usage_percentage }}",
                    "unit_of_measurement": "%",
                    "state_class": "measurement",
                    "icon": "mdi:harddisk",
                },
            ),
            (
                self.config_topic("sensor", "active_recordings"),
                {
                    **self._common("active_recordings", "Active recordings", device),
                    "state_topic": self.topics.health,
                    "value_template": "{{ value_json.active_recordings }}",
                    "state_class": "measurement",
                    "icon": "mdi:record-rec",
                },
            ),
        ]


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()
