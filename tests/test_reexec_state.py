"""The supervisor re-exec's parts that need no service: adopted children and the state file's round trip."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import yaml

from camservice import config as config_module
from camservice import process
from camservice.supervisor import reexec
from camservice.supervisor.arbiter import Arbiter


def test_an_adopted_child_is_polled_signalled_and_reaped_like_a_popen():
    # Started without Popen's bookkeeping, as after an exec: only the pid is known.
    pid = os.posix_spawn("/bin/sleep", ["sleep", "60"], os.environ)
    child = reexec.Adopted(pid)
    assert child.poll() is None and child.returncode is None
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.05)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL == child.returncode
    child.send_signal(signal.SIGTERM)  # gone: no error, no signal to a reused pid
    assert child.poll() == -signal.SIGKILL


def test_the_state_file_round_trip_restores_generations_slots_and_counters(tmp_path):
    flat = {"runtime.state_dir": str(tmp_path / "state"), "security.jwt_secret": "x" * 40}
    config = config_module.load(overrides=flat, environ={})
    arbiter = Arbiter(config, {"PATH": os.environ.get("PATH", "")})
    generation = arbiter.generations[0]
    generation.state = "serving"
    generation.config_file.parent.mkdir(parents=True)
    generation.config_file.write_text(yaml.safe_dump(config_module._unflatten(dict(config.flat))))
    children = {}
    for watcher in generation.watchers:
        children[watcher.name] = os.posix_spawn("/bin/sleep", ["sleep", "60"], os.environ)
        watcher.popen = reexec.Adopted(children[watcher.name])
        watcher.restarts = 2
    arbiter.reloads, arbiter.rollbacks = 3, 1
    arbiter.upgrade_state["last_rollback"] = {"reason": "a test"}
    try:
        path = reexec.write_state(arbiter, lock_fd=7)
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        state = reexec.read_state(config.state_dir)
        assert not path.exists()  # read once
        assert state["lock_fd"] == 7 and state["execs"] == 1

        image = Arbiter(config, state["env"])
        adopt = reexec.restore(image, state)
        assert (image.reloads, image.rollbacks, image.execs) == (3, 1, 1)
        assert image.upgrade_state["last_rollback"] == {"reason": "a test"}
        assert [g.number for g in image.generations] == [0] and image.serving.state == "serving"
        assert {watcher.name: pid for watcher, pid, _ in adopt} == children
        assert all(watcher.restarts == 2 for watcher, _, _ in adopt)
        assert image.generations[0].executable == sys.executable
    finally:
        for pid in children.values():
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_a_state_file_of_another_pid_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / reexec.STATE_FILE).write_text('{"pid": 1}')
    with pytest.raises(reexec.ReexecError, match="belongs to pid 1"):
        reexec.read_state(tmp_path)


def test_a_re_exec_is_refused_during_a_reload_and_a_canary_window_saying_when_to_retry(tmp_path):
    flat = {"runtime.state_dir": str(tmp_path / "state"), "security.jwt_secret": "x" * 40}
    arbiter = Arbiter(config_module.load(overrides=flat, environ={}), {})
    arbiter.generations[0].state = "serving"
    assert reexec.refusal(arbiter) is None
    arbiter.reloader.busy = True
    assert "a reload (or a re-exec) is in progress; retry once it has answered" in reexec.refusal(arbiter)
    arbiter.reloader.busy = False
    # After a reload: the old generation parked, the new one watched by the canary.
    arbiter.generations[0].state = "parked"
    arbiter.new_generation(arbiter.config, {}, sys.executable).state = "serving"
    arbiter.upgrade_state["canary"] = {"state": "watching", "generation": 1, "remaining_s": 12.5}
    problem = reexec.refusal(arbiter)
    assert "generation 1 is in its canary window" in problem and "retry in about 12.5 s" in problem, problem
    answer = reexec.command(arbiter, {}, lambda answer: None)
    assert answer == {"ok": False, "error": f"cannot re-exec the supervisor now: {problem}"}


def test_the_bus_runs_the_supervisors_interpreter_and_every_child_starts_through_the_launcher(tmp_path):
    # A generation of another version (upgrade --venv, or a rollback to one) may have no bus role: the bus,
    # the same proxy for all, runs the supervisor's own code; the generation's processes run its interpreter.
    flat = {"runtime.state_dir": str(tmp_path / "state"), "security.jwt_secret": "x" * 40}
    arbiter = Arbiter(config_module.load(overrides=flat, environ={}), {})
    other = arbiter.new_generation(arbiter.config, {}, "/opt/other-venv/bin/python")
    assert other.bus.role == "bus" and other.bus.command[0] == sys.executable
    assert {w.command[0] for w in other.watchers if w.role != "bus"} == {"/opt/other-venv/bin/python"}
    for watcher in other.watchers:
        assert watcher.command[1:] == ["-c", process.LAUNCHER, "camservice.process", watcher.role, str(watcher.index)]
