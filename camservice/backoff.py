"""Exponential backoff with jitter, free of clocks and I/O.

One object per thing that retries (a process restart, a reconnect)::

    backoff = Backoff(initial=0.25, maximum=30.0, factor=2.0, jitter=0.5)
    delay = backoff.next_delay()   # 0.125..0.25, then 0.25..0.5, ... up to 15..30
    backoff.reset()                # after a success (a stable run)

The caller owns time: it sleeps or schedules the delay itself, so tests drive
a backoff without waiting. ``jitter`` is the fraction of each delay that is
random (0: exact, 0.5: between half and all of it), so that things that failed
together do not retry in lockstep.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(
        self,
        initial: float = 0.25,
        maximum: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ):
        if initial <= 0 or maximum < initial or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("Backoff needs 0 < initial <= maximum, factor >= 1 and 0 <= jitter <= 1")
        self.initial, self.maximum, self.factor, self.jitter = initial, maximum, factor, jitter
        self._rng = rng or random.Random()
        #: Delays handed out since the last reset.
        self.attempts = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; grows by ``factor`` up to ``maximum``."""
        base = min(self.maximum, self.initial * self.factor**self.attempts)
        self.attempts += 1
        return base * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        self.attempts = 0
