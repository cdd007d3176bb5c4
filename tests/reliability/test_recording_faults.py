"""Issue 11, recording faults: each defect reproduced, with real ffmpeg and simulated cameras.

* §5 a killed ffmpeg ends its recording as FAILED: it must restart the capture
  in a new segment, as a stall does;
* §6 the recordings folder deleted mid-recording: detected, folder made again,
  the recording goes on in a new segment, the deleted files are unlisted;
* §7 storage errors and the snapshot racing the end of a timed recording;
* §8 ``fmp4`` accepted as a format, and a segment cut short listed with a duration.

The recording manager runs in-process (see ``tests/test_recording_ffmpeg.py``
for the harness); the file worker's handlers are called directly.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from camservice import errors, methods
from camservice.errors import RpcError
from tests.test_files_support import ctx, make_config, make_file, running
from tests.test_recording_ffmpeg import Harness, alive, probe, snap_params, start_params, until

pytestmark = pytest.mark.slow


def segment(started: dict, index: int) -> str:
    stem, ext = started["filename"].rsplit(".", 1)
    return started["filename"] if index == 0 else f"{stem}_part{index:03d}.{ext}"


# --- §5: ffmpeg killed --------------------------------------------------------------------


def test_a_killed_ffmpeg_is_restarted_in_a_new_segment(tmp_path: Path):
    h = Harness(tmp_path)

    async def scenario():
        await h.manager.open()
        started = await h.manager.start_recording(start_params())
        session = h.manager.sessions[started["session_id"]]
        first = session.run.pid
        await until(lambda: h.recording(started["filename"]).stat().st_size > 20_000)
        os.kill(first, signal.SIGKILL)
        await until(lambda: session.run is not None and session.run.pid != first)
        second = h.recording(segment(started, 1))
        await until(lambda: second.exists() and second.stat().st_size > 20_000)
        stopped = await h.manager.stop_recording({"device": "sim:0"})
        return started, first, stopped

    started, first, stopped = asyncio.run(scenario())
    assert not alive(first)
    assert stopped["status"] == "STOPPED" and stopped["session_id"] == started["session_id"]
    assert [d["status"] for d in h.statuses(started["session_id"])] == ["STARTED", "STOPPED"]
    for index in (0, 1):
        assert probe(h.recording(segment(started, index))).codec == "h264"
    # §8: the killed capture never wrote its segment's length down; it is read back from the file.
    cut = h.file_updates(filename=started["filename"], state="complete")
    assert cut and cut[-1]["duration"] > 0


def test_a_capture_that_keeps_dying_fails_after_the_backoff_gives_up(tmp_path: Path):
    h = Harness(tmp_path)

    async def scenario():
        await h.manager.open()
        started = await h.manager.start_recording(start_params())
        session = h.manager.sessions[started["session_id"]]
        session.backoff.limit = 1  # one restart, then give up (MAX_RESTARTS in production)
        killed = set()
        while started["session_id"] in h.manager.sessions:
            run = session.run
            if run is not None and run.pid not in killed and run.running():
                killed.add(run.pid)
                os.kill(run.pid, signal.SIGKILL)
            await asyncio.sleep(0.05)
        return started, await h.wait_status(started["session_id"], "FAILED")

    started, failed = asyncio.run(scenario())
    assert failed["error"].startswith(("ffmpeg exited", "capture restart failed"))
    assert not list((h.state / "journal").iterdir())


# --- §6: the recordings folder deleted ---------------------------------------------------------


def test_recordings_folder_deleted_mid_recording(tmp_path: Path):
    h = Harness(tmp_path)
    folder = h.config.recordings_dir

    async def scenario():
        await h.manager.open()
        started = await h.manager.start_recording(start_params())
        await until(lambda: h.recording(started["filename"]).stat().st_size > 20_000)
        shutil.rmtree(folder)
        deleted_at = time.monotonic()
        second = h.recording(segment(started, 1))
        await until(lambda: second.exists() and second.stat().st_size > 0)
        resumed_after = time.monotonic() - deleted_at
        await until(lambda: second.stat().st_size > 20_000)
        stopped = await h.manager.stop_recording({"device": "sim:0"})
        return started, stopped, resumed_after

    started, stopped, resumed_after = asyncio.run(scenario())
    assert folder.is_dir()
    assert stopped["status"] == "STOPPED"
    assert [d["status"] for d in h.statuses(started["session_id"])] == ["STARTED", "STOPPED"]
    # The deleted segment is announced as such (the file workers drop it), not as complete.
    assert h.file_updates(filename=started["filename"], state="deleted")
    assert not os.path.exists(h.recording(started["filename"]))
    assert probe(h.recording(segment(started, 1))).codec == "h264"
    assert stopped["file_size"] == h.recording(segment(started, 1)).stat().st_size
    print(f"recording went on {resumed_after:.2f}s after the folder was deleted")


def test_a_deleted_folder_is_unlisted_at_once(tmp_path: Path):
    config = make_config(tmp_path)
    for index in range(3):
        make_file(config.recordings_dir, f"camera0_2026-01-01_00-00-0{index}_ABCDE{index}.mp4", 1_700_000_000 + index)

    async def body():
        async with running(config) as worker:
            await worker.rescan()
            before = await worker.list_recordings(methods.list_files({}), ctx())
            shutil.rmtree(config.recordings_dir)
            config.recordings_dir.mkdir()  # made again, as the recording worker does
            after = await worker.list_recordings(methods.list_files({}), ctx())
            shutil.rmtree(config.recordings_dir)  # and gone for good
            gone = await worker.list_recordings(methods.list_files({}), ctx())
            return before, after, gone

    before, after, gone = asyncio.run(body())
    assert before["total"] == 3
    assert after["total"] == 0 and after["files"] == []
    assert gone["total"] == 0


# --- §7: storage errors and the snapshot race -------------------------------------------------


@pytest.fixture
def mount_point(tmp_path: Path):
    """A tmpfs the test may fill or make read-only (needs mount rights: root in a container)."""
    point = tmp_path / "mnt"
    point.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(point)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield point
    subprocess.run(["umount", "-l", str(point)], capture_output=True)


def remount(point: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(point)], check=True, capture_output=True)


def test_start_recording_into_a_read_only_folder_is_a_storage_error(tmp_path: Path, mount_point: Path):
    h = Harness(tmp_path, **{"storage.recordings_dir": str(mount_point / "rec")})  # makes the folder
    remount(mount_point, "ro")

    async def scenario():
        await h.manager.open()
        with pytest.raises(RpcError) as refused:
            await h.manager.start_recording(start_params())
        return refused.value

    error = asyncio.run(scenario())
    assert error.code == errors.STORAGE_ERROR == -32012
    assert error.data == {"reason": "the recordings folder is on a read-only file system"}


def test_start_recording_where_the_folder_cannot_be_made_is_a_storage_error(tmp_path: Path):
    h = Harness(tmp_path / "state", **{"storage.recordings_dir": str(tmp_path / "rec")})
    (tmp_path / "rec").rmdir()
    (tmp_path / "rec").write_text("")  # a file where the folder should be

    async def scenario():
        await h.manager.open()
        with pytest.raises(RpcError) as refused:
            await h.manager.start_recording(start_params())
        return refused.value

    error = asyncio.run(scenario())
    assert error.code == errors.STORAGE_ERROR
    assert error.data == {"reason": "the recordings folder is missing (a file is in its place)"}


def test_start_recording_on_a_full_disk_with_no_floor_is_storage_full(tmp_path: Path, mount_point: Path):
    h = Harness(tmp_path, **{"storage.recordings_dir": str(mount_point / "rec"), "storage.min_free_bytes": 0})
    fd = os.open(mount_point / "filler", os.O_WRONLY | os.O_CREAT)
    try:  # fill the tmpfs to the last byte
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)

    async def scenario():
        await h.manager.open()
        with pytest.raises(RpcError) as refused:
            await h.manager.start_recording(start_params())
        return refused.value

    error = asyncio.run(scenario())
    assert error.code == errors.STORAGE_FULL == -32007
    assert error.data == {"reason": "no space left on device"}
    assert not h.manager.sessions


def test_delete_from_a_read_only_folder_is_a_storage_error(tmp_path: Path, mount_point: Path):
    config = make_config(tmp_path, **{"storage.recordings_dir": str(mount_point / "rec")})
    name = "camera0_2026-01-01_00-00-00_ABCDEF.mp4"
    make_file(config.recordings_dir, name, 1_700_000_000)

    async def body():
        async with running(config) as worker:
            await worker.rescan()
            remount(mount_point, "ro")
            with pytest.raises(RpcError) as refused:
                await worker.delete_recording({"filename": name}, ctx())
            listed = await worker.list_recordings(methods.list_files({}), ctx())
            return refused.value, listed

    error, listed = asyncio.run(body())
    assert error.code == errors.STORAGE_ERROR
    assert error.data == {"reason": "the recordings folder is on a read-only file system", "filename": name}
    assert [f["filename"] for f in listed["files"]] == [name]  # still there, still listed


def test_snapshot_racing_the_end_of_a_timed_recording_comes_from_the_device(tmp_path: Path):
    h = Harness(tmp_path)

    async def scenario():
        await h.manager.open()
        started = await h.manager.start_recording(start_params(duration=30))
        session = h.manager.sessions[started["session_id"]]
        await until(lambda: h.recording(started["filename"]).stat().st_size > 20_000)
        session.record.deadline = time.time()  # the deadline is now: the session is ending
        session.wake.set()
        snap = await h.manager.take_snapshot(snap_params("sim:0", "jpg"))
        return started, snap

    started, snap = asyncio.run(scenario())
    assert snap["status"] == "completed" and snap["file_size"] > 0
    assert probe(Path(snap["file_path"])).codec == "mjpeg"
    assert [d["status"] for d in h.statuses(started["session_id"])] == ["STARTED", "COMPLETED"]


# --- §8: fmp4 -------------------------------------------------------------------------------


def test_fmp4_is_accepted_as_mp4(tmp_path: Path):
    assert methods.start_recording({"device": "sim:0", "format": "fmp4"})["format"] == "mp4"
    assert methods.start_recording({"device": "sim:0", "format": "fmp4", "filename": "a"})["filename"] == "a.mp4"
    h = Harness(tmp_path)

    async def scenario():
        await h.manager.open()
        started = await h.manager.start_recording(methods.start_recording({"device": "sim:0", "format": "fmp4"}))
        await until(lambda: h.recording(started["filename"]).stat().st_size > 20_000)
        await h.manager.stop_recording({"device": "sim:0"})
        return started

    started = asyncio.run(scenario())
    assert started["format"] == "mp4" and started["filename"].endswith(".mp4")
    assert probe(h.recording(started["filename"])).codec == "h264"


def test_a_disk_filling_up_mid_recording_fails_it_naming_the_cause(tmp_path: Path, mount_point: Path):
    h = Harness(tmp_path, **{"storage.recordings_dir": str(mount_point / "rec"), "storage.min_free_bytes": 0})

    async def scenario():
        await h.manager.open()
        started = await h.manager.start_recording(start_params())
        return started, await h.wait_status(started["session_id"], "FAILED", timeout=90)

    started, failed = asyncio.run(scenario())
    assert failed["error"] == "storage: no space left on device"
    assert not list((h.state / "journal").iterdir())
    assert probe(h.recording(started["filename"])).codec == "h264"  # what fitted is playable
