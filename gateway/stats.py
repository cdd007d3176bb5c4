"""Request counters of one gateway process.

Kept as plain integers and floats on the hot path; ``get_metrics`` sums them
over every gateway (each publishes its own every few seconds), and the
Prometheus exporter reads them too.
"""

from __future__ import annotations

from collections import defaultdict


class RequestStats:
    def __init__(self) -> None:
        self.total = 0
        self.errors = 0
        self.latency_sum = 0.0
        #: (method, code) -> count; code 0 means success.
        self.by_method: dict[tuple[str, int], int] = defaultdict(int)
        #: Optional hook (method, code, seconds) for histograms (Prometheus).
        self.observer = None

    def record(self, method: str, code: int, seconds: float) -> None:
        self.total += 1
        self.latency_sum += seconds
        if code:
            self.errors += 1
        self.by_method[(method, code)] += 1
        if self.observer is not None:
            self.observer(method, code, seconds)
