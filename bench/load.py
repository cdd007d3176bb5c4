"""Load generator for the camservice WebSocket JSON-RPC API.

Opens C connections spread over P client processes (one asyncio loop each),
keeps D requests in flight per connection (--pipeline) and measures the
latency of every request, then prints ONE JSON line:

    {"method", "connections", "pipeline", "processes", "requests", "errors",
     "error_codes", "duration_s", "throughput_rps", "p50_ms", "p95_ms",
     "p99_ms", "max_ms", "server_cpu_s", "server_cpu_us_per_req",
     "client_cpu_s", "client_cpu_us_per_req", "other_cpu_s"}

"requests" counts answered requests in the timed phase (error responses
included), "errors" counts JSON-RPC error responses plus connection failures
(connect, auth, closed mid-run, unanswered at the time limit). Server CPU is the
user+system time of --pid / --pid-tree processes over the timed phase only:
all connections are open and the warm-up is over when it starts.

--idle N opens N connections instead, holds them --hold seconds, checks each
still answers a `ping`, and reports how many made it and the server's RSS.

The client is made cheap because it shares the machine with the server:
requests are pre-formatted strings; responses are not JSON-decoded, the
request id is a string "~<n>" found by a substring search (error responses,
which are rare, are decoded to read their code); and by default (--client
fast) websockets only opens the connection, after which a few lines of
framing code in a plain asyncio.Protocol replace its per-message
coroutines, which cost about as much CPU as the baseline server itself.

Examples:
    python -m bench.load --url ws://127.0.0.1:8012/ws --method get_camera_status \\
        --params '{"device":"camera0"}' --connections 100 --requests 20000 --pid PID
    python -m bench.load --url ws://127.0.0.1:8002/ws --token "$TOKEN" \\
        --method get_camera_status --params '{"device":"camera0"}' \\
        --connections 100 --duration 10 --pid-tree SUPERVISOR_PID
    python -m bench.load --url ws://127.0.0.1:8012/ws --idle 2000 --hold 10 --pid-tree PID
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import multiprocessing
import os
import resource
import sys
import time
from array import array
from collections import Counter
from urllib.parse import urlparse

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import apply_mask  # the C speedup when available

from . import common
from .common import NS, die_with_parent, raise_nofile_limit

UNLIMITED = 1 << 62


def split(total: int, parts: int) -> list[int]:
    """Split total into `parts` near-equal integers (first ones get the rest)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def cpu_now() -> float:
    """This process's user+system CPU seconds."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def error_code(msg: bytes):
    """JSON-RPC error code of a response that mentions "error", else None."""
    try:
        obj = json.loads(msg)
    except ValueError:
        return "bad_json"
    if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
        return str(obj["error"].get("code"))
    return None


# ------------------------------------------------------------------ client side


def reply_id(msg: bytes) -> int | None:
    """Our request id in a reply: the n of "id":"~n" (json.dumps may add a space)."""
    i = msg.find(b'"id":"~')
    if i >= 0:
        i += 7
    else:
        i = msg.find(b'"id": "~')
        if i < 0:
            return None
        i += 8
    try:
        return int(msg[i : msg.index(b'"', i)])
    except ValueError:
        return None


async def open_connection(url: str, token: str | None, sem: asyncio.Semaphore):
    """Open one connection (and authenticate it); returns (ws, None) or (None, code)."""
    async with sem:  # bounded connect concurrency: don't overflow the listen backlog
        try:
            ws = await connect(url, compression=None, ping_interval=None, open_timeout=30, max_size=1 << 22)
        except Exception:
            return None, "connect"
        if token:
            try:
                await ws.send(
                    json.dumps(
                        {"jsonrpc": "2.0", "id": "auth", "method": "authenticate", "params": {"auth_token": token}}
                    )
                )
                while True:  # skip notifications that may arrive first
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if isinstance(reply, dict) and reply.get("id") == "auth":
                        break
                if "error" in reply:
                    await ws.close()
                    return None, f"auth:{reply['error'].get('code')}"
            except Exception:
                await ws.close()
                return None, "auth"
        return ws, None


async def open_all(cfg: dict) -> tuple[list, Counter]:
    sem = asyncio.Semaphore(cfg["connect_concurrency"])
    results = await asyncio.gather(*(open_connection(cfg["url"], cfg["token"], sem) for _ in range(cfg["n_conns"])))
    conns = [ws for ws, _ in results if ws is not None]
    return conns, Counter(code for _, code in results if code is not None)


async def wait_all(aws: list, timeout: float):
    """asyncio.wait() that also accepts an empty list: (done, not_done)."""
    if not aws:
        return set(), set()
    return await asyncio.wait([asyncio.ensure_future(a) for a in aws], timeout=timeout)


async def close_all(conns: list) -> None:
    # Polite close so the server sees normal closures; bounded in time.
    await wait_all([ws.close() for ws in conns], 10)


class Runner:
    """Request bookkeeping of one client process, shared by its connections.

    Requests are pre-formatted strings with the id last; replies are matched by
    finding the member "id":"~<n>" instead of decoding the JSON. Each
    connection has its own `pending` {id: send time} so that a stray match
    cannot mix up two connections' requests in flight. Only requests sent in
    the timed phase use the budget and are recorded.
    """

    def __init__(self, cfg: dict, t_start: int, t_end: int):
        params = "" if cfg["params"] is None else ',"params":' + cfg["params"]
        self.prefix = '{"jsonrpc":"2.0","method":%s%s,"id":"~' % (json.dumps(cfg["method"]), params)
        self.depth = cfg["pipeline"]
        self.budget = UNLIMITED if cfg["budget"] is None else cfg["budget"]
        self.t_start, self.t_end = t_start, t_end
        self.next_id = 0  # ids are unique in the process
        self.latencies = array("q")  # ns, timed phase only
        self.errors: Counter = Counter()
        self.last_ns = t_start

    def next_request(self, pending: dict) -> str | None:
        """The next request's text, or None when the budget or time is used up."""
        t0 = time.perf_counter_ns()
        if t0 >= self.t_start:  # warm-up requests don't use the budget
            if self.budget <= 0 or t0 >= self.t_end:
                return None
            self.budget -= 1
        rid = self.next_id
        self.next_id = rid + 1
        pending[rid] = t0
        return f'{self.prefix}{rid}"}}'

    def on_reply(self, pending: dict, msg: bytes) -> bool:
        """Record one incoming message; True if it answered a request in `pending`."""
        t1 = time.perf_counter_ns()
        rid = reply_id(msg)
        t0 = pending.pop(rid, None)
        if t0 is None:
            # A notification, or an error without our id (e.g. -32700).
            if b'"error"' in msg and (code := error_code(msg)) is not None:
                self.errors[code] += 1
            return False
        if t0 >= self.t_start:
            self.latencies.append(t1 - t0)
            self.last_ns = t1
            if b'"error"' in msg and (code := error_code(msg)) is not None:
                self.errors[code] += 1
        return True

    def unanswered(self, pendings) -> int:
        """Timed-phase requests still waiting for an answer."""
        return sum(1 for pending in pendings for t0 in pending.values() if t0 >= self.t_start)


async def drive_websockets(runner: Runner, ws, pending: dict) -> None:
    """--client websockets: keep `depth` requests in flight using the library's API."""
    inflight = 0
    try:
        while inflight < runner.depth and (req := runner.next_request(pending)) is not None:
            await ws.send(req)
            inflight += 1
        while inflight:
            if runner.on_reply(pending, await ws.recv(decode=False)):
                inflight -= 1
                if (req := runner.next_request(pending)) is not None:
                    await ws.send(req)
                    inflight += 1
    except ConnectionClosed:
        runner.errors["closed"] += 1


class FastConnection(asyncio.Protocol):
    """--client fast: minimal WebSocket framing on the transport of an open connection.

    websockets does the opening handshake (and authentication); then this
    protocol takes over the transport and sends and parses frames itself, in
    plain callbacks: no coroutine, future or queue per message. That roughly
    halves the client's CPU per request (see bench/README.md), CPU the server
    under test would otherwise not get on a 2-core machine. It handles what a
    server sends in practice: text/binary frames, fragments, ping, close.
    Server frames are unmasked (RFC 6455 5.1), ours are masked.
    """

    def __init__(self, runner: Runner, ws):
        self.runner = runner
        self.transport = ws.transport
        self.mask = os.urandom(4)
        self.buf = b""
        self.fragments: list[bytes] = []
        self.out: list[bytes] = []
        self.pending: dict[int, int] = {}
        self.inflight = 0
        self.closing = False
        self.done = asyncio.get_running_loop().create_future()

    def start(self) -> None:
        if self.transport.is_closing():  # the server hung up before the timed phase
            self.runner.errors["closed"] += 1
            self.finish()
            return
        self.transport.set_protocol(self)
        while self.inflight < self.runner.depth and (req := self.runner.next_request(self.pending)) is not None:
            self.queue(0x81, req.encode())
            self.inflight += 1
        self.flush()
        if not self.inflight:
            self.finish()

    def queue(self, first_byte: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            header = bytes((first_byte, 0x80 | n))
        elif n < 65536:
            header = bytes((first_byte, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            header = bytes((first_byte, 0x80 | 127)) + n.to_bytes(8, "big")
        self.out.append(header + self.mask + apply_mask(payload, self.mask))

    def flush(self) -> None:
        # One write (one syscall) per batch of replies read, not per request.
        if self.out:
            self.transport.write(b"".join(self.out))
            self.out.clear()

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos, n = 0, len(buf)
        while n - pos >= 2:
            length, header = buf[pos + 1] & 0x7F, 2
            if length == 126:
                if n - pos < 4:
                    break
                length, header = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, header = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            end = pos + header + length
            if end > n:
                break
            self.on_frame(buf[pos], buf[pos + header : end])
            pos = end
        self.buf = buf[pos:] if pos < n else b""
        self.flush()

    def on_frame(self, first_byte: int, payload: bytes) -> None:
        opcode, fin = first_byte & 0x0F, first_byte & 0x80
        if opcode in (0x1, 0x2, 0x0):  # text, binary, continuation
            self.fragments.append(payload)
            if fin:
                msg = self.fragments[0] if len(self.fragments) == 1 else b"".join(self.fragments)
                self.fragments.clear()
                self.on_message(msg)
        elif opcode == 0x9:  # ping: the server's keepalive wants a pong
            self.queue(0x8A, payload)
        elif opcode == 0x8:  # close
            self.transport.close()

    def on_message(self, msg: bytes) -> None:
        if not self.runner.on_reply(self.pending, msg):
            return
        self.inflight -= 1
        if (req := self.runner.next_request(self.pending)) is not None:
            self.queue(0x81, req.encode())
            self.inflight += 1
        elif not self.inflight:
            self.finish()

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            if not self.closing:
                self.runner.errors["closed"] += 1
            self.done.set_result(None)

    async def close(self) -> None:
        """Closing handshake: send close 1000, wait for the server's close or EOF."""
        if not self.transport.is_closing():
            self.closing = True
            self.done = asyncio.get_running_loop().create_future()
            self.queue(0x88, (1000).to_bytes(2, "big"))
            self.flush()
            try:
                await asyncio.wait_for(self.done, 5)
            except asyncio.TimeoutError:
                self.transport.abort()


async def pipe_recv(pipe):
    # Wait for the parent without blocking the loop: the library must keep
    # answering the server's keepalive pings meanwhile.
    return await asyncio.get_running_loop().run_in_executor(None, pipe.recv)


async def load_worker(pipe, cfg: dict) -> None:
    conns, connect_errors = await open_all(cfg)
    pipe.send(("ready", len(conns), dict(connect_errors)))
    _, t_start, t_end = await pipe_recv(pipe)
    runner = Runner(cfg, t_start, t_end)

    cpu = {}
    loop = asyncio.get_running_loop()
    loop.call_later(max(0.0, (t_start - time.perf_counter_ns()) / NS), lambda: cpu.setdefault("start", cpu_now()))
    if cfg["client"] == "fast":
        fast = [FastConnection(runner, ws) for ws in conns]
        for conn in fast:
            conn.start()
        waits = [conn.done for conn in fast]
        pendings = [conn.pending for conn in fast]
    else:
        pendings = [{} for _ in conns]
        waits = [asyncio.ensure_future(drive_websockets(runner, ws, pending)) for ws, pending in zip(conns, pendings)]
    # Hard time limit: a stalled server must not hang the run.
    end = t_end + 10 * NS if t_end < UNLIMITED else t_start + int(cfg["timeout"] * NS)
    _, not_done = await wait_all(waits, (end - time.perf_counter_ns()) / NS)
    cpu_used = max(0.0, cpu_now() - cpu.get("start", cpu_now()))
    if not_done:
        runner.errors["timeout"] += runner.unanswered(pendings)
    errors = {k: v for k, v in runner.errors.items() if v}

    pipe.send(
        ("end", {"last_ns": runner.last_ns, "errors": errors, "client_cpu_s": cpu_used}, runner.latencies.tobytes())
    )
    await pipe_recv(pipe)  # "close": the parent has sampled the server CPU
    if cfg["client"] == "fast":
        await wait_all([conn.close() for conn in fast], 10)
    else:
        for task in not_done:
            task.cancel()
        await close_all(conns)


async def idle_worker(pipe, cfg: dict) -> None:
    conns, connect_errors = await open_all(cfg)
    pipe.send(("ready", len(conns), dict(connect_errors)))
    await pipe_recv(pipe)  # "check" after the hold

    async def alive(ws) -> bool:
        try:
            await ws.send('{"jsonrpc":"2.0","method":"ping","id":"~0"}')
            while b'"~0"' not in await ws.recv(decode=False):
                pass  # skip notifications
            return True
        except Exception:
            return False

    tasks = [asyncio.ensure_future(asyncio.wait_for(alive(ws), 30)) for ws in conns]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    pipe.send(("checked", sum(1 for r in results if r is True)))
    await pipe_recv(pipe)  # "close"
    await close_all(conns)


def child_main(pipe, cfg: dict, inherited: list) -> None:
    # Forked children inherit the parent's ends of the pipes: close them, or
    # a child would never see EOF on its own pipe when the parent dies.
    for conn in inherited:
        conn.close()
    die_with_parent()
    if os.getppid() == 1:  # the parent died before prctl
        return
    try:
        asyncio.run((idle_worker if cfg["idle"] else load_worker)(pipe, cfg))
    except (EOFError, BrokenPipeError):
        pass  # the parent is gone
    except Exception as exc:  # report instead of leaving the parent waiting
        pipe.send(("fatal", repr(exc)))


# ------------------------------------------------------------------ parent side


class ClientPool:
    """The client processes and their pipes."""

    def __init__(self, cfg: dict, conns_per_proc: list[int], budgets: list):
        ctx = multiprocessing.get_context("fork")  # fast start, nothing to re-import
        self.pipes, self.procs = [], []
        for n, budget in zip(conns_per_proc, budgets):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=child_main,
                daemon=True,
                args=(child_end, dict(cfg, n_conns=n, budget=budget), self.pipes + [parent_end]),
            )
            proc.start()
            child_end.close()  # so the parent sees EOF if the child dies
            self.pipes.append(parent_end)
            self.procs.append(proc)

    def recv_all(self, timeout: float) -> list:
        """One message from each child; raises if one dies or is silent too long."""
        out = []
        deadline = time.monotonic() + timeout
        for pipe, proc in zip(self.pipes, self.procs):
            while not pipe.poll(0.2):
                if not proc.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"client process {proc.pid} died or timed out")
            msg = pipe.recv()
            if msg[0] == "fatal":
                raise RuntimeError(f"client process {proc.pid} failed: {msg[1]}")
            out.append(msg)
        return out

    def send_all(self, msg) -> None:
        for pipe in self.pipes:
            pipe.send(msg)

    def stop(self, wait: float = 15) -> None:
        """Join the children (they exit after "close"); terminate stragglers."""
        for proc in self.procs:
            proc.join(wait)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


def server_cpu(args) -> dict:
    snap = common.cpu_snapshot(args.pid or [])
    snap.update(common.cpu_snapshot(args.pid_tree or [], tree=True))
    return snap


def server_rss(args) -> int:
    pids = common.processes(args.pid or []) + common.processes(args.pid_tree or [], tree=True)
    return common.rss_bytes({p.pid for p in pids})


def connect_timeout(n: int) -> float:
    return 60 + n / 50  # generous: 10k handshakes on 2 shared cores take a while


def run_load(args, cfg: dict, per_proc: list[int]) -> dict:
    total = args.requests
    budgets = [None] * len(per_proc) if total is None else [total * n // args.connections for n in per_proc]
    if total is not None:  # rounding leftovers go to the first process
        budgets[0] += total - sum(budgets)
    pool = ClientPool(cfg, per_proc, budgets)
    errors: Counter = Counter()
    try:
        for _, _, codes in pool.recv_all(connect_timeout(args.connections)):
            errors.update(codes)
        # All connections are open. Start the clock a little later so every
        # child has received "go"; the warm-up runs up to t_start.
        t_start = time.perf_counter_ns() + int((args.warmup + 0.05) * NS)
        t_end = t_start + int(args.duration * NS) if args.duration else UNLIMITED
        pool.send_all(("go", t_start, t_end))
        time.sleep(max(0.0, (t_start - time.perf_counter_ns()) / NS))
        cpu_before, host_before = server_cpu(args), common.host_busy()
        limit = (args.duration + 30 if args.duration else args.timeout + 30) + args.warmup
        ends = pool.recv_all(limit)
        cpu_after, host_after = server_cpu(args), common.host_busy()
        pool.send_all(("close",))
    except BaseException:
        pool.stop(wait=0)
        raise
    pool.stop()

    latencies = array("q")
    last_ns, client_cpu = t_start, 0.0
    for _, stats, lat_bytes in ends:
        latencies.frombytes(lat_bytes)
        errors.update(stats["errors"])
        last_ns = max(last_ns, stats["last_ns"])
        client_cpu += stats["client_cpu_s"]
    n = len(latencies)
    duration = (last_ns - t_start) / NS
    pct = common.percentiles(latencies, (50, 95, 99, 100))
    ms = lambda v: None if v is None else round(v / 1e6, 3)
    has_pids = bool(args.pid or args.pid_tree)
    srv_cpu = common.cpu_delta(cpu_before, cpu_after) if has_pids else None
    return {
        "method": args.method,
        "connections": args.connections,
        "pipeline": args.pipeline,
        "processes": len(per_proc),
        "requests": n,
        "errors": sum(errors.values()),
        "error_codes": dict(errors),
        "duration_s": round(duration, 3),
        "throughput_rps": round(n / duration, 1) if duration > 0 else None,
        "p50_ms": ms(pct[50]),
        "p95_ms": ms(pct[95]),
        "p99_ms": ms(pct[99]),
        "max_ms": ms(pct[100]),
        "server_cpu_s": None if srv_cpu is None else round(srv_cpu, 3),
        "server_cpu_us_per_req": round(srv_cpu / n * 1e6, 1) if srv_cpu is not None and n else None,
        "client_cpu_s": round(client_cpu, 3),
        "client_cpu_us_per_req": round(client_cpu / n * 1e6, 1) if n else None,
        # CPU used by everything else on the host meanwhile (other users'
        # jobs): when large, the figures above are disturbed.
        "other_cpu_s": round(host_after - host_before - client_cpu - (srv_cpu or 0.0), 2),
    }


def run_idle(args, cfg: dict, per_proc: list[int]) -> dict:
    rss_before = server_rss(args)
    t0 = time.monotonic()
    pool = ClientPool(cfg, per_proc, [None] * len(per_proc))
    errors: Counter = Counter()
    try:
        opened = 0
        for _, n, codes in pool.recv_all(connect_timeout(args.idle)):
            opened += n
            errors.update(codes)
        connect_s = time.monotonic() - t0
        time.sleep(args.hold)
        rss = server_rss(args)  # after the hold: buffers settled, keepalives ran
        pool.send_all(("check",))
        alive = sum(n for _, n in pool.recv_all(120))
        pool.send_all(("close",))
    except BaseException:
        pool.stop(wait=0)
        raise
    pool.stop()
    if opened > alive:
        errors["dead"] += opened - alive
    mb = lambda b: round(b / 2**20, 1)
    return {
        "mode": "idle",
        "connections": args.idle,
        "processes": len(per_proc),
        "opened": opened,
        "alive": alive,
        "errors": sum(errors.values()),
        "error_codes": dict(errors),
        "connect_s": round(connect_s, 2),
        "hold_s": args.hold,
        "server_rss_before_mb": mb(rss_before),
        "server_rss_mb": mb(rss),
        "server_rss_bytes": rss,
        "server_rss_per_conn_kb": round((rss - rss_before) / 1024 / max(opened, 1), 1),
    }


def check_loopback(url: str) -> None:
    """Refuse non-loopback targets: this tool floods whatever it is pointed at."""
    host = urlparse(url).hostname or ""
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = host == "localhost"
    if not ok:
        raise SystemExit(f"refusing non-loopback target {host!r}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("Examples:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--url", default="ws://127.0.0.1:8002/ws", help="WebSocket URL (loopback only)")
    ap.add_argument("--method", default="ping", help="JSON-RPC method (default ping)")
    ap.add_argument("--params", default=None, help='JSON params, e.g. \'{"device":"camera0"}\'')
    ap.add_argument("--connections", "-c", type=int, default=10, help="connections (default 10)")
    ap.add_argument(
        "--requests",
        "-n",
        type=int,
        default=None,
        help="timed requests in total (default 20000, or no limit with --duration)",
    )
    ap.add_argument(
        "--duration", "-d", type=float, default=None, help="stop sending after this many seconds of the timed phase"
    )
    ap.add_argument("--pipeline", type=int, default=1, help="requests in flight per connection")
    ap.add_argument("--processes", "-p", type=int, default=2, help="client processes (default 2)")
    ap.add_argument("--token", default=None, help="authenticate each connection with this JWT/API key")
    ap.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of unmeasured load before the timed phase (default 1)"
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="hard limit of a count-bounded timed phase in seconds (default 120)",
    )
    ap.add_argument("--pid", type=int, action="append", help="server pid for CPU/RSS (repeatable)")
    ap.add_argument(
        "--pid-tree",
        type=int,
        action="append",
        help="server pid whose whole process tree is accounted (e.g. the supervisor)",
    )
    ap.add_argument(
        "--idle",
        type=int,
        default=None,
        metavar="N",
        help="idle mode: open N connections, hold them, report success and server RSS",
    )
    ap.add_argument("--hold", type=float, default=10.0, help="idle mode: seconds to hold (default 10)")
    ap.add_argument(
        "--client",
        choices=("fast", "websockets"),
        default="fast",
        help="fast: own framing after the websockets handshake (cheap, default); "
        "websockets: the library's send()/recv() for every message",
    )
    ap.add_argument(
        "--connect-concurrency", type=int, default=64, help="handshakes in progress per client process (default 64)"
    )
    args = ap.parse_args(argv)
    if args.requests is None and args.duration is None:
        args.requests = 20000
    if args.params is not None:
        args.params = json.dumps(json.loads(args.params), separators=(",", ":"))
    check_loopback(args.url)
    for pid in (args.pid or []) + (args.pid_tree or []):
        if not common.psutil.pid_exists(pid):
            ap.error(f"no process with pid {pid}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    raise_nofile_limit()  # inherited by the forked client processes
    n_conns = args.idle if args.idle is not None else args.connections
    procs = max(1, min(args.processes, n_conns))
    per_proc = split(n_conns, procs)
    cfg = {
        "url": args.url,
        "method": args.method,
        "params": args.params,
        "token": args.token,
        "pipeline": args.pipeline,
        "timeout": args.timeout,
        "idle": args.idle is not None,
        "connect_concurrency": args.connect_concurrency,
        "client": args.client,
    }
    result = run_idle(args, cfg, per_proc) if cfg["idle"] else run_load(args, cfg, per_proc)
    common.print_json(result)
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
