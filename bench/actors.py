"""The slow, stateful part of a realistic mix, beside bench.mix's many viewers.

One forked process (dying with the parent) runs, on its own connections
(``tests.harness.Client``: the websockets library; these calls are few):

* an **operator** per camera: start a recording, take a snapshot while it
  records, stop it after ``record_s``, take a snapshot of the idle camera;
* a **downloader**: every ``download_every`` s, a finished recording over
  HTTP (``GET download_url`` with a bearer token, following a redirect if the
  service still answers one), plus ``get_recording_info``;
* **hot-plug** (only when the suite started the service: it needs the state
  folder): every ``hotplug_every`` s a simulated camera is plugged, then
  unplugged; latency until ``camera_status_update`` reaches a subscribed client;
* **admin polling**: ``get_metrics`` every second, ``get_status`` and
  ``GET /health/ready`` every 5 s.

Every call's latency and outcome is recorded per operation; the names of the
recordings made are kept, so that the endurance run can check each is playable.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from tests.harness import Client, RpcFailure

from . import common


class Record:
    def __init__(self):
        self.lat: dict[str, list[float]] = {}
        self.errors: Counter = Counter()
        self.recordings: list[str] = []
        self.download_bytes = 0
        self.download_s = 0.0
        self.timeline: list[tuple[float, str, float | None]] = []

    def add(self, op: str, seconds: float | None, error: str | None = None) -> None:
        if seconds is not None:
            self.lat.setdefault(op, []).append(seconds * 1000)
        if error:
            self.errors[f"{op}:{error}"] += 1
        self.timeline.append((time.time(), op, None if seconds is None else seconds * 1000))


async def timed(rec: Record, op: str, client: Client, method: str, params=None, timeout: float = 30.0):
    t0 = time.perf_counter()
    try:
        result = await asyncio.wait_for(client.call(method, params), timeout)
    except RpcFailure as exc:
        rec.add(op, time.perf_counter() - t0, str(exc.code))
        return None
    except asyncio.TimeoutError:
        rec.add(op, None, "hung")
        return None
    except (ConnectionError, OSError, Exception) as exc:  # noqa: BLE001  (a killed gateway: count and go on)
        rec.add(op, None, type(exc).__name__)
        return None
    rec.add(op, time.perf_counter() - t0)
    return result


class Reconnecting:
    """A Client that reopens itself when the gateway goes away (faults)."""

    def __init__(self, url: str, token: str, topics: list[str] | None = None):
        self.url, self.token, self.topics = url, token, topics
        self.client: Client | None = None

    async def get(self) -> Client:
        while self.client is None or self.client.ws.state.name != "OPEN":
            try:
                client = Client(self.url, self.token, timeout=20)
                await client.__aenter__()
                if self.topics is not None:
                    await client.call("subscribe_events", {"topics": self.topics})
                else:
                    await client.call("unsubscribe_events", {})
                self.client = client
            except Exception:  # noqa: BLE001  (not listening yet: retry)
                await asyncio.sleep(0.3)
        return self.client


async def operator(rec: Record, conn: Reconnecting, device: str, record_s: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        c = await conn.get()
        started = await timed(rec, "start_recording", c, "start_recording", {"device": device})
        if started is None:
            await timed(rec, "stop_recording", await conn.get(), "stop_recording", {"device": device})
            await asyncio.sleep(1.0)
            continue
        rec.recordings.append(started["filename"])
        await asyncio.sleep(record_s / 2)
        await timed(rec, "take_snapshot", await conn.get(), "take_snapshot", {"device": device})
        await asyncio.sleep(record_s / 2)
        await timed(rec, "stop_recording", await conn.get(), "stop_recording", {"device": device})
        await timed(rec, "take_snapshot", await conn.get(), "take_snapshot", {"device": device})
        await asyncio.sleep(0.5)


def _download(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    size = 0
    with urllib.request.urlopen(request, timeout=30) as answer:
        while chunk := answer.read(1 << 20):
            size += len(chunk)
    return size


async def downloader(rec: Record, conn: Reconnecting, http: str, token: str, every: float, stop) -> None:
    while not stop.is_set():
        await asyncio.sleep(every)
        listing = await timed(rec, "list_recordings", await conn.get(), "list_recordings", {"limit": 20})
        files = [f for f in (listing or {}).get("files", []) if f.get("file_size")]
        if not files:
            continue
        entry = files[len(files) // 2]
        await timed(rec, "get_recording_info", await conn.get(), "get_recording_info", {"filename": entry["filename"]})
        t0 = time.perf_counter()
        try:
            size = await asyncio.to_thread(_download, common.absolute_url(http, entry["download_url"]), token)
        except (urllib.error.URLError, OSError) as exc:
            rec.add("http_download", None, getattr(exc, "code", None) or type(exc).__name__)
            continue
        elapsed = time.perf_counter() - t0
        rec.add("http_download", elapsed)
        rec.download_bytes += size
        rec.download_s += elapsed


async def admin(rec: Record, conn: Reconnecting, http: str, stop) -> None:
    tick = 0
    while not stop.is_set():
        await timed(rec, "get_metrics", await conn.get(), "get_metrics")
        if tick % 5 == 0:
            await timed(rec, "get_status", await conn.get(), "get_status")
            t0 = time.perf_counter()
            try:
                await asyncio.to_thread(lambda: urllib.request.urlopen(http + "/health/ready", timeout=10).read())
                rec.add("http_health_ready", time.perf_counter() - t0)
            except (urllib.error.URLError, OSError) as exc:
                rec.add("http_health_ready", None, getattr(exc, "code", None) or type(exc).__name__)
        tick += 1
        await asyncio.sleep(1.0)


async def hotplug(rec: Record, conn: Reconnecting, state_dir: Path, index: int, every: float, stop) -> None:
    from camservice import simnodes as simulator

    device = f"sim:{index}"
    plugged = False
    while not stop.is_set():
        await asyncio.sleep(every / 2)
        c = await conn.get()
        want = "DISCONNECTED" if plugged else "CONNECTED"
        t0 = time.perf_counter()
        if plugged:
            simulator.unplug(state_dir, index)
        else:
            simulator.plug(state_dir, index=index)
        plugged = not plugged
        try:
            await c.notification(
                "camera_status_update", 10, lambda p, want=want: p.get("device") == device and p.get("status") == want
            )
            rec.add("hotplug_event", time.perf_counter() - t0)
        except (AssertionError, asyncio.TimeoutError, ConnectionError):
            rec.add("hotplug_event", None, "missed")
    if plugged:
        simulator.unplug(state_dir, index)


async def _run(pipe, cfg: dict) -> None:
    rec = Record()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stop() -> None:  # level-triggered: stop watching, the message is read at the end
        loop.remove_reader(pipe.fileno())
        stop.set()

    loop.add_reader(pipe.fileno(), on_stop)
    url, token, http = cfg["url"], cfg["token"], cfg["http"]
    tasks = [
        operator(rec, Reconnecting(url, token), f"camera{i}", cfg["record_s"], stop) for i in range(cfg["operators"])
    ]
    tasks.append(downloader(rec, Reconnecting(url, token), http, token, cfg["download_every"], stop))
    tasks.append(admin(rec, Reconnecting(url, token), http, stop))
    if cfg["state_dir"] and cfg["hotplug_every"]:
        conn = Reconnecting(url, token, ["camera_status_update"])
        tasks.append(hotplug(rec, conn, Path(cfg["state_dir"]), cfg["hotplug_index"], cfg["hotplug_every"], stop))
    pipe.send(("ready",))
    await asyncio.gather(*tasks)
    pipe.recv()
    pipe.send(
        (
            "done",
            {
                "lat": rec.lat,
                "errors": dict(rec.errors),
                "recordings": rec.recordings,
                "download_bytes": rec.download_bytes,
                "download_s": rec.download_s,
                "timeline": rec.timeline,
            },
        )
    )


class Actors:
    """Start with the settings; ``finish()`` stops them and returns what they recorded."""

    def __init__(self, target, operators: int, record_s: float = 6.0, download_every: float = 3.0, hotplug_every=8.0):
        cfg = {
            "url": target.url,
            "token": target.token,
            "http": target.http,
            "operators": operators,
            "record_s": record_s,
            "download_every": download_every,
            "state_dir": str(target.state_dir) if target.state_dir else None,
            "hotplug_every": hotplug_every,
            "hotplug_index": 60,
        }
        ctx = multiprocessing.get_context("fork")
        self.pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=common.run_child, args=(child, lambda: _run(child, cfg)), daemon=True)
        self.proc.start()
        if not self.pipe.poll(60) or self.pipe.recv()[0] != "ready":
            raise RuntimeError("actors did not start")

    def finish(self, timeout: float = 60.0) -> dict:
        self.pipe.send(("stop",))
        if not self.pipe.poll(timeout):
            self.proc.kill()
            raise RuntimeError("actors did not finish")
        kind, result = self.pipe.recv()
        if kind == "fatal":
            raise RuntimeError(f"actors failed: {result}")
        self.proc.join(10)
        result["lat_summary"] = {
            op: {**common.latency_summary(int(v * 1e6) for v in values), "errors": 0}
            for op, values in result["lat"].items()
        }
        for key, count in result["errors"].items():
            op = key.split(":")[0]
            result["lat_summary"].setdefault(op, {"n": 0, "errors": 0})["errors"] += count
        return result
