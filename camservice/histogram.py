"""Fixed-bucket histograms: the hot-path counter every process uses, and its bounds.

Lives in the core because the gateway (request latency) and the workers
(snapshot and recording durations) both fill them; the gateway renders them
for Prometheus. The wire shape, sent in ``_gateway_stats`` and
``Worker.stats()``, is ``{"bounds": [b1, ..., bn], "counts": [c1, ..., cn,
c_inf], "sum": s}``: increasing upper bounds, *per-bucket* (not cumulative)
counts, the last one for values above ``bn``.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

#: Request latency bounds, seconds: fine around 1 ms (the P95 target of status
#: calls) and exact at the alert thresholds 0.2, 1 and 4 s, where
#: ``histogram_quantile`` must not interpolate across a wide bucket.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.0002,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.3,
    0.5,
    1.0,
    2.0,
    4.0,
    6.0,
    10.0,
)
#: Suggested bounds for the recording worker's ``snapshot_seconds``.
SNAPSHOT_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
#: Suggested bounds for the recording worker's ``recording_seconds``.
RECORDING_BUCKETS: tuple[float, ...] = (1, 10, 30, 60, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)


class Histogram:
    """Counts per bucket as a plain list; ``observe`` is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (Prometheus' "le").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def export(self) -> dict[str, Any]:
        """The wire shape (see the module docstring)."""
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum}
