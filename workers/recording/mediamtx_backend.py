"""The MediaMTX media backend: capture runs and snapshots read from MediaMTX.

With ``media.backend: mediamtx`` MediaMTX owns the devices: the discovery
worker gives every camera a MediaMTX path whose on-demand ffmpeg opens
the device and publishes H.264 with one keyframe a second. Opening the
device here as well would make the first stream reader fail with "busy",
so :class:`MediaMTXBackend` reads the camera's RTSP stream instead and
copies it into the same segment files (``-c:v copy``: no second encode).
MediaMTX's own recorder is not used, because its file names
(``recordPath`` patterns) cannot follow the contract's names. Everything
else (segments, journal, resume, preview-frame snapshots) is shared with
the ffmpeg backend.

Before it reads the stream (a capture run, including restarts and
resumes, or a snapshot of an idle camera) the backend asks MediaMTX's
control API whether the camera has a path (:meth:`MediaMTXBackend.check_path`),
through one :class:`~camservice.mediamtx.MediaMTXClient` whose circuit
breaker all those calls share. A failed check is a :class:`MediaMTXUnavailable`
(a :class:`CaptureError`, so the manager treats it like any failed
capture: -32006 for a request, a failed restart for a running session):
``mediamtx unreachable`` when MediaMTX does not answer (at once, without
a network round-trip, while the breaker is open; the breaker lets a probe
through after its reset timeout, so calls recover by themselves),
``no MediaMTX path for <id>`` when it has none (the discovery worker adds
paths for connected cameras), or MediaMTX's own error text with its HTTP
status. Reasons never carry credentials: URLs lose their user
information and query, and the API's password is masked wherever it
appears.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

import structlog

from camservice.cameras import Camera
from camservice.mediamtx import UNREACHABLE, MediaMTXClient, MediaMTXError

from . import capture
from .backend import FfmpegBackend, FfmpegRun
from .capture import CameraGone, CaptureError


class MediaMTXUnavailable(CaptureError):
    """The MediaMTX check before reading a camera's stream failed.

    ``http_status`` is MediaMTX's answer status (None when it did not answer
    or has no path for the camera); the manager adds it to the -32006 data.
    """

    def __init__(self, reason: str, http_status: int | None = None):
        super().__init__(reason)
        self.http_status = http_status


#: A URL in a reason: scheme, then anything up to white space or a quote.
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
#: Masked secrets shorter than this would mangle ordinary words instead.
_MIN_SECRET = 4


class MediaMTXBackend(FfmpegBackend):
    """Snapshots and recordings read from the camera's MediaMTX RTSP path,
    after checking the path through MediaMTX's control API.

    ``client`` replaces the one made from ``media.mediamtx_api`` (tests pass
    one with a hand-driven clock).
    """

    name = "mediamtx"
    # Covers MediaMTX starting the on-demand publisher (runOnDemandStartTimeout 10 s).
    start_timeout = 12.0
    #: The publisher sends a keyframe every second: 1.5 s of probing finds the
    #: stream's parameters, where ffmpeg's default 5 s would delay every start.
    INPUT_OPTIONS = ("-analyzeduration", "1500000")

    def __init__(self, config, client: MediaMTXClient | None = None):
        super().__init__(config)
        api = urlsplit(config.media.mediamtx_api)
        host = api.hostname or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        self.rtsp_base = f"rtsp://{host}:{config.media.rtsp_port}"
        #: One client per backend: every check shares its circuit breaker.
        self.api = client or MediaMTXClient.from_config(config)
        #: The API's password, masked in every reason (it is in no URL this
        #: backend builds, but an error text might echo it; URLs lose their
        #: user information anyway).
        password = unquote(api.password or "")
        self._secrets = (password,) if len(password) >= _MIN_SECRET else ()
        self._log = structlog.get_logger("recording")

    # --- reasons -------------------------------------------------------------------------

    def sanitize(self, text: str) -> str:
        """Paths outside storage reduced to their base name, URLs kept readable
        but without user information or query, known credentials masked."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        pieces, last = [], 0
        for match in _URL.finditer(text):
            pieces.append(super().sanitize(text[last : match.start()]))
            pieces.append(self._safe_url(match.group(0)))
            last = match.end()
        pieces.append(super().sanitize(text[last:]))
        return "".join(pieces)

    def _safe_url(self, url: str) -> str:
        scheme, _, rest = url.partition("://")
        authority, slash, path = rest.partition("/")
        if not authority:  # file:///etc/...: a local path after all
            return f"{scheme}://{super().sanitize('/' + path)}"
        authority = authority.rpartition("@")[2]  # user:password@ dropped
        path = path.split("?", 1)[0].split("#", 1)[0]  # queries may carry tokens
        return f"{scheme}://{authority}{slash}{path}"

    # --- the control API check -------------------------------------------------------------

    def check_timeout(self) -> float:
        """Seconds a whole check may take: a healthy MediaMTX answers at once,
        the client's timeout bounds connecting and each read of one call."""
        return 2 * self.api.timeout + 0.5

    async def check_path(self, camera: Camera, timeout: float | None = None) -> None:
        """Raise :class:`MediaMTXUnavailable` unless MediaMTX is up and has a path for ``camera``.

        The path's configuration is looked up first (the discovery worker
        adds one named ``camera.id``); without one, the live path list is
        asked too, since a path an operator configured by regular expression
        (or ``all_others`` with an outside publisher) serves the name as well.
        A path need not be ready: MediaMTX starts an on-demand publisher when
        the reader arrives. Bounded by :meth:`check_timeout` (and ``timeout``).
        """
        limit = self.check_timeout() if timeout is None else min(timeout, self.check_timeout())
        try:
            async with asyncio.timeout(max(0.1, limit)):
                if await self.api.get_path_config(camera.id) is not None:
                    return
                if await self.api.get_path(camera.id) is not None:
                    return
        except MediaMTXError as exc:
            self._log.warning(
                "mediamtx_check_failed",
                camera=camera.id,
                reason=self.sanitize(exc.reason),
                status=exc.status,
                detail=exc.detail,  # logs only: no credentials in it
                breaker=self.api.breaker.state,
            )
            raise MediaMTXUnavailable(self.sanitize(exc.reason), exc.status) from None
        except TimeoutError:
            # The calls' threads finish on their own (the client's timeout) and tell the breaker.
            self._log.warning("mediamtx_check_timeout", camera=camera.id, seconds=round(limit, 1))
            raise MediaMTXUnavailable(f"{UNREACHABLE} (no answer within {limit:.1f}s)") from None
        except ValueError:  # a camera id MediaMTX could not have as a path name
            raise MediaMTXUnavailable(f"no MediaMTX path for {camera.id}: not a valid path name") from None
        raise MediaMTXUnavailable(f"no MediaMTX path for {camera.id}")

    # --- reading the stream ------------------------------------------------------------------

    def stream_url(self, camera: Camera) -> str:
        return f"{self.rtsp_base}/{camera.id}"

    def open_input(self, camera: Camera) -> capture.DeviceInput:
        if not capture.camera_present(camera):
            raise CameraGone("camera disconnected")
        url = self.stream_url(camera)
        transport = ["-rtsp_transport", "tcp"] if url.startswith(("rtsp:", "rtsps:")) else []
        return capture.DeviceInput([*self.INPUT_OPTIONS, *transport, "-i", url])

    def video_args(self, camera: Camera) -> list[str] | None:
        return ["-c:v", "copy"]

    def warmup_frames(self, camera: Camera) -> int:
        return 0  # the publisher is already past its first frames, or MediaMTX waits for a keyframe

    async def snapshot(self, camera: Camera, target: Path, fmt: str, timeout: float) -> None:
        began = time.monotonic()
        await self._check(camera, timeout)
        await super().snapshot(camera, target, fmt, max(0.5, timeout - (time.monotonic() - began)))

    async def start_run(
        self, camera: Camera, *, tag: str, fmt: str, first_index: int, path_of: Callable[[int], Path], timeout: float
    ) -> FfmpegRun:
        began = time.monotonic()
        await self._check(camera, timeout)
        return await super().start_run(
            camera,
            tag=tag,
            fmt=fmt,
            first_index=first_index,
            path_of=path_of,
            timeout=max(1.0, timeout - (time.monotonic() - began)),
        )

    async def _check(self, camera: Camera, timeout: float) -> None:
        # An unplugged camera is -32004 (CameraGone), whatever MediaMTX says.
        if not capture.camera_present(camera):
            raise CameraGone("camera disconnected")
        await self.check_path(camera, timeout)
