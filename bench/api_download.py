"""Downloads through the API port (issue 13 targets): throughput, gateway CPU, status latency meanwhile.

Starts the real service (``camservice start``) once per ``--variant``, each
on its own temporary state folder holding one ``--size-mib`` recording
(sparse: real bytes on the wire, no disk reads) and with the optional
``files.http_port`` on, so that both ways can be compared. All variants run
at once and are measured in alternating rounds (round 1: A then B, round 2:
A then B...), so that a neighbour's load on a shared machine falls on each
alike. Per variant and round:

1. ``throughput``: one download through the API port (handed to a file
   worker) and one through the file port; MB/s (10^6) and the ratio of the
   medians over the rounds;
2. ``gateway_cpu``: the gateway process's CPU seconds (user + system,
   psutil) across one whole download through the API port (first round);
3. ``status``: ``--clients`` WebSocket clients call ``get_camera_status``
   for ``--duration`` seconds, alone and then while ``--parallel``
   processes download through the API port (``--load-via files_port``: the
   file port, for comparison), one file after another, throughout; once
   per ``--readers`` mode. P50/P95/P99 pooled over the rounds and the P95
   ratio (loaded / unloaded), plus each round's ratio for the spread.

``--readers`` (comma-separated) says how the download processes run; they
stand in for remote clients, which on one 2-core box compete for the
service's cores as no remote client would:

* ``plain``: as they are (the unmodified figure: always report it);
* ``nice19``: at ``nice 19``; ``idle``: ``SCHED_IDLE``; ``pinned``: on the
  last CPU only (``sched_setaffinity``). Each is a "remote-client
  equivalent", to be reported beside ``plain``, never instead of it.

During each loaded phase the CPU of every thread on the host is split by
role (``bench/cpusplit.py``: service processes, status clients, download
readers, kernel threads, the rest of the machine) and printed with the load
average.

A variant is ``NAME`` or ``NAME:key=value,key=value`` with dotted config
keys (``files.download_budget=0``), and ``python=PATH`` to run that
variant's service with another interpreter (another tree's venv: A/B
against a build before a change); ``--rate-limit`` and ``--budget`` set
``files.download_rate_limit`` and ``files.download_budget`` for variants
that do not set them (omitted: the service's defaults).

With ``--tls`` the service gets an openssl-made certificate and everything
runs over https/wss (the gateway relays: see README, "Downloads").

Examples::

    python -m bench.api_download                       # the defaults, plain readers
    python -m bench.api_download --readers plain,idle --rounds 3 \
        --variant defaults --variant unpaced:files.download_budget=0,files.download_rate_limit=0
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

from . import common, cpusplit

NAME = "camera0_2026-01-01_00-00-00.mp4"


def download(port: int, token: str, tls_ca: str | None, deadline: float | None = None) -> tuple[int, float]:
    """One whole download into a fixed 1 MiB buffer, or as much as arrives before ``deadline`` (time.time()): (bytes, seconds)."""
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
        if deadline is not None and time.time() >= deadline:
            break  # the phase is over: a reader stops mid-file, so its rate is the phase's
    sock.close()
    return received, time.perf_counter() - began


def _download_worker(args):
    """Downloads one after another until the deadline (the status phase must be loaded throughout)."""
    port, token, ca, deadline = args
    total, began, count = 0, time.perf_counter(), 0
    while time.time() < deadline:
        size, _ = download(port, token, ca, deadline)
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


READER_MODES = ("plain", "nice19", "idle", "pinned")


def _reader_init(mode: str) -> None:
    """Lower the download reader's claim on the CPU (a remote client's would be nil)."""
    if mode == "nice19":
        os.nice(19)
    elif mode == "idle":
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    elif mode == "pinned":
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME[:a.b=1,c.d=x]`` -> (NAME, {"a.b": 1, "c.d": "x"}), values as YAML scalars."""
    name, _, rest = text.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or ("." not in key and key.strip() != "python"):
            raise argparse.ArgumentTypeError(f"{item!r}: expected section.key=value or python=PATH")
        overrides[key.strip()] = value if key.strip() == "python" else yaml.safe_load(value)
    return name, overrides


class Service:
    """One running service (one variant) on its own state folder and ports."""

    def __init__(self, name: str, overrides: dict, args, root: Path):
        self.name = name
        overrides = dict(overrides)
        python = overrides.pop("python", sys.executable)
        self.root = root / name
        state = self.root / "state"
        (state / "recordings").mkdir(parents=True)
        with open(state / "recordings" / NAME, "wb") as handle:
            handle.truncate(args.size_mib << 20)
        with open(state / "recordings" / NAME, "rb", buffering=0) as handle:
            while handle.read(8 << 20):  # into the page cache now, not during the first measured download
                pass
        self.port, self.files_port = common.free_port(), common.free_port()
        tree: dict = {
            "server": {"port": self.port},
            "runtime": {"state_dir": str(state)},
            "files": {"http_port": self.files_port},
            "cameras": {"simulate": 1, "sim_resolution": "160x120", "sim_fps": 5},
            "security": {"jwt_secret": "bench-secret-" + "x" * 32, "rate_limit": 10000.0, "rate_burst": 10000},
        }
        if args.rate_limit is not None:
            tree["files"]["download_rate_limit"] = args.rate_limit
        if args.budget is not None:
            tree["files"]["download_budget"] = args.budget
        self.ca = None
        if args.tls:
            self.ca, key = str(self.root / "cert.pem"), str(self.root / "key.pem")
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-days", "1",
                 "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", self.ca],
                check=True, capture_output=True,
            )  # fmt: skip
            tree["server"]["tls"] = {"cert_file": self.ca, "key_file": key}
        for dotted, value in overrides.items():
            section, _, key = dotted.rpartition(".")
            node = tree
            for part in section.split("."):
                node = node.setdefault(part, {})
            node[key] = value
        self.settings = {k: v for k, v in tree["files"].items() if k != "http_port"}
        if python != sys.executable:
            self.settings["python"] = python
        (self.root / "c.yaml").write_text(yaml.safe_dump(tree))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CAMSERVICE_")}
        self.env["CAMSERVICE_CONFIG"] = str(self.root / "c.yaml")
        self.cli = [python, "-m", "camservice.cli"]
        self.url = f"{'wss' if self.ca else 'ws'}://127.0.0.1:{self.port}/ws"

    def start(self) -> None:
        started = subprocess.run(
            [*self.cli, "start"], env=self.env, cwd=self.root, capture_output=True, text=True, timeout=180
        )
        if started.returncode:
            raise RuntimeError(f"{self.name}: camservice start failed: {started.stdout}{started.stderr}")
        self.token = subprocess.run(
            [*self.cli, "token", "--role", "viewer"],
            env=self.env,
            cwd=self.root,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        status = json.loads(
            subprocess.run(
                [*self.cli, "status", "--json"], env=self.env, cwd=self.root, capture_output=True, text=True
            ).stdout
        )
        self.roles: dict[int, str] = {}
        for entry in status["processes"]:
            role = entry["name"].rstrip("-0123456789") or entry["name"]
            self.roles[entry["pid"]] = f"service {role}"
            try:
                for child in psutil.Process(entry["pid"]).children(recursive=True):
                    self.roles[child.pid] = f"service {role} (child {child.name()})"
            except psutil.Error:
                pass
        gateway_pid = next(p["pid"] for p in status["processes"] if p["name"].startswith("gateway"))
        self.gateway = psutil.Process(gateway_pid)
        try:
            self.roles.setdefault(self.gateway.ppid(), "service supervisor")
        except psutil.Error:
            pass

    def stop(self) -> None:
        subprocess.run([*self.cli, "stop"], env=self.env, cwd=self.root, capture_output=True, timeout=120, check=False)


def loaded_phase(service: Service, args, mode: str, others: dict[int, str]) -> tuple[list[float], dict, list]:
    """Status latencies while ``--parallel`` readers download throughout; the CPU split meanwhile."""
    via = service.port if args.load_via == "api" else service.files_port
    with multiprocessing.Pool(args.parallel, initializer=_reader_init, initargs=(mode,)) as pool:
        roles = {**others, **service.roles, os.getpid(): "status clients (bench)"}
        roles.update({p.pid: "download readers" for p in pool._pool})  # type: ignore[attr-defined]
        deadline = time.time() + args.duration
        pending = pool.map_async(_download_worker, [(via, service.token, service.ca, deadline)] * args.parallel)
        before = cpusplit.snapshot()
        loaded = asyncio.run(status_latencies(service.url, service.token, args.clients, args.duration, service.ca))
        after = cpusplit.snapshot()
        finished = pending.get(600)
    split = cpusplit.split(before, after, roles)
    split["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return loaded, split, finished


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
        "--rate-limit", type=int, default=None, help="files.download_rate_limit: bytes/s per download (0: none)"
    )
    parser.add_argument(
        "--budget", type=int, default=None, help="files.download_budget: bytes/s for all downloads together (0: none)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        type=parse_variant,
        help="NAME[:section.key=value,...]: a service configuration to compare (repeatable; default: one, 'default')",
    )
    parser.add_argument(
        "--readers",
        default="plain",
        help=f"comma-separated download reader modes of phase 3: {', '.join(READER_MODES)}",
    )
    parser.add_argument("--cpu-detail", action="store_true", help="print the busiest threads of each loaded phase")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.readers.split(",") if m.strip()]
    if not modes or any(m not in READER_MODES for m in modes):
        parser.error(f"--readers: choose from {', '.join(READER_MODES)}")
    variants = args.variant or [("default", {})]
    if len({name for name, _ in variants}) != len(variants):
        parser.error("--variant names must differ")

    root = Path(tempfile.mkdtemp(prefix="csb-"))
    services = [Service(name, overrides, args, root) for name, overrides in variants]
    report: dict = {
        "size_mib": args.size_mib,
        "tls": args.tls,
        "load_via": args.load_via,
        "parallel": args.parallel,
        "clients": args.clients,
        "rounds": args.rounds,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "variants": {},
    }
    try:
        for service in services:
            service.start()
        every_role: dict[int, str] = {}
        for service in services:  # another variant's idle service is "other", not this one's
            every_role.update({pid: f"{role} [{service.name}]" for pid, role in service.roles.items()})
        data = {
            s.name: {"rates": {"api": [], "files_port": []}, "unloaded": [], "loaded": {m: [] for m in modes},
                     "per_round": {m: [] for m in modes}, "cpu": {m: [] for m in modes}, "downloads": {m: [] for m in modes},
                     "files_cpu": {m: [] for m in modes}}
            for s in services
        }  # fmt: skip
        gateway_cpu: dict[str, tuple[float, float]] = {}
        for round_no in range(args.rounds):
            for service in services:
                mine = data[service.name]
                others = {pid: role for pid, role in every_role.items() if pid not in service.roles}
                ways = [("api", service.port), ("files_port", service.files_port)]
                for label, p in ways if round_no % 2 == 0 else ways[::-1]:  # neither always goes first
                    size, seconds = download(p, service.token, service.ca)
                    mine["rates"][label].append(size / seconds / 1e6)
                if round_no == 0:
                    before = service.gateway.cpu_times()
                    size, seconds = download(service.port, service.token, service.ca)
                    after = service.gateway.cpu_times()
                    used = (after.user - before.user) + (after.system - before.system)
                    gateway_cpu[service.name] = (used, seconds)
                unloaded = asyncio.run(
                    status_latencies(service.url, service.token, args.clients, args.duration, service.ca)
                )
                mine["unloaded"] += unloaded
                for mode in modes:
                    loaded, split, finished = loaded_phase(service, args, mode, others)
                    mine["loaded"][mode] += loaded
                    mine["per_round"][mode].append(
                        round(percentiles(loaded)["p95_ms"] / percentiles(unloaded)["p95_ms"], 3)
                    )
                    mine["cpu"][mode].append(split)
                    mine["downloads"][mode].append(round(sum(s / t for s, t, _ in finished) / 1e6))
                    files_cores = split["cores_by_role"].get("service files", 0.0)
                    mine["files_cpu"][mode].append(files_cores / max(1e-9, sum(s / t for s, t, _ in finished) / 1e9))
                print(
                    f"round {round_no + 1} {service.name}: "
                    + ", ".join(f"{m} ratio {mine['per_round'][m][-1]}" for m in modes)
                    + f" (load {os.getloadavg()[0]:.2f})",
                    file=sys.stderr,
                    flush=True,
                )
        for service in services:
            mine = data[service.name]
            unloaded = percentiles(mine["unloaded"])
            entry: dict = {
                "settings": service.settings,
                "throughput_mb_s": {k: [round(v) for v in vs] for k, vs in mine["rates"].items()},
                "api_vs_file_port": round(
                    statistics.median(mine["rates"]["api"]) / statistics.median(mine["rates"]["files_port"]), 3
                ),
                "gateway_cpu_s_one_download": round(gateway_cpu[service.name][0], 4),
                "one_download_s": round(gateway_cpu[service.name][1], 3),
                "status_unloaded": unloaded,
                "readers": {},
            }
            for mode in modes:
                loaded = percentiles(mine["loaded"][mode])
                cores = [s["cores_by_role"] for s in mine["cpu"][mode]]
                roles = sorted({r for c in cores for r in c})
                entry["readers"][mode] = {
                    "status_during_downloads": loaded,
                    "p95_ratio": round(loaded["p95_ms"] / unloaded["p95_ms"], 3),
                    "p95_ratio_per_round": mine["per_round"][mode],
                    "download_mb_s_all_readers": mine["downloads"][mode],
                    "files_worker_cpu_s_per_gb": [round(x, 3) for x in mine["files_cpu"][mode]],
                    "cores_by_role_mean": {
                        r: round(statistics.fmean(c.get(r, 0.0) for c in cores), 3)
                        for r in sorted(roles, key=lambda r: -sum(c.get(r, 0.0) for c in cores))
                    },
                    "host_cores_mean": {
                        k: round(statistics.fmean(s["host_cores"][k] for s in mine["cpu"][mode]), 3)
                        for k in ("user", "nice", "system", "softirq", "idle")
                    },
                    "load_average": [s["load_average"] for s in mine["cpu"][mode]],
                }
                if args.cpu_detail:
                    entry["readers"][mode]["busiest_threads"] = [s["busiest_threads"] for s in mine["cpu"][mode]]
            report["variants"][service.name] = entry
        report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(report, indent=2))
        print(summary(report), file=sys.stderr)
    finally:
        for service in services:
            service.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


def summary(report: dict) -> str:
    """The figures the issue's targets need, one line per variant and reader mode."""
    lines = [
        f"load average {report['load_average_start']} -> {report['load_average_end']};"
        f" {report['parallel']} downloads via {report['load_via']}, {report['clients']} status clients"
    ]
    for name, entry in report["variants"].items():
        for mode, r in entry["readers"].items():
            label = "unmodified" if mode == "plain" else "remote-client equivalent"
            lines.append(
                f"{name} [{mode} readers, {label}]: status P95 {entry['status_unloaded']['p95_ms']} ms unloaded,"
                f" {r['status_during_downloads']['p95_ms']} ms loaded, ratio {r['p95_ratio']}"
                f" (rounds {r['p95_ratio_per_round']}); downloads {r['download_mb_s_all_readers']} MB/s total,"
                f" files worker {r['files_worker_cpu_s_per_gb']} CPU s/GB;"
                f" API/file port throughput {entry['api_vs_file_port']}; gateway CPU"
                f" {entry['gateway_cpu_s_one_download']} s per download; settings {entry['settings']}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
