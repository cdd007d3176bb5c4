"""``take_snapshot``: a still from an idle camera, or from a recording one without disturbing it.

One device, one reader: under the camera's slot lock, an idle camera is
opened by the backend for one picture; a recording camera is never opened a
second time, its session's run provides the picture (the ffmpeg backend
keeps a preview frame); so is a camera a live preview holds (:mod:`.preview`), whose
frame is copied the same way. A snapshot that meets a session while it restarts
its capture waits for the next run; one that meets a session ending (a timed
recording reaching its deadline, a stop) waits for the end and then takes
the picture from the device, which is free again.

The picture is written under a hidden name and renamed, so the file worker
never lists half a picture.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camservice import errors, storage_errors
from camservice.errors import RpcError

from . import naming, storage
from .capture import CaptureError
from .session import Session

if TYPE_CHECKING:
    from .sessions import RecordingManager


async def take_snapshot(owner: RecordingManager, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    camera = owner.connected_camera(params["device"])
    fmt = params.get("format") or "jpg"
    filename = params.get("filename") or naming.default_name(camera.id, fmt)
    folder = owner.config.snapshots_dir
    await storage.ensure_space(folder, owner.config.storage.min_free_bytes)
    target = folder / filename
    temp = folder / f".snapshot-{naming.random_tag(12)}.tmp.{fmt}"
    slot = owner.slot(camera.id)
    began = time.monotonic()
    deadline = began + timeout
    try:
        async with asyncio.timeout(timeout):
            while True:
                async with slot.lock:
                    session = slot.session
                    if session is None:
                        preview = owner.previews.running(camera.id)
                        if preview is not None:  # a live preview holds the device: copy its frame
                            await owner.backend.snapshot_from_run(preview, temp, fmt, deadline - time.monotonic())
                        else:
                            await owner.backend.snapshot(camera, temp, fmt, deadline - time.monotonic())
                        break
                if await _from_session(owner, session, temp, fmt, deadline):
                    break
                # The session ended meanwhile: the device is free, take the picture from it.
        await asyncio.to_thread(os.replace, temp, target)
        size = (await asyncio.to_thread(target.stat)).st_size
    except CaptureError as exc:
        raise owner.media_error(exc, params["device"], "snapshots") from None
    except TimeoutError:
        raise RpcError(errors.MEDIA_BACKEND, data={"reason": f"no picture within {timeout:.0f}s"}) from None
    except OSError as exc:  # the folder went read-only, or away, between the checks and the rename
        raise storage_errors.from_os_error(exc, "snapshots") from None
    finally:
        await asyncio.to_thread(storage.unlink_quietly, temp)
    owner.file_update(filename, camera, "complete", size, kind="snapshot")
    owner.observe_snapshot(time.monotonic() - began)
    return {
        "device": camera.device,
        "filename": filename,
        "status": "completed",
        "timestamp": naming.utc_iso(),
        "file_size": size,
        "file_path": str(target),
    }


async def _from_session(owner: RecordingManager, session: Session, temp: Path, fmt: str, deadline: float) -> bool:
    """The picture from a recording session's run; False when the session ended instead."""
    # A restart may be replacing the run: wait for the next one rather than fail.
    while session.run is None and not session.ending:
        await asyncio.sleep(0.05)
    run = session.run
    if session.ending or run is None:
        await asyncio.shield(session.result)  # bounded by the caller's timeout
        return False
    await owner.backend.snapshot_from_run(run, temp, fmt, max(0.5, deadline - time.monotonic()))
    return True
