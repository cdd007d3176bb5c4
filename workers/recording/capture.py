"""ffmpeg processes: command lines, lifetime, and what they leave on disk.

Everything that knows ffmpeg's options lives here; :mod:`.backend` strings
it together into snapshots and capture runs.

Process lifetime
    Every ffmpeg is started from the event-loop thread with
    ``PR_SET_PDEATHSIG = SIGINT`` and in its own process group:

    * the kernel sends the death signal when the *thread* that forked the
      child ends, so forking from a thread-pool thread (``asyncio.to_thread``)
      would interrupt the capture as soon as that idle thread is retired;
    * SIGINT rather than SIGKILL because SIGINT is ffmpeg's "finish up":
      it writes the last fragment and the trailer and exits, so a killed
      worker still leaves finalised files; the restarted worker kills any
      that did not exit (see ``sessions.RecordingManager.recover``);
    * its own process group keeps a Ctrl-C in a terminal or a signal sent
      to the worker's group from stopping captures behind the worker's back.

    Stopping is SIGINT, then SIGKILL after a timeout. stdin is not used.

stderr
    Read continuously (a full pipe would block ffmpeg) into a ring buffer of
    the last lines, which failure reasons and logs quote after
    :func:`sanitize` strips paths outside the storage folders.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from camservice import ffmpeg
from camservice.cameras import Camera
from camservice.process import die_with_parent

from . import simdev

#: stderr lines kept per process for failure reasons.
TAIL_LINES = 20
#: Frames per second of the latest-frame JPEG a recording keeps refreshed.
PREVIEW_FPS = 4


class CaptureError(Exception):
    """ffmpeg could not do what was asked; ``reason`` is safe to show a client."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class CameraGone(CaptureError):
    """The device (or simulated camera's node) no longer exists."""


class CameraBusy(CaptureError):
    """Another process holds the device."""


# --- device access ------------------------------------------------------------------


class DeviceInput:
    """ffmpeg input arguments for one camera, plus the fds the child must inherit.

    For a simulated camera the fd holds the camera's lock; once ffmpeg has
    been started with it, :meth:`release` closes this process's copy so that
    the lock ends when (and only when) ffmpeg exits.
    """

    def __init__(self, args: list[str], fds: tuple[int, ...] = ()):
        self.args = args
        self.fds = fds

    def release(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = ()


def source_of(camera: Camera) -> dict[str, Any]:
    source = dict(camera.source or {})
    source.setdefault("size", camera.resolution)
    source.setdefault("fps", camera.fps)
    return source


def device_path(camera: Camera) -> str | None:
    """The file whose existence means "the camera is plugged in"."""
    source = camera.source or {}
    if source.get("kind") == "sim":
        return source.get("node")
    if source.get("kind") == "v4l2":
        return source.get("path") or camera.device
    return None


def camera_present(camera: Camera) -> bool:
    path = device_path(camera)
    return path is not None and os.path.exists(path)


def open_input(camera: Camera) -> DeviceInput:
    """Prepare to open ``camera``; raises CameraGone, CameraBusy or CaptureError."""
    source = source_of(camera)
    kind = source.get("kind")
    if kind == "sim":
        node = source.get("node")
        if not node or not os.path.exists(node):
            raise CameraGone("camera disconnected")
        try:
            args = simdev.sim_input_args(source)
        except ValueError as exc:  # the simulator refuses the source description
            raise CaptureError(f"bad simulated camera source: {exc}") from None
        try:
            fd = simdev.open_sim_device(node)
        except OSError as exc:
            if simdev.is_busy(exc):
                raise CameraBusy("camera is in use by another process") from None
            if simdev.is_gone(exc):
                raise CameraGone("camera disconnected") from None
            raise CaptureError(f"cannot open simulated camera: {exc.strerror or exc}") from None
        return DeviceInput(args, (fd,))
    if kind == "v4l2":
        path = source.get("path") or camera.device
        if not os.path.exists(path):
            raise CameraGone("camera disconnected")
        try:
            return DeviceInput(
                ffmpeg.v4l2_input(path, source.get("input_format"), source.get("size"), source.get("fps"), queue=64)
            )
        except ValueError as exc:
            raise CaptureError(f"bad camera source: {exc}") from None
    raise CaptureError("camera has no capture source")


# --- command lines ------------------------------------------------------------------

_COMMON = ["-hide_banner", "-nostdin", "-nostats", "-loglevel", "warning"]

_CONTAINERS = {
    # Fragmented MP4: every keyframe closes a self-contained fragment and the
    # moov is written up front, so a file cut short by SIGKILL or a power
    # loss plays up to its last fragment. flush_packets makes each fragment
    # reach the file at once instead of sitting in a 32 KiB I/O buffer.
    "mp4": ("mp4", "movflags=+frag_keyframe+empty_moov+default_base_moof:flush_packets=1"),
    # Matroska is readable up to its last complete cluster without cues.
    "mkv": ("matroska", "flush_packets=1"),
}


def snapshot_argv(exe: str, device: DeviceInput, target: Path, fmt: str, warmup_frames: int = 0) -> list[str]:
    """Grab one frame from a camera nobody is reading."""
    video_filter = []
    if warmup_frames:
        # V4L2 cameras deliver their first frames before exposure settles.
        video_filter = ["-vf", f"select=gte(n\\,{warmup_frames})"]
    return [
        exe,
        *_COMMON,
        *device.args,
        *video_filter,
        "-frames:v",
        "1",
        *_image_output(fmt),
        "-update",
        "1",
        "-y",
        str(target),
    ]


def convert_argv(exe: str, source: Path, target: Path, fmt: str) -> list[str]:
    """Re-encode a still image (the recording's latest frame) as ``fmt``."""
    return [exe, *_COMMON, "-i", str(source), "-frames:v", "1", *_image_output(fmt), "-update", "1", "-y", str(target)]


def _image_output(fmt: str) -> list[str]:
    if fmt == "png":
        return ["-f", "image2", "-c:v", "png"]
    return ["-f", "image2", "-c:v", "mjpeg", "-q:v", "2"]


def encode_args(fps: int) -> list[str]:
    """H.264 for a raw camera. A one-second GOP bounds both what a crash can
    lose (one fragment) and how late a time-based segment cut may come."""
    return [*ffmpeg.H264_ARGS, "-g", str(max(1, int(fps or 15)))]


def recording_argv(
    exe: str,
    device: DeviceInput,
    *,
    staging: Path,
    fmt: str,
    segment_seconds: int,
    first_index: int,
    fps: int,
    frame_path: Path,
    video_args: list[str] | None = None,
) -> list[str]:
    """One capture run: H.264 segments through the segment muxer, plus a latest-frame JPEG.

    Segments are written to ``staging/segNNN.ext``; those names are symlinks
    to the final files (see :mod:`.backend`). ``video_args`` default to
    :func:`encode_args`; a source that is H.264 already passes ``-c:v copy``.
    """
    container, options = _CONTAINERS[fmt]
    return [
        # ffmpeg's main thread notices SIGINT only between waits of
        # -stats_period (0.5 s by default): shorter makes a stop 5x quicker.
        exe,
        *_COMMON,
        "-stats_period",
        "0.02",
        *device.args,
        "-map",
        "0:v",
        *(video_args if video_args is not None else encode_args(fps)),
        "-f",
        "segment",
        "-segment_time",
        str(segment_seconds),
        "-segment_format",
        container,
        "-segment_format_options",
        options,
        "-segment_start_number",
        str(first_index),
        "-reset_timestamps",
        "1",
        "-segment_list",
        str(staging / "segments.csv"),
        "-segment_list_type",
        "csv",
        str(staging / f"seg%03d.{fmt}"),
        *latest_frame_output(frame_path),
    ]


def latest_frame_output(frame_path: Path) -> list[str]:
    """Output options of the latest-frame JPEG (a recording's, or a preview's).

    Snapshots of a recording camera and the live preview copy it; it is
    replaced atomically so a reader never sees half a picture.
    """
    return [
        "-map",
        "0:v",
        "-vf",
        f"fps={PREVIEW_FPS}",
        "-c:v",
        "mjpeg",
        "-q:v",
        "2",
        "-f",
        "image2",
        "-update",
        "1",
        "-atomic_writing",
        "1",
        str(frame_path),
    ]


def staged_segment(staging: Path, index: int, fmt: str) -> Path:
    """The name the segment muxer writes segment ``index`` to (matches ``seg%03d``)."""
    return staging / f"seg{index:03d}.{fmt}"


# --- sanitising -----------------------------------------------------------------------

_PATH = re.compile(r"(?<![\w.])/[^\s'\":,]+")


def sanitize(text: str, allowed: Iterable[Path]) -> str:
    """Replace absolute paths outside ``allowed`` folders (and /dev) by their base name."""
    roots = [str(p).rstrip("/") + "/" for p in allowed]

    def fix(match: re.Match) -> str:
        path = match.group(0)
        if path.startswith("/dev/") or any(path.startswith(root) for root in roots):
            return path
        return os.path.basename(path.rstrip("/")) or "?"

    return _PATH.sub(fix, text)


# --- processes ---------------------------------------------------------------------------


def _child_setup(parent: int) -> None:
    """Runs in the forked child before exec: no imports, no allocations to speak of."""
    # Its own process group: a Ctrl-C at a terminal goes to the service, not
    # straight to ffmpeg; the worker stops it (subprocess's process_group= is 3.11+).
    os.setpgid(0, 0)
    die_with_parent(signal.SIGINT)  # SIGINT: ffmpeg finalises its file before exiting
    if os.getppid() != parent:  # the worker died between fork and prctl
        os.kill(os.getpid(), signal.SIGKILL)


class FfmpegProcess:
    """One ffmpeg child: started from the loop thread, stderr kept, stopped gracefully."""

    def __init__(self, argv: list[str], pass_fds: tuple[int, ...] = (), tail_lines: int = TAIL_LINES):
        self.argv = argv
        self.pass_fds = pass_fds
        self.lines: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None

    async def start(self) -> None:
        parent = os.getpid()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=self.pass_fds,
            preexec_fn=lambda: _child_setup(parent),
        )
        self._reader = asyncio.ensure_future(self._read_stderr())

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                self.lines.append(text)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after ``timeout`` seconds."""
        if self.proc is None:
            return None
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            return None
        if self._reader is not None:
            # EOF on stderr follows exit unless a grandchild holds the pipe.
            await asyncio.wait({self._reader}, timeout=1.0)
        return code

    async def stop(self, timeout: float = 5.0) -> int | None:
        """SIGINT (ffmpeg finalises its outputs), SIGKILL after ``timeout``."""
        if not self.running():
            return await self.wait(1.0)
        self._signal(signal.SIGINT)
        code = await self.wait(timeout)
        if code is None:
            self._signal(signal.SIGKILL)
            code = await self.wait(5.0)
        return code

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        try:
            if self.proc is not None and self.proc.returncode is None:
                self.proc.send_signal(sig)
        except ProcessLookupError:
            pass

    def tail(self, lines: int = 5) -> str:
        return " | ".join(list(self.lines)[-lines:])


async def run_once(argv: list[str], timeout: float, pass_fds: tuple[int, ...] = (), on_started=None) -> FfmpegProcess:
    """Run a short ffmpeg job to completion; raises CaptureError on failure or timeout.

    ``on_started`` runs right after the spawn (used to drop this process's
    copy of a device lock fd).
    """
    process = FfmpegProcess(argv, pass_fds)
    try:
        await process.start()
    except OSError as exc:
        raise CaptureError(f"cannot start ffmpeg: {exc.strerror or exc}") from None
    finally:
        if on_started is not None:
            on_started()
    try:
        code = await process.wait(timeout)
    except BaseException:  # cancelled (caller's timeout, shutdown): the device must not stay held
        process.kill()
        raise
    if code is None:
        await process.stop(1.0)
        raise CaptureError(f"ffmpeg did not finish within {timeout:.0f}s: {process.tail()}")
    if code != 0:
        raise CaptureError(f"ffmpeg exited with code {code}: {process.tail() or 'no output'}")
    return process
