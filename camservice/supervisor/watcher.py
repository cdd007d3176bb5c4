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
  and shows ``failed`` in ``camservice status`` rather than restart forever.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from typing import Callable, Protocol

import structlog

from camservice.config import Section
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


class _Uniform(Protocol):
    """What the restart backoff needs of a random source (the ``random`` module, or a seeded ``Random``)."""

    def uniform(self, a: float, b: float) -> float: ...


class Watcher:
    def __init__(
        self,
        role: str,
        index: int,
        env: dict[str, str],
        policy: Section,
        on_exit: Callable[["Watcher", int], None] | None = None,
    ):
        self.role = role
        self.index = index
        self.name = f"{role}-{index}"
        self.env = env
        self.policy = policy  # config.runtime section
        self.on_exit = on_exit
        self.state = STOPPED
        self.popen: subprocess.Popen | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.crashes_in_a_row = 0
        self.last_exit: int | None = None
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
            [sys.executable, "-m", "camservice.process", self.role, str(self.index)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            preexec_fn=_child_setup,
            close_fds=True,
        )
        self.started_at = time.monotonic()
        self.state = RUNNING
        log.info("process_started", process=self.name, pid=self.popen.pid)
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
        if self.on_exit is not None:
            self.on_exit(self, pid)
        if self.state == STOPPING:
            self.state = STOPPED
            log.info("process_stopped", process=self.name, pid=pid, code=code)
            return
        ran = time.monotonic() - self.started_at
        if ran >= self.policy.stable_after:
            self.crashes_in_a_row = 0
        self.crashes_in_a_row += 1
        if self.crashes_in_a_row > self.policy.give_up_after:
            self.state = FAILED
            log.error("process_failed", process=self.name, pid=pid, code=code, crashes=self.crashes_in_a_row - 1)
            return
        delay = self.backoff_delay(self.crashes_in_a_row, self.policy.restart_backoff_max)
        self.state = BACKOFF
        log.warning(
            "process_exited", process=self.name, pid=pid, code=code, ran_s=round(ran, 2), restart_in_s=round(delay, 3)
        )
        self._restart_handle = self._loop.call_later(delay, self._restart)

    @staticmethod
    def backoff_delay(crashes: int, ceiling: float, rng: _Uniform = random) -> float:
        """Seconds to wait before restart number ``crashes`` of a crash loop."""
        if crashes <= 1:
            return 0.0
        base = min(ceiling, 0.25 * 2 ** (crashes - 2))
        return base * rng.uniform(0.5, 1.0)

    def _restart(self) -> None:
        self._restart_handle = None
        if self.state != BACKOFF:
            return
        self.restarts += 1
        self.start()

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.pid is not None:
            try:
                self.popen.send_signal(sig)
            except ProcessLookupError:
                pass

    async def stop(self, timeout: float) -> None:
        """SIGTERM, give it ``timeout`` to drain, then SIGKILL."""
        if self._restart_handle is not None:
            self._restart_handle.cancel()
            self._restart_handle = None
        if self.pid is None:
            self.state = STOPPED if self.state != FAILED else FAILED
            return
        self.state = STOPPING
        self.signal(signal.SIGTERM)
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
        }
