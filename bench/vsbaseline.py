"""Service against the bare websockets baseline, in alternating rounds: the ratio.

Starts bench/baseline_server.py and the service (``camservice start`` with
--simulate cameras and the rate limits raised, through tests/harness.Service),
then for every --case (``METHOD:CONNECTIONS``, default the issue's targets)
warms both up and runs ``bench.load`` --rounds times against each, baseline
first, alternating, so drift of the machine hits both alike. Prints one JSON
line per run and one summary line per case:

    {"bench": "compare.summary", "method", "connections", "ratio": [min, max],
     "ratios": [...], "service_rps": [...], "baseline_rps": [...],
     "service_cpu_us_per_req": [...], "baseline_cpu_us_per_req": [...],
     "service_p95_ms": [...], "service_p99_ms": [...], "errors": N}

ratio = service throughput / baseline throughput of the same round; CPU µs
per request counts every process of each server (the service's whole tree).
On a 2-core machine the load generator shares the cores: compare rounds
whose ``other_cpu_s`` is small.

Examples:
    python -m bench.vsbaseline                                   # the issue's cases, 3 rounds, ~2.5 min
    python -m bench.vsbaseline --case get_camera_status:10 --rounds 5
    python -m bench.vsbaseline --case get_camera_capabilities:100 --processes 1
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys

from tests.harness import Service

from . import common, walltime
from .target import mint_token

DEFAULT_CASES = [
    "get_camera_status:10",
    "get_camera_status:100",
    "get_camera_status:500",
    "get_camera_list:100",
    "get_camera_capabilities:100",
]
PARAMS = {"get_camera_status": '{"device":"camera0"}', "get_camera_capabilities": '{"device":"camera0"}'}


def load(url: str, token: str, method: str, connections: int, args, pid_args: list[str], duration: float) -> dict:
    cmd = common.module_cmd(
        "load",
        "--url",
        url,
        "--token",
        token,
        "--method",
        method,
        "--params",
        PARAMS.get(method, "{}"),
        "--connections",
        str(connections),
        "--duration",
        str(duration),
        "--processes",
        str(args.processes),
        *pid_args,
    )
    with walltime.spent(walltime.MEASURED):
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=duration + 180, cwd=common.REPO)
    return common.load_result(done.stdout, done.stderr, done.returncode)


def run_case(case: str, service: Service, baseline_pid: int, baseline_url: str, token: str, args) -> dict:
    method, connections = case.rsplit(":", 1)
    connections = int(connections)
    targets = {
        "baseline": (baseline_url, ["--pid", str(baseline_pid)]),
        "service": (service.url, ["--pid-tree", str(service.supervisor_pid())]),
    }
    for url, pid_args in targets.values():  # warm-up: first-run costs (allocator, caches) out of the figures
        load(url, token, method, connections, args, pid_args, args.warmup)
    runs: dict[str, list[dict]] = {"baseline": [], "service": []}
    for round_number in range(1, args.rounds + 1):
        for name, (url, pid_args) in targets.items():
            result = load(url, token, method, connections, args, pid_args, args.duration)
            runs[name].append(result)
            common.print_json({"bench": "compare", "server": name, "round": round_number, **result})
    ratios = [
        round(s["throughput_rps"] / b["throughput_rps"], 3)
        for s, b in zip(runs["service"], runs["baseline"])
        if s["throughput_rps"] and b["throughput_rps"]
    ]

    def column(name: str, key: str) -> list:
        return [run.get(key) for run in runs[name]]

    return {
        "bench": "compare.summary",
        "method": method,
        "connections": connections,
        "client_processes": args.processes,
        "ratio": [min(ratios), max(ratios)] if ratios else None,
        "ratios": ratios,
        "service_rps": column("service", "throughput_rps"),
        "baseline_rps": column("baseline", "throughput_rps"),
        "service_cpu_us_per_req": column("service", "server_cpu_us_per_req"),
        "baseline_cpu_us_per_req": column("baseline", "server_cpu_us_per_req"),
        "service_p95_ms": column("service", "p95_ms"),
        "service_p99_ms": column("service", "p99_ms"),
        "baseline_p95_ms": column("baseline", "p95_ms"),
        "other_cpu_s": column("service", "other_cpu_s"),
        "errors": sum(run["errors"] for name in runs for run in runs[name]),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Examples:" + __doc__.split("Examples:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--case", action="append", help="METHOD:CONNECTIONS (repeatable; default: the issue's targets)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per case (default 3)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per server and case (default 2)")
    ap.add_argument("--processes", type=int, default=2, help="load.py client processes (default 2)")
    ap.add_argument("--simulate", type=int, default=4, help="simulated cameras (default 4)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, common.on_sigterm)
    baseline = service = None
    failed = False
    try:
        port = common.free_port()
        baseline = common.start_baseline(port)
        service = Service(simulate=args.simulate, **common.FAST_LIMITS).start()
        token = mint_token(service, "admin")
        for case in args.case or DEFAULT_CASES:
            summary = run_case(case, service, baseline.pid, f"ws://127.0.0.1:{port}/ws", token, args)
            failed |= bool(summary["errors"])
            common.print_json(summary)
    except KeyboardInterrupt:
        return 130
    finally:
        if service is not None:
            service.cleanup()
        if baseline is not None:
            baseline.terminate()
            baseline.wait(10)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
