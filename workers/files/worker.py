"""The file worker: listing, info, deletion, storage and retention, plus downloads.

Several file worker processes may run at once (``workers.files``); a
request goes to one of them, events reach all. Everything they share lives
on disk in ``state_dir/files/``:

* ``index.sqlite3``: the file index (:mod:`.index`), WAL mode;
* ``retention.json``: the retention policy (:mod:`.retention`);
* ``leader.lock``: whoever holds this ``flock`` runs the background jobs
  (rescan every ``storage.scan_interval``, storage threshold checks,
  retention). Every process tries to take it at every tick, so when the
  leader dies (the kernel drops its lock) another process takes over
  within one tick; while it lives, nobody publishes a duplicate
  ``storage_status_update``;
* ``retention.lock``: held while files are being deleted by retention
  (background or ``cleanup_old_files``, whichever process runs it).

Each process also serves HTTP downloads (:mod:`.downloads`) on its own
thread: connections the gateway hands over from the API port, and
``files.http_port`` when that option is set.

Being recorded: the recording worker's ``state_dir/run/recording-active.json``
is the authority (:mod:`camservice.active_files`); while it does not exist, the flags set by
``_file_update`` events decide.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from camservice.workers.base import CallContext, Worker, run_worker

from camservice import ffmpeg, handoff, storage_errors, tls
from camservice.active_files import ActiveFiles, active_files_path
from camservice.auth import load_or_create_secret
from camservice.cors import CorsPolicy
from camservice.envelope import Event
from camservice.errors import IN_PROGRESS, INTERNAL_ERROR, SERVICE_BUSY, RpcError, file_not_found, invalid_params
from camservice.httpauth import LinkSigner, link_path
from camservice.replica import CameraReplica
from camservice.timestamps import utc_iso

from .auth import make_authorizer
from .downloads import DownloadServer
from .index import FileIndex, Row, ScanResult
from .names import KINDS, RECORDING, SNAPSHOT, Escape, admitted, resolve_inside
from .retention import Candidate, FileLock, Policy, PolicyStore, plan
from .storage import ThresholdMonitor, Usage, storage_info

URL_FOLDERS = {RECORDING: "recordings", SNAPSHOT: "snapshots"}
LABELS = {RECORDING: "Recording", SNAPSHOT: "Snapshot"}
#: Pages up to this many rows (offset + limit) are read inline on the event
#: loop: an indexed read of that size takes well under a millisecond.
INLINE_ROWS = 2000
#: Longest a listing filtered by device waits for the camera replica's first snapshot.
CAMERAS_WAIT = 2.0
#: Storage thresholds are checked this often (at most), rescans every scan_interval.
STORAGE_CHECK_SECONDS = 10.0
PROBE_TIMEOUT = 10.0
#: Every this many periodic rescans walks the folders even when their mtime says nothing changed.
FULL_SCAN_EVERY = 10
#: Longest a handler waits for a thread (disk, SQLite) when the call's deadline allows more.
THREAD_WAIT_CAP = 30.0


class FilesWorker(Worker):
    kind = "files"
    subscriptions = ("_file_update", "camera_status_update")
    #: Rescans, retention and storage checks on a timer; unit tests turn them off.
    background_jobs = True

    def __init__(self, config, index: int = 0):
        super().__init__(config, index)
        self.capacity = config.workers.files_concurrency
        self.folders: dict[str, Path] = {RECORDING: config.recordings_dir, SNAPSHOT: config.snapshots_dir}
        state = config.state_dir / "files"
        self.db = FileIndex(state / "index.sqlite3")
        self.active = ActiveFiles(active_files_path(config.state_dir), self.log)
        self.policies = PolicyStore(state / "retention.json")
        self.retention_lock_path = state / "retention.lock"
        self.leader = FileLock(state / "leader.lock")
        self.monitor = ThresholdMonitor(
            config.storage.warn_percent, config.storage.critical_percent, config.storage.min_free_bytes
        )
        self.http = DownloadServer(
            self.folders,
            config.server.host,
            config.files.http_port,
            authorize=make_authorizer(config),
            cors=CorsPolicy(config.server.cors_origins),
            handoff_path=handoff.socket_path(config.state_dir / "run", index),
            ssl_context=tls.server_context(config) if config.files.http_port is not None else None,
            head_timeout=config.server.header_timeout,
            max_pending=config.server.max_pending,
            max_pending_per_address=config.server.max_pending_per_address,
            log=self.log.bind(part="http"),
            rate_limit=config.files.download_rate_limit,
        )
        self.signer = LinkSigner(load_or_create_secret(config))
        #: ``shutil.disk_usage``-like callable; tests substitute a fake disk.
        self.disk_usage: Callable[[Path], Any] = shutil.disk_usage
        scheme = "https" if config.server.tls.cert_file else "http"
        host = config.public_host
        url_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        #: Downloads are served on the API's own host and port (the contract, Files).
        self.url_base = f"{scheme}://{url_host}:{config.server.port}"
        #: The discovery worker's cameras: a device filter names a camera, a row names its device.
        self.cameras = CameraReplica(lambda: self.call("discovery.snapshot", {}, timeout=2.0), log=self.log)
        self._scan_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._probes: dict[tuple[str, str, int], asyncio.Future] = {}
        self._jobs: asyncio.Task | None = None
        self._folder_stamps: dict[str, tuple[int, int] | None] = {}
        #: Each folder held open, to notice its deletion (see _catch_up).
        self._folder_fds: dict[str, int] = {}
        #: Set by stop(): a retention pass still running in its thread stops deleting.
        self._closing = threading.Event()

    def handlers(self):
        return {
            "list_recordings": self.list_recordings,
            "list_snapshots": self.list_snapshots,
            "get_recording_info": self.get_recording_info,
            "get_snapshot_info": self.get_snapshot_info,
            "delete_recording": self.delete_recording,
            "delete_snapshot": self.delete_snapshot,
            "get_storage_info": self.get_storage_info,
            "set_retention_policy": self.set_retention_policy,
            "cleanup_old_files": self.cleanup_old_files,
            "get_download_link": self.get_download_link,
        }

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        for folder in self.folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        await asyncio.wait_for(asyncio.to_thread(self.db.open), THREAD_WAIT_CAP)
        try:
            port = await asyncio.to_thread(self.http.start)
            self.log.info("download_server_started", port=port, handoff=str(self.http.handoff_path))
        except (OSError, RuntimeError) as exc:
            # JSON-RPC still works without downloads; the gateway's proxy and
            # health checks will show the port as unreachable.
            self.log.error("download_server_unavailable", port=self.config.files.http_port, error=str(exc))
        if self.background_jobs:
            self._jobs = self.spawn(self._background_jobs())
        self.spawn(self.cameras.request_snapshot())  # retried until discovery answers

    async def stop(self) -> None:
        self._closing.set()
        self.cameras.close()
        if self._jobs is not None:
            self._jobs.cancel()
            await asyncio.wait([self._jobs], timeout=5.0)
        await asyncio.wait_for(asyncio.to_thread(self.http.stop), 10.0)
        self.leader.release()
        self.db.close()
        for fd in self._folder_fds.values():
            os.close(fd)
        self._folder_fds.clear()

    # --- listing -----------------------------------------------------------------------------

    async def list_recordings(self, params: dict, ctx: CallContext) -> dict:
        return await self._list(RECORDING, params, ctx)

    async def list_snapshots(self, params: dict, ctx: CallContext) -> dict:
        return await self._list(SNAPSHOT, params, ctx)

    async def _list(self, kind: str, params: dict, ctx: CallContext) -> dict:
        limit = params.get("limit") or 100
        offset = params.get("offset") or 0
        device = params.get("device")
        camera_ids = await self._camera_ids(device, ctx) if device is not None else None
        await self._catch_up(kind)
        if offset + limit <= INLINE_ROWS:
            rows, total = self.db.listing(kind, limit, offset, camera_ids)
        else:  # a deep OFFSET walks that many index entries: keep it off the loop
            rows, total = await self._thread(ctx, self.db.listing, kind, limit, offset, camera_ids)
        active = self.active.names()
        return {"files": [self._entry(row, active) for row in rows], "total": total, "limit": limit, "offset": offset}

    async def _catch_up(self, kind: str) -> None:
        """A folder deleted behind our back (``rm -r``, even if made again since):
        unlist its files now, not at the next periodic rescan.

        The worker holds the folder open; a deleted folder's link count drops
        to 0, which one ``fstat`` per listing sees (an inode number could be
        reused by the folder made again; the open folder cannot). A single
        file deleted by hand still waits for the rescan, or an info or
        download call noticing it.
        """
        fd = self._folder_fds.get(kind)
        if fd is not None and os.fstat(fd).st_nlink > 0:
            return
        stale = fd is not None
        if fd is not None:
            os.close(self._folder_fds.pop(kind))
            self.log.warning("folder_deleted", kind=kind)
        try:
            self._folder_fds[kind] = os.open(self.folders[kind], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            stale = True  # missing: whatever the index holds is gone
        if stale:
            await self.rescan(full=False)

    def _entry(self, row: Row, active: set[str] | None) -> dict:
        entry: dict[str, Any] = {
            "filename": row.filename,
            "file_size": row.size,
            "modified_time": utc_iso(row.mtime, "seconds"),
            "download_url": self.download_url(row.kind, row.filename),
        }
        camera = self.cameras.find(row.camera_id) if row.camera_id and not row.device else None
        device = row.device or (camera.device if camera is not None else None)
        if device:
            entry["device"] = device
        if row.camera_id:
            entry["camera_id"] = row.camera_id
        if row.kind == RECORDING:
            if row.duration is not None:
                entry["duration"] = round(row.duration, 3)
            entry["recording"] = self._is_recording(row.filename, row, active)
        elif row.resolution:
            entry["resolution"] = row.resolution
        return entry

    def download_url(self, kind: str, filename: str) -> str:
        """Where this file is downloaded: the API's own host and port, which hands it to a file worker."""
        return self.url_base + link_path(URL_FOLDERS[kind], filename)

    async def get_download_link(self, params: dict, ctx: CallContext) -> dict:
        """A URL carrying its own signature (HMAC over path and expiry) for clients that cannot set headers."""
        kind = RECORDING if params["kind"] == "recordings" else SNAPSHOT
        filename = params["filename"]
        path = self._resolve(kind, filename)
        await self._thread(ctx, self._refresh_row, kind, filename, path, self.active.names())  # -32010 if gone
        expires = int(time.time()) + params["expires_in"]
        target = link_path(URL_FOLDERS[kind], filename)
        return {
            "url": f"{self.url_base}{target}?{self.signer.sign(target, expires)}",
            "expires_at": utc_iso(expires, "seconds"),
        }

    @staticmethod
    def _is_recording(filename: str, row: Row | None, active: set[str] | None) -> bool:
        if active is not None:
            return filename in active
        return bool(row is not None and row.recording)

    # --- info --------------------------------------------------------------------------------

    async def get_recording_info(self, params: dict, ctx: CallContext) -> dict:
        return await self._info(RECORDING, params["filename"], ctx)

    async def get_snapshot_info(self, params: dict, ctx: CallContext) -> dict:
        return await self._info(SNAPSHOT, params["filename"], ctx)

    async def _info(self, kind: str, filename: str, ctx: CallContext) -> dict:
        path = self._resolve(kind, filename)
        active = self.active.names()
        row = await self._thread(ctx, self._refresh_row, kind, filename, path, active)
        recording = self._is_recording(filename, row, active)
        if not recording and row.probed_ns != row.mtime_ns:
            row = await self._probe(row, path, ctx)
        entry = self._entry(row, active)
        if row.started is not None:
            created = row.started
        elif row.duration is not None:
            created = row.mtime - row.duration
        else:
            created = row.mtime
        entry["created_time"] = utc_iso(created, "seconds")
        return entry

    def _refresh_row(self, kind: str, filename: str, path: Path, active: set[str] | None) -> Row:
        """The row of a file, brought in line with the disk (blocking: a thread).

        Only regular files are ours (the index never lists a symlink), so
        ``lstat``: a symlink that stays inside the folder is "not found".
        """
        row = self.db.get(kind, filename)
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                raise FileNotFoundError(filename)
        except FileNotFoundError:
            if row is not None and not self._is_recording(filename, row, active):
                self.db.remove(kind, filename)  # deleted behind our back
            raise file_not_found(filename) from None
        if row is None or (row.size, row.mtime_ns) != (st.st_size, st.st_mtime_ns):
            self.db.upsert(kind, filename, size=st.st_size, mtime_ns=st.st_mtime_ns)
            row = self.db.get(kind, filename)
        return row

    async def _probe(self, row: Row, path: Path, ctx: CallContext) -> Row:
        """Probe duration/resolution once per file version; concurrent askers share one probe."""
        key = (row.kind, row.filename, row.mtime_ns)
        future = self._probes.get(key)
        if future is None:
            future = asyncio.ensure_future(self._probe_and_store(row, path))
            self._probes[key] = future
            future.add_done_callback(lambda _f: self._probes.pop(key, None))
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(0.1, min(PROBE_TIMEOUT, ctx.remaining() - 0.5)))
        except asyncio.TimeoutError:
            return row  # answer without duration rather than not at all; the probe finishes and caches

    async def _probe_and_store(self, row: Row, path: Path) -> Row:
        try:
            exe = ffmpeg.locate(self.config.media.ffmpeg_path)
            info = await ffmpeg.probe_async(path, exe, PROBE_TIMEOUT)
            duration, resolution = info.duration, info.resolution
        except ffmpeg.FFmpegNotFound as exc:
            self.log.warning("probe_unavailable", error=str(exc))
            return row  # not cached: ffmpeg may be installed later
        except (ffmpeg.ProbeError, OSError) as exc:
            self.log.info("probe_failed", filename=row.filename, error=str(exc))
            duration, resolution = None, None  # cached as "unknown" for this file version
        if row.kind == SNAPSHOT:
            duration = None  # an image "lasts" 0.04 s: not a duration anyone wants
        await asyncio.to_thread(self.db.set_probe, row.kind, row.filename, row.mtime_ns, duration, resolution)
        return await asyncio.to_thread(self.db.get, row.kind, row.filename) or row

    # --- deletion ----------------------------------------------------------------------------

    async def delete_recording(self, params: dict, ctx: CallContext) -> dict:
        return await self._delete(RECORDING, params["filename"], ctx)

    async def delete_snapshot(self, params: dict, ctx: CallContext) -> dict:
        return await self._delete(SNAPSHOT, params["filename"], ctx)

    async def _delete(self, kind: str, filename: str, ctx: CallContext) -> dict:
        path = self._resolve(kind, filename)
        row = self.db.get(kind, filename)
        if self._is_recording(filename, row, self.active.names()):
            raise RpcError(IN_PROGRESS, data={"filename": filename, "reason": "the file is being recorded"})
        try:
            await self._thread(ctx, _unlink_regular, path)
        except FileNotFoundError:
            await self._thread(ctx, self.db.remove, kind, filename)
            raise file_not_found(filename) from None
        except OSError as exc:
            self.log.warning("delete_failed", kind=kind, filename=filename, error=exc.strerror)
            if exc.errno in storage_errors.STORAGE_ERRNOS:  # read-only, not writable: -32012 naming it
                error = storage_errors.from_os_error(exc, URL_FOLDERS[kind])
                raise RpcError(error.code, data={**error.data, "filename": filename}) from None
            raise RpcError(INTERNAL_ERROR, data={"reason": f"could not delete: {exc.strerror}"}) from None
        await self._thread(ctx, self.db.remove, kind, filename)
        self.log.info("file_deleted", kind=kind, filename=filename, caller=ctx.caller.get("sub"))
        return {"filename": filename, "deleted": True, "message": f"{LABELS[kind]} deleted"}

    def _resolve(self, kind: str, filename: str) -> Path:
        """The path of ``filename`` in its folder (not following a final symlink).

        -32602 when the name, or a symlink of that name, leads out of the
        folder; -32010 when the name is not one the folder's index admits.
        """
        try:
            resolve_inside(self.folders[kind], filename)
        except Escape as exc:
            raise invalid_params(str(exc), "filename") from None
        if not admitted(kind, filename):
            raise file_not_found(filename)
        return Path(os.path.realpath(self.folders[kind])) / filename

    # --- storage -----------------------------------------------------------------------------

    async def get_storage_info(self, params: dict, ctx: CallContext) -> dict:
        usage = await self._thread(ctx, self._usage)
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
            self.publish("storage_status_update", data)
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
        await self._thread(ctx, self.policies.save, policy)
        self.log.info("retention_policy_set", caller=ctx.caller.get("sub"), **policy.to_dict())
        self._wake.set()  # the leader (if it is us) applies it now rather than at the next tick
        return {**policy.to_dict(), "message": "Retention policy updated"}

    async def cleanup_old_files(self, params: dict, ctx: CallContext) -> dict:
        policy = await self._thread(ctx, self.policies.load)
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
        outcome = await self._thread(ctx, self._retention_locked, policy, wait, cap=ctx.remaining())
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
                Candidate(r.kind, r.filename, r.size, r.mtime, self._is_recording(r.filename, r, active))
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
                if self._is_recording(victim.filename, self.db.get(kind, victim.filename), self.active.names()):
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

    def stats(self) -> dict:
        """Totals for metrics: read from the trigger-maintained ``totals`` table
        (a handful of rows), so this costs microseconds on the loop."""
        try:
            return {
                f"{kind}s_{what}": (self.db.total_bytes(kind) if what == "bytes" else self.db.count(kind))
                for kind in ("recording", "snapshot")
                for what in ("bytes", "files")
            }
        except sqlite3.Error as exc:
            self.log.warning("stats_unavailable", error=str(exc))
            return {}

    # --- events ------------------------------------------------------------------------------

    async def on_event(self, event: Event) -> None:
        if event.topic == "_file_update":
            await asyncio.wait_for(asyncio.to_thread(self._apply_file_update, event.data), THREAD_WAIT_CAP)
        elif event.topic == "camera_status_update":
            self.cameras.on_event(event)

    def _apply_file_update(self, data: dict) -> None:
        """Bring one file's row up to date after the recording worker's news (blocking)."""
        kind, filename, state = data.get("kind"), data.get("filename"), data.get("state")
        if kind not in KINDS or not isinstance(filename, str) or not admitted(kind, filename):
            self.log.warning("file_update_ignored", kind=kind, filename=filename)
            return
        try:
            path = resolve_inside(self.folders[kind], filename)
        except Escape:
            self.log.warning("file_update_ignored", kind=kind, filename=filename, reason="outside folder")
            return
        camera_id, device = data.get("camera_id"), data.get("device")
        recording = state == "recording"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is None:
            if recording:  # announced before ffmpeg created it: list it, size unknown yet
                self.db.upsert(
                    kind,
                    filename,
                    size=int(data.get("size") or 0),
                    mtime_ns=time.time_ns(),
                    camera_id=camera_id,
                    device=device,
                    recording=True,
                )
            else:
                self.db.remove(kind, filename)
            return
        duration = data.get("duration") if state == "complete" else None
        self.db.upsert(
            kind,
            filename,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            camera_id=camera_id,
            device=device,
            duration=duration,
            probed_ns=st.st_mtime_ns if duration is not None else None,
            recording=recording,
        )

    # --- cameras -------------------------------------------------------------------------------

    async def _camera_ids(self, device: str, ctx: CallContext) -> set[str]:
        """The camera ids a ``device`` filter stands for (none: nothing matches).

        A device path (``/dev/video0``, ``sim:0``) cannot be a camera id taken
        from a file name (``/`` and ``:`` are not allowed there), so it maps to
        its camera's id alone; anything else is taken as a camera id. One id
        keeps the query on the covering ``(kind, camera_id, mtime)`` index.
        """
        if "/" not in device and ":" not in device:
            return {device}
        camera = self.cameras.find(device)
        if camera is None and await self.cameras.wait_loaded(min(CAMERAS_WAIT, max(0.0, ctx.remaining() - 1.0))):
            camera = self.cameras.find(device)
        return {camera.id} if camera is not None else set()

    # --- helpers -------------------------------------------------------------------------------

    async def _thread(self, ctx: CallContext, func: Callable, *args, cap: float = THREAD_WAIT_CAP):
        """Run blocking work in a thread, waiting no longer than the call is worth."""
        timeout = max(0.1, min(cap, ctx.remaining()))
        try:
            return await asyncio.wait_for(asyncio.to_thread(func, *args), timeout)
        except asyncio.TimeoutError:
            raise RpcError(SERVICE_BUSY, data={"reason": "storage did not answer in time"}) from None


def _unlink_regular(path: Path) -> None:
    """Remove ``path`` if it is a regular file; symlinks and folders count as missing."""
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise FileNotFoundError(str(path))
    os.unlink(path)


def main(index: int) -> None:
    run_worker(FilesWorker, index)
