"""Downloads through the API port (issue 13 targets): throughput, gateway CPU, status latency meanwhile.

Starts the real service (``camservice start``) on a temporary state folder
holding one ``--size-mib`` recording (sparse: real bytes on the wire, no
disk reads), with ``files.download_rate_limit`` from ``--rate-limit``
(default 0: pacing off) and the optional ``files.http_port`` on, so that
both ways can be compared:

1. ``throughput``: one download at a time, ``--rounds`` each, alternating
   the API port (handed to a file worker) and the file port; MB/s (10^6)
   per round and the ratio of the medians;
2. ``gateway_cpu``: the gateway process's CPU seconds (user + system,
   psutil) across one whole download through the API port;
3. ``status``: ``--clients`` WebSocket clients call ``get_camera_status``
   for ``--duration`` seconds, alone and then while ``--parallel``
   processes download through the API port (``--load-via files_port``: the
   file port, for comparison), one file after another, throughout;
   P50/P95/P99 of each and the ratio.

With ``--tls`` the service gets an openssl-made certificate and everything
runs over https/wss (the gateway relays: see README, "Downloads").

Example: ``python -m bench.api_download --size-mib 1024``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import websockets
import yaml

NAME = "camera0_2026-01-01_00-00-00.mp4"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def download(port: int, token: str, tls_ca: str | None) -> tuple[int, float]:
    """One whole download into a fixed 1 MiB buffer: (bytes, seconds)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock = raw
    if tls_ca:
        context = ssl.create_default_context(cafile=tls_ca)
        sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    began = time.perf_counter()
    request = f"GET /files/recordings/{NAME} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    sock.sendall(request.encode())
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(65536)
    header, _, body = head.partition(b"\r\n\r\n")
    if not header.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(header.decode(errors="replace"))
    length = int(
        next(
            v for k, _, v in (line.partition(b":") for line in header.split(b"\r\n")) if k.lower() == b"content-length"
        )
    )
    received = len(body)
    while received < length:
        count = sock.recv_into(view)
        if not count:
            break
        received += count
    sock.close()
    return received, time.perf_counter() - began


def _download_worker(args):
    """Downloads one after another until the deadline (the status phase must be loaded throughout)."""
    port, token, ca, deadline = args
    total, began, count = 0, time.perf_counter(), 0
    while time.time() < deadline:
        size, _ = download(port, token, ca)
        total += size
        count += 1
    return total, time.perf_counter() - began, count


async def status_latencies(url: str, token: str, clients: int, duration: float, ca: str | None) -> list[float]:
    context = ssl.create_default_context(cafile=ca) if ca else None
    latencies: list[float] = []

    async def one():
        async with websockets.connect(url, ssl=context, max_size=None) as ws:
            await ws.send(
                json.dumps({"jsonrpc": "2.0", "method": "authenticate", "params": {"auth_token": token}, "id": 0})
            )
            await ws.recv()
            end = time.monotonic() + duration
            n = 0
            while time.monotonic() < end:
                n += 1
                began = time.perf_counter()
                await ws.send(
                    json.dumps(
                        {"jsonrpc": "2.0", "method": "get_camera_status", "params": {"device": "sim:0"}, "id": n}
                    )
                )
                reply = json.loads(await ws.recv())
                latencies.append(time.perf_counter() - began)
                if "result" not in reply:
                    raise RuntimeError(reply)
                await asyncio.sleep(0.05)

    await asyncio.gather(*(one() for _ in range(clients)))
    return latencies


def percentiles(values: list[float]) -> dict:
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))] * 1000
    return {
        "n": len(values),
        "p50_ms": round(pick(0.5), 3),
        "p95_ms": round(pick(0.95), 3),
        "p99_ms": round(pick(0.99), 3),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument(
        "--load-via", choices=("api", "files_port"), default="api", help="port the parallel downloads of phase 3 use"
    )
    parser.add_argument(
        "--rate-limit", type=int, default=0, help="files.download_rate_limit, bytes/s per download (0: pacing off)"
    )
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="csb-"))
    state = root / "state"
    (state / "recordings").mkdir(parents=True)
    with open(state / "recordings" / NAME, "wb") as handle:
        handle.truncate(args.size_mib << 20)
    port, files_port = free_port(), free_port()
    tree = {
        "server": {"port": port},
        "runtime": {"state_dir": str(state)},
        "files": {"http_port": files_port, "download_rate_limit": args.rate_limit},
        "cameras": {"simulate": 1, "sim_resolution": "160x120", "sim_fps": 5},
        "security": {"jwt_secret": "bench-secret-" + "x" * 32, "rate_limit": 10000.0, "rate_burst": 10000},
    }
    ca = None
    if args.tls:
        ca, key = str(root / "cert.pem"), str(root / "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-days", "1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", ca],
            check=True, capture_output=True,
        )  # fmt: skip
        tree["server"]["tls"] = {"cert_file": ca, "key_file": key}
    (root / "c.yaml").write_text(yaml.safe_dump(tree))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMSERVICE_")}
    env["CAMSERVICE_CONFIG"] = str(root / "c.yaml")
    cli = [sys.executable, "-m", "camservice.cli"]
    subprocess.run([*cli, "start"], env=env, check=True, capture_output=True, timeout=120)
    try:
        token = subprocess.run(
            [*cli, "token", "--role", "viewer"], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        status = json.loads(
            subprocess.run([*cli, "status", "--json"], env=env, capture_output=True, text=True, check=False).stdout
        )
        gateway_pid = next(p["pid"] for p in status["processes"] if p["name"].startswith("gateway"))
        gateway = psutil.Process(gateway_pid)
        report: dict = {
            "size_mib": args.size_mib,
            "tls": args.tls,
            "rate_limit": args.rate_limit,
            "load_via": args.load_via,
        }

        rates = {"api": [], "files_port": []}
        for _ in range(args.rounds):
            for label, p in (("api", port), ("files_port", files_port)):
                size, seconds = download(p, token, ca)
                rates[label].append(size / seconds / 1e6)
        report["throughput_mb_s"] = {k: [round(v) for v in vs] for k, vs in rates.items()}
        report["api_vs_file_port"] = round(statistics.median(rates["api"]) / statistics.median(rates["files_port"]), 3)

        before = gateway.cpu_times()
        size, seconds = download(port, token, ca)
        after = gateway.cpu_times()
        report["gateway_cpu_s_one_download"] = round((after.user - before.user) + (after.system - before.system), 4)
        report["one_download_s"] = round(seconds, 3)

        url = f"{'wss' if ca else 'ws'}://127.0.0.1:{port}/ws"
        unloaded = asyncio.run(status_latencies(url, token, args.clients, args.duration, ca))
        with multiprocessing.Pool(args.parallel) as pool:
            deadline = time.time() + args.duration
            via = port if args.load_via == "api" else files_port
            pending = pool.map_async(_download_worker, [(via, token, ca, deadline)] * args.parallel)
            loaded = asyncio.run(status_latencies(url, token, args.clients, args.duration, ca))
            finished = pending.get(600)
        report["status_unloaded"] = percentiles(unloaded)
        report["status_during_downloads"] = percentiles(loaded)
        report["parallel_downloads"] = [{"mb_s": round(s / t / 1e6), "whole_files": n} for s, t, n in finished]
        report["p95_ratio"] = round(
            report["status_during_downloads"]["p95_ms"] / report["status_unloaded"]["p95_ms"], 3
        )
        print(json.dumps(report, indent=2))
    finally:
        subprocess.run([*cli, "stop"], env=env, capture_output=True, timeout=120, check=False)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
