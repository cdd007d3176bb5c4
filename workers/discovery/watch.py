"""Watchers that notice cameras coming and going and hand complete scans to the registry.

Both watchers end in the same call, ``on_scan(list[Found])`` with everything
of their kind present now, which the worker passes to
:meth:`CameraRegistry.merge`. They differ only in how they notice a change:

* :class:`SimDirWatcher` watches ``state_dir/dev`` with inotify: every
  plug and unplug is an event, handled in order (a camera pulled and plugged
  back at once is two changes, as udev reports two for USB), and a change
  reaches ``on_scan`` within a thread hop. Without inotify it polls every
  ``cameras.poll_interval`` seconds.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from camservice import simnodes

from . import inotify
from .registry import SIM, Found
from .v4l2 import V4L2Scanner

#: Slowest polling of /dev when udev is unavailable, seconds.
DEV_POLL_MIN = 0.5
#: With udev or inotify, a check this often anyway, in case a notification was lost.
SAFETY_RESCAN = 60.0
#: A V4L2 scan (enumeration plus probes) taking longer than this is reported stuck.
SCAN_TIMEOUT = 30.0
UDEV_CONTROL = "/run/udev/control"

OnScan = Callable[[list[Found]], None]
#: Runs in the scanning thread before ``on_scan``: the blocking part of handling
#: a scan (giving new cameras their ids, which writes cameras.json).
Prepare = Callable[[list[Found]], None]


def found_from_sim(node: simnodes.SimNode) -> Found:
    formats, resolutions, frame_rates = simnodes.sim_capabilities(node.resolution, node.fps)
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
    """Reports the simulated cameras of ``state_dir/dev``: a complete scan per change.

    With inotify (the normal case) every create, delete or rename of a node
    is one change, handled in order, so a camera unplugged and plugged
    again at once is reported as both, as udev reports both for USB. The
    events queued at one wake-up are handled in one thread hop: nodes read,
    ids handed out, one complete list per event, then ``on_scan`` for each
    list in order on the loop. A node plugged and unplugged before it could
    be read is not reported (there is nothing to describe). An overflowing
    kernel queue, or the folder vanishing, costs one full rescan.

    Without inotify (``Inotify()`` refused) it polls the folder every
    ``interval`` seconds, comparing (name, inode, mtime, size) signatures.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike,
        interval: float,
        on_scan: OnScan,
        log=None,
        prepare: Prepare | None = None,
        use_inotify: bool = True,
    ):
        self.directory = simnodes.dev_dir(state_dir)
        self.interval = interval
        self.use_inotify = use_inotify
        self.on_scan = on_scan
        self.prepare = prepare
        self._log = log
        self._signature: tuple | None = None
        self._cache: dict[tuple, Found] = {}  # signature entry -> record
        self._nodes: dict[str, Found] = {}  # node name -> record, as last reported
        #: Set once changes are being watched (inotify watch added, or polling begun).
        self.watching = asyncio.Event()
        self.mode: str | None = None  # "inotify" or "poll" once running

    def signature(self) -> tuple:
        """(name, inode, mtime, size) of every node: changes on plug, unplug, replug, rewrite.

        Runs on the event loop: a handful of syscalls on a tiny folder cost
        less than a hop to a thread.
        """
        entries = []
        try:
            with os.scandir(self.directory) as scan:
                for entry in scan:
                    if simnodes.node_index(entry.name) is None:
                        continue
                    try:
                        stat = entry.stat()
                    except FileNotFoundError:
                        continue  # unplugged while we looked
                    entries.append((entry.name, stat.st_ino, stat.st_mtime_ns, stat.st_size))
        except FileNotFoundError:
            pass
        return tuple(sorted(entries))

    def _record(self, name: str, allow_empty: bool = True) -> Found | None:
        """The record of node ``name`` now; None when it is gone (or, unless
        ``allow_empty``, still empty: a writer that created it has not written yet)."""
        path = self.directory / name
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None  # unplugged since: its delete event follows
        except OSError as exc:
            return found_from_bad_node(path, simnodes.node_index(name), str(exc))
        if not text and not allow_empty:
            return None
        try:
            return found_from_sim(simnodes.parse_node(path.absolute(), text))
        except simnodes.SimNodeError as exc:
            return found_from_bad_node(path, simnodes.node_index(name), str(exc))

    def _read(self, signature: tuple) -> list[Found]:
        found, cache, nodes = [], {}, {}
        for entry in signature:
            record = self._cache.get(entry) or self._record(entry[0])
            if record is None:
                continue  # unplugged since the signature: the next event or poll reports it
            cache[entry] = nodes[entry[0]] = record
            found.append(record)
        self._cache, self._nodes = cache, nodes
        if self.prepare is not None:
            self.prepare(found)
        return found

    def _apply(self, events: list[inotify.InotifyEvent]) -> list[list[Found]]:
        """The complete lists after each event that changed something (blocking: reads nodes)."""
        states: list[list[Found]] = []
        for event in events:
            if event.mask & (inotify.IN_Q_OVERFLOW | inotify.IN_IGNORED):
                before = dict(self._nodes)
                self._read(self.signature())
                if self._nodes != before:
                    states.append(list(self._nodes.values()))
                continue
            if simnodes.node_index(event.name) is None:
                continue  # temporary files of plug(), the owner file, the listing
            if event.mask & (inotify.IN_DELETE | inotify.IN_MOVED_FROM):
                if self._nodes.pop(event.name, None) is not None:
                    states.append(list(self._nodes.values()))
                continue
            record = self._record(event.name, allow_empty=not event.mask & inotify.IN_CREATE)
            if record is not None and self._nodes.get(event.name) != record:
                self._nodes[event.name] = record
                states.append(list(self._nodes.values()))
        if self.prepare is not None:
            for found in states:
                self.prepare(found)
        return states

    async def scan_once(self) -> None:
        signature = self.signature()
        found = await asyncio.to_thread(self._read, signature)
        self._signature = signature
        self.on_scan(found)

    async def run(self) -> None:
        """Watch forever (cancel to stop)."""
        if not self.use_inotify:
            await self._poll("inotify not wanted")
            return
        try:
            notifier = inotify.Inotify()
        except OSError as exc:
            await self._poll(f"no inotify: {exc}")
            return
        loop = asyncio.get_running_loop()
        queued: list[inotify.InotifyEvent] = []
        dirty = asyncio.Event()

        def readable() -> None:
            queued.extend(notifier.read())
            dirty.set()

        try:
            self._watch(notifier)
            loop.add_reader(notifier.fileno(), readable)
            self.mode = "inotify"
            self.watching.set()
            if self._signature is None or self.signature() != self._signature:
                await self.scan_once()  # the first scan, or changes before the watch existed
            while True:
                try:
                    await asyncio.wait_for(dirty.wait(), SAFETY_RESCAN)
                except asyncio.TimeoutError:
                    queued.append(inotify.InotifyEvent(-1, inotify.IN_Q_OVERFLOW, 0, ""))  # a full check
                dirty.clear()
                events, queued[:] = list(queued), []
                if any(e.mask & inotify.IN_IGNORED for e in events):
                    self._watch(notifier)  # the folder was removed: watch the new one
                if not events:
                    continue
                for found in await asyncio.to_thread(self._apply, events):
                    self.on_scan(found)
        finally:
            try:
                loop.remove_reader(notifier.fileno())
            finally:
                notifier.close()

    def _watch(self, notifier: inotify.Inotify) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        notifier.add_watch(
            self.directory,
            inotify.IN_CREATE
            | inotify.IN_DELETE
            | inotify.IN_MOVED_FROM
            | inotify.IN_MOVED_TO
            | inotify.IN_CLOSE_WRITE
            | inotify.IN_ONLYDIR,
        )

    async def _poll(self, reason: str) -> None:
        self.mode = "poll"
        if self._log is not None:
            self._log.warning("sim_watch_polling", interval=self.interval, reason=reason)
        if self._signature is None:
            await self.scan_once()
        self.watching.set()
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
