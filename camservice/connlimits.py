"""Admission of connections that have not sent a whole request head yet (slowloris defence).

A slowloris client opens connections and sends its request head a byte at
a time, so that each holds a slot for as long as the server waits. Every
server that reads HTTP heads (the gateway's API port, the file workers'
download port) applies three bounds:

* a short deadline for the whole head (the server's ``header_timeout``,
  not per byte: trickling does not extend it);
* at most ``per_address`` *slow* connections from one address: a
  connection counts as slow once it has been sending its head for
  :data:`GRACE` seconds (a real client sends its head in one packet, so a
  burst of new connections from one host, a browser or a NAT, is never
  refused); past the cap, the next connection from that address is
  answered 503 with ``Retry-After`` at once;
* at most ``total`` connections in that phase overall: a new connection
  then pushes out the oldest one still sending its head. A real client's
  head completes within a round trip, so the oldest are the trickling
  ones, and new clients are never starved by them.

Connections past their head (an open WebSocket, a download in progress)
do not count here: they have their own limits. Pure bookkeeping: the
caller supplies the clock and how to drop a connection.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

#: Seconds after which a connection still sending its head counts as slow.
GRACE = 1.0


class Pending:
    """One connection still sending its head; :meth:`done` once the head is complete or the connection ends."""

    __slots__ = ("_limiter", "address", "drop", "since")

    def __init__(self, limiter: PendingLimiter, address: str, drop: Callable[[], None], since: float):
        self._limiter = limiter
        self.address = address
        self.drop = drop
        self.since = since

    def done(self) -> None:
        self._limiter._release(self)


class PendingLimiter:
    def __init__(self, total: int, per_address: int, clock: Callable[[], float] = time.monotonic):
        self.total = total
        self.per_address = per_address
        self.clock = clock
        self._pending: OrderedDict[Pending, None] = OrderedDict()  # oldest first
        self._by_address: dict[str, OrderedDict[Pending, None]] = {}
        self.refused = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._pending)

    def admit(self, address: str, drop: Callable[[], None]) -> Pending | None:
        """A ticket for a new connection from ``address``, or None: answer it 503 and close it."""
        now = self.clock()
        slow_before = now - GRACE
        mine = self._by_address.get(address)
        if mine is not None and len(mine) >= self.per_address:
            slow = 0
            for ticket in mine:  # oldest first: stop at the first young one
                if ticket.since > slow_before:
                    break
                slow += 1
                if slow >= self.per_address:
                    self.refused += 1
                    return None
        while len(self._pending) >= self.total:
            oldest = next(iter(self._pending))
            oldest.done()
            self.evicted += 1
            oldest.drop()
        ticket = Pending(self, address, drop, now)
        self._pending[ticket] = None
        self._by_address.setdefault(address, OrderedDict())[ticket] = None
        return ticket

    def _release(self, ticket: Pending) -> None:
        if ticket not in self._pending:
            return
        del self._pending[ticket]
        mine = self._by_address[ticket.address]
        del mine[ticket]
        if not mine:
            del self._by_address[ticket.address]
