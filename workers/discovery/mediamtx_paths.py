"""The MediaMTX paths of this service's cameras, kept in step by the discovery worker.

* :func:`camera_path_conf` is the path configuration that makes MediaMTX
  start ffmpeg for a camera when the first reader arrives (``runOnDemand``)
  and stop it when the last one leaves.
* :class:`MediaMTXPaths` keeps one path per connected camera, named after
  ``camera.id``, so ``rtsp://HOST:8554/camera0`` is that camera. It only ever
  changes or deletes paths it created: those carry :data:`MARKER` in their
  ``runOnDemand`` command. Paths an operator configured (``all_others``, an
  IP camera, even one called ``camera3``) are left alone.

MediaMTX forgets paths added through the API when it restarts, so
:class:`~.media.StreamSync` (the only user) runs :meth:`MediaMTXPaths.reconcile`
when the client reports MediaMTX available again and every few seconds
besides; a reconcile that finds nothing to do costs one list call. Every
call goes through :class:`camservice.mediamtx.MediaMTXClient`.
"""

from __future__ import annotations

import asyncio
import re
import shlex
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import structlog

from camservice import ffmpeg
from camservice.cameras import CONNECTED, Camera
from camservice.mediamtx import MediaMTXClient, MediaMTXError

log = structlog.get_logger("mediamtx")

#: Put in the ``runOnDemand`` command of every path this service creates
#: (as ffmpeg output metadata, harmless to the stream): the ownership mark.
MARKER = "camservice-managed"

#: Where runOnDemand publishes; MediaMTX fills in both variables.
PUBLISH_URL = "rtsp://localhost:$RTSP_PORT/$MTX_PATH"

#: Readers wait this long for ffmpeg to open the device and publish.
ON_DEMAND_START_TIMEOUT = "10s"
#: ffmpeg keeps running this long after the last reader left, so a reader
#: that reconnects (or a snapshot right after a stream) does not pay the start again.
ON_DEMAND_CLOSE_AFTER = "10s"

STREAM_PROTOCOLS = ("rtsp", "webrtc", "hls")

_SIZE = re.compile(r"^[1-9]\d{0,4}x[1-9]\d{0,4}$")


# --- durations as MediaMTX writes them ----------------------------------------------------

_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_DURATION = re.compile(r"^(?:(\d+)d)?((?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))*|0)$")
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")

#: Duration fields of :func:`camera_path_conf`: MediaMTX answers ``1h0m0s`` for ``3600s``.
DURATION_FIELDS = frozenset({"runOnDemandStartTimeout", "runOnDemandCloseAfter"})


def duration_ns(text: str) -> int:
    """Nanoseconds of a non-negative MediaMTX duration (``10s``, ``1h0m0s``, ``1d``, ``""``)."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    total = Fraction(int(match.group(1) or 0) * 86400 * 10**9)
    for number, unit in _DURATION_PART.findall(match.group(2)):
        total += Fraction(number) * _NS[unit]
    return int(total)


# --- the path of a camera -------------------------------------------------------------------


def capture_args(camera: Camera, config: Any) -> list[str]:
    """ffmpeg input options that read ``camera``.

    ``camera.source["kind"]`` picks the input: ``"sim"`` (also the default
    for a simulated camera) is a lavfi test pattern of ``size`` (else
    ``camera.resolution``, else ``cameras.sim_resolution``), ``fps`` (else
    ``camera.fps``, else ``cameras.sim_fps``) and ``pattern`` (one of
    :data:`camservice.ffmpeg.SIM_PATTERNS`, default ``testsrc2``); ``"v4l2"`` (the default
    otherwise) reads ``camera.device`` at ``camera.resolution`` and
    ``camera.fps`` when known, in ``source["input_format"]`` when given
    (an ffmpeg v4l2 name such as ``mjpeg`` or ``yuyv422``).
    Raises ValueError for a value that could not be a valid capture.
    """
    source = camera.source or {}
    simulated = camera.simulated or camera.device.startswith("sim:")
    kind = source.get("kind") or ("sim" if simulated else "v4l2")
    try:
        if kind == "sim":
            return ffmpeg.lavfi_input(
                source.get("pattern") or "testsrc2",
                str(source.get("size") or camera.resolution or config.cameras.sim_resolution),
                source.get("fps") or camera.fps or config.cameras.sim_fps,
            )
        if kind == "v4l2":
            # Strict: the path ends up in MediaMTX's runOnDemand command line.
            if not re.fullmatch(r"/dev/[A-Za-z0-9_./-]+", camera.device) or ".." in camera.device:
                raise ValueError(f"{camera.device!r} is not a V4L2 device path")
            size = camera.resolution if camera.resolution and _SIZE.fullmatch(camera.resolution) else None
            fps = (
                camera.fps
                if isinstance(camera.fps, int) and not isinstance(camera.fps, bool) and camera.fps > 0
                else None
            )
            return ffmpeg.v4l2_input(camera.device, source.get("input_format"), size, fps)
    except ValueError as exc:
        raise ValueError(f"{camera.id}: {exc}") from None
    raise ValueError(f"{camera.id}: unknown source kind {kind!r}")


#: H.264 is what RTSP, WebRTC and HLS readers all take. One key frame a second
#: (whatever the frame rate) bounds how long a new WebRTC/HLS reader waits for a picture.
ENCODE_ARGS = (
    "-an",
    *ffmpeg.H264_ARGS,
    "-force_key_frames",
    "expr:gte(t,n_forced*1)",
)


def publish_command(camera: Camera, ffmpeg_exe: str, config: Any) -> str:
    """The ``runOnDemand`` command: capture, encode, publish to MediaMTX over RTSP.

    MediaMTX splits the command like a POSIX shell (no shell runs it) and
    substitutes ``$RTSP_PORT`` and ``$MTX_PATH``; every other word is quoted.
    """
    words = [
        ffmpeg_exe,
        "-hide_banner",
        "-loglevel",
        "warning",
        "-nostdin",
        *capture_args(camera, config),
        *ENCODE_ARGS,
        "-metadata",
        f"comment={MARKER}",
        "-f",
        "rtsp",
        "-rtsp_transport",
        "tcp",
    ]
    return " ".join(shlex.quote(word) for word in words) + " " + PUBLISH_URL


def camera_path_conf(camera: Camera, ffmpeg_exe: str, config: Any) -> dict[str, Any]:
    """The MediaMTX path configuration serving ``camera`` (path name: ``camera.id``).

    ``source: publisher`` with a ``runOnDemand`` publisher: ffmpeg runs
    only while someone reads, is restarted if it dies while readers wait
    (``runOnDemandRestart``), and readers wait at most
    :data:`ON_DEMAND_START_TIMEOUT` for it. MediaMTX's recorder is not used
    (the recording worker reads the RTSP stream), so no recording field is set.
    """
    return {
        "source": "publisher",
        "runOnDemand": publish_command(camera, ffmpeg_exe, config),
        "runOnDemandRestart": True,
        "runOnDemandStartTimeout": ON_DEMAND_START_TIMEOUT,
        "runOnDemandCloseAfter": ON_DEMAND_CLOSE_AFTER,
    }


def is_managed(conf: dict[str, Any]) -> bool:
    """Whether a path configuration was made by this service (carries :data:`MARKER`)."""
    return f"comment={MARKER}" in str(conf.get("runOnDemand") or "")


def conf_drift(desired: dict[str, Any], actual: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``desired`` that ``actual`` does not have (durations compared by value)."""
    drift = {}
    for key, want in desired.items():
        have = actual.get(key)
        if key in DURATION_FIELDS and isinstance(want, str) and isinstance(have, str):
            try:
                if duration_ns(want) == duration_ns(have):
                    continue
            except ValueError:
                pass
        elif have == want:
            continue
        drift[key] = want
    return drift


class MediaMTXPaths:
    """The paths of this service's cameras in MediaMTX.

    ``ffmpeg_exe`` is the ffmpeg MediaMTX should run (default: the one this
    service uses, :func:`camservice.ffmpeg.locate`); it must exist where
    MediaMTX runs. Methods that answer stream URLs never raise for MediaMTX
    trouble: they log it and answer ``{}`` (no stream is served).
    """

    def __init__(self, client: MediaMTXClient, config: Any, ffmpeg_exe: str | None = None):
        self.client = client
        self.config = config
        self._ffmpeg_exe = ffmpeg_exe
        self._protocols: tuple[str, ...] | None = None
        self._lock = asyncio.Lock()  # one change at a time: add/remove/reconcile read, then write

    @property
    def ffmpeg_exe(self) -> str:
        if self._ffmpeg_exe is None:
            self._ffmpeg_exe = ffmpeg.locate(self.config.media.ffmpeg_path)
        return self._ffmpeg_exe

    def path_conf(self, camera: Camera) -> dict[str, Any]:
        return camera_path_conf(camera, self.ffmpeg_exe, self.config)

    def stream_urls(self, camera_id: str, protocols: Iterable[str] = STREAM_PROTOCOLS) -> dict[str, str]:
        """The URLs of a camera's path for ``protocols`` (host and ports from ``media.*``)."""
        media = self.config.media
        host = media.mediamtx_host or self.config.public_host
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        urls = {
            "rtsp": f"rtsp://{host}:{media.rtsp_port}/{camera_id}",
            "webrtc": f"http://{host}:{media.webrtc_port}/{camera_id}",
            "hls": f"http://{host}:{media.hls_port}/{camera_id}",
        }
        return {name: url for name, url in urls.items() if name in tuple(protocols)}

    async def served_protocols(self, refresh: bool = False) -> tuple[str, ...]:
        """The protocols MediaMTX serves (``rtsp``/``webrtc``/``hls`` not switched off globally)."""
        if self._protocols is None or refresh:
            try:
                conf = await self.client.get_global_config() or {}
            except MediaMTXError as exc:
                if exc.unreachable:
                    raise
                log.warning("mediamtx_global_config_unreadable", reason=exc.reason)
                conf = {}
            # "<p>Disable" is how MediaMTX before 1.0 said it; still accepted there.
            self._protocols = tuple(
                p for p in STREAM_PROTOCOLS if conf.get(p, True) is not False and conf.get(f"{p}Disable") is not True
            )
        return self._protocols

    async def add_camera(self, camera: Camera) -> dict[str, str]:
        """Make sure ``camera`` has its path; the stream URLs now served, or ``{}``."""
        async with self._lock:
            try:
                return await self._ensure(camera, await self.client.get_path_config(camera.id))
            except (MediaMTXError, ValueError) as exc:
                log.warning("mediamtx_add_failed", camera=camera.id, reason=_reason(exc))
                return {}

    async def remove_camera(self, camera: Camera | str) -> bool:
        """Delete the camera's path if this service made it; True when one was deleted.

        When MediaMTX cannot be reached the path stays; the next
        :meth:`reconcile` removes it.
        """
        name = camera if isinstance(camera, str) else camera.id
        async with self._lock:
            try:
                existing = await self.client.get_path_config(name)
                if existing is None:
                    return False
                if not is_managed(existing):
                    log.warning("mediamtx_path_foreign", path=name, action="left in place")
                    return False
                await self.client.delete_path(name)
            except MediaMTXError as exc:
                if exc.status != 404:  # 404: gone in between, which is what we wanted
                    log.warning("mediamtx_remove_failed", path=name, reason=exc.reason)
                return False
        log.info("mediamtx_path_removed", path=name)
        return True

    async def reconcile(self, cameras: Iterable[Camera]) -> dict[str, dict[str, str]]:
        """Make MediaMTX's paths match ``cameras``; the stream URLs of each camera.

        Connected cameras get their path (added when missing, patched when
        a field of :func:`camera_path_conf` differs); paths this service made
        for any other name are deleted. Paths without :data:`MARKER` are
        never touched, and a camera whose name such a path holds gets ``{}``.
        Fields not in that configuration are left as they are. Every camera passed is in the
        answer; disconnected ones, and all when MediaMTX is down, with ``{}``.
        """
        cameras = list(cameras)
        result: dict[str, dict[str, str]] = {camera.id: {} for camera in cameras}
        wanted = {camera.id: camera for camera in cameras if camera.status == CONNECTED}
        async with self._lock:
            try:
                configs = {conf.get("name"): conf for conf in await self.client.list_path_configs()}
                await self.served_protocols(refresh=True)
            except MediaMTXError as exc:
                log.warning("mediamtx_reconcile_skipped", reason=exc.reason)
                return result
            for name, conf in configs.items():
                if name in wanted or not is_managed(conf):
                    continue
                try:
                    await self.client.delete_path(name)
                    log.info("mediamtx_path_removed", path=name, why="no connected camera")
                except MediaMTXError as exc:
                    if exc.unreachable:
                        return result
                    if exc.status != 404:
                        log.warning("mediamtx_remove_failed", path=name, reason=exc.reason)
            for camera_id, camera in wanted.items():
                try:
                    result[camera_id] = await self._ensure(camera, configs.get(camera_id))
                except (MediaMTXError, ValueError) as exc:
                    log.warning("mediamtx_add_failed", camera=camera_id, reason=_reason(exc))
                    if isinstance(exc, MediaMTXError) and exc.unreachable:
                        return result
        return result

    async def _ensure(self, camera: Camera, existing: dict[str, Any] | None) -> dict[str, str]:
        desired = self.path_conf(camera)
        if existing is None:
            await self.client.add_path(camera.id, desired)
            log.info("mediamtx_path_added", path=camera.id)
        elif not is_managed(existing):
            log.warning(
                "mediamtx_path_foreign",
                path=camera.id,
                action="a path of that name is configured outside camservice; not serving the camera",
            )
            return {}
        else:
            drift = conf_drift(desired, existing)
            if drift:
                await self.client.patch_path(camera.id, drift)
                log.info("mediamtx_path_updated", path=camera.id, fields=sorted(drift))
        return self.stream_urls(camera.id, await self.served_protocols())


def _reason(exc: Exception) -> str:
    return exc.reason if isinstance(exc, MediaMTXError) else str(exc)
