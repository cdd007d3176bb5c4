"""A circuit breaker: stop calling a dependency that is down, notice when it is back.

Used by :class:`camservice.mediamtx.MediaMTXClient`; nothing in it knows
MediaMTX or HTTP, so any client of a flaky dependency can use it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("breaker")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitBreaker:
    """Stops calling a dependency that is down, and notices when it is back.

    * closed: calls go out; ``failure_threshold`` connection failures in a
      row open the breaker.
    * open: calls fail at once for ``reset_timeout`` seconds, then the next
      call goes out as the probe (half-open).
    * half-open: only the probe goes out, other calls fail at once; the
      probe's success closes the breaker, its failure opens it again.

    Only connection failures and timeouts count: an HTTP error answer shows
    the dependency is up. Any success closes the breaker, even one that was in
    flight when it opened. Thread-safe, since calls run in worker threads;
    listeners get ``(old_state, new_state)`` in the thread that caused it.
    """

    def __init__(
        self, failure_threshold: int = 3, reset_timeout: float = 5.0, clock: Callable[[], float] = time.monotonic
    ):
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._listeners: list[Callable[[str, str], None]] = []

    @property
    def state(self) -> str:
        return self._state

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        if self._state != OPEN:
            return 0.0
        return max(0.0, self.reset_timeout - (self._clock() - self._opened_at))

    def add_listener(self, callback: Callable[[str, str], None]) -> None:
        self._listeners.append(callback)

    def acquire(self) -> bool:
        """May a call go out now? In half-open state, a True makes the caller the probe."""
        change = None
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.reset_timeout:
                change = self._move(HALF_OPEN)
            if self._state == CLOSED:
                allowed = True
            elif self._state == HALF_OPEN and not self._probing:
                self._probing = allowed = True
            else:
                allowed = False
        self._notify(change)
        return allowed

    def success(self) -> None:
        with self._lock:
            self._failures, self._probing = 0, False
            change = self._move(CLOSED) if self._state != CLOSED else None
        self._notify(change)

    def failure(self) -> None:
        change = None
        with self._lock:
            self._failures += 1
            self._probing = False
            if self._state == HALF_OPEN or (self._state == CLOSED and self._failures >= self.failure_threshold):
                self._opened_at = self._clock()
                change = self._move(OPEN)
            # Already open: a late failure of a call sent before it opened; the cool-down stands.
        self._notify(change)

    def _move(self, state: str) -> tuple[str, str]:
        old, self._state = self._state, state
        return old, state

    def _notify(self, change: tuple[str, str] | None) -> None:
        if change is None:
            return
        for callback in list(self._listeners):
            try:
                callback(*change)
            except Exception:  # a listener's bug must not break the call that noticed
                log.exception("breaker_listener_failed")
