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

import psutil

from tests.harness import Client, RpcFailure

from . import scaling
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
    files = 5000 if quick else 20000
    ns = list(range(1, max(2, psutil.cpu_count() or 2) + 1))
    folder = scaling.FilesFolder(None, files)
    out = {}
    try:
        base = dict(
            concurrency=None, files=files, duration=step_s, warmup=1.0, client_processes=2, kind="files", gateways=1
        )
        rows = []
        for n in ns:
            progress.note(f"file workers: {n}")
            args = Namespace(**base, method="list_recordings", params='{"limit":100}', connections=32, pipeline=4)
            rows.append(scaling.run_one(args, folder.path, n))
        out["files"] = {**_rows(rows), "method": "list_recordings {limit: 100}", "files": files}
        rows = []
        for g in ns:
            progress.note(f"gateways: {g}")
            args = Namespace(
                **{**base, "gateways": g},
                method="get_camera_status",
                params='{"device":"camera0"}',
                connections=100,
                pipeline=1,
            )
            row = scaling.run_one(args, folder.path, 1)
            row["n"] = g
            rows.append(row)
        out["gateways"] = {**_rows(rows), "method": "get_camera_status"}
    finally:
        folder.cleanup()
    return out


def count_frames(path) -> int | None:
    import imageio_ffmpeg

    done = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-i", str(path), "-c", "copy", "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.findall(r"frame=\s*(\d+)", done.stderr)
    return int(found[-1]) if found else None


async def _record_all(target: Target, k: int, record_s: float) -> list[dict]:
    async with Client(target.url, target.token, timeout=30) as c:
        await c.call("unsubscribe_events", {})
        started = []
        for i in range(k):
            try:
                started.append(await c.call("start_recording", {"device": f"sim:{i}"}))
            except RpcFailure as exc:
                started.append({"error": exc.code, "device": f"sim:{i}"})
        await asyncio.sleep(record_s)
        stopped = []
        for i, s in enumerate(started):
            if "error" in s:
                stopped.append(s)
                continue
            try:
                stopped.append(await c.call("stop_recording", {"device": f"sim:{i}"}))
            except RpcFailure as exc:
                stopped.append({"error": exc.code, "device": f"sim:{i}"})
        return stopped


def capacity(resolution: str, fps: int, progress: Progress, record_s: float, max_k: int = 24) -> dict:
    from camservice import simnodes as simulator

    target = Target.start(1, resolution=resolution, fps=fps)
    steps, best = [], 0
    try:
        plugged = 1
        k = 1
        while k <= max_k:
            for i in range(plugged, k):
                simulator.plug(target.state_dir, resolution, fps, index=i)
            plugged = max(plugged, k)
            time.sleep(0.5)  # discovery polls every 50 ms
            progress.note(f"capacity {resolution}@{fps}: {k} cameras recording")
            monitor = Monitor(target, interval=0.5).start()
            t0 = time.time()
            stopped = asyncio.run(_record_all(target, k, record_s))
            monitor.stop()
            use = usage(monitor.between(t0 + 1.0, t0 + record_s))
            ratios = []
            for s in stopped:
                if "error" in s or not s.get("duration"):
                    ratios.append(0.0)
                    continue
                path = target.state_dir / "recordings" / s["filename"]
                frames = count_frames(path) if path.exists() else None
                ratios.append(round(frames / (fps * s["duration"]), 3) if frames else 0.0)
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
        target.close()
    return {"resolution": resolution, "fps": fps, "record_s": record_s, "capacity": best, "steps": steps}


def run(step_s: float, progress: Progress, quick: bool = False) -> dict:
    out = workers_and_gateways(step_s, progress, quick)
    record_s = 3.0 if quick else 4.0
    out["capacity"] = {
        f"{res}@{fps}": capacity(res, fps, progress, record_s, max_k=2 if quick else 24)
        for res, fps in (("640x480", 15), ("1280x720", 30))
    }
    return out
