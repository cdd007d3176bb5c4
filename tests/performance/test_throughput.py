"""REQ-PERF-005: throughput of at least 50-500 req/s."""

import pytest

pytestmark = pytest.mark.performance


def test_fifty_clients_get_500_requests_per_second(load_result):
    capacity = load_result["capacity"]
    assert capacity["errors"] == 0
    assert capacity["rps"] >= 500


def test_the_paced_mix_gets_what_it_offers(load_result):
    steady = load_result["steady"]
    assert steady["shed"] == 0
    assert steady["rps"] >= 0.5 * load_result["offered_rps"]
