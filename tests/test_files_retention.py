"""Retention through the worker, on real files with fabricated mtimes."""

from __future__ import annotations

import time

import pytest
from camservice.workers.files.retention import DAY, FileLock

from camservice import methods
from camservice.errors import SERVICE_BUSY, RpcError
from tests.test_files_support import FakeDisk, ctx, make_config, make_file, run, running, write_active


def aged(config, spec, kind="recording"):
    """{name: (age_days, size)} -> files whose mtime is that many days ago."""
    folder = config.recordings_dir if kind == "recording" else config.snapshots_dir
    now = time.time()
    for name, (age, size) in spec.items():
        make_file(folder, name, now - age * DAY, b"z" * size)


def listed(folder):
    return sorted(p.name for p in folder.iterdir())


def policy(**params):
    return methods.retention_policy(params)


def test_set_retention_policy_is_stored_and_survives_restart(tmp_path):
    config = make_config(tmp_path)

    async def body():
        async with running(config) as worker:
            result = await worker.set_retention_policy(policy(policy_type="age", enabled=True, max_age_days=7), ctx())
            assert result == {
                "policy_type": "age",
                "enabled": True,
                "max_age_days": 7,
                "max_size_gb": None,
                "message": "Retention policy updated",
            }
        async with running(config, index=1) as worker:  # another process, after a restart
            assert worker.policies.load().to_dict() == {
                "policy_type": "age",
                "enabled": True,
                "max_age_days": 7,
                "max_size_gb": None,
            }

    run(body())


def test_disabled_policy_deletes_nothing(tmp_path):
    config = make_config(tmp_path)
    aged(config, {"old.mp4": (400, 10)})

    async def body():
        async with running(config) as worker:
            await worker.rescan()
            assert (await worker.cleanup_old_files({}, ctx()))["cleanup_executed"] is False
            await worker.set_retention_policy(policy(policy_type="age", enabled=False, max_age_days=1), ctx())
            result = await worker.cleanup_old_files({}, ctx())
            assert result["cleanup_executed"] is False and result["files_deleted"] == 0
            assert await worker.enforce_retention() is None
            assert listed(config.recordings_dir) == ["old.mp4"]

    run(body())


def test_age_policy_on_recordings_and_snapshots_spares_active_files(tmp_path):
    config = make_config(tmp_path)
    aged(config, {"a_old.mp4": (30, 100), "b_old.mkv": (8, 50), "c_new.mp4": (2, 10), "d_live.mp4": (9, 70)})
    aged(config, {"s_old.jpg": (10, 5), "s_new.png": (1, 5)}, kind="snapshot")
    write_active(
        config, {"d_live.mp4": {"camera_id": "camera0", "device": "sim:0", "session_id": "x", "started": time.time()}}
    )

    async def body():
        async with running(config) as worker:
            await worker.rescan()
            await worker.set_retention_policy(policy(policy_type="age", enabled=True, max_age_days=5), ctx())
            result = await worker.cleanup_old_files({}, ctx())
            assert result["cleanup_executed"] is True
            assert result["files_deleted"] == 3 and result["space_freed"] == 155
            assert result["message"]
            assert listed(config.recordings_dir) == ["c_new.mp4", "d_live.mp4"]
            assert listed(config.snapshots_dir) == ["s_new.png"]
            page = await worker.list_recordings(methods.list_files({}), ctx())
            assert [f["filename"] for f in page["files"]] == ["c_new.mp4", "d_live.mp4"] and page["total"] == 2
            again = await worker.cleanup_old_files({}, ctx())
            assert again["files_deleted"] == 0 and again["space_freed"] == 0

    run(body())


def test_size_policy_deletes_oldest_recordings_first(tmp_path):
    config = make_config(tmp_path)
    aged(config, {"r1.mp4": (5, 400_000), "r2.mp4": (4, 300_000), "r3.mp4": (3, 500_000), "r4.mp4": (2, 400_000)})
    aged(config, {"s.jpg": (50, 2_000_000)}, kind="snapshot")

    async def body():
        async with running(config) as worker:
            await worker.rescan()
            # 1 MB allowed: 1.6 MB -> 1.2 MB -> 0.9 MB.
            await worker.set_retention_policy(policy(policy_type="size", enabled=True, max_size_gb=0.001), ctx())
            counted = await worker.enforce_retention()  # the background pass
            assert counted == (2, 700_000)
            assert listed(config.recordings_dir) == ["r3.mp4", "r4.mp4"]
            assert listed(config.snapshots_dir) == ["s.jpg"]  # the size limit is about recordings
            assert (await worker.get_storage_info({}, ctx()))["recordings_size"] == 900_000

    run(body())


def test_free_space_floor_deletes_oldest_finished_recordings(tmp_path):
    config = make_config(tmp_path, **{"storage.min_free_bytes": 1000})
    aged(config, {"r1.mp4": (5, 400), "r2.mp4": (4, 300), "r3.mp4": (3, 500), "r4.mp4": (2, 100)})
    write_active(config, {"r1.mp4": {}})

    async def body():
        async with running(config) as worker:
            await worker.rescan()
            disk = FakeDisk(total=10**6, used_percent=50)
            disk.free = 400  # 600 bytes short of the floor
            worker.disk_usage = disk
            # Manual policy: its limits wait for cleanup_old_files, the floor does not.
            await worker.set_retention_policy(policy(policy_type="manual", enabled=True, max_age_days=1), ctx())
            assert await worker.enforce_retention() == (2, 800)  # r2 then r3; r1 is being recorded
            assert listed(config.recordings_dir) == ["r1.mp4", "r4.mp4"]
            disk.free = 10**6
            result = await worker.cleanup_old_files({}, ctx())  # now the age limit applies as well
            assert result["files_deleted"] == 1 and listed(config.recordings_dir) == ["r1.mp4"]

    run(body())


def test_file_deleted_behind_retention_is_not_counted(tmp_path):
    config = make_config(tmp_path)
    aged(config, {"gone.mp4": (10, 100), "old.mp4": (9, 50)})

    async def body():
        async with running(config) as worker:
            await worker.rescan()
            (config.recordings_dir / "gone.mp4").unlink()  # before any rescan noticed
            await worker.set_retention_policy(policy(policy_type="age", enabled=True, max_age_days=1), ctx())
            result = await worker.cleanup_old_files({}, ctx())
            assert (result["files_deleted"], result["space_freed"]) == (1, 50)
            assert (await worker.list_recordings(methods.list_files({}), ctx()))["total"] == 0

    run(body())


def test_cleanup_waits_for_the_retention_lock_then_reports_busy(tmp_path):
    config = make_config(tmp_path)
    aged(config, {"old.mp4": (10, 1)})

    async def body():
        async with running(config) as worker:
            await worker.rescan()
            await worker.set_retention_policy(policy(policy_type="age", enabled=True, max_age_days=1), ctx())
            other = FileLock(worker.retention_lock_path)  # "another process" is running retention
            assert other.acquire()
            try:
                with pytest.raises(RpcError) as caught:
                    await worker.cleanup_old_files({}, ctx(seconds=2.5))
                assert caught.value.code == SERVICE_BUSY
                assert await worker.enforce_retention() is None  # background pass skips its turn
                assert listed(config.recordings_dir) == ["old.mp4"]
            finally:
                other.release()
            assert (await worker.cleanup_old_files({}, ctx()))["files_deleted"] == 1

    run(body())
