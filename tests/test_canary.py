"""The canary's pure parts: RSS compared like for like, and the judge's criteria."""

from __future__ import annotations

from camservice import config as config_module
from camservice.supervisor import canary

MIB = 1024 * 1024


def limits(**overrides) -> canary.Tolerances:
    flat = {f"upgrade.{key}": value for key, value in overrides.items()}
    return canary.Tolerances.from_config(config_module.load(overrides=flat, environ={}).upgrade)


def figures(status_p95=0.002, calls=100, error_rate=0.0) -> dict:
    return {
        "status_p95": status_p95,
        "worker_p95": None,
        "status_calls": calls,
        "worker_calls": 0,
        "error_rate": error_rate,
        "requests": calls,
    }


def test_a_reload_right_after_start_compares_rss_at_the_same_ages():
    history = canary.RssHistory()
    # The old generation was reloaded 3 s after its start: imports still settling.
    for age, rss in ((1.0, 20 * MIB), (3.0, 34 * MIB), (5.0, 60 * MIB)):
        history.add(0, age, rss)
    # The new one, warm, is judged on the ages the old one reached (≤ 5 s), not on its later figures.
    for age, rss in ((1.0, 22 * MIB), (3.0, 35 * MIB), (5.0, 62 * MIB), (7.0, 80 * MIB), (9.0, 81 * MIB)):
        history.add(1, age, rss)
    old, new = history.compare(0, 1)
    assert (old, new) == (60 * MIB, 62 * MIB)
    assert canary.judge(figures(), figures(), 0, old, new, limits()) is None


def test_a_warm_old_generation_is_judged_by_its_peak_and_a_doubled_rss_rolls_back():
    history = canary.RssHistory()
    for age in range(0, 600, 2):
        history.add(0, float(age), (80 if age != 300 else 90) * MIB)
    for age, rss in ((1.0, 40 * MIB), (3.0, 190 * MIB)):
        history.add(1, age, rss)
    old, new = history.compare(0, 1)
    assert (old, new) == (90 * MIB, 190 * MIB)
    reason = canary.judge(figures(), figures(), 0, old, new, limits())
    assert reason is not None and reason.startswith("RSS 190 MiB against 90 MiB")


def test_no_rss_verdict_without_samples_of_both_generations():
    history = canary.RssHistory()
    history.add(1, 1.0, 500 * MIB)
    assert history.compare(0, 1) is None
    history.add(0, 1.0, 10 * MIB)
    history.add(2, 3.0, 500 * MIB)  # only older than anything the old one reached
    assert history.compare(0, 2) is None


def test_old_generations_are_forgotten():
    history = canary.RssHistory()
    for generation in range(4):
        history.add(generation, 1.0, MIB)
    history.forget_before(2)
    assert history.compare(0, 3) is None and history.compare(2, 3) == (MIB, MIB)


def test_the_judge_names_the_first_criterion_crossed():
    ok = limits()
    assert canary.judge(figures(), figures(status_p95=0.005), 0, 0, 0, ok) is None  # 3x but under the floor
    slow = canary.judge(figures(), figures(status_p95=0.5), 0, 0, 0, ok)
    assert slow is not None and slow.startswith("status-call P95 500 ms against 2 ms")
    assert canary.judge(figures(), figures(status_p95=0.5, calls=5), 0, 0, 0, ok) is None  # too few calls
    errors = canary.judge(figures(), figures(error_rate=0.5), 0, 0, 0, ok)
    assert errors is not None and errors.startswith("error rate")
    restarts = canary.judge(figures(), figures(), 1, 0, 0, ok)
    assert restarts == "1 process restarts in the new generation"
