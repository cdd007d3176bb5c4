"""REQ-PERF-002: camera discovery under 15 s; hot-plug noticed and announced."""

import pytest

from bench import baseline

pytestmark = pytest.mark.performance


def test_every_camera_listed_within_15_s_of_start():
    found = baseline.discovery(cameras=4, repeat=1)
    assert found["starts"] == 1
    assert found["start_to_list_s"], "the cameras were never all listed"
    assert found["start_to_list_s_max"] < 15


def test_hot_plugged_camera_announced_within_15_s(perf_target):
    plug = baseline.hotplug_latency(perf_target, cycles=2)
    assert plug["missed"] == 0
    assert plug["n"] == 4 and plug["max_ms"] < 15000
