"""One generation: a full set of processes (its event bus, workers and gateways).

``camservice start`` creates generation 0; every ``camservice reload`` starts
the next one beside it, from the code installed then (``executable``: the
Python of the active virtualenv) and the configuration read then. Two
generations never share a bus or a request socket (see
:meth:`camservice.comms.Endpoints.from_config`), so the old one keeps serving
its clients, unchanged, until it is drained. The bus is a process of the
generation (:mod:`.bus`): started first (the arbiter waits until it carries
events: :meth:`~.arbiter.Arbiter.open`), stopped last.

States: ``starting`` (new, not serving yet), ``serving``, ``draining`` (its
gateways are telling clients to move), ``parked`` (drained, kept alive during
the canary window after a reload so that a rollback only resumes it:
:meth:`camservice.supervisor.reload.Reloader.resume`), ``stopped``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from camservice import allocator, comms
from camservice import config as config_module
from camservice.methods import WORKER_KINDS

from .bus import IN_ENV as BUS_IN_ENV
from .bus import OUT_ENV as BUS_OUT_ENV
from .watcher import Watcher

STARTING, SERVING, DRAINING, PARKED, STOPPED = "starting", "serving", "draining", "parked", "stopped"


class BusNotReady(Exception):
    """A generation's new event bus did not carry the supervisor's probe in time."""


class Generation:
    def __init__(
        self,
        number: int,
        config: config_module.Config,
        env: dict[str, str],
        executable: str,
        on_exit: Callable[[Watcher, int], None],
        on_start: Callable[[Watcher, int], None],
    ):
        self.number = number
        self.config = config
        self.executable = executable
        self.env = dict(env)
        self.env[comms.GENERATION_ENV] = str(number)
        # The children start through camservice.process.command, not ``python -m``: a supervisor started
        # from a source checkout would otherwise make an upgraded generation import the checkout's
        # camservice (first on sys.path) instead of its own virtualenv's.
        # The children read exactly the configuration the supervisor checked (a
        # rollback must not pick up the file that was edited for the reload).
        self.config_file = Path(config.runtime.state_dir) / "run" / f"config-g{number}.yaml"
        self.env[config_module.CONFIG_ENV] = str(self.config_file)
        self.endpoints = comms.Endpoints.from_config(config, number)
        self.state = STARTING
        self.created = time.time()
        #: time.monotonic() of the first start (ages of its RSS samples count from it).
        self.started: float | None = None
        counts = {
            "bus": 1,
            "gateway": config.gateway.processes,
            "discovery": config.workers.discovery,
            "recording": config.workers.recording,
            "files": config.workers.files,
            # The MQTT bridge is optional: one process, only with a broker configured.
            "mqtt": 1 if config.mqtt.host else 0,
        }
        self.watchers: list[Watcher] = []
        # The bus first (everyone connects to it), then workers: a gateway that comes up finds them registering.
        for role in ("bus", *WORKER_KINDS, "gateway", "mqtt"):
            # The bus runs the supervisor's own code (its interpreter): a generation of an older version
            # (camservice upgrade --venv, a rollback) has no bus role, and the proxy is the same for all.
            python = sys.executable if role == "bus" else executable
            env = allocator.role_environment(role, self.env)
            for index in range(counts[role]):
                self.watchers.append(Watcher(role, index, env, config.runtime, on_exit, on_start, number, python))
        # The bus reads no configuration (camservice.supervisor.bus): it is handed its two endpoints.
        self.bus.env = {**self.env, BUS_IN_ENV: self.endpoints.events_in, BUS_OUT_ENV: self.endpoints.events_out}

    def role(self, *roles: str) -> list[Watcher]:
        return [w for w in self.watchers if w.role in roles]

    @property
    def bus(self) -> Watcher:
        """The generation's event bus process (camservice.supervisor.bus)."""
        return self.watchers[0]

    def prepare(self) -> None:
        """Write the checked configuration file and clear stale endpoints; before any process of it starts."""
        comms.prepare_ipc_dir(self.config)
        self.config_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tree = config_module._unflatten(dict(self.config.flat))
        self.config_file.touch(mode=0o600)  # it may hold security.jwt_secret
        self.config_file.write_text(yaml.safe_dump(tree, sort_keys=True))
        for endpoint in (self.endpoints.events_in, self.endpoints.events_out, *self.endpoints.gateways):
            if endpoint.startswith("ipc://"):
                Path(endpoint[len("ipc://") :]).unlink(missing_ok=True)

    def start(self, roles: tuple[str, ...] | None = None) -> None:
        """Start ``roles`` (default: every process but the bus, which the arbiter starts first)."""
        if self.started is None:
            self.started = time.monotonic()
        for watcher in self.watchers:
            if (roles is None and watcher.role != "bus") or (roles is not None and watcher.role in roles):
                watcher.start()

    async def stop(self, timeout: float, roles: tuple[str, ...] | None = None) -> None:
        """Gateways first (they drain in-flight calls while workers still answer), then workers, the bus last
        (what the others publish as they stop still reaches the subscribers left)."""
        chosen = [w for w in self.watchers if roles is None or w.role in roles]
        await asyncio.gather(*(w.stop(timeout) for w in chosen if w.role == "gateway"))
        await asyncio.gather(*(w.stop(timeout) for w in chosen if w.role not in ("gateway", "bus")))
        await asyncio.gather(*(w.stop(timeout) for w in chosen if w.role == "bus"))

    def describe(self) -> dict:
        return {
            "number": self.number,
            "state": self.state,
            "executable": self.executable,
            "created": round(self.created, 3),
            "processes": [w.name for w in self.watchers],
        }
