"""Hot-plug notification latency to many connected clients, and camera start-up time.

Default mode: starts the service (``camservice start``, own state folder and
free ports, rate limits raised), opens C WebSocket connections (default 500)
spread over P client processes (default 2), each authenticated as a viewer
and subscribed to every client topic (the default set). Then K times
(default 20): plugs a simulated camera with
``camservice.simnodes.plug(state_dir, index=...)`` (no CLI start-up
in the figure) and measures, for every client, the time from just before
that call (the node file appears at its end, ~0.1 ms later) to the arrival
of the ``camera_status_update`` CONNECTED for that device; then unplugs it
and measures the same for DISCONNECTED. The discovery worker learns of node
files by inotify (it polls, every ``cameras.poll_interval``, only where
inotify is unavailable); a random pause (0 to 100 ms) before each change
keeps the changes from falling into step with any periodic work. Prints
ONE JSON line:

    {"bench": "hotplug", "clients", "events", "pairs", "missed",
     "p50_ms", "p95_ms", "p99_ms", "max_ms", "connected": {...},
     "disconnected": {...}, "first_client": {...}, "last_client": {...},
     "server_cpu_s", "client_cpu_s", "other_cpu_s", ...}

``pairs`` = clients x events; ``missed`` counts (client, event) pairs whose
notification did not arrive within --event-timeout (must be 0).
``first_client``/``last_client`` are percentiles over events of the fastest
and slowest client: their difference is the fan-out cost. Times are
CLOCK_MONOTONIC, which all processes of the host share.

Clients are cheap: websockets opens and authenticates each connection, then
a plain asyncio.Protocol (bench.load's FastConnection) reads frames,
stamps a message with the clock and checks it with two substring searches;
the matched messages are JSON-decoded and verified after each event.

``--startup N`` instead starts a service with ``--simulate N`` (--repeat
times) and reports, per start: seconds from invoking ``camservice start`` to
the first ``get_camera_list`` answering N connected cameras (a client polls
from the moment of invocation), seconds until ``camservice start`` returned,
and the discovery worker's own start-up time from its ``discovery_started``
log line (``ms``). One JSON line per start, then a summary line.

Examples:
    python -m bench.hotplug                       # 500 clients, 20 plug/unplug cycles
    python -m bench.hotplug --clients 100 --cycles 5
    python -m bench.hotplug --startup 16 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from websockets.asyncio.client import connect

from camservice import simnodes as simulator
from tests.harness import Service

from . import common, load  # load: FastConnection, split
from .common import FAST_LIMITS, on_sigterm
from .common import latency_summary as summary
from .target import mint_token, stop_service

TOPICS = ["camera_status_update", "recording_status_update", "storage_status_update"]


# ------------------------------------------------------------------ client side


class Expectation:
    """What the connections of one client process wait for, shared by them."""

    def __init__(self):
        self.errors: Counter = Counter()  # FastConnection counts "closed" here
        self.depth = 0  # FastConnection sends no requests
        self.key = None
        self.needles: tuple[bytes, ...] = ()
        self.remaining = 0
        self.on_all = None

    def next_request(self, pending):  # FastConnection interface: never a request
        return None


class Listener(load.FastConnection):
    """Stamps the first message of each connection that matches the expectation."""

    def __init__(self, expect: Expectation, ws):
        super().__init__(expect, ws)
        self.expect = expect
        self.hit: tuple[int, bytes] | None = None

    def start(self) -> None:
        if self.transport.is_closing():
            self.expect.errors["closed"] += 1
            return
        self.transport.set_protocol(self)

    def on_message(self, msg: bytes) -> None:
        t = time.monotonic_ns()
        exp = self.expect
        if exp.key is None or self.hit is not None:
            return
        for needle in exp.needles:
            if needle not in msg:
                return
        self.hit = (t, msg)
        exp.remaining -= 1
        if exp.remaining == 0 and exp.on_all is not None:
            exp.on_all()


async def open_listener(url: str, token: str, topics: list[str] | None, sem: asyncio.Semaphore):
    async with sem:
        ws = await connect(url, compression=None, ping_interval=None, open_timeout=60, max_size=1 << 22)
        calls = [("a", "authenticate", {"auth_token": token})]
        if topics:
            calls.append(("s", "subscribe_events", {"topics": topics}))
        for rid, method, params in calls:
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}))
            while True:  # skip notifications that may arrive first
                reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if isinstance(reply, dict) and reply.get("id") == rid:
                    break
            if "error" in reply:
                raise RuntimeError(f"{method} failed: {reply['error']}")
        return ws


async def client(pipe, cfg: dict) -> None:
    sem = asyncio.Semaphore(64)
    conns = await asyncio.gather(
        *(open_listener(cfg["url"], cfg["token"], cfg["topics"], sem) for _ in range(cfg["n"]))
    )
    expect = Expectation()
    listeners = [Listener(expect, ws) for ws in conns]
    for item in listeners:
        item.start()
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    expect.on_all = lambda: pipe.send(("all", expect.key))

    def on_pipe() -> None:
        try:
            msg = pipe.recv()
        except EOFError:
            msg = ("close",)
        if msg[0] == "arm":
            _, expect.key, device, status = msg
            # '"sim:4"' and '"CONNECTED"' (the quote keeps DISCONNECTED apart).
            expect.needles = (b"camera_status_update", json.dumps(device).encode(), json.dumps(status).encode())
            expect.remaining = len(listeners)
            for item in listeners:
                item.hit = None
            pipe.send(("armed", expect.key))
        elif msg[0] == "collect":
            hits = [item.hit for item in listeners]
            expect.key = None
            ok = []
            for hit in hits:  # verify the substring matches properly, off the clock
                if hit is None:
                    ok.append(None)
                    continue
                body = json.loads(hit[1])
                params = body.get("params", {})
                good = (
                    body.get("method") == "camera_status_update"
                    and "id" not in body
                    and params.get("device") == msg[2]
                    and params.get("status") == msg[3]
                )
                ok.append(hit[0] if good else None)
            pipe.send(("times", msg[1], ok, dict(expect.errors)))
        elif msg[0] == "close" and not finished.done():
            finished.set_result(None)

    loop.add_reader(pipe.fileno(), on_pipe)
    pipe.send(("ready", len(listeners)))
    await finished
    loop.remove_reader(pipe.fileno())
    await load.wait_all([item.close() for item in listeners], 10)


def client_main(pipe, cfg: dict, inherited: list) -> None:
    # Forked children inherit the parent's ends of the pipes: close them, or
    # a child would never see EOF on its own pipe when the parent dies.
    for conn in inherited:
        conn.close()
    common.run_child(pipe, lambda: client(pipe, cfg))


# ------------------------------------------------------------------ parent side


class Clients:
    def __init__(self, cfg: dict, per_proc: list[int]):
        ctx = multiprocessing.get_context("fork")
        self.pipes, self.procs = [], []
        for n in per_proc:
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=client_main, daemon=True, args=(child_end, dict(cfg, n=n), self.pipes + [parent_end])
            )
            proc.start()
            child_end.close()
            self.pipes.append(parent_end)
            self.procs.append(proc)

    def expect(self, kind: str, key, timeout: float) -> list:
        """One message of `kind` for `key` from every child (others are dropped)."""
        out: dict[int, tuple] = {}
        deadline = time.monotonic() + timeout
        while len(out) < len(self.pipes):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for pipe in multiprocessing.connection.wait(
                [p for i, p in enumerate(self.pipes) if i not in out], min(left, 0.5)
            ):
                i = self.pipes.index(pipe)
                try:
                    msg = pipe.recv()
                except EOFError:
                    raise RuntimeError(f"client process {self.procs[i].pid} died") from None
                if msg[0] == "fatal":
                    raise RuntimeError(f"client process {self.procs[i].pid} failed: {msg[1]}")
                if msg[0] == kind and (key is None or msg[1] == key):
                    out[i] = msg
            for i, proc in enumerate(self.procs):
                if i not in out and not proc.is_alive():
                    raise RuntimeError(f"client process {proc.pid} died")
        return [out.get(i) for i in range(len(self.pipes))]

    def send(self, msg) -> None:
        for pipe in self.pipes:
            pipe.send(msg)

    def stop(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("close",))
            except OSError:
                pass
        for proc in self.procs:
            proc.join(15)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


def run_hotplug(args) -> dict:
    common.raise_nofile_limit()  # inherited by the client processes
    service = Service(simulate=args.simulate, **FAST_LIMITS)
    clients = None
    try:
        service.start()
        token = mint_token(service, "viewer")
        supervisor = service.supervisor_pid()
        state_dir = service.state_dir
        topics = None if args.topics == "none" else TOPICS
        cfg = {"url": service.url, "token": token, "topics": topics}
        per_proc = load.split(args.clients, max(1, min(args.processes, args.clients)))
        t_open = time.monotonic()
        clients = Clients(cfg, per_proc)
        ready = clients.expect("ready", None, 60 + args.clients / 20)
        if None in ready:
            raise RuntimeError("client processes did not open their connections in time")
        opened = sum(msg[1] for msg in ready)
        open_s = time.monotonic() - t_open
        time.sleep(1.0)  # let the handshake burst settle
        poll = 0.05  # the random pause's scale (cameras.poll_interval's default, where polling is used)
        index = args.simulate  # sim:0..simulate-1 exist: plug the next index every time
        device = f"sim:{index}"
        lat = {"CONNECTED": [], "DISCONNECTED": []}
        first, last = [], []
        missed = 0
        client_pids = [p.pid for p in clients.procs]
        cpu0, cli0, host0 = (
            common.cpu_snapshot([supervisor], tree=True),
            common.cpu_snapshot(client_pids),
            common.host_busy(),
        )
        t_phase = time.monotonic()
        key = 0
        for _cycle in range(args.cycles):
            for status in ("CONNECTED", "DISCONNECTED"):
                key += 1
                clients.send(("arm", key, device, status))
                if None in clients.expect("armed", key, 10):
                    raise RuntimeError("client processes did not arm in time")
                time.sleep(args.gap + random.uniform(0, 2 * poll))
                t0 = time.monotonic_ns()
                if status == "CONNECTED":
                    simulator.plug(state_dir, index=index)
                else:
                    simulator.unplug(state_dir, index)
                clients.expect("all", key, args.event_timeout)
                clients.send(("collect", key, device, status))
                answers = clients.expect("times", key, 30)
                times = [t for msg in answers if msg for t in msg[2]]
                got = [t - t0 for t in times if t is not None]
                missed += args.clients - len(got)
                lat[status].extend(got)
                if got:
                    first.append(min(got))
                    last.append(max(got))
        phase_s = time.monotonic() - t_phase
        cpu1, cli1, host1 = (
            common.cpu_snapshot([supervisor], tree=True),
            common.cpu_snapshot(client_pids),
            common.host_busy(),
        )
        errors: Counter = Counter()
        for msg in answers:
            if msg:
                errors.update(msg[3])
        srv = common.cpu_delta(cpu0, cpu1)
        cli = common.cpu_delta(cli0, cli1)
        everything = lat["CONNECTED"] + lat["DISCONNECTED"]
        result = {
            "bench": "hotplug",
            "clients": args.clients,
            "opened": opened,
            "processes": len(per_proc),
            "topics": topics,
            "events": key,
            "pairs": key * args.clients,
            "received": len(everything),
            "missed": missed,
            "connection_errors": dict(errors),
        }
        result.update({k: v for k, v in summary(everything).items() if k != "n"})
        result.update(
            {
                "connected": summary(lat["CONNECTED"]),
                "disconnected": summary(lat["DISCONNECTED"]),
                "first_client": summary(first),
                "last_client": summary(last),
                "poll_interval_s": poll,
                "open_s": round(open_s, 2),
                "phase_s": round(phase_s, 2),
                "server_cpu_s": round(srv, 3),
                "client_cpu_s": round(cli, 3),
                "other_cpu_s": round(host1 - host0 - srv - cli, 2),
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }
        )
        return result
    finally:
        if clients is not None:
            clients.stop()
        stop_service(service)


# ------------------------------------------------------------------ start-up mode


async def poll_list(url: str, token: str, want: int, deadline: float) -> float | None:
    """monotonic time of the first get_camera_list answering `want` connected cameras."""
    while time.monotonic() < deadline:
        try:
            async with connect(url, open_timeout=2, ping_interval=None) as ws:
                await ws.send(
                    json.dumps({"jsonrpc": "2.0", "id": 1, "method": "authenticate", "params": {"auth_token": token}})
                )
                while json.loads(await ws.recv()).get("id") != 1:
                    pass
                while time.monotonic() < deadline:
                    await ws.send('{"jsonrpc":"2.0","id":2,"method":"get_camera_list"}')
                    while True:
                        reply = json.loads(await ws.recv())
                        if reply.get("id") == 2:
                            break
                    result = reply.get("result") or {}
                    if result.get("total") == want and result.get("connected") == want:
                        return time.monotonic()
                    await asyncio.sleep(0.005)
        except (OSError, asyncio.TimeoutError, Exception):
            await asyncio.sleep(0.01)  # not listening yet
    return None


def discovery_started_ms(state_dir: Path) -> float | None:
    try:
        for line in (state_dir / "logs" / "discovery-0.log").read_text().splitlines():
            if '"discovery_started"' in line:
                return json.loads(line).get("ms")
    except (OSError, ValueError):
        pass
    return None


def run_startup(args, emit: bool = True) -> list[dict]:
    rows = []
    for attempt in range(args.repeat):
        service = Service(simulate=args.startup, **FAST_LIMITS)
        try:
            token = mint_token(service, "viewer")  # signs with the configured secret; no service needed
            cmd = [sys.executable, "-m", "camservice.cli", "start"]
            t0 = time.monotonic()
            proc = subprocess.Popen(
                cmd, env=service.env, cwd=str(common.REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            t_list = asyncio.run(poll_list(service.url, token, args.startup, t0 + 60))
            proc.wait(60)
            t_cli = time.monotonic()  # upper bound: we looked after the list answered
            rows.append(
                {
                    "bench": "hotplug.startup",
                    "attempt": attempt + 1,
                    "cameras": args.startup,
                    "start_to_list_s": None if t_list is None else round(t_list - t0, 3),
                    "start_cli_returned_s": round(t_cli - t0, 3),
                    "start_exit": proc.returncode,
                    "discovery_started_ms": discovery_started_ms(service.state_dir),
                }
            )
            if emit:
                common.print_json(rows[-1])
        finally:
            stop_service(service)
    lists = sorted(r["start_to_list_s"] for r in rows if r["start_to_list_s"] is not None)
    disc = sorted(r["discovery_started_ms"] for r in rows if r["discovery_started_ms"] is not None)
    if not emit:
        return rows
    common.print_json(
        {
            "bench": "hotplug.startup.summary",
            "cameras": args.startup,
            "starts": len(rows),
            "start_to_list_s_median": lists[len(lists) // 2] if lists else None,
            "start_to_list_s_max": lists[-1] if lists else None,
            "discovery_started_ms_median": disc[len(disc) // 2] if disc else None,
        }
    )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Examples:" + __doc__.split("Examples:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--clients", "-c", type=int, default=500, help="connected clients (default 500)")
    ap.add_argument("--processes", "-p", type=int, default=2, help="client processes (default 2)")
    ap.add_argument("--cycles", "-k", type=int, default=20, help="plug+unplug cycles (default 20)")
    ap.add_argument("--simulate", type=int, default=4, help="cameras at start (default 4)")
    ap.add_argument(
        "--topics",
        choices=("all", "none"),
        default="all",
        help="all: subscribe_events with every client topic (default); none: no call",
    )
    ap.add_argument(
        "--gap", type=float, default=0.1, help="seconds of quiet before each change, plus 0-100 ms random (default 0.1)"
    )
    ap.add_argument(
        "--event-timeout", type=float, default=5.0, help="seconds to wait for every client to see an event (default 5)"
    )
    ap.add_argument(
        "--startup",
        type=int,
        metavar="N",
        default=None,
        help="start-up mode: time for a service started with --simulate N to list N cameras",
    )
    ap.add_argument("--repeat", type=int, default=3, help="start-up mode: starts (default 3)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        if args.startup is not None:
            rows = run_startup(args)
            return 0 if all(r["start_to_list_s"] is not None for r in rows) else 1
        result = run_hotplug(args)
        common.print_json(result)
        return 0 if result["missed"] == 0 else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
