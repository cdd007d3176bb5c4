"""Storage failures as the contract's codes (camservice.storage_errors): no I/O."""

from __future__ import annotations

import errno
import os

from camservice import storage_errors
from camservice.errors import STORAGE_ERROR, STORAGE_FULL


def oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def test_os_errors_name_the_folder_and_the_cause():
    read_only = storage_errors.from_os_error(oserror(errno.EROFS), "recordings")
    assert read_only.code == STORAGE_ERROR == -32012
    assert read_only.data == {"reason": "the recordings folder is on a read-only file system"}
    full = storage_errors.from_os_error(oserror(errno.ENOSPC), "snapshots")
    assert full.code == STORAGE_FULL and full.data == {"reason": "no space left on device"}
    odd = storage_errors.from_os_error(oserror(errno.EIO), "snapshots")
    assert odd.code == STORAGE_ERROR and odd.data["reason"].startswith("the snapshots folder cannot be written")


def test_ffmpeg_output_is_read_only_for_causes_that_are_about_what_it_writes():
    text = "[segment @ 0x1] Failed to open segment 'seg001.mp4'\nav_interleaved_write_frame(): No space left on device"
    assert storage_errors.from_ffmpeg(text, "recordings").code == STORAGE_FULL
    assert storage_errors.from_ffmpeg("Could not open rec.mp4: Read-only file system", "recordings").code == -32012
    # A camera the service may not open says "Permission denied" too: that is no storage error.
    assert storage_errors.from_ffmpeg("/dev/video0: Permission denied", "recordings") is None
    assert storage_errors.from_ffmpeg("Conversion failed!", "recordings") is None


def test_the_floor_error_carries_the_figures():
    below = storage_errors.no_space(10, 1000)
    assert below.code == STORAGE_FULL
    assert below.data == {"reason": "only 10 bytes free, 1000 required", "free_bytes": 10, "min_free_bytes": 1000}
