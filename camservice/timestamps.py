"""Timestamps as the contract writes them: ISO 8601, UTC, with a ``Z`` suffix."""

from __future__ import annotations

import time
from datetime import datetime, timezone


def utc_iso(stamp: float | None = None, timespec: str = "milliseconds") -> str:
    """``stamp`` (seconds since the epoch; now when None) as ``2026-11-25T01:31:40.123Z``.

    ``timespec`` is :meth:`datetime.isoformat`'s: ``"seconds"`` where a value
    has no meaningful fraction (file times, key creation, token expiry).
    """
    moment = datetime.fromtimestamp(time.time() if stamp is None else stamp, timezone.utc)
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")
