"""The media backend seam, and the built-in ffmpeg backend.

:class:`~.sessions.RecordingManager` owns everything about a recording that
does not depend on how pictures are captured (sessions, journal, events,
deadlines, storage floor, disconnects, restarts). A :class:`MediaBackend`
does the capturing: a still from an idle camera, a still from a camera that
is recording, and *capture runs*. A run is one uninterrupted capture writing
consecutive segments ``first_index, first_index + 1, ...`` of a session;
a session is a chain of runs (a new one after a stall, after a size
rollover, after the worker restarted).

ffmpeg backend: segment naming
    The contract wants the first segment to carry the name returned by
    ``start_recording`` (``F = stem.ext``) and later ones to be deterministic
    (``stem_part001.ext``...), while ffmpeg's segment muxer only writes
    ``printf``-style names (``seg%03d.ext``). The run therefore gets a staging
    folder ``state_dir/run/recording/<session>-r<n>/`` where ``segNNN.ext``
    are *symlinks* to the final paths in the recordings folder, created a few
    segments ahead of the one being written. ffmpeg opens the symlink, the
    kernel creates the target, and the file exists under its final name from
    its first byte: no rename, so no window in which the file worker or a
    client sees a temporary name, and nothing to repair after a crash. Time
    rollover is the muxer's (``-segment_time``, gapless, cut on the next
    keyframe; a 1 s GOP keeps that close). The muxer's CSV segment list tells
    which segments are closed and how long they are. Size rollover
    (``recording.segment_max_bytes``) is not something the muxer can do, so
    the manager ends the run and starts the next at the following index:
    that reopens the device and costs a short gap (typically well under a
    second), which is why time-based rollover is the primary mechanism.

MediaMTX backend
    :mod:`.mediamtx_backend`: the same runs, reading the camera's RTSP stream
    from MediaMTX instead of the device.

ffmpeg backend: snapshots
    One device, one reader. An idle camera is opened by a short
    ``-frames:v 1`` ffmpeg and released at once. A recording camera is never
    opened a second time: each run also writes ``state_dir/run/frames/<id>.jpg``
    at 4 fps (``-update 1 -atomic_writing 1``), and a snapshot copies that
    file (JPEG) or converts it with a short ffmpeg run reading only the file
    (PNG). The recording is not touched.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from camservice import ffmpeg as ffmpeg_locator
from camservice.cameras import Camera

from . import capture
from .capture import CameraBusy, CaptureError, FfmpegProcess

#: Symlinks kept ready beyond the newest segment ffmpeg opened.
LINKS_AHEAD = 3


@dataclass
class SegmentEvent:
    kind: str  # "opened" or "closed"
    index: int
    duration: float | None = None  # seconds, for "closed" when known


class CaptureRun(Protocol):
    """One uninterrupted capture writing consecutive segments of a session."""

    first_index: int
    frame_path: Path | None

    @property
    def pid(self) -> int | None: ...

    def running(self) -> bool: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> list[SegmentEvent]:
        """New segment events since the last call (blocking file I/O: call in a thread)."""

    @property
    def progress(self) -> int:
        """Bytes written so far by this run (grows while the capture is healthy)."""

    def current_index(self) -> int | None: ...

    def current_size(self) -> int: ...

    @property
    def current_missing(self) -> bool:
        """The segment being written vanished (deleted, with its folder or alone) at the last poll."""

    async def stop(self, timeout: float) -> int | None: ...

    def finish(self) -> list[SegmentEvent]:
        """After exit: close what is still open and clean up (blocking: call in a thread)."""

    def tail(self, lines: int = 5) -> str: ...


class MediaBackend(Protocol):
    name: str
    start_timeout: float  # seconds a new capture has to deliver its first video

    def camera_present(self, camera: Camera) -> bool: ...

    async def snapshot(self, camera: Camera, target: Path, fmt: str, timeout: float) -> None:
        """Write one still of an idle camera to ``target``."""

    async def snapshot_from_run(self, run: CaptureRun, target: Path, fmt: str, timeout: float) -> None:
        """Write one still of a recording camera without disturbing the run."""

    async def start_run(
        self, camera: Camera, *, tag: str, fmt: str, first_index: int, path_of: Callable[[int], Path], timeout: float
    ) -> CaptureRun:
        """Start capturing; returns once the first segment has data, raises CaptureError."""

    def sanitize(self, text: str) -> str: ...


# --- ffmpeg ----------------------------------------------------------------------------


@dataclass
class FfmpegRun:
    process: FfmpegProcess
    staging: Path
    fmt: str
    first_index: int
    path_of: Callable[[int], Path]
    frame_path: Path | None
    opened: list[int] = field(default_factory=list)
    closed: dict[int, float | None] = field(default_factory=dict)
    _sizes: dict[int, int] = field(default_factory=dict)
    _list_size: int = -1
    current_missing: bool = False

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def running(self) -> bool:
        return self.process.running()

    def ensure_links(self) -> None:
        newest = self.opened[-1] if self.opened else self.first_index
        for index in range(self.first_index, newest + LINKS_AHEAD + 1):
            link = capture.staged_segment(self.staging, index, self.fmt)
            if not os.path.lexists(link):
                os.symlink(self.path_of(index), link)

    def poll(self) -> list[SegmentEvent]:
        events: list[SegmentEvent] = []
        index = self.opened[-1] + 1 if self.opened else self.first_index
        # A target exists once ffmpeg opened its symlink; later ones can only
        # appear after earlier ones, so scanning forward from the newest is enough.
        while self.path_of(index).exists():
            self.opened.append(index)
            events.append(SegmentEvent("opened", index))
            index += 1
        if events:
            self.ensure_links()
        for index, duration in self._read_list():
            if index not in self.closed and index in self.opened:
                self.closed[index] = duration
                events.append(SegmentEvent("closed", index, duration))
        self.current_missing = False
        for index in self.opened[-2:]:
            try:
                self._sizes[index] = self.path_of(index).stat().st_size
            except FileNotFoundError:  # deleted behind our back: the session decides
                self.current_missing |= index == self.opened[-1]
        return events

    def _read_list(self) -> list[tuple[int, float | None]]:
        path = self.staging / "segments.csv"
        try:
            size = path.stat().st_size
            if size == self._list_size:
                return []
            text = path.read_text()
        except FileNotFoundError:
            return []
        self._list_size = size
        rows = []
        for row in csv.reader(io.StringIO(text)):
            if len(row) < 3 or not row[0].startswith("seg"):
                continue
            try:
                index = int(row[0][3:].split(".")[0])
                duration = max(0.0, float(row[2]) - float(row[1]))
            except ValueError:
                continue
            rows.append((index, round(duration, 3)))
        return rows

    @property
    def progress(self) -> int:
        return sum(self._sizes.values())

    def current_index(self) -> int | None:
        return self.opened[-1] if self.opened else None

    def current_size(self) -> int:
        current = self.current_index()
        return self._sizes.get(current, 0) if current is not None else 0

    async def stop(self, timeout: float) -> int | None:
        return await self.process.stop(timeout)

    def finish(self) -> list[SegmentEvent]:
        events = self.poll()
        for index in self.opened:
            if index not in self.closed:
                self.closed[index] = None
                events.append(SegmentEvent("closed", index, None))
        shutil.rmtree(self.staging, ignore_errors=True)
        return events

    def tail(self, lines: int = 5) -> str:
        return self.process.tail(lines)


class FfmpegBackend:
    """Snapshots and recordings with ffmpeg child processes reading the device."""

    name = "ffmpeg"
    #: Seconds a new capture has to deliver its first video.
    start_timeout = 8.0

    def __init__(self, config):
        self.config = config
        self.exe = ffmpeg_locator.locate(config.media.ffmpeg_path)
        run = config.state_dir / "run"
        self.staging_root = run / "recording"
        self.frames_dir = run / "frames"
        for folder in (self.staging_root, self.frames_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._allowed = (config.recordings_dir, config.snapshots_dir)

    def sanitize(self, text: str) -> str:
        return capture.sanitize(text, self._allowed)

    def camera_present(self, camera: Camera) -> bool:
        return capture.camera_present(camera)

    def frame_path(self, camera: Camera) -> Path:
        return self.frames_dir / f"{camera.id}.jpg"

    def open_input(self, camera: Camera) -> capture.DeviceInput:
        return capture.open_input(camera)

    def video_args(self, camera: Camera) -> list[str] | None:
        """Codec options of the recording (None: encode with libx264)."""
        return None

    def warmup_frames(self, camera: Camera) -> int:
        return 3 if (camera.source or {}).get("kind") == "v4l2" else 0

    async def snapshot(self, camera: Camera, target: Path, fmt: str, timeout: float) -> None:
        device = self.open_input(camera)
        warmup = self.warmup_frames(camera)
        argv = capture.snapshot_argv(self.exe, device, target, fmt, warmup)
        try:
            await capture.run_once(argv, timeout, device.fds, on_started=device.release)
        except CaptureError as exc:
            raise CaptureError(self.sanitize(exc.reason)) from None
        finally:
            device.release()
        if not target.exists():
            raise CaptureError("ffmpeg wrote no picture")

    async def snapshot_from_run(self, run: CaptureRun, target: Path, fmt: str, timeout: float) -> None:
        frame = run.frame_path
        if frame is None:
            raise CaptureError("the recording keeps no preview frame")
        fresh = max(2.0, 3.0 / capture.PREVIEW_FPS)
        deadline = time.monotonic() + timeout
        # Right after a start (or a restart) the first preview frame may not exist yet.
        while True:
            try:
                age = time.time() - frame.stat().st_mtime
                if age <= fresh:
                    break
            except FileNotFoundError:
                pass
            if time.monotonic() >= deadline:
                raise CaptureError("the recording has produced no recent frame")
            await asyncio.sleep(0.05)
        if fmt == "jpg":
            # The preview is replaced by rename, so this copy reads one whole picture.
            await asyncio.to_thread(shutil.copyfile, frame, target)
            return
        argv = capture.convert_argv(self.exe, frame, target, fmt)
        try:
            await capture.run_once(argv, max(1.0, deadline - time.monotonic()))
        except CaptureError as exc:
            raise CaptureError(self.sanitize(exc.reason)) from None

    async def start_run(
        self, camera: Camera, *, tag: str, fmt: str, first_index: int, path_of: Callable[[int], Path], timeout: float
    ) -> FfmpegRun:
        staging = self.staging_root / tag
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        frame = self.frame_path(camera)
        try:
            frame.unlink()  # a stale preview must not pass for a fresh one
        except FileNotFoundError:
            pass
        device = self.open_input(camera)
        argv = capture.recording_argv(
            self.exe,
            device,
            staging=staging,
            fmt=fmt,
            segment_seconds=self.config.recording.segment_seconds,
            first_index=first_index,
            fps=int(capture.source_of(camera).get("fps") or 15),
            frame_path=frame,
            video_args=self.video_args(camera),
        )
        process = FfmpegProcess(argv, device.fds)
        run = FfmpegRun(process, staging, fmt, first_index, path_of, frame)
        try:
            run.ensure_links()
            await process.start()
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise CaptureError(f"cannot start ffmpeg: {exc.strerror or exc}") from None
        finally:
            device.release()
        try:
            await self._await_first_data(run, path_of(first_index), timeout)
        except BaseException as exc:
            if not isinstance(exc, CaptureError):  # cancelled: no capture may outlive its caller
                process.kill()
                shutil.rmtree(staging, ignore_errors=True)
            raise
        return run

    async def _await_first_data(self, run: FfmpegRun, first: Path, timeout: float) -> None:
        """Success means data in the first segment: the device delivered a
        frame and the encoder and muxer accepted it."""
        process = run.process
        deadline = time.monotonic() + timeout
        while True:
            if not process.running():
                await process.wait(1.0)
                await asyncio.to_thread(_discard_failed_start, run, first)
                raise self._failure(process)
            if await asyncio.to_thread(_size, first) > 0:
                return
            if time.monotonic() >= deadline:
                await process.stop(2.0)
                await asyncio.to_thread(_discard_failed_start, run, first)
                raise CaptureError(
                    self.sanitize(f"no video from the camera within {timeout:.0f}s: {process.tail() or 'no output'}")
                )
            await asyncio.sleep(0.05)

    def _failure(self, process: FfmpegProcess) -> CaptureError:
        tail = self.sanitize(process.tail() or "no output")
        if "busy" in tail.lower():
            return CameraBusy(f"camera is in use by another process: {tail}")
        return CaptureError(f"ffmpeg exited with code {process.returncode}: {tail}")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _discard_failed_start(run: FfmpegRun, first: Path) -> None:
    """Clean up after a run that never produced video: its empty first file
    would otherwise be listed as a recording, and block the name's reuse."""
    run.finish()
    try:
        if first.stat().st_size == 0:
            first.unlink()
    except FileNotFoundError:
        pass
