"""Token buckets for request rate limits and authentication-failure throttling.

The gateway calls these for every request, so they are plain arithmetic on
a timestamp the caller passes in (``time.monotonic()``): no clock reads, no
locks (each gateway process is one asyncio thread), no allocation on the
hot path. Passing time in also makes them testable without sleeping.

A rejected request consumes nothing, so a client that waits the returned
``retry_after`` is admitted.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; a request takes ``cost``.

    Starts full. Time running backwards (a caller mixing clocks) refills
    nothing rather than minting or destroying tokens.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float | None = None):
        if not rate > 0 or not burst >= 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        # -inf: the first take() refills to a full bucket whatever its clock's origin.
        self.stamp = -math.inf if now is None else now

    def take(self, now: float, cost: float = 1) -> float:
        """0.0 if ``cost`` tokens were taken, else the seconds until they will be there."""
        elapsed = now - self.stamp
        if elapsed > 0:
            tokens = self.tokens + elapsed * self.rate
            self.tokens = tokens if tokens < self.burst else self.burst
            self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        if cost > self.burst:
            raise ValueError(f"cost {cost} can never be met by a bucket of {self.burst}")
        return (cost - self.tokens) / self.rate

    def wait(self, now: float, cost: float = 1) -> float:
        """Like :meth:`take` but takes nothing: the seconds until ``cost`` tokens are there."""
        if cost > self.burst:
            raise ValueError(f"cost {cost} can never be met by a bucket of {self.burst}")
        elapsed = now - self.stamp
        tokens = self.tokens + elapsed * self.rate if elapsed > 0 else self.tokens
        return 0.0 if tokens >= cost else (cost - tokens) / self.rate


class RateLimiter:
    """One :class:`TokenBucket` per key (a connection, an identity...), in bounded memory.

    Buckets are kept in least-recently-used order. A bucket unused for
    ``burst / rate`` seconds is full again, the same as a fresh one, so
    dropping it loses nothing; each :meth:`take` drops such buckets from the
    old end, so the work is amortised O(1). ``max_keys`` is the hard bound
    for a flood of distinct keys: beyond it the least recently used bucket
    is dropped even if not yet full (that key then gets a fresh burst).
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000):
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        TokenBucket(rate, burst)  # validates rate and burst
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self.idle_after = self.burst / self.rate
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._buckets

    def take(self, key: Hashable, now: float, cost: float = 1) -> float:
        """0.0 if allowed, else seconds to wait; see :meth:`TokenBucket.take`."""
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            self._evict(now)
            bucket = buckets[key] = TokenBucket(self.rate, self.burst)
        else:
            buckets.move_to_end(key)
        return bucket.take(now, cost)

    def wait(self, key: Hashable, now: float, cost: float = 1) -> float:
        """Seconds until ``key`` could take ``cost``; creates no bucket."""
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.wait(now, cost)

    def forget(self, key: Hashable) -> None:
        """Drop ``key``'s bucket (its connection closed)."""
        self._buckets.pop(key, None)

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        # Least recently used first, so the first bucket that is not idle long
        # enough ends the sweep: every later one was used more recently.
        while buckets:
            oldest = next(iter(buckets.values()))
            if now - oldest.stamp < self.idle_after:
                break
            buckets.popitem(last=False)
        while len(buckets) >= self.max_keys:
            buckets.popitem(last=False)


class AuthFailureThrottle:
    """Slows down credential guessing from one address.

    Each address may fail ``per_minute`` times in a burst, then one more time
    every ``60 / per_minute`` seconds (a token bucket of failures). The
    gateway asks :meth:`blocked` before trying a credential and answers
    -32001 (or HTTP 429) without checking it while blocked, so a blocked
    address costs no HMAC or hashing.

    A success clears the address's record: a client that mistyped a key
    should not stay penalised, and clearing cannot help a guesser, since it
    takes a valid credential (and a guesser cannot succeed while blocked).
    """

    def __init__(self, per_minute: int, max_addresses: int = 100_000):
        if per_minute < 1:
            raise ValueError("per_minute must be >= 1")
        self._limiter = RateLimiter(per_minute / 60.0, per_minute, max_keys=max_addresses)

    def __len__(self) -> int:
        return len(self._limiter)

    def blocked(self, address: str, now: float) -> float:
        """Seconds ``address`` must wait before its next attempt; 0.0 when it may try."""
        return self._limiter.wait(address, now)

    def record_failure(self, address: str, now: float) -> None:
        self._limiter.take(address, now)

    def record_success(self, address: str) -> None:
        self._limiter.forget(address)
