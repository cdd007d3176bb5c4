"""Finding ffmpeg and reading media files back with it.

ffmpeg comes from ``media.ffmpeg_path`` when configured, else from the
system ``PATH``, else from the ``imageio-ffmpeg`` wheel, so that
``pip install`` alone gives a working service. The wheel ships no ffprobe,
so :func:`probe` reads what ``ffmpeg -i`` prints; that output has been
stable for over a decade and carries everything we need (duration,
resolution, codec).
"""

from __future__ import annotations

import asyncio
import functools
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


class FFmpegNotFound(RuntimeError):
    pass


@functools.cache
def locate(configured: str | None = None) -> str:
    """The ffmpeg executable to run."""
    if configured:
        if not Path(configured).is_file():
            raise FFmpegNotFound(f"media.ffmpeg_path: {configured} does not exist")
        return configured
    system = shutil.which("ffmpeg")
    if system:
        return system
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        raise FFmpegNotFound("no ffmpeg on PATH and the imageio-ffmpeg wheel has none") from exc


@dataclass(frozen=True)
class MediaInfo:
    duration: float | None  # seconds; None for still images or unknown
    width: int | None
    height: int | None
    codec: str | None
    container: str | None

    @property
    def resolution(self) -> str | None:
        return f"{self.width}x{self.height}" if self.width and self.height else None


_DURATION = re.compile(r"Duration: (\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
_VIDEO = re.compile(r"Stream #\S+.*?: Video: (\w+)[^\n]*?, (\d{2,5})x(\d{2,5})")
_INPUT = re.compile(r"Input #0, ([\w,]+), from")


def parse_probe(text: str) -> MediaInfo:
    """Parse the banner ``ffmpeg -i FILE`` writes to stderr."""
    duration = None
    match = _DURATION.search(text)
    if match:
        hours, minutes, seconds = match.groups()
        duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    width = height = codec = None
    match = _VIDEO.search(text)
    if match:
        codec, width, height = match.group(1), int(match.group(2)), int(match.group(3))
    container = None
    match = _INPUT.search(text)
    if match:
        container = match.group(1)
    return MediaInfo(duration, width, height, codec, container)


# --- camera inputs -------------------------------------------------------------------
#
# The one place that turns a camera into ffmpeg input options: the recording
# worker runs them itself, and the MediaMTX backend puts them into a path's
# runOnDemand command line, so every value is checked against a strict
# pattern before it becomes an argument.

#: lavfi test sources a simulated camera may show.
SIM_PATTERNS = ("testsrc2", "testsrc", "smptebars", "smptehdbars", "rgbtestsrc", "yuvtestsrc")
MAX_FPS = 240
_SIZE = re.compile(r"[1-9]\d{0,4}x[1-9]\d{0,4}")
_FORMAT = re.compile(r"[A-Za-z0-9_]+")


def _check_size(size: object) -> str:
    if not isinstance(size, str) or not _SIZE.fullmatch(size):
        raise ValueError(f"size {size!r} is not WIDTHxHEIGHT")
    return size


def _check_fps(fps: object) -> int:
    if isinstance(fps, float) and fps.is_integer():
        fps = int(fps)
    if isinstance(fps, bool) or not isinstance(fps, int) or not 0 < fps <= MAX_FPS:
        raise ValueError(f"fps {fps!r} is not an integer in 1-{MAX_FPS}")
    return fps


def lavfi_input(pattern: str, size: str, fps: int) -> list[str]:
    """Input options of a simulated camera: a lavfi test source paced in real time.

    ``-re``: without it lavfi produces frames as fast as the encoder takes
    them, and a 10 s recording would take a fraction of a second.
    """
    if pattern not in SIM_PATTERNS:
        raise ValueError(f"pattern {pattern!r} is not one of {', '.join(SIM_PATTERNS)}")
    return ["-re", "-f", "lavfi", "-i", f"{pattern}=size={_check_size(size)}:rate={_check_fps(fps)}"]


def v4l2_input(
    device: str,
    input_format: str | None = None,
    size: str | None = None,
    fps: int | None = None,
    queue: int | None = None,
) -> list[str]:
    """Input options of a V4L2 device; unset values are left to the driver."""
    if not isinstance(device, str) or not device.startswith("/"):
        raise ValueError(f"{device!r} is not a device path")
    args = ["-f", "v4l2"]
    if queue:
        args += ["-thread_queue_size", str(int(queue))]
    if input_format:
        if not _FORMAT.fullmatch(str(input_format)):
            raise ValueError(f"input_format {input_format!r} is not an ffmpeg format name")
        args += ["-input_format", str(input_format)]
    if size:
        args += ["-video_size", _check_size(size)]
    if fps:
        args += ["-framerate", str(_check_fps(fps))]
    return args + ["-i", device]


#: H.264 as every reader takes it (RTSP, WebRTC, HLS, browsers, players):
#: the cheapest preset, no frame reordering (zerolatency: no B-frames, no
#: look-ahead), and 4:2:0, which a camera's 4:2:2 or RGB would not be.
H264_ARGS = ("-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-pix_fmt", "yuv420p")


class ProbeError(RuntimeError):
    pass


def probe(path: str | Path, ffmpeg: str | None = None, timeout: float = 10.0) -> MediaInfo:
    """Read a media file's duration and video stream (blocking: call from a thread)."""
    exe = ffmpeg or locate()
    try:
        proc = subprocess.run(
            [exe, "-hide_banner", "-nostdin", "-i", str(path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            errors="replace",
        )
    except subprocess.TimeoutExpired:
        raise ProbeError(f"ffmpeg took over {timeout}s to read {Path(path).name}") from None
    info = parse_probe(proc.stderr)
    if info.codec is None:
        last = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise ProbeError(f"{Path(path).name}: no video stream ({last[0]})")
    return info


async def probe_async(path: str | Path, ffmpeg: str | None = None, timeout: float = 10.0) -> MediaInfo:
    return await asyncio.to_thread(probe, path, ffmpeg, timeout)
