"""Disk usage figures and the thresholds that raise ``storage_status_update``.

Pure logic: the worker supplies ``shutil.disk_usage`` results, this module
turns them into the ``get_storage_info`` numbers and decides when an event
is due.
"""

from __future__ import annotations

from dataclasses import dataclass

OK, WARNING, CRITICAL = "ok", "warning", "critical"
_RANK = {OK: 0, WARNING: 1, CRITICAL: 2}


@dataclass(frozen=True)
class Usage:
    total: int
    used: int
    free: int  # available to the service (f_bavail), what df shows as Avail

    @property
    def percent(self) -> float:
        # Like df: used over what users can have (used + available); root's
        # reserved blocks count neither as used nor as available.
        room = self.used + self.free
        return round(100.0 * self.used / room, 2) if room else 0.0


def storage_info(
    usage: Usage, recordings_size: int, snapshots_size: int, warn_percent: float, min_free_bytes: int
) -> dict:
    """The ``get_storage_info`` result."""
    return {
        "total_space": usage.total,
        "used_space": usage.used,
        "available_space": usage.free,
        "usage_percentage": usage.percent,
        "recordings_size": recordings_size,
        "snapshots_size": snapshots_size,
        "low_space_warning": usage.percent >= warn_percent or usage.free < min_free_bytes,
    }


class ThresholdMonitor:
    """Remembers the last reported level and says when a new one must be published.

    Levels: ``ok`` < ``warning`` (usage >= warn_percent, or free space under
    ``min_free_bytes``) < ``critical`` (usage >= critical_percent). Going up
    is reported at once; coming down needs the usage to fall ``hysteresis``
    percentage points below the threshold, so a disk hovering at 80.0 % does
    not send an event every check.
    """

    def __init__(self, warn_percent: float, critical_percent: float, min_free_bytes: int = 0, hysteresis: float = 1.0):
        self.warn = warn_percent
        self.critical = critical_percent
        self.min_free = min_free_bytes
        self.hysteresis = hysteresis
        self.level = OK

    def _level(self, usage: Usage, margin: float) -> str:
        if usage.percent >= self.critical - margin:
            return CRITICAL
        if usage.percent >= self.warn - margin or usage.free < self.min_free:
            return WARNING
        return OK

    def update(self, usage: Usage) -> dict | None:
        """The event data to publish, or ``None`` when the level did not change."""
        rising = self._level(usage, 0.0)
        if _RANK[rising] > _RANK[self.level]:
            new = rising
        else:
            # Falling (or steady): judge against thresholds lowered by the margin.
            held = self._level(usage, self.hysteresis)
            new = held if _RANK[held] < _RANK[self.level] else self.level
        if new == self.level:
            return None
        self.level = new
        return {"usage_percentage": usage.percent, "low_space_warning": new != OK, "level": new}
