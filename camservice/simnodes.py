"""Simulated cameras as device nodes that discovery treats like USB cameras.

A simulated camera is a small JSON file ``state_dir/dev/simN``::

    {"index": 0, "resolution": "640x480", "fps": 15, "pattern": "testsrc2"}

Creating the file is plugging the camera in, removing it is pulling the
cable. The discovery worker watches the folder (inotify: every create and
delete is an event, as udev makes one for every USB plug) and reports
appearances and disappearances through the same code path as V4L2 hot-plug,
so tests and benchmarks exercise the real event flow without hardware.

A node admits one reader at a time, like a V4L2 capture device that is
already streaming: :func:`open_sim_device` takes an exclusive ``flock`` on
the file and fails with ``EBUSY`` when another open file holds it. The lock
belongs to the open file description, so a capture process that inherits
the descriptor (``pass_fds``) holds it for exactly its own lifetime once the
parent closes its copy.

This module is the node format and its lock, in the core because three
parts use it and none may import another: the discovery worker (reads and
resets nodes), the recording worker (:func:`open_sim_device`,
:func:`sim_input_args`) and the CLI (:func:`plug`, :func:`unplug`).
Everything here is blocking file I/O on a tiny folder; async callers run it
in a thread.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from camservice import ffmpeg
from camservice.camera_ids import read_ids

DEV_DIRNAME = "dev"
NODE_PREFIX = "sim"
#: Written by the discovery worker; names the service run that created the nodes.
OWNER_FILE = ".owner"
DEFAULT_RESOLUTION = "640x480"
DEFAULT_FPS = 15
DEFAULT_PATTERN = "testsrc2"
#: lavfi sources that accept ``size`` and ``rate`` options.
PATTERNS = ffmpeg.SIM_PATTERNS
MAX_FPS = ffmpeg.MAX_FPS
#: Formats a simulated camera claims, like a typical UVC webcam.
SIM_FORMATS = ("YUYV", "MJPEG")
_STANDARD_SIZES = ((1920, 1080), (1280, 720), (800, 600), (640, 480), (320, 240), (160, 120))
_STANDARD_RATES = (60, 30, 25, 20, 15, 10, 5)
# "sim0", "sim12"; no leading zeros, so name and index map one to one.
_NODE_NAME = re.compile(r"sim(0|[1-9][0-9]{0,5})")
_RESOLUTION = re.compile(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})")


class SimNodeError(ValueError):
    """A node file or a plug request that does not describe a valid camera."""


class NotPlugged(FileNotFoundError, LookupError):
    """No such simulated camera is plugged in (``errno.ENOENT``)."""

    def __init__(self, what: str):
        super().__init__(errno.ENOENT, "no such simulated camera is plugged in", what)


class DeviceBusy(OSError):
    """The node is held by another reader (errno ``EBUSY``, like a streaming V4L2 device)."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(errno.EBUSY, os.strerror(errno.EBUSY), str(path))


@dataclass(frozen=True)
class SimNode:
    """One simulated camera as read from its node file."""

    index: int
    path: Path  # absolute
    resolution: str
    fps: int
    pattern: str

    @property
    def device(self) -> str:
        return f"sim:{self.index}"

    def source(self) -> dict[str, Any]:
        """``Camera.source`` of this camera: what a capture needs to know."""
        return {
            "kind": "sim",
            "node": str(self.path),
            "size": self.resolution,
            "fps": self.fps,
            "pattern": self.pattern,
        }


# --- paths and names ---------------------------------------------------------------


def dev_dir(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir).expanduser().resolve() / DEV_DIRNAME


def node_path(state_dir: str | os.PathLike, index: int) -> Path:
    return dev_dir(state_dir) / f"{NODE_PREFIX}{index}"


def node_index(name: str) -> int | None:
    """The index of a node file name (``sim3`` -> 3), None for any other name."""
    match = _NODE_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


# --- validation (pure) ---------------------------------------------------------------


def check_resolution(value: Any) -> str:
    match = _RESOLUTION.fullmatch(str(value)) if isinstance(value, str) else None
    if match is None:
        raise SimNodeError(f"resolution must look like 640x480, got {value!r}")
    return value


def check_fps(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_FPS:
        raise SimNodeError(f"fps must be an integer 1-{MAX_FPS}, got {value!r}")
    return value


def check_pattern(value: Any) -> str:
    if value not in PATTERNS:
        raise SimNodeError(f"pattern must be one of {', '.join(PATTERNS)}, got {value!r}")
    return value


def parse_node(path: Path, text: str) -> SimNode:
    """A node from its file name and content; :class:`SimNodeError` if either is wrong."""
    index = node_index(path.name)
    if index is None:
        raise SimNodeError(f"{path.name}: not a simulated camera node name")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SimNodeError(f"{path.name}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SimNodeError(f"{path.name}: expected a JSON object")
    if data.get("index", index) != index:
        raise SimNodeError(f"{path.name}: index {data.get('index')!r} does not match the file name")
    return SimNode(
        index,
        path,
        check_resolution(data.get("resolution", DEFAULT_RESOLUTION)),
        check_fps(data.get("fps", DEFAULT_FPS)),
        check_pattern(data.get("pattern", DEFAULT_PATTERN)),
    )


def sim_capabilities(resolution: str, fps: int) -> tuple[list[str], list[str], dict[str, list[int]]]:
    """Formats, resolutions and frame rates a simulated camera claims.

    Its own mode plus the standard modes below it, as a webcam lists the
    smaller sizes it can scale to.
    """
    width, height = (int(part) for part in check_resolution(resolution).split("x"))
    sizes = {(width, height)} | {(w, h) for w, h in _STANDARD_SIZES if w * h <= width * height}
    resolutions = [f"{w}x{h}" for w, h in sorted(sizes, key=lambda s: (s[0] * s[1], s[0]), reverse=True)]
    rates = sorted({fps} | {r for r in _STANDARD_RATES if r <= fps}, reverse=True)
    return list(SIM_FORMATS), resolutions, {size: list(rates) for size in resolutions}


# --- node files ------------------------------------------------------------------------


def read_node(path: str | os.PathLike) -> SimNode:
    path = Path(path).absolute()
    return parse_node(path, path.read_text())


def list_nodes(state_dir: str | os.PathLike) -> list[SimNode]:
    """Every valid node, by index; invalid files are skipped."""
    nodes = []
    try:
        entries = list(os.scandir(dev_dir(state_dir)))
    except FileNotFoundError:
        return []
    for entry in entries:
        if node_index(entry.name) is None:
            continue
        try:
            nodes.append(read_node(entry.path))
        except (OSError, SimNodeError):
            continue  # vanished meanwhile, or not ours to judge here
    return sorted(nodes, key=lambda n: n.index)


def _write_node(directory: Path, index: int, content: dict[str, Any]) -> bool:
    """Create ``simN`` atomically and exclusively; False if it already exists.

    The content goes to a hidden temporary file that is then hard-linked to
    the final name: ``link`` fails if the name exists (so two concurrent
    pluggers never share an index) and a reader never sees a half-written node.
    """
    temporary = directory / f".{NODE_PREFIX}{index}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    temporary.write_text(json.dumps(content))
    try:
        os.link(temporary, directory / f"{NODE_PREFIX}{index}")
        return True
    except FileExistsError:
        return False
    finally:
        temporary.unlink(missing_ok=True)


def plug(
    state_dir: str | os.PathLike,
    resolution: str | None = None,
    fps: int | None = None,
    pattern: str | None = None,
    index: int | None = None,
) -> int:
    """Plug in a simulated camera; returns its index (the lowest free one unless given).

    Raises :class:`SimNodeError` for bad parameters and ``FileExistsError``
    when an explicit ``index`` is taken.
    """
    resolution = check_resolution(resolution or DEFAULT_RESOLUTION)
    fps = check_fps(DEFAULT_FPS if fps is None else fps)
    pattern = check_pattern(pattern or DEFAULT_PATTERN)
    directory = dev_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True)

    def content(i: int) -> dict[str, Any]:
        return {"index": i, "resolution": resolution, "fps": fps, "pattern": pattern}

    if index is not None:
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise SimNodeError(f"index must be an integer >= 0, got {index!r}")
        if not _write_node(directory, index, content(index)):
            raise FileExistsError(errno.EEXIST, "simulated camera already plugged", f"sim:{index}")
        return index
    taken = {node_index(name) for name in os.listdir(directory)}
    candidate = 0
    while True:
        while candidate in taken:
            candidate += 1
        if _write_node(directory, candidate, content(candidate)):
            return candidate
        taken.add(candidate)  # lost a race with another plug: take the next one


def resolve_index(state_dir: str | os.PathLike, index_or_id: int | str) -> int:
    """The node index named by ``3``, ``"3"``, ``"sim:3"``, ``"sim3"`` or a camera id.

    A camera id (``camera5``) is looked up in the id map discovery persists in
    ``state_dir``; :class:`NotPlugged` when it names no simulated camera.
    """
    if isinstance(index_or_id, int) and not isinstance(index_or_id, bool):
        if index_or_id < 0:
            raise NotPlugged(str(index_or_id))
        return index_or_id
    text = str(index_or_id).strip()
    for candidate in (text, text.removeprefix("sim:")):
        if candidate.isdigit():
            return int(candidate)
    index = node_index(text) if text.startswith(NODE_PREFIX) else None
    if index is not None:
        return index
    for key, camera_id in read_ids(state_dir).items():
        if camera_id == text and key.startswith("sim:"):
            return int(key.removeprefix("sim:"))
    raise NotPlugged(str(index_or_id))


def unplug(state_dir: str | os.PathLike, index_or_id: int | str) -> int:
    """Pull a simulated camera's cable; returns its index.

    A reader holding the node keeps its descriptor (of a now nameless file),
    as a capture of a yanked USB camera does until it notices.
    :class:`NotPlugged` (a ``FileNotFoundError`` and a ``LookupError``) when
    no such camera is plugged.
    """
    index = resolve_index(state_dir, index_or_id)
    try:
        node_path(state_dir, index).unlink()
    except FileNotFoundError:
        raise NotPlugged(f"sim:{index}") from None
    return index


def reset(
    state_dir: str | os.PathLike,
    count: int,
    resolution: str | None = None,
    fps: int | None = None,
    owner: str | None = None,
) -> list[int]:
    """Remove every node (and leftover temporary files), then plug ``sim0`` ... ``sim{count-1}``.

    ``owner`` is recorded in ``dev/.owner`` so that :func:`prepare_run` can
    tell a restarted worker of the same service run from a new run.
    """
    directory = dev_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(directory):
        if node_index(entry.name) is not None or (entry.name.startswith(".") and entry.name.endswith(".tmp")):
            Path(entry.path).unlink(missing_ok=True)
    indexes = [plug(state_dir, resolution, fps, index=i) for i in range(count)]
    if owner is not None:
        temporary = directory / f"{OWNER_FILE}.{os.getpid()}.tmp"
        temporary.write_text(owner)
        os.replace(temporary, directory / OWNER_FILE)
    return indexes


def prepare_run(state_dir: str | os.PathLike, count: int, resolution: str | None, fps: int | None, owner: str) -> bool:
    """Make the nodes a starting discovery worker should find; True if it reset them.

    A new service run (``owner`` differs from the recorded one) starts from
    exactly ``count`` fresh nodes, dropping stale ones of a previous run. A
    worker restarted within the same run keeps the nodes as they are, so
    cameras plugged or unplugged meanwhile, and the locks of running
    captures, survive a discovery crash.
    """
    try:
        recorded = (dev_dir(state_dir) / OWNER_FILE).read_text()
    except FileNotFoundError:
        recorded = None
    if recorded == owner:
        return False
    reset(state_dir, count, resolution, fps, owner)
    return True


# --- readers ---------------------------------------------------------------------------


def open_sim_device(path: str | os.PathLike) -> int:
    """Open a node for capture, as the only reader; returns the file descriptor.

    Raises :class:`DeviceBusy` (``errno.EBUSY``, "Device or resource busy")
    while another open file holds the node, ``FileNotFoundError`` when it is
    not plugged, and ``OSError(ENODEV)`` when it was unplugged while opening.
    The descriptor is close-on-exec; hand it to a child with ``pass_fds``
    and close the parent's copy, so the lock ends with the child.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_nlink == 0:  # unplugged between open and lock
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), str(path))
    except BlockingIOError:
        os.close(fd)
        raise DeviceBusy(path) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def sim_input_args(source: dict[str, Any]) -> list[str]:
    """ffmpeg input arguments for a simulated camera's ``Camera.source``
    (:func:`camservice.ffmpeg.lavfi_input`, after this module's own checks)."""
    if source.get("kind") != "sim":
        raise SimNodeError(f"not a simulated camera source: {source.get('kind')!r}")
    size = check_resolution(source.get("size", DEFAULT_RESOLUTION))
    fps = check_fps(source.get("fps", DEFAULT_FPS))
    pattern = check_pattern(source.get("pattern", DEFAULT_PATTERN))
    return ffmpeg.lavfi_input(pattern, size, fps)
