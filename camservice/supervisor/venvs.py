"""Side-by-side virtualenvs for ``camservice upgrade --from-wheel``.

Each wheel goes into a new virtualenv ``state_dir/venvs/<version>-<time>``.
Its dependencies are not downloaded again: a ``.pth`` file puts the running
virtualenv's site-packages *after* the new one's, so the new camservice wins
and the libraries it shares with the old version are found where they are
(a wheel that needs newer libraries brings them with ``pip install`` itself).
The newest ``keep`` virtualenvs are kept (the running one and the one a
rollback returns to); older ones are removed.
"""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import time
from pathlib import Path


class InstallError(Exception):
    pass


def install_wheel(folder: Path, wheel: Path, keep: int = 2, timeout: float = 600.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    version = wheel.name.split("-")[1] if wheel.name.count("-") >= 2 else "unknown"
    target = folder / f"{version}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = [sys.executable, "-m", "venv", str(target)]
    _run(run, timeout, "could not create the virtualenv")
    python = target / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    shared = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib) / "camservice-shared.pth").write_text("".join(f"{p}\n" for p in shared))
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)], timeout, "pip install failed")
    _run([str(python), "-c", "import camservice.cli"], 60, "the installed version does not import")
    prune(folder, keep)
    return target


def prune(folder: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` virtualenvs."""
    made = sorted((p for p in folder.iterdir() if (p / "bin" / "python").exists()), key=lambda p: p.stat().st_mtime)
    for old in made[:-keep] if keep else made:
        shutil.rmtree(old, ignore_errors=True)


def _run(command: list[str], timeout: float, what: str) -> None:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"{what}: {exc}") from None
    if proc.returncode != 0:
        raise InstallError(f"{what}: {(proc.stderr or proc.stdout).strip()[-1500:]}")
