"""The supervisor re-executes itself in place: new code, same pid, same children, same lock.

``camservice reload --supervisor-only`` (control command ``reexec``) upgrades
the supervisor's own code, which a reload of the children does not touch.
Steps:

1. Refuse while a reload or a canary is under way (its task would be lost),
   and check that the target interpreter imports the supervisor at all (an
   image that cannot start would orphan every child).
2. Answer the caller, then leave the event loop *without stopping any child*:
   the control socket, the heartbeat listener and the publishers are closed
   (ZeroMQ delivers the answer before the context ends). The generations'
   event buses are processes of their own (:mod:`.bus`): they, and every event
   the workers and gateways publish on them, go on through the exec.
3. Write :data:`STATE_FILE` (``state_dir/run/supervisor-state.json``): every
   live generation (number, state, interpreter, its checked configuration
   file ``config-gN.yaml``), every process slot (pid, start time, restarts,
   state, readiness), the counters and upgrade history, the environment, and
   the number of the locked file descriptor, whose close-on-exec flag is then
   cleared so that the ``flock`` on ``camservice.lock`` is never released.
4. ``os.execve`` the interpreter with ``-m camservice.supervisor.arbiter
   --adopt``. The pid does not change, so the children are still ours:
   :class:`Adopted` watches each through a pidfd and reaps it with
   ``waitpid`` exactly as a ``Popen`` would. Their parent-death signal does
   not fire: it follows the *thread* that forked them (the main thread), and
   ``execve`` ends the other threads only.
5. The new image binds the control socket again and connects to each
   generation's bus (adopted with the other children). Only what the
   supervisor itself does pauses for the exec (about the time an interpreter
   takes to start): control requests wait in their senders' queues, a child
   that exits meanwhile is reaped and told once the new image runs.
   WebSocket clients see nothing: no gateway stops, no event is lost.

The supervisor holds no listening socket of the service: the gateways own
the WebSocket port (``SO_REUSEPORT``), so there is no listening descriptor to
hand over beyond the lock.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from camservice import config as config_module
from camservice import process

from .generation import DRAINING, PARKED, STARTING, STOPPED, Generation
from .watcher import Watcher

if TYPE_CHECKING:
    from .arbiter import Arbiter

log = structlog.get_logger("supervisor")

#: Relative to ``state_dir``.
STATE_FILE = Path("run") / "supervisor-state.json"
#: The argument telling a starting supervisor to adopt the state file's children.
ADOPT_ARG = "--adopt"
#: Seconds the target interpreter has to show that it imports the supervisor.
CHECK_TIMEOUT = 30.0
#: Test-only: a path. The new image writes ``PATH.held`` and waits, before it binds anything, until
#: ``PATH`` exists (at most :data:`HOLD_LIMIT` seconds), so that a test acts deterministically while
#: the supervisor is mid-re-exec (tests/reliability/test_reexec.py).
HOLD_ENV = "CAMSERVICE_TEST_REEXEC_HOLD"
HOLD_LIMIT = 300.0


class ReexecError(Exception):
    pass


class Adopted:
    """What a :class:`~camservice.supervisor.watcher.Watcher` needs of a ``Popen``, for a child of a former image."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: gone, code unknown
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)


def refusal(arbiter: Arbiter) -> str | None:
    """Why a re-exec cannot happen now, and when to retry; or None.

    Refused, not queued (README, design notes): a reload and its canary are
    tasks of this image's event loop (a baseline, timers, a parked generation
    held for a rollback), which an exec would cut in the middle; both end by
    themselves within a known time, after which the re-exec is safe.
    """
    if arbiter.reloader.busy:
        return (
            "a reload (or a re-exec) is in progress; retry once it has answered "
            f"(within runtime.start_timeout + runtime.stop_timeout, {arbiter.config.runtime.start_timeout:g} s + "
            f"{arbiter.config.runtime.stop_timeout:g} s)"
        )
    live = [g for g in arbiter.generations if g.state != STOPPED]
    if any(g.state in (STARTING, DRAINING, PARKED) for g in live):
        canary = arbiter.upgrade_state.get("canary") or {}
        remaining = canary.get("remaining_s")
        when = f"in about {remaining:g} s" if isinstance(remaining, (int, float)) else "in a moment"
        return (
            f"generation {arbiter.serving.number} is in its canary window after a reload (upgrade.canary_seconds); "
            f"retry {when}, once the canary has passed or rolled back (camservice status shows it)"
        )
    return None


def command(arbiter: Arbiter, request: dict, reply: Callable[[dict], None]) -> dict | None:
    """The ``reexec`` control command: answered once the target interpreter was checked, just before the exec."""
    problem = refusal(arbiter)
    if problem:
        return {"ok": False, "error": f"cannot re-exec the supervisor now: {problem}"}
    executable = request.get("executable") or arbiter.serving.executable
    arbiter.reloader.busy = True  # no reload starts while the target is checked

    async def go() -> None:
        try:
            await asyncio.to_thread(check_executable, executable)
        except ReexecError as exc:
            reply({"ok": False, "error": str(exc)})
            return
        finally:
            arbiter.reloader.busy = False
        reply({"ok": True, "pid": os.getpid(), "executable": executable, "execs": arbiter.execs + 1})
        arbiter.exec_into = executable
        arbiter.request_stop()

    asyncio.ensure_future(go())
    return None


def check_executable(executable: str) -> None:
    """Raise unless ``executable`` runs and imports the supervisor (blocking: run it in a thread)."""
    try:
        proc = subprocess.run(
            [executable, "-c", process.SAFE_PATH + "import camservice.supervisor.arbiter"],
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReexecError(f"{executable} cannot run the supervisor: {exc}") from None
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise ReexecError(f"{executable} cannot import the supervisor (exit {proc.returncode}): {tail}")


def state_of(arbiter: Arbiter, lock_fd: int) -> dict[str, Any]:
    previous = arbiter.reloader.previous
    return {
        "pid": os.getpid(),
        "lock_fd": lock_fd,
        "env": arbiter.env,
        "started": arbiter.started,
        "execs": arbiter.execs + 1,
        "reloads": arbiter.reloads,
        "rollbacks": arbiter.rollbacks,
        "upgrade_state": arbiter.upgrade_state,
        "previous": None
        if previous is None
        else {
            # The checked file of the generation that ran that configuration (the edited one may differ).
            "config_file": next((str(g.config_file) for g in arbiter.generations if g.config is previous[0]), None),
            "executable": previous[1],
        },
        "generations": [
            {
                "number": g.number,
                "state": g.state,
                "executable": g.executable,
                "config_file": str(g.config_file),
                "created": g.created,
                "started": g.started,
                "watchers": [
                    {
                        "name": w.name,
                        "pid": w.pid,
                        "state": w.state,
                        "started_at": w.started_at,
                        "restarts": w.restarts,
                        "crashes_in_a_row": w.crashes_in_a_row,
                        "last_exit": w.last_exit,
                        "ready": w.ready,
                    }
                    for w in g.watchers
                ],
            }
            for g in arbiter.generations
            if g.state != STOPPED
        ],
    }


def write_state(arbiter: Arbiter, lock_fd: int) -> Path:
    path = arbiter.state_dir / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(".tmp")
    temporary.touch(mode=0o600)  # the environment may hold secrets
    temporary.write_text(json.dumps(state_of(arbiter, lock_fd)))
    temporary.replace(path)
    return path


def exec_image(executable: str, lock_fd: int, env: dict[str, str]) -> None:
    """Replace this process's image (never returns); the lock descriptor survives."""
    os.set_inheritable(lock_fd, True)
    # Signals the old image handled through the loop must not kill the new one before it installs its own.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    log.info("supervisor_reexec", pid=os.getpid(), executable=executable)
    # Not the working directory's camservice (a source checkout) but the target interpreter's own.
    os.execve(executable, process.command(executable, "camservice.supervisor.arbiter", ADOPT_ARG), env)


def read_state(state_dir: Path) -> dict[str, Any]:
    path = state_dir / STATE_FILE
    state = json.loads(path.read_text())
    path.unlink()
    if state.get("pid") != os.getpid():
        raise ReexecError(f"{path} belongs to pid {state.get('pid')}, not {os.getpid()}")
    return state


def hold_for_test(environ: dict[str, str]) -> None:
    """The test-only pause of :data:`HOLD_ENV` (nothing unless it is set)."""
    path = environ.get(HOLD_ENV)
    if not path:
        return
    held, release = Path(path + ".held"), Path(path)
    held.write_text(f"{os.getpid()}\n")
    log.warning("supervisor_reexec_held", release=str(release))
    deadline = time.monotonic() + HOLD_LIMIT
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    held.unlink(missing_ok=True)


def restore(arbiter: Arbiter, state: dict[str, Any]) -> list[tuple[Watcher, int, dict]]:
    """Rebuild the generations and counters of ``state``; the (watcher, pid, row) pairs to adopt in the loop."""
    arbiter.started = state["started"]
    arbiter.execs = state["execs"]
    arbiter.reloads = state["reloads"]
    arbiter.rollbacks = state["rollbacks"]
    arbiter.upgrade_state = state["upgrade_state"]
    previous = state["previous"]
    if previous is not None and previous["config_file"] is not None:
        arbiter.reloader.previous = (config_module.load(previous["config_file"]), previous["executable"])
    arbiter.generations = []
    adopt = []
    for entry in state["generations"]:
        config = config_module.load(entry["config_file"])
        generation = Generation(
            entry["number"], config, arbiter.env, entry["executable"], arbiter._on_exit, arbiter._on_start
        )
        generation.state = entry["state"]
        generation.created = entry["created"]
        generation.started = entry["started"]
        rows = {row["name"]: row for row in entry["watchers"]}
        for watcher in generation.watchers:
            row = rows.get(watcher.name)
            if row is None:
                continue
            watcher.restarts = row["restarts"]
            watcher.crashes_in_a_row = row["crashes_in_a_row"]
            watcher.last_exit = row["last_exit"]
            if row["pid"]:
                adopt.append((watcher, row["pid"], row))
        arbiter.generations.append(generation)
    arbiter.config = arbiter.serving.config
    return adopt


def adopt(watcher: Watcher, pid: int, row: dict) -> None:
    """Watch ``pid`` (a child of this process, started by the former image) as ``watcher``'s process."""
    watcher.adopt(Adopted(pid), started_at=row["started_at"], ready=row["ready"])
