"""Disk usage of the storage folders, measured off the event loop."""

from __future__ import annotations

import asyncio
import math
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("gateway.metrics")


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent: a folder not created yet lives on that file system."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


class StorageProbe:
    """``shutil.disk_usage`` of the storage folders, measured in a daemon thread.

    At most one measurement runs at a time, so a hung file system ties up
    one thread, not one per scrape; :meth:`refresh` waits at most
    ``timeout`` seconds, and meanwhile :attr:`values` keeps the last
    figures. A daemon thread rather than the loop's executor, whose shutdown
    would wait for a stuck ``statvfs`` and keep the gateway from exiting.
    """

    def __init__(
        self,
        folders: dict[str, Path],
        max_age: float = 5.0,
        timeout: float = 1.0,
        disk_usage: Callable[[Path], Any] = shutil.disk_usage,
    ):
        self.folders = folders
        self.max_age = max_age
        self.timeout = timeout
        self.disk_usage = disk_usage
        #: folder -> (total, used, available) bytes, as of :attr:`measured`.
        self.values: dict[str, tuple[int, int, int]] = {}
        self.measured = -math.inf
        self._running: threading.Event | None = None

    def _measure(self, finished: threading.Event) -> None:  # runs in the thread
        try:
            values = {}
            for name, path in self.folders.items():
                try:
                    usage = self.disk_usage(_existing(Path(path)))
                except OSError:
                    continue
                values[name] = (int(usage.total), int(usage.used), int(usage.free))
            self.values = values  # one reference swap: the loop never sees half an update
            self.measured = time.monotonic()
        except Exception:
            log.exception("storage_probe_failed")
        finally:
            finished.set()

    async def refresh(self) -> None:
        if time.monotonic() - self.measured < self.max_age:
            return
        if self._running is None or self._running.is_set():
            self._running = threading.Event()
            threading.Thread(target=self._measure, args=(self._running,), name="storage-probe", daemon=True).start()
        finished = self._running
        deadline = time.monotonic() + self.timeout
        # Polling a threading.Event keeps the loop free and needs no loop
        # callback from the thread, which may outlive the loop.
        while not finished.is_set():
            if time.monotonic() >= deadline:
                log.warning("storage_probe_slow", timeout=self.timeout)
                return
            await asyncio.sleep(0.005)
