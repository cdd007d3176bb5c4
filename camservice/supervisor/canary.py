"""Canary after a reload: is the new generation as good as the old one was? (pure: no clock, no I/O)

:class:`Windows` turns the cumulative figures every gateway publishes
(:mod:`camservice.gateway.canary`) into per-generation time series of
deltas, so that a window's figures can be summed: the old generation's over
the ``upgrade.canary_seconds`` before the reload (the baseline), the new
one's since the switch. :func:`judge` compares them with the ``upgrade.*``
tolerances and names the first figure that crossed its tolerance:

* status-call P95 and worker-call P95: regression when the new P95 exceeds
  both ``ratio`` times the old one and the old one plus ``floor`` (a P95 of
  1 ms becoming 3 ms is noise, not a regression);
* error rate (server-side errors over requests): regression when it rises by
  more than ``upgrade.error_rate_increase``;
* restarts: any process of the new generation restarting more than
  ``upgrade.max_restarts`` times;
* RSS: the new generation's total above ``upgrade.rss_ratio`` times the old one's,
  compared like for like (:class:`RssHistory`): the old generation's peak over
  its whole life against the new generation's peak *at the same ages*, from
  complete samples only (every process of the generation measured). A reload
  right after a start would otherwise compare an old generation whose
  processes were still importing (or not sampled yet: 34 MiB) with a warm new
  one (80 MiB) and roll back a healthy reload.

A latency figure needs ``MIN_CALLS`` calls on both sides to be judged.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from camservice.config import Section

#: The same bucket bounds as camservice.gateway.canary.BUCKETS.
BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, float("inf"))
MIN_CALLS = 20


@dataclass
class Sum:
    status: list[int]
    worker: list[int]
    requests: int = 0
    errors: int = 0

    @classmethod
    def empty(cls) -> Sum:
        return cls([0] * len(BUCKETS), [0] * len(BUCKETS))

    def add(self, delta: dict) -> None:
        for name in ("status", "worker"):
            mine = getattr(self, name)
            for i, count in enumerate(delta.get(name, ())[: len(mine)]):
                mine[i] += count
        self.requests += delta.get("requests", 0)
        self.errors += delta.get("errors", 0)

    def figures(self) -> dict:
        return {
            "status_p95": p95(self.status),
            "worker_p95": p95(self.worker),
            "status_calls": sum(self.status),
            "worker_calls": sum(self.worker),
            "error_rate": self.errors / self.requests if self.requests else 0.0,
            "requests": self.requests,
        }


def p95(counts: list[int]) -> float | None:
    """Upper bound of the bucket holding the 95th percentile; None without calls."""
    total = sum(counts)
    if not total:
        return None
    wanted, seen = 0.95 * total, 0
    for bound, count in zip(BUCKETS, counts):
        seen += count
        if seen >= wanted:
            return bound if bound != float("inf") else BUCKETS[-2] * 2
    return BUCKETS[-2] * 2


class Windows:
    """Per-generation deltas of every gateway's cumulative figures, with their times."""

    def __init__(self, horizon: float):
        self.horizon = horizon
        self._last: dict[int, dict] = {}  # gateway pid -> last cumulative snapshot
        self._series: dict[int, deque] = defaultdict(deque)  # generation -> (time, delta)

    def add(self, generation: int, pid: int, snapshot: dict, now: float) -> None:
        last = self._last.get(pid)
        self._last[pid] = snapshot
        if last is None:
            delta = snapshot  # counted from the gateway's start
        else:
            delta = {
                "status": [a - b for a, b in zip(snapshot["status"], last["status"])],
                "worker": [a - b for a, b in zip(snapshot["worker"], last["worker"])],
                "requests": snapshot["requests"] - last["requests"],
                "errors": snapshot["errors"] - last["errors"],
            }
        series = self._series[generation]
        series.append((now, delta))
        while series and series[0][0] < now - self.horizon:
            series.popleft()

    def total(self, generation: int, since: float, until: float = float("inf")) -> Sum:
        result = Sum.empty()
        for moment, delta in self._series.get(generation, ()):
            if since <= moment <= until:
                result.add(delta)
        return result


class RssHistory:
    """Total RSS of each generation by age (seconds since it started), from complete samples.

    A generation's reference is its peak. The new generation is judged on its
    peak over the ages the old one reached (the old one is sampled until it is
    drained, so that span covers the reload and, for any old generation older
    than the canary window, the whole window): both sides then went through
    the same start-up, imports and first calls.
    """

    #: Samples kept per generation (with a 2 s sample interval: more than an hour of ages).
    KEEP = 2048

    def __init__(self) -> None:
        self._series: dict[int, list[tuple[float, int]]] = defaultdict(list)
        self._peak: dict[int, int] = {}
        self._age: dict[int, float] = {}

    def add(self, generation: int, age: float, rss: int) -> None:
        series = self._series[generation]
        if len(series) < self.KEEP:  # the early ages are the ones compared; the peak covers the rest
            series.append((age, rss))
        self._peak[generation] = max(self._peak.get(generation, 0), rss)
        self._age[generation] = age

    def forget_before(self, generation: int) -> None:
        """Drop generations older than ``generation`` (only the last reload's two are ever compared)."""
        for table in (self._series, self._peak, self._age):
            for number in [n for n in table if n < generation]:
                del table[number]

    def compare(self, old: int, new: int) -> tuple[int, int] | None:
        """(old peak, new peak over the ages the old one reached), or None without samples of both."""
        oldest = self._age.get(old)
        if oldest is None or not self._peak.get(old):
            return None
        same_ages = [rss for age, rss in self._series.get(new, ()) if age <= oldest]
        if not same_ages:
            return None
        return self._peak[old], max(same_ages)


@dataclass(frozen=True)
class Tolerances:
    status_p95_ratio: float
    status_p95_floor: float
    worker_p95_ratio: float
    worker_p95_floor: float
    error_rate_increase: float
    max_restarts: int
    rss_ratio: float

    @classmethod
    def from_config(cls, upgrade: Section) -> Tolerances:
        return cls(
            upgrade.status_p95_ratio,
            upgrade.status_p95_floor,
            upgrade.worker_p95_ratio,
            upgrade.worker_p95_floor,
            upgrade.error_rate_increase,
            upgrade.max_restarts,
            upgrade.rss_ratio,
        )


def judge(old: dict, new: dict, restarts: int, old_rss: int, new_rss: int, limits: Tolerances) -> str | None:
    """The first regression, as a sentence naming the figure; None when the new generation is fine."""
    for name, ratio, floor in (
        ("status", limits.status_p95_ratio, limits.status_p95_floor),
        ("worker", limits.worker_p95_ratio, limits.worker_p95_floor),
    ):
        before, after = old.get(f"{name}_p95"), new.get(f"{name}_p95")
        if before is None or after is None:
            continue
        if old[f"{name}_calls"] < MIN_CALLS or new[f"{name}_calls"] < MIN_CALLS:
            continue
        if after > before * ratio and after > before + floor:
            return f"{name}-call P95 {after * 1000:.0f} ms against {before * 1000:.0f} ms before the reload"
    if new["requests"] >= MIN_CALLS and new["error_rate"] > old["error_rate"] + limits.error_rate_increase:
        return f"error rate {new['error_rate']:.3f} against {old['error_rate']:.3f} before the reload"
    if restarts > limits.max_restarts:
        return f"{restarts} process restarts in the new generation"
    if old_rss and new_rss > old_rss * limits.rss_ratio:
        return f"RSS {new_rss / 1048576:.0f} MiB against {old_rss / 1048576:.0f} MiB before the reload"
    return None
