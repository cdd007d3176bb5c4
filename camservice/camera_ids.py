"""The format of ``state_dir/cameras.json``: stable camera ids per stable key.

``{"version": 1, "ids": {"sim:0": "camera0", "by-id:usb-...": "camera1"}}``.
The discovery worker is its only writer
(:class:`camservice.workers.discovery.ids.IdStore`, which describes how ids
are handed out); the CLI reads it to name the camera a plug created and to
accept a camera id where a simulated camera is meant.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

FILENAME = "cameras.json"
VERSION = 1
_ID = re.compile(r"camera(0|[1-9][0-9]*)")


def id_number(camera_id: str) -> int | None:
    match = _ID.fullmatch(camera_id)
    return int(match.group(1)) if match else None


def parse(text: str) -> dict[str, str]:
    """The key -> id map of a ``cameras.json``; ``ValueError`` when it is not one."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("ids"), dict):
        raise ValueError("expected an object with an 'ids' object")
    ids = data["ids"]
    for key, camera_id in ids.items():
        if not isinstance(camera_id, str) or id_number(camera_id) is None:
            raise ValueError(f"bad id {camera_id!r} for {key!r}")
    if len(set(ids.values())) != len(ids):
        raise ValueError("two keys share an id")
    return dict(ids)


def read_ids(state_dir: str | os.PathLike) -> dict[str, str]:
    """The persisted map, empty when there is none (read-only; for the CLI and tests)."""
    try:
        return parse((Path(state_dir).expanduser() / FILENAME).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def lowest_free(used: Iterable[str]) -> str:
    numbers = {id_number(camera_id) for camera_id in used}
    number = 0
    while number in numbers:
        number += 1
    return f"camera{number}"
