"""Shared helpers of the file worker tests (no tests here).

Handlers are tested by instantiating :class:`FilesWorker` directly and
awaiting its handler coroutines: no ZeroMQ, no gateway. Background jobs are
off (tests call ``rescan``/``check_storage``/``enforce_retention`` when they
mean to), and published events are captured instead of sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from camservice.workers.base import CallContext
from camservice.workers.files.worker import FilesWorker

from camservice import config as config_module

EPOCH = 1_700_000_000  # 2023-11-14T22:13:20Z


def make_config(tmp_path: Path, **overrides: Any) -> config_module.Config:
    values = {"runtime.state_dir": str(tmp_path / "s"), "files.http_port": 0, "storage.scan_interval": 3600.0}
    values.update(overrides)
    return config_module.load(overrides=values, environ={})


def ctx(seconds: float = 30.0) -> CallContext:
    return CallContext("test", {"sub": "tester", "role": "admin"}, time.time() + seconds)


class CapturingWorker(FilesWorker):
    """A file worker without background jobs that records what it publishes."""

    def __init__(self, config, index: int = 0, background: bool = False, disk=None):
        super().__init__(config, index)
        self.published: list[tuple[str, dict]] = []
        self.background_jobs = background
        if disk is not None:
            self.disk_usage = disk

    def publish(self, topic: str, data: dict):
        self.published.append((topic, data))
        return super().publish(topic, data)


@contextlib.asynccontextmanager
async def running(config, index: int = 0, background: bool = False, disk=None):
    worker = CapturingWorker(config, index, background, disk)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()
        for task in list(worker._tasks):
            task.cancel()


def run(coro):
    return asyncio.run(coro)


def default_name(camera: str, epoch: float, suffix: str, ext: str = "mp4") -> str:
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.gmtime(epoch))
    return f"{camera}_{stamp}_{suffix}.{ext}"


def make_file(folder: Path, name: str, mtime: float, data: bytes = b"x") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def write_active(config, names: dict[str, dict]) -> None:
    """The recording worker's active list, written the way it does (temp + rename)."""
    run_dir = config.state_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    temp = run_dir / ".recording-active.json.tmp"
    temp.write_text(json.dumps({"files": names}))
    os.replace(temp, run_dir / "recording-active.json")


class FakeDisk:
    """``shutil.disk_usage`` of a disk whose fill level the test sets."""

    def __init__(self, total: int = 1000 * 10**9, used_percent: float = 10.0):
        self.total = total
        self.set(used_percent)

    def set(self, used_percent: float, free: int | None = None) -> None:
        self.used = int(self.total * used_percent / 100)
        self.free = self.total - self.used if free is None else free

    def __call__(self, path):
        return (self.total, self.used, self.free)
