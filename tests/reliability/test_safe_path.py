"""Issue 16: a ``camservice`` folder in the working directory never shadows the installed package (real processes).

``python -m`` puts the working directory first on ``sys.path``; ``-P`` and
``PYTHONSAFEPATH`` turn that off only on Python >= 3.11, and the service
supports 3.10. The supervisor, every child it starts and its re-exec go
through ``camservice.process.command`` instead. Here the service is started
from a folder whose ``camservice`` package exits on import, with
``PYTHONSAFEPATH`` unset, so the test means the same on every interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys

from camservice import process

from ..harness import Service

SHADOW = 'raise SystemExit("imported the shadowing camservice folder")\n'


class ShadowedService(Service):
    """The harness's service, with every command run from a folder holding a shadowing ``camservice``."""

    def __init__(self, **settings):
        super().__init__(**settings)
        self.cwd = self.root / "checkout"
        (self.cwd / "camservice").mkdir(parents=True)
        (self.cwd / "camservice" / "__init__.py").write_text(SHADOW)
        self.env.pop("PYTHONSAFEPATH", None)

    def cli(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            process.command(sys.executable, "camservice.cli", *args),
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"camservice {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}\n{self.logs()}")
        return proc


def test_the_supervisor_its_children_and_its_re_exec_import_the_installed_package_from_a_shadowing_cwd():
    svc = ShadowedService(simulate=0)
    # The folder does shadow what ``python -m`` runs there (on any Python, PYTHONSAFEPATH being unset).
    shadowed = subprocess.run(
        [sys.executable, "-m", "camservice.process"],
        env=svc.env,
        cwd=svc.cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shadowed.returncode != 0 and "shadowing" in shadowed.stderr, shadowed
    with svc:
        before = svc.status()
        assert before["processes"] and all(p["state"] == "running" for p in before["processes"]), before
        answer = json.loads(svc.cli("reload", "--supervisor-only", "--json").stdout)
        assert answer["ok"] and answer["execs"] == 1, answer
        after = svc.status()
        assert after["pid"] == before["pid"] and after["execs"] == 1
        assert {p["name"]: p["pid"] for p in after["processes"]} == {p["name"]: p["pid"] for p in before["processes"]}
        assert all(p["restarts"] == 0 for p in after["processes"])
        assert "shadowing" not in (svc.state_dir / "logs" / "supervisor.out").read_text(errors="replace")
