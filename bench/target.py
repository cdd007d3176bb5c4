"""What the suite measures: a service it starts itself, or one already running (--url).

A started service is ``tests.harness.Service`` (``camservice start``: own
state folder under /tmp, free ports, removed afterwards) with the raised rate
limits of every bench run and simulated cameras; the suite then knows its
processes (for CPU, RSS and fds per process), its state folder (to hot-plug
simulated cameras) and can mint tokens. A running service (``--url``) is
measured over the API only, with the credentials given; ``--pid`` (the
supervisor's pid) adds per-process accounting when it runs on this host.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import yaml

from tests.harness import Service, alive, process_tree

from . import walltime
from .common import FAST_LIMITS


class Target:
    """The service under test; ``close()`` stops it if the suite started it."""

    def __init__(
        self,
        url: str,
        token: str,
        supervisor_pid: int | None = None,
        service: Service | None = None,
        api_key: str | None = None,
    ):
        self.url = url
        self.token = token or api_key
        self.supervisor_pid = supervisor_pid
        self.service = service
        parts = urlsplit(url)
        scheme = "https" if parts.scheme == "wss" else "http"
        self.http = f"{scheme}://{parts.netloc}"

    @classmethod
    def start(cls, cameras: int, resolution: str = "640x480", fps: int = 15, **settings) -> Target:
        tree = {
            **FAST_LIMITS,
            "cameras.sim_resolution": resolution,
            "cameras.sim_fps": fps,
            "storage.min_free_bytes": 0,
        }
        for attempt in range(3):
            service = Service(simulate=cameras, **{**tree, **settings})
            try:
                with walltime.spent(walltime.SERVICE_START):
                    service.start()
                return cls(service.url, mint_token(service, "admin"), service.supervisor_pid(), service)
            except AssertionError as exc:
                service.cleanup()
                # Free ports are picked before the service binds them: on a busy machine another
                # program may take one in between. New ports, new try.
                if "already in use" not in str(exc) or attempt == 2:
                    raise
            except BaseException:
                service.cleanup()
                raise
        raise AssertionError("unreachable")

    @property
    def local(self) -> bool:
        return self.supervisor_pid is not None

    @property
    def state_dir(self) -> Path | None:
        return self.service.state_dir if self.service else None

    def processes(self) -> dict[str, psutil.Process]:
        """Name -> process for the supervisor, each role process and their ffmpeg children.

        Roles come from the process titles (``camservice: gateway 0`` -> ``gateway-0``).
        """
        if self.supervisor_pid is None:
            return {}
        out: dict[str, psutil.Process] = {}
        try:
            root = psutil.Process(self.supervisor_pid)
            out["supervisor"] = root
            children = root.children(recursive=True)
        except psutil.Error:
            return out
        ffmpeg = 0
        for child in children:
            try:
                cmd = child.cmdline()
                title = " ".join(cmd)
                if cmd and "ffmpeg" in Path(cmd[0]).name:
                    name, ffmpeg = f"ffmpeg-{ffmpeg}", ffmpeg + 1
                elif "camservice:" in title and child.ppid() == self.supervisor_pid:
                    # process titles: "camservice: gateway 0" -> gateway-0. Roles are the
                    # supervisor's children: a worker's child between fork and exec still
                    # shows its parent's title, and would take the role's name for a sample.
                    name = title.split("camservice:")[-1].strip().replace(" ", "-")
                else:
                    name = None
                if name:
                    out[name] = child
            except psutil.Error:
                continue
        return out

    def role_pids(self) -> dict[str, int]:
        """Role name -> pid (no ffmpeg): the processes a fault may be injected into."""
        return {name: p.pid for name, p in self.processes().items() if not name.startswith("ffmpeg")}

    def close(self) -> None:
        if self.service is not None:
            stop_service(self.service)
            self.service = None


def mint_token(service: Service, role: str) -> str:
    """A JWT for ``service``, signed in this process: ``service.token()`` starts a CLI process for it (1-2 s)."""
    from camservice.tokens import issue_token

    secret = yaml.safe_load(service.config_path.read_text())["security"]["jwt_secret"]
    return issue_token(secret, role, "bench", 24 * 3600)


def stop_service(service: Service, timeout: float = 30.0) -> None:
    """What ``camservice stop`` does (SIGTERM to the supervisor, recordings finalised), without a CLI process.

    Waits for every process of the service's tree to exit (the CLI waits for
    the lock only); after ``timeout`` the leftovers are killed. Then the
    service's folder is removed.
    """
    with walltime.spent(walltime.SERVICE_STOP):
        try:
            pid = service.supervisor_pid()
        except (OSError, ValueError):  # never started, or gone: nothing to stop
            service.cleanup()
            return
        tree = process_tree([pid])
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while alive(tree) and time.monotonic() < deadline:
            time.sleep(0.05)
        for leftover in alive(tree):
            try:
                os.kill(leftover, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(service.root, ignore_errors=True)
