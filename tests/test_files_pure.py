"""Pure pieces of the file worker: names, ranges, retention planning, thresholds."""

from __future__ import annotations

import os

import pytest
from camservice.workers.files import rules
from camservice.workers.files.names import Escape, admitted, parse_name, resolve_inside
from camservice.workers.files.retention import DAY, GB, Candidate, FileLock, Policy, PolicyStore, plan
from camservice.workers.files.storage import ThresholdMonitor, Usage, storage_info

from camservice.timestamps import utc_iso

NOW = 1_700_000_000.0


# --- names -----------------------------------------------------------------------------


def test_parse_default_name():
    parsed = parse_name("camera0_2024-03-05_07-08-09_AB12CD.mp4")
    assert parsed.camera_id == "camera0"
    assert utc_iso(parsed.started, "seconds") == "2024-03-05T07:08:09Z"
    assert parse_name("front_door_2024-03-05_07-08-09_AB12CD.mkv").camera_id == "front_door"
    segment = parse_name("camera2_2024-03-05_07-08-09_AB12CD_part003.mp4")
    assert segment.camera_id == "camera2" and segment.started is None


@pytest.mark.parametrize(
    "name", ["holiday.mp4", "camera0_2024-03-05_07-08-09_ab12cd.mp4", "camera0_2024-03-05_07-08-09.mp4"]
)
def test_parse_custom_names(name):
    assert parse_name(name).camera_id is None


def test_parse_impossible_date_keeps_camera():
    parsed = parse_name("camera1_2024-13-45_07-08-09_AB12CD.mp4")
    assert parsed.camera_id == "camera1" and parsed.started is None


def test_admitted_by_folder():
    assert admitted("recording", "a.mp4") and admitted("recording", "a.MKV")
    assert not admitted("recording", "a.jpg")
    assert admitted("snapshot", "a.jpeg") and admitted("snapshot", "a.png")
    assert not admitted("recording", ".a.mp4")
    assert not admitted("recording", "a b.mp4")


def test_resolve_inside(tmp_path):
    folder = tmp_path / "rec"
    folder.mkdir()
    (tmp_path / "secret.mp4").write_text("s")
    (folder / "ok.mp4").write_text("o")
    os.symlink(tmp_path / "secret.mp4", folder / "out.mp4")
    os.symlink(folder / "ok.mp4", folder / "in.mp4")
    assert resolve_inside(folder, "ok.mp4") == (folder / "ok.mp4").resolve()
    assert resolve_inside(folder, "missing.mp4").name == "missing.mp4"
    assert resolve_inside(folder, "in.mp4") == (folder / "ok.mp4").resolve()
    for bad in ["..", "../secret.mp4", "/etc/passwd", "a/b.mp4", "a\\b.mp4", "a\x00.mp4", "out.mp4", ".x.mp4", ""]:
        with pytest.raises(Escape):
            resolve_inside(folder, bad)


# --- ranges --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, expected",
    [
        (None, None),
        ("bytes=0-0", (0, 0)),
        ("bytes=0-9", (0, 9)),
        ("bytes=5-", (5, 99)),
        ("bytes=90-500", (90, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=-1000", (0, 99)),
        ("bytes=99-99", (99, 99)),
        ("BYTES = 1-2", (1, 2)),
        ("bytes=5-2", None),  # invalid: ignored, whole file
        ("bytes=0-1,5-6", None),  # several ranges: whole file
        ("items=0-1", None),
        ("bytes=abc", None),
        ("bytes=1-x", None),
        ("bytes=١-٢", None),  # Arabic-Indic digits are not HTTP digits
    ],
)
def test_parse_range(header, expected):
    assert rules.parse_range(header, 100) == expected


@pytest.mark.parametrize(
    "header, size", [("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=-0", 100), ("bytes=0-", 0), ("bytes=-5", 0)]
)
def test_parse_range_unsatisfiable(header, size):
    with pytest.raises(rules.Unsatisfiable):
        rules.parse_range(header, size)


# --- retention planning ------------------------------------------------------------------------


def recordings(*specs):
    """(name, age_days, size[, recording]) -> candidates, oldest first."""
    rows = [Candidate("recording", name, size, NOW - age * DAY, *rest) for name, age, size, *rest in specs]
    return sorted(rows, key=lambda c: c.mtime)


def names(victims):
    return [v.filename for v in victims]


def test_plan_disabled_deletes_nothing():
    rows = recordings(("a", 100, 10))
    assert plan(rows, Policy("age", False, max_age_days=1), now=NOW) == []


def test_plan_age():
    rows = recordings(("a", 10, 1), ("b", 6, 1), ("c", 4, 1), ("d", 0.1, 1))
    victims = plan(rows, Policy("age", True, max_age_days=5), now=NOW)
    assert names(victims) == ["a", "b"]
    assert {v.reason for v in victims} == {"age"}


def test_plan_never_picks_a_file_being_recorded():
    rows = recordings(("a", 10, 1, True), ("b", 9, 1), ("c", 8, 5 * GB, True), ("d", 7, 1))
    assert names(plan(rows, Policy("age", True, max_age_days=1), now=NOW)) == ["b", "d"]
    assert names(plan(rows, Policy("size", True, max_size_gb=0.000000001), now=NOW, recordings_bytes=5 * GB + 3)) == [
        "b",
        "d",
    ]


def test_plan_size_oldest_first_until_under_limit():
    rows = recordings(("a", 4, 400), ("b", 3, 300), ("c", 2, 200), ("d", 1, 100))
    victims = plan(rows, Policy("size", True, max_size_gb=450 / GB), now=NOW, recordings_bytes=1000)
    assert names(victims) == ["a", "b"]  # 1000 -> 600 -> 300 <= 450
    assert {v.reason for v in victims} == {"size"}


def test_plan_size_applies_to_recordings_only():
    snaps = [Candidate("snapshot", "s", 10**9, NOW - 10 * DAY)]
    assert plan(snaps, Policy("size", True, max_size_gb=0.001), now=NOW, recordings_bytes=10**10) == []


def test_plan_free_space_floor():
    rows = recordings(("a", 4, 400), ("b", 3, 300), ("c", 2, 200))
    victims = plan(rows, Policy("manual", True), now=NOW, free_bytes=100, min_free_bytes=600)
    assert names(victims) == ["a", "b"]  # 100 -> 500 -> 800 >= 600
    assert {v.reason for v in victims} == {"free_space"}
    assert plan(rows, Policy("manual", True), now=NOW, free_bytes=None, min_free_bytes=600) == []
    assert plan(rows, Policy("manual", False), now=NOW, free_bytes=100, min_free_bytes=600) == []


def test_plan_stops_reading_once_satisfied():
    consumed = []

    def rows():
        for i in range(1000):
            consumed.append(i)
            yield Candidate("recording", f"f{i}", 1, NOW - (1000 - i) * DAY)

    victims = plan(rows(), Policy("age", True, max_age_days=990.5), now=NOW)
    assert len(victims) == 10
    assert len(consumed) == 11  # the first file young enough ends the walk


def test_policy_store_roundtrip_and_other_process_update(tmp_path):
    path = tmp_path / "files" / "retention.json"
    store = PolicyStore(path)
    assert store.load() == Policy()  # default: disabled
    store.save(Policy("age", True, max_age_days=7.0))
    assert PolicyStore(path).load() == Policy("age", True, 7.0, None)
    PolicyStore(path).save(Policy("size", True, None, 2.5))  # "another process"
    assert store.load() == Policy("size", True, None, 2.5)
    path.write_text("{not json")
    assert store.load() == Policy("size", True, None, 2.5)  # last good policy kept


def test_file_lock_excludes_second_holder(tmp_path):
    first, second = FileLock(tmp_path / "l"), FileLock(tmp_path / "l")
    assert first.acquire()
    assert not second.acquire(timeout=0.05)
    first.release()
    assert second.acquire()
    second.release()


# --- storage thresholds -------------------------------------------------------------------------


def usage(percent, free=None):
    used = int(percent * 10)
    return Usage(1000, used, 1000 - used if free is None else free)


def test_threshold_monitor_rises_and_falls_with_hysteresis():
    monitor = ThresholdMonitor(80.0, 90.0)
    assert monitor.update(usage(50)) is None
    event = monitor.update(usage(80))
    assert event == {"usage_percentage": 80.0, "low_space_warning": True, "level": "warning"}
    assert monitor.update(usage(85)) is None
    assert monitor.update(usage(90))["level"] == "critical"
    assert monitor.update(usage(89.5)) is None  # within the hysteresis band
    assert monitor.update(usage(88.5))["level"] == "warning"
    assert monitor.update(usage(79.5)) is None
    event = monitor.update(usage(70))
    assert event == {"usage_percentage": 70.0, "low_space_warning": False, "level": "ok"}
    assert monitor.update(usage(95))["level"] == "critical"  # straight from ok


def test_threshold_monitor_low_free_bytes_is_a_warning():
    monitor = ThresholdMonitor(80.0, 90.0, min_free_bytes=500)
    assert monitor.update(usage(10, free=100))["low_space_warning"] is True


def test_storage_info_shape():
    info = storage_info(Usage(1000, 600, 300), 50, 7, 80.0, 0)
    assert info == {
        "total_space": 1000,
        "used_space": 600,
        "available_space": 300,
        "usage_percentage": 66.67,
        "recordings_size": 50,
        "snapshots_size": 7,
        "low_space_warning": False,
    }
