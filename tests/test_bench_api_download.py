"""bench/api_download.py's helpers: variant parsing, reader modes, the CPU split by role."""

from __future__ import annotations

import argparse
import multiprocessing
import os

import pytest

from bench import cpusplit
from bench.api_download import _reader_init, parse_variant


def test_a_variant_is_a_name_and_dotted_config_keys():
    assert parse_variant("defaults") == ("defaults", {})
    name, overrides = parse_variant("low:files.download_budget=0,files.download_priority=idle,python=/x/bin/python")
    assert name == "low"
    assert overrides == {"files.download_budget": 0, "files.download_priority": "idle", "python": "/x/bin/python"}
    with pytest.raises(argparse.ArgumentTypeError):
        parse_variant("bad:budget=0")


def _mode_of_a_child(mode: str) -> tuple[int, int]:
    _reader_init(mode)
    return os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)


def test_reader_modes_lower_the_readers_only():
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_mode_of_a_child, ("idle",))[0] == os.SCHED_IDLE
        assert pool.apply(_mode_of_a_child, ("nice19",))[1] == 19
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_the_split_groups_threads_by_role_per_second_of_wall_time():
    host = {"user": 0.0, "nice": 0.0, "system": 0.0, "idle": 0.0, "softirq": 0.0}
    before = {
        "threads": {(10, 10): ("gw", "gw", 0), (20, 21): ("ksoftirqd/0", "ksoftirqd/0", 0)},
        "host": host,
        "time": 0.0,
    }
    after = {
        "threads": {
            (10, 10): ("gw", "gw", 500_000_000),
            (10, 11): ("gw", "gw", 500_000_000),  # a thread born in between counts from 0
            (20, 21): ("ksoftirqd/0", "ksoftirqd/0", 200_000_000),
            (30, 30): ("stranger", "stranger", 2_000_000_000),
        },
        "host": {**host, "user": 2.0, "idle": 2.0},
        "time": 2.0,
    }
    split = cpusplit.split(before, after, {10: "service gateway"})
    assert split["cores_by_role"] == {"other (not this bench)": 1.0, "service gateway": 0.5, "kernel threads": 0.1}
    assert split["host_cores"]["user"] == 1.0 and split["host_cores"]["idle"] == 1.0
    assert split["busiest_threads"][0] == ["other (not this bench): stranger/stranger", 1.0]


def test_a_real_snapshot_sees_this_thread():
    snap = cpusplit.snapshot()
    assert (os.getpid(), os.getpid()) in snap["threads"] and snap["host"]["user"] > 0
