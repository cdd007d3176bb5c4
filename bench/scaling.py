"""Throughput scaling of one worker kind with its process count (default: file workers).

For N in --workers (default 1 2 4) it starts the service with N processes
of --kind (``workers.<kind>: N``) on a recordings folder of --files files
(default 100,000; generated once with bench.files' generator and reused
for every N), waits until the index is complete (``list_recordings`` total
== F), then runs ``bench.load`` against --method/--params (default
``list_recordings`` ``{"limit": 100}``) at a load meant to keep the workers
busy (default 32 connections, pipeline 4, 10 s, 2 client processes) and
prints one JSON line per N:

    {"bench": "scaling", "kind", "n", "throughput_rps", "speedup",
     "efficiency", "p50_ms", "p95_ms", "p99_ms", "errors",
     "cpu_percent": {"gateway-0": .., "files-0": .., ..., "client": ..,
                     "other": ..}, "load": {... load.py's JSON ...}}

then a summary line with S(N) = throughput(N) / throughput(1) and the
efficiency S(N) / N for each N.

``cpu_percent`` is each service process's CPU over the steady part of the
timed phase (100 = one core), sampled with psutil every 0.25 s; "client"
is the load generator (its parent and client processes), "other" everything
else on the host. The machine has 2 cores shared by the client, the
gateway and the workers: when gateway + client take most of them, adding
workers cannot add throughput, and the per-process figures show it.

The periodic rescan is pushed out of the run (storage.scan_interval 3600 s)
so that a full walk of F files does not land in one N's timed phase only.

Examples:
    python -m bench.scaling                                # files, N = 1 2 4, 100k files
    python -m bench.scaling --files 10000 --duration 5
    python -m bench.scaling --files-dir /tmp/rec100k       # keep the generated folder for next time
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.harness import Service

from . import common, walltime
from . import files as files_bench  # the recordings generator
from .common import FAST_LIMITS, on_sigterm
from .target import mint_token, stop_service

# ------------------------------------------------------------------ recordings folder


def ensure_files(folder: Path, count: int) -> dict:
    """Make `folder` hold exactly `count` generated recordings; reuse it if it does."""
    folder.mkdir(parents=True, exist_ok=True)
    with os.scandir(folder) as scan:
        present = sum(1 for e in scan if e.name.endswith(".mp4"))
    if present == count:
        return {"files_dir": str(folder), "generated": False, "generate_s": 0.0}
    if present:
        raise SystemExit(f"{folder} holds {present} recordings, not {count}: use an empty or matching folder")
    started = time.monotonic()
    files_bench.generate(folder, count, time.time() - count * files_bench.SPACING - 3600)
    return {"files_dir": str(folder), "generated": True, "generate_s": round(time.monotonic() - started, 1)}


class FilesFolder:
    """--files-dir if given (kept), else a temporary folder removed at the end."""

    def __init__(self, path: str | None, count: int):
        self.keep = path is not None
        self.path = Path(path) if path else Path(tempfile.mkdtemp(prefix="cs-rec-"))
        self.info = ensure_files(self.path, count)

    def cleanup(self) -> None:
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)


# ------------------------------------------------------------------ service helpers


async def _rpc(ws, rid: int, method: str, params: dict | None = None) -> dict:
    msg = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        msg["params"] = params
    await ws.send(json.dumps(msg))
    while True:
        reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if isinstance(reply, dict) and reply.get("id") == rid:
            return reply


async def _wait_index(url: str, token: str, count: int, timeout: float) -> float:
    started = time.monotonic()
    async with connect(url, open_timeout=10, max_size=1 << 24) as ws:
        await _rpc(ws, 0, "authenticate", {"auth_token": token})
        rid = 1
        while time.monotonic() - started < timeout:
            rid += 1
            reply = await _rpc(ws, rid, "list_recordings", {"limit": 1})
            if (reply.get("result") or {}).get("total") == count:
                return time.monotonic() - started
            await asyncio.sleep(0.2)
    raise RuntimeError(f"index did not reach {count} recordings within {timeout}s")


def wait_index(service: Service, token: str, count: int, timeout: float = 600) -> float:
    """Seconds until list_recordings reports `count` files (the index is complete)."""
    with walltime.spent(walltime.INDEX):
        return asyncio.run(_wait_index(service.url, token, count, timeout))


def start_service(folder: Path, settings: dict, simulate: int = 4) -> Service:
    service = Service(
        simulate=simulate,
        **FAST_LIMITS,
        **{"storage.recordings_dir": str(folder), "storage.scan_interval": 3600.0, "runtime.start_timeout": 120.0},
        **settings,
    )
    try:
        with walltime.spent(walltime.SERVICE_START):
            service.start()
    except BaseException:
        service.cleanup()
        raise
    return service


class CpuSampler:
    """Per-process CPU seconds of the service's processes and of a client tree, every `interval` s."""

    def __init__(self, named_pids: dict[str, int], client_pid: int, interval: float = 0.25):
        self.named = named_pids
        self.client_pid = client_pid
        self.interval = interval
        self.samples: list[tuple[float, dict[str, float], float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[float, dict[str, float], float]:
        out = {}
        for name, pid in self.named.items():
            out[name] = common.cpu_seconds([pid])
        out["client"] = common.cpu_seconds([self.client_pid], tree=True)
        return time.monotonic(), out, common.host_busy()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(self.interval)

    def start(self) -> CpuSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def percent(self, t_from: float, t_to: float) -> dict[str, float]:
        """CPU % (100 = one core) per name over the samples inside [t_from, t_to]."""
        inside = [s for s in self.samples if t_from <= s[0] <= t_to]
        if len(inside) < 2:
            return {}
        (t0, a, h0), (t1, b, h1) = inside[0], inside[-1]
        dt = t1 - t0
        out = {name: round(100 * max(0.0, b.get(name, 0.0) - a.get(name, 0.0)) / dt, 1) for name in b}
        out["other"] = round(100 * (h1 - h0) / dt - sum(out.values()), 1)
        out["window_s"] = round(dt, 2)
        return out


def run_load(
    service: Service,
    token: str,
    supervisor: int,
    named: dict[str, int],
    args,
    method: str,
    params: str,
    connections: int,
    pipeline: int,
) -> tuple[dict, dict]:
    """``bench.load`` in a subprocess, with per-process CPU sampled meanwhile."""
    cmd = common.module_cmd(
        "load",
        "--url",
        service.url,
        "--token",
        token,
        "--method",
        method,
        "--params",
        params,
        "--connections",
        str(connections),
        "--pipeline",
        str(pipeline),
        "--duration",
        str(args.duration),
        "--processes",
        str(args.client_processes),
        "--warmup",
        str(args.warmup),
        "--pid-tree",
        str(supervisor),
    )
    with walltime.spent(walltime.MEASURED):
        return _run_load(cmd, named, args)


def _run_load(cmd: list[str], named: dict[str, int], args) -> tuple[dict, dict]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=common.REPO)
    sampler = CpuSampler(named, proc.pid).start()
    launched = time.monotonic()
    try:
        out, err = proc.communicate(timeout=args.duration + args.warmup + 180)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        sampler.stop()
    result = common.load_result(out, err, proc.returncode)
    # Steady part of the timed phase: after connection set-up and warm-up, before the end.
    t_from = launched + args.warmup + 1.0
    cpu = sampler.percent(t_from, t_from + max(1.0, args.duration - 1.5))
    return result, cpu


def run_one(args, folder: Path, n: int) -> dict:
    """One service with ``n`` workers of ``args.kind``, measured with ``args.method``."""
    return run_cases(args, folder, n, [(args.method, args.params, args.connections, args.pipeline)])[0]


def run_cases(args, folder: Path, n: int, cases: list[tuple[str, str, int, int]]) -> list[dict]:
    """One service, several measurements in turn: (method, params, connections, pipeline) each."""
    settings = {f"workers.{args.kind}": n}
    if args.gateways != 1:
        settings["gateway.processes"] = args.gateways
    if args.concurrency is not None:
        settings["workers.files_concurrency"] = args.concurrency
    for attempt in range(3):
        service = start_service(folder, settings)
        token = mint_token(service, "viewer")
        try:
            index_s = wait_index(service, token, args.files)
            break
        except InvalidStatus as exc:
            # Free ports are picked before the service binds them: on a busy machine another program
            # (or the service's own file server, picked the same free port) may answer on ours. New ports.
            stop_service(service)
            if attempt == 2:
                raise RuntimeError(f"the service's WebSocket port answered {exc}: three times") from exc
        except BaseException:
            stop_service(service)
            raise
    try:
        named = service.pids()
        supervisor = service.supervisor_pid()
        time.sleep(1.0)  # let start-up work (ids, first storage check) finish
        rows = []
        for method, params, connections, pipeline in cases:
            result, cpu = run_load(service, token, supervisor, named, args, method, params, connections, pipeline)
            rows.append(
                {
                    "bench": "scaling",
                    "kind": args.kind,
                    "n": n,
                    "method": method,
                    "files": args.files,
                    "files_concurrency": args.concurrency,
                    "index_ready_s": round(index_s, 1),
                    "throughput_rps": result["throughput_rps"],
                    "p50_ms": result["p50_ms"],
                    "p95_ms": result["p95_ms"],
                    "p99_ms": result["p99_ms"],
                    "errors": result["errors"],
                    "server_cpu_us_per_req": result["server_cpu_us_per_req"],
                    "client_cpu_us_per_req": result["client_cpu_us_per_req"],
                    "other_cpu_s": result["other_cpu_s"],
                    "cpu_percent": cpu,
                    "load": result,
                }
            )
        return rows
    finally:
        stop_service(service)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Examples:" + __doc__.split("Examples:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--kind",
        default="files",
        choices=("files", "recording", "discovery"),
        help="worker kind whose process count varies (default files)",
    )
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="process counts (default 1 2 4)")
    ap.add_argument("--method", default="list_recordings", help="JSON-RPC method (default list_recordings)")
    ap.add_argument("--params", default='{"limit": 100}', help='JSON params (default {"limit": 100})')
    ap.add_argument("--files", type=int, default=100_000, help="recordings in the folder (default 100000)")
    ap.add_argument(
        "--files-dir",
        default=None,
        help="recordings folder to use and keep (generated if empty; default: a temporary one)",
    )
    ap.add_argument("--connections", type=int, default=32, help="load connections (default 32)")
    ap.add_argument("--pipeline", type=int, default=4, help="requests in flight per connection (default 4)")
    ap.add_argument("--duration", type=float, default=10.0, help="timed seconds per N (default 10)")
    ap.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds (default 1)")
    ap.add_argument("--client-processes", type=int, default=2, help="load.py client processes (default 2)")
    ap.add_argument("--gateways", type=int, default=1, help="gateway processes (default 1)")
    ap.add_argument(
        "--concurrency", type=int, default=None, help="workers.files_concurrency (default: the service's default, 2)"
    )
    args = ap.parse_args(argv)
    args.params = json.dumps(json.loads(args.params), separators=(",", ":"))
    signal.signal(signal.SIGTERM, on_sigterm)
    folder = None
    try:
        folder = FilesFolder(args.files_dir, args.files)
        common.print_json({"bench": "scaling.files", **folder.info, "files": args.files})
        rows = []
        for n in args.workers:
            row = run_one(args, folder.path, n)
            base = rows[0]["throughput_rps"] if rows else row["throughput_rps"]
            row["speedup"] = round(row["throughput_rps"] / base, 3) if base else None
            row["efficiency"] = round(row["speedup"] / (n / args.workers[0]), 3) if row["speedup"] else None
            rows.append(row)
            common.print_json(row)
        common.print_json(
            {
                "bench": "scaling.summary",
                "kind": args.kind,
                "method": args.method,
                "params": json.loads(args.params),
                "files": args.files,
                "base_n": args.workers[0],
                "throughput_rps": {str(r["n"]): r["throughput_rps"] for r in rows},
                "speedup": {str(r["n"]): r["speedup"] for r in rows},
                "efficiency": {str(r["n"]): r["efficiency"] for r in rows},
                "errors": sum(r["errors"] for r in rows),
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }
        )
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        if folder is not None:
            folder.cleanup()


if __name__ == "__main__":
    sys.exit(main())
