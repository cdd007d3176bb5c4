"""Helpers for tests that run the real service: processes, sockets, files.

:class:`Service` starts ``camservice start`` (the real console entry point,
detached supervisor and all) with its own state folder and free ports, and
stops it with ``camservice stop``. :class:`Client` is a small JSON-RPC client
over a real WebSocket connection that keeps notifications aside.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import websockets
import yaml

REPO = Path(__file__).resolve().parent.parent


class Clock:
    """A settable clock (monotonic or wall): tests move time by hand instead of sleeping."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now and stays free until a process of ours binds it.

    Chosen at random *below* the kernel's ephemeral range, never by binding to port 0:
    a port from bind-to-0 lies inside that range, so any outgoing connection (a client,
    ffmpeg, a ZeroMQ socket) may take it as its source port before our server binds it,
    and the server then fails with "Address already in use" (seen in CI). Below the
    range only another caller of this function can take it; a port is never handed out
    twice by one process, and the bind check skips ports in use.
    """
    low, _ = _ephemeral_range()
    first = 10000 if low > 12000 else 1024
    for _ in range(1000):
        port = random.randrange(first, low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free TCP port on {host} between {first} and {low}")


class Service:
    def __init__(self, simulate: int = 2, **settings):
        # Short path: ipc:// endpoints live in state_dir and Unix socket paths are limited.
        self.root = Path(tempfile.mkdtemp(prefix="cs-"))
        self.port = free_port()
        tree = {
            "server": {"port": self.port},
            "runtime": {"state_dir": str(self.root / "state"), "stop_timeout": 6.0, "start_timeout": 40.0},
            "files": {"http_port": free_port()},
            "cameras": {"simulate": simulate, "sim_resolution": "320x240", "sim_fps": 10},
            "security": {"jwt_secret": "test-secret-" + "x" * 32},
        }
        for key, value in settings.items():
            node = tree
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        self.config_path = self.root / "camservice.yaml"
        self.config_path.write_text(yaml.safe_dump(tree))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CAMSERVICE_")}
        self.env["CAMSERVICE_CONFIG"] = str(self.config_path)
        self.url = f"ws://127.0.0.1:{self.port}/ws"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def cli(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "camservice.cli", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"camservice {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
                f"\n--- logs ---\n{self.logs()}"
            )
        return proc

    def start(self) -> Service:
        self.cli("start")
        return self

    def stop(self) -> None:
        self.cli("stop", check=False)

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json", check=False).stdout)

    def pids(self) -> dict[str, int]:
        return {p["name"]: p["pid"] for p in self.status()["processes"] if p["pid"]}

    def supervisor_pid(self) -> int:
        return int((self.state_dir / "camservice.pid").read_text())

    def token(self, role: str = "admin") -> str:
        return self.cli("token", "--role", role).stdout.strip()

    def logs(self, tail: int = 30) -> str:
        out = []
        for path in sorted((self.state_dir / "logs").glob("*")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            out.append(f"== {path.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Service:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc) -> None:
        self.cleanup()


def process_tree(pids) -> set[int]:
    """The given pids and all their descendants (ffmpeg captures included)."""
    found = set()
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            found.add(pid)
            found.update(child.pid for child in proc.children(recursive=True))
        except psutil.Error:
            continue
    return found


def alive(pids) -> list[int]:
    """Those of ``pids`` still running (zombies count as gone: nothing runs)."""
    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.Error:
            continue
    return running


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


class RpcFailure(Exception):
    def __init__(self, error: dict):
        super().__init__(f"{error.get('code')} {error.get('message')} {error.get('data')}")
        self.error = error
        self.code = error.get("code")
        self.data = error.get("data")


AUTO = object()


class Client:
    """``async with Client(url, token) as c: await c.call("ping")``."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 20.0, ssl=None):
        self.url, self.token, self.timeout, self.ssl = url, token, timeout, ssl
        self._ids = itertools.count(1)
        self._waiting: dict = {}
        self.notifications: asyncio.Queue = asyncio.Queue()

    async def __aenter__(self) -> Client:
        extra = {"ssl": self.ssl} if self.ssl is not None else {}
        self.ws = await websockets.connect(self.url, open_timeout=self.timeout, max_size=None, **extra)
        self._reader = asyncio.ensure_future(self._read())
        if self.token:
            await self.call("authenticate", {"auth_token": self.token})
        return self

    async def __aexit__(self, *exc) -> None:
        self._reader.cancel()
        await self.ws.close()

    async def _read(self) -> None:
        try:
            async for text in self.ws:
                message = json.loads(text)
                if isinstance(message, dict) and "method" in message and "id" not in message:
                    self.notifications.put_nowait(message)
                    continue
                key = json.dumps(message.get("id")) if isinstance(message, dict) else "batch"
                future = self._waiting.pop(key, None)
                if future is not None and not future.done():
                    future.set_result(message)
        except websockets.ConnectionClosed:
            pass
        finally:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError("connection closed"))

    async def raw(self, text: str, key: str) -> dict:
        future = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        await self.ws.send(text)
        return await asyncio.wait_for(future, self.timeout)

    async def request(self, method: str, params=None, request_id=AUTO) -> dict:
        request_id = next(self._ids) if request_id is AUTO else request_id
        message = {"jsonrpc": "2.0", "method": method, "id": request_id}
        if params is not None:
            message["params"] = params
        return await self.raw(json.dumps(message), json.dumps(request_id))

    async def call(self, method: str, params=None):
        reply = await self.request(method, params)
        if "error" in reply:
            raise RpcFailure(reply["error"])
        return reply["result"]

    async def notification(self, method: str, timeout: float = 10.0, where=lambda params: True) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {method} notification within {timeout}s")
            message = await asyncio.wait_for(self.notifications.get(), remaining)
            if message["method"] == method and where(message["params"]):
                return message["params"]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))
