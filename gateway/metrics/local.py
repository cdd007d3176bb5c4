"""What one gateway measures itself on the hot path, beyond ``RequestStats``."""

from __future__ import annotations

from bisect import bisect_left

from camservice.histogram import LATENCY_BUCKETS, Histogram


class LocalMetrics:
    """Latency per method, notifications per topic and delivery time of this gateway."""

    def __init__(self) -> None:
        self.latency: dict[str, Histogram] = {}
        self.notifications: dict[str, int] = {}
        self.delivery = Histogram()

    def observe_request(
        self, method: str, code: int, seconds: float, _bisect=bisect_left, _bounds=LATENCY_BUCKETS
    ) -> None:
        """``RequestStats.observer``: called once per request, so kept to the bare minimum.

        ``method`` is bounded: the gateway records unknown names as ``"unknown"``.
        """
        histogram = self.latency.get(method)
        if histogram is None:
            histogram = self.latency[method] = Histogram()
        histogram.counts[_bisect(_bounds, seconds)] += 1
        histogram.sum += seconds

    def observe_delivery(self, topic: str, recipients: int, seconds: float) -> None:
        """``EventRelay.on_delivery``: one notification sent to ``recipients`` connections."""
        self.notifications[topic] = self.notifications.get(topic, 0) + recipients
        self.delivery.observe(seconds)
