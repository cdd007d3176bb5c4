"""MQTT command payloads -> service API calls (pure: no I/O).

A command arrives on ``<prefix>/cameras/<id>/<action>/set``. Its payload
becomes exactly one call of the service's own API, or an :class:`RpcError`
(the codes of ``shared/API.md``) that the bridge publishes on
``<prefix>/result``. Parsing here only decides the *shape*; values (duration
bounds, file names, whether the camera exists) are checked by the service
itself, so an MQTT client gets the same errors as a WebSocket client.

Accepted payloads:

* ``snapshot/set``: empty, ``ON`` or ``PRESS`` (Home Assistant's button), or a
  JSON object with the optional keys ``filename`` and ``id``. Always JPEG:
  the picture is published as a JPEG payload.
* ``recording/set``: ``ON`` (record until ``OFF``), ``OFF``, or a JSON object
  with ``state`` (``ON`` default, or ``OFF``), at most one of ``duration``,
  ``duration_seconds``, ``duration_minutes``, ``duration_hours``, and
  optionally ``format`` and ``id``.

``id`` (a string or number) is echoed in the result so a client can match
its answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from camservice.errors import INVALID_REQUEST, RpcError, invalid_params

#: A command larger than this is refused unread (a command is a few words).
MAX_PAYLOAD_BYTES = 4096
DURATION_KEYS = ("duration", "duration_seconds", "duration_minutes", "duration_hours")
_SNAPSHOT_KEYS = {"filename", "id"}
_RECORDING_KEYS = {"state", "format", "id", *DURATION_KEYS}


@dataclass(frozen=True)
class Command:
    camera: str
    action: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    request_id: Any = None


def request_id_of(payload: bytes) -> Any:
    """The ``id`` of a JSON object payload, for answers to commands that fail to parse."""
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    value = document.get("id") if isinstance(document, dict) else None
    return value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None


def parse(camera: str, action: str, payload: bytes, retained: bool = False) -> Command:
    """The API call a command asks for; raises :class:`RpcError` when it asks for none."""
    if retained:
        # A retained command would run again at every reconnect of the bridge:
        # a command is never repeated behind the user's back.
        raise RpcError(INVALID_REQUEST, data={"reason": "retained commands are refused; publish without retain"})
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise invalid_params(f"payload larger than {MAX_PAYLOAD_BYTES} bytes")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise invalid_params("payload is not UTF-8 text") from None
    if action == "snapshot":
        return _snapshot(camera, text)
    if action == "recording":
        return _recording(camera, text)
    raise invalid_params(f"unknown command {action!r}; expected snapshot/set or recording/set", "action")


def _object(text: str, allowed: set[str]) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except ValueError:
        raise invalid_params("payload is neither a known word nor JSON") from None
    if not isinstance(document, dict):
        raise invalid_params("a JSON payload must be an object")
    unknown = sorted(set(document) - allowed)
    if unknown:
        raise invalid_params(f"unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}", unknown[0])
    request_id = document.get("id")
    if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, (str, int, float))):
        raise invalid_params("id must be a string or a number", "id")
    return document


def _snapshot(camera: str, text: str) -> Command:
    params: dict[str, Any] = {"device": camera, "format": "jpg"}
    if text.upper() in ("", "ON", "PRESS"):
        return Command(camera, "snapshot", "take_snapshot", params)
    document = _object(text, _SNAPSHOT_KEYS)
    if "filename" in document:
        params["filename"] = document["filename"]  # the service checks the name
    return Command(camera, "snapshot", "take_snapshot", params, document.get("id"))


def _recording(camera: str, text: str) -> Command:
    word = text.upper()
    if word == "ON":
        return Command(camera, "recording", "start_recording", {"device": camera})
    if word == "OFF":
        return Command(camera, "recording", "stop_recording", {"device": camera})
    if not text:
        raise invalid_params("empty payload; expected ON, OFF or a JSON object")
    document = _object(text, _RECORDING_KEYS)
    state = document.get("state", "ON")
    if not isinstance(state, str) or state.upper() not in ("ON", "OFF"):
        raise invalid_params("state must be ON or OFF", "state")
    durations = [key for key in DURATION_KEYS if key in document]
    if state.upper() == "OFF":
        extra = [key for key in ("format", *durations) if key in document]
        if extra:
            raise invalid_params(f"{extra[0]} makes no sense with state OFF", extra[0])
        return Command(camera, "recording", "stop_recording", {"device": camera}, document.get("id"))
    if len(durations) > 1:
        raise invalid_params(f"give at most one of {', '.join(DURATION_KEYS)}", durations[1])
    params = {"device": camera}
    for key in (*durations, "format"):
        if key in document:
            params[key] = document[key]  # bounds and types are the service's to check
    return Command(camera, "recording", "start_recording", params, document.get("id"))
