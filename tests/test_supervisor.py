"""Supervisor policy with real child processes."""

import asyncio
import os
import random
import sys
import time
from types import SimpleNamespace

import pytest

from camservice.supervisor import arbiter
from camservice.supervisor.watcher import FAILED, STOPPED, Watcher


def policy(**overrides):
    values = dict(stable_after=30.0, give_up_after=3, restart_backoff_max=0.2, failed_retry_after=3600.0)
    values.update(overrides)
    return SimpleNamespace(**values)


def test_restart_delays_start_immediate_then_grow_with_jitter_to_the_ceiling():
    watcher = Watcher("x", 0, dict(os.environ), policy(restart_backoff_max=30.0), rng=random.Random(1))
    delays = [watcher.backoff.failed() for _ in range(12)]
    assert delays[0] == 0.0  # a process that ran fine and crashed once is back at once
    for n, delay in enumerate(delays[1:]):
        base = min(30.0, 0.25 * 2**n)
        assert base * 0.5 <= delay <= base
    watcher.backoff.reset()
    assert watcher.backoff.failed() == 0.0


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
    ready = tmp_path / "ready"
    # Stand-in child: a Python process that ignores SIGTERM, then says so by creating ``ready``.
    child = [
        sys.executable,
        "-c",
        "import signal,sys,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "open(sys.argv[1], 'x').close(); time.sleep(60)",
        str(ready),
    ]

    async def scenario():
        watcher = Watcher("x", 0, dict(os.environ), policy(), command=child)
        watcher.start()
        deadline = time.monotonic() + 30.0
        while not ready.exists():  # the child's SIGTERM handler is in place once the file is there
            assert time.monotonic() < deadline, "the stand-in child never started"
            await asyncio.sleep(0.01)
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
