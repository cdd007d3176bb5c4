"""Benchmark of the file worker: index build and listing latency at 1k-100k files.

Two modes, each printing one JSON object per line on stdout:

``index`` (default) generates N small recordings with spread mtimes in a
temporary folder, builds the index with a full rescan (what a first start
does), rescans again with nothing changed (a full walk, and the periodic
quick scan that only stats the folders), then measures
handler latency in-process: ``list_recordings`` (first page, a device
filter, a deep offset), ``get_storage_info`` and ``delete_recording``::

    python -m bench.files --counts 1000 10000 100000 --queries 300

``ws`` asks a running service over WebSocket JSON-RPC (one request in
flight at a time, so the figures are latencies, not throughput)::

    python -m bench.files ws --url ws://127.0.0.1:8002/ws --queries 300 [--token JWT]

The handler is called directly in ``index`` mode: the figures are the file
worker's own cost, without the gateway hop and ZeroMQ.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .common import percentile

CAMERAS = 4
SPACING = 30  # seconds between consecutive files' mtimes


def summary(samples_ms: list[float]) -> dict:
    ordered = sorted(samples_ms)
    return {
        "n": len(ordered),
        "p50_ms": round(percentile(ordered, 50), 3),
        "p95_ms": round(percentile(ordered, 95), 3),
        "p99_ms": round(percentile(ordered, 99), 3),
        "max_ms": round(ordered[-1], 3),
    }


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def generate(folder: Path, count: int, start: float) -> list[str]:
    """``count`` recordings named as the service names them, one every SPACING seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(count)
    names = []
    for i in range(count):
        stamp = start + i * SPACING
        tag = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(6))
        name = f"camera{i % CAMERAS}_{time.strftime('%Y-%m-%d_%H-%M-%S', time.gmtime(stamp))}_{tag}.mp4"
        path = folder / name
        with open(path, "wb") as handle:
            handle.write(b"\0" * (i % 64))
        os.utime(path, (stamp, stamp))
        names.append(name)
    return names


async def measure(call, params_for, queries: int) -> dict:
    samples = []
    for i in range(queries):
        params = params_for(i)
        started = time.perf_counter()
        await call(params)
        samples.append((time.perf_counter() - started) * 1000)
    return summary(samples)


async def bench_index(count: int, queries: int, base: Path) -> None:
    from camservice.workers.base import CallContext
    from camservice.workers.files.worker import FilesWorker

    from camservice import config as config_module
    from camservice import methods

    root = Path(tempfile.mkdtemp(prefix="cs-bench-", dir=base))
    try:
        state = root / "s"
        config = config_module.load(overrides={"runtime.state_dir": str(state), "files.http_port": 0}, environ={})
        started = time.perf_counter()
        names = generate(config.recordings_dir, count, time.time() - count * SPACING - 3600)
        generate_s = time.perf_counter() - started

        worker = FilesWorker(config, 0)
        # Only the index: no download server or background jobs in a benchmark.
        await asyncio.to_thread(worker.db.open)
        started = time.perf_counter()
        await worker.rescan()
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        await worker.rescan()
        rescan_s = time.perf_counter() - started
        started = time.perf_counter()
        await worker.rescan(full=False)
        quick_s = time.perf_counter() - started

        def ctx() -> CallContext:
            return CallContext("bench", {}, time.time() + 60)

        listing = {
            "first_page": lambda i: {"limit": 100},
            "page_offset_1000": lambda i: {"limit": 100, "offset": min(1000, max(0, count - 100))},
            "device_filter": lambda i: {"limit": 100, "device": f"camera{i % CAMERAS}"},
            "deep_offset": lambda i: {"limit": 100, "offset": max(0, count - 100)},
        }
        result = {
            "bench": "files.index",
            "files": count,
            "generate_s": round(generate_s, 3),
            "index_build_s": round(build_s, 3),
            "rescan_unchanged_s": round(rescan_s, 3),
            "rescan_quick_s": round(quick_s, 4),
            "db_bytes": sum(p.stat().st_size for p in worker.db.path.parent.glob("index.sqlite3*")),
        }
        for label, params_for in listing.items():
            result[f"list_{label}"] = await measure(
                lambda p: worker.list_recordings(methods.list_files(p), ctx()), params_for, queries
            )
        result["storage_info"] = await measure(lambda p: worker.get_storage_info({}, ctx()), lambda i: {}, queries)
        victims = iter(names[: min(queries, count // 2)])
        result["delete"] = await measure(
            lambda p: worker.delete_recording(p, ctx()), lambda i: {"filename": next(victims)}, min(queries, count // 2)
        )
        worker.db.close()
        emit(result)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def bench_ws(url: str, queries: int, token: str | None) -> None:
    from websockets.asyncio.client import connect

    async with connect(url, max_size=2**22, open_timeout=10) as ws:
        seq = 0

        async def rpc(method: str, params: dict) -> dict:
            nonlocal seq
            seq += 1
            if token:
                params = {**params, "auth_token": token}
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": seq, "method": method, "params": params}))
            while True:  # skip notifications
                reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if reply.get("id") == seq:
                    return reply

        first = await rpc("list_recordings", {"limit": 1})
        if "error" in first:
            emit({"bench": "files.ws", "error": first["error"]})
            return
        total = first["result"]["total"]
        result = {"bench": "files.ws", "url": url, "files": total}
        result["list_first_page"] = await measure(
            lambda p: rpc("list_recordings", p), lambda i: {"limit": 100}, queries
        )
        result["list_deep_offset"] = await measure(
            lambda p: rpc("list_recordings", p), lambda i: {"limit": 100, "offset": max(0, total - 100)}, queries
        )
        emit(result)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=("index", "ws"), default="index")
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument(
        "--dir", type=Path, default=Path(tempfile.gettempdir()), help="where to generate the file trees (index mode)"
    )
    parser.add_argument("--url", default="ws://127.0.0.1:8002/ws")
    parser.add_argument("--token", default=os.environ.get("CAMSERVICE_TOKEN"))
    args = parser.parse_args(argv)
    import logging

    import structlog

    # Per-call info lines (deletions, rescans) would swamp the JSON output.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.mode == "ws":
        asyncio.run(bench_ws(args.url, args.queries, args.token))
        return
    for count in args.counts:
        asyncio.run(bench_index(count, args.queries, args.dir))


if __name__ == "__main__":
    main()
