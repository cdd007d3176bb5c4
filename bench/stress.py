"""Category ``stress``: ramp the load to the breaking point, then drop it and time the recovery.

Breaking point: P95 above 200 ms or more than 1% of requests failed (JSON-RPC
errors, connections lost, hung, or shed by the open-loop client because
every connection already held its limit in flight). Three ramps, each step
``step_s`` seconds:

1. ``status_rate``: offered rate of ``get_camera_status`` (gateway-local
   reads), 100 connections, open loop;
2. ``worker_rate``: the same with ``get_camera_capabilities`` (a hop to the
   discovery worker over ZeroMQ);
3. ``connections``: closed loop, one status call in flight per connection,
   10 -> 10,000 connections.

The knee is the last step that did not break. After each ramp the load drops
to the baseline (10 connections, 200 req/s) and the recovery time is how long
until a one-second window's P95 is back within 1.5x the baseline P95 (+1 ms).
Then, bounded so that the shared machine is safe: memory pressure (a process
holding 1 GiB or 10% of the available memory, whichever is less, touched
page by page) during status load, and a full disk as the service sees it (a
service whose free-space floor is above the free space: recordings and
snapshots must be refused with a clear error, quickly, and reads unaffected).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time

import psutil

from tests.harness import Client, RpcFailure

from . import common
from .mix import MixClients, per_second
from .monitor import Monitor
from .phases import STATUS_MIX, WORKER_MIX, Progress, run_phase
from .target import Target

BASE_CONNS, BASE_RATE = 10, 200.0


def broke(step: dict) -> bool:
    return (step["p95_ms"] or 0) > 200 or step["error_rate"] > 0.01 or not step["n"]


def _step_row(res: dict, **extra) -> dict:
    keep = ("n", "rps", "p50_ms", "p95_ms", "p99_ms", "max_ms", "errors", "hung", "shed", "error_rate", "error_codes")
    return {
        **{k: res[k] for k in keep},
        **extra,
        "service_cpu_percent": (res.get("resources") or {}).get("service_cpu_percent"),
    }


def recovery(mix: MixClients, progress: Progress, base_p95: float, limit_s: float = 20.0) -> float | None:
    """Drop to the baseline load; seconds until a 1 s window's P95 is back near the baseline's."""
    goal = max(1.5 * base_p95, base_p95 + 1.0)
    t0 = time.time()
    mix.phase("recover", "paced", BASE_CONNS, BASE_RATE, 8)
    while time.time() - t0 < limit_s:
        time.sleep(0.5)
        rows = [r for r in per_second(mix.since(t0, "recover"), mix.names) if r["t"] < int(time.time())]
        for r in rows:
            if r["p95_ms"] is not None and r["p95_ms"] <= goal and r["rps"] > BASE_RATE / 4:
                progress.note(f"recovered: P95 {r['p95_ms']} ms <= {goal:.2f} ms")
                return round(max(0.0, r["t"] + 1 - t0), 1)  # the end of the first good second
    return None


def ramp(mix, monitor, progress, title, key, values, step_s, mode, connections=100) -> dict:
    base = run_phase(mix, monitor, progress, f"{key} baseline", "paced", BASE_CONNS, step_s, rate=BASE_RATE)
    steps, knee, bad = [], None, None
    for v in values:
        if mode == "closed":
            res = run_phase(mix, monitor, progress, f"{key} {v}", "closed", v, step_s, settle=1.5)
            row = _step_row(res, connections=v)
        else:
            res = run_phase(mix, monitor, progress, f"{key} {v:.0f}/s", "paced", connections, step_s, rate=v)
            row = _step_row(res, offered_rps=v, connections=connections)
        steps.append(row)
        if broke(row):
            bad = row
            break
        knee = row
    rec = recovery(mix, progress, base["p95_ms"] or 1.0)
    return {
        "title": title,
        "baseline": _step_row(base),
        "steps": steps,
        "knee": knee,
        "broke": bad,
        "recovery_s": rec,
    }


def _balloon(pipe, size: int) -> None:
    common.die_with_parent()
    block = bytearray(size)
    for i in range(0, size, 4096):  # touch every page: resident, not just reserved
        block[i] = 1
    pipe.send("held")
    pipe.recv()


def memory_pressure(target: Target, progress: Progress, step_s: float) -> dict:
    size = int(min(2**30, psutil.virtual_memory().available * 0.10))
    mix = MixClients(target.url, target.token, STATUS_MIX)
    try:
        before = run_phase(mix, None, progress, "memory: before", "paced", 50, step_s, rate=2000)
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_balloon, args=(child, size), daemon=True)
        proc.start()
        try:
            parent.poll(60)
            parent.recv()
            during = run_phase(mix, None, progress, "memory: 1 GiB held", "paced", 50, step_s, rate=2000)
        finally:
            proc.kill()
            proc.join(5)
    finally:
        mix.stop()
    return {
        "balloon_mb": size >> 20,
        "before": _step_row(before),
        "during": _step_row(during),
        "summary": (
            f"With {size >> 20} MB more held resident by another process (bounded: this machine is shared), "
            f"status P95 went {before['p95_ms']} -> {during['p95_ms']} ms at 2,000 req/s, errors {during['errors']}."
        ),
    }


async def _disk_full_calls(target: Target) -> dict:
    out = {}
    async with Client(target.url, target.token) as c:
        for method in ("start_recording", "take_snapshot"):
            t0 = time.perf_counter()
            try:
                await c.call(method, {"device": "camera0"})
                out[method] = {"code": None, "ms": round((time.perf_counter() - t0) * 1000, 1)}
                if method == "start_recording":
                    await c.call("stop_recording", {"device": "camera0"})
            except RpcFailure as exc:
                out[method] = {
                    "code": exc.code,
                    "message": exc.error.get("message"),
                    "ms": round((time.perf_counter() - t0) * 1000, 1),
                }
        t0 = time.perf_counter()
        await c.call("get_camera_status", {"device": "camera0"})
        out["get_camera_status_ms"] = round((time.perf_counter() - t0) * 1000, 2)
    return out


def disk_full(local: bool) -> dict | None:
    if not local:
        return None
    target = Target.start(1, **{"storage.min_free_bytes": 1 << 60})
    try:
        calls = asyncio.run(_disk_full_calls(target))
    finally:
        target.close()
    sr, ts = calls.get("start_recording", {}), calls.get("take_snapshot", {})
    return {
        **calls,
        "summary": (
            f"Free-space floor above the free space: start_recording -> {sr.get('code')} "
            f"({sr.get('message')}) in {sr.get('ms')} ms; take_snapshot -> {ts.get('code')} in {ts.get('ms')} ms; "
            f"a status read meanwhile {calls.get('get_camera_status_ms')} ms."
        ),
    }


def run(target: Target, step_s: float, progress: Progress, quick: bool = False, max_connections: int = 10000) -> dict:
    step_s = max(2.0, step_s)
    monitor = Monitor(target).start()
    out = {"step_s": step_s}
    try:
        rates = [1000, 4000, 8000] if quick else [2000, 5000, 10000, 15000, 20000, 30000, 40000, 60000]
        mix = MixClients(target.url, target.token, STATUS_MIX, hang_s=10)
        try:
            out["status_rate"] = ramp(
                mix,
                monitor,
                progress,
                "get_camera_status: offered rate, 100 connections",
                "status_rate",
                rates,
                step_s,
                "paced",
            )
        finally:
            mix.stop()
        wrates = [1000, 4000] if quick else [1000, 2500, 5000, 8000, 12000, 16000, 24000, 32000]
        mix = MixClients(target.url, target.token, WORKER_MIX, hang_s=10)
        try:
            out["worker_rate"] = ramp(
                mix,
                monitor,
                progress,
                "get_camera_capabilities (worker hop): offered rate, 100 connections",
                "worker_rate",
                wrates,
                step_s,
                "paced",
            )
        finally:
            mix.stop()
        conns = [
            c for c in ([10, 100, 500] if quick else [10, 100, 500, 1000, 2500, 5000, 10000]) if c <= max_connections
        ]
        mix = MixClients(target.url, target.token, STATUS_MIX, hang_s=10)
        try:
            out["connections"] = ramp(
                mix,
                monitor,
                progress,
                "get_camera_status: connections, one call in flight each",
                "connections",
                conns,
                step_s,
                "closed",
            )
        finally:
            mix.stop()
        out["memory_pressure"] = memory_pressure(target, progress, step_s)
    finally:
        monitor.stop()
    progress.note("full disk")
    out["disk_full"] = disk_full(target.local and target.service is not None)
    out["recovery_s_max"] = max((out[k]["recovery_s"] or 0) for k in ("status_rate", "worker_rate", "connections"))
    return out
