"""``GET /cameras/{id}/preview``: a live MJPEG preview for cameras the media backend does not stream.

The recording worker owns every device and the capture that feeds the
preview (``workers/recording/preview.py``): the frames of a running
recording, or a short-lived low-rate capture of an idle camera. This
gateway side polls it for frames over ZeroMQ (internal call
``preview_frame``, one JPEG of a few tens of KB per reply, a few per second)
and writes them as ``multipart/x-mixed-replace`` parts, through the
exchange's streamed body with backpressure, so plain HTTP and TLS are
served alike. Why polling rather than handing the socket to the worker as
downloads do: README, design notes, "Live preview".

One :class:`Feed` per camera in this gateway, however many viewers: it
polls while anyone watches here and each viewer takes the newest frame when
its connection can take one (a slow viewer skips frames, never queues them).
When the last viewer leaves, the feed stops polling and the worker stops an
idle camera's capture a few seconds later.

Credentials as downloads (:class:`~camservice.httpauth.HttpGuard`): Bearer,
``X-API-Key``, or a signed link, which
``GET /cameras/{id}/preview/link?expires_in=N`` (viewer, headers only) returns
as ``{"url", "expires_at"}`` for an ``<img src>``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from camservice.cameras import CONNECTED, CameraTable
from camservice.errors import CAMERA_NOT_FOUND, CAPABILITY_UNSUPPORTED, SERVICE_BUSY, RpcError
from camservice.httpauth import MAX_LINK_SECONDS, HttpGuard, LinkSigner
from camservice.timestamps import utc_iso

from .calls import Call, SendCall
from .routes import HttpRequest, HttpResponse, RouteTable

BOUNDARY = "camframe"
#: Seconds one ``preview_frame`` call may wait in the worker for a new frame.
POLL_WAIT = 1.0
#: Seconds a new viewer waits for the first frame (a capture starting) before 503.
FIRST_FRAME_TIMEOUT = 10.0
#: Seconds a viewer waits for any frame before its stream ends (capture stalled).
FRAME_TIMEOUT = 10.0
#: Consecutive "busy" answers (worker restarting, queue full) a feed rides out.
BUSY_RETRIES = 20
DEFAULT_LINK_SECONDS = 300


class FeedEnded(Exception):
    """The feed cannot deliver frames any more: ``status`` and ``reason`` for a viewer not yet answered."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _ended_by(error: RpcError) -> FeedEnded:
    reason = str((error.data or {}).get("reason") or error.message)
    if error.code == CAMERA_NOT_FOUND:
        return FeedEnded(503, "camera disconnected")
    if error.code == CAPABILITY_UNSUPPORTED:
        return FeedEnded(404, "the media backend streams this camera itself: use its stream URLs")
    return FeedEnded(503, f"preview unavailable: {reason}")


class Feed:
    """The newest frame of one camera, polled from the recording worker while viewers remain."""

    def __init__(self, camera_id: str, device: str, send_call: SendCall, on_idle: Callable[[Feed], None]):
        self.camera_id = camera_id
        self.device = device
        self.send_call = send_call
        self.on_idle = on_idle
        self.viewers = 0
        self.version = 0  # bumps with every new frame
        self.frame: bytes | None = None
        self.ended: FeedEnded | None = None
        self._seq: str | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None

    def join(self) -> None:
        self.viewers += 1
        if self._task is None:
            self._task = asyncio.ensure_future(self._poll())

    def leave(self) -> None:
        self.viewers -= 1

    async def next(self, after: int, timeout: float) -> tuple[int, bytes]:
        """The first frame newer than version ``after``; raises FeedEnded or asyncio.TimeoutError."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self.ended is not None:
                raise self.ended
            if self.version > after and self.frame is not None:
                return self.version, self.frame
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - asyncio.get_running_loop().time()))

    def _notify(self) -> None:
        self._changed.set()

    async def _call(self) -> dict[str, Any]:
        future: asyncio.Future = asyncio.get_running_loop().create_future()

        def done(error: RpcError | None, result: Any) -> None:
            if not future.done():
                future.set_result((error, result))

        params = {"device": self.camera_id, "after": self._seq, "wait": POLL_WAIT}
        self.send_call(Call("recording", "preview_frame", params, POLL_WAIT + 3.0, done, f"preview-{self.camera_id}"))
        error, result = await future  # the pool answers every call by its deadline
        if error is not None:
            raise error
        return result

    async def _poll(self) -> None:
        busy = 0
        try:
            while self.viewers > 0:
                try:
                    result = await self._call()
                except RpcError as error:
                    if error.code == SERVICE_BUSY and busy < BUSY_RETRIES:
                        busy += 1
                        await asyncio.sleep(0.25)
                        continue
                    self.ended = _ended_by(error)
                    return
                busy = 0
                frame = result.get("frame") if isinstance(result, dict) else None
                if isinstance(frame, bytes):
                    self._seq = result.get("seq")
                    self.frame = frame
                    self.version += 1
                    self._notify()
        except Exception as exc:  # never leave viewers waiting on a dead task
            self.ended = FeedEnded(503, f"preview failed: {exc}")
        finally:
            if self.ended is not None:
                self._notify()
            self._task = None
            self.on_idle(self)


class Previews:
    """The preview routes of one gateway; see the module docstring."""

    def __init__(self, config, send_call: SendCall, cameras: CameraTable, guard: HttpGuard, signer: LinkSigner):
        self.config = config
        self.send_call = send_call
        self.cameras = cameras
        self.guard = guard
        self.signer = signer
        self.feeds: dict[str, Feed] = {}
        self.streams = 0  # viewers being served now

    def register(self, routes: RouteTable) -> None:
        routes.add("GET", "/cameras/{id}/preview", self.preview)
        routes.add("GET", "/cameras/{id}/preview/link", self.link)

    def _camera(self, request: HttpRequest):
        """The camera asked for, or the answer to give instead."""
        if self.config.media.backend != "ffmpeg":
            return None, HttpResponse.text(404, "the media backend streams this camera itself: use its stream URLs\n")
        camera = self.cameras.find(unquote(request.params["id"]))
        if camera is None:
            return None, HttpResponse.text(404, "camera not found\n")
        if camera.status != CONNECTED:
            return None, HttpResponse.text(
                503, f"camera {camera.id} is {camera.status.lower()}\n", {"Retry-After": "5"}
            )
        return camera, None

    def link(self, request: HttpRequest) -> HttpResponse:
        denial = self.guard.check(request.peer, request.headers, "viewer")  # headers only: links mint no links
        if denial is not None:
            return HttpResponse.text(denial.status, denial.reason + "\n", denial.headers)
        camera, refusal = self._camera(request)
        if refusal is not None:
            return refusal
        values = parse_qs(request.query, max_num_fields=4).get("expires_in", [str(DEFAULT_LINK_SECONDS)])
        if len(values) != 1 or not values[0].isdigit() or not 1 <= int(values[0]) <= MAX_LINK_SECONDS:
            return HttpResponse.text(400, f"expires_in must be an integer from 1 to {MAX_LINK_SECONDS}\n")
        expires = int(time.time()) + int(values[0])
        path = f"/cameras/{quote(camera.id)}/preview"
        host = request.headers.get("host")
        base = f"{request.scheme}://{host}" if host else ""
        body = {"url": f"{base}{path}?{self.signer.sign(path, expires)}", "expires_at": utc_iso(expires, "seconds")}
        return HttpResponse(
            200, {"Content-Type": "application/json", "Cache-Control": "no-store"}, json.dumps(body).encode()
        )

    async def preview(self, request: HttpRequest) -> HttpResponse:
        denial = self.guard.check(request.peer, request.headers, "viewer", path=request.path, query=request.query)
        if denial is not None:
            return HttpResponse.text(denial.status, denial.reason + "\n", denial.headers)
        camera, refusal = self._camera(request)
        if refusal is not None:
            return refusal
        feed = self.feeds.get(camera.id)
        if feed is None:
            feed = self.feeds[camera.id] = Feed(camera.id, camera.device, self.send_call, self._idle)
        feed.join()
        try:
            version, frame = await feed.next(0 if feed.frame is None else feed.version - 1, FIRST_FRAME_TIMEOUT)
        except FeedEnded as ended:
            return HttpResponse.text(ended.status, ended.reason + "\n", {"Retry-After": "5"})
        except asyncio.TimeoutError:
            return HttpResponse.text(503, "the camera delivered no picture in time\n", {"Retry-After": "5"})
        finally:
            # The stream joins again when it starts: a response never sent must not count as a viewer.
            feed.leave()
        headers = {
            "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        }
        return HttpResponse(200, headers, self._stream(feed, version, frame))

    async def _stream(self, feed: Feed, version: int, frame: bytes) -> AsyncIterator[bytes]:
        """The parts; ends (closing boundary) when the camera goes away or stops delivering."""
        current = self.feeds.get(feed.camera_id)
        if current is None:  # the feed went idle between the first frame and now
            self.feeds[feed.camera_id] = feed
        elif current is not feed:  # ... and another viewer started a new one: share it
            feed, version = current, 0
        feed.join()
        self.streams += 1
        try:
            while True:
                yield f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(frame)}\r\n\r\n".encode()
                yield frame
                yield b"\r\n"
                try:
                    version, frame = await feed.next(version, FRAME_TIMEOUT)
                except (FeedEnded, asyncio.TimeoutError):
                    break
            yield f"--{BOUNDARY}--\r\n".encode()
        finally:
            self.streams -= 1
            feed.leave()

    def _idle(self, feed: Feed) -> None:
        """A feed's poll loop ended (no viewer left, or the feed ended): forget it."""
        if self.feeds.get(feed.camera_id) is feed:
            del self.feeds[feed.camera_id]
