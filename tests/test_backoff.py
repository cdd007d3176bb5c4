"""The shared restart policy (camservice.backoff), on a hand-moved clock."""

from __future__ import annotations

import random

import pytest

from camservice.backoff import Backoff

from .harness import Clock


def test_delays_double_from_initial_up_to_the_ceiling():
    backoff = Backoff(initial=0.5, factor=2.0, ceiling=3.0)
    assert [backoff.failed() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.failures == 5


def test_immediate_failures_are_retried_at_once():
    backoff = Backoff(initial=0.25, immediate=1, ceiling=30.0)
    assert [backoff.failed() for _ in range(4)] == [0.0, 0.25, 0.5, 1.0]


def test_gives_up_after_the_limit_and_reset_starts_again():
    backoff = Backoff(initial=1.0, limit=2)
    assert backoff.failed() == 1.0
    assert backoff.failed() == 2.0
    assert backoff.failed() is None
    backoff.reset()
    assert backoff.failures == 0 and backoff.failed() == 1.0


def test_a_stable_run_forgets_earlier_failures():
    clock = Clock()
    backoff = Backoff(initial=1.0, limit=2, stable_after=60.0, clock=clock)
    backoff.started()
    assert backoff.failed() == 1.0
    backoff.started()
    clock.now += 59.0
    assert backoff.failed() == 2.0  # 59 s is not stable: the count goes on
    backoff.started()
    clock.now += 60.0
    assert backoff.failed() == 1.0  # ran 60 s: a fresh first failure
    assert backoff.failures == 1


def test_a_failure_without_started_never_counts_as_stable():
    clock = Clock()
    backoff = Backoff(initial=1.0, stable_after=1.0, clock=clock)
    backoff.started()
    assert backoff.failed() == 1.0
    clock.now += 100.0
    assert backoff.failed() == 2.0  # no attempt was started since the last failure


def test_jitter_takes_at_most_its_fraction_off():
    backoff = Backoff(initial=8.0, ceiling=8.0, jitter=0.5, rng=random.Random(7))
    delays = [backoff.failed() for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert len(set(delays)) > 100  # really spread, not a constant


@pytest.mark.parametrize(
    "options", [{"initial": -1}, {"factor": 0.5}, {"jitter": 1.5}, {"limit": -1}, {"immediate": -1}]
)
def test_bad_settings_are_refused(options):
    with pytest.raises(ValueError):
        Backoff(**options)
