"""Real V4L2 cameras: enumerate the nodes, keep the capture ones, probe their modes.

Probing uses the V4L2 ioctls through linuxpy's ctypes mirror of
``<linux/videodev2.h>`` (``linuxpy.video.raw`` structs and ``IOC`` numbers),
not ``v4l2-ctl --list-formats-ext`` parsing, because

* it needs no external binary: v4l-utils is a separate system package,
  often missing in containers and on CI, while linuxpy is pure Python;
* a probe is one ``open`` and a few dozen ioctls (about a millisecond), not a
  fork/exec per device;
* the kernel answers in integers and structs; v4l2-ctl's text layout has
  changed between releases.

Only linuxpy's raw layer is used, not ``linuxpy.video.device.Device``: the
latter drops pixel formats it does not know and converts frame intervals
through floats, and its API has moved between releases, while the raw layer
is the kernel ABI. linuxpy is imported lazily; without it cameras are still
found through udev, with empty capabilities (logged).

Pipeline, where everything but enumeration and the ioctls is a pure function
tested from recorded samples in ``tests/data/v4l2/``::

    enumerate_udev() / enumerate_sysfs()  -> [RawNode]         blocking
    probe(path)                           -> probe record      blocking (ioctls)
    describe(node, record, error)         -> Found | None      pure
    capabilities(record)                  -> Capabilities      pure
    choose_mode(modes)                    -> Mode | None       pure

A *probe record* is a JSON-able dict: ``driver``, ``card``, ``bus_info``,
``capabilities``, ``device_caps`` (QUERYCAP) and ``formats``: for each
VIDEO_CAPTURE format (ENUM_FMT) its ``fourcc``, ``description`` and
``sizes``; a size is ``{"width", "height", "intervals"}`` (ENUM_FRAMESIZES,
ENUM_FRAMEINTERVALS) where ``intervals`` is a list of ``[numerator,
denominator]`` seconds per frame, or ``{"min", "max", "step"}`` for a
stepwise range. A stepwise frame size carries its range in ``stepwise`` and
its intervals as probed at the largest size.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .registry import V4L2, Found

# <linux/videodev2.h> capability bits (kernel ABI).
CAP_VIDEO_CAPTURE = 0x00000001
CAP_VIDEO_CAPTURE_MPLANE = 0x00001000
CAP_META_CAPTURE = 0x00800000
CAP_DEVICE_CAPS = 0x80000000

#: V4L2 fourcc -> ffmpeg ``-input_format`` for the v4l2 demuxer.
FFMPEG_INPUT_FORMATS = {
    "MJPG": "mjpeg",
    "JPEG": "mjpeg",
    "YUYV": "yuyv422",
    "UYVY": "uyvy422",
    "NV12": "nv12",
    "YU12": "yuv420p",
    "H264": "h264",
    "GREY": "gray",
    "RGB3": "rgb24",
    "BGR3": "bgr24",
}
#: V4L2 fourcc -> name in the API's ``formats`` (as the contract's example spells them).
API_FORMAT_NAMES = {"MJPG": "MJPEG", "JPEG": "MJPEG"}
#: Preference between modes of equal size and rate: compressed first (USB bandwidth).
_FORMAT_PREFERENCE = {"MJPG": 3, "JPEG": 3, "H264": 2, "YUYV": 1}
#: The mode chosen by default stays at or below this, to keep encoding affordable.
MAX_DEFAULT_AREA = 1920 * 1080
#: Below this a mode is only chosen when the camera offers nothing faster.
MIN_DEFAULT_FPS = 15
_COMMON_SIZES = (
    (3840, 2160),
    (2560, 1440),
    (1920, 1080),
    (1600, 1200),
    (1280, 960),
    (1280, 720),
    (1024, 768),
    (800, 600),
    (640, 480),
    (640, 360),
    (352, 288),
    (320, 240),
    (176, 144),
    (160, 120),
)
_COMMON_RATES = (120, 90, 60, 50, 30, 25, 24, 20, 15, 10, 5, 1)
_ENUM_LIMIT = {"formats": 64, "sizes": 256, "intervals": 64}


class ProbeUnavailable(RuntimeError):
    """linuxpy is not installed: capabilities cannot be read."""


@dataclass(frozen=True)
class RawNode:
    """A ``video4linux`` node before probing: what udev or sysfs tells about it."""

    devname: str  # /dev/video0
    devpath: str = ""  # sysfs path below /sys: /devices/.../video4linux/video0
    index: str | None = None  # sysfs "index": which node of its interface
    name: str | None = None  # sysfs "name": the driver's card name
    properties: dict[str, str] = field(default_factory=dict)  # udev database


@dataclass(frozen=True)
class Mode:
    fourcc: str
    width: int
    height: int
    fps: tuple[int, ...]  # descending

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass
class Capabilities:
    formats: list[str]
    resolutions: list[str]
    frame_rates: dict[str, list[int]]
    modes: list[Mode]


# --- pure functions -------------------------------------------------------------------


def fourcc_text(value: int) -> str:
    """``0x47504A4D`` -> ``"MJPG"`` (the big-endian flag bit is dropped)."""
    value &= 0x7FFFFFFF
    return "".join(chr((value >> shift) & 0xFF) for shift in (0, 8, 16, 24))


def effective_caps(record: dict[str, Any]) -> int:
    """What this node can do: ``device_caps`` when the driver fills it in."""
    if record.get("capabilities", 0) & CAP_DEVICE_CAPS:
        return record.get("device_caps", 0)
    return record.get("capabilities", 0)


def is_capture(record: dict[str, Any]) -> bool:
    """A video capture node (a UVC camera's metadata node is not one)."""
    return bool(effective_caps(record) & CAP_VIDEO_CAPTURE)


def udev_says_capture(properties: dict[str, str]) -> bool | None:
    """What udev's v4l_id recorded; None when udev has no record of this node."""
    caps = properties.get("ID_V4L_CAPABILITIES")
    if caps is None:
        return None
    return ":capture:" in caps


def _unescape_udev(text: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def product_name(node: RawNode, record: dict[str, Any] | None = None) -> str:
    """The camera's product name, from the best source available."""
    props = node.properties
    candidates = [
        props.get("ID_V4L_PRODUCT"),
        (record or {}).get("card"),
        node.name,
        _unescape_udev(props["ID_MODEL_ENC"]) if props.get("ID_MODEL_ENC") else None,
        props.get("ID_MODEL", "").replace("_", " "),
    ]
    return next((c.strip() for c in candidates if c and c.strip()), "Camera")


def stable_keys(node: RawNode) -> tuple[str, str | None]:
    """The camera's stable key, and an alternative for when two devices share it.

    * ``by-id:`` bus, serial and node index, like udev's ``/dev/v4l/by-id``
      link, when the device reports a serial number (``ID_SERIAL_SHORT``):
      the camera keeps its id on any port;
    * else ``by-path:`` the port (``ID_PATH``) and node index, like
      ``/dev/v4l/by-path``: serial-less cameras keep their id per port;
    * without a udev database (containers), ``sysfs:`` the parent device's
      sysfs path and node index, which is the same port information;
    * a virtual device (v4l2loopback...) has no port: ``dev:`` its node name,
      which such drivers fix by module parameter.

    The alternative is the port-based key, used when another present camera
    claims the same serial.
    """
    props = node.properties
    index = node.index if node.index is not None else "0"
    devpath = props.get("DEVPATH") or node.devpath
    if props.get("ID_PATH"):
        by_port = f"by-path:{props['ID_PATH']}-video-index{index}"
    elif devpath and not devpath.startswith("/devices/virtual/"):
        parent = devpath.rsplit("/video4linux/", 1)[0]
        by_port = f"sysfs:{parent}-video-index{index}"
    else:
        by_port = f"dev:{node.devname}"
    if props.get("ID_SERIAL_SHORT") and props.get("ID_SERIAL"):
        bus = props.get("ID_BUS", "usb")
        return f"by-id:{bus}-{props['ID_SERIAL']}-video-index{index}", by_port
    return by_port, None


def _fps(interval: list[int] | tuple[int, int]) -> int | None:
    """Whole frames per second of an interval (seconds per frame).

    NTSC-style rates count as the integer they approximate (1001/30000 -> 30);
    other fractions round down (2/15 -> 7), so a camera is never claimed
    to deliver more than it does.
    """
    numerator, denominator = interval
    if numerator <= 0 or denominator <= 0:
        return None
    rate = denominator / numerator
    nearest = round(rate)
    return max(1, nearest if abs(rate - nearest) < 0.05 else int(rate))


def _rates(intervals: Any) -> list[int]:
    """Frame rates (descending, whole numbers) of a size's ``intervals``."""
    if isinstance(intervals, dict):  # stepwise: the usual rates inside the range
        fastest, slowest = _fps(intervals.get("min", [0, 0])), _fps(intervals.get("max", [0, 0]))
        if fastest is None:
            return []
        slowest = slowest or 1
        rates = {r for r in _COMMON_RATES if slowest <= r <= fastest} | {fastest}
    else:
        rates = {rate for rate in (_fps(i) for i in intervals or []) if rate}
    return sorted(rates, reverse=True)


def _sizes(size: dict[str, Any]) -> list[tuple[int, int]]:
    """The sizes one ``sizes`` entry stands for."""
    stepwise = size.get("stepwise")
    if not stepwise:
        return [(size["width"], size["height"])]
    found = {(stepwise["max_width"], stepwise["max_height"])}
    for width, height in _COMMON_SIZES:
        if not (
            stepwise["min_width"] <= width <= stepwise["max_width"]
            and stepwise["min_height"] <= height <= stepwise["max_height"]
        ):
            continue
        step_w, step_h = max(1, stepwise.get("step_width", 1)), max(1, stepwise.get("step_height", 1))
        if (width - stepwise["min_width"]) % step_w == 0 and (height - stepwise["min_height"]) % step_h == 0:
            found.add((width, height))
    return sorted(found, key=lambda s: (s[0] * s[1], s[0]), reverse=True)


def capabilities(record: dict[str, Any]) -> Capabilities:
    """Formats, resolutions (largest first) and frame rates per resolution of a probe record."""
    formats: list[str] = []
    modes: list[Mode] = []
    rates_by_size: dict[tuple[int, int], set[int]] = {}
    for fmt in record.get("formats", []):
        fourcc = fmt["fourcc"]
        api_name = API_FORMAT_NAMES.get(fourcc, fourcc.strip())
        if api_name not in formats:
            formats.append(api_name)
        for size in fmt.get("sizes", []):
            rates = _rates(size.get("intervals"))
            for width, height in _sizes(size):
                rates_by_size.setdefault((width, height), set()).update(rates)
                modes.append(Mode(fourcc, width, height, tuple(rates)))
    ordered = sorted(rates_by_size, key=lambda s: (s[0] * s[1], s[0]), reverse=True)
    resolutions = [f"{w}x{h}" for w, h in ordered]
    frame_rates = {f"{w}x{h}": sorted(rates_by_size[(w, h)], reverse=True) for w, h in ordered}
    return Capabilities(formats, resolutions, frame_rates, modes)


def choose_mode(modes: list[Mode]) -> Mode | None:
    """The capture mode to use by default.

    In order of importance: a format ffmpeg can read, at least
    :data:`MIN_DEFAULT_FPS` (when nothing reaches it: the highest rate), at
    most :data:`MAX_DEFAULT_AREA` (else the smallest above it), the largest
    size, the highest rate, compressed formats over raw ones. A typical
    webcam gets MJPEG 1920x1080 at 30 rather than YUYV 1920x1080 at 5.
    """
    if not modes:
        return None

    def score(mode: Mode) -> tuple:
        area, fps = mode.width * mode.height, max(mode.fps, default=0)
        within, fast = area <= MAX_DEFAULT_AREA, fps >= MIN_DEFAULT_FPS
        return (
            mode.fourcc in FFMPEG_INPUT_FORMATS,
            fast,
            0 if fast else fps,
            within,
            area if within else -area,
            fps,
            _FORMAT_PREFERENCE.get(mode.fourcc, 0),
        )

    return max(modes, key=score)


def describe(node: RawNode, record: dict[str, Any] | None, error: str | None = None) -> Found | None:
    """What a node is: a camera (``Found``), or None for anything else.

    ``record`` is the probe record, or None when probing failed with
    ``error`` or could not be tried (no linuxpy: ``error`` None). A node udev
    knows as a capture device but that cannot be probed is a camera in
    ``ERROR`` (typically: no permission); one that was not probed is
    ``CONNECTED`` with unknown capabilities. A node whose kind nobody can
    tell is not reported.
    """
    if record is not None:
        capture = is_capture(record)
    else:
        capture = udev_says_capture(node.properties)
    if not capture:
        return None
    key, alt_key = stable_keys(node)
    found = Found(key=key, device=node.devname, kind=V4L2, name=product_name(node, record), alt_key=alt_key)
    if record is None:
        found.error = error
        found.source = {"kind": "v4l2", "path": node.devname}
        return found
    caps = capabilities(record)
    mode = choose_mode(caps.modes)
    found.formats, found.resolutions, found.frame_rates = caps.formats, caps.resolutions, caps.frame_rates
    found.source = {"kind": "v4l2", "path": node.devname}
    if mode is not None:
        found.resolution, found.fps = mode.size, max(mode.fps, default=0)
        found.source.update(input_format=FFMPEG_INPUT_FORMATS.get(mode.fourcc), size=mode.size, fps=found.fps)
    return found


def probe_error_text(exc: OSError) -> str:
    """A client-safe description of a probe failure."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (the service user needs access to the device, e.g. the 'video' group)"
    return exc.strerror or str(exc)


# --- blocking: enumeration -------------------------------------------------------------


def enumerate_udev() -> list[RawNode]:
    """Every ``/dev/video*`` node as libudev sees it (raises ImportError/OSError without libudev)."""
    import pyudev

    nodes = []
    for device in pyudev.Context().list_devices(subsystem="video4linux"):
        if not device.device_node or not device.sys_name.startswith("video"):
            continue  # radio*, vbi*, v4l-subdev*, v4l-touch*: never cameras
        attributes = device.attributes
        nodes.append(
            RawNode(
                devname=device.device_node,
                devpath=device.device_path,
                index=_attribute(attributes, "index"),
                name=_attribute(attributes, "name"),
                properties={key: device.properties[key] for key in device.properties},
            )
        )
    return nodes


def _attribute(attributes, name: str) -> str | None:
    try:
        return attributes.asstring(name).strip()
    except (KeyError, UnicodeDecodeError, OSError):
        return None


def enumerate_sysfs(sys_root: str | os.PathLike = "/sys", dev_root: str | os.PathLike = "/dev") -> list[RawNode]:
    """Every ``video*`` node from sysfs alone (no libudev, no udev database)."""
    sys_root, dev_root = Path(sys_root), Path(dev_root)
    base = sys_root / "class" / "video4linux"
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    nodes = []
    for name in names:
        devname = dev_root / name
        if not name.startswith("video") or not devname.exists():
            continue
        entry = base / name
        real = Path(os.path.realpath(entry))
        try:
            devpath = "/" + str(real.relative_to(sys_root.resolve()))
        except ValueError:
            devpath = ""
        nodes.append(
            RawNode(
                devname=str(devname),
                devpath=devpath,
                index=_read_text(entry / "index"),
                name=_read_text(entry / "name"),
            )
        )
    return nodes


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


# --- blocking: probing ------------------------------------------------------------------


def probe(path: str) -> dict[str, Any]:
    """The probe record of one node (blocking ioctls; run in a thread).

    Raises :class:`ProbeUnavailable` without linuxpy and ``OSError`` when the
    node cannot be opened or queried.
    """
    try:
        from linuxpy.ioctl import ioctl
        from linuxpy.video import raw
    except ImportError as exc:
        raise ProbeUnavailable("linuxpy is not installed") from exc
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        cap = raw.v4l2_capability()
        ioctl(fd, raw.IOC.QUERYCAP, cap)
        record: dict[str, Any] = {
            "driver": _c_text(cap.driver),
            "card": _c_text(cap.card),
            "bus_info": _c_text(cap.bus_info),
            "version": cap.version,
            "capabilities": cap.capabilities,
            "device_caps": cap.device_caps,
            "formats": [],
        }
        if not is_capture(record):
            return record
        descriptions = _ioctl_list(
            fd,
            ioctl,
            raw.IOC.ENUM_FMT,
            _ENUM_LIMIT["formats"],
            lambda i: raw.v4l2_fmtdesc(index=i, type=raw.BufType.VIDEO_CAPTURE),
        )
        for desc in descriptions:
            record["formats"].append(
                {
                    "fourcc": fourcc_text(desc.pixelformat),
                    "description": _c_text(desc.description),
                    "flags": desc.flags,
                    "sizes": _probe_sizes(fd, ioctl, raw, desc.pixelformat),
                }
            )
        return record
    finally:
        os.close(fd)


def _probe_sizes(fd: int, ioctl, raw, pixelformat: int) -> list[dict[str, Any]]:
    sizes = []
    entries = _ioctl_list(
        fd,
        ioctl,
        raw.IOC.ENUM_FRAMESIZES,
        _ENUM_LIMIT["sizes"],
        lambda i: raw.v4l2_frmsizeenum(index=i, pixel_format=pixelformat),
    )
    for entry in entries:
        if entry.type == 1:  # V4L2_FRMSIZE_TYPE_DISCRETE
            width, height = entry.discrete.width, entry.discrete.height
            sizes.append(
                {
                    "width": width,
                    "height": height,
                    "intervals": _probe_intervals(fd, ioctl, raw, pixelformat, width, height),
                }
            )
            continue
        step = entry.stepwise  # continuous or stepwise: the only entry there is
        stepwise = {
            name: getattr(step, name)
            for name in ("min_width", "max_width", "step_width", "min_height", "max_height", "step_height")
        }
        sizes.append(
            {
                "stepwise": stepwise,
                "width": step.max_width,
                "height": step.max_height,
                "intervals": _probe_intervals(fd, ioctl, raw, pixelformat, step.max_width, step.max_height),
            }
        )
        break
    return sizes


def _probe_intervals(fd: int, ioctl, raw, pixelformat: int, width: int, height: int) -> Any:
    entries = _ioctl_list(
        fd,
        ioctl,
        raw.IOC.ENUM_FRAMEINTERVALS,
        _ENUM_LIMIT["intervals"],
        lambda i: raw.v4l2_frmivalenum(index=i, pixel_format=pixelformat, width=width, height=height),
    )
    if entries and entries[0].type != 1:  # continuous or stepwise range
        step = entries[0].stepwise
        return {
            name: [getattr(step, name).numerator, getattr(step, name).denominator] for name in ("min", "max", "step")
        }
    return [[e.discrete.numerator, e.discrete.denominator] for e in entries]


def _ioctl_list(fd: int, ioctl, request, limit: int, make: Callable[[int], Any]) -> list[Any]:
    """Call an indexed ENUM ioctl until the driver says there are no more (EINVAL)."""
    values = []
    for index in range(limit):  # bounded: a buggy driver must not loop us forever
        value = make(index)
        try:
            ioctl(fd, request, value)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOTTY, errno.ENODATA):
                break
            raise
        values.append(value)
    return values


def _c_text(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode("utf-8", "replace").strip()


# --- scanning ------------------------------------------------------------------------------


class V4L2Scanner:
    """Enumerate, probe (in parallel, cached per device node) and describe.

    :meth:`scan` is blocking: the watcher calls it in a thread. A node is
    probed again only when its ``/dev`` entry was recreated (replug) or its
    last probe failed.
    """

    def __init__(
        self,
        log=None,
        enumerate: Callable[[], list[RawNode]] | None = None,
        prober: Callable[[str], dict[str, Any]] = probe,
        max_parallel: int = 8,
    ):
        self._log = log
        self._enumerate = enumerate or self._default_enumerate
        self._probe = prober
        self._max_parallel = max_parallel
        self._cache: dict[tuple, dict[str, Any]] = {}  # (devname, inode, rdev) -> record
        self._warned: set[str] = set()
        self._udev_failed = False

    def _default_enumerate(self) -> list[RawNode]:
        if not self._udev_failed:
            try:
                return enumerate_udev()
            except (ImportError, OSError) as exc:
                self._udev_failed = True  # no libudev here: sysfs has the same nodes
                self._note("libudev_unavailable", "libudev", error=str(exc))
        return enumerate_sysfs()

    def scan(self) -> list[Found]:
        nodes = self._enumerate()
        identities = {node.devname: _identity(node) for node in nodes}
        wanted = [
            node
            for node in nodes
            if identities[node.devname] is not None and identities[node.devname] not in self._cache
        ]
        results: dict[str, Any] = {}
        if wanted:
            workers = min(self._max_parallel, len(wanted))
            with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="v4l2-probe") as pool:
                for node, outcome in zip(wanted, pool.map(self._probe_one, wanted)):
                    results[node.devname] = outcome
        found = []
        for node in nodes:
            identity = identities[node.devname]
            if identity is None:
                continue  # the node vanished since enumeration: it is being unplugged
            if identity in self._cache:
                record, error = self._cache[identity], None
            else:
                outcome = results[node.devname]
                if outcome is _VANISHED:
                    continue  # unplugged during the probe
                record, error = outcome
                if record is not None:
                    self._cache[identity] = record
            described = describe(node, record, error)
            if described is None and record is None and udev_says_capture(node.properties) is None:
                self._note("v4l2_node_unknown", node.devname, device=node.devname, error=error)
            if described is not None:
                found.append(described)
        present = set(identities.values())
        self._cache = {k: v for k, v in self._cache.items() if k in present}
        return found

    def _probe_one(self, node: RawNode) -> Any:
        """``(record, error)``, or ``_VANISHED``."""
        try:
            return self._probe(node.devname), None
        except ProbeUnavailable as exc:
            self._note("v4l2_probe_unavailable", "linuxpy", error=str(exc))
            return None, None
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
                return _VANISHED
            return None, probe_error_text(exc)

    def _note(self, event: str, once_key: str, **fields) -> None:
        if once_key not in self._warned and self._log is not None:
            self._warned.add(once_key)
            self._log.warning(event, **fields)


_VANISHED = object()


def _identity(node: RawNode) -> tuple | None:
    """Changes when the node is recreated (a replug), None when it is gone.

    The inode alone is not enough: a filesystem may hand a freed inode
    number straight to the next file; udev's initialisation time of the
    device is unique per plug-in when there is a udev database.
    """
    try:
        stat = os.stat(node.devname)
    except OSError:
        return None
    return (node.devname, stat.st_ino, stat.st_rdev, stat.st_ctime_ns, node.properties.get("USEC_INITIALIZED"))
