"""Category ``baseline``: one client, one camera, every API method and the HTTP endpoints.

Each method is called ``n`` times in a row (fewer for the slow, stateful
ones: snapshots, recordings, deletions), one call in flight; each gets
P50/P95/P99/max and the CPU each service process spent per call (its CPU
time over the method's block divided by the calls) and RSS afterwards. Then
camera discovery: ``camservice start`` to a ``get_camera_list`` that lists
every camera (only when the suite starts services itself), and hot-plug:
plugging a simulated camera to the ``camera_status_update`` a client sees.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from argparse import Namespace

from tests.harness import Client, RpcFailure

from . import common, hotplug, walltime
from .target import Target

HEALTH = ["/health/live", "/health/ready", "/health/system", "/health/cameras", "/health/mediamtx"]


def cpu_by_process(target: Target) -> dict[str, tuple[int, float, int]]:
    """name -> (pid, CPU seconds from the scheduler's account, RSS bytes)."""
    out = {}
    for name, proc in target.processes().items():
        try:
            ns = common.cpu_ns(proc.pid)
            if ns is not None:
                out[name] = (proc.pid, ns / 1e9, proc.memory_info().rss)
        except Exception:  # noqa: BLE001  (gone: skipped)
            continue
    return out


def block_figures(target: Target, before: dict, calls: int) -> dict:
    after = cpu_by_process(target)
    per = {}
    for name, (pid, cpu, rss) in after.items():
        if name in before and before[name][0] == pid:
            per[name] = {
                "cpu_us_per_call": round((cpu - before[name][1]) / max(calls, 1) * 1e6, 1),
                "rss_mb": round(rss / 2**20, 1),
            }
    return per


async def _calls(target: Target, n: int) -> dict:
    rows: dict[str, dict] = {}

    async def block(name: str, count: int, call) -> list:
        lat, errors, results = [], {}, []
        before = cpu_by_process(target)
        for i in range(count):
            t0 = time.perf_counter_ns()
            try:
                results.append(await call(i))
            except RpcFailure as exc:
                errors[str(exc.code)] = errors.get(str(exc.code), 0) + 1
            except (urllib.error.URLError, OSError) as exc:
                key = f"{type(exc).__name__}:{getattr(exc, 'code', None) or getattr(exc, 'reason', '')}"
                errors[key] = errors.get(key, 0) + 1
            lat.append(time.perf_counter_ns() - t0)
        rows[name] = {**common.latency_summary(lat), "errors": sum(errors.values()), "error_codes": errors}
        rows[name]["processes"] = block_figures(target, before, count)
        return results

    async with Client(target.url, target.token) as c:
        await c.call("unsubscribe_events", {})
        cam = {"device": "camera0"}
        reads = [
            ("ping", None),
            ("get_camera_list", None),
            ("get_camera_status", cam),
            ("get_camera_capabilities", cam),
            ("get_streams", None),
            ("list_recordings", {"limit": 20}),
            ("list_snapshots", {"limit": 20}),
            ("get_server_info", None),
            ("get_status", None),
            ("get_metrics", None),
            ("get_storage_info", None),
            ("subscribe_events", {"topics": ["storage_status_update"]}),
            ("unsubscribe_events", {}),
        ]
        for method, params in reads:
            await block(method, n, lambda i, m=method, p=params: c.call(m, p))
        await block("authenticate", max(10, n // 4), lambda i: c.call("authenticate", {"auth_token": target.token}))
        slow = max(5, n // 20)
        snaps = await block("take_snapshot", slow, lambda i: c.call("take_snapshot", cam))
        recs = []

        async def start(i):
            started = await c.call("start_recording", cam)
            recs.append(started["filename"])

        # start and stop alternate, a second of recording between; each call is timed on its own
        for i in range(slow):
            await block(f"_start_{i}", 1, start)
            await asyncio.sleep(1.0)
            await block(f"_stop_{i}", 1, lambda i: c.call("stop_recording", cam))
        for kind in ("start", "stop"):
            parts = [rows.pop(f"_{kind}_{i}") for i in range(slow)]
            rows[f"{kind}_recording"] = merge_rows(parts)
        await asyncio.sleep(0.5)
        files = (await c.call("list_recordings", {"limit": 50}))["files"]
        if files:
            name = files[0]["filename"]
            await block("get_recording_info", n, lambda i: c.call("get_recording_info", {"filename": name}))
            await block(
                "get_download_link",
                slow,
                lambda i: c.call("get_download_link", {"filename": name, "kind": "recordings"}),
            )
            url = common.absolute_url(target.http, files[0]["download_url"])
            await block("http_download", slow, lambda i: asyncio.to_thread(http_get, url, target.token))
        if snaps:
            sname = snaps[0]["filename"]
            await block("get_snapshot_info", n, lambda i: c.call("get_snapshot_info", {"filename": sname}))
        for path in HEALTH:
            await block(
                "http" + path.replace("/", "_"),
                n // 2,
                lambda i, p=path: asyncio.to_thread(http_get, target.http + p, None),
            )
        await block(
            "set_retention_policy",
            slow,
            lambda i: c.call("set_retention_policy", {"policy_type": "manual", "enabled": False}),
        )
        await block("cleanup_old_files", slow, lambda i: c.call("cleanup_old_files"))
        victims = [s["filename"] for s in snaps][:slow]
        await block("delete_snapshot", len(victims), lambda i: c.call("delete_snapshot", {"filename": victims[i]}))
        rvictims = recs[1 : slow + 1]
        await block("delete_recording", len(rvictims), lambda i: c.call("delete_recording", {"filename": rvictims[i]}))
    return rows


def merge_rows(parts: list[dict]) -> dict:
    lat_ms = [p["p50_ms"] for p in parts if p["n"]]  # one call each: p50 is the call
    row = {**common.latency_summary(int(v * 1e6) for v in lat_ms), "errors": sum(p["errors"] for p in parts)}
    row["error_codes"] = {}
    for p in parts:
        for k, v in p["error_codes"].items():
            row["error_codes"][k] = row["error_codes"].get(k, 0) + v
    row["processes"] = parts[-1]["processes"] if parts else {}
    return row


def http_get(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as answer:
            size = 0
            while chunk := answer.read(1 << 20):
                size += len(chunk)
            return answer.status
    except urllib.error.HTTPError as exc:
        if exc.code == 503 and "/health/" in url:
            return exc.code  # a degraded part answers 503: still an answer, timed as one
        raise


def discovery(cameras: int, repeat: int = 2) -> dict:
    """camservice start -> get_camera_list lists every camera, and the discovery worker's own start-up."""
    args = Namespace(startup=cameras, repeat=repeat)
    rows = hotplug.run_startup(args, emit=False)
    times = [r["start_to_list_s"] for r in rows if r["start_to_list_s"] is not None]
    return {
        "cameras": cameras,
        "starts": len(rows),
        "start_to_list_s": times,
        "start_to_list_s_max": max(times) if times else None,
        "discovery_started_ms": [r["discovery_started_ms"] for r in rows],
    }


def hotplug_latency(target: Target, cycles: int = 5) -> dict | None:
    """Plug/unplug a simulated camera ``cycles`` times: ms until a subscribed client hears of it."""
    if target.state_dir is None:
        return None
    from camservice import simnodes as simulator

    async def go():
        lat, missed = [], 0
        async with Client(target.url, target.token) as c:
            await c.call("subscribe_events", {"topics": ["camera_status_update"]})
            for _ in range(cycles):
                for status in ("CONNECTED", "DISCONNECTED"):
                    t0 = time.perf_counter_ns()
                    if status == "CONNECTED":
                        simulator.plug(target.state_dir, index=50)
                    else:
                        simulator.unplug(target.state_dir, 50)
                    try:
                        await c.notification(
                            "camera_status_update",
                            5,
                            lambda p, s=status: p.get("device") == "sim:50" and p.get("status") == s,
                        )
                        lat.append(time.perf_counter_ns() - t0)
                    except (AssertionError, asyncio.TimeoutError):
                        missed += 1
                    await asyncio.sleep(0.1)
        return {**common.latency_summary(lat), "missed": missed}

    return asyncio.run(go())


def run(target: Target, n: int = 200, own: bool = True, cameras: int = 1) -> dict:
    rows = asyncio.run(_calls(target, n))
    out = {"methods": rows, "hotplug": hotplug_latency(target)}
    if own:
        with walltime.spent(walltime.SERVICE_START):  # measured starts, but starts all the same
            out["discovery"] = discovery(max(cameras, 4))
    return out
