"""Admission of connections still sending their request head (camservice/connlimits.py), with a settable clock."""

from __future__ import annotations

from camservice.connlimits import GRACE, PendingLimiter
from tests.harness import Clock


def limiter(total=4, per_address=2):
    clock = Clock()
    dropped: list[str] = []
    pending = PendingLimiter(total, per_address, clock)

    def admit(address: str, name: str):
        return pending.admit(address, lambda: dropped.append(name))

    return pending, clock, dropped, admit


def test_a_burst_from_one_address_is_admitted_but_slow_ones_are_capped():
    pending, clock, _, admit = limiter(total=100, per_address=2)
    burst = [admit("10.0.0.1", f"b{n}") for n in range(5)]
    assert all(burst)  # young connections: a browser or a NAT opening several at once
    clock.now += GRACE + 0.1  # now they are slow (still no complete head)
    assert admit("10.0.0.1", "late") is None and pending.refused == 1
    assert admit("10.0.0.2", "other") is not None  # other addresses are not affected
    for ticket in burst[:4]:
        ticket.done()  # heads complete
    assert admit("10.0.0.1", "again") is not None


def test_at_the_total_the_oldest_pending_connection_makes_room():
    pending, clock, dropped, admit = limiter(total=3, per_address=10)
    tickets = [admit(f"10.0.1.{n}", f"slow{n}") for n in range(3)]
    clock.now += 0.5
    newcomer = admit("10.0.2.1", "new")
    assert newcomer is not None and dropped == ["slow0"] and pending.evicted == 1 and len(pending) == 3
    tickets[0].done()  # the evicted connection's own end later: no double count
    assert len(pending) == 3
    newcomer.done()
    assert len(pending) == 2
