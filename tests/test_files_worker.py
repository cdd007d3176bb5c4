"""File worker handlers, called directly on real files (no ZeroMQ)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from camservice.workers.files.index import CACHE_KIB, LOOKUP_BATCH, FileIndex
from camservice.workers.files.worker import FilesWorker

from camservice import ffmpeg, methods
from camservice.envelope import Event
from camservice.errors import FILE_NOT_FOUND, IN_PROGRESS, INVALID_PARAMS, RpcError
from tests.test_files_support import (
    EPOCH,
    FakeDisk,
    ctx,
    default_name,
    make_config,
    make_file,
    run,
    running,
    write_active,
)

ISO_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def tree(config, count=250, cameras=3):
    """``count`` recordings over ``cameras`` cameras, one minute apart, plus a few snapshots."""
    names = []
    for i in range(count):
        name = default_name(f"camera{i % cameras}", EPOCH + i * 60, f"A{i:05d}")
        make_file(config.recordings_dir, name, EPOCH + i * 60, b"r" * (i % 7))
        names.append(name)
    for i in range(5):
        make_file(config.snapshots_dir, default_name("camera0", EPOCH + i, f"S{i:05d}", "jpg"), EPOCH + i)
    return names  # oldest first


async def all_pages(worker, method, limit, **extra):
    seen, offset = [], 0
    while True:
        page = await getattr(worker, method)(methods.list_files({"limit": limit, "offset": offset, **extra}), ctx())
        seen += [f["filename"] for f in page["files"]]
        if len(page["files"]) < limit:
            return seen, page["total"]
        offset += limit


# --- listing -----------------------------------------------------------------------------


def test_pagination_is_newest_first_complete_and_disjoint(tmp_path):
    config = make_config(tmp_path)
    names = tree(config)

    async def body():
        async with running(config) as worker:
            await worker.rescan()
            first = await worker.list_recordings(methods.list_files({}), ctx())
            assert first["total"] == 250 and first["limit"] == 100 and first["offset"] == 0
            assert [f["filename"] for f in first["files"]] == names[::-1][:100]
            for limit in (1, 7, 100, 1000):
                seen, total = await all_pages(worker, "list_recordings", limit)
                assert seen == names[::-1] and total == 250
            past = await worker.list_recordings(methods.list_files({"offset": 10_000}), ctx())
            assert past["files"] == [] and past["total"] == 250
            snaps = await worker.list_snapshots(methods.list_files({"limit": 2}), ctx())
            assert snaps["total"] == 5 and len(snaps["files"]) == 2
            assert snaps["files"][0]["filename"].endswith("S00004.jpg")

    run(body())


def test_equal_mtimes_have_a_stable_order(tmp_path):
    config = make_config(tmp_path)
    for i in range(30):
        make_file(config.recordings_dir, f"clip{i:02d}.mp4", EPOCH)

    async def body():
        async with running(config) as worker:
            await worker.rescan()
            seen, _ = await all_pages(worker, "list_recordings", 4)
            assert seen == [f"clip{i:02d}.mp4" for i in reversed(range(30))]

    run(body())


def test_entry_shape(tmp_path):
    config = make_config(tmp_path, **{"server.public_host": "cam.example", "server.port": 9000})
    name = default_name("camera1", EPOCH, "ZZ0001")
    make_file(config.recordings_dir, name, EPOCH, b"12345")

    async def body():
        async with running(config) as worker:
            await worker.rescan()
            (entry,) = (await worker.list_recordings(methods.list_files({}), ctx()))["files"]
            assert entry == {
                "filename": name,
                "file_size": 5,
                "modified_time": "2023-11-14T22:13:20Z",
                "download_url": f"http://cam.example:9000/files/recordings/{name}",
                "camera_id": "camera1",
                "recording": False,
            }

    run(body())


def test_device_filter_by_camera_id_and_by_device(tmp_path):
    config = make_config(tmp_path)
    names = tree(config, count=30, cameras=3)
    camera1 = [n for n in names[::-1] if n.startswith("camera1_")]

    async def body():
        async with running(config) as worker:
            await worker.rescan()
            calls = []

            async def fake_call(method, params, timeout=5.0, request_id=""):
                calls.append(method)
                return {
                    "cameras": [{"id": "camera1", "device": "/dev/video4"}, {"id": "camera2", "device": "sim:2"}],
                    "seq": 1,
                    "source": "discovery-0",
                }

            worker.call = fake_call  # where the worker's camera replica fetches its snapshot (retried)
            assert await worker.cameras.wait_loaded(10.0)
            by_id = await worker.list_recordings(methods.list_files({"device": "camera1"}), ctx())
            assert [f["filename"] for f in by_id["files"]] == camera1 and by_id["total"] == 10
            by_device = await worker.list_recordings(methods.list_files({"device": "/dev/video4"}), ctx())
            assert [f["filename"] for f in by_device["files"]] == camera1
            assert {f["device"] for f in by_device["files"]} == {"/dev/video4"}
            sim = await worker.list_recordings(methods.list_files({"device": "sim:2", "limit": 3}), ctx())
            assert sim["total"] == 10 and all(f["camera_id"] == "camera2" for f in sim["files"])
            unknown = await worker.list_recordings(methods.list_files({"device": "/dev/video9"}), ctx())
            assert unknown == {"files": [], "total": 0, "limit": 100, "offset": 0}
            assert calls == ["discovery.snapshot"]  # the replica follows events, listings never ask

    run(body())


def test_camera_status_events_teach_the_device_mapping(tmp_path):
    config = make_config(tmp_path)
    tree(config, count=6, cameras=2)

    async def body():
        async with running(config) as worker:
            await worker.rescan()
            await worker.on_event(
                Event(
                    "camera_status_update",
                    "discovery-0",
                    1,
                    {"id": "camera0", "device": "sim:0", "status": "CONNECTED"},
                    time.time(),
                )
            )
            page = await worker.list_recordings(methods.list_files({"device": "sim:0"}), ctx())
            assert page["total"] == 3 and {f["device"] for f in page["files"]} == {"sim:0"}

    run(body())


# --- rescan --------------------------------------------------------------------------------


def test_file_deleted_by_hand_disappears_after_rescan(tmp_path):
    config = make_config(tmp_path)
    names = tree(config, count=10)

    async def body():
        async with running(config) as worker:
            await worker.rescan()
            (config.recordings_dir / names[-1]).unlink()
            make_file(config.recordings_dir, "added.mkv", EPOCH + 10**6, b"abc")
            make_file(config.recordings_dir, "ignored.txt", EPOCH + 10**6)
            (config.recordings_dir / names[0]).write_bytes(b"grown" * 10)
            os.utime(config.recordings_dir / names[0], (EPOCH, EPOCH))
            result = {r.kind: r for r in await worker.rescan()}["recording"]
            assert (result.added, result.removed, result.changed) == (1, 1, 1)
            page = await worker.list_recordings(methods.list_files({}), ctx())
            listed = [f["filename"] for f in page["files"]]
            assert names[-1] not in listed and listed[0] == "added.mkv" and page["total"] == 10
            assert page["files"][-1]["file_size"] == 50
            storage = await worker.get_storage_info({}, ctx())
            assert storage["recordings_size"] == sum(f["file_size"] for f in page["files"])

    run(body())


def test_a_file_added_behind_the_index_is_listed_at_once(tmp_path):
    """A snapshot whose _file_update event has not arrived yet (or a file copied in
    by hand) is listed by the next call: the folder's mtime says the index may lag."""
    config = make_config(tmp_path)
    names = tree(config, count=3)

    async def body():
        async with running(config) as worker:
            await worker.rescan()
            make_file(config.snapshots_dir, "just-taken.jpg", EPOCH + 10**6, b"jpeg")
            page = await worker.list_snapshots(methods.list_files({}), ctx())
            assert page["files"][0]["filename"] == "just-taken.jpg" and page["total"] == 6
            os.unlink(config.recordings_dir / names[0])
            page = await worker.list_recordings(methods.list_files({}), ctx())
            assert names[0] not in [f["filename"] for f in page["files"]] and page["total"] == 2
            # Nothing changed since: the next listing walks nothing.
            assert [r.skipped for r in await worker.rescan(full=False)] == [True, True]

    run(body())


def test_quick_rescan_walks_only_changed_folders(tmp_path):
    config = make_config(tmp_path)
    names = tree(config, count=4)

    async def body():
        async with running(config) as worker:
            await worker.rescan()
            assert [r.skipped for r in await worker.rescan(full=False)] == [True, True]
            (config.recordings_dir / names[0]).write_bytes(b"rewritten in place")
            assert [r.skipped for r in await worker.rescan(full=False)] == [True, True]
            recording, _ = await worker.rescan()
            assert recording.changed == 1  # the in-place rewrite, found by a full walk
            (config.recordings_dir / names[1]).unlink()  # an entry removed: the folder's mtime moves
            recording, snapshot = await worker.rescan(full=False)
            assert not recording.skipped and recording.removed == 1 and snapshot.skipped
            page = await worker.list_recordings(methods.list_files({}), ctx())
            sizes = {f["filename"]: f["file_size"] for f in page["files"]}
            assert page["total"] == 3 and sizes[names[0]] == len(b"rewritten in place")

    run(body())


def test_index_survives_restart_and_is_rebuilt_when_corrupt(tmp_path):
    config = make_config(tmp_path)
    tree(config, count=5)

    async def body():
        async with running(config) as worker:
            await worker.rescan()
        async with running(config) as worker:  # no rescan: the shared index remembers
            assert worker.db.count("recording") == 5
        db = config.state_dir / "files" / "index.sqlite3"
        for suffix in ("-wal", "-shm"):
            (db.parent / (db.name + suffix)).unlink(missing_ok=True)
        db.write_bytes(b"this is not a database" * 100)
        async with running(config) as worker:
            assert worker.db.count("recording") == 0  # moved aside, made anew
            # The first listing walks the folders (this process never did): all back.
            assert (await worker.list_recordings(methods.list_files({}), ctx()))["total"] == 5

    run(body())


# --- info, delete, traversal ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get_recording_info", "delete_recording"])
def test_names_leaving_the_folder_are_invalid_params(tmp_path, method):
    config = make_config(tmp_path)
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"secret")
    config.recordings_dir.mkdir(parents=True)
    os.symlink(secret, config.recordings_dir / "escape.mp4")
    os.symlink("/etc", config.recordings_dir / "etc")

    async def body():
        async with running(config) as worker:
            for bad in [
                "../secret.mp4",
                "..",
                "/etc/passwd",
                "escape.mp4",
                "etc",
                "a/../../secret.mp4",
                "x\x00.mp4",
                ".hidden.mp4",
                "a\\b.mp4",
            ]:
                with pytest.raises(RpcError) as caught:
                    await getattr(worker, method)({"filename": bad}, ctx())
                assert caught.value.code == INVALID_PARAMS, bad
                assert caught.value.data["param"] == "filename" and caught.value.data["reason"]
            assert secret.read_bytes() == b"secret"

    run(body())


def test_unknown_files_are_not_found(tmp_path):
    config = make_config(tmp_path)
    make_file(config.recordings_dir, "notes.txt", EPOCH)
    make_file(config.recordings_dir, "real.mp4", EPOCH)
    (config.recordings_dir / "folder.mp4").mkdir()
    os.symlink(config.recordings_dir / "real.mp4", config.recordings_dir / "alias.mp4")

    async def body():
        async with running(config) as worker:
            for method, name in [
                ("get_recording_info", "nope.mp4"),
                ("get_snapshot_info", "nope.jpg"),
                ("delete_recording", "nope.mp4"),
                ("delete_snapshot", "nope.png"),
                ("get_recording_info", "notes.txt"),
                ("get_recording_info", "folder.mp4"),
                ("delete_recording", "folder.mp4"),
                ("get_recording_info", "alias.mp4"),
                ("delete_recording", "alias.mp4"),
            ]:
                with pytest.raises(RpcError) as caught:
                    await getattr(worker, method)({"filename": name}, ctx())
                assert caught.value.code == FILE_NOT_FOUND
                assert caught.value.data == {"filename": name}
            assert (config.recordings_dir / "notes.txt").exists()
            assert (config.recordings_dir / "alias.mp4").is_symlink() and (config.recordings_dir / "real.mp4").exists()

    run(body())


def test_delete_removes_file_and_row(tmp_path):
    config = make_config(tmp_path)
    names = tree(config, count=3)

    async def body():
        async with running(config) as worker:
            await worker.rescan()
            result = await worker.delete_recording({"filename": names[1]}, ctx())
            assert result == {"filename": names[1], "deleted": True, "message": "Recording deleted"}
            assert not (config.recordings_dir / names[1]).exists()
            page = await worker.list_recordings(methods.list_files({}), ctx())
            assert [f["filename"] for f in page["files"]] == [names[2], names[0]] and page["total"] == 2
            with pytest.raises(RpcError) as caught:
                await worker.delete_recording({"filename": names[1]}, ctx())
            assert caught.value.code == FILE_NOT_FOUND

    run(body())


def test_delete_of_a_file_not_yet_indexed_works(tmp_path):
    config = make_config(tmp_path)

    async def body():
        async with running(config) as worker:
            make_file(config.snapshots_dir, "late.png", EPOCH)
            assert (await worker.delete_snapshot({"filename": "late.png"}, ctx()))["deleted"] is True
            assert not (config.snapshots_dir / "late.png").exists()

    run(body())


def test_active_file_cannot_be_deleted(tmp_path):
    config = make_config(tmp_path)
    names = tree(config, count=2)
    write_active(config, {names[0]: {"camera_id": "camera0", "device": "sim:0", "session_id": "s", "started": EPOCH}})

    async def body():
        async with running(config) as worker:
            await worker.rescan()
            with pytest.raises(RpcError) as caught:
                await worker.delete_recording({"filename": names[0]}, ctx())
            assert caught.value.code == IN_PROGRESS
            assert (config.recordings_dir / names[0]).exists()
            entries = {f["filename"]: f for f in (await worker.list_recordings(methods.list_files({}), ctx()))["files"]}
            assert entries[names[0]]["recording"] is True and entries[names[1]]["recording"] is False
            write_active(config, {})  # the recording finished
            assert (await worker.delete_recording({"filename": names[0]}, ctx()))["deleted"] is True

    run(body())


def test_file_update_events_track_recording_state(tmp_path):
    """Without an active list, the _file_update flags protect the file."""
    config = make_config(tmp_path)
    name = default_name("camera2", EPOCH, "EV0001")

    def event(state, **extra):
        data = {
            "kind": "recording",
            "filename": name,
            "camera_id": "camera2",
            "device": "/dev/video2",
            "state": state,
            "size": 0,
            **extra,
        }
        return Event("_file_update", "recording-0", 1, data, time.time())

    async def body():
        async with running(config) as worker:
            await worker.on_event(event("recording"))  # announced before the file exists
            (entry,) = (await worker.list_recordings(methods.list_files({}), ctx()))["files"]
            assert entry["recording"] is True and entry["device"] == "/dev/video2"
            await worker.rescan()  # the file is not on disk yet: protected, kept
            assert (await worker.list_recordings(methods.list_files({}), ctx()))["total"] == 1
            make_file(config.recordings_dir, name, EPOCH + 5, b"v" * 100)
            with pytest.raises(RpcError) as caught:
                await worker.delete_recording({"filename": name}, ctx())
            assert caught.value.code == IN_PROGRESS
            await worker.on_event(event("complete", size=100, duration=12.5))
            (entry,) = (await worker.list_recordings(methods.list_files({}), ctx()))["files"]
            assert entry["recording"] is False and entry["duration"] == 12.5 and entry["file_size"] == 100
            info = await worker.get_recording_info({"filename": name}, ctx())
            assert info["duration"] == 12.5  # from the event: no probe of this 100-byte non-video
            assert (await worker.delete_recording({"filename": name}, ctx()))["deleted"] is True

    run(body())


def test_info_probes_real_media_once(tmp_path, monkeypatch):
    config = make_config(tmp_path)
    exe = ffmpeg.locate()
    rec = config.recordings_dir / "clip.mp4"
    snap = config.snapshots_dir / "still.jpg"
    rec.parent.mkdir(parents=True)
    snap.parent.mkdir(parents=True)
    subprocess.run(
        [
            exe,
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x48:rate=10",
            "-t",
            "2",
            "-c:v",
            "mpeg4",
            "-y",
            str(rec),
        ],
        check=True,
        timeout=60,
    )
    subprocess.run(
        [
            exe,
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=80x60",
            "-frames:v",
            "1",
            "-y",
            str(snap),
        ],
        check=True,
        timeout=60,
    )

    async def body():
        async with running(config) as worker:
            info = await worker.get_recording_info({"filename": "clip.mp4"}, ctx())
            assert 1.5 <= info["duration"] <= 2.5
            assert info["file_size"] == rec.stat().st_size
            assert ISO_Z.fullmatch(info["created_time"]) and ISO_Z.fullmatch(info["modified_time"])
            snapshot = await worker.get_snapshot_info({"filename": "still.jpg"}, ctx())
            assert snapshot["resolution"] == "80x60" and "duration" not in snapshot

            async def no_probe(*args, **kwargs):
                raise AssertionError("probed again")

            monkeypatch.setattr(ffmpeg, "probe_async", no_probe)
            again = await worker.get_recording_info({"filename": "clip.mp4"}, ctx())
            assert again["duration"] == info["duration"]
            listed = (await worker.list_recordings(methods.list_files({}), ctx()))["files"]
            assert listed[0]["duration"] == info["duration"]

    run(body())


# --- concurrency ---------------------------------------------------------------------------


def test_two_workers_delete_and_list_concurrently(tmp_path):
    config = make_config(tmp_path)
    names = tree(config, count=120)

    async def body():
        async with running(config, 0) as first, running(config, 1) as second:
            await first.rescan()

            async def delete(worker, name):
                try:
                    await worker.delete_recording({"filename": name}, ctx())
                    return "deleted"
                except RpcError as exc:
                    assert exc.code == FILE_NOT_FOUND
                    return "missing"

            victims = names[:80]
            # Both workers try to delete every victim, while both keep listing.
            jobs = [delete(w, n) for n in victims for w in (first, second)]
            jobs += [
                w.list_recordings(methods.list_files({"limit": 50}), ctx()) for _ in range(20) for w in (first, second)
            ]
            results = await asyncio.gather(*jobs)
            outcomes = results[:160]
            for i in range(80):
                assert sorted(outcomes[2 * i : 2 * i + 2]) == ["deleted", "missing"]
            for page in results[160:]:
                assert len(page["files"]) == min(50, page["total"]) and 40 <= page["total"] <= 120
            for worker in (first, second):
                seen, total = await all_pages(worker, "list_recordings", 30)
                assert seen == names[80:][::-1] and total == 40

    run(body())


CHILD = r"""
import sys, time
from pathlib import Path
from camservice.workers.files.index import FileIndex
db = FileIndex(Path(sys.argv[1]))
db.open()
for i in range(400):
    db.upsert("recording", f"child{i:04d}.mp4", size=1, mtime_ns=2_000_000_000_000_000_000 + i)
    if i % 2:
        db.remove("recording", f"child{i - 1:04d}.mp4")
print("done")
"""


def test_another_process_writes_the_index_while_we_list(tmp_path):
    config = make_config(tmp_path)
    tree(config, count=50)

    async def body():
        async with running(config) as worker:
            await worker.rescan()
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-c", CHILD, str(worker.db.path), stdout=asyncio.subprocess.PIPE, cwd=os.getcwd()
            )
            pages = 0
            while child.returncode is None:
                page = await worker.list_recordings(methods.list_files({"limit": 1000}), ctx())
                # One snapshot: the page and the total always agree.
                assert len(page["files"]) == page["total"]
                pages += 1
                try:
                    await asyncio.wait_for(child.wait(), 0.001)
                except asyncio.TimeoutError:
                    pass
            out, _ = await asyncio.wait_for(child.communicate(), 60)
            assert child.returncode == 0 and out.strip() == b"done"
            page = await worker.list_recordings(methods.list_files({"limit": 1000}), ctx())
            assert page["total"] == 50 + 200 and pages >= 1
            assert page["files"][0]["filename"] == "child0399.mp4"

    run(body())


# --- storage --------------------------------------------------------------------------------


def test_storage_info_and_threshold_events(tmp_path):
    config = make_config(
        tmp_path, **{"storage.warn_percent": 80.0, "storage.critical_percent": 90.0, "storage.min_free_bytes": 0}
    )
    tree(config, count=10)

    async def body():
        async with running(config) as worker:
            await worker.rescan()
            disk = FakeDisk(used_percent=50)
            worker.disk_usage = disk
            info = await worker.get_storage_info({}, ctx())
            assert info["usage_percentage"] == 50.0 and info["low_space_warning"] is False
            assert info["total_space"] == disk.total and info["available_space"] == disk.free
            assert info["recordings_size"] == sum(i % 7 for i in range(10)) and info["snapshots_size"] == 5
            for percent in (50, 81, 85, 92, 95, 89.5, 88, 60, 60):
                disk.set(percent)
                await worker.check_storage()
            levels = [
                (d["level"], d["usage_percentage"], d["low_space_warning"])
                for topic, d in worker.published
                if topic == "storage_status_update"
            ]
            assert levels == [
                ("warning", 81.0, True),
                ("critical", 92.0, True),
                ("warning", 88.0, True),
                ("ok", 60.0, False),
            ]
            disk.set(85)
            assert (await worker.get_storage_info({}, ctx()))["low_space_warning"] is True

    run(body())


def test_only_the_leader_runs_background_jobs(tmp_path):
    config = make_config(tmp_path)
    tree(config, count=3)

    async def body():
        disk = FakeDisk(used_percent=99)
        async with (
            running(config, 0, background=True, disk=disk) as first,
            running(config, 1, background=True, disk=disk) as second,
        ):
            deadline = time.monotonic() + 10
            while not (first.published or second.published) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
            published = first.published + second.published
            assert [topic for topic, _ in published] == ["storage_status_update"]
            assert first.leader.held != second.leader.held
            leader = first if first.leader.held else second
            assert (await leader.list_recordings(methods.list_files({}), ctx()))["total"] == 3  # it rescanned

    run(body())


def test_worker_kind_and_capacity(tmp_path):
    config = make_config(tmp_path, **{"workers.files_concurrency": 7})
    worker = FilesWorker(config, 3)
    assert worker.kind == "files" and worker.capacity == 7 and worker.name == "files-3"
    assert set(worker.handlers()) == {name for name, m in methods.METHODS.items() if m.target == "files"}


def test_a_follower_woken_by_a_policy_change_does_not_spin(tmp_path):
    config = make_config(tmp_path)

    async def body():
        async with running(config, 0, background=True) as first, running(config, 1, background=True) as second:
            while not (first.leader.held or second.leader.held):
                await asyncio.sleep(0.01)
            follower = second if first.leader.held else first
            attempts = 0
            original = follower.leader.acquire

            def counting_acquire(*args, **kwargs):
                nonlocal attempts
                attempts += 1
                return original(*args, **kwargs)

            follower.leader.acquire = counting_acquire
            await follower.set_retention_policy(
                methods.retention_policy({"policy_type": "manual", "enabled": False}), ctx()
            )
            for _ in range(30):
                await asyncio.sleep(0.01)
            assert attempts <= 2  # one wake-up, then back to the interval

    run(body())


# --- memory: a fixed number of connections and bounded page caches ------------------------


def test_blocking_work_runs_on_a_fixed_pool_of_threads(tmp_path):
    """The index keeps one SQLite connection per thread that used it: a fixed pool keeps
    their number (and their page caches and malloc arenas) fixed, however many calls wait."""
    config = make_config(tmp_path)
    tree(config, count=5)

    async def body():
        async with running(config) as worker:
            pool = worker.capacity + 2
            assert worker.db.connections() == pool  # opened at start, one per pool thread
            release = threading.Event()
            threads: set[str] = set()

            def job():
                threads.add(threading.current_thread().name)
                worker.db.count("recording")
                release.wait(30)

            jobs = [asyncio.ensure_future(asyncio.to_thread(job)) for _ in range(4 * pool)]
            deadline = time.monotonic() + 30
            while len(threads) < pool and time.monotonic() < deadline:  # every pool thread holds a job
                await asyncio.sleep(0.01)
            release.set()
            await asyncio.wait_for(asyncio.gather(*jobs), 60)
            assert len(threads) == pool and all(name.startswith("files-io") for name in threads)
            assert worker.db.connections() <= pool + 1  # the pool's and the event loop's

    run(body())


def test_every_index_connection_caps_its_page_cache(tmp_path):
    db = FileIndex(tmp_path / "index.sqlite3")
    db.open()
    try:
        with ThreadPoolExecutor(3) as pool:
            sizes = set(pool.map(lambda _: db._db().execute("PRAGMA cache_size").fetchone()[0], range(6)))
        assert sizes == {-CACHE_KIB} and db.connections() >= 2
    finally:
        db.close()


def test_reconcile_makes_the_rows_match_the_folder(tmp_path):
    folder = tmp_path / "recordings"
    folder.mkdir()
    for name, size in (("a.mp4", 1), ("b.mp4", 2), ("notes.txt", 3)):
        (folder / name).write_bytes(b"x" * size)
    (folder / "c.mp4").symlink_to(folder / "a.mp4")  # links are not what the service stores
    db = FileIndex(tmp_path / "index.sqlite3")
    db.open()
    try:
        first = db.reconcile("recording", folder)
        assert (first.on_disk, first.added, first.changed, first.removed) == (2, 2, 0, 0)
        (folder / "a.mp4").unlink()
        (folder / "b.mp4").write_bytes(b"x" * 20)
        (folder / "d.mp4").write_bytes(b"x")
        db.upsert("recording", "e.mp4", size=0, mtime_ns=0)  # being recorded: no file yet
        second = db.reconcile("recording", folder, protect={"e.mp4"})
        assert (second.on_disk, second.added, second.changed, second.removed) == (2, 1, 1, 1)
        assert db.get("recording", "a.mp4") is None and db.get("recording", "b.mp4").size == 20
        assert db.get("recording", "e.mp4") is not None and db.get("recording", "c.mp4") is None
        again = db.reconcile("recording", folder, protect={"e.mp4"})
        assert (again.added, again.changed, again.removed) == (0, 0, 0)
        assert db.reconcile("recording", folder).removed == 1  # e.mp4, no longer protected
    finally:
        db.close()


def test_a_rescan_needs_no_memory_in_proportion_to_the_folder(tmp_path):
    """The quick rescan runs after every change of a folder; a peak as large as the folder
    stayed with the allocator, and the worker's RSS grew with the number of files."""
    import tracemalloc

    def peak_of_rescan(files: int) -> int:
        folder = tmp_path / f"f{files}"
        folder.mkdir()
        for i in range(files):
            (folder / f"camera0_2026-01-01_00-00-00_{i:06d}.mp4").touch()
        db = FileIndex(tmp_path / f"index{files}.sqlite3")
        db.open()
        try:
            db.reconcile("recording", folder)  # indexed: the next one finds nothing new
            tracemalloc.start()
            try:
                db.reconcile("recording", folder)
                return tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        finally:
            db.close()

    # Files are looked up a batch at a time: past two batches the peak is the batch's.
    small, large = peak_of_rescan(2 * LOOKUP_BATCH), peak_of_rescan(16 * LOOKUP_BATCH)
    # Eight times the files: a peak per file would be ~8x (about 1.6 MB at 8,000 files).
    assert large < 1.5 * small, (small, large)


def test_rescans_of_a_growing_folder_keep_one_prepared_lookup(tmp_path):
    """Each rescan of a folder one file larger must not prepare a statement of its own:
    sqlite3 caches up to 128 per connection, and these are large."""
    folder = tmp_path / "recordings"
    folder.mkdir()
    db = FileIndex(tmp_path / "index.sqlite3")
    db.open()
    statements: set[str] = set()
    try:
        db._db().set_trace_callback(statements.add)  # every statement executed, expanded
        for i in range(LOOKUP_BATCH + 30):
            (folder / f"camera0_2026-01-01_00-00-00_{i:06d}.mp4").touch()
            if i % 10 == 0 or i >= LOOKUP_BATCH:
                db.reconcile("recording", folder)
        lookups = {
            f"{head} IN {tail.count(',') + 1}"
            for head, _, tail in (s.partition(" IN ") for s in statements)
            if head.endswith("filename")
        }
        # One shape: LOOKUP_BATCH values (of files or NULL padding), whatever the folder's size.
        assert lookups == {
            f"SELECT filename, size, mtime_ns FROM files WHERE kind = 'recording' AND filename IN {LOOKUP_BATCH}"
        }, lookups
    finally:
        db.close()
