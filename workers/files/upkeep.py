"""The file worker's upkeep: storage figures, retention and index rescans.

Mixed into :class:`~camservice.workers.files.worker.FilesWorker`. The
handlers ``get_storage_info``, ``set_retention_policy`` and
``cleanup_old_files`` live here, and so do the background jobs that only the
process holding ``leader.lock`` runs (see the worker's module docstring):
a rescan every ``storage.scan_interval`` (a full walk every
:data:`FULL_SCAN_EVERY`-th), storage threshold checks every
:data:`STORAGE_CHECK_SECONDS` and retention after each rescan.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from camservice.workers.base import CallContext

from camservice import topics
from camservice.active_files import ActiveFiles
from camservice.errors import SERVICE_BUSY, RpcError

from .blocking import THREAD_WAIT_CAP, in_thread
from .catalogue import is_recording
from .index import FileIndex, ScanResult
from .names import KINDS, RECORDING, SNAPSHOT
from .retention import Candidate, FileLock, Policy, PolicyStore, plan
from .storage import ThresholdMonitor, Usage, storage_info

#: Storage thresholds are checked this often (at most), rescans every scan_interval.
STORAGE_CHECK_SECONDS = 10.0
#: Every this many periodic rescans walks the folders even when their mtime says nothing changed.
FULL_SCAN_EVERY = 10


class Upkeep:
    """Storage, retention and rescans (see the module docstring)."""

    # Set up by FilesWorker.__init__.
    config: Any
    log: Any
    folders: dict[str, Path]
    db: FileIndex
    active: ActiveFiles
    policies: PolicyStore
    retention_lock_path: Path
    leader: FileLock
    monitor: ThresholdMonitor
    disk_usage: Callable[[Path], Any]
    publish: Callable[..., Any]
    _scan_lock: asyncio.Lock
    _wake: asyncio.Event
    _folder_stamps: dict[str, tuple[int, int] | None]
    _closing: threading.Event

    # --- storage -----------------------------------------------------------------------------

    async def get_storage_info(self, params: dict, ctx: CallContext) -> dict:
        usage = await in_thread(ctx, self._usage)
        return storage_info(
            usage,
            self.db.total_bytes(RECORDING),
            self.db.total_bytes(SNAPSHOT),
            self.config.storage.warn_percent,
            self.config.storage.min_free_bytes,
        )

    def _usage(self) -> Usage:
        total, used, free = self.disk_usage(self.folders[RECORDING])[:3]
        return Usage(total, used, free)

    async def check_storage(self) -> dict | None:
        """Publish ``storage_status_update`` when the level changed; returns what was published."""
        usage = await asyncio.wait_for(asyncio.to_thread(self._usage), THREAD_WAIT_CAP)
        data = self.monitor.update(usage)
        if data is not None:
            self.publish(topics.STORAGE_STATUS, data)
            log = self.log.warning if data["low_space_warning"] else self.log.info
            log("storage_level", **data)
        return data

    # --- retention ---------------------------------------------------------------------------

    async def set_retention_policy(self, params: dict, ctx: CallContext) -> dict:
        policy = Policy(
            policy_type=params["policy_type"],
            enabled=bool(params["enabled"]),
            max_age_days=params.get("max_age_days"),
            max_size_gb=params.get("max_size_gb"),
        )
        await in_thread(ctx, self.policies.save, policy)
        self.log.info("retention_policy_set", caller=ctx.caller.get("sub"), **policy.to_dict())
        self._wake.set()  # the leader (if it is us) applies it now rather than at the next tick
        return {**policy.to_dict(), "message": "Retention policy updated"}

    async def cleanup_old_files(self, params: dict, ctx: CallContext) -> dict:
        policy = await in_thread(ctx, self.policies.load)
        if not policy.enabled:
            return {
                "cleanup_executed": False,
                "files_deleted": 0,
                "space_freed": 0,
                "message": "Retention policy is disabled; nothing was deleted",
            }
        wait = max(0.0, min(THREAD_WAIT_CAP, ctx.remaining() - 2.0))
        # A big cleanup may use the whole deadline (the method allows 60 s); past
        # it the caller hears -32011 while the pass goes on and finishes.
        outcome = await in_thread(ctx, self._retention_locked, policy, wait, cap=ctx.remaining())
        if outcome is None:
            raise RpcError(SERVICE_BUSY, data={"reason": "another cleanup is running"})
        count, freed = outcome
        return {
            "cleanup_executed": True,
            "files_deleted": count,
            "space_freed": freed,
            "message": f"Deleted {count} file(s), freed {freed} bytes",
        }

    async def enforce_retention(self) -> tuple[int, int] | None:
        """The background pass: the policy's limits when automatic, else only the free-space floor."""
        policy = await asyncio.to_thread(self.policies.load)
        if not policy.enabled:
            return None
        if not policy.automatic:  # manual: limits wait for cleanup_old_files, the floor does not
            policy = Policy(policy.policy_type, True, None, None)
        return await asyncio.wait_for(asyncio.to_thread(self._retention_locked, policy, 0.0), THREAD_WAIT_CAP * 10)

    def _retention_locked(self, policy: Policy, wait: float) -> tuple[int, int] | None:
        """Run one retention pass under the cross-process lock; ``None`` if it is taken."""
        lock = FileLock(self.retention_lock_path)  # a fresh descriptor: flock excludes even within a process
        if not lock.acquire(timeout=wait):
            return None
        try:
            return self._retention_pass(policy)
        finally:
            lock.release()

    def _retention_pass(self, policy: Policy) -> tuple[int, int]:
        """Plan and delete (blocking: a thread; the caller holds the retention lock)."""
        now = time.time()
        free = self._usage().free
        min_free = self.config.storage.min_free_bytes
        count = freed = 0
        for kind in KINDS:
            active = self.active.names()
            candidates = (
                Candidate(r.kind, r.filename, r.size, r.mtime, is_recording(r.filename, r, active))
                for r in self.db.oldest_first(kind)
            )
            victims = plan(
                candidates,
                policy,
                now=now,
                recordings_bytes=self.db.total_bytes(RECORDING),
                free_bytes=free + freed,
                min_free_bytes=min_free,
            )
            for victim in victims:
                if self._closing.is_set():
                    return count, freed
                # Ask again right before each unlink: a recording may have started
                # on this name since planning (a caller-chosen filename).
                if is_recording(victim.filename, self.db.get(kind, victim.filename), self.active.names()):
                    continue
                try:
                    os.unlink(self.folders[kind] / victim.filename)
                except FileNotFoundError:
                    self.db.remove(kind, victim.filename)  # already gone: nothing freed
                    continue
                except OSError as exc:
                    self.log.warning("retention_delete_failed", kind=kind, filename=victim.filename, error=exc.strerror)
                    continue
                self.db.remove(kind, victim.filename)
                count += 1
                freed += victim.size
                self.log.info(
                    "retention_deleted",
                    kind=kind,
                    filename=victim.filename,
                    size=victim.size,
                    reason=victim.reason,
                    policy=policy.policy_type,
                )
        if count:
            self.log.info("retention_pass", files_deleted=count, space_freed=freed)
        return count, freed

    # --- index maintenance ---------------------------------------------------------------------

    async def rescan(self, full: bool = True) -> list[ScanResult]:
        """Reconcile the index with both folders (in a thread; one rescan at a time per process).

        ``full=False`` skips a folder whose own mtime is unchanged since the
        last scan: no entry was added, removed or renamed there, so at
        100,000 files the periodic job costs a ``stat`` instead of a walk.
        Files rewritten in place (same name, new size) wait for a full scan.
        """
        async with self._scan_lock:
            return await asyncio.wait_for(asyncio.to_thread(self._rescan_blocking, full), THREAD_WAIT_CAP * 10)

    def _rescan_blocking(self, full: bool) -> list[ScanResult]:
        started = time.monotonic()
        active = self.active.names()
        if active is not None:
            self.db.set_recording_flags(active)
        protect = active if active is not None else self.db.recording_names()
        results = []
        for kind, folder in self.folders.items():
            try:
                st = os.stat(folder)
                stamp = (st.st_ino, st.st_mtime_ns)
            except FileNotFoundError:
                stamp = None
            if not full and stamp is not None and self._folder_stamps.get(kind) == stamp:
                results.append(ScanResult(kind, skipped=True))
                continue
            # Taken before the walk: an entry changing during it moves the mtime
            # past this stamp, so the next quick scan walks again.
            self._folder_stamps[kind] = stamp
            results.append(self.db.reconcile(kind, folder, protect))
        for result in results:
            if result.added or result.changed or result.removed:
                self.log.info(
                    "index_reconciled",
                    kind=result.kind,
                    files=result.on_disk,
                    added=result.added,
                    changed=result.changed,
                    removed=result.removed,
                    seconds=round(time.monotonic() - started, 3),
                )
        return results

    async def _background_jobs(self) -> None:
        """Leader-only: rescan, storage thresholds and retention, on their intervals."""
        scan_every = self.config.storage.scan_interval
        check_every = min(STORAGE_CHECK_SECONDS, scan_every)
        next_scan = 0.0
        scans = 0
        while True:
            try:
                leader = await asyncio.wait_for(asyncio.to_thread(self.leader.acquire), 5.0)
            except (OSError, asyncio.TimeoutError) as exc:
                self.log.warning("leader_lock_failed", error=str(exc))
                leader = False
            woken = self._wake.is_set()
            self._wake.clear()  # also when not leader, or the wait below would spin
            if leader:
                now = time.monotonic()
                due = now >= next_scan or woken
                full = scans % FULL_SCAN_EVERY == 0  # the first scan as leader is a full one
                jobs = (
                    [lambda full=full: self.rescan(full), self.check_storage, self.enforce_retention]
                    if due
                    else [self.check_storage]
                )
                if due:
                    next_scan = now + scan_every
                    scans += 1
                for job in jobs:
                    try:
                        await job()
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # noqa: BLE001 - keep the loop alive; the next tick retries
                        self.log.exception("background_job_failed", job=getattr(job, "__name__", "rescan"))
            try:
                await asyncio.wait_for(self._wake.wait(), check_every)
            except asyncio.TimeoutError:
                pass
