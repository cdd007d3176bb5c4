"""Supervisor policy with real child processes."""

import asyncio
import os
import random
import time
from types import SimpleNamespace

import pytest

from camservice.backoff import Backoff
from camservice.supervisor import arbiter
from camservice.supervisor.watcher import FAILED, RUNNING, STOPPED, Watcher


def policy(**overrides):
    values = dict(stable_after=30.0, give_up_after=3, restart_backoff_max=0.2, failed_retry_after=3600.0)
    values.update(overrides)
    return SimpleNamespace(**values)


def test_backoff_grows_exponentially_with_jitter_and_a_ceiling():
    backoff = Backoff(initial=0.25, maximum=30.0, factor=2.0, jitter=0.5, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(12)]
    for n, delay in enumerate(delays):
        base = min(30.0, 0.25 * 2**n)
        assert base * 0.5 <= delay <= base
    assert len(set(delays)) == len(delays)  # jittered
    backoff.reset()
    assert 0.125 <= backoff.next_delay() <= 0.25
    with pytest.raises(ValueError):
        Backoff(initial=1.0, maximum=0.5)


def test_crash_loop_gives_up_visibly():
    """A role that cannot start is restarted with backoff, then left FAILED."""

    async def scenario():
        exits = []
        watcher = Watcher("no-such-role", 0, dict(os.environ), policy(), lambda w, pid: exits.append(pid))
        watcher.start()
        for _ in range(400):
            if watcher.state == FAILED:
                break
            await asyncio.sleep(0.05)
        return watcher, exits

    watcher, exits = asyncio.run(scenario())
    assert watcher.state == FAILED
    assert watcher.restarts == 3 and len(exits) == 4 and len(set(exits)) == 4
    assert watcher.describe()["state"] == "failed" and watcher.describe()["pid"] is None


def test_stop_sends_sigterm_then_sigkill(tmp_path):
    """A child that ignores SIGTERM is killed after the timeout; nothing is left."""

    async def scenario():
        watcher = Watcher("x", 0, dict(os.environ), policy())
        # Stand-in child: a Python process that ignores SIGTERM.
        import subprocess, sys

        watcher._loop = asyncio.get_running_loop()
        watcher.popen = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); time.sleep(60)",
            ],
            stdout=subprocess.PIPE,
        )
        watcher.popen.stdout.readline()
        watcher.started_at = time.monotonic()
        watcher.state = RUNNING
        watcher._pidfd = os.pidfd_open(watcher.popen.pid)
        watcher._loop.add_reader(watcher._pidfd, watcher._reap)
        await watcher.stop(timeout=0.5)
        return watcher

    watcher = asyncio.run(scenario())
    assert watcher.state == STOPPED and watcher.popen.returncode == -9


def test_lock_guards_one_supervisor_per_state_dir(tmp_path):
    fd = arbiter.acquire_lock(tmp_path)
    try:
        assert arbiter.lock_is_held(tmp_path)
        with pytest.raises(arbiter.AlreadyRunning):
            arbiter.acquire_lock(tmp_path)
    finally:
        os.close(fd)
    assert not arbiter.lock_is_held(tmp_path)
