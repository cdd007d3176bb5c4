"""File names in the storage folders: what they say and where they may point.

Pure helpers shared by the index, the JSON-RPC handlers and the download
server, so that every entry point applies the same rules:

* :func:`parse_name` reads the camera id and start time out of the default
  name ``{camera_id}_{YYYY-MM-DD_HH-MM-SS}_{XXXXXX}.{ext}`` (UTC).
* :func:`resolve_inside` turns a bare name into a path that is guaranteed to
  stay inside its folder, following symlinks only when they stay inside too.
  The gateway validates the character set before a request reaches a worker;
  this is the second line of defence (internal callers, the HTTP server,
  symlinks planted in the folder).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from camservice.methods import check_filename

RECORDING, SNAPSHOT = "recording", "snapshot"
KINDS = (RECORDING, SNAPSHOT)

#: Extensions each folder's index admits; anything else (temporary files,
#: notes an operator left there) is neither listed nor served.
EXTENSIONS = {RECORDING: ("mp4", "mkv"), SNAPSHOT: ("jpg", "jpeg", "png")}

CONTENT_TYPES = {
    "mp4": "video/mp4",
    "mkv": "video/x-matroska",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
}

_DEFAULT_NAME = re.compile(
    r"(?P<camera>[A-Za-z0-9.-][A-Za-z0-9._-]*?)_"
    r"(?P<Y>[0-9]{4})-(?P<M>[0-9]{2})-(?P<D>[0-9]{2})_(?P<h>[0-9]{2})-(?P<m>[0-9]{2})-(?P<s>[0-9]{2})_"
    r"[A-Z0-9]{6}(?P<part>_part[0-9]{3,})?\.[A-Za-z0-9]+"
)


@dataclass(frozen=True)
class ParsedName:
    camera_id: str | None
    started: float | None  # epoch seconds, from the name's UTC timestamp


def parse_name(filename: str) -> ParsedName:
    """Camera id and start time of a default-named file; ``None`` parts otherwise.

    Later segments of a rolled-over recording (``..._XXXXXX_part001.mp4``)
    keep the first segment's name and so its timestamp, which is not theirs:
    for them only the camera id is taken.
    """
    match = _DEFAULT_NAME.fullmatch(filename)
    if not match:
        return ParsedName(None, None)
    if match.group("part"):
        return ParsedName(match.group("camera"), None)
    try:
        # datetime() rather than strptime: a rescan parses 100,000 names and
        # strptime costs ten times more; both refuse 2024-13-45.
        moment = datetime(*(int(match.group(g)) for g in "YMDhms"), tzinfo=timezone.utc)
    except ValueError:  # shaped like a date, but is not one
        return ParsedName(match.group("camera"), None)
    return ParsedName(match.group("camera"), moment.timestamp())


def extension(filename: str) -> str:
    return filename.rpartition(".")[2].lower() if "." in filename else ""


def admitted(kind: str, filename: str) -> bool:
    """Whether a name found on disk belongs in the index of ``kind``."""
    if extension(filename) not in EXTENSIONS[kind]:
        return False
    try:
        check_filename(filename)
    except Exception:  # noqa: BLE001 - any refusal means "not ours"
        return False
    return True


def content_type(filename: str) -> str:
    return CONTENT_TYPES.get(extension(filename), "application/octet-stream")


class Escape(ValueError):
    """A name that would leave its folder (``..``, separators, an outbound symlink)."""


def resolve_inside(folder: Path, filename: str) -> Path:
    """The path of ``filename`` in ``folder``, refusing anything that leaves it.

    The name must be a single component in the contract's character set.
    Symlinks are resolved and the final target must still lie inside the
    folder's real path. The returned path is the resolved target, so the
    caller opens what was checked (open it with ``O_NOFOLLOW`` to close the
    window where the last component could be swapped for a symlink).
    The file need not exist.
    """
    try:
        check_filename(filename)
    except Exception as exc:  # RpcError from the shared validator
        raise Escape(getattr(exc, "data", {}).get("reason", "bad file name")) from None
    if "/" in filename or "\\" in filename or "\x00" in filename or filename in (".", ".."):
        raise Escape("file name must be a single path component")  # unreachable after check_filename
    base = os.path.realpath(folder)
    target = os.path.realpath(os.path.join(base, filename))
    if os.path.dirname(target) != base and os.path.commonpath([base, target]) != base:
        raise Escape("file name resolves outside its folder")
    if target == base:
        raise Escape("file name resolves to the folder itself")
    return Path(target)
