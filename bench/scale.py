"""Category ``scaling``: S(n) for file workers and gateways, and camera capacity.

* **File workers** 1..n (n = the machine's cores): ``list_recordings
  {"limit": 100}`` over a generated folder (20,000 files; 5,000 with
  ``--quick``), 32 connections, pipeline 4 (bench.scaling's method).
* **Gateways** 1..n: ``get_camera_status``, 100 connections, pipeline 1.
* **Camera capacity**, for 640x480@15 and 1280x720@30: k simulated cameras
  record at once (k = 1, 2, 4, 6, 8, ...) for ``record_s`` seconds; a step
  is over capacity when a recording holds fewer than 90% of the frames its
  duration should have (frames dropped) or the service (ffmpeg captures
  included) used more than 70% of the host's CPU. Capacity: the largest k
  within both.

S(n) = throughput(n) / throughput(1); S(n)/n is the scaling factor of
REQ-PERF-006. On a 2-core machine that the load generator shares, S(2) of
the gateways stays near or below 1: the figure says so rather than hide it.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from argparse import Namespace
from concurrent.futures import ThreadPoolExecutor

import psutil

from tests.harness import Client, RpcFailure

from . import scaling, walltime
from .monitor import Monitor, usage
from .phases import Progress
from .target import Target


def _rows(kind_rows: list[dict]) -> dict:
    base = kind_rows[0]["throughput_rps"] if kind_rows else None
    for r in kind_rows:
        r["speedup"] = round(r["throughput_rps"] / base, 3) if base and r["throughput_rps"] else None
        r["efficiency"] = round(r["speedup"] / r["n"], 3) if r["speedup"] else None
        r.pop("load", None)
    out = {"rows": kind_rows}
    two = next((r for r in kind_rows if r["n"] == 2), None)
    if two:
        out["efficiency_2"] = two["efficiency"]
    return out


def workers_and_gateways(step_s: float, progress: Progress, quick: bool) -> dict:
    """File workers 1..n over one folder, gateways 1..n; one service per configuration.

    The service with one file worker and one gateway serves both ramps' first
    step (``list_recordings``, then ``get_camera_status``); the gateway
    services beyond the first get an empty recordings folder: status reads
    never touch it, and indexing 20,000 files again would only cost time.
    """
    files = 5000 if quick else 20000
    ns = list(range(1, max(2, psutil.cpu_count() or 2) + 1))
    with walltime.spent(walltime.SETUP):
        folder = scaling.FilesFolder(None, files)
        empty = scaling.FilesFolder(None, 0)
    base = dict(concurrency=None, files=files, duration=step_s, warmup=1.0, client_processes=2, kind="files")
    listing = ("list_recordings", '{"limit":100}', 32, 4)
    status = ("get_camera_status", '{"device":"camera0"}', 100, 1)
    out = {}
    try:
        files_rows, gateway_rows = [], []
        for n in ns:
            progress.note(f"file workers: {n}" + (", then gateways: 1" if n == 1 else ""))
            args = Namespace(**base, gateways=1, method=None, params=None)
            rows = scaling.run_cases(args, folder.path, n, [listing, status] if n == 1 else [listing])
            files_rows.append(rows[0])
            if n == 1:
                gateway_rows.append(rows[1])
        for g in ns[1:]:
            progress.note(f"gateways: {g}")
            args = Namespace(**{**base, "files": 0}, gateways=g, method=None, params=None)
            row = scaling.run_cases(args, empty.path, 1, [status])[0]
            gateway_rows.append(row)
        for g, row in zip(ns, gateway_rows):
            row["n"] = g
        out["files"] = {**_rows(files_rows), "method": "list_recordings {limit: 100}", "files": files}
        out["gateways"] = {**_rows(gateway_rows), "method": "get_camera_status"}
    finally:
        folder.cleanup()
        empty.cleanup()
    return out


def count_frames(path) -> int | None:
    import imageio_ffmpeg

    with walltime.spent(walltime.FFMPEG):
        done = subprocess.run(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-i", str(path), "-c", "copy", "-f", "null", "-"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    found = re.findall(r"frame=\s*(\d+)", done.stderr)
    return int(found[-1]) if found else None


async def _wait_listed(target: Target, devices: set[str], timeout: float = 15.0) -> set[str]:
    """Until ``get_camera_list`` lists every device connected (discovery saw the plugs): an event, not a sleep.

    Returns the devices still not listed at the timeout (none when all are).
    """
    async with Client(target.url, target.token, timeout=30) as c:
        deadline = time.monotonic() + timeout
        while True:
            listed = (await c.call("get_camera_list"))["cameras"]
            missing = devices - {cam["device"] for cam in listed if cam.get("status") == "CONNECTED"}
            if not missing or time.monotonic() > deadline:
                return missing
            await asyncio.sleep(0.05)


async def _record_all(target: Target, devices: list[str], record_s: float) -> list[dict]:
    """Start a recording on every device at once, record ``record_s``, stop them all at once."""
    async with Client(target.url, target.token, timeout=30) as c:
        await c.call("unsubscribe_events", {})

        async def call(method: str, device: str) -> dict:
            try:
                return await c.call(method, {"device": device})
            except RpcFailure as exc:
                return {"error": exc.code, "device": device}

        started = await asyncio.gather(*(call("start_recording", d) for d in devices))
        await asyncio.sleep(record_s)  # the recording itself: the measured span
        live = [d for d, s in zip(devices, started) if "error" not in s]
        stopped = iter(await asyncio.gather(*(call("stop_recording", d) for d in live)))
        return [s if "error" in s else next(stopped) for s in started]


def _frames_ratio(target: Target, stopped: dict, fps: int) -> float:
    if "error" in stopped or not stopped.get("duration"):
        return 0.0
    path = target.state_dir / "recordings" / stopped["filename"]
    frames = count_frames(path) if path.exists() else None
    return round(frames / (fps * stopped["duration"]), 3) if frames else 0.0


def capacity(
    target: Target, resolution: str, fps: int, progress: Progress, record_s: float, max_k: int = 24, first: int = 0
) -> dict:
    """Cameras ``sim:first..`` plugged at ``resolution@fps``, k of them recording at once, k growing to the limit."""
    from camservice import simnodes as simulator

    steps, best = [], 0
    # sim:0 is the service's own --simulate camera: already plugged, at 640x480@15
    plugged: list[int] = [first] if simulator.node_path(target.state_dir, first).exists() else []
    k = 1
    try:
        while k <= max_k:
            for i in range(first + len(plugged), first + k):
                simulator.plug(target.state_dir, resolution, fps, index=i)
                plugged.append(i)
            devices = [f"sim:{i}" for i in plugged[:k]]
            missing = asyncio.run(_wait_listed(target, set(devices)))
            if missing:  # not a capacity: discovery did not take them (cameras.max_cameras, or too slow)
                steps.append({"cameras": k, "not_listed": sorted(missing), "ok": False})
                break
            progress.note(f"capacity {resolution}@{fps}: {k} cameras recording")
            monitor = Monitor(target, interval=0.5).start()
            t0 = time.time()
            with walltime.spent(walltime.MEASURED):
                stopped = asyncio.run(_record_all(target, devices, record_s))
            monitor.stop()
            use = usage(monitor.between(t0 + 1.0, t0 + record_s))
            # Counting frames demuxes each file (-c copy): two at a time, one per core.
            with ThreadPoolExecutor(2) as pool:
                ratios = list(pool.map(lambda s: _frames_ratio(target, s, fps), stopped))
            cpu = use.get("service_cpu_percent_of_host")
            ok = min(ratios) >= 0.9 and (cpu or 0) <= 70
            refused = sorted({str(s["error"]) for s in stopped if "error" in s})
            steps.append(
                {
                    "refused": refused,  # e.g. the service's camera limit, not a capacity
                    "cameras": k,
                    "cpu_percent_of_host": cpu,
                    "frames_ratio_min": min(ratios),
                    "frames_ratios": ratios,
                    "ok": ok,
                }
            )
            if not ok:
                break
            best = k
            k = k + 1 if k < 2 else (k + 2 if k < 8 else k + 4)
    finally:
        for i in plugged:
            if i != 0:  # sim:0 is the service's own --simulate camera
                simulator.unplug(target.state_dir, i)
    return {"resolution": resolution, "fps": fps, "record_s": record_s, "capacity": best, "steps": steps}


def run(step_s: float, progress: Progress, quick: bool = False) -> dict:
    out = workers_and_gateways(step_s, progress, quick)
    record_s = 3.0 if quick else 4.0
    # One service for both modes: each mode plugs cameras of its own (sim:0.. at 640x480@15, sim:100.. at 720p30).
    # The camera limit (cameras.max_cameras, 16 by default) raised above the probe's: the machine's capacity is
    # the figure, not the service's limit.
    max_k = 2 if quick else 24
    target = Target.start(1, resolution="640x480", fps=15, **{"cameras.max_cameras": 2 * max_k + 1})
    try:
        out["capacity"] = {
            f"{res}@{fps}": capacity(target, res, fps, progress, record_s, max_k=max_k, first=first)
            for res, fps, first in (("640x480", 15, 0), ("1280x720", 30, 100))
        }
    finally:
        target.close()
    return out
