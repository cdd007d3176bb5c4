"""``camservice reload``: start a new generation beside the old one, move the clients, drain the old one.

Steps (each bounded in time; any failure before the switch leaves the old
generation serving, untouched):

1. Read and check the configuration again. A bad value is refused with its
   key named (``ConfigError``), and so is a change to a key that cannot
   change while running (:data:`FIXED_KEYS`): nothing has been started yet.
2. Start the new generation's bus process (and wait until it carries
   events), then its discovery and file workers and its gateways,
   from the code installed now (``executable``: the active virtualenv's
   Python), on their own bus and request sockets. Its gateways listen on the
   same port at once (``SO_REUSEPORT``), so from then on the kernel gives new
   connections to either generation: both serve correctly.
3. Wait until every new gateway said hello (listening, camera replica
   loaded). A new process that crashes meanwhile aborts the reload: the new
   generation is stopped and the old one keeps serving (``rolled_back``).
4. Drain the old gateways (SIGUSR1, :mod:`camservice.gateway.restarting`): they
   stop accepting, send ``server_restarting`` {"reason": "reload"} to every
   connection, answer the calls in flight, close with 1012. Clients
   reconnect to the new gateways.
5. Hand recordings over: the old recording worker is killed (SIGKILL), which
   the recording worker treats as a crash: its ffmpeg finalises the current
   segment (PDEATHSIG) and the journal stays; the new recording worker
   (started with its generation, imports done, waiting for the old pid to be
   gone: ``camservice.process.TAKE_OVER_ENV``) resumes every session (same
   session id and deadline) in a new segment. We chose *continue* over *finish on the old
   generation*: a finishing old worker would keep the camera device (one
   reader at a time) and its sessions would be unknown to the new
   generation's workers, so stop_recording would fail for the rest of the
   recording. The gap is one segment boundary (figures in the README).
6. Stop the old discovery and file workers, then the old bus process.

A rollback is a reload back to the previous generation's code and
configuration, with ``reason: "rollback"`` (SIGUSR2 to the gateways).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from camservice import config as config_module
from camservice import process
from camservice.process import PARK_SIGNAL, RESUME_SIGNAL, TAKES_OVER_ENV

from . import canary
from .generation import DRAINING, PARKED, SERVING, BusNotReady
from .watcher import BACKOFF, FAILED

if TYPE_CHECKING:
    from .arbiter import Arbiter
    from .generation import Generation

log = structlog.get_logger("supervisor")

#: Seconds a parked gateway has beyond its drain (bounded by stop_timeout / 2) to say so: its
#: clients' close handshakes (3 s) and the control request.
PARK_TIMEOUT = 5.0
#: Longest wait between two looks of the canary at the new generation's figures (it also
#: looks as soon as a gateway's figures arrive: arbiter.figures_arrived).
CANARY_TICK = 0.5

#: Keys a running service cannot take from a reload (the processes that hold them
#: outlive it, or both generations must agree on them).
FIXED_KEYS = (
    "runtime.state_dir",
    "runtime.transport",
    "runtime.tcp_host",
    "runtime.tcp_base_port",
    "server.host",
    "server.port",
    "files.http_port",
    "gateway.processes",
)


class ReloadError(Exception):
    pass


def fixed_key_changed(old: config_module.Config, new: config_module.Config) -> str | None:
    for key in FIXED_KEYS:
        if old.flat[key] != new.flat[key]:
            return f"{key}: cannot change in a reload (from {old.flat[key]!r} to {new.flat[key]!r}); restart instead"
    return None


class Reloader:
    def __init__(self, arbiter: Arbiter):
        self.arbiter = arbiter
        self.busy = False
        #: (config, executable) of the generation before the last reload: a rollback's target.
        self.previous: tuple[config_module.Config, str] | None = None
        self._canary: asyncio.Task | None = None

    # --- control command -------------------------------------------------------------

    def command(self, arbiter: Arbiter, request: dict, reply: Callable[[dict], None]) -> dict | None:
        if self.busy:
            return {"ok": False, "error": "a reload is already in progress"}
        try:
            config = config_module.load()
        except config_module.ConfigError as exc:
            return {"ok": False, "error": f"configuration error: {exc}", "changed": False}
        problem = fixed_key_changed(arbiter.config, config)
        if problem:
            return {"ok": False, "error": f"configuration error: {problem}", "changed": False}
        executable = request.get("executable") or arbiter.serving.executable
        self.busy = True
        task = asyncio.ensure_future(self.run(config, executable, "reload"))

        def done(task: asyncio.Task) -> None:
            self.busy = False
            try:
                reply(task.result())
            except Exception as exc:  # the CLI hears it
                log.exception("reload_failed")
                reply({"ok": False, "error": f"reload failed: {exc}"})

        task.add_done_callback(done)
        return None

    # --- the reload --------------------------------------------------------------------

    async def run(self, config: config_module.Config, executable: str, reason: str) -> dict:
        arbiter = self.arbiter
        old = arbiter.serving
        began = time.monotonic()
        if self._canary is not None and reason != "rollback":
            self._canary.cancel()  # a newer reload: the canary of the previous one has nothing to judge
        await self.retire_parked(config.runtime.stop_timeout / 2)
        window = config.upgrade.canary_seconds
        baseline = arbiter.windows.total(old.number, began - window).figures()
        log.info("reload_started", reason=reason, old_generation=old.number, executable=executable)
        new = arbiter.new_generation(config, arbiter.env, executable)
        for watcher in new.role("gateway"):  # they listen before the recording workers took over
            watcher.env = {**new.env, TAKES_OVER_ENV: "recording"}
        # The new recording workers start now too, but wait (imports done) for the old ones to be
        # gone before they open a camera: the handover then costs no interpreter start-up.
        old_recorders = [w.pid for w in old.role("recording") if w.pid]
        for position, watcher in enumerate(new.role("recording")):
            if position < len(old_recorders):
                watcher.env = {**new.env, process.TAKE_OVER_ENV: str(old_recorders[position])}
        stop_timeout = config.runtime.stop_timeout / 2
        try:
            await arbiter.open(new)  # its bus first: the other processes' first events find it bound
            new.start()
            await self._wait_ready(new, config.runtime.start_timeout)
        except (ReloadError, BusNotReady) as exc:
            log.error("reload_aborted", generation=new.number, error=str(exc))
            await new.stop(stop_timeout)
            arbiter.close(new)
            old.state = SERVING
            result = {
                "ok": False,
                "error": f"{exc}; rolled back: generation {old.number} still serves",
                "rolled_back": True,
                "generation": old.number,
            }
            arbiter.upgrade_state["last_rollback"] = {
                "time": time.time(),
                "from_generation": new.number,
                "to_generation": old.number,
                "reason": str(exc),
            }
            arbiter.count_rollback(str(exc))
            return result
        ready_s = time.monotonic() - began
        # Both generations are complete now: one sample gives the canary's RSS criterion ages it can compare.
        try:
            await arbiter.sample_now()
        except Exception:  # noqa: BLE001 - the periodic sampling logs its own failures; the reload goes on
            log.warning("sample_failed", exc_info=True)
        old.state = DRAINING
        drain_began = time.monotonic()
        # Watched by a canary, the old generation is parked (kept warm) so that a rollback only resumes it.
        park = window > 0 and reason == "reload" and await self._park(old, PARK_TIMEOUT + stop_timeout)
        if not park:
            drain_signal = signal.SIGUSR2 if reason == "rollback" else signal.SIGUSR1
            await asyncio.gather(*(w.stop(stop_timeout, drain_signal) for w in old.role("gateway")))
        drained_s = time.monotonic() - drain_began
        # Recording handover (see the module docstring): a kill keeps the journal.
        handover_began = time.monotonic()
        await asyncio.gather(*(w.stop(2.0, signal.SIGKILL) for w in old.role("recording")))
        for watcher in new.role("recording", "gateway"):
            watcher.env = new.env  # a later restart takes nothing over
        if park:
            # A parked MQTT bridge would publish the old generation's events beside the new one's (and
            # fight it over a configured client id): it stops now and a rollback starts it again.
            await asyncio.gather(*(w.stop(stop_timeout) for w in old.role("mqtt")))
            old.state = PARKED
        else:
            await old.stop(stop_timeout)  # discovery, files, mqtt (gateways and recorders are gone)
            arbiter.close(old)
        new.state = SERVING
        self.previous = (old.config, old.executable)
        arbiter.config = config
        result = {
            "ok": True,
            "reason": reason,
            "generation": new.number,
            "previous_generation": old.number,
            "executable": executable,
            "parked": park,
            "ready_s": round(ready_s, 3),
            "drain_s": round(drained_s, 3),
            "handover_s": round(time.monotonic() - handover_began, 3),
            "total_s": round(time.monotonic() - began, 3),
        }
        arbiter.upgrade_state["last_reload"] = {"time": time.time(), **result}
        arbiter.reloads += 1
        arbiter.publish_stats()
        log.info("reload_done", **result)
        if window > 0 and reason == "reload":
            self._canary = asyncio.ensure_future(self.watch(new, old, baseline, config, time.monotonic()))
        else:
            arbiter.upgrade_state["canary"] = None
        return result

    async def watch(
        self, new: Generation, old: Generation, baseline: dict, config: config_module.Config, switched: float
    ) -> None:
        """The canary: compare ``new`` with the old generation's ``baseline``; roll back on a regression."""
        arbiter = self.arbiter
        window = config.upgrade.canary_seconds
        limits = canary.Tolerances.from_config(config.upgrade)
        restarts_before = sum(w.restarts for w in new.watchers)
        state = {"state": "watching", "generation": new.number, "remaining_s": window, "baseline": baseline}
        arbiter.upgrade_state["canary"] = state
        while time.monotonic() - switched < window:
            arbiter.figures_arrived.clear()
            try:
                await asyncio.wait_for(arbiter.figures_arrived.wait(), CANARY_TICK)
            except asyncio.TimeoutError:
                pass  # restarts and RSS change without figures
            if new.state != SERVING:
                return
            figures = arbiter.windows.total(new.number, switched).figures()
            restarts = sum(w.restarts for w in new.watchers) - restarts_before
            old_rss, new_rss = arbiter.rss.compare(old.number, new.number) or (0, 0)
            reason = canary.judge(baseline, figures, restarts, old_rss, new_rss, limits)
            state.update(
                figures={**figures, "old_rss_bytes": old_rss, "rss_bytes": new_rss},
                remaining_s=round(window - (time.monotonic() - switched), 1),
            )
            if reason is None:
                continue
            decided = time.monotonic()
            state.update(state="failed", reason=reason)
            log.error("canary_failed", generation=new.number, reason=reason, figures=figures, baseline=baseline)
            assert self.previous is not None  # run() set it before starting this canary
            previous_config, previous_executable = self.previous
            while self.busy:  # a reload is being answered: wait for it
                await asyncio.sleep(0.05)
            self.busy = True
            try:
                if old.state == PARKED:
                    result = await self.resume(old, new, config.runtime.stop_timeout / 2)
                else:
                    result = await self.run(previous_config, previous_executable, "rollback")
            finally:
                self.busy = False
            arbiter.upgrade_state["last_rollback"] = {
                "time": time.time(),
                "from_generation": new.number,
                "to_generation": result.get("generation"),
                "reason": reason,
                "decided_after_switch_s": round(decided - switched, 3),
                "rollback_s": round(time.monotonic() - decided, 3),
            }
            arbiter.count_rollback(reason)
            arbiter.upgrade_state["canary"] = dict(state)
            return
        state.update(state="passed", remaining_s=0)
        await self.retire_parked(config.runtime.stop_timeout / 2)
        log.info("canary_passed", generation=new.number, figures=state.get("figures"), baseline=baseline)

    # --- parked generation: the rollback's warm standby -----------------------------------------

    async def _park(self, old: Generation, timeout: float) -> bool:
        """Park ``old``'s gateways (drained, alive, not listening); False if one did not say so in time."""
        gateways = old.role("gateway")
        for watcher in old.watchers:
            watcher.hold = True  # a parked process that exits is not restarted: it would listen again
        for watcher in gateways:
            watcher.parked = False
            watcher.signal(PARK_SIGNAL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(w.parked for w in gateways):
                return True
            if any(w.pid is None for w in gateways):
                break
            await asyncio.sleep(0.02)
        log.warning("park_failed", generation=old.number, parked=[w.name for w in gateways if w.parked])
        for watcher in old.watchers:
            watcher.hold = False
        return False

    async def retire_parked(self, timeout: float) -> None:
        """Stop every parked generation: the canary passed, or a newer reload replaces the standby."""
        for generation in [g for g in self.arbiter.generations if g.state == PARKED]:
            await generation.stop(timeout)
            self.arbiter.close(generation)
            log.info("parked_generation_stopped", generation=generation.number)

    async def resume(self, old: Generation, bad: Generation, stop_timeout: float) -> dict:
        """The rollback from a parked generation: ``old`` listens again, ``bad`` drains and stops.

        No process starts but the old recording workers (they were handed over):
        the previous code serves again as soon as its gateways listen.
        """
        arbiter = self.arbiter
        began = time.monotonic()
        log.info("rollback_resume", generation=old.number, from_generation=bad.number)
        gateways = old.role("gateway")
        for watcher in old.watchers:
            watcher.hold = False
        for watcher in gateways:
            watcher.ready = False
            watcher.signal(RESUME_SIGNAL)
        deadline = time.monotonic() + old.config.runtime.start_timeout
        waiting = [w for w in old.watchers if w.role not in ("recording", "mqtt")]
        while not all(w.ready for w in gateways) and time.monotonic() < deadline:
            if any(w.pid is None for w in waiting):
                break
            await asyncio.sleep(0.02)
        if not all(w.ready and w.pid for w in gateways) or any(w.pid is None for w in waiting):
            # A parked process is gone (it is not restarted while parked): start the previous code afresh.
            log.error("resume_failed", generation=old.number, missing=[w.name for w in waiting if w.pid is None])
            await old.stop(stop_timeout)
            arbiter.close(old)
            return await self.run(old.config, old.executable, "rollback")
        resumed_s = time.monotonic() - began
        old.state, bad.state = SERVING, DRAINING
        await asyncio.gather(*(w.stop(stop_timeout, signal.SIGUSR2) for w in bad.role("gateway")))
        drained_s = time.monotonic() - began - resumed_s
        await asyncio.gather(*(w.stop(2.0, signal.SIGKILL) for w in bad.role("recording")))
        await asyncio.gather(*(w.stop(stop_timeout) for w in bad.role("mqtt")))
        # The recording worker resumes the journaled sessions, as after a crash; the bridge reconnects.
        for watcher in old.role("recording", "mqtt"):
            watcher.env = old.env
            watcher.start()
        handover_s = time.monotonic() - began - resumed_s - drained_s
        await bad.stop(stop_timeout)
        arbiter.close(bad)
        arbiter.config = old.config
        self.previous = None
        result = {
            "ok": True,
            "reason": "rollback",
            "generation": old.number,
            "previous_generation": bad.number,
            "executable": old.executable,
            "resumed": True,
            "ready_s": round(resumed_s, 3),
            "drain_s": round(drained_s, 3),
            "handover_s": round(handover_s, 3),
            # The previous code serves again, and the new gateways' clients were told to move to it.
            "clients_moved_s": round(resumed_s + drained_s, 3),
            "total_s": round(time.monotonic() - began, 3),
        }
        arbiter.upgrade_state["last_reload"] = {"time": time.time(), **result}
        arbiter.publish_stats()
        log.info("rollback_done", **result)
        return result

    async def _wait_ready(self, generation: Generation, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        gateways = generation.role("gateway")
        while time.monotonic() < deadline:
            for watcher in generation.watchers:
                if watcher.restarts or watcher.state in (BACKOFF, FAILED) or watcher.last_exit is not None:
                    raise ReloadError(
                        f"the new generation's {watcher.name} exited during start (code {watcher.last_exit})"
                    )
            if all(w.ready for w in gateways):
                return
            await asyncio.sleep(0.05)
        late = [w.name for w in gateways if not w.ready]
        raise ReloadError(f"the new generation was not ready within {timeout}s: {', '.join(late)}")
