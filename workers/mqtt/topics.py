"""The bridge's topic tree, built from one prefix (pure: no I/O).

Everything of one service lives under ``mqtt.topic_prefix`` (default
``camservice/<hostname>``), so boxes of a fleet share a broker without
touching each other's topics and an ACL can grant a user one box::

    <prefix>/availability               online | offline (retained; offline is the last will)
    <prefix>/health                     service health JSON (retained, every mqtt.health_interval)
    <prefix>/events/<topic>             camera_status_update, recording_status_update, storage_status_update
    <prefix>/result                     the answer to every command
    <prefix>/cameras/<id>/state         {id, device, name, status, resolution, fps, recording} (retained)
    <prefix>/cameras/<id>/snapshot      the latest snapshot, a JPEG (retained)
    <prefix>/cameras/<id>/snapshot/set  command: take a snapshot
    <prefix>/cameras/<id>/recording/set command: ON, OFF or JSON {"state", "duration", ...}
"""

from __future__ import annotations

import re
import socket

#: Commands the bridge accepts, by the topic level before ``/set``.
ACTIONS = ("snapshot", "recording")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def default_prefix(hostname: str | None = None) -> str:
    """``camservice/<hostname>``, with characters MQTT gives meaning to replaced by ``_``."""
    return "camservice/" + safe_level(hostname or socket.gethostname())


def safe_level(text: str) -> str:
    """One topic level (or Home Assistant id) made of ``A-Za-z0-9._-`` only."""
    return _UNSAFE.sub("_", text) or "_"


def check_prefix(prefix: str) -> str | None:
    """A complaint about a topic prefix, or None when it can be published under."""
    if not prefix.strip("/"):
        return "must not be empty"
    if any(c in prefix for c in "+#\0"):
        return "must not contain the wildcards + or # (or NUL)"
    if prefix.startswith("$"):
        return "must not start with $ (reserved for the broker)"
    return None


class Topics:
    def __init__(self, prefix: str):
        complaint = check_prefix(prefix)
        if complaint:
            raise ValueError(f"mqtt.topic_prefix: {complaint} (got {prefix!r})")
        self.prefix = prefix.strip("/")
        self.availability = f"{self.prefix}/availability"
        self.health = f"{self.prefix}/health"
        self.result = f"{self.prefix}/result"
        self.commands = f"{self.prefix}/cameras/+/+/set"
        self.states = f"{self.prefix}/cameras/+/state"
        self._cameras = f"{self.prefix}/cameras/"

    def event(self, topic: str) -> str:
        return f"{self.prefix}/events/{topic}"

    def state(self, camera_id: str) -> str:
        return f"{self._cameras}{camera_id}/state"

    def snapshot(self, camera_id: str) -> str:
        return f"{self._cameras}{camera_id}/snapshot"

    def command(self, camera_id: str, action: str) -> str:
        return f"{self._cameras}{camera_id}/{action}/set"

    def parse_command(self, topic: str) -> tuple[str, str] | None:
        """``(camera_id, action)`` of a command topic (any action, checked later), else None."""
        if not topic.startswith(self._cameras):
            return None
        parts = topic[len(self._cameras) :].split("/")
        if len(parts) != 3 or parts[2] != "set" or not parts[0] or not parts[1]:
            return None
        return parts[0], parts[1]

    def parse_state(self, topic: str) -> str | None:
        """The camera id of a state topic, else None."""
        if not topic.startswith(self._cameras):
            return None
        parts = topic[len(self._cameras) :].split("/")
        return parts[0] if len(parts) == 2 and parts[1] == "state" and parts[0] else None
