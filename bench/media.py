"""Bench of the recording worker's media path with simulated cameras.

Drives :class:`camservice.workers.recording.sessions.RecordingManager` in-process (no
gateway, no ZeroMQ: what is measured is the worker's own work, ffmpeg
included) against simulated cameras of ``--size`` at ``--fps`` and prints
one JSON line per figure:

* ``take_snapshot`` latency on an idle camera (opens the device for one
  frame) and on a recording camera (copies the recording's latest frame),
  for ``jpg`` and ``png``;
* ``start_recording`` latency (until the first segment has data) and
  ``stop_recording`` latency (until ffmpeg finalised the file);
* CPU% (100 = one core) and RSS of each capture ffmpeg while
  ``--cameras`` cameras record at once, sampled with psutil over
  ``--sample-seconds``.

Usage: ``python -m bench.media [--iterations 20] [--cameras 1] [--size 640x480] [--fps 15]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil
from camservice.workers.recording.sessions import RecordingManager

from camservice import config as config_module
from camservice import log, methods
from camservice import simnodes as simulator
from camservice.cameras import Camera

from .common import percentiles


def emit(**fields) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def latency_line(bench: str, samples_s: list[float], **extra) -> None:
    ms = [s * 1000 for s in samples_s]
    pct = percentiles(ms, (50, 95))
    emit(bench=bench, **extra, n=len(ms), p50_ms=round(pct[50], 2), p95_ms=round(pct[95], 2), max_ms=round(max(ms), 2))


async def timed(coro) -> tuple[float, dict]:
    begin = time.perf_counter()
    result = await coro
    return time.perf_counter() - begin, result


async def bench(args: argparse.Namespace, state: Path) -> None:
    config = config_module.load(
        overrides={"runtime.state_dir": str(state), "runtime.transport": "tcp", "storage.min_free_bytes": 0}, environ={}
    )
    cameras: dict[str, Camera] = {}
    for index in range(max(1, args.cameras)):
        simulator.plug(state, args.size, args.fps, index=index)
        node = simulator.read_node(simulator.node_path(state, index))
        cameras[f"sim:{index}"] = Camera(
            id=f"camera{index}",
            device=f"sim:{index}",
            resolution=args.size,
            fps=args.fps,
            simulated=True,
            source=node.source(),
        )
    manager = RecordingManager(config, cameras.get, lambda topic, data: None)
    await manager.open()
    snap = lambda fmt: methods.take_snapshot({"device": "sim:0", "format": fmt})
    start = methods.start_recording({"device": "sim:0"})

    for fmt in ("jpg", "png"):
        samples = [(await timed(manager.take_snapshot(snap(fmt))))[0] for _ in range(args.iterations)]
        latency_line("take_snapshot", samples, camera="idle", format=fmt, size=args.size, fps=args.fps)

    await manager.start_recording(start)
    await asyncio.sleep(1.0)
    for fmt in ("jpg", "png"):
        samples = []
        for _ in range(args.iterations):
            samples.append((await timed(manager.take_snapshot(snap(fmt))))[0])
            await asyncio.sleep(0.1)
        latency_line("take_snapshot", samples, camera="recording", format=fmt, size=args.size, fps=args.fps)
    await manager.stop_recording({"device": "sim:0"})

    starts, stops = [], []
    for _ in range(args.iterations):
        elapsed, _ = await timed(manager.start_recording(start))
        starts.append(elapsed)
        await asyncio.sleep(args.record_seconds)
        elapsed, _ = await timed(manager.stop_recording({"device": "sim:0"}))
        stops.append(elapsed)
    latency_line("start_recording", starts, size=args.size, fps=args.fps)
    latency_line("stop_recording", stops, size=args.size, fps=args.fps, recorded_s=args.record_seconds)

    for device in cameras:
        await manager.start_recording(methods.start_recording({"device": device}))
    procs = [psutil.Process(s.run.pid) for s in manager.sessions.values()]
    for proc in procs:
        proc.cpu_percent(None)
    await asyncio.sleep(args.sample_seconds)
    per = [
        {"pid": p.pid, "cpu_percent": round(p.cpu_percent(None), 1), "rss_bytes": p.memory_info().rss} for p in procs
    ]
    await manager.close("bench finished")
    emit(
        bench="recording_load",
        cameras=len(per),
        size=args.size,
        fps=args.fps,
        sample_s=args.sample_seconds,
        cpu_percent_per_camera=round(sum(p["cpu_percent"] for p in per) / len(per), 1),
        rss_bytes_per_camera=int(sum(p["rss_bytes"] for p in per) / len(per)),
        cpu_count=psutil.cpu_count(),
        processes=per,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--cameras", type=int, default=1, help="cameras recording at once for CPU/RSS")
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--record-seconds", type=float, default=1.0, help="length of each start/stop cycle")
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--state", help="state folder (default: a temporary one, removed afterwards)")
    args = parser.parse_args()
    log.setup("bench-media", None)  # stdout carries only the JSON lines
    state = Path(args.state) if args.state else Path(tempfile.mkdtemp(prefix="cs-bench-"))
    try:
        asyncio.run(bench(args, state))
    finally:
        if not args.state:
            shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
