"""MediaMTX as the media backend: its control API and the camera paths kept there.

Three layers, each usable on its own:

* :class:`MediaMTXClient` speaks MediaMTX's control API (v3) over plain
  HTTP (``http.client``: no dependency), one connection per call. Blocking
  calls run in a thread behind ``async`` methods; list endpoints are read
  page by page. Every failure is an :class:`MediaMTXError`, a JSON-RPC
  -32006 whose ``data.reason`` is MediaMTX's own error text, or
  ``"mediamtx unreachable"`` when it did not answer. A
  :class:`CircuitBreaker` makes calls fail fast while MediaMTX is down and
  tells listeners when it is back.
* :func:`camera_path_conf` is the path configuration that makes MediaMTX
  start ffmpeg for a camera when the first reader arrives (``runOnDemand``)
  and stop it when the last one leaves.
* :class:`MediaMTXPaths` keeps one path per connected camera, named after
  ``camera.id``, so ``rtsp://HOST:8554/camera0`` is that camera. It only ever
  changes or deletes paths it created: those carry :data:`MARKER` in their
  ``runOnDemand`` command. Paths an operator configured (``all_others``, an
  IP camera, even one called ``camera3``) are left alone.

MediaMTX forgets paths added through the API when it restarts, so callers
should run :meth:`MediaMTXPaths.reconcile` when :attr:`MediaMTXClient.available`
turns true again (see :meth:`MediaMTXClient.on_availability`) and every few
seconds besides; a reconcile that finds nothing to do costs one list call.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import re
import shlex
import threading
import time
from fractions import Fraction
from typing import Any, Callable, Iterable
from urllib.parse import quote, unquote, urlencode, urlsplit

import structlog

from . import ffmpeg
from .cameras import CONNECTED, Camera
from .errors import MEDIA_BACKEND, RpcError

log = structlog.get_logger("mediamtx")

#: ``data.reason`` of every error where MediaMTX did not answer.
UNREACHABLE = "mediamtx unreachable"

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

#: lavfi sources a simulated camera may use (``camera.source["pattern"]``).
SIM_PATTERNS = ffmpeg.SIM_PATTERNS

_MAX_ANSWER = 16 * 1024 * 1024
_MAX_PAGES = 10_000
_PATH_NAME = re.compile(r"^[0-9A-Za-z_\-.~:]+(?:/[0-9A-Za-z_\-.~:]+)*$")
_SIZE = re.compile(r"^[1-9]\d{0,4}x[1-9]\d{0,4}$")


class MediaMTXError(RpcError):
    """-32006: MediaMTX refused a call (``status`` is its HTTP status) or never answered (``status`` None).

    ``data`` is ``{"reason": ...}`` plus ``http_status`` for an answer;
    ``detail`` (not sent to clients) says what the connection did, for logs.
    """

    def __init__(self, reason: str, status: int | None = None, detail: str | None = None):
        data: dict[str, Any] = {"reason": reason}
        if status is not None:
            data["http_status"] = status
        super().__init__(MEDIA_BACKEND, data=data)
        self.reason, self.status, self.detail = reason, status, detail

    @property
    def unreachable(self) -> bool:
        return self.status is None


# --- circuit breaker ---------------------------------------------------------------------

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitBreaker:
    """Stops calling a MediaMTX that is down, and notices when it is back.

    * closed: calls go out; ``failure_threshold`` connection failures in a
      row open the breaker.
    * open: calls fail at once for ``reset_timeout`` seconds, then the next
      call goes out as the probe (half-open).
    * half-open: only the probe goes out, other calls fail at once; the
      probe's success closes the breaker, its failure opens it again.

    Only connection failures and timeouts count: an HTTP error answer shows
    MediaMTX is up. Any success closes the breaker, even one that was in
    flight when it opened. Thread-safe, since calls run in worker threads;
    listeners get ``(old_state, new_state)`` in the thread that caused it.
    """

    def __init__(
        self, failure_threshold: int = 3, reset_timeout: float = 5.0, clock: Callable[[], float] = time.monotonic
    ):
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._listeners: list[Callable[[str, str], None]] = []

    @property
    def state(self) -> str:
        return self._state

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        if self._state != OPEN:
            return 0.0
        return max(0.0, self.reset_timeout - (self._clock() - self._opened_at))

    def add_listener(self, callback: Callable[[str, str], None]) -> None:
        self._listeners.append(callback)

    def acquire(self) -> bool:
        """May a call go out now? In half-open state, a True makes the caller the probe."""
        change = None
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.reset_timeout:
                change = self._move(HALF_OPEN)
            if self._state == CLOSED:
                allowed = True
            elif self._state == HALF_OPEN and not self._probing:
                self._probing = allowed = True
            else:
                allowed = False
        self._notify(change)
        return allowed

    def success(self) -> None:
        with self._lock:
            self._failures, self._probing = 0, False
            change = self._move(CLOSED) if self._state != CLOSED else None
        self._notify(change)

    def failure(self) -> None:
        change = None
        with self._lock:
            self._failures += 1
            self._probing = False
            if self._state == HALF_OPEN or (self._state == CLOSED and self._failures >= self.failure_threshold):
                self._opened_at = self._clock()
                change = self._move(OPEN)
            # Already open: a late failure of a call sent before it opened; the cool-down stands.
        self._notify(change)

    def _move(self, state: str) -> tuple[str, str]:
        old, self._state = self._state, state
        return old, state

    def _notify(self, change: tuple[str, str] | None) -> None:
        if change is None:
            return
        for callback in list(self._listeners):
            try:
                callback(*change)
            except Exception:  # a listener's bug must not break the call that noticed
                log.exception("mediamtx_listener_failed")


# --- the client ---------------------------------------------------------------------------


class MediaMTXClient:
    """MediaMTX's control API (v3).

    ``base_url`` may carry credentials (``http://user:pass@host:9997``) for
    an API that requires them. ``timeout`` bounds connecting and each read,
    in seconds. ``clock`` is only replaced by tests.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:9997",
        timeout: float = 2.0,
        *,
        failure_threshold: int = 3,
        reset_timeout: float = 5.0,
        page_size: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self._authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self._authorization = "Basic " + base64.b64encode(pair).decode()
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.base_url = f"{parts.scheme}://{host}:{self._port}{self._prefix}"  # no credentials: safe to log
        self.timeout = timeout
        self.page_size = page_size
        self.breaker = CircuitBreaker(failure_threshold, reset_timeout, clock)
        self.breaker.add_listener(self._breaker_moved)
        self._listeners: list[tuple[Callable[[bool], Any], asyncio.AbstractEventLoop | None]] = []
        self._tasks: set[asyncio.Task] = set()

    @classmethod
    def from_config(cls, config: Any, **options: Any) -> "MediaMTXClient":
        return cls(config.media.mediamtx_api, **options)

    # --- availability ------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False from the moment the breaker opens until a call succeeds again."""
        return self.breaker.state == CLOSED

    def on_availability(self, callback: Callable[[bool], Any]) -> Callable[[], None]:
        """Call ``callback(available)`` each time :attr:`available` flips.

        Registered from inside a running event loop, the callback runs in
        that loop (and may be a coroutine function); otherwise it runs in
        the thread that noticed the change. Returns an unsubscribe function.
        """
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        entry = (callback, loop)
        self._listeners.append(entry)
        return lambda: self._listeners.remove(entry) if entry in self._listeners else None

    def _breaker_moved(self, old: str, new: str) -> None:
        if (old == CLOSED) == (new == CLOSED):
            return  # open <-> half-open: still unavailable
        available = new == CLOSED
        if available:
            log.info("mediamtx_available", url=self.base_url)
        else:
            log.warning("mediamtx_unavailable", url=self.base_url, retry_in=self.breaker.reset_timeout)
        for callback, loop in list(self._listeners):
            if loop is None:
                self._run_listener(callback, available)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(self._run_listener, callback, available)

    def _run_listener(self, callback: Callable[[bool], Any], available: bool) -> None:
        try:
            result = callback(available)
            if asyncio.iscoroutine(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except Exception:
            log.exception("mediamtx_listener_failed")

    # --- transport -------------------------------------------------------------------------

    def request_sync(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None) -> Any:
        """One API call, blocking: the decoded JSON answer (None when empty).

        Raises :class:`MediaMTXError` for an error answer, no answer, or an
        open circuit breaker.
        """
        if not self.breaker.acquire():
            raise MediaMTXError(
                UNREACHABLE + " (circuit open)", detail=f"next attempt in {self.breaker.retry_in():.1f}s"
            )
        target = self._prefix + path + ("?" + urlencode(query) if query else "")
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._authorization:
            headers["Authorization"] = self._authorization
        connection = self._connection_class(self._host, self._port, timeout=self.timeout)
        try:
            connection.request(method, target, body=data, headers=headers)
            response = connection.getresponse()
            status, payload = response.status, response.read(_MAX_ANSWER + 1)
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, garbled
            self.breaker.failure()
            raise MediaMTXError(UNREACHABLE, detail=f"{method} {path}: {type(exc).__name__}: {exc}") from None
        finally:
            connection.close()
        self.breaker.success()
        if not 200 <= status < 300:
            raise MediaMTXError(_error_reason(status, payload), status=status)
        if len(payload) > _MAX_ANSWER:
            raise MediaMTXError(f"answer to {path} exceeds {_MAX_ANSWER} bytes", status=status)
        if not payload.strip():
            return None
        try:
            return json.loads(payload)
        except ValueError:
            raise MediaMTXError(f"answer to {path} is not JSON", status=status) from None

    async def request(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None) -> Any:
        """:meth:`request_sync` in a thread."""
        return await asyncio.to_thread(self.request_sync, method, path, query, body)

    async def _get_or_none(self, path: str) -> Any:
        try:
            return await self.request("GET", path)
        except MediaMTXError as exc:
            if exc.status == 404:
                return None
            raise

    async def _list_all(self, path: str) -> list[dict[str, Any]]:
        """Every item of a paginated list, reading ``page_size`` items per call.

        Items whose name was already seen are skipped: a path added while
        the pages are read shifts later items onto a page already read.
        """
        items: list[dict[str, Any]] = []
        seen: set[str] = set()
        page = 0
        while True:
            answer = await self.request("GET", path, {"page": page, "itemsPerPage": self.page_size}) or {}
            batch = answer.get("items") or []
            for item in batch:
                name = item.get("name") if isinstance(item, dict) else None
                if name is not None:
                    if name in seen:
                        continue
                    seen.add(name)
                items.append(item)
            page += 1
            if not batch or page >= int(answer.get("pageCount") or 0) or page >= _MAX_PAGES:
                return items

    # --- path configuration ---------------------------------------------------------------

    async def list_path_configs(self) -> list[dict[str, Any]]:
        """Every configured path (``/v3/config/paths/list``), defaults filled in."""
        return await self._list_all("/v3/config/paths/list")

    async def get_path_config(self, name: str) -> dict[str, Any] | None:
        """A path's configuration, or None when no path has that name."""
        return await self._get_or_none(f"/v3/config/paths/get/{_quote(name)}")

    async def add_path(self, name: str, conf: dict[str, Any]) -> None:
        """Add a path; MediaMTX answers 400 ``path already exists`` when it does."""
        await self.request("POST", f"/v3/config/paths/add/{_quote(name)}", body=conf)

    async def patch_path(self, name: str, conf: dict[str, Any]) -> None:
        """Change the given fields of a path (404 when there is none)."""
        await self.request("PATCH", f"/v3/config/paths/patch/{_quote(name)}", body=conf)

    async def replace_path(self, name: str, conf: dict[str, Any]) -> None:
        """Set every field of a path: fields not given return to the path defaults."""
        await self.request("POST", f"/v3/config/paths/replace/{_quote(name)}", body=conf)

    async def delete_path(self, name: str) -> None:
        """Remove a path configuration (404 when there is none); its readers are disconnected."""
        await self.request("DELETE", f"/v3/config/paths/delete/{_quote(name)}")

    async def get_global_config(self) -> dict[str, Any]:
        return await self.request("GET", "/v3/config/global/get")

    async def patch_global_config(self, conf: dict[str, Any]) -> None:
        await self.request("PATCH", "/v3/config/global/patch", body=conf)

    # --- live state -------------------------------------------------------------------------

    async def list_paths(self) -> list[dict[str, Any]]:
        """Live state of every path (``/v3/paths/list``): ready, tracks, bytes, readers."""
        return await self._list_all("/v3/paths/list")

    async def get_path(self, name: str) -> dict[str, Any] | None:
        """Live state of one path, or None when MediaMTX has no such path."""
        return await self._get_or_none(f"/v3/paths/get/{_quote(name)}")

    async def ping(self) -> bool:
        """Whether MediaMTX answers (any HTTP answer counts); drives the breaker like any call."""
        try:
            await self.request("GET", "/v3/paths/list", {"itemsPerPage": 1})
        except MediaMTXError as exc:
            return not exc.unreachable
        return True

    async def watch(self, interval: float = 2.0) -> None:
        """Ping forever, so availability changes are noticed without other traffic.

        While the breaker is open the pings cost nothing until the
        cool-down ends; then one of them is the probe.
        """
        while True:
            await self.ping()
            await asyncio.sleep(interval)

    # --- recordings made by MediaMTX ----------------------------------------------------------

    async def list_recordings(self) -> list[dict[str, Any]]:
        """``[{"name": path, "segments": [{"start": RFC 3339}, ...]}, ...]``."""
        return await self._list_all("/v3/recordings/list")

    async def get_recordings(self, name: str) -> dict[str, Any] | None:
        """The recorded segments of one path, or None when it has none."""
        return await self._get_or_none(f"/v3/recordings/get/{_quote(name)}")

    async def delete_recording_segment(self, name: str, start: str) -> None:
        """Delete the segment of path ``name`` that starts at ``start`` (as listed)."""
        _quote(name)
        await self.request("DELETE", "/v3/recordings/deletesegment", {"path": name, "start": start})


def _quote(name: str) -> str:
    """A path name for a URL; refuses names MediaMTX would refuse (and any ``..`` games)."""
    if not _PATH_NAME.fullmatch(name) or ".." in name.split("/"):
        raise ValueError(f"invalid MediaMTX path name {name!r}")
    return quote(name, safe="/:~")


def _error_reason(status: int, payload: bytes) -> str:
    """MediaMTX's error text (``{"status": "error", "error": "..."}``), or what the body says."""
    try:
        answer = json.loads(payload)
        if isinstance(answer, dict) and isinstance(answer.get("error"), str) and answer["error"]:
            return answer["error"]
    except ValueError:
        pass
    text = payload.decode("utf-8", "replace").strip()[:200]
    return text or f"HTTP {status}"


# --- durations as MediaMTX writes them ----------------------------------------------------

_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_DURATION = re.compile(r"^(?:(\d+)d)?((?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))*|0)$")
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")

#: Duration fields of a path configuration: MediaMTX answers ``1h0m0s`` for ``3600s``.
DURATION_FIELDS = frozenset(
    {
        "runOnDemandStartTimeout",
        "runOnDemandCloseAfter",
        "recordPartDuration",
        "recordSegmentDuration",
        "recordDeleteAfter",
        "sourceOnDemandStartTimeout",
        "sourceOnDemandCloseAfter",
    }
)


def duration_ns(text: str) -> int:
    """Nanoseconds of a non-negative MediaMTX duration (``10s``, ``1h0m0s``, ``1d``, ``""``)."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    total = Fraction(int(match.group(1) or 0) * 86400 * 10**9)
    for number, unit in _DURATION_PART.findall(match.group(2)):
        total += Fraction(number) * _NS[unit]
    return int(total)


def go_duration(seconds: float) -> str:
    """A duration MediaMTX accepts: whole seconds as ``600s``, otherwise milliseconds."""
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


# --- the path of a camera -------------------------------------------------------------------


def capture_args(camera: Camera, config: Any) -> list[str]:
    """ffmpeg input options that read ``camera``.

    ``camera.source["kind"]`` picks the input: ``"sim"`` (also the default
    for a simulated camera) is a lavfi test pattern of ``size`` (else
    ``camera.resolution``, else ``cameras.sim_resolution``), ``fps`` (else
    ``camera.fps``, else ``cameras.sim_fps``) and ``pattern`` (one of
    :data:`SIM_PATTERNS`, default ``testsrc2``); ``"v4l2"`` (the default
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
    "-c:v",
    "libx264",
    "-preset",
    "ultrafast",
    "-tune",
    "zerolatency",
    "-pix_fmt",
    "yuv420p",
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
    :data:`ON_DEMAND_START_TIMEOUT` for it. Recording fields are not part of
    it: they belong to :func:`record_conf`, and :meth:`MediaMTXPaths.reconcile`
    leaves them alone.
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


def record_conf(
    enabled: bool,
    record_path: str | None = None,
    record_format: str = "fmp4",
    segment_seconds: float = 600,
    part_seconds: float = 1.0,
) -> dict[str, Any]:
    """Path fields that turn MediaMTX's own recorder on or off (for :meth:`MediaMTXClient.patch_path`).

    Turning it on sets:

    * ``record: true``
    * ``recordPath``: where segments go, without extension (MediaMTX adds
      ``.mp4`` for fmp4, ``.ts`` for mpegts). It must contain ``%path`` and
      ``%Y %m %d %H %M %S`` (or ``%s``); ``%f`` (microseconds) is needed
      when MediaMTX's playback server is on. The path is MediaMTX's view of
      the file system.
    * ``recordFormat``: ``fmp4`` or ``mpegts``.
    * ``recordSegmentDuration``: a new file after this long (at most a day).
    * ``recordPartDuration``: how often data is flushed, i.e. what a crash loses.
    * ``recordDeleteAfter: 0s``: MediaMTX never deletes (its default is one
      day); retention stays with this service's file worker.

    Turning it off sets only ``record: false``.
    """
    if not enabled:
        return {"record": False}
    if not record_path:
        raise ValueError("record_path is required to record")
    if "%path" not in record_path:
        raise ValueError("record_path must contain %path")
    if "%s" not in record_path and not all(f"%{c}" in record_path for c in "YmdHMS"):
        raise ValueError("record_path must contain %s or all of %Y %m %d %H %M %S")
    if record_format not in ("fmp4", "mpegts"):
        raise ValueError("record_format must be fmp4 or mpegts")
    if not 0 < segment_seconds <= 86400:
        raise ValueError("segment_seconds must be in (0, 86400]")
    return {
        "record": True,
        "recordPath": record_path,
        "recordFormat": record_format,
        "recordSegmentDuration": go_duration(segment_seconds),
        "recordPartDuration": go_duration(part_seconds),
        "recordDeleteAfter": "0s",
    }


def stream_summary(path: dict[str, Any]) -> dict[str, Any]:
    """A ``get_streams`` entry from a live path (``/v3/paths/list`` item)."""
    source = path.get("source") or {}
    ready = path.get("ready", path.get("available", False))
    sent = path.get("outboundBytes", path.get("bytesSent", 0))
    return {
        "name": path.get("name"),
        "source": source.get("type"),
        "ready": bool(ready),
        "readers": len(path.get("readers") or []),
        "bytes_sent": int(sent or 0),
    }


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
        Recording fields are left as they are. Every camera passed is in the
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
            if existing.get("runOnInit"):  # recording keeps it publishing: same command, kept current
                desired["runOnInit"] = desired["runOnDemand"]
            drift = conf_drift(desired, existing)
            if drift:
                await self.client.patch_path(camera.id, drift)
                log.info("mediamtx_path_updated", path=camera.id, fields=sorted(drift))
        return self.stream_urls(camera.id, await self.served_protocols())

    # --- recording through MediaMTX -------------------------------------------------------------

    def default_record_path(self) -> str:
        """``<recordings_dir>/%path_%Y-%m-%d_%H-%M-%S-%f``: camera0_2026-01-31_12-00-00-123456.mp4."""
        return f"{self.config.recordings_dir}/%path_%Y-%m-%d_%H-%M-%S-%f"

    async def set_recording(
        self,
        camera: Camera | str,
        enabled: bool,
        record_path: str | None = None,
        record_format: str = "fmp4",
        segment_seconds: float | None = None,
    ) -> None:
        """Turn MediaMTX's recorder on or off for a camera's path.

        Besides :func:`record_conf`'s fields, turning it on sets
        ``runOnInit`` to the path's ``runOnDemand`` command (and
        ``runOnInitRestart``): MediaMTX records only what is published, and an
        on-demand publisher runs only while someone watches. Turning it off
        clears ``runOnInit``, so the camera is on demand again. Changing
        ``runOnInit`` makes MediaMTX recreate the path, which disconnects its
        current readers once.

        Defaults: :meth:`default_record_path`, ``recording.segment_seconds``.
        Raises -32006 (:class:`MediaMTXError` from MediaMTX; a plain
        RpcError when the path is missing or not ours) and ValueError for
        bad recording options.
        """
        name = camera if isinstance(camera, str) else camera.id
        if segment_seconds is None:
            segment_seconds = self.config.recording.segment_seconds
        fields = record_conf(enabled, record_path or self.default_record_path(), record_format, segment_seconds)
        async with self._lock:
            existing = await self.client.get_path_config(name)
            if existing is None or not is_managed(existing):
                why = "does not exist" if existing is None else "is not managed by camservice"
                raise RpcError(MEDIA_BACKEND, data={"reason": f"MediaMTX path {name} {why}"})
            fields["runOnInit"] = existing["runOnDemand"] if enabled else ""
            fields["runOnInitRestart"] = enabled
            await self.client.patch_path(name, fields)
        log.info("mediamtx_recording_set", path=name, record=enabled)


def _reason(exc: Exception) -> str:
    return exc.reason if isinstance(exc, MediaMTXError) else str(exc)
