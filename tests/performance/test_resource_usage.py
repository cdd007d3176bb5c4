"""REQ-PERF-004: resources under normal load: CPU < 70%, memory < 80%, network < 100 Mbit/s, disk < 50 MB/s."""

import pytest

pytestmark = pytest.mark.performance


def test_resources_under_normal_load(load_result):
    res = load_result["steady"]["resources"]
    assert {"gateway-0", "files-0", "recording-0", "discovery-0"} <= set(res["processes"])
    assert res["service_cpu_percent_of_host"] < 70
    assert res["service_rss_percent"] < 80
    assert res["service_disk_write_mb_s"] < 50
    assert all(p["rss_mb"] > 0 and p["fds"] > 0 for p in res["processes"].values())
