"""One restart policy for everything that retries after a failure.

A :class:`Backoff` counts failures in a row and answers how long to wait
before the next attempt, or that it is time to give up:

* the first ``immediate`` failures are retried at once (a process that ran
  fine and crashed once is back without delay);
* every further failure multiplies the delay by ``factor``, from ``initial``
  up to ``ceiling`` seconds;
* ``jitter`` (0-1) takes up to that fraction off each delay at random, so
  things that failed together do not retry in lockstep;
* an attempt that ran ``stable_after`` seconds before failing starts the
  count afresh: a crash an hour after the last one is not a crash loop;
* after ``limit`` failures in a row :meth:`failed` answers ``None``: give up.

Users: the process supervisor (a crashed child) and the recording sessions
(a stalled or killed capture). No I/O and no sleeping here: the caller waits
the answer on its own loop, so the policy is testable with a fake clock.

    backoff = Backoff(initial=0.5, ceiling=30, limit=5, stable_after=60)
    backoff.started()              # an attempt begins
    delay = backoff.failed()       # it failed: wait ``delay``, or give up on None
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


class Backoff:
    """Exponential, capped, optionally jittered delays between attempts; see the module docstring."""

    def __init__(
        self,
        *,
        initial: float = 0.5,
        factor: float = 2.0,
        ceiling: float = 30.0,
        immediate: int = 0,
        limit: int | None = None,
        stable_after: float | None = None,
        jitter: float = 0.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if initial < 0 or ceiling < 0 or factor < 1:
            raise ValueError("initial and ceiling must be >= 0, factor >= 1")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError("jitter must be within [0, 1]")
        if immediate < 0 or (limit is not None and limit < 0):
            raise ValueError("immediate and limit must be >= 0")
        self.initial, self.factor, self.ceiling = initial, factor, ceiling
        self.immediate, self.limit, self.stable_after, self.jitter = immediate, limit, stable_after, jitter
        self._rng = rng or random.Random()
        self._clock = clock
        self._failures = 0
        self._started_at: float | None = None

    @property
    def failures(self) -> int:
        """Failures in a row so far (0 after :meth:`reset` or a stable run)."""
        return self._failures

    def started(self) -> None:
        """An attempt begins now: the clock for ``stable_after`` starts."""
        self._started_at = self._clock()

    def reset(self) -> None:
        """Forget past failures (the thing is known to be healthy again)."""
        self._failures = 0

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row, without jitter."""
        if failures <= self.immediate:
            return 0.0
        return min(self.ceiling, self.initial * self.factor ** (failures - self.immediate - 1))

    def failed(self) -> float | None:
        """Count a failure; the seconds to wait before the next attempt, or None to give up."""
        if (
            self.stable_after is not None
            and self._started_at is not None
            and self._clock() - self._started_at >= self.stable_after
        ):
            self._failures = 0
        self._started_at = None
        self._failures += 1
        if self.limit is not None and self._failures > self.limit:
            return None
        delay = self.delay(self._failures)
        if self.jitter and delay:
            delay *= 1.0 - self.jitter * self._rng.random()
        return delay
