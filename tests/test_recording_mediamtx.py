"""The recording worker's MediaMTX backend against the spec-validating fake MediaMTX.

Before it reads a camera's stream (a recording, or a snapshot of an idle
camera) the backend checks the camera's path through MediaMTX's control
API. Here the API is :class:`~tests.fakes.mediamtx.FakeMediaMTX`; the
stream itself is an ffmpeg publishing H.264 over TCP to one reader (as in
``test_recording_ffmpeg``): only :meth:`MediaMTXBackend.stream_url` is
replaced, the API check is the real one. The breaker's clock is moved by
hand, so nothing sleeps through a reset timeout and no assert depends on
how fast the machine is.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from camservice.workers.recording.mediamtx_backend import MediaMTXBackend, MediaMTXUnavailable
from camservice.workers.recording.sessions import RecordingManager, make_backend

from camservice import errors, ffmpeg
from camservice.breaker import CLOSED, OPEN
from camservice.errors import RpcError
from camservice.mediamtx import UNREACHABLE, MediaMTXClient
from tests.fakes.mediamtx import FakeMediaMTX
from tests.harness import Clock, free_port
from tests.test_recording_ffmpeg import SIZE, Harness, holders, probe, snap_params, start_params, until

pytestmark = pytest.mark.slow

CONFIG_GET = "/v3/config/paths/get/camera0"
LIVE_GET = "/v3/paths/get/camera0"
SECRET = "s3cr3t-Pa55"


class StandIn(MediaMTXBackend):
    """The MediaMTX backend reading local TCP publishers instead of MediaMTX's RTSP server.

    Only the stream URL differs; :attr:`read` lists every URL a capture was started on.
    """

    def __init__(self, config, client: MediaMTXClient | None = None):
        super().__init__(config, client)
        self.urls: list[str] = []
        self.read: list[str] = []

    def stream_url(self, camera):
        url = self.urls.pop(0) if self.urls else super().stream_url(camera)
        self.read.append(url)
        return url


@pytest.fixture
def clock() -> Clock:
    return Clock()


def setup(
    tmp_path: Path, fake: FakeMediaMTX, clock: Clock | None = None, api: str | None = None
) -> tuple[Harness, StandIn]:
    """A harness whose manager uses a :class:`StandIn` backend checking paths on ``fake``."""
    h = Harness(tmp_path, **{"media.backend": "mediamtx", "media.mediamtx_api": api or fake.url})
    client = None
    if clock is not None:
        client = MediaMTXClient(fake.url, timeout=1.0, failure_threshold=2, reset_timeout=30.0, clock=clock)
    backend = StandIn(h.config, client)
    h.manager = RecordingManager(h.config, h.find, lambda t, d: h.events.append((t, d)), backend=backend)
    h.manager.stop_timeout = 3.0
    return h, backend


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (read from /proc: connecting would use up
    the publisher's only connection)."""
    wanted = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(line.split()[1] == wanted and line.split()[3] == "0A" for line in lines)


class Publishers:
    """ffmpeg publishers of H.264 over TCP, one reader each."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.ports: list[int] = []

    def add(self) -> str:
        port = free_port()
        self.procs.append(
            subprocess.Popen(
                [
                    ffmpeg.locate(),
                    "-hide_banner",
                    "-nostdin",
                    "-loglevel",
                    "error",
                    "-re",
                    "-f",
                    "lavfi",
                    "-i",
                    f"testsrc2=size={SIZE}:rate=15",
                    "-c:v",
                    "libx264",
                    "-preset",
                    "ultrafast",
                    "-tune",
                    "zerolatency",
                    "-pix_fmt",
                    "yuv420p",
                    "-g",
                    "15",
                    "-f",
                    "mpegts",
                    f"tcp://127.0.0.1:{port}?listen=1",
                ]
            )
        )
        self.ports.append(port)
        return f"tcp://127.0.0.1:{port}"

    async def ready(self) -> None:
        def settled() -> bool:
            return all(listening(port) for port in self.ports) or any(p.poll() is not None for p in self.procs)

        await until(settled, timeout=20.0)
        dead = [port for proc, port in zip(self.procs, self.ports) if proc.poll() is not None]
        assert not dead, f"publishers on ports {dead} exited before listening"

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(10)


async def failure(call) -> RpcError:
    try:
        await call
    except RpcError as exc:
        return exc
    raise AssertionError("the call succeeded")


def checks(fake: FakeMediaMTX) -> list[str]:
    return [target for method, target in fake.requests if target in (CONFIG_GET, LIVE_GET)]


# --- the path exists --------------------------------------------------------------------


def test_checked_path_lets_snapshot_and_recording_read_the_stream(tmp_path: Path, fake, clock):
    h, backend = setup(tmp_path, fake, clock)
    publishers = Publishers()
    backend.urls = [publishers.add(), publishers.add()]  # the idle snapshot's, then the recording's

    async def scenario():
        await backend.api.add_path("camera0", {"source": "publisher"})  # what discovery does
        await h.manager.open()
        await publishers.ready()
        snap = await h.manager.take_snapshot(snap_params())
        started = await h.manager.start_recording(start_params())
        await asyncio.sleep(1.5)
        stopped = await h.manager.stop_recording({"device": "sim:0"})
        return snap, started, stopped

    try:
        snap, started, stopped = asyncio.run(scenario())
    finally:
        publishers.close()
    assert probe(Path(snap["file_path"])).resolution == SIZE
    info = probe(h.recording(started["filename"]))
    assert info.codec == "h264" and info.resolution == SIZE and info.duration > 0
    assert stopped["status"] == "STOPPED"
    # One API check before each read, and each read went to the stream, not the device.
    assert checks(fake) == [CONFIG_GET, CONFIG_GET]
    assert len(backend.read) == 2 and not backend.urls
    assert not holders(h.node())
    assert backend.api.breaker.state == CLOSED


def test_default_backend_has_one_client_from_config_and_reads_rtsp(tmp_path: Path, fake):
    h = Harness(
        tmp_path,
        **{
            "media.backend": "mediamtx",
            "media.mediamtx_api": f"http://admin:{SECRET}@127.0.0.1:{fake.port}",
            "media.rtsp_port": 18554,
        },
    )
    backend = make_backend(h.config)
    assert isinstance(backend, MediaMTXBackend)
    assert backend.api.base_url == fake.url  # credentials kept out of anything loggable
    assert backend.open_input(h.cameras["camera0"]).args[-4:] == [
        "-rtsp_transport",
        "tcp",
        "-i",
        "rtsp://127.0.0.1:18554/camera0",
    ]
    fake.set_path_state("camera0", ready=False)  # only live (under all_others): a path all the same

    async def scenario():
        await backend.check_path(h.cameras["camera0"])

    asyncio.run(scenario())
    assert checks(fake) == [CONFIG_GET, LIVE_GET]


# --- the check refuses -----------------------------------------------------------------------


def test_no_path_is_refused_before_reading(tmp_path: Path, fake, clock):
    h, backend = setup(tmp_path, fake, clock)

    async def scenario():
        await h.manager.open()
        return (
            await failure(h.manager.start_recording(start_params())),
            await failure(h.manager.take_snapshot(snap_params())),
        )

    for exc in asyncio.run(scenario()):
        assert exc.code == errors.MEDIA_BACKEND
        assert exc.data == {"reason": "no MediaMTX path for camera0"}
    assert checks(fake) == [CONFIG_GET, LIVE_GET] * 2
    assert backend.read == []  # no capture was started
    assert not h.manager.sessions
    assert not [d for t, d in h.events if t == "recording_status_update"]
    assert not list(h.config.recordings_dir.iterdir()) and not list(h.config.snapshots_dir.iterdir())
    assert backend.api.breaker.state == CLOSED  # MediaMTX answered


def test_mediamtx_error_status_carries_its_detail(tmp_path: Path, fake, clock):
    h, backend = setup(tmp_path, fake, clock)

    async def scenario():
        await backend.api.add_path("camera0", {"source": "publisher"})
        await h.manager.open()
        fake.fail_next(500, "path manager is terminating")
        start = await failure(h.manager.start_recording(start_params()))
        fake.fail_next(500, "path manager is terminating")
        snap = await failure(h.manager.take_snapshot(snap_params()))
        return start, snap

    for exc in asyncio.run(scenario()):
        assert exc.code == errors.MEDIA_BACKEND
        assert exc.data == {"reason": "path manager is terminating", "http_status": 500}
    assert backend.read == [] and not h.manager.sessions
    assert not [d for t, d in h.events if t == "recording_status_update"]
    assert backend.api.breaker.state == CLOSED  # an error answer shows MediaMTX is up


def test_reasons_carry_no_credentials_or_outside_paths(tmp_path: Path, fake):
    h, backend = setup(tmp_path, fake, api=f"http://admin:{SECRET}@127.0.0.1:{fake.port}")
    fake.paths["camera0"] = {"source": "publisher"}
    leaky = (
        f"cannot read rtsp://admin:{SECRET}@10.0.0.5:554/cam?token=abc123 (see /etc/mediamtx/mediamtx.yml;"
        f" password {SECRET})"
    )

    async def scenario():
        await h.manager.open()
        fake.fail_next(500, leaky)
        return await failure(h.manager.start_recording(start_params()))

    exc = asyncio.run(scenario())
    reason = exc.data["reason"]
    assert exc.code == errors.MEDIA_BACKEND and exc.data["http_status"] == 500
    assert SECRET not in reason and "admin" not in reason and "abc123" not in reason and "/etc" not in reason
    assert "rtsp://10.0.0.5:554/cam" in reason and "mediamtx.yml" in reason
    # FAILED reasons go through the same sanitize(); files in storage keep their path.
    kept = f"{h.config.recordings_dir}/x.mp4"
    text = backend.sanitize(
        f"tcp://u:{SECRET}@127.0.0.1:1/a: refused; {kept}; /home/alice/ffmpeg: error; file:///home/alice/x.ts"
    )
    assert SECRET not in text and "u:" not in text and "/home" not in text
    assert "tcp://127.0.0.1:1/a" in text and kept in text and "ffmpeg: error" in text


# --- MediaMTX down, then back ---------------------------------------------------------------


def test_unreachable_opens_the_breaker_and_recovers_by_itself(tmp_path: Path, fake, clock):
    h, backend = setup(tmp_path, fake, clock)
    breaker = backend.api.breaker
    publishers = Publishers()

    async def scenario():
        await backend.api.add_path("camera0", {"source": "publisher"})
        await h.manager.open()
        fake.stop()
        down = [await failure(h.manager.start_recording(start_params()))]
        after_first = breaker.state
        down.append(await failure(h.manager.take_snapshot(snap_params())))  # second failure: threshold
        after_second = breaker.state
        fake.start()  # MediaMTX is back, but the breaker has not let a probe through yet
        sent = len(fake.requests)
        fast = await failure(h.manager.start_recording(start_params()))
        fast_state, fast_sent = breaker.state, len(fake.requests) - sent
        clock.now += breaker.reset_timeout  # the cool-down passes: the next call is the probe
        backend.urls = [publishers.add()]
        await publishers.ready()
        snap = await h.manager.take_snapshot(snap_params())
        return down, after_first, after_second, fast, fast_state, fast_sent, sent, snap

    try:
        down, after_first, after_second, fast, fast_state, fast_sent, sent, snap = asyncio.run(scenario())
    finally:
        publishers.close()
    for exc in down:
        assert exc.code == errors.MEDIA_BACKEND and exc.data == {"reason": UNREACHABLE}
    assert after_first == CLOSED and after_second == OPEN
    # Open breaker: refused without a request, though MediaMTX was answering again.
    assert fast.code == errors.MEDIA_BACKEND and fast.data["reason"].startswith(UNREACHABLE)
    assert fast_state == OPEN and fast_sent == 0
    # Recovered by itself: the probe went out, found the path, and the snapshot was taken.
    assert snap["status"] == "completed" and probe(Path(snap["file_path"])).resolution == SIZE
    assert breaker.state == CLOSED
    assert [t for m, t in fake.requests[sent:]] == [CONFIG_GET]
    assert len(backend.read) == 1 and not h.manager.sessions


def test_a_silent_mediamtx_is_waited_for_boundedly_without_blocking_the_loop(tmp_path: Path, fake, clock):
    h, backend = setup(tmp_path, fake, clock)
    fake.paths["camera0"] = {"source": "publisher"}
    fake.delay = 30.0  # answers far later than the client's timeout (stop() cuts it short)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    async def scenario():
        task = asyncio.create_task(ticker())
        try:
            await backend.check_path(h.cameras["camera0"], timeout=0.5)
        except MediaMTXUnavailable as exc:
            return exc, ticks
        finally:
            task.cancel()
        raise AssertionError("the check passed")

    try:
        exc, seen = asyncio.run(scenario())
    finally:
        fake.delay = 0.0
    # The check gave up by itself (not through the client's 1 s socket timeout), while the loop ran on.
    assert exc.reason.startswith(UNREACHABLE) and "no answer within" in exc.reason
    assert exc.http_status is None and seen > 0
