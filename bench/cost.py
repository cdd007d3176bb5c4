"""Category ``cost``: where a request's server CPU goes, against the bare websockets baseline.

In one run, alternating (baseline, service, baseline, service), 100
connections flat out (``bench.load``, 2 client processes):

* ``status``: ``get_camera_status`` (answered by the gateway from its replica);
* ``worker``: ``get_camera_capabilities`` (gateway -> ZeroMQ -> discovery worker).

Per request, from the scheduler's account of every service process: CPU µs
in all, per process, and user against system (kernel) time; the same for
the one-process baseline. The worker hop's extra cost is the difference of
the two cases. Then the status case once more with the gateway sampled:

* ``py-spy`` (if installed): the gateway's samples by part (event loop,
  WebSocket framing, JSON, ZeroMQ/msgpack, request handling), as shares of
  its user CPU;
* ``strace -c`` (if installed): syscalls per request (requests counted by
  the gateway's own ``get_metrics`` around the window; strace slows the
  gateway down, the counts per request stay valid).

Variants: a second service, its gateway on the other event loop
(``gateway.event_loop``: asyncio by default, uvloop where installed), runs
alongside and takes its turn in the same rounds (baseline, default loop,
other loop, baseline, ...), so that the A/B comparison sees the same
co-tenants; and the in-process cost of the gateway's JSON with the standard
library against orjson (the JSON-RPC layer's fast path where installed).
py-spy sees Python frames only: time in C (uvloop, syscalls) counts to the
Python function that called it, so with uvloop the "event loop" part shrinks
and "WebSocket framing" includes the writes and reads it makes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from argparse import Namespace
from collections import Counter
from pathlib import Path

import psutil

from tests.harness import Client

from . import common
from .phases import Progress
from .target import Target
from .vsbaseline import load as load_run

CASES = {"status": "get_camera_status", "worker": "get_camera_capabilities"}
PARTS = [
    ("event loop", ("asyncio/", "selectors.py", "uvloop")),
    ("WebSocket framing", ("websockets/", "gateway/connection.py")),
    ("ZeroMQ + msgpack", ("zmq/", "msgpack", "gateway/pool.py")),
    ("JSON", ("json/", "jsonrpc.py")),
    ("request handling", ("gateway/", "camservice/")),
]


def proc_times(pids: dict[str, int]) -> dict[str, tuple[float, float, float]]:
    """name -> (schedstat seconds, user seconds, system seconds)."""
    out = {}
    for name, pid in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
            out[name] = ((common.cpu_ns(pid) or 0) / 1e9, t.user, t.system)
        except psutil.Error:
            continue
    return out


def one_run(url, token, method, pid_args, step_s, pids=None) -> dict:
    before = proc_times(pids) if pids else None
    res = load_run(url, token, method, 100, Namespace(processes=2), pid_args, step_s)
    if pids and res["server_cpu_us_per_req"]:
        # These deltas span the whole load run (connection set-up and warm-up too): use them as
        # proportions of the timed phase's figure, which load.py measured on its own window.
        after = proc_times(pids)
        keys = [k for k in after if k in before]
        sched = {k: after[k][0] - before[k][0] for k in keys}
        user = sum(after[k][1] - before[k][1] for k in keys)
        system = sum(after[k][2] - before[k][2] for k in keys)
        total_us = res["server_cpu_us_per_req"]
        whole = sum(sched.values()) or 1.0
        res["per_process_us"] = {k: round(v / whole * total_us, 1) for k, v in sched.items()}
        res["user_us"] = round(user / max(user + system, 1e-9) * total_us, 1)
        res["system_us"] = round(system / max(user + system, 1e-9) * total_us, 1)
    return res


def _median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v)
    if not values:
        return None
    mid = len(values) // 2
    return round(values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2, 1)


def cases(
    targets: dict[str, Target], baseline_pid: int, baseline_url: str, step_s: float, rounds: int, progress: Progress
) -> dict[str, dict]:
    """Per variant (one started service each) and case: CPU per request, rounds alternating.

    Each round runs the bare websockets baseline, then every variant in turn
    (A/B/A/B...), so that whatever else the machine does hits all of them
    alike. The figure of each is its least disturbed round (smallest CPU per
    request: co-tenants only ever add); the median and every round are kept.
    """
    pids = {name: t.role_pids() for name, t in targets.items()}
    base_args = ["--pid", str(baseline_pid)]
    out: dict[str, dict] = {name: {} for name in targets}
    for case, method in CASES.items():
        # Warm-up: first-run costs (allocator, caches) out of the figures.
        load_run(baseline_url, targets[next(iter(targets))].token, method, 100, Namespace(processes=2), base_args, 1.5)
        for t in targets.values():
            load_run(t.url, t.token, method, 100, Namespace(processes=2), ["--pid-tree", str(t.supervisor_pid)], 1.5)
        runs: dict[str, list] = {"baseline": [], **{name: [] for name in targets}}
        for r in range(rounds):
            progress.note(f"cost {case}: round {r + 1}/{rounds} ({', '.join(['baseline', *targets])})")
            token = targets[next(iter(targets))].token
            runs["baseline"].append(one_run(baseline_url, token, method, base_args, step_s, {"baseline": baseline_pid}))
            for name, t in targets.items():
                pid_args = ["--pid-tree", str(t.supervisor_pid)]
                runs[name].append(one_run(t.url, t.token, method, pid_args, step_s, pids[name]))
        best_b = min(runs["baseline"], key=lambda x: x["server_cpu_us_per_req"] or 1e9)
        for name in targets:
            best_s = min(runs[name], key=lambda x: x["server_cpu_us_per_req"] or 1e9)
            out[name][case] = {
                "method": method,
                "connections": 100,
                "rps": best_s["throughput_rps"],
                "baseline_rps": best_b["throughput_rps"],
                "service_us": best_s["server_cpu_us_per_req"],
                "baseline_us": best_b["server_cpu_us_per_req"],
                "service_us_median": _median([x["server_cpu_us_per_req"] for x in runs[name]]),
                "baseline_us_median": _median([x["server_cpu_us_per_req"] for x in runs["baseline"]]),
                "ratio_us": round(best_s["server_cpu_us_per_req"] / best_b["server_cpu_us_per_req"], 2)
                if best_s["server_cpu_us_per_req"] and best_b["server_cpu_us_per_req"]
                else None,
                "user_us": best_s.get("user_us"),
                "system_us": best_s.get("system_us"),
                "baseline_user_us": best_b.get("user_us"),
                "baseline_system_us": best_b.get("system_us"),
                "per_process_us": best_s.get("per_process_us"),
                "p95_ms": best_s["p95_ms"],
                "errors": sum(x["errors"] for x in runs[name]),
                "rounds": {k: [x["server_cpu_us_per_req"] for x in runs[k]] for k in ("baseline", name)},
                "other_cpu_s": [x["other_cpu_s"] for x in runs[name]],
            }
    return out


async def _total_requests(target: Target, timeout: float = 30.0) -> int:
    """The gateway's request count; retried while the gateway is not accepting (a gateway slowed
    down by strace may miss its heartbeats and be restarted by the supervisor)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with Client(target.url, target.token) as c:
                return (await c.call("get_metrics"))["total_requests"]
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def profile(target: Target, step_s: float) -> tuple[dict | None, dict | None]:
    """py-spy parts and strace syscalls of the gateway during a status run."""
    gw = target.role_pids().get("gateway-0")
    if gw is None:
        return None, None
    parts = syscalls = None
    spy = shutil.which("py-spy") or str(Path(os.sys.executable).parent / "py-spy")
    tmp = Path(tempfile.mkdtemp(prefix="cs-cost-"))
    try:
        if Path(spy).exists():
            folded = tmp / "gw.txt"
            prof = subprocess.Popen(
                [
                    spy,
                    "record",
                    "-p",
                    str(gw),
                    "-d",
                    str(int(step_s)),
                    "-r",
                    "250",
                    "-f",
                    "raw",
                    "-o",
                    str(folded),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            load_run(target.url, target.token, "get_camera_status", 100, Namespace(processes=2), [], step_s + 1)
            prof.wait(60)
            parts = categorize(folded.read_text() if folded.exists() else "")
        if shutil.which("strace"):
            before = asyncio.run(_total_requests(target))
            trace = subprocess.Popen(
                ["strace", "-c", "-f", "-p", str(gw), "-o", str(tmp / "strace.txt")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)
            load_run(target.url, target.token, "get_camera_status", 100, Namespace(processes=2), [], 3)
            trace.send_signal(2)
            trace.wait(30)
            answered = asyncio.run(_total_requests(target)) - before
            syscalls = parse_strace((tmp / "strace.txt").read_text(), answered)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return parts, syscalls


def categorize(folded: str) -> dict:
    counts: Counter = Counter()
    for line in folded.splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        part = "other"
        for frame in reversed(frames):  # the innermost frame that belongs to a known part
            for name, needles in PARTS:
                if any(x in frame for x in needles):
                    part = name
                    break
            if part != "other":
                break
        counts[part] += int(n)
    total = sum(counts.values()) or 1
    return {k: round(100 * v / total, 1) for k, v in counts.most_common()}


def parse_strace(text: str, answered: int) -> dict:
    out = {}
    for line in text.splitlines():
        cols = line.split()
        if len(cols) >= 5 and re.match(r"^\d", cols[0]) and cols[-1] not in ("total",):
            calls = int(cols[3]) if cols[3].isdigit() else None
            if calls:
                out[cols[-1]] = round(calls / max(answered, 1), 3)
    return dict(sorted(out.items(), key=lambda kv: -kv[1])[:12]) | {"_requests": answered}


def _us(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return round((time.perf_counter() - t0) / n * 1e6, 2)


def json_costs(n: int = 20000) -> dict:
    """In-process µs per request of the gateway's JSON work, the standard library against orjson.

    A status read is parsed (``jsonrpc.parse_frame``: decode and checks) and
    answered from the replica's cached JSON (a ``Raw`` result: no encoding);
    a worker-hop reply (capabilities, a dict from msgpack) is encoded.
    """
    from camservice import jsonrpc

    text = '{"jsonrpc":"2.0","method":"get_camera_status","params":{"device":"camera0"},"id":"~12345"}'
    caps = {"device": "sim:0", "formats": ["YUYV", "MJPEG"], "resolutions": ["640x480", "1280x720"]}
    caps["frame_rates"] = {"640x480": [30, 15], "1280x720": [30, 15]}
    reply = {"jsonrpc": "2.0", "result": caps, "id": "~12345"}
    fast = jsonrpc.orjson
    jsonrpc.orjson = None  # the layer on the standard library alone
    try:
        out = {
            "stdlib_parse_frame_us": _us(lambda: jsonrpc.parse_frame(text), n),
            "stdlib_json_loads_us": _us(lambda: json.loads(text), n),
            "stdlib_encode_worker_reply_us": _us(lambda: jsonrpc.encode(reply), n),
        }
    finally:
        jsonrpc.orjson = fast
    try:
        import orjson
    except ImportError:
        return out | {"orjson": "not installed"}
    out["orjson_parse_frame_us"] = _us(lambda: jsonrpc.parse_frame(text), n)  # the layer's fast path
    out["orjson_loads_us"] = _us(lambda: orjson.loads(text), n)
    out["orjson_encode_worker_reply_us"] = _us(lambda: orjson.dumps(reply).decode(), n)
    out["orjson_saves_us_status"] = round(out["stdlib_json_loads_us"] - out["orjson_loads_us"], 2)
    out["orjson_saves_us_worker"] = round(
        out["orjson_saves_us_status"] + out["stdlib_encode_worker_reply_us"] - out["orjson_encode_worker_reply_us"], 2
    )
    return out


def default_loop() -> str:
    """The loop a service runs with the default ``gateway.event_loop`` on this machine."""
    from camservice.config import SCHEMA
    from camservice.eventloop import loop_factory

    choice = next(x.default for x in SCHEMA if x.key == "gateway.event_loop")
    if choice == "auto":
        return "uvloop" if loop_factory("auto") else "asyncio"
    return choice


def run(
    step_s: float,
    progress: Progress,
    quick: bool = False,
    cameras: int = 4,
    target: Target | None = None,
    rounds: int | None = None,
) -> dict:
    """The cost cases on ``target`` (a service started for them when None) and, alternating with it, on a
    service running the other event loop; then the gateway's profile and the JSON costs."""
    from camservice.eventloop import loop_factory

    rounds = rounds or (1 if quick else 2)
    own = target is None
    default = default_loop()
    other = "asyncio" if default == "uvloop" else "uvloop"
    port = common.free_port()
    baseline = common.start_baseline(port)
    baseline_url = f"ws://127.0.0.1:{port}/ws"
    out: dict = {"loadavg_start": [round(x, 2) for x in os.getloadavg()], "rounds": rounds}
    started: list[Target] = []
    try:
        target = target or Target.start(cameras)
        if own:
            started.append(target)
        targets = {default: target}
        if other == "asyncio" or loop_factory("auto"):
            try:
                targets[other] = Target.start(cameras, **{"gateway.event_loop": other})
                started.append(targets[other])
            except Exception as exc:  # noqa: BLE001  (the variant failing is a finding, not the end of the run)
                out["variant_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        by_variant = cases(targets, baseline.pid, baseline_url, step_s, rounds, progress)
        out["cases"] = by_variant[default]
        out["default_loop"] = default
        if other in by_variant:
            out[f"{other}_cases"] = by_variant[other]
        progress.note("cost: profiling the gateway (py-spy, strace)")
        gateway_pid = target.role_pids().get("gateway-0")
        try:
            parts, sys_calls = profile(target, step_s)
        except Exception as exc:  # noqa: BLE001  (the profile is extra: the figures above stand without it)
            parts = sys_calls = None
            out["profile_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        if target.role_pids().get("gateway-0") != gateway_pid:
            out["profile_note"] = "the gateway was restarted during the profile (its pid changed)"
        st = out["cases"]["status"]
        gw_us = (st.get("per_process_us") or {}).get("gateway-0")
        if parts and gw_us:
            out["breakdown"] = {k: {"share_percent": v, "us": round(v / 100 * gw_us, 1)} for k, v in parts.items()}
        out["syscalls"] = sys_calls
        out["json"] = json_costs()
        out["variants"] = {
            (f"{name} (default)" if name == default else name): {
                "status_us": figures["status"]["service_us"],
                "worker_us": figures["worker"]["service_us"],
                "status_us_median": figures["status"]["service_us_median"],
                "worker_us_median": figures["worker"]["service_us_median"],
                "status_rps": figures["status"]["rps"],
                "worker_rps": figures["worker"]["rps"],
            }
            for name, figures in by_variant.items()
        }
    finally:
        for t in started:
            t.close()
        baseline.terminate()
        baseline.wait(10)
    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    st, wk, j = out["cases"]["status"], out["cases"]["worker"], out["json"]
    jsonpath = "orjson fast path" if _orjson_on() else "standard library json"
    out["summary"] = (
        f"Status read: {st['service_us']} µs of server CPU per request over all service processes "
        f"(user {st['user_us']}, kernel {st['system_us']}), against {st['baseline_us']} µs for the bare websockets "
        f"server in the same run (ratio {st['ratio_us']}). Worker hop: {wk['service_us']} µs "
        f"(baseline {wk['baseline_us']}); the hop itself (ZeroMQ both ways, the worker's handling) costs "
        f"{round((wk['service_us'] or 0) - (st['service_us'] or 0), 1)} µs more than a status read. "
        f"Gateway loop {default}, JSON-RPC layer on the {jsonpath}. "
        f"JSON in the gateway (in-process): a status request's json.loads {j.get('stdlib_json_loads_us')} µs "
        f"(orjson {j.get('orjson_loads_us')}), a worker reply's encoding {j.get('stdlib_encode_worker_reply_us')} µs "
        f"(orjson {j.get('orjson_encode_worker_reply_us')})."
    )
    return out


def _orjson_on() -> bool:
    from camservice import jsonrpc

    return jsonrpc.orjson is not None


TARGETS = {"status": 30.0, "worker": 60.0}


def report_lines(co: dict) -> list[str]:
    """The figures to report, as ``python -m bench cost`` prints them."""
    lines = [
        f"cost per request, 100 connections, {co.get('rounds')} alternating rounds; load average "
        f"{co.get('loadavg_start')} -> {co.get('loadavg_end')} (1/5/15 min)"
    ]
    variants = {co.get("default_loop", "default"): co.get("cases", {})}
    for key, value in co.items():
        if key.endswith("_cases") and isinstance(value, dict):
            variants[key[: -len("_cases")]] = value
    for loop, figures in variants.items():
        for case, c in figures.items():
            target = TARGETS.get(case)
            mark = (
                "" if target is None or not c.get("service_us") else ("  OK" if c["service_us"] <= target else "  OVER")
            )
            lines.append(
                f"  {loop:<8} {case:<7} service {c.get('service_us')} µs (median {c.get('service_us_median')}, rounds "
                f"{(c.get('rounds') or {}).get(loop)}) vs bare websockets {c.get('baseline_us')} µs "
                f"(rounds {(c.get('rounds') or {}).get('baseline')}), ratio {c.get('ratio_us')}; "
                f"target <= {target} µs{mark}"
            )
    if co.get("variant_error"):
        lines.append(f"  variant failed: {co['variant_error']}")
    for key in ("profile_error", "profile_note"):
        if co.get(key):
            lines.append(f"  gateway profile: {co[key]}")
    return lines
