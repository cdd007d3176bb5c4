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

from pathlib import Path
from urllib.parse import urlsplit

import psutil

from tests.harness import Service

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
                service.start()
                return cls(service.url, service.token("admin"), service.supervisor_pid(), service)
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
                else:  # process titles: "camservice: gateway 0" -> gateway-0
                    name = title.split("camservice:")[-1].strip().replace(" ", "-") if "camservice:" in title else None
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
            self.service.cleanup()
