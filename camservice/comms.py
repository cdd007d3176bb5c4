"""Where the processes meet, and how their ZeroMQ sockets are set up.

Topology (one box per OS process)::

    clients ──ws──> gateway i ── ROUTER (binds rpc endpoint i) <── DEALER ── every worker
                        │                                                  (one DEALER per gateway)
                        └── SUB (connects events_out) <── XPUB ┐
                                                               supervisor event proxy
    workers ── PUB (connects events_in) ─────────────────> XSUB ┘
    workers ── SUB (connects events_out)    (workers hear each other's events too)
    CLI ── REQ ──> supervisor control ROUTER

Each generation of processes (``camservice reload`` starts a new one beside
the old) has its own event bus and gateway endpoints, so that the two never
mix events or requests; children learn their generation from the
``CAMSERVICE_GENERATION`` environment variable. Generation 0 keeps the plain
names; the supervisor's control socket is the same for all.

Gateways bind so that workers (which may live on another host with
``runtime.transport: tcp``) only need to know the gateways' addresses.
Sockets are created in the process that uses them, after it started, never
inherited across a fork.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

if TYPE_CHECKING:
    from .config import Config

#: Frames bigger than this are dropped by ZeroMQ itself (a corrupt or hostile peer).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: Environment variable that tells a child process its generation.
GENERATION_ENV = "CAMSERVICE_GENERATION"
#: Per-socket queue bound; beyond it ROUTER_MANDATORY makes a send fail fast.
HIGH_WATER_MARK = 100_000


@dataclass(frozen=True)
class Endpoints:
    gateways: tuple[str, ...]  # rpc endpoint of gateway 0..n-1
    events_in: str  # publishers connect here (XSUB)
    events_out: str  # subscribers connect here (XPUB)
    control: str  # supervisor command socket

    @classmethod
    def from_config(cls, config: Config, generation: int | None = None) -> Endpoints:
        """The endpoints of ``generation`` (default: this process's, from the environment)."""
        if generation is None:
            generation = int(os.environ.get(GENERATION_ENV, "0") or 0)
        count = config.gateway.processes
        if config.runtime.transport == "ipc":
            run = Path(config.runtime.state_dir) / "run"
            tag = f"-g{generation}" if generation else ""
            return cls(
                gateways=tuple(f"ipc://{run}/gateway{tag}-{i}.sock" for i in range(count)),
                events_in=f"ipc://{run}/events-in{tag}.sock",
                events_out=f"ipc://{run}/events-out{tag}.sock",
                control=f"ipc://{run}/control.sock",
            )
        # tcp: even generations use base, base+1 (events) and base+3.. (gateways); odd
        # ones the ports right after those, so that two generations can run side by side.
        host, base = config.runtime.tcp_host, config.runtime.tcp_base_port
        first = base if generation % 2 == 0 else base + 3 + count
        gateways_from = base + 3 if generation % 2 == 0 else first + 2
        return cls(
            gateways=tuple(f"tcp://{host}:{gateways_from + i}" for i in range(count)),
            events_in=f"tcp://{host}:{first}",
            events_out=f"tcp://{host}:{first + 1}",
            control=f"tcp://{host}:{base + 2}",
        )


def _common(sock: zmq.Socket) -> zmq.Socket:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    return sock


def router(ctx: zmq.Context) -> zmq.Socket:
    """The gateway's side of the request channel."""
    sock = _common(ctx.socket(zmq.ROUTER))
    # An unknown or vanished peer raises EHOSTUNREACH instead of a silent drop.
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted worker may reuse its identity
    return sock


def dealer(ctx: zmq.Context, identity: bytes) -> zmq.Socket:
    """A worker's side of the request channel, one per gateway."""
    sock = _common(ctx.socket(zmq.DEALER))
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.RECONNECT_IVL, 50)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    return sock


def publisher(ctx: zmq.Context, endpoints: Endpoints) -> zmq.Socket:
    sock = _common(ctx.socket(zmq.PUB))
    sock.connect(endpoints.events_in)
    return sock


def subscriber(ctx: zmq.Context, endpoints: Endpoints, topics: tuple[str, ...] = ("",)) -> zmq.Socket:
    sock = _common(ctx.socket(zmq.SUB))
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
    sock.connect(endpoints.events_out)
    return sock


def prepare_ipc_dir(config: Config) -> None:
    if config.runtime.transport == "ipc":
        (Path(config.runtime.state_dir) / "run").mkdir(parents=True, exist_ok=True, mode=0o700)
