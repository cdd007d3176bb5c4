"""Live preview frames (``GET /cameras/{id}/preview``): the recording worker's side.

The recording worker owns the devices, so it also owns the preview's
capture; gateways fetch frames with the internal call ``preview_frame``
(:meth:`Previews.frame`) and stream them as MJPEG (``gateway/preview.py``).

Where a frame comes from, one device reader at a time:

* **a recording runs**: every ffmpeg run already writes the latest-frame JPEG
  ``state_dir/run/frames/<id>.jpg`` at :data:`~.capture.PREVIEW_FPS` (that is
  what snapshots of a recording camera copy). The preview reads that file:
  no second reader.
* **nothing records**: a short-lived *preview capture* (one ffmpeg, the same
  JPEG at the same rate, no encoding to H.264) is started under the camera's
  slot lock. It stops :data:`LINGER` seconds after the last ``preview_frame``
  call for the camera (gateways poll continuously while anyone watches, so
  a gateway that dies stops its viewers' capture too), when the camera goes
  away, or at once when ``start_recording`` needs the device
  (:meth:`Previews.release`, called under the slot lock): the recording's run
  then writes the same file and viewers carry on after a short gap.
  A snapshot meanwhile copies the preview's frame, as it would a recording's.

A frame's version (``seq``) is the file's inode and mtime: ffmpeg replaces the
file by rename (``-atomic_writing``), so each new picture is a new inode.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camservice import errors
from camservice.cameras import Camera
from camservice.errors import RpcError

from . import capture
from .capture import CameraGone, CaptureError, FfmpegProcess

if TYPE_CHECKING:
    from .sessions import RecordingManager

#: Seconds a preview capture outlives the last frame request for its camera.
LINGER = 3.0
#: Seconds between checks for a new frame (a frame comes every 1/PREVIEW_FPS s).
POLL = 0.04
#: Longest wait for a new frame that one ``preview_frame`` call may ask for.
MAX_WAIT = 5.0
#: A frame file older than this (seconds) with no capture writing it is not served as live.
STALE = 3.0


@dataclass
class PreviewCapture:
    """One short-lived preview ffmpeg of an idle camera."""

    camera_id: str
    process: FfmpegProcess
    frame_path: Path
    last_seen: float
    reaper: asyncio.Task | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    #: ffmpeg exited by itself (not stopped by us): the viewers get its reason.
    failed: bool = False

    def running(self) -> bool:
        return self.process.running()


def preview_argv(exe: str, device: capture.DeviceInput, frame_path: Path) -> list[str]:
    """Latest-frame JPEG at PREVIEW_FPS, replaced atomically; nothing else."""
    return [
        exe,
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "warning",
        "-stats_period",
        "0.02",  # notice SIGINT quickly: a recording waits for the device
        *device.args,
        # As a recording's frame: a snapshot of a previewed camera copies it.
        *capture.latest_frame_output(frame_path),
    ]


def read_newer(path: Path, after: str | None, stale: float) -> tuple[str, bytes] | None:
    """``(seq, jpeg)`` when ``path`` holds a whole picture other than ``after``, else None (blocking)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    seq = f"{info.st_ino}-{info.st_mtime_ns}"
    if seq == after or time.time() - info.st_mtime > stale:
        return None
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    # The file is replaced by rename, never rewritten: a read is one whole JPEG.
    if not (data.startswith(b"\xff\xd8") and data.endswith(b"\xff\xd9")):
        return None
    return seq, data


class Previews:
    """The preview captures of one recording worker; see the module docstring."""

    def __init__(self, owner: RecordingManager):
        self.owner = owner
        self.captures: dict[str, PreviewCapture] = {}
        #: Monotonic time of the last frame request per camera id.
        self.last_seen: dict[str, float] = {}
        self.started = 0  # preview captures started, for stats and tests

    @property
    def log(self):
        return self.owner.log

    async def frame(self, params: dict[str, Any]) -> dict[str, Any]:
        """``{"seq", "frame": JPEG bytes | None}``: the first frame newer than ``after``.

        Waits up to ``wait`` seconds for one (None when none came: poll again).
        -32004 when the camera is unknown or not connected; -32006 when the
        capture failed; -32008 with a backend that streams cameras itself.
        """
        backend = self.owner.backend
        if getattr(backend, "name", "") != "ffmpeg":
            raise RpcError(errors.CAPABILITY_UNSUPPORTED, data={"reason": "the media backend streams this camera"})
        device = params["device"]
        after = params.get("after")
        wait = min(MAX_WAIT, max(0.0, float(params.get("wait", 1.0))))
        deadline = time.monotonic() + wait
        while True:
            camera = self.owner.connected_camera(device)
            path = await self._source(camera)
            watched = self.captures.get(camera.id)
            if watched is not None and watched.failed:
                reason = self.owner.backend.sanitize(watched.process.tail(3) or "ffmpeg exited")
                await self._end(watched, "ffmpeg exited")
                raise RpcError(errors.MEDIA_BACKEND, data={"reason": f"preview capture failed: {reason}"})
            found = await asyncio.to_thread(read_newer, path, after, STALE)
            if found is not None:
                return {"seq": found[0], "frame": found[1]}
            if time.monotonic() >= deadline:
                return {"seq": after, "frame": None}
            await asyncio.sleep(POLL)

    async def _source(self, camera: Camera) -> Path:
        """The frame file of ``camera``'s running capture, starting a preview capture if none runs."""
        now = time.monotonic()
        self.last_seen[camera.id] = now
        slot = self.owner.slot(camera.id)
        session = slot.session
        if session is not None or slot.starting:
            run = session.run if session is not None else None
            if run is not None and run.frame_path is not None:
                return run.frame_path
            return self.owner.backend.frame_path(camera)  # a run (re)starting writes it soon
        # A capture that exited by itself stays listed until :meth:`frame` reports it: no restart loop.
        preview = self.captures.get(camera.id)
        if preview is not None:
            preview.last_seen = now
            return preview.frame_path
        async with slot.lock:
            if slot.session is not None:
                return self.owner.backend.frame_path(camera)
            preview = self.captures.get(camera.id) or await self._start(camera)
            preview.last_seen = now
            return preview.frame_path

    async def _start(self, camera: Camera) -> PreviewCapture:
        """Start a preview capture (caller holds the slot lock); raises RpcError."""
        backend = self.owner.backend
        frame = backend.frame_path(camera)
        await asyncio.to_thread(_unlink, frame)  # a stale picture must not pass for live
        try:
            device = backend.open_input(camera)
        except CameraGone:
            raise errors.camera_not_found(camera.device) from None
        except CaptureError as exc:
            raise self.owner.media_error(exc, camera.device, "snapshots") from None
        process = FfmpegProcess(preview_argv(backend.exe, device, frame), device.fds)
        try:
            await process.start()
        except OSError as exc:
            raise RpcError(
                errors.MEDIA_BACKEND, data={"reason": f"cannot start ffmpeg: {exc.strerror or exc}"}
            ) from None
        finally:
            device.release()  # the lock now lives exactly as long as ffmpeg
        preview = PreviewCapture(camera.id, process, frame, time.monotonic())
        self.captures[camera.id] = preview
        preview.reaper = asyncio.ensure_future(self._reap(preview))
        self.started += 1
        self.log.info("preview_started", camera=camera.id, pid=process.pid)
        return preview

    async def _reap(self, preview: PreviewCapture) -> None:
        """Stop the capture once nobody asked for a frame for LINGER seconds, or when ffmpeg exits."""
        while preview.running():
            idle = time.monotonic() - self.last_seen.get(preview.camera_id, 0.0)
            if idle >= LINGER:
                await self._end(preview, "nobody watches")
                return
            await asyncio.sleep(min(0.25, LINGER - idle + 0.01))
        # Exited by itself: left in place, marked, for the next frame request to report.
        await preview.process.wait(1.0)
        preview.failed = True

    async def _end(self, preview: PreviewCapture, why: str = "released") -> None:
        if self.captures.get(preview.camera_id) is preview:
            del self.captures[preview.camera_id]
        if preview.stopped.is_set():
            return
        code = await preview.process.stop(2.0)
        if not preview.stopped.is_set():
            preview.stopped.set()
            self.log.info("preview_stopped", camera=preview.camera_id, why=why, code=code, tail=preview.process.tail(2))

    def running(self, camera_id: str) -> PreviewCapture | None:
        preview = self.captures.get(camera_id)
        return preview if preview is not None and preview.running() else None

    async def release(self, camera_id: str) -> None:
        """Free the device for a recording (caller holds the slot lock): stop the preview capture."""
        preview = self.captures.get(camera_id)
        if preview is not None:
            if preview.reaper is not None:
                preview.reaper.cancel()
            await self._end(preview, "a recording takes the device")

    def camera_changed(self, camera: Camera, connected: bool) -> None:
        preview = self.captures.get(camera.id)
        if preview is not None and not connected:
            if preview.reaper is not None:
                preview.reaper.cancel()
            asyncio.ensure_future(self._end(preview, "camera disconnected"))

    async def close(self) -> None:
        for preview in list(self.captures.values()):
            if preview.reaper is not None:
                preview.reaper.cancel()
            await self._end(preview, "service stopped")


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
