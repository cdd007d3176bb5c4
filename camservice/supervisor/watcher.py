"""One supervised process slot: spawn, notice its exit, restart it.

A :class:`Watcher` owns one role instance (``gateway 0``, ``recording 0``...).
Exits are noticed through a pidfd registered on the event loop, so the
supervisor reaps children as they die rather than polling. Restart policy:

* the first restart after a stable run is immediate (well within 1 s);
* each further crash without a stable run doubles the delay (with jitter,
  so processes that crashed together do not restart in lockstep), up to
  ``runtime.restart_backoff_max``;
* a run longer than ``runtime.stable_after`` resets the count;
* after ``runtime.give_up_after`` crashes in a row the watcher stops trying
  and shows ``failed`` in ``camservice status`` rather than burn CPU in a
  tight loop; after ``runtime.failed_retry_after`` seconds of that cool-down
  it starts a new round (a disk that filled up, a device that came back:
  the cause may have gone away), so no failure is left for ever;
* a process the supervisor finds hung (:mod:`.liveness`) is killed with
  SIGKILL and counts as a crash; its exit is reported with ``hung`` set, so
  that gateways tell its callers it stopped answering rather than exited.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Protocol, cast

import structlog

from camservice.backoff import Backoff
from camservice.config import Section
from camservice.process import command as python_command
from camservice.process import die_with_parent

log = structlog.get_logger("supervisor")

STARTING, RUNNING, BACKOFF, STOPPING, STOPPED, FAILED = (
    "starting",
    "running",
    "backoff",
    "stopping",
    "stopped",
    "failed",
)


def _child_setup() -> None:
    # Runs in the child between fork and exec: tie its life to the supervisor.
    die_with_parent(signal.SIGTERM)


def _gateway_setup() -> None:
    # A gateway must tell a planned stop (SIGTERM from the supervisor) from the
    # supervisor's death, to close with 1012 rather than 1001. getppid() cannot:
    # the kernel sends PDEATHSIG when the *thread* that forked dies, and while
    # the supervisor's other threads live it still reports the same parent.
    die_with_parent(signal.SIGHUP)


class Child(Protocol):
    """A supervised process: a ``subprocess.Popen``, or an adopted one (camservice.supervisor.reexec.Adopted)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...


class Watcher:
    def __init__(
        self,
        role: str,
        index: int,
        env: dict[str, str],
        policy: Section,
        on_exit: Callable[[Watcher, int], None] | None = None,
        on_start: Callable[[Watcher, int], None] | None = None,
        generation: int = 0,
        executable: str | None = None,
        command: list[str] | None = None,
        rng: random.Random | None = None,
    ):
        self.role = role
        self.index = index
        self.name = f"{role}-{index}"
        self.env = env
        self.policy = policy  # config.runtime section
        self.on_exit = on_exit
        self.on_start = on_start
        self.generation = generation
        #: Unique across generations (names repeat in each).
        self.key = f"g{generation}/{self.name}"
        self.executable = executable or sys.executable
        #: The argv each start runs: the role's entry point (``camservice.process``) unless given.
        self.command = command or python_command(self.executable, "camservice.process", role, str(index))
        #: Why the supervisor killed the current process (a hang), or None.
        self.hung: str | None = None
        #: A gateway said hello (listening, camera replica loaded): see the arbiter's ``hello``.
        self.ready = False
        #: A gateway said it is parked (drained, not listening): see camservice.supervisor.reload.
        self.parked = False
        #: Set on the processes of a parked generation: an exit is final, not followed by a restart.
        self.hold = False
        # The first restart after a stable run is immediate (``immediate=1``); a loop backs off.
        self.backoff = Backoff(
            initial=min(0.25, policy.restart_backoff_max),
            ceiling=policy.restart_backoff_max,
            factor=2.0,
            immediate=1,
            jitter=0.5,
            rng=rng,  # the restart jitter's source: a seeded one makes the delays reproducible
        )
        self.state = STOPPED
        self.popen: Child | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.crashes_in_a_row = 0
        self.last_exit: int | None = None
        #: Seconds until the restart that follows the last exit, or None (stopped, held, failed).
        self.restart_in: float | None = None
        self._pidfd: int | None = None
        self._restart_handle: asyncio.TimerHandle | None = None
        self._exited = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen and self.popen.returncode is None else None

    def start(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._exited.clear()
        self.popen = subprocess.Popen(
            self.command,
            env=self.env,
            stdin=subprocess.DEVNULL,
            preexec_fn=_gateway_setup if self.role == "gateway" else _child_setup,
            close_fds=True,
        )
        self.started_at = time.monotonic()
        self.backoff.started()
        self.state = RUNNING
        self.hung = None
        self.ready = False
        self.parked = False
        log.info("process_started", process=self.name, pid=self.popen.pid, generation=self.generation)
        self._watch(loop)

    def adopt(self, child: Child, started_at: float, ready: bool) -> None:
        """Watch a child the supervisor's former image started (camservice.supervisor.reexec)."""
        self._loop = loop = asyncio.get_running_loop()
        self._exited.clear()
        self.popen = child
        self.started_at = started_at  # time.monotonic() is system-wide: it survives the exec
        self.backoff.started()
        self.state = RUNNING
        self.ready = ready
        log.info("process_adopted", process=self.name, pid=child.pid, generation=self.generation)
        self._watch(loop)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.popen is not None
        if self.on_start is not None:
            self.on_start(self, self.popen.pid)
        try:
            self._pidfd = os.pidfd_open(self.popen.pid)
            loop.add_reader(self._pidfd, self._reap)
        except (AttributeError, OSError):  # kernels before 5.3: wait in a thread
            self._pidfd = None
            loop.run_in_executor(None, self.popen.wait).add_done_callback(
                lambda _: loop.call_soon_threadsafe(self._reap)
            )

    def _reap(self) -> None:
        if self.popen is None or self.popen.poll() is None:
            return
        assert self._loop is not None  # a popen means start() ran
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        code = self.popen.returncode
        pid = self.popen.pid
        self.last_exit = code
        self._exited.set()
        self._decide_after_exit(pid, code)
        # Told after the decision, so that listeners see whether (and when) a restart follows.
        if self.on_exit is not None:
            self.on_exit(self, pid)

    def _decide_after_exit(self, pid: int, code: int | None) -> None:
        assert self._loop is not None  # only a started process exits
        self.restart_in = None
        if self.state == STOPPING or self.hold:
            self.state = STOPPED
            log.info("process_stopped", process=self.name, pid=pid, code=code, held=self.hold)
            return
        ran = time.monotonic() - self.started_at
        if ran >= self.policy.stable_after:
            self.crashes_in_a_row = 0
            self.backoff.reset()
        self.crashes_in_a_row += 1
        if self.crashes_in_a_row > self.policy.give_up_after:
            self.state = FAILED
            retry = self.policy.failed_retry_after
            log.error(
                "process_failed",
                process=self.name,
                pid=pid,
                code=code,
                crashes=self.crashes_in_a_row - 1,
                retry_in_s=retry,
            )
            self._restart_handle = self._loop.call_later(retry, self._retry_after_cool_down)
            return
        # The first restart after a stable run is immediate; a loop backs off.
        delay = cast(float, self.backoff.failed())  # never None: this Backoff has no limit
        self.state = BACKOFF
        self.restart_in = delay
        log.warning(
            "process_exited",
            process=self.name,
            pid=pid,
            code=code,
            hung=self.hung,
            ran_s=round(ran, 2),
            restart_in_s=round(delay, 3),
        )
        self._restart_handle = self._loop.call_later(delay, self._restart)

    def _restart(self) -> None:
        self._restart_handle = None
        if self.state != BACKOFF:
            return
        self.restarts += 1
        self.start()

    def _retry_after_cool_down(self) -> None:
        self._restart_handle = None
        if self.state != FAILED:
            return
        log.info("process_retry_after_cool_down", process=self.name)
        self.crashes_in_a_row = 0
        self.backoff.reset()
        self.restarts += 1
        self.start()

    def kill_hung(self, reason: str) -> None:
        """The process stopped answering: replace it (SIGKILL also ends a SIGSTOPped one)."""
        if self.pid is None or self.state != RUNNING:
            return
        self.hung = reason
        log.error("process_hung", process=self.name, pid=self.pid, reason=reason)
        self.signal(signal.SIGKILL)

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.pid is not None:
            try:
                self.popen.send_signal(sig)
            except ProcessLookupError:
                pass

    async def stop(self, timeout: float, sig: int | None = None) -> None:
        """``sig`` (SIGTERM; a gateway drains for a reload on SIGUSR1), ``timeout`` to drain, then SIGKILL."""
        if self._restart_handle is not None:
            self._restart_handle.cancel()
            self._restart_handle = None
        if self.pid is None:
            self.state = STOPPED if self.state != FAILED else FAILED
            return
        self.state = STOPPING
        self.signal(signal.SIGTERM if sig is None else sig)
        try:
            await asyncio.wait_for(self._exited.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("process_kill", process=self.name, pid=self.pid)
            self.signal(signal.SIGKILL)
            try:
                await asyncio.wait_for(self._exited.wait(), 2.0)
            except asyncio.TimeoutError:
                assert self.popen is not None  # it had a pid above
                self.popen.wait(timeout=1.0)
                self._reap()

    def describe(self) -> dict:
        up = time.monotonic() - self.started_at if self.pid else 0.0
        return {
            "name": self.name,
            "role": self.role,
            "index": self.index,
            "pid": self.pid,
            "state": self.state,
            "restarts": self.restarts,
            "uptime": round(up, 1),
            "last_exit": self.last_exit,
            "generation": self.generation,
        }
