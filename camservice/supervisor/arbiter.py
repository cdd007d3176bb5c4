"""The supervisor process: starts every role, keeps them running, stops them cleanly.

Responsibilities, in the spirit of Circus' arbiter:

* one instance per ``state_dir``, guarded by an ``flock`` on
  ``state_dir/camservice.lock`` (not a racy pid-file check);
* the event proxy (XSUB/XPUB in a thread: pure C in ZeroMQ, no GIL held)
  that carries every event between workers and gateways;
* a :class:`~camservice.supervisor.watcher.Watcher` per process;
* psutil samples of every process (CPU %, RSS) every ``runtime.sample_interval``,
  taken in a thread and published as ``_process_stats``; every exit is
  published as ``_process_exit`` so gateways fail over at once;
* a control socket answering ``status`` and ``stop`` (``camservice status``);
* graceful stop: gateways first (they drain in-flight calls while workers
  still answer), then workers, each SIGTERM then SIGKILL after
  ``runtime.stop_timeout``.

Signal handlers only set an event; the loop does the work.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import cast

import psutil
import structlog
import zmq
from zmq.devices import ThreadProxy

from camservice import __version__, comms, config as config_module, log, process
from camservice.envelope import Event
from camservice.methods import WORKER_KINDS

from .watcher import FAILED, RUNNING, Watcher

logger = structlog.get_logger("supervisor")


class AlreadyRunning(RuntimeError):
    pass


def acquire_lock(state_dir: Path) -> int:
    """Hold ``camservice.lock`` for the life of this process; raise if taken."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / "camservice.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = read_pid(state_dir)
        raise AlreadyRunning(f"camservice already runs on {state_dir} (pid {pid})") from None
    return fd


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on ``host:port``.

    Gateways bind with SO_REUSEPORT so that several of them share the port;
    the same option would let them silently share it with *another* instance
    (same user) as well, splitting its clients between two services. So the
    port must be bindable without the option before any gateway starts.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are fine
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def read_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / "camservice.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def lock_is_held(state_dir: Path) -> bool:
    try:
        fd = os.open(state_dir / "camservice.lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class Arbiter:
    def __init__(self, config: config_module.Config, env: dict[str, str] | None = None):
        self.config = config
        self.state_dir = config.state_dir
        self.env = dict(os.environ if env is None else env)
        self.endpoints = comms.Endpoints.from_config(config)
        self.started = time.time()
        self.watchers: list[Watcher] = []
        counts = {
            "gateway": config.gateway.processes,
            "discovery": config.workers.discovery,
            "recording": config.workers.recording,
            "files": config.workers.files,
        }
        # Workers first: a gateway that comes up finds them registering.
        for role in (*WORKER_KINDS, "gateway"):
            for index in range(counts[role]):
                self.watchers.append(Watcher(role, index, self.env, config.runtime, self._on_exit))
        self._stop = asyncio.Event()
        self._psutil: dict[int, psutil.Process] = {}
        self.samples: dict[str, dict] = {}
        self.host: dict = {}

    # --- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._stop.set)
        comms.prepare_ipc_dir(self.config)
        for name in ("events-in.sock", "events-out.sock", "control.sock"):
            (self.state_dir / "run" / name).unlink(missing_ok=True)
        self.proxy = ThreadProxy(zmq.XSUB, zmq.XPUB)
        self.proxy.bind_in(self.endpoints.events_in)
        self.proxy.bind_out(self.endpoints.events_out)
        for prefix in ("in", "out"):
            getattr(self.proxy, f"setsockopt_{prefix}")(zmq.LINGER, 0)
            getattr(self.proxy, f"setsockopt_{prefix}")(zmq.SNDHWM, comms.HIGH_WATER_MARK)
            getattr(self.proxy, f"setsockopt_{prefix}")(zmq.RCVHWM, comms.HIGH_WATER_MARK)
        self.proxy.start()
        self.ctx = zmq.Context()
        self.pub = comms.publisher(self.ctx, self.endpoints)
        self.control = comms.router(self.ctx)
        self.control.bind(self.endpoints.control)
        # getsockopt is typed int | bytes; FD and EVENTS are ints.
        loop.add_reader(cast(int, self.control.getsockopt(zmq.FD)), self._on_control)
        for watcher in self.watchers:
            watcher.start()
        logger.info("supervisor_started", pid=os.getpid(), processes=len(self.watchers), version=__version__)
        sampler = asyncio.ensure_future(self._sample_forever())
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=0.5)
            except asyncio.TimeoutError:
                self._on_control()  # the ZeroMQ FD is edge-triggered
        sampler.cancel()
        await self.shutdown()

    async def shutdown(self) -> None:
        logger.info("supervisor_stopping")
        # Half the budget each, so the whole stop fits in runtime.stop_timeout.
        timeout = self.config.runtime.stop_timeout / 2
        gateways = [w for w in self.watchers if w.role == "gateway"]
        workers = [w for w in self.watchers if w.role != "gateway"]
        await asyncio.gather(*(w.stop(timeout) for w in gateways))
        await asyncio.gather(*(w.stop(timeout) for w in workers))
        loop = asyncio.get_running_loop()
        loop.remove_reader(cast(int, self.control.getsockopt(zmq.FD)))
        self.control.close(linger=0)
        self.pub.close(linger=0)
        self.ctx.term()
        logger.info("supervisor_stopped")

    def request_stop(self) -> None:
        self._stop.set()

    # --- events ---------------------------------------------------------------------------

    def _publish(self, topic: str, data: dict) -> None:
        try:
            self.pub.send_multipart(Event(topic, "supervisor", 0, data, time.time()).frames(), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    def _on_exit(self, watcher: Watcher, pid: int) -> None:
        self._psutil.pop(pid, None)
        self._publish(
            "_process_exit", {"pid": pid, "name": watcher.name, "role": watcher.role, "code": watcher.last_exit}
        )

    # --- sampling ---------------------------------------------------------------------------

    async def _sample_forever(self) -> None:
        while True:
            try:
                rows, host = await asyncio.to_thread(self._sample)
                self.samples, self.host = rows, host
                self._publish("_process_stats", {"processes": self.process_table(), "host": host})
            except Exception:
                logger.exception("sample_failed")
            await asyncio.sleep(self.config.runtime.sample_interval)

    def _sample(self) -> tuple[dict[str, dict], dict]:
        """CPU% and RSS of every process and its children (ffmpeg); runs in a thread."""
        rows: dict[str, dict] = {}
        for watcher in list(self.watchers):
            pid = watcher.pid
            if pid is None:
                continue
            try:
                proc = self._psutil.get(pid)
                if proc is None:
                    proc = self._psutil[pid] = psutil.Process(pid)
                    proc.cpu_percent(None)
                with proc.oneshot():
                    cpu = proc.cpu_percent(None)
                    rss = proc.memory_info().rss
                    times = proc.cpu_times()
                children_rss = children_cpu = 0.0
                for child in proc.children(recursive=True):
                    try:
                        children_rss += child.memory_info().rss
                        ct = child.cpu_times()
                        children_cpu += ct.user + ct.system
                    except psutil.Error:
                        pass
                rows[watcher.name] = {
                    "cpu_percent": round(cpu, 1),
                    "rss_bytes": rss,
                    "cpu_seconds": times.user + times.system,
                    "children_rss_bytes": int(children_rss),
                    "children_cpu_seconds": children_cpu,
                }
            except psutil.Error:
                continue
        memory = psutil.virtual_memory()
        host = {
            "cpu_percent": psutil.cpu_percent(None),
            "per_cpu_percent": psutil.cpu_percent(None, percpu=True),
            "memory_percent": memory.percent,
            "memory_total_bytes": memory.total,
            "memory_used_bytes": memory.total - memory.available,
            "load": list(os.getloadavg()),
        }
        net = psutil.net_io_counters()
        if net is not None:
            host["net_bytes_sent"], host["net_bytes_recv"] = net.bytes_sent, net.bytes_recv
        return rows, host

    def process_table(self) -> list[dict]:
        table = []
        for watcher in self.watchers:
            row = watcher.describe()
            sample = self.samples.get(watcher.name, {}) if watcher.pid else {}
            row["cpu_percent"] = sample.get("cpu_percent", 0.0)
            row["rss_bytes"] = sample.get("rss_bytes", 0)
            row["cpu_seconds"] = sample.get("cpu_seconds", 0.0)
            row["children_rss_bytes"] = sample.get("children_rss_bytes", 0)
            row["children_cpu_seconds"] = sample.get("children_cpu_seconds", 0.0)
            table.append(row)
        return table

    # --- control socket ----------------------------------------------------------------------

    def _on_control(self) -> None:
        while cast(int, self.control.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            try:
                identity, empty, payload = self.control.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue
            try:
                command = json.loads(payload).get("command")
            except (ValueError, AttributeError):
                command = None
            if command == "status":
                answer = {
                    "ok": True,
                    "pid": os.getpid(),
                    "version": __version__,
                    "uptime": round(time.time() - self.started, 1),
                    "state_dir": str(self.state_dir),
                    "processes": self.process_table(),
                    "host": self.host,
                }
            elif command == "stop":
                answer = {"ok": True, "stopping": True}
                self._stop.set()
            else:
                answer = {"ok": False, "error": f"unknown command {command!r}"}
            try:
                self.control.send_multipart((identity, b"", json.dumps(answer).encode()), flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    def all_running(self) -> bool:
        return all(w.state == RUNNING for w in self.watchers)

    def any_failed(self) -> bool:
        return any(w.state == FAILED for w in self.watchers)


def main(foreground: bool = False) -> int:
    """Run a supervisor in this process until SIGTERM/SIGINT; returns an exit code."""
    config = config_module.load()
    process.set_title("camservice: supervisor")
    log.setup("supervisor", config.state_dir / "logs", config.logging.level, console=foreground)
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
    env = dict(os.environ)
    if foreground:
        env["CAMSERVICE_FOREGROUND"] = "1"
    try:
        asyncio.run(Arbiter(config, env).run())
    finally:
        pid_file.unlink(missing_ok=True)
        os.close(lock_fd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(foreground=os.environ.get("CAMSERVICE_FOREGROUND") == "1"))
