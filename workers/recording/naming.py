"""File names and timestamps of snapshots and recordings.

Default names follow the contract: ``{id}_{YYYY-MM-DD_HH-MM-SS}_{XXXXXX}.{ext}``
in UTC with six random characters of ``A-Z0-9``. A recording that rolls over
keeps the name the client was given for its first segment and names the
later ones after it: ``F = stem.ext`` then ``stem_part001.ext``,
``stem_part002.ext``... so that every segment can be traced back to the
``filename`` of ``start_recording`` without any lookup.
"""

from __future__ import annotations

import secrets
import string
import time
from datetime import datetime, timezone

from camservice.timestamps import utc_iso  # noqa: F401 - naming.utc_iso is what sessions use

_ALPHABET = string.ascii_uppercase + string.digits
#: Longest file name most Linux file systems accept, in bytes.
MAX_NAME_BYTES = 255


def random_tag(length: int = 6) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def default_name(camera_id: str, ext: str, stamp: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if stamp is None else stamp, timezone.utc)
    return f"{camera_id}_{moment:%Y-%m-%d_%H-%M-%S}_{random_tag()}.{ext}"


def split_name(filename: str) -> tuple[str, str]:
    """``("stem", "ext")`` of a name that has an extension (the gateway ensures it)."""
    stem, _, ext = filename.rpartition(".")
    return (stem, ext) if stem else (filename, "")


def segment_name(first: str, index: int) -> str:
    """The name of segment ``index`` of a recording whose first segment is ``first``.

    Index 0 is ``first`` itself. Later names append ``_partNNN``; when that
    would exceed the file-name limit the stem is shortened rather than the
    suffix, because the suffix is what keeps the names unique.
    """
    if index == 0:
        return first
    stem, ext = split_name(first)
    suffix = f"_part{index:03d}.{ext}"
    room = MAX_NAME_BYTES - len(suffix.encode())
    return stem.encode()[:room].decode("utf-8", "ignore") + suffix


def is_later_segment(first: str, name: str) -> bool:
    """Whether ``name`` reads as a later segment of ``first``: ``stem_partNNN*.ext``, three digits or more.

    Used to refuse a recording name whose segments would clash with files
    already there. A plain string test, not a glob: ``Path.glob`` compiles a
    regular expression per pattern, and with one pattern per recording
    started, ``re``'s cache (512 patterns) and pathlib's selector cache filled
    up with patterns never used again (~1 kB each: the recording worker's
    largest growth in a 10-minute endurance run, and the regular expressions
    of the rest of the process evicted).
    """
    stem, ext = split_name(first)
    prefix, suffix = f"{stem}_part", f".{ext}"
    digits = name[len(prefix) : len(prefix) + 3]
    return (
        len(name) >= len(prefix) + 3 + len(suffix)
        and name.startswith(prefix)
        and name.endswith(suffix)
        and len(digits) == 3
        and all("0" <= c <= "9" for c in digits)
    )
