"""The suite's load: many WebSocket clients calling a weighted mix of methods.

Client processes (forked, one asyncio loop each, dying with the parent) hold
connections that speak through :class:`bench.load.FastConnection`'s framing
(the cheapest client we have: pre-formatted requests, replies matched by a
substring search of their id). The parent drives them in *phases*:

* ``closed``: every connection keeps ``depth`` requests in flight (flat out:
  the throughput a number of clients gets);
* ``paced``: the process sends ``rate`` requests per second in all, spread
  round-robin over its connections (an open loop: the offered rate does not
  drop when the server slows down; a request that finds every connection
  already holding ``depth`` in flight is *shed* and counted).

Every second each child sends a window: latencies (ns) with the method index
of each, errors by method and code, shed and hung counts. A request
unanswered after ``hang_s`` is *hung* (counted once, then forgotten); a
connection lost mid-run counts its requests in flight as ``closed`` errors
and is reopened (the gateway may be killed on purpose by the fault injector).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing
import random
import threading
import time
from array import array
from collections import Counter

from . import common
from .load import FastConnection, error_code, open_connection, reply_id, split

TICK_S = 0.005


class MixRunner:
    """Request bookkeeping of one client process (FastConnection's runner interface)."""

    def __init__(self, mix: list[tuple[str, dict | None, float]], hang_s: float):
        self.names = [name for name, _, _ in mix]
        self.prefixes = [
            '{"jsonrpc":"2.0","method":%s%s,"id":"~'
            % (json.dumps(name), "" if params is None else ',"params":' + json.dumps(params, separators=(",", ":")))
            for name, params, _ in mix
        ]
        picks = random.Random(7).choices(range(len(mix)), weights=[w for _, _, w in mix], k=4096)
        self.picks = itertools.cycle(picks)
        self.hang_ns = int(hang_s * common.NS)
        self.depth = 1
        self.closed_loop = False
        self.next_id = 0
        self.reset_window()

    def reset_window(self) -> None:
        self.lat = array("q")
        self.midx = array("b")
        self.errors: Counter = Counter()
        self.shed = 0
        self.hung = 0

    # FastConnection calls these two
    def next_request(self, pending: dict) -> str | None:
        if not self.closed_loop:
            return None
        return self.make(pending)

    def make(self, pending: dict) -> str:
        m = next(self.picks)
        rid = self.next_id
        self.next_id = rid + 1
        pending[rid] = (time.perf_counter_ns(), m)
        return f'{self.prefixes[m]}{rid}"}}'

    def on_reply(self, pending: dict, msg: bytes) -> bool:
        t1 = time.perf_counter_ns()
        entry = pending.pop(reply_id(msg), None)
        if entry is None:
            return False  # a notification
        t0, m = entry
        self.lat.append(t1 - t0)
        self.midx.append(m)
        if b'"error"' in msg and (code := error_code(msg)) is not None:
            self.errors[f"{self.names[m]}:{code}"] += 1
        return True


class MixConnection(FastConnection):
    """A FastConnection that stays up between phases and is fed by a pacer."""

    def start(self) -> None:
        self.transport.set_protocol(self)
        self.top_up()

    def top_up(self) -> None:
        while self.inflight < self.runner.depth and (req := self.runner.next_request(self.pending)) is not None:
            self.queue(0x81, req.encode())
            self.inflight += 1
        self.flush()

    def send_one(self) -> None:
        self.queue(0x81, self.runner.make(self.pending).encode())
        self.inflight += 1

    def on_message(self, msg: bytes) -> None:
        if self.runner.on_reply(self.pending, msg):
            self.inflight -= 1
            if self.runner.closed_loop and (req := self.runner.next_request(self.pending)) is not None:
                self.queue(0x81, req.encode())
                self.inflight += 1

    def connection_lost(self, exc) -> None:
        if not self.closing:
            for _, m in self.pending.values():
                self.runner.errors[f"{self.runner.names[m]}:closed"] += 1
            self.pending.clear()
            self.inflight = 0
        super().connection_lost(exc)

    def reap(self, now: int) -> None:
        """Forget requests older than hang_s: each counts once as hung."""
        old = [rid for rid, (t0, _) in self.pending.items() if now - t0 > self.runner.hang_ns]
        for rid in old:
            del self.pending[rid]
        self.inflight -= len(old)
        self.runner.hung += len(old)


async def _child(pipe, cfg: dict) -> None:
    loop = asyncio.get_running_loop()
    runner = MixRunner(cfg["mix"], cfg["hang_s"])
    conns: list[MixConnection | None] = []
    sem = asyncio.Semaphore(64)
    state = {"rate": 0.0, "sent": 0, "t0": 0, "stop": False, "phase": "idle", "rr": 0, "live": []}

    async def keep(slot: int) -> None:
        """Open slot's connection, and reopen it whenever it is lost."""
        while not state["stop"]:
            ws, code = await open_connection(cfg["url"], cfg["token"], sem)
            if ws is None:
                runner.errors[f"connect:{code}"] += 1
                await asyncio.sleep(0.5)
                continue
            conn = MixConnection(runner, ws)
            conns[slot] = conn
            conn.start()
            await conn.done
            conns[slot] = None
            if not state["stop"]:
                await asyncio.sleep(0.2)

    tasks: list[asyncio.Task] = []

    async def grow(n: int) -> None:
        while len(conns) < n:
            conns.append(None)
            tasks.append(asyncio.ensure_future(keep(len(conns) - 1)))
        deadline = time.monotonic() + 60 + n / 50
        while sum(c is not None for c in conns) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def pace() -> None:
        if state["stop"]:
            return
        loop.call_later(TICK_S, pace)
        if runner.closed_loop or state["rate"] <= 0:
            return
        due = int(state["rate"] * (time.perf_counter_ns() - state["t0"]) / common.NS) - state["sent"]
        live = state["live"]  # refreshed every window: a scan of 10k slots per tick would cost the client
        if not live or due <= 0:
            return
        touched = set()
        for _ in range(due):
            for _try in range(len(live)):
                state["rr"] = (state["rr"] + 1) % len(live)
                conn = live[state["rr"]]
                if conn.inflight < runner.depth:
                    conn.send_one()
                    touched.add(conn)
                    break
            else:
                runner.shed += 1
            state["sent"] += 1
        for conn in touched:
            conn.flush()

    def window() -> None:
        if state["stop"]:
            return
        loop.call_later(1.0, window)
        now = time.perf_counter_ns()
        state["live"] = [c for c in conns if c is not None and not c.transport.is_closing()]
        for conn in conns:
            if conn is not None:
                conn.reap(now)
        pipe.send(
            (
                "win",
                state["phase"],
                time.time(),
                runner.lat.tobytes(),
                runner.midx.tobytes(),
                dict(runner.errors),
                runner.shed,
                runner.hung,
                sum(c is not None for c in conns),
            )
        )
        runner.reset_window()

    def on_pipe() -> None:
        try:
            msg = pipe.recv()
        except EOFError:
            msg = ("stop",)
        if msg[0] == "phase":
            _, state["phase"], mode, rate, runner.depth, n = msg
            asyncio.ensure_future(start_phase(mode, rate, n))
        elif msg[0] == "stop":
            state["stop"] = True
            done.set_result(None) if not done.done() else None

    async def start_phase(mode: str, rate: float, n: int) -> None:
        runner.closed_loop = False
        state["rate"] = 0.0
        await grow(n)
        state["live"] = [c for c in conns if c is not None]
        state["t0"], state["sent"] = time.perf_counter_ns(), 0
        if mode == "closed":
            runner.closed_loop = True
            for conn in conns:
                if conn is not None:
                    conn.top_up()
        else:
            state["rate"] = rate
        pipe.send(("phase_started", state["phase"], sum(c is not None for c in conns)))

    done = loop.create_future()
    loop.add_reader(pipe.fileno(), on_pipe)
    pipe.send(("ready",))
    pace()
    window()
    await done
    loop.remove_reader(pipe.fileno())
    for task in tasks:
        task.cancel()
    await asyncio.wait(
        [asyncio.ensure_future(c.close()) for c in conns if c is not None] or [asyncio.sleep(0)], timeout=5
    )


def _child_main(pipe, cfg: dict, inherited: list) -> None:
    for conn in inherited:
        conn.close()
    common.run_child(pipe, lambda: _child(pipe, cfg))


class Window:
    """One second of one client process: what the parent keeps."""

    __slots__ = ("conns", "errors", "hung", "lat", "midx", "phase", "shed", "t")

    def __init__(self, phase, t, lat_bytes, midx_bytes, errors, shed, hung, conns):
        self.phase, self.t, self.errors, self.shed, self.hung, self.conns = phase, t, errors, shed, hung, conns
        self.lat = array("q")
        self.lat.frombytes(lat_bytes)
        self.midx = array("b")
        self.midx.frombytes(midx_bytes)


class MixClients:
    """``processes`` client processes calling ``mix`` on ``url``; windows collected by a thread."""

    def __init__(self, url: str, token: str, mix: list, processes: int = 2, hang_s: float = 30.0):
        common.raise_nofile_limit()
        self.mix = mix
        self.names = [name for name, _, _ in mix]
        ctx = multiprocessing.get_context("fork")
        self.pipes, self.procs = [], []
        cfg = {"url": url, "token": token, "mix": mix, "hang_s": hang_s}
        for _ in range(processes):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=_child_main, daemon=True, args=(child_end, cfg, self.pipes + [parent_end]))
            proc.start()
            child_end.close()
            self.pipes.append(parent_end)
            self.procs.append(proc)
        self.windows: list[Window] = []
        self.lock = threading.Lock()
        self.started = threading.Condition(self.lock)
        self.phase_acks: dict[str, int] = {}
        self.failure: str | None = None
        for pipe in self.pipes:
            if not pipe.poll(30) or pipe.recv()[0] != "ready":
                raise RuntimeError("mix client process did not start")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        live = list(self.pipes)
        while live:
            for pipe in multiprocessing.connection.wait(live, 1.0):
                try:
                    msg = pipe.recv()
                except (EOFError, OSError):
                    live.remove(pipe)
                    continue
                with self.lock:
                    if msg[0] == "win":
                        self.windows.append(Window(*msg[1:]))
                    elif msg[0] == "phase_started":
                        self.phase_acks[msg[1]] = self.phase_acks.get(msg[1], 0) + 1
                        self.started.notify_all()
                    elif msg[0] == "fatal":
                        self.failure = msg[1]
                        self.started.notify_all()

    def phase(self, name: str, mode: str, connections: int, rate: float = 0.0, depth: int = 1) -> None:
        """Start phase ``name`` (it runs until the next one); returns once every connection is open."""
        per_conn = split(connections, len(self.pipes))
        per_rate = [rate * n / max(connections, 1) for n in per_conn]
        for pipe, n, r in zip(self.pipes, per_conn, per_rate):
            pipe.send(("phase", name, mode, r, depth, n))
        deadline = time.monotonic() + 90 + connections / 40
        with self.lock:
            while self.phase_acks.get(name, 0) < len(self.pipes):
                if self.failure or time.monotonic() > deadline:
                    raise RuntimeError(f"phase {name} did not start: {self.failure or 'timeout'}")
                self.started.wait(0.5)

    def since(self, t: float, phase: str | None = None) -> list[Window]:
        with self.lock:
            return [w for w in self.windows if w.t >= t and (phase is None or w.phase == phase)]

    def stop(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("stop",))
            except OSError:
                pass
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


def summarize(windows: list[Window], names: list[str], seconds: float | None = None) -> dict:
    """Per-method and overall figures of some windows: percentiles, req/s, errors, shed, hung."""
    per: dict[str, array] = {}  # by name: the same method on several cameras is one row
    errors: Counter = Counter()
    shed = hung = 0
    for w in windows:
        for lat, m in zip(w.lat, w.midx):
            per.setdefault(names[m], array("q")).append(lat)
        errors.update(w.errors)
        shed += w.shed
        hung += w.hung
    if seconds is None:
        stamps = sorted({round(w.t) for w in windows})
        seconds = max(1, len(stamps))
    everything = array("q")
    methods = {}
    for name, lat in sorted(per.items()):
        everything.extend(lat)
        errs = sum(v for k, v in errors.items() if k.split(":")[0] == name)
        methods[name] = {**common.latency_summary(lat), "rps": round(len(lat) / seconds, 1), "errors": errs}
    n = len(everything)
    total_errors = sum(errors.values())
    return {
        **common.latency_summary(everything),
        "rps": round(n / seconds, 1),
        "seconds": round(seconds, 1),
        "errors": total_errors,
        "error_rate": round((total_errors + hung) / max(n + hung + shed, 1), 5),
        "error_codes": dict(errors),
        "shed": shed,
        "hung": hung,
        "methods": methods,
    }


def per_second(windows: list[Window], names: list[str], method: str | None = None) -> list[dict]:
    """One row per wall-clock second: t, req/s, P95 ms (of ``method`` or of everything), errors."""
    idx = None if method is None else names.index(method)
    buckets: dict[int, list[Window]] = {}
    for w in windows:
        buckets.setdefault(int(w.t), []).append(w)
    rows = []
    for t in sorted(buckets):
        lat = [v for w in buckets[t] for v, m in zip(w.lat, w.midx) if idx is None or m == idx]
        rows.append(
            {
                "t": t,
                "rps": len(lat),
                "p95_ms": common.latency_summary(lat)["p95_ms"],
                "errors": sum(sum(w.errors.values()) + w.hung for w in buckets[t]),
            }
        )
    return rows
