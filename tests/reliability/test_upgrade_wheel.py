"""Issue 16: ``camservice upgrade --from-wheel`` with a real wheel of this checkout (real processes).

The wheel goes into a side-by-side virtualenv under ``state_dir/venvs``, the
new generation runs from that virtualenv's interpreter and imports
camservice from it, and a rollback returns to the previous interpreter.
Building the wheel and the virtualenv takes most of the time (about 20 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from camservice import process

from ..harness import REPO, Service, wait_for

pytestmark = pytest.mark.slow


def test_upgrade_from_a_wheel_runs_the_new_generation_from_its_virtualenv_and_a_rollback_returns():
    with Service(simulate=0, **{"upgrade.canary_seconds": 60}) as svc:
        wheels = svc.root / "wheels"
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(REPO)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        (wheel,) = wheels.glob("camservice-*.whl")
        before = svc.status()
        previous_python = before["generations"][0]["executable"]

        upgraded = json.loads(svc.cli("upgrade", "--from-wheel", str(wheel), "--json", timeout=300).stdout)
        assert upgraded["ok"], upgraded
        python = Path(upgraded["executable"])
        venv = python.parent.parent
        assert venv.parent == svc.state_dir / "venvs" and python != Path(previous_python)
        status = svc.status()
        serving = next(g for g in status["generations"] if g["number"] == upgraded["generation"])
        assert serving["executable"] == str(python)
        assert {p["generation"] for p in status["processes"] if p["role"] == "gateway"} == {upgraded["generation"]} | (
            {upgraded["previous_generation"]} if upgraded["parked"] else set()
        )
        # That interpreter imports camservice from its own virtualenv (the children start through
        # camservice.process.command, so the working directory, here the source checkout, does not shadow it).
        where = subprocess.run(
            [str(python), "-c", process.SAFE_PATH + "import camservice; print(camservice.__file__)"],
            env=svc.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        assert Path(where).resolve().is_relative_to(venv.resolve()), where

        # A regression in the canary window (a crash: upgrade.max_restarts is 0) rolls back to the previous venv.
        files = next(
            p["pid"]
            for p in status["processes"]
            if p["name"] == "files-0" and p["generation"] == upgraded["generation"]
        )
        os.kill(files, signal.SIGKILL)
        status = wait_for(lambda: (s := svc.status()).get("last_rollback") and s, 60, 0.2, "the rollback")
        assert status["generation"] == upgraded["previous_generation"]
        assert [g["executable"] for g in status["generations"]] == [previous_python]
        assert {p["generation"] for p in status["processes"]} == {upgraded["previous_generation"]}
        assert all(p["state"] == "running" for p in status["processes"])
        # The virtualenv stays (the last two are kept): upgrading into it again needs no new install.
        assert python.exists()
