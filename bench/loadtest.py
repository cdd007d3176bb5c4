"""Category ``load``: the expected load, as a realistic mix.

``clients`` viewers (default 50) each read ``per_client_rps`` times a second
(default 10: 500 req/s in all, the top of REQ-PERF-005's range) from the read
mix (status and lists mostly), while :mod:`bench.actors` runs an operator per
camera (recordings started and stopped, snapshots), downloads, hot-plugs and
admin polling (``get_metrics`` every second). Then, on the same connections:

* ``capacity``: the viewers flat out (one request in flight each): the
  throughput 50 clients get;
* ``burst``: 10 camera operations (snapshots) and 5 file operations at once,
  three times (REQ-PERF-003's concurrent operations).

Per endpoint: P50/P95/P99, req/s, errors, hung calls; per process CPU,
RSS and fds; host CPU per core, memory, network and disk.
"""

from __future__ import annotations

import asyncio
import time

from tests.harness import Client, RpcFailure

from . import common
from .actors import Actors
from .mix import MixClients, per_second
from .monitor import Monitor
from .phases import Progress, cpu_us_per_request, read_mix, run_phase
from .target import Target


async def _burst(target: Target, cameras: int, camera_ops: int = 15, file_ops: int = 8, rounds: int = 3) -> dict:
    clients = [Client(target.url, target.token, timeout=30) for _ in range(camera_ops + file_ops)]
    for c in clients:
        await c.__aenter__()
    lat, errors = {"take_snapshot": [], "file_op": []}, 0
    try:
        for c in clients:
            await c.call("unsubscribe_events", {})

        async def one(c: Client, kind: str, i: int):
            nonlocal errors
            t0 = time.perf_counter_ns()
            try:
                if kind == "take_snapshot":
                    await c.call("take_snapshot", {"device": f"camera{i % cameras}"})
                else:
                    listing = await c.call("list_recordings", {"limit": 10})
                    if listing["files"]:
                        await c.call("get_recording_info", {"filename": listing["files"][0]["filename"]})
            except (RpcFailure, ConnectionError, asyncio.TimeoutError):
                errors += 1
            lat[kind].append(time.perf_counter_ns() - t0)

        for _ in range(rounds):
            await asyncio.gather(
                *(one(c, "take_snapshot", i) for i, c in enumerate(clients[:camera_ops])),
                *(one(c, "file_op", i) for i, c in enumerate(clients[camera_ops:])),
            )
    finally:
        for c in clients:
            await c.__aexit__(None, None, None)
    return {
        "camera_ops_at_once": camera_ops,
        "file_ops_at_once": file_ops,
        "rounds": rounds,
        "errors": errors,
        "take_snapshot": common.latency_summary(lat["take_snapshot"]),
        "file_op": common.latency_summary(lat["file_op"]),
    }


def run(
    target: Target,
    duration: float,
    cameras: int,
    clients: int = 50,
    per_client_rps: float = 10.0,
    progress: Progress | None = None,
    capacity_s: float | None = None,
) -> dict:
    progress = progress or Progress("load")
    monitor = Monitor(target).start()
    actors = Actors(target, operators=cameras)
    mix = MixClients(target.url, target.token, read_mix(cameras))
    try:
        steady = run_phase(mix, monitor, progress, "mix", "paced", clients, duration, rate=clients * per_client_rps)
        steady["series"] = per_second(mix.since(*steady["window"][:1], "mix"), mix.names)
        cap_s = capacity_s if capacity_s is not None else max(3.0, min(10.0, duration / 4))
        capacity = run_phase(mix, monitor, progress, "capacity", "closed", clients, cap_s)
        capacity["cpu_us_per_request"] = cpu_us_per_request(capacity)
        mix.phase("idle", "paced", clients, 0.0)
    finally:
        mix.stop()
        ops = actors.finish()
    progress.note("burst: 15 camera and 8 file operations at once")
    burst = asyncio.run(_burst(target, cameras))
    monitor.stop()
    endpoints = dict(steady["methods"])
    for op, row in ops["lat_summary"].items():
        endpoints[op] = {**row, "rps": round(row.get("n", 0) / max(duration, 1), 2)}
    return {
        "clients": clients,
        "cameras": cameras,
        "offered_rps": clients * per_client_rps,
        "duration_s": duration,
        "steady": steady,
        "capacity": capacity,
        "burst": burst,
        "endpoints": endpoints,
        "actors": {k: ops[k] for k in ("errors", "recordings", "download_bytes", "download_s")},
        "download_MB_s": round(ops["download_bytes"] / ops["download_s"] / 1e6, 1) if ops["download_s"] else None,
    }
