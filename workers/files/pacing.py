"""Download pacing: bytes per second for one download, or shared by all of them.

A :class:`Pacer` is a virtual clock (the generic cell rate algorithm, with
bytes for cells): it remembers when the bytes charged so far would have gone
at ``rate``, and :meth:`Pacer.charge` answers how long the sender must wait
before sending more. One pacer per download caps each download
(``files.download_rate_limit``); one pacer shared by every download of a
file worker caps their total (``files.download_budget``): senders that
charge it in turn are served in turn, so four downloads under a 300 MB/s
budget get about 75 MB/s each, and one alone gets all 300.

Pure arithmetic on a time the caller passes in (``time.monotonic()``), so
the pacing is tested without sleeping; :class:`SharedPacer` adds the lock
for senders on several threads.
"""

from __future__ import annotations

import math
import threading


class Pacer:
    """``rate`` bytes per second; a sender may run ``slack`` seconds ahead of it."""

    __slots__ = ("rate", "slack", "due")

    def __init__(self, rate: float, slack: float = 0.0):
        if not rate > 0 or slack < 0:
            raise ValueError("rate must be > 0 and slack >= 0")
        self.rate = float(rate)
        self.slack = float(slack)
        #: When the bytes charged so far will all have gone at ``rate``.
        self.due = -math.inf

    def charge(self, now: float, sent: int) -> float:
        """Charge ``sent`` bytes just sent; the seconds to wait before sending again (0.0: none).

        Idle time is not saved up beyond ``slack``: a download that paused (a
        slow client) does not earn a burst at memory speed afterwards.
        """
        start = self.due if self.due > now - self.slack else now - self.slack
        self.due = start + sent / self.rate
        wait = self.due - self.slack - now
        return wait if wait > 0 else 0.0


class SharedPacer(Pacer):
    """A :class:`Pacer` charged from several threads (the downloads of one file worker)."""

    __slots__ = ("_lock",)

    def __init__(self, rate: float, slack: float = 0.0):
        super().__init__(rate, slack)
        self._lock = threading.Lock()

    def charge(self, now: float, sent: int) -> float:
        with self._lock:
            return super().charge(now, sent)


def wait_for(pacers: tuple[Pacer, ...], now: float, sent: int) -> float:
    """Charge every pacer (each download's own and the shared budget); the longest wait."""
    wait = 0.0
    for pacer in pacers:
        wait = max(wait, pacer.charge(now, sent))
    return wait
