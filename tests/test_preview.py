"""``GET /cameras/{id}/preview``: live MJPEG through the whole running service (plain HTTP and TLS).

Real service, simulated cameras, real ffmpeg: a client reads the multipart
stream and gets whole JPEG frames that ffmpeg decodes; credentials as for
downloads (and the signed preview link); a preview of a recording camera
reads the recording's own capture (one ffmpeg, no second reader) and the
recording stays playable; a recording starts while a preview holds the
device and takes it over; the preview's capture ends once nobody watches
(the simulated device's lock is free again); an unplugged camera ends the
stream with the closing boundary.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import time

import psutil
import pytest
import requests
from camservice.gateway.server import GatewayServer

from camservice import config as config_module
from camservice import ffmpeg, simnodes
from camservice.tokens import issue_token, load_or_create_secret
from tests.harness import Client, Service, wait_for
from tests.test_api_downloads import make_certificate
from tests.test_metrics import SECRET, http_get

pytestmark = pytest.mark.slow

PART = re.compile(rb"--camframe\r\nContent-Type: image/jpeg\r\nContent-Length: (\d+)\r\n\r\n")
END = b"--camframe--\r\n"


class Stream:
    """A multipart/x-mixed-replace reader over a streamed requests response."""

    def __init__(self, response: requests.Response):
        self.response = response
        self.chunks = response.iter_content(16384)
        self.buffer = b""
        self.ended = False

    def _more(self) -> bool:
        try:
            self.buffer += next(self.chunks)
            return True
        except StopIteration:
            return False

    def frame(self) -> bytes | None:
        """The next whole JPEG, or None once the stream ended (closing boundary seen, then EOF)."""
        while True:
            if self.buffer.startswith(END):
                self.ended = True
                while self._more():
                    pass
                return None
            match = PART.match(self.buffer)
            if match is not None:
                size = int(match.group(1))
                end = match.end() + size
                if len(self.buffer) >= end + 2:
                    frame, tail = self.buffer[match.end() : end], self.buffer[end : end + 2]
                    assert tail == b"\r\n", tail
                    self.buffer = self.buffer[end + 2 :]
                    return frame
            elif len(self.buffer) >= 80:
                raise AssertionError(f"not a multipart part: {self.buffer[:80]!r}")
            if not self._more():
                raise AssertionError(f"stream cut without the closing boundary: {self.buffer[:80]!r}")

    def frames(self, count: int) -> list[bytes]:
        found = []
        while len(found) < count:
            frame = self.frame()
            assert frame is not None, f"stream ended after {len(found)} frames"
            found.append(frame)
        return found

    def close(self) -> None:
        self.response.close()


class Api:
    def __init__(self, svc: Service, scheme: str, verify):
        self.svc = svc
        self.base = f"{scheme}://127.0.0.1:{svc.port}"
        self.verify = verify
        self.viewer = svc.token("viewer")
        self.operator = svc.token("operator")
        self.api_key = svc.cli("keys", "create", "--role", "viewer", "--name", "preview").stdout.strip()

    def get(self, path: str, headers: dict | None = None, stream: bool = False) -> requests.Response:
        url = path if path.startswith("http") else self.base + path
        return requests.get(url, headers=headers or {}, verify=self.verify, timeout=30, stream=stream)

    def bearer(self) -> dict:
        return {"Authorization": f"Bearer {self.viewer}"}

    def open(self, camera: str, headers: dict | None = None) -> Stream:
        response = self.get(f"/cameras/{camera}/preview", headers or self.bearer(), stream=True)
        assert response.status_code == 200, (response.status_code, response.text)
        assert response.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=camframe"
        return Stream(response)

    def call(self, method: str, params: dict, token: str | None = None):
        async def go():
            url = self.svc.url
            extra = {}
            if self.base.startswith("https"):
                import ssl

                url = url.replace("ws://", "wss://")
                extra["ssl"] = ssl.create_default_context(cafile=self.verify)
            async with Client(url, token or self.operator, **extra) as client:
                return await client.call(method, params)

        return asyncio.run(go())

    def captures(self, camera: str) -> list[psutil.Process]:
        """The recording worker's ffmpeg children capturing ``camera`` (recording or preview)."""
        worker = psutil.Process(self.svc.pids()["recording-0"])
        found = []
        for child in worker.children(recursive=True):
            try:
                command = " ".join(child.cmdline())
                if (
                    "ffmpeg" in child.name().lower()
                    and child.status() != psutil.STATUS_ZOMBIE
                    and f"/{camera}.jpg" in command
                ):
                    found.append(child)
            except psutil.Error:  # exited meanwhile
                continue
        return found

    def device_free(self, index: int) -> bool:
        """Whether nobody reads simulated camera ``index`` (its lock can be taken)."""
        try:
            fd = simnodes.open_sim_device(simnodes.node_path(self.svc.state_dir, index))
        except simnodes.DeviceBusy:
            return False
        os.close(fd)
        return True


@pytest.fixture(scope="module")
def plain():
    with Service(simulate=2, **{"files.http_port": None}) as svc:
        yield Api(svc, "http", True)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = make_certificate(tmp_path_factory.mktemp("tls"))
    settings = {"files.http_port": None, "server.tls.cert_file": cert, "server.tls.key_file": key}
    with Service(simulate=1, **settings) as svc:
        yield Api(svc, "https", cert)


@pytest.fixture(params=["plain", "tls"])
def api(request):
    return request.getfixturevalue(request.param)


def decodes(frame: bytes, folder) -> tuple[int | None, int | None]:
    """ffmpeg decodes the whole picture (``-xerror``); returns its size."""
    path = folder / "frame.jpg"
    path.write_bytes(frame)
    exe = ffmpeg.locate()
    subprocess.run([exe, "-v", "error", "-xerror", "-i", str(path), "-f", "null", "-"], check=True, timeout=30)
    info = ffmpeg.probe(path, exe)
    return info.width, info.height


def test_stream_delivers_whole_jpeg_frames(api, tmp_path):
    stream = api.open("camera0")
    try:
        frames = stream.frames(4)
    finally:
        stream.close()
    for frame in frames:
        assert frame.startswith(b"\xff\xd8") and frame.endswith(b"\xff\xd9")
    assert len(set(frames)) > 1  # live: the picture changes (the simulator's test pattern moves)
    assert decodes(frames[-1], tmp_path) == (320, 240)


def test_credentials_as_for_downloads(api):
    refused = api.get("/cameras/camera0/preview")
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert api.get("/cameras/camera0/preview", {"Authorization": "Bearer nonsense"}).status_code == 403
    assert api.get("/cameras/camera0/preview/link").status_code == 401
    for headers in (api.bearer(), {"X-API-Key": api.api_key}):
        stream = api.open("camera0", headers)
        try:
            assert stream.frame() is not None
        finally:
            stream.close()

    link = api.get("/cameras/camera0/preview/link?expires_in=60", api.bearer()).json()
    assert set(link) == {"url", "expires_at"} and link["url"].startswith(api.base + "/cameras/camera0/preview?")
    response = api.get(link["url"], stream=True)  # no header at all: the link is the credential
    try:
        assert response.status_code == 200
        assert Stream(response).frame() is not None
    finally:
        response.close()
    assert api.get(link["url"].replace("sig=", "sig=0")).status_code == 403  # tampered
    other = link["url"].replace("/cameras/camera0/", "/cameras/camera1/")
    assert api.get(other).status_code == 403  # a link is for its own camera only
    # A link cannot mint links, and the lifetime has the contract's bounds.
    assert api.get(link["url"].replace("/preview?", "/preview/link?")).status_code == 401
    assert api.get("/cameras/camera0/preview/link?expires_in=0", api.bearer()).status_code == 400


def test_unknown_camera_is_404(plain):
    response = plain.get("/cameras/camera9/preview", plain.bearer())
    assert response.status_code == 404 and "camera not found" in response.text
    assert plain.get("/cameras/camera9/preview/link", plain.bearer()).status_code == 404


def test_preview_of_a_recording_reads_the_recording_capture(plain, tmp_path):
    wait_for(lambda: not plain.captures("camera0") and plain.device_free(0), 30, message="camera0 idle")
    started = plain.call("start_recording", {"device": "camera0"})
    try:
        stream = plain.open("camera0")
        try:
            stream.frames(3)
            # One ffmpeg reads the device: the recording's run, which also writes the preview frame.
            assert len(plain.captures("camera0")) == 1
            stream.frames(2)
            assert len(plain.captures("camera0")) == 1
        finally:
            stream.close()
    finally:
        stopped = plain.call("stop_recording", {"device": "camera0"})
    assert stopped["filename"] == started["filename"] and stopped["file_size"] > 0
    info = ffmpeg.probe(plain.svc.state_dir / "recordings" / started["filename"])
    assert info.duration and info.duration > 0 and (info.width, info.height) == (320, 240)


def test_recording_takes_over_a_running_preview(plain):
    stream = plain.open("camera1")
    try:
        stream.frames(2)
        assert not plain.device_free(1)  # the preview capture holds the device
        started = plain.call("start_recording", {"device": "camera1"})
        try:
            assert len(plain.captures("camera1")) == 1  # the preview capture gave way to the recording's run
            stream.frames(3)  # the same viewer goes on, now from the recording's capture
            snapshot = plain.call("take_snapshot", {"device": "camera1"})
            assert snapshot["file_size"] > 0
        finally:
            stopped = plain.call("stop_recording", {"device": "camera1"})
        assert stopped["file_size"] > 0
        stream.frames(2)  # and after it, from a new preview capture
    finally:
        stream.close()
    info = ffmpeg.probe(plain.svc.state_dir / "recordings" / started["filename"])
    assert info.duration and info.duration > 0


def test_preview_capture_stops_when_nobody_watches(plain):
    first, second = plain.open("camera1"), plain.open("camera1")
    try:
        first.frames(1)
        second.frames(1)
        snapshot = plain.call("take_snapshot", {"device": "camera1"})  # from the preview's frame: no 2nd reader
        assert snapshot["file_size"] > 0
        first.close()
        second.frames(2)  # one viewer left: the capture goes on
        assert not plain.device_free(1)
    finally:
        first.close()
        second.close()
    wait_for(lambda: plain.device_free(1) and not plain.captures("camera1"), 30, message="the preview capture to stop")
    # Idle again: a snapshot opens the device itself.
    assert plain.call("take_snapshot", {"device": "camera1"})["file_size"] > 0


def test_unplugged_camera_ends_the_stream(plain):
    camera = plain.svc.cli("camera", "plug").stdout.strip()
    wait_for(lambda: plain.get(f"/cameras/{camera}/preview/link", plain.bearer()).status_code == 200, 30)
    stream = plain.open(camera)
    try:
        stream.frames(2)
        plain.svc.cli("camera", "unplug", camera)
        deadline = time.monotonic() + 30
        while stream.frame() is not None:
            assert time.monotonic() < deadline, "the stream went on after the unplug"
        assert stream.ended
    finally:
        stream.close()
    gone = plain.get(f"/cameras/{camera}/preview", plain.bearer())
    assert gone.status_code == 503 and "disconnected" in gone.text


def test_a_kept_alive_download_connection_gives_other_paths_back(plain):
    """A connection handed to a file worker never gets a file worker's 404 for a gateway path:
    it is closed unanswered, so that browsers send the request again on a new connection."""
    shot = plain.call("take_snapshot", {"device": "camera0"})["filename"]
    head = f"Host: 127.0.0.1\r\nAuthorization: Bearer {plain.viewer}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", plain.svc.port), timeout=30) as sock:
        sock.sendall(f"GET /files/snapshots/{shot} HTTP/1.1\r\n{head}".encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        top, _, body = answer.partition(b"\r\n\r\n")
        assert top.startswith(b"HTTP/1.1 200")
        length = int(re.search(rb"(?i)content-length: (\d+)", top).group(1))
        while len(body) < length:
            body += sock.recv(65536)
        assert body.startswith(b"\xff\xd8") and len(body) == length
        sock.sendall(f"GET /cameras/camera0/preview/link HTTP/1.1\r\n{head}".encode())
        assert sock.recv(65536) == b""  # closed, nothing answered
    # On a new connection the gateway answers it.
    assert plain.get("/cameras/camera0/preview/link", plain.bearer()).status_code == 200


@pytest.fixture
def mediamtx_gateway(tmp_path):
    """A gateway of the MediaMTX backend in this process (its routes, no workers)."""
    settings = {
        "runtime.state_dir": str(tmp_path / "state"),
        "security.jwt_secret": SECRET,
        "media.backend": "mediamtx",
    }
    server = GatewayServer(config_module.load(overrides=settings, environ={}), 0)
    yield server
    server.events.close()
    server.pool.close()
    server.ctx.term()


def test_no_preview_where_the_media_backend_streams(mediamtx_gateway):
    """With MediaMTX the backend streams every camera itself: 404 saying so, before any camera lookup."""
    server = mediamtx_gateway
    viewer = issue_token(load_or_create_secret(server.config), "viewer", "someone", 600)
    for path in ("/cameras/camera0/preview", "/cameras/camera0/preview/link"):
        answer = http_get(server, path, {"Authorization": f"Bearer {viewer}"})
        assert answer.status_code == 404 and b"streams this camera itself" in answer.body
        assert http_get(server, path).status_code == 401  # credentials are checked first
