"""Watchers that notice cameras coming and going and hand complete scans to the registry.

Both watchers end in the same call, ``on_scan(list[Found])`` with everything
of their kind present now, which the worker passes to
:meth:`CameraRegistry.merge`. They differ only in how they notice a change:

* :class:`SimDirWatcher` polls ``state_dir/dev`` every
  ``cameras.poll_interval`` (0.05 s): one ``scandir`` and a ``stat`` per node
  of a folder of a few entries, cheaper than any notification machinery,
  and node files are read (in a thread) only when their signature changed.
* :class:`V4L2Watcher` listens to udev (``pyudev.Monitor`` on the event
  loop via its file descriptor) and rescans on any ``video4linux`` event.
  Where udev is unavailable (containers: no ``/run/udev/control``, or
  ``cameras.udev: false``) it polls the names of ``/dev/video*`` instead,
  at most every :data:`DEV_POLL_MIN` seconds because ``/dev`` holds
  hundreds of entries, and says so once in the log.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Callable

from . import simulator
from .registry import SIM, Found
from .v4l2 import V4L2Scanner

#: Slowest polling of /dev when udev is unavailable, seconds.
DEV_POLL_MIN = 0.5
#: With udev, a full rescan this often anyway, in case the socket overflowed.
SAFETY_RESCAN = 60.0
#: A V4L2 scan (enumeration plus probes) taking longer than this is reported stuck.
SCAN_TIMEOUT = 30.0
UDEV_CONTROL = "/run/udev/control"

OnScan = Callable[[list[Found]], None]
#: Runs in the scanning thread before ``on_scan``: the blocking part of handling
#: a scan (giving new cameras their ids, which writes cameras.json).
Prepare = Callable[[list[Found]], None]


def found_from_sim(node: simulator.SimNode) -> Found:
    formats, resolutions, frame_rates = simulator.sim_capabilities(node.resolution, node.fps)
    return Found(
        key=node.device,
        device=node.device,
        kind=SIM,
        name=f"Simulated Camera {node.index}",
        resolution=node.resolution,
        fps=node.fps,
        formats=formats,
        resolutions=resolutions,
        frame_rates=frame_rates,
        source=node.source(),
    )


def found_from_bad_node(path: Path, index: int, error: str) -> Found:
    device = f"sim:{index}"
    return Found(
        key=device,
        device=device,
        kind=SIM,
        name=f"Simulated Camera {index}",
        source={"kind": "sim", "node": str(path)},
        error=error,
    )


class SimDirWatcher:
    def __init__(
        self, state_dir: str | os.PathLike, interval: float, on_scan: OnScan, log=None, prepare: Prepare | None = None
    ):
        self.directory = simulator.dev_dir(state_dir)
        self.interval = interval
        self.on_scan = on_scan
        self.prepare = prepare
        self._log = log
        self._signature: tuple | None = None
        self._cache: dict[tuple, Found] = {}  # signature entry -> record

    def signature(self) -> tuple:
        """(name, inode, mtime, size) of every node: changes on plug, unplug, replug, rewrite.

        Runs on the event loop: a handful of syscalls on a tiny folder cost
        less than a hop to a thread.
        """
        entries = []
        try:
            with os.scandir(self.directory) as scan:
                for entry in scan:
                    if simulator.node_index(entry.name) is None:
                        continue
                    try:
                        stat = entry.stat()
                    except FileNotFoundError:
                        continue  # unplugged while we looked
                    entries.append((entry.name, stat.st_ino, stat.st_mtime_ns, stat.st_size))
        except FileNotFoundError:
            pass
        return tuple(sorted(entries))

    def _read(self, signature: tuple) -> list[Found]:
        found, cache = [], {}
        for entry in signature:
            record = self._cache.get(entry)
            if record is None:
                path = self.directory / entry[0]
                try:
                    record = found_from_sim(simulator.read_node(path))
                except FileNotFoundError:
                    continue  # unplugged since the signature: the next poll reports it
                except (OSError, simulator.SimNodeError) as exc:
                    record = found_from_bad_node(path, simulator.node_index(entry[0]), str(exc))
            cache[entry] = record
            found.append(record)
        self._cache = cache
        if self.prepare is not None:
            self.prepare(found)
        return found

    async def scan_once(self) -> None:
        signature = self.signature()
        found = await asyncio.to_thread(self._read, signature)
        self._signature = signature
        self.on_scan(found)

    async def run(self) -> None:
        """Poll forever (cancel to stop)."""
        if self._signature is None:
            await self.scan_once()
        while True:
            await asyncio.sleep(self.interval)
            if self.signature() != self._signature:
                await self.scan_once()


class V4L2Watcher:
    def __init__(
        self,
        scanner: V4L2Scanner,
        on_scan: OnScan,
        use_udev: bool,
        poll_interval: float,
        log=None,
        dev_root: str = "/dev",
        udev_control: str = UDEV_CONTROL,
        prepare: Prepare | None = None,
    ):
        self.scanner = scanner
        self.on_scan = on_scan
        self.prepare = prepare
        self.use_udev = use_udev
        self.dev_interval = max(poll_interval, DEV_POLL_MIN)
        self.dev_root = dev_root
        self.udev_control = udev_control
        self._log = log
        self._running: asyncio.Future | None = None
        self._dev_signature: frozenset | None = None
        self.mode: str | None = None  # "udev" or "poll" once running
        self.last_ok = False  # the last scan completed and was reported

    def dev_signature(self) -> frozenset:
        """(name, inode) of every ``/dev/video*``: a new inode is a replug."""
        try:
            with os.scandir(self.dev_root) as scan:
                return frozenset((e.name, e.inode()) for e in scan if e.name.startswith("video"))
        except OSError:
            return frozenset()

    async def scan_once(self, timeout: float = SCAN_TIMEOUT) -> bool:
        """Scan and report; False if the scan failed or is still running after ``timeout``.

        A scan stuck in a driver cannot be cancelled (it is a thread); the next
        call waits for the same scan instead of piling up another.
        """
        if self._running is None or self._running.done():
            self._dev_signature = self.dev_signature()
            self._running = asyncio.ensure_future(asyncio.to_thread(self._scan))
        try:
            found = await asyncio.wait_for(asyncio.shield(self._running), timeout)
        except asyncio.TimeoutError:
            self._warn("v4l2_scan_slow", seconds=timeout)
            self.last_ok = False
            return False
        except Exception as exc:  # a driver or libudev failure must not stop hot-plug
            self._warn("v4l2_scan_failed", error=repr(exc))
            self._dev_signature = None  # so that polling tries again
            self.last_ok = False
            return False
        self.on_scan(found)
        self.last_ok = True
        return True

    def _scan(self) -> list[Found]:
        found = self.scanner.scan()
        if self.prepare is not None:
            self.prepare(found)
        return found

    def open_monitor(self) -> tuple[Any | None, str | None]:
        """A started udev monitor, or None and why udev cannot be used."""
        if not self.use_udev:
            return None, "cameras.udev is false"
        if not Path(self.udev_control).exists():
            # libudev hands out a monitor that never fires when udevd is absent.
            return None, f"udev is not running (no {self.udev_control})"
        try:
            import pyudev

            monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="udev")
            monitor.filter_by("video4linux")
            monitor.start()
            return monitor, None
        except Exception as exc:  # ImportError, OSError from libudev or netlink
            return None, f"udev monitor failed: {exc}"

    async def run(self) -> None:
        """Watch forever (cancel to stop)."""
        monitor, reason = self.open_monitor()
        if not self.last_ok:
            await self.scan_once()  # the initial scan, or one that was slow or failed at start
        if monitor is not None:
            self.mode = "udev"
            self._info("v4l2_watch", mode="udev")
            await self._run_udev(monitor)
        else:
            self.mode = "poll"
            self._info("v4l2_watch", mode="poll", interval=self.dev_interval, reason=reason)
            await self._run_polling()

    async def _run_udev(self, monitor) -> None:
        loop = asyncio.get_running_loop()
        dirty = asyncio.Event()

        def readable() -> None:
            try:
                while monitor.poll(timeout=0) is not None:
                    pass  # any video4linux event means: rescan; the scan sees the result
            except OSError as exc:  # ENOBUFS: events were lost, the rescan covers them
                self._warn("udev_receive_failed", error=str(exc))
            dirty.set()

        fd = monitor.fileno()
        loop.add_reader(fd, readable)
        try:
            while True:
                try:
                    await asyncio.wait_for(dirty.wait(), SAFETY_RESCAN)
                except asyncio.TimeoutError:
                    pass
                dirty.clear()
                await self.scan_once()
        finally:
            loop.remove_reader(fd)

    async def _run_polling(self) -> None:
        while True:
            await asyncio.sleep(self.dev_interval)
            if self.dev_signature() != self._dev_signature:
                await self.scan_once()

    def _info(self, event: str, **fields) -> None:
        if self._log is not None:
            self._log.info(event, **fields)

    def _warn(self, event: str, **fields) -> None:
        if self._log is not None:
            self._log.warning(event, **fields)
