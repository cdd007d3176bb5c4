"""The supervisor process: starts every role, keeps them running, stops them cleanly.

Responsibilities, in the spirit of Circus' arbiter:

* one instance per ``state_dir``, guarded by an ``flock`` on
  ``state_dir/camservice.lock`` (not a racy pid-file check);
* generations of processes (:mod:`.generation`), each with its own event bus
  process (:mod:`.bus`), started before the others and probed end to end;
  ``camservice reload`` starts the next generation (:mod:`.reload`);
* a :class:`~camservice.supervisor.watcher.Watcher` per process;
* liveness: the two-second stats events every process publishes are its
  heartbeats; a process stopped (SIGSTOP) or silent for too long is killed
  and replaced (:mod:`.liveness`);
* psutil samples of every process (CPU %, RSS) every ``runtime.sample_interval``,
  taken in a thread and published as ``_process_stats``; every exit is
  published as ``_process_exit`` (with ``hung`` when the supervisor killed a
  frozen process) so gateways fail over at once;
* a control socket (:mod:`.control_socket`) answering ``status``, ``stop`` and ``reload``
  (``camservice status``, ``camservice reload``); gateways ask it for the
  process table when they start;
* graceful stop: gateways first (they drain in-flight calls while workers
  still answer), then workers, each SIGTERM then SIGKILL after
  ``runtime.stop_timeout``.

Signal handlers only set an event; the loop does the work.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable

import psutil
import structlog
import zmq

from camservice import __version__, comms, log, process, topics
from camservice import config as config_module
from camservice.drain import Drain
from camservice.envelope import Event

from . import canary, liveness, reexec, sampling
from .control_socket import ControlSocket
from .generation import SERVING, STARTING, STOPPED, BusNotReady, Generation
from .liveness import Liveness
from .lock import AlreadyRunning, acquire_lock, lock_is_held, port_in_use, read_pid

__all__ = ["AlreadyRunning", "Arbiter", "acquire_lock", "lock_is_held", "main", "port_in_use", "read_pid"]
from .reload import Reloader
from .watcher import FAILED, RUNNING, Watcher

logger = structlog.get_logger("supervisor")

#: Topics every gateway and worker publishes every two seconds from its event loop: heartbeats; and the
#: probe the supervisor sends through each bus every liveness tick: the bus's heartbeat.
HEARTBEAT_TOPICS = (topics.WORKER_STATS, topics.GATEWAY_STATS, topics.BUS_PROBE)
#: Seconds between liveness checks (and bus probes).
LIVENESS_TICK = 0.5
#: Seconds between probes while waiting for a new bus to carry them.
BUS_PROBE_RETRY = 0.02
#: A bus whose probe came back within this many seconds carries heartbeats; otherwise the silence of its
#: generation's processes is excused (short: a frozen bus must not get them declared hung meanwhile).
BUS_CARRIES_WITHIN = 4 * LIVENESS_TICK


class Arbiter:
    def __init__(self, config: config_module.Config, env: dict[str, str] | None = None):
        self.config = config
        self.state_dir = config.state_dir
        self.env = dict(os.environ if env is None else env)
        self.control_endpoint = comms.Endpoints.from_config(config, 0).control
        self.started = time.time()
        self.generations: list[Generation] = []
        runtime = config.runtime
        self.liveness = Liveness(
            silent_after=runtime.hang_timeout,
            stopped_after=runtime.heartbeat_interval * runtime.heartbeat_liveness,
            start_grace=runtime.start_timeout,
        )
        self._stop = asyncio.Event()
        self._psutil: dict[int, psutil.Process] = {}
        self.samples: dict[str, dict] = {}
        self.host: dict = {}
        self._pubs: dict[int, zmq.Socket] = {}
        #: Set by camservice.supervisor.reload: the last reload and rollback, for status.
        self.upgrade_state: dict = {"canary": None, "last_reload": None, "last_rollback": None}
        self.rollbacks = 0
        self.reloads = 0
        #: Every gateway's canary figures, per generation (camservice.supervisor.canary).
        self.windows = canary.Windows(horizon=max(2 * config.upgrade.canary_seconds, 60.0))
        #: Every generation's RSS by age: the canary's RSS criterion compares them like for like.
        self.rss = canary.RssHistory()
        #: Set whenever a gateway's canary figures arrive.
        self.figures_arrived = asyncio.Event()
        self.reloader = Reloader(self)
        #: Control commands beyond status/stop/hello: name -> handler(arbiter, request, reply).
        self.commands: dict = {"reload": self.reloader.command, "reexec": reexec.command}
        #: Re-execs of this supervisor so far (its pid stays); the interpreter to exec into once the loop ends.
        self.execs = 0
        self.exec_into: str | None = None
        #: (watcher, pid, saved row) of children a former image started: adopted once the loop runs.
        self.adopting: list = []
        self.new_generation(config, self.env, sys.executable)

    @property
    def watchers(self) -> list[Watcher]:
        return [w for g in self.generations for w in g.watchers]

    @property
    def serving(self) -> Generation:
        """The newest generation that serves (during a reload: the old one, until the switch)."""
        for state in (SERVING, STARTING):
            for generation in reversed(self.generations):
                if generation.state == state:
                    return generation
        return self.generations[-1]

    def new_generation(self, config: config_module.Config, env: dict[str, str], executable: str) -> Generation:
        number = self.generations[-1].number + 1 if self.generations else 0
        generation = Generation(number, config, env, executable, self._on_exit, self._on_start)
        self.rss.forget_before(number - 1)
        self.generations.append(generation)
        return generation

    # --- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._stop.set)
        comms.prepare_ipc_dir(self.config)
        (self.state_dir / "run" / "control.sock").unlink(missing_ok=True)
        self.ctx = zmq.Context()
        self.heartbeats = self.ctx.socket(zmq.SUB)
        self.heartbeats.setsockopt(zmq.LINGER, 0)
        for topic in HEARTBEAT_TOPICS:
            self.heartbeats.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._heartbeats = Drain(self.heartbeats, self._on_heartbeat, multipart=True, name="heartbeats")
        self._heartbeats.start(loop)
        self.control = ControlSocket(self.ctx, self.control_endpoint, self.command)
        self.control.start(loop)
        if self.adopting:
            # The buses ran on through the exec (processes of their own): connect to them again.
            for generation in self.generations:
                self.connect(generation)
            for watcher, pid, row in self.adopting:
                reexec.adopt(watcher, pid, row)
            for generation in self.generations:
                if generation.bus.pid is None and generation.bus.popen is None:
                    # The former image ran its buses in threads (before they became processes): start one.
                    generation.bus.start()
            logger.info("supervisor_adopted", pid=os.getpid(), processes=len(self.adopting), execs=self.execs)
            self.adopting = []
        else:
            first = self.generations[0]
            try:
                await self.open(first)
            except BusNotReady as exc:
                logger.error("bus_not_ready", error=str(exc))
                self._stop.set()
            else:
                first.start()
                first.state = SERVING
                logger.info("supervisor_started", pid=os.getpid(), processes=len(first.watchers), version=__version__)
        background = [asyncio.ensure_future(self._sample_forever()), asyncio.ensure_future(self._watch_liveness())]
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=0.5)
            except asyncio.TimeoutError:
                self.control.drain()  # belt and braces: connect/disconnect may take an edge too
        for task in background:
            task.cancel()
        if self.exec_into is not None:
            await self.release()
        else:
            await self.shutdown()

    async def open(self, generation: Generation) -> None:
        """Start ``generation``'s bus; return once it carries events (:class:`BusNotReady` if it does not in time).

        The generation's other processes start after it: their first events find it bound.
        """
        generation.prepare()
        self.connect(generation)
        generation.bus.start()
        await self.bus_ready(generation, generation.config.runtime.start_timeout)

    def connect(self, generation: Generation) -> None:
        """Connect the supervisor's publisher and heartbeat listener to ``generation``'s bus."""
        self._pubs[generation.number] = comms.publisher(self.ctx, generation.endpoints)
        self.heartbeats.connect(generation.endpoints.events_out)

    async def bus_ready(self, generation: Generation, timeout: float) -> None:
        """Probe ``generation``'s bus until a probe comes back through it (both ends bound, forwarding)."""
        bus = generation.bus
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if bus.last_exit is not None:  # a broken install: fail at once, like the other processes
                raise BusNotReady(
                    f"generation {generation.number}'s {bus.name} exited during start (code {bus.last_exit})"
                )
            pid = bus.pid
            if pid is not None:
                self._heartbeats.drain()
                if self.liveness.heard(pid):
                    return
                # Until the subscription reached our publisher, ZeroMQ drops the probe: send it again.
                self.publish(topics.BUS_PROBE, {"pid": pid}, generation.number)
            await asyncio.sleep(BUS_PROBE_RETRY)
        raise BusNotReady(f"generation {generation.number}'s event bus carried no probe within {timeout:g}s")

    def close(self, generation: Generation) -> None:
        generation.state = STOPPED
        pub = self._pubs.pop(generation.number, None)
        if pub is not None:
            pub.close(linger=0)
        try:
            self.heartbeats.disconnect(generation.endpoints.events_out)
        except zmq.ZMQError:
            pass

    async def shutdown(self) -> None:
        logger.info("supervisor_stopping")
        # Half the budget each (gateways, then workers), so the whole stop fits in runtime.stop_timeout.
        timeout = self.config.runtime.stop_timeout / 2
        await asyncio.gather(*(g.stop(timeout) for g in self.generations if g.state != STOPPED))
        for generation in self.generations:
            if generation.state != STOPPED:
                self.close(generation)
        self.control.close()
        self._heartbeats.stop()
        self.heartbeats.close(linger=0)
        self.ctx.term()
        logger.info("supervisor_stopped")

    async def release(self) -> None:
        """Before a re-exec: close every socket of this image, stop no child (the buses go on: supervisor.reexec)."""
        for generation in self.generations:
            if generation.state != STOPPED:
                pub = self._pubs.pop(generation.number, None)
                if pub is not None:
                    pub.close(linger=0)
        self._heartbeats.stop()
        self.heartbeats.close(linger=0)
        self.control.close(linger=2000)  # the re-exec's answer is on its way
        await asyncio.to_thread(self.ctx.term)
        logger.info("supervisor_released", execs=self.execs)

    def request_stop(self) -> None:
        self._stop.set()

    # --- events ---------------------------------------------------------------------------

    def publish(self, topic: str, data: dict, generation: int | None = None) -> None:
        """Publish on one generation's bus, or on every open bus."""
        for number, pub in self._pubs.items():
            if generation is not None and number != generation:
                continue
            try:
                pub.send_multipart(Event(topic, "supervisor", 0, data, time.time()).frames(), flags=zmq.NOBLOCK)
            except zmq.Again:
                pass

    def _on_start(self, watcher: Watcher, pid: int) -> None:
        self.liveness.started(pid, time.monotonic())

    def _on_exit(self, watcher: Watcher, pid: int) -> None:
        self._psutil.pop(pid, None)
        self.liveness.forget(pid)
        data = {"pid": pid, "name": watcher.name, "role": watcher.role, "code": watcher.last_exit}
        data["hung"] = watcher.hung
        if watcher.restart_in is not None:
            # A replacement is on its way: it beats within this, or the liveness check kills it
            # (and another exit is told). Gateways hold the role's calls that long, not fail them.
            data["expect_within_s"] = watcher.restart_in + self.liveness.start_grace + self.liveness.silent_after
        self.publish(topics.PROCESS_EXIT, data, watcher.generation)

    # --- liveness (issue 11 §5: a frozen process is replaced) --------------------------------

    def _on_heartbeat(self, frames: list[bytes]) -> None:
        """One stats event (the heartbeats' drain): a beat of its ``pid``, and a gateway's canary figures."""
        try:
            event = Event.from_frames(frames)
            pid = event.data.get("pid")
        except Exception:  # noqa: BLE001 - a malformed event is not a heartbeat
            return
        if isinstance(pid, int):
            now = time.monotonic()
            self.liveness.beat(pid, now)
            figures = event.data.get("canary")
            if isinstance(figures, dict):
                self._canary_figures(pid, figures, now)

    def _canary_figures(self, pid: int, figures: dict, now: float) -> None:
        for watcher in self.watchers:
            if watcher.pid == pid:
                try:
                    self.windows.add(watcher.generation, pid, figures, now)
                except (KeyError, TypeError):
                    logger.warning("bad_canary_figures", pid=pid)
                self.figures_arrived.set()  # the canary looks at once (reload.Reloader.watch)
                return

    def generation_rss(self, generation: Generation) -> int | None:
        """Total RSS of a generation's processes and their children (ffmpeg), from the last sample.

        None unless every running process of the generation is in that sample: a
        partial sum (a process started since) is no figure to compare.
        """
        total = 0
        for watcher in generation.watchers:
            if watcher.pid is None:
                continue
            row = self.samples.get(watcher.key)
            if not row or row.get("pid") != watcher.pid:
                return None
            total += row["rss_bytes"] + row["children_rss_bytes"]
        return total or None

    def _record_rss(self) -> None:
        """Each live generation's complete RSS total, by age, for the canary (canary.RssHistory)."""
        now = time.monotonic()
        for generation in self.generations:
            if generation.state == STOPPED or generation.started is None:
                continue
            total = self.generation_rss(generation)
            if total is not None:
                self.rss.add(generation.number, now - generation.started, total)

    async def _watch_liveness(self) -> None:
        while True:
            await asyncio.sleep(LIVENESS_TICK)
            self._heartbeats.drain()  # beats waiting behind a missed edge count before any verdict
            now = time.monotonic()
            for generation in self.generations:
                if generation.state == STOPPED:
                    continue
                bus = generation.bus.pid
                # Heartbeats travel over the bus: while it is down (a crash, a restart), silence proves nothing.
                carried = bus is not None and self.liveness.heard_within(bus, now, BUS_CARRIES_WITHIN)
                for watcher in generation.watchers:
                    pid = watcher.pid
                    if pid is None or watcher.state != RUNNING:
                        continue
                    if not carried and pid != bus:
                        self.liveness.excuse(pid, now)
                    verdict = self.liveness.verdict(pid, now, sampling.stopped(pid))
                    if verdict == liveness.STOPPED:
                        watcher.kill_hung(f"stopped (SIGSTOP) for {self.liveness.stopped_after:.1f}s")
                    elif verdict == liveness.SILENT:
                        watcher.kill_hung(f"no heartbeat for {self.liveness.silent_after:.1f}s")
                if bus is not None:
                    self.publish(topics.BUS_PROBE, {"pid": bus}, generation.number)

    # --- sampling ---------------------------------------------------------------------------

    async def _sample_forever(self) -> None:
        while True:
            try:
                await self.sample_now()
                self.publish_stats()
            except Exception:
                logger.exception("sample_failed")
            await asyncio.sleep(self.config.runtime.sample_interval)

    async def sample_now(self) -> None:
        """Sample every process (in a thread); a reload also calls it at the switch, where both generations run."""
        rows, host = await asyncio.to_thread(sampling.sample, self.watchers, self._psutil)
        self.samples, self.host = rows, host
        self._record_rss()

    def publish_stats(self) -> None:
        """The serving generation's process table (names repeat across generations) and the upgrade figures."""
        table = sampling.process_table(self.serving.watchers, self.samples)
        upgrade = {"generation": self.serving.number, "reloads": self.reloads, "rollbacks": self.rollbacks}
        self.publish(topics.PROCESS_STATS, {"processes": table, "host": self.host, "upgrade": upgrade})

    def process_table(self) -> list[dict]:
        """Every live generation's processes; ``heard``: a heartbeat arrived since the start (or re-exec)."""
        table = sampling.process_table(
            [w for g in self.generations if g.state != STOPPED for w in g.watchers], self.samples
        )
        for row in table:
            row["heard"] = bool(row["pid"]) and self.liveness.heard(row["pid"])
        return table

    # --- control commands --------------------------------------------------------------------

    def command(self, command: str | None, request: dict, reply: Callable[[dict], None]) -> dict | None:
        """Answer a control command now (a dict) or later through ``reply`` (returns None)."""
        if command == "status":
            return self.status()
        if command == "stop":
            self._stop.set()
            return {"ok": True, "stopping": True}
        if command == "hello":  # a gateway is listening with its replica loaded
            answer = self.status()
            for generation in self.generations:
                for watcher in generation.watchers:
                    if watcher.pid is not None and watcher.pid == request.get("pid"):
                        watcher.ready = True
                        answer["processes"] = sampling.process_table(generation.watchers, self.samples)
            return answer
        if command == "parked":  # a gateway drained for a canary-watched reload (supervisor.reload)
            for watcher in self.watchers:
                if watcher.pid is not None and watcher.pid == request.get("pid"):
                    watcher.parked = True
            return {"ok": True}
        handler = self.commands.get(command)
        if handler is not None:
            return handler(self, request, reply)
        return {"ok": False, "error": f"unknown command {command!r}"}

    def status(self) -> dict:
        return {
            "ok": True,
            "pid": os.getpid(),
            "execs": self.execs,
            "version": __version__,
            "uptime": round(time.time() - self.started, 1),
            "state_dir": str(self.state_dir),
            "processes": self.process_table(),
            "host": self.host,
            "generation": self.serving.number,
            "generations": [g.describe() for g in self.generations if g.state != STOPPED],
            **self.upgrade_state,
        }

    def count_rollback(self, reason: str) -> None:
        """A rollback happened: counted, logged, published (gateways export it in /metrics)."""
        self.rollbacks += 1
        logger.error("rollback", reason=reason, rollbacks=self.rollbacks)
        self.publish_stats()

    def all_running(self) -> bool:
        return all(w.state == RUNNING for w in self.serving.watchers)

    def any_failed(self) -> bool:
        return any(w.state == FAILED for w in self.serving.watchers)


def main(foreground: bool = False, adopt: bool = False) -> int:
    """Run a supervisor in this process until SIGTERM/SIGINT; returns an exit code.

    ``adopt``: this image replaces a supervisor that re-executed itself
    (:mod:`.reexec`): same pid and lock, its children are adopted, not started.
    """
    config = config_module.load()
    process.set_title("camservice: supervisor")
    log.setup("supervisor", config.state_dir / "logs", config.logging.level, console=foreground)
    state = None
    if adopt:
        state = reexec.read_state(config.state_dir)
        lock_fd = state["lock_fd"]
        os.set_inheritable(lock_fd, False)
        reexec.hold_for_test(state["env"])
    else:
        try:
            lock_fd = acquire_lock(config.state_dir)
        except AlreadyRunning as exc:
            logger.error("already_running", error=str(exc))
            return 2
        for key, port in (("server.port", config.server.port), ("files.http_port", config.files.http_port)):
            if port and port_in_use(config.server.host, port):
                message = f"{key}: port {port} on {config.server.host} is already in use by another program"
                logger.error("port_in_use", key=key, port=port)
                print(message, file=sys.stderr, flush=True)
                os.close(lock_fd)
                return 2
    pid_file = config.state_dir / "camservice.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    env = dict(os.environ) if state is None else state["env"]
    if foreground:
        env["CAMSERVICE_FOREGROUND"] = "1"
    arbiter = Arbiter(config, env)
    if state is not None:
        arbiter.adopting = reexec.restore(arbiter, state)
    try:
        asyncio.run(arbiter.run())
        if arbiter.exec_into is not None:
            reexec.write_state(arbiter, lock_fd)
            reexec.exec_image(arbiter.exec_into, lock_fd, arbiter.env)  # does not return
    finally:
        pid_file.unlink(missing_ok=True)
        os.close(lock_fd)
    return 0


if __name__ == "__main__":
    raise SystemExit(
        main(foreground=os.environ.get("CAMSERVICE_FOREGROUND") == "1", adopt=reexec.ADOPT_ARG in sys.argv[1:])
    )
