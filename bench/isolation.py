"""Latency isolation: get_camera_status while other clients list 100,000 recordings flat out.

Starts the service on a recordings folder of --files files (default
100,000, generated once; --files-dir keeps it for the next run), waits until
the index is complete, then measures ``get_camera_status`` latency from
--status-clients connections (default 10, one client process, one request
in flight each, paced: every connection sends one request every
--status-interval seconds, default 10 ms, i.e. 1,000 req/s in all; 0 = as
fast as they can) in three phases of --duration seconds (default 10) on the
same connections:

1. ``unloaded``: the status clients alone;
2. ``loaded``: meanwhile --list-clients connections (default 2) call
   ``list_recordings`` ``{"limit": 100}`` as fast as they can, one request
   in flight each (``bench.load``, 1 client process);
3. ``unloaded_after``: alone again, to show the machine did not drift.

Prints one JSON line per phase and a summary line:

    {"bench": "isolation", "status_unloaded": {p50/p95/p99/max},
     "status_loaded": {...}, "p95_ratio", "list": {load.py's JSON},
     "cpu_percent": {per process, loaded phase}, ...}

A paced request that could not be sent on time (the previous one was still
unanswered) is sent late and the slot counted in ``late``; its latency is
measured from when it was sent (the figures are per-request service latency,
not a coordinated-omission-corrected schedule).

Examples:
    python -m bench.isolation --files-dir /tmp/rec100k
    python -m bench.isolation --status-interval 0          # status clients flat out too
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from array import array
from collections import Counter

from websockets.asyncio.client import connect

from . import (
    common,
    load,
    scaling,  # recordings folder, service start, index wait, CPU sampler
)
from .common import host_busy
from .common import latency_summary as summary

# ------------------------------------------------------------------ paced status probe


async def _probe(pipe, cfg: dict) -> None:
    sem = asyncio.Semaphore(64)

    async def open_one():
        async with sem:
            ws = await connect(cfg["url"], compression=None, ping_interval=None, open_timeout=60, max_size=1 << 22)
            await ws.send(
                json.dumps(
                    {"jsonrpc": "2.0", "id": "a", "method": "authenticate", "params": {"auth_token": cfg["token"]}}
                )
            )
            while json.loads(await ws.recv()).get("id") != "a":
                pass
            return ws

    conns = await asyncio.gather(*(open_one() for _ in range(cfg["n"])))
    loop = asyncio.get_running_loop()
    pipe.send(("ready", len(conns)))
    prefix = '{"jsonrpc":"2.0","method":%s,"params":%s,"id":' % (json.dumps(cfg["method"]), json.dumps(cfg["params"]))
    interval = cfg["interval"]

    async def one(ws, lat: array, errors: Counter, end: float, counters: Counter) -> None:
        rid = 0
        t_next = time.monotonic() + random.uniform(0, interval)
        while True:
            now = time.monotonic()
            if interval:
                if t_next > now:
                    await asyncio.sleep(t_next - now)
                elif now - t_next > interval:
                    counters["late"] += 1
                    t_next = now
                t_next += interval
            if time.monotonic() >= end:
                return
            rid += 1
            key = f'"id":{rid}}}'.encode()
            t0 = time.perf_counter_ns()
            await ws.send(f"{prefix}{rid}}}")
            while True:
                try:
                    msg = await ws.recv(decode=False)
                except Exception:
                    errors["closed"] += 1
                    return
                if msg.endswith(key) or f'"id": {rid}'.encode() in msg:
                    break  # ours (json.dumps may add a space); notifications have no id
            lat.append(time.perf_counter_ns() - t0)
            if b'"error"' in msg:
                errors[str(json.loads(msg).get("error", {}).get("code"))] += 1

    while True:
        msg = await loop.run_in_executor(None, pipe.recv)
        if msg[0] == "close":
            break
        _, label, duration = msg
        lat, errors, counters = array("q"), Counter(), Counter()
        end = time.monotonic() + duration
        await asyncio.gather(*(one(ws, lat, errors, end, counters) for ws in conns))
        pipe.send(("done", label, lat.tobytes(), dict(errors), dict(counters)))
    await load.wait_all([ws.close() for ws in conns], 10)


def _probe_main(pipe, cfg: dict) -> None:
    common.run_child(pipe, lambda: _probe(pipe, cfg))


class StatusProbe:
    """`n` connections in a child process calling `method` paced at `interval` s each."""

    def __init__(
        self,
        url: str,
        token: str,
        n: int,
        interval: float,
        method: str = "get_camera_status",
        params: dict | None = None,
    ):
        ctx = multiprocessing.get_context("fork")
        self.pipe, child = ctx.Pipe()
        cfg = {
            "url": url,
            "token": token,
            "n": n,
            "interval": interval,
            "method": method,
            "params": {"device": "camera0"} if params is None else params,
        }
        self.proc = ctx.Process(target=_probe_main, args=(child, cfg), daemon=True)
        self.proc.start()
        child.close()
        self._recv(60 + n / 20)

    def _recv(self, timeout: float):
        deadline = time.monotonic() + timeout
        while not self.pipe.poll(0.2):
            if not self.proc.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("status probe process died or timed out")
        msg = self.pipe.recv()
        if msg[0] == "fatal":
            raise RuntimeError(f"status probe failed: {msg[1]}")
        return msg

    def start(self, label: str, duration: float) -> None:
        self.pipe.send(("run", label, duration))

    def result(self, duration: float) -> dict:
        _, label, lat_bytes, errors, counters = self._recv(duration + 60)
        lat = array("q")
        lat.frombytes(lat_bytes)
        return {"label": label, "latencies": lat, "errors": errors, "late": counters.get("late", 0)}

    def run(self, label: str, duration: float) -> dict:
        self.start(label, duration)
        return self.result(duration)

    def close(self) -> None:
        try:
            self.pipe.send(("close",))
        except OSError:
            pass
        self.proc.join(15)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


def phase_row(bench: str, res: dict, duration: float, other_cpu_s: float | None = None, **extra) -> dict:
    row = {
        "bench": bench,
        "phase": res["label"],
        **summary(res["latencies"]),
        "rps": round(len(res["latencies"]) / duration, 1),
        "late": res["late"],
        "errors": res["errors"],
    }
    if other_cpu_s is not None:
        row["other_cpu_s"] = other_cpu_s
    row.update(extra)
    return row


# ------------------------------------------------------------------ the benchmark


def run(args) -> dict:
    folder = scaling.FilesFolder(args.files_dir, args.files)
    service = probe = None
    try:
        settings = {"workers.files": args.file_workers} if args.file_workers != 1 else {}
        service = scaling.start_service(folder.path, settings)
        token = service.token("viewer")
        index_s = scaling.wait_index(service, token, args.files)
        named, supervisor = service.pids(), service.supervisor_pid()
        probe = StatusProbe(service.url, token, args.status_clients, args.status_interval)
        time.sleep(1.0)
        probe.run("warmup", 1.0)

        def quiet_phase(label):
            cpu0, h0, c0 = (
                common.cpu_snapshot([supervisor], tree=True),
                host_busy(),
                common.cpu_snapshot([probe.proc.pid]),
            )
            res = probe.run(label, args.duration)
            srv = common.cpu_delta(cpu0, common.cpu_snapshot([supervisor], tree=True))
            cli = common.cpu_delta(c0, common.cpu_snapshot([probe.proc.pid]))
            return res, round(host_busy() - h0 - srv - cli, 2)

        before, other_before = quiet_phase("unloaded")
        common.print_json(phase_row("isolation", before, args.duration, other_before))

        # Loaded: load.py (list_recordings) starts, and once its connections are
        # open and warm the status clients run for --duration.
        cmd = common.module_cmd(
            "load",
            "--url",
            service.url,
            "--token",
            token,
            "--method",
            "list_recordings",
            "--params",
            args.list_params,
            "--connections",
            str(args.list_clients),
            "--pipeline",
            "1",
            "--processes",
            "1",
            "--warmup",
            "1.5",
            "--duration",
            str(args.duration + 1.0),
            "--pid-tree",
            str(supervisor),
        )
        lister = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=common.REPO)
        sampler = scaling.CpuSampler(named, lister.pid).start()
        try:
            time.sleep(2.0)  # connect + 1.5 s warm-up: the timed phase has begun
            t_from = time.monotonic()
            c0 = common.cpu_snapshot([probe.proc.pid])
            loaded = probe.run("loaded", args.duration)
            client_probe_cpu = common.cpu_delta(c0, common.cpu_snapshot([probe.proc.pid]))
            t_to = time.monotonic()
            out, err = lister.communicate(timeout=args.duration + 120)
        except BaseException:
            lister.kill()
            lister.wait()
            raise
        finally:
            sampler.stop()
        listing = common.load_result(out, err, lister.returncode)
        cpu = sampler.percent(t_from, t_to)
        cpu["status_probe"] = round(100 * client_probe_cpu / max(t_to - t_from, 1e-9), 1)
        cpu["other"] = round(cpu.get("other", 0.0) - cpu["status_probe"], 1)
        common.print_json(
            phase_row(
                "isolation", loaded, args.duration, None, list_throughput_rps=listing["throughput_rps"], cpu_percent=cpu
            )
        )

        after, other_after = quiet_phase("unloaded_after")
        common.print_json(phase_row("isolation", after, args.duration, other_after))

        unloaded = array("q", before["latencies"])
        unloaded.extend(after["latencies"])
        s_un, s_lo = summary(unloaded), summary(loaded["latencies"])
        return {
            "bench": "isolation.summary",
            "files": args.files,
            "index_ready_s": round(index_s, 1),
            "status_clients": args.status_clients,
            "status_interval_s": args.status_interval,
            "list_clients": args.list_clients,
            "file_workers": args.file_workers,
            "status_unloaded": s_un,
            "status_loaded": s_lo,
            "p95_ratio": round(s_lo["p95_ms"] / s_un["p95_ms"], 2) if s_un["p95_ms"] else None,
            "target_p95_ms": 5.0,
            "target_met": bool(s_lo["p95_ms"] is not None and s_lo["p95_ms"] < 5.0),
            "list": {
                k: listing[k]
                for k in (
                    "requests",
                    "errors",
                    "throughput_rps",
                    "p50_ms",
                    "p95_ms",
                    "p99_ms",
                    "max_ms",
                    "server_cpu_us_per_req",
                    "other_cpu_s",
                )
            },
            "cpu_percent_loaded": cpu,
            "other_cpu_s_unloaded": [other_before, other_after],
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        if probe is not None:
            probe.close()
        if service is not None:
            service.cleanup()
        folder.cleanup()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Examples:" + __doc__.split("Examples:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--files", type=int, default=100_000, help="recordings in the folder (default 100000)")
    ap.add_argument("--files-dir", default=None, help="recordings folder to use and keep (default: temporary)")
    ap.add_argument("--status-clients", type=int, default=10, help="get_camera_status clients (default 10)")
    ap.add_argument(
        "--status-interval",
        type=float,
        default=0.01,
        help="seconds between one status client's requests (default 0.01; 0: flat out)",
    )
    ap.add_argument("--list-clients", type=int, default=2, help="list_recordings clients (default 2)")
    ap.add_argument("--list-params", default='{"limit":100}', help='list_recordings params (default {"limit":100})')
    ap.add_argument("--file-workers", type=int, default=1, help="workers.files (default 1, the default config)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per phase (default 10)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, common.on_sigterm)
    try:
        result = run(args)
    except KeyboardInterrupt:
        return 130
    common.print_json(result)
    return 0 if result["status_loaded"]["n"] and not result["list"]["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
