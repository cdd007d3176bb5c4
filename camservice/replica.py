"""The one camera replica: a process's copy of the discovery worker's cameras.

The discovery worker owns every camera record, ``recording`` and
``readers`` included (it folds the recording worker's
``recording_status_update`` events into them), and publishes each change as
a ``camera_status_update`` event carrying the whole record with a sequence
number; ``discovery.snapshot`` answers every record and the sequence number
of the last event. Every other process that needs cameras (the gateways,
the recording worker, the file workers) keeps a :class:`CameraReplica`:

* the merging is free of I/O (:meth:`CameraReplica.apply_event`,
  :meth:`~CameraReplica.apply_snapshot`, :meth:`~CameraReplica.release_held`),
  like :meth:`CameraRegistry.merge <camservice.workers.discovery.registry.CameraRegistry.merge>`:
  an event newer than the table is applied; one already covered by the
  snapshot is dropped; a sequence gap or a new discovery process (PUB/SUB
  loses messages for late joiners and at the high-water mark) asks for a
  new snapshot; events arriving while a snapshot is on its way are held and
  replayed after it;
* the loading is in one place (:meth:`~CameraReplica.sync`, started by
  :meth:`~CameraReplica.on_event` or :meth:`~CameraReplica.request_snapshot`):
  the snapshot is fetched through the caller's ``fetch`` coroutine (a
  worker calls through a gateway, a gateway through its pool), retried with
  backoff until it succeeds, while events are held only during a fetch.

Every change is reported once, in order, as a :class:`Change`, whose
``visible`` says whether a field clients receive (``NOTIFICATION_FIELDS``)
differs from the last one reported for that camera: a recording start
changes the record but nothing a ``camera_status_update`` carries, so the
gateway sends nothing for it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NamedTuple

from .backoff import Backoff
from .cameras import Camera, CameraTable
from .envelope import Event
from .errors import RpcError

#: First and longest pause between failed snapshot attempts, seconds.
RETRY_FIRST, RETRY_MAX = 0.2, 5.0


class Change(NamedTuple):
    camera: Camera  # the record as of this change
    visible: bool  # a field of camera_status_update differs from what was reported before
    time: float  # when the owner published it (wall clock)


Fetch = Callable[[], Awaitable[Any]]
OnChange = Callable[[Change], None]


class CameraReplica:
    """Cameras as the discovery worker last told; see the module docstring."""

    def __init__(
        self,
        fetch: Fetch | None = None,
        on_change: OnChange | None = None,
        log: Any = None,
        table: CameraTable | None = None,
    ):
        self.table = table if table is not None else CameraTable()
        self.fetch = fetch
        self.on_change = on_change
        self._log = log
        #: Set once the first snapshot is applied: until then the table is not an answer.
        self.loaded = asyncio.Event()
        #: A gap or a new owner was seen: the table needs a new snapshot.
        self.needs_snapshot = False
        self._told: dict[str, dict[str, Any]] = {}  # camera id -> notification view last reported
        self._held: list[Event] | None = None  # a list while a snapshot is on its way
        self._task: asyncio.Task | None = None

    # --- reading ----------------------------------------------------------------------------

    def find(self, device_or_id: str) -> Camera | None:
        return self.table.find(device_or_id)

    def __iter__(self) -> Iterator[Camera]:
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)

    # --- merging (no I/O) -------------------------------------------------------------------

    def apply_event(self, event: Event) -> list[Change]:
        """One ``camera_status_update``; the changes it makes (held while a snapshot is on its way)."""
        if self._held is not None:
            self._held.append(event)
            return []
        change = self._apply(event)
        return [change] if change is not None else []

    def begin_snapshot(self) -> None:
        """A snapshot is being fetched: hold events until it is applied or given up."""
        if self._held is None:
            self._held = []
        self.needs_snapshot = False

    def apply_snapshot(self, result: Any, now: float | None = None) -> list[Change]:
        """Load a ``discovery.snapshot`` answer, replay the held events; the changes, in order.

        A held event already covered by the snapshot is still reported (clients
        have not heard it), from its own record. Then every camera whose
        record differs from before the snapshot and was not reported yet (an
        event PUB/SUB lost) is reported from the table; on the first snapshot
        those are the baseline (reported, but not ``visible``).
        """
        if isinstance(result, (str, bytes)):
            result = json.loads(result)
        cameras, seq, source = result["cameras"], result["seq"], result["source"]
        held, self._held = self._held or [], None
        first = self.table.source is None
        before = {camera.id: camera.to_state() for camera in self.table}
        self.table.load_snapshot(cameras, seq, source)
        self.needs_snapshot = False
        changes: list[Change] = []
        for event in held:
            change = self._apply(event)
            if change is None:  # covered by the snapshot
                change = self._report(Camera.from_state(event.data), event.time)
            changes.append(change)
        reported = {change.camera.id for change in changes}
        now = time.time() if now is None else now
        for camera in self.table:
            if camera.id in reported or before.get(camera.id) == camera.to_state():
                continue
            if first and camera.id not in self._told:  # what is there at start is the baseline, not news
                self._told[camera.id] = camera.to_notification()
                changes.append(Change(camera, False, now))
            else:
                changes.append(self._report(camera, now))
        return changes

    def release_held(self) -> list[Change]:
        """The snapshot failed: apply the held events as if none had been asked for."""
        held, self._held = self._held or [], None
        return [change for change in map(self._apply, held) if change is not None]

    def _apply(self, event: Event) -> Change | None:
        table, data = self.table, event.data
        if event.source != table.source or table.source is None:
            # A new owner (restarted discovery), or no snapshot yet: the record is
            # the newest word on its camera, but the sequence cannot be followed
            # until a snapshot says where it stands.
            self.needs_snapshot = True
            camera = Camera.from_state(data)
            table.put(camera)
            return self._report(camera, event.time)
        if event.seq <= table.seq:
            return None  # already covered by the snapshot
        if event.seq != table.seq + 1:
            self.needs_snapshot = True  # events were lost in between
        camera = Camera.from_state(data)
        table.put(camera)
        table.seq = event.seq
        return self._report(camera, event.time)

    def _report(self, camera: Camera, published: float) -> Change:
        view = camera.to_notification()
        visible = self._told.get(camera.id) != view
        if visible:
            self._told[camera.id] = view
        return Change(camera, visible, published)

    # --- loading (the only I/O: the caller's fetch) -----------------------------------------

    def on_event(self, event: Event) -> None:
        """A ``camera_status_update`` arrived: apply it, report, resynchronise when needed."""
        self._emit(self.apply_event(event))
        if self.needs_snapshot:
            self.request_snapshot()

    def request_snapshot(self) -> asyncio.Task:
        """Start :meth:`sync` unless it is running already; its task."""
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self.sync())
        return self._task

    async def sync(self, timeout: float = 5.0) -> None:
        """Fetch and apply a snapshot, retrying with backoff until one is applied."""
        backoff = Backoff(initial=RETRY_FIRST, ceiling=RETRY_MAX)
        while True:
            self.begin_snapshot()
            try:
                # Only a replica built with a fetch is synced (a None would be retried as a TypeError).
                result = await asyncio.wait_for(self.fetch(), timeout)  # type: ignore[misc]
                changes = self.apply_snapshot(result)
            except (RpcError, asyncio.TimeoutError, KeyError, TypeError, ValueError) as exc:
                self._emit(self.release_held())
                delay = backoff.failed() or RETRY_FIRST
                if self._log is not None:
                    self._log.info("camera_snapshot_retry", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                continue
            self._emit(changes)
            self.loaded.set()
            if not self.needs_snapshot:
                return

    async def wait_loaded(self, timeout: float) -> bool:
        """True once the first snapshot is applied; False if that takes longer than ``timeout``."""
        if self.loaded.is_set():
            return True
        try:
            await asyncio.wait_for(self.loaded.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _emit(self, changes: list[Change]) -> None:
        if self.on_change is None:
            return
        for change in changes:
            try:
                self.on_change(change)
            except Exception:  # one consumer's bug must not stop the replica
                if self._log is not None:
                    self._log.exception("camera_change_failed", camera=change.camera.id)
