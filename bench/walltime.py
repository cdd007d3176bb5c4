"""Where a run's wall time goes: seconds per kind of work, per category.

``spent(kind)`` times a block into the current category's account; the
suite wraps the expensive kinds (service starts and stops, ffmpeg checks of
recordings, index waits, measured phases); ``account(category)`` returns
them with the category's total and the rest ("other": calls, set-up, fixed
waits). Nested blocks count once, in the outermost kind, so the kinds of a
category add up to at most its total.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import contextmanager

_lock = threading.Lock()
_spent: dict[str, float] = defaultdict(float)
_depth = threading.local()

SERVICE_START = "service starts"
SERVICE_STOP = "service stops"
FFMPEG = "ffmpeg checks"
INDEX = "index waits"
MEASURED = "measured phases"
SETUP = "generated files"


@contextmanager
def spent(kind: str):
    """Add the block's wall time to ``kind`` (unless an enclosing block already counts it)."""
    depth = getattr(_depth, "n", 0)
    _depth.n = depth + 1
    t0 = time.monotonic()
    try:
        yield
    finally:
        _depth.n = depth
        if depth == 0:
            with _lock:
                _spent[kind] += time.monotonic() - t0


def reset() -> None:
    with _lock:
        _spent.clear()


def account(total_s: float) -> dict:
    """The kinds spent since ``reset()`` and the rest of ``total_s``, in seconds (1 decimal)."""
    with _lock:
        kinds = {k: round(v, 1) for k, v in sorted(_spent.items(), key=lambda kv: -kv[1])}
    kinds["other"] = round(max(0.0, total_s - sum(kinds.values())), 1)
    return {"total_s": round(total_s, 1), "kinds": kinds}
