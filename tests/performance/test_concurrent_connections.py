"""REQ-PERF-003: 20-50 WebSocket clients, 5-15 camera and 3-8 file operations at once."""

import pytest

pytestmark = pytest.mark.performance


def test_fifty_clients_served(load_result):
    steady = load_result["steady"]
    assert load_result["clients"] == 50
    assert steady["n"] > 0 and steady["error_rate"] < 0.01
    assert steady["p95_ms"] < 200


def test_camera_and_file_operations_at_once(load_result):
    burst = load_result["burst"]
    assert burst["camera_ops_at_once"] >= 5 and burst["file_ops_at_once"] >= 3
    assert burst["errors"] == 0
    assert burst["take_snapshot"]["n"] == burst["camera_ops_at_once"] * burst["rounds"]
    assert burst["file_op"]["n"] == burst["file_ops_at_once"] * burst["rounds"]
