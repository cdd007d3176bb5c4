"""REQ-PERF-006: scaling with file workers, and hot-plug events under load.

The requirement's scaling factor (0.6-1.0) is measured and reported by
``python -m bench scaling`` but not asserted here: on a 2-core runner shared
with other jobs, two file workers and the load generator compete for the same
cores, and the factor says more about the neighbours than about the service.
What must hold everywhere is asserted: both workers serve, nothing fails,
and every hot-plug event of the load mix reached its subscriber.
"""

from argparse import Namespace

import pytest

from bench import scaling

pytestmark = pytest.mark.performance


def test_two_file_workers_share_the_listing_load():
    folder = scaling.FilesFolder(None, 2000)
    try:
        base = dict(
            concurrency=None, files=2000, duration=2.0, warmup=0.5, client_processes=1, kind="files", gateways=1
        )
        args = Namespace(**base, method="list_recordings", params='{"limit":100}', connections=8, pipeline=2)
        row = scaling.run_one(args, folder.path, 2)
    finally:
        folder.cleanup()
    assert row["errors"] == 0 and row["throughput_rps"] > 0
    busy = [name for name, pct in row["cpu_percent"].items() if name.startswith("files-") and pct > 0]
    assert sorted(busy) == ["files-0", "files-1"]


def test_hot_plug_events_under_load_all_delivered(load_result):
    plug = load_result["endpoints"].get("hotplug_event")
    assert plug is not None and plug["n"] >= 1
    assert plug["errors"] == 0
    assert plug["max_ms"] < 15000
