"""camservice.ratelimit: token-bucket math, bounded per-key state, auth-failure throttling."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from camservice.ratelimit import AuthFailureThrottle, RateLimiter, TokenBucket

# --- TokenBucket -----------------------------------------------------------------------


def test_full_burst_then_refusal():
    bucket = TokenBucket(rate=10, burst=5)
    assert [bucket.take(100.0) for _ in range(5)] == [0.0] * 5
    assert bucket.take(100.0) == pytest.approx(0.1)  # one token at 10/s


def test_refill_at_rate():
    bucket = TokenBucket(rate=10, burst=5)
    for _ in range(5):
        bucket.take(0.0)
    assert bucket.take(0.05) == pytest.approx(0.05)  # half a token there, half missing
    assert bucket.take(0.1) == 0.0  # one full token after 0.1 s
    assert bucket.take(0.1) > 0


def test_refill_caps_at_burst():
    bucket = TokenBucket(rate=100, burst=3)
    bucket.take(0.0)
    allowed = sum(bucket.take(1000.0) == 0.0 for _ in range(10))
    assert allowed == 3


def test_retry_after_is_exactly_enough():
    bucket = TokenBucket(rate=4, burst=2)
    bucket.take(0.0), bucket.take(0.0)
    wait = bucket.take(0.0)
    assert wait == pytest.approx(0.25)
    assert bucket.take(wait * 0.999) > 0  # a little early: still refused
    assert bucket.take(wait) == 0.0  # waiting what we were told is enough


def test_refusal_consumes_nothing():
    bucket = TokenBucket(rate=1, burst=1)
    bucket.take(0.0)
    for _ in range(100):
        bucket.take(0.5)
    assert bucket.take(1.0) == 0.0


def test_cost():
    bucket = TokenBucket(rate=10, burst=10)
    assert bucket.take(0.0, cost=7) == 0.0
    assert bucket.take(0.0, cost=4) == pytest.approx(0.1)
    assert bucket.take(0.0, cost=3) == 0.0


def test_cost_above_burst_is_an_error():
    bucket = TokenBucket(rate=10, burst=10)
    with pytest.raises(ValueError):
        bucket.take(0.0, cost=11)
    with pytest.raises(ValueError):
        bucket.wait(0.0, cost=11)


def test_clock_going_backwards_mints_nothing():
    bucket = TokenBucket(rate=1, burst=2)
    bucket.take(10.0), bucket.take(10.0)
    assert bucket.take(5.0) > 0
    assert bucket.take(10.5) > 0  # only 0.5 s elapsed since 10.0, not 5.5
    assert bucket.take(11.0) == 0.0


def test_backwards_step_destroys_nothing_either():
    bucket = TokenBucket(rate=1, burst=2)
    bucket.take(10.0)
    assert bucket.take(0.0) == 0.0  # the one token left is still there


@pytest.mark.parametrize("origin", [0.0, -1e6, 1e9])
def test_starts_full_at_any_clock_origin(origin):
    bucket = TokenBucket(rate=1, burst=3)
    assert [bucket.take(origin) for _ in range(4)] == [0.0, 0.0, 0.0, 1.0]
    assert bucket.take(origin + 1) == 0.0  # and refills from there


def test_start_time_given():
    bucket = TokenBucket(rate=1, burst=2, now=50.0)
    assert bucket.take(50.0) == 0.0 and bucket.take(50.0) == 0.0 and bucket.take(50.0) == 1.0


def test_wait_takes_nothing():
    bucket = TokenBucket(rate=2, burst=1)
    assert bucket.wait(0.0) == 0.0
    assert bucket.wait(0.0) == 0.0
    bucket.take(0.0)
    assert bucket.wait(0.0) == pytest.approx(0.5)
    assert bucket.wait(0.25) == pytest.approx(0.25)


@pytest.mark.parametrize("rate, burst", [(0, 1), (-1, 1), (1, 0), (1, 0.5)])
def test_bad_parameters(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_contract_defaults_allow_a_burst_of_200():
    bucket = TokenBucket(rate=500, burst=1000)  # security.rate_limit / rate_burst defaults
    assert all(bucket.take(0.0) == 0.0 for _ in range(200))


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.1, 1000),
    burst=st.integers(1, 500),
    steps=st.lists(st.tuples(st.floats(0, 5), st.integers(1, 3)), max_size=60),
)
def test_never_more_than_burst_plus_refill(rate, burst, steps):
    """Over any run, admitted cost <= burst + rate * elapsed, and every answer is sane."""
    bucket = TokenBucket(rate, burst)
    now, admitted = 0.0, 0
    for dt, cost in steps:
        now += dt
        if cost > burst:
            continue
        wait = bucket.take(now, cost)
        assert wait >= 0.0
        if wait == 0.0:
            admitted += cost
        else:
            assert wait <= cost / rate + 1e-9
    assert admitted <= burst + rate * now + 1e-6


# --- RateLimiter ------------------------------------------------------------------------


def test_keys_are_independent():
    limiter = RateLimiter(rate=1, burst=2)
    assert limiter.take("a", 0.0) == limiter.take("a", 0.0) == 0.0
    assert limiter.take("a", 0.0) > 0
    assert limiter.take("b", 0.0) == 0.0


def test_idle_buckets_are_evicted_when_full_again():
    limiter = RateLimiter(rate=10, burst=5)  # full again after 0.5 s
    limiter.take("old", 0.0)
    limiter.take("new", 0.4)
    limiter.take("x", 0.5)
    assert "old" not in limiter and "new" in limiter and len(limiter) == 2


def test_eviction_never_forgives_a_non_full_bucket():
    limiter = RateLimiter(rate=10, burst=5)
    for _ in range(5):
        limiter.take("busy", 0.0)
    for i in range(1000):
        limiter.take(f"other{i}", 0.3)
    # Still remembered: 0.3 s refilled 3 tokens, not a fresh bucket of 5.
    assert [limiter.take("busy", 0.3) for _ in range(3)] == [0.0] * 3
    assert limiter.take("busy", 0.3) > 0


def test_recently_used_bucket_is_kept():
    limiter = RateLimiter(rate=10, burst=5)
    limiter.take("a", 0.0)
    limiter.take("b", 0.1)
    limiter.take("a", 0.45)  # a is now the most recently used
    limiter.take("c", 0.65)  # b idle 0.55 s: evicted; a idle 0.2 s: kept
    assert "a" in limiter and "b" not in limiter


def test_memory_is_bounded():
    limiter = RateLimiter(rate=1, burst=100, max_keys=50)
    for i in range(10_000):
        limiter.take(i, 0.0)
    assert len(limiter) <= 50
    assert 9999 in limiter and 0 not in limiter  # least recently used went first


def test_forget_and_wait():
    limiter = RateLimiter(rate=1, burst=1)
    assert limiter.wait("a", 0.0) == 0.0 and "a" not in limiter  # wait creates nothing
    limiter.take("a", 0.0)
    assert limiter.wait("a", 0.0) == pytest.approx(1.0)
    limiter.forget("a")
    limiter.forget("never-seen")
    assert limiter.take("a", 0.0) == 0.0


# --- AuthFailureThrottle ----------------------------------------------------------------


def test_throttle_after_per_minute_failures():
    throttle = AuthFailureThrottle(per_minute=3)
    for _ in range(3):
        assert throttle.blocked("10.0.0.1", 0.0) == 0.0
        throttle.record_failure("10.0.0.1", 0.0)
    assert throttle.blocked("10.0.0.1", 0.0) == pytest.approx(20.0)  # one attempt per 60/3 s
    assert throttle.blocked("10.0.0.2", 0.0) == 0.0  # others unaffected
    assert throttle.blocked("10.0.0.1", 20.0) == 0.0
    throttle.record_failure("10.0.0.1", 20.0)
    assert throttle.blocked("10.0.0.1", 20.0) == pytest.approx(20.0)


def test_throttle_forgets_after_a_quiet_minute():
    throttle = AuthFailureThrottle(per_minute=2)
    throttle.record_failure("a", 0.0), throttle.record_failure("a", 0.0)
    assert throttle.blocked("a", 59.0) == 0.0
    throttle.record_failure("a", 60.0)
    assert throttle.blocked("a", 60.0) == 0.0  # a full burst of 2 again after 60 s
    throttle.record_failure("a", 60.0)
    assert throttle.blocked("a", 60.0) > 0


def test_success_clears_the_record():
    throttle = AuthFailureThrottle(per_minute=2)
    throttle.record_failure("a", 0.0)
    throttle.record_success("a")
    throttle.record_failure("a", 0.0)
    assert throttle.blocked("a", 0.0) == 0.0
    throttle.record_failure("a", 0.0)
    assert throttle.blocked("a", 0.0) > 0


def test_throttle_memory_is_bounded():
    throttle = AuthFailureThrottle(per_minute=5, max_addresses=100)
    for i in range(5000):
        throttle.record_failure(f"10.{i >> 8}.{i & 255}.1", 0.0)
    assert len(throttle) <= 100


def test_throttle_success_for_unknown_address_is_harmless():
    throttle = AuthFailureThrottle(per_minute=1)
    throttle.record_success("nobody")
    assert len(throttle) == 0


# --- hot-path cost (pytest --benchmark-enable) ------------------------------------------


def test_bench_token_bucket_take(benchmark):
    bucket = TokenBucket(rate=1e9, burst=1e9)
    clock = iter(range(10**9)).__next__
    assert benchmark(lambda: bucket.take(clock())) == 0.0


def test_bench_rate_limiter_take(benchmark):
    limiter = RateLimiter(rate=1e9, burst=1e9)
    for i in range(10_000):
        limiter.take(i, 0.0)
    clock = iter(range(1, 10**9)).__next__
    assert benchmark(lambda: limiter.take(4242, clock())) == 0.0


def test_bench_bare_take_call(benchmark):
    """The method alone, without the lambda and counter of the test above."""
    bucket = TokenBucket(rate=1e9, burst=1e9)
    assert benchmark(bucket.take, 1.0) == 0.0
