"""Is a supervised process still answering? (pure: no clock, no I/O)

A process can be alive for the kernel and dead for its callers: SIGSTOPped,
or stuck in a loop that never yields to its event loop. Every gateway and
worker publishes its figures on the event bus every two seconds
(``_gateway_stats``, ``_worker_stats``) from its event loop, so those events
double as heartbeats the supervisor hears without a new channel. A bus
process's heartbeat is the supervisor's own probe coming back through it
(``_bus_probe``); while a generation's bus is not heard, its other processes'
silence is excused (:meth:`Liveness.excuse`): their heartbeats had no way to
arrive. A process is declared hung when

* its kernel state is *stopped* (SIGSTOP, or a tracer) for longer than
  ``stopped_after`` seconds (the gateways' own view: heartbeat interval times
  liveness), or
* nothing was heard from it for ``silent_after`` seconds, counted from its
  last heartbeat, or from its start while it has not sent one yet (a start
  gets ``start_grace`` more, because imports and the first snapshot come first).

The supervisor then kills and replaces it like a crashed process.
"""

from __future__ import annotations

from dataclasses import dataclass

STOPPED = "stopped"
SILENT = "silent"


@dataclass
class _Entry:
    pid: int
    since: float  # start, or last heartbeat
    heard: bool = False
    stopped_since: float | None = None


class Liveness:
    def __init__(self, silent_after: float, stopped_after: float, start_grace: float):
        self.silent_after = silent_after
        self.stopped_after = stopped_after
        self.start_grace = start_grace
        self._entries: dict[int, _Entry] = {}

    def started(self, pid: int, now: float) -> None:
        self._entries[pid] = _Entry(pid, now)

    def forget(self, pid: int) -> None:
        self._entries.pop(pid, None)

    def beat(self, pid: int, now: float) -> None:
        entry = self._entries.get(pid)
        if entry is not None:
            entry.since, entry.heard = now, True

    def heard_within(self, pid: int, now: float, seconds: float) -> bool:
        """Whether a heartbeat of ``pid`` arrived in the last ``seconds``."""
        entry = self._entries.get(pid)
        return entry is not None and entry.heard and now - entry.since < seconds

    def excuse(self, pid: int, now: float) -> None:
        """Count ``pid``'s silence from ``now`` at the earliest: its heartbeats had no way to arrive."""
        entry = self._entries.get(pid)
        if entry is not None:
            entry.since = max(entry.since, now)

    def heard(self, pid: int) -> bool:
        """Whether a heartbeat of ``pid`` arrived since it started (or was adopted after a re-exec)."""
        entry = self._entries.get(pid)
        return entry is not None and entry.heard

    def verdict(self, pid: int, now: float, stopped: bool) -> str | None:
        """``STOPPED``, ``SILENT`` or None (fine) for ``pid`` at ``now``."""
        entry = self._entries.get(pid)
        if entry is None:
            return None
        if stopped:
            if entry.stopped_since is None:
                entry.stopped_since = now
            if now - entry.stopped_since >= self.stopped_after:
                return STOPPED
        else:
            entry.stopped_since = None
        allowed = self.silent_after + (0.0 if entry.heard else self.start_grace)
        if now - entry.since >= allowed:
            return SILENT
        return None
