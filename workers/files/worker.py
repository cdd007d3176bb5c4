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
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from camservice.workers.base import Worker, run_worker

from camservice import handoff, memtrace, tls, topics
from camservice.active_files import ActiveFiles, active_files_path
from camservice.cors import CorsPolicy
from camservice.envelope import Event
from camservice.httpauth import LinkSigner
from camservice.replica import CameraReplica
from camservice.tokens import load_or_create_secret

from .auth import make_authorizer
from .blocking import THREAD_WAIT_CAP
from .catalogue import Catalogue
from .deletion import Deletion
from .downloads import DownloadServer
from .index import FileIndex
from .names import KINDS, RECORDING, SNAPSHOT, Escape, admitted, resolve_inside
from .retention import FileLock, PolicyStore
from .storage import ThresholdMonitor
from .upkeep import Upkeep


class FilesWorker(Catalogue, Deletion, Upkeep, Worker):
    """The file worker process: its state, method table, lifecycle and events.

    The handlers live by job in :class:`~.catalogue.Catalogue` (listing,
    info, download links), :class:`~.deletion.Deletion` and
    :class:`~.upkeep.Upkeep` (storage, retention, rescans, background jobs).
    """

    kind = "files"
    subscriptions = (topics.FILE_UPDATE, topics.CAMERA_STATUS)
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
            # The budget is the service's: each file worker paces its share.
            budget=-(-config.files.download_budget // config.workers.files),  # rounded up: 0 stays 0
            priority=config.files.download_priority,
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
        # Blocking work (SQLite, disk) runs on a fixed pool of threads, so the index
        # keeps a fixed number of connections, and the threads share two malloc
        # arenas: each rescan's peak (as large as the folder) is then reused instead
        # of staying behind in every thread's own arena (camservice.allocator).
        # A thread per request it accepts at once, and two for what runs beside them (rescans, retention, probes).
        threads = self.capacity + 2
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(threads, thread_name_prefix="files-io"))
        for folder in self.folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        await asyncio.wait_for(asyncio.to_thread(self.db.open), THREAD_WAIT_CAP)
        await self._open_pool(threads)
        # A debug knob (MEMTRACE_DIR): where this process's memory goes, over time.
        memtrace.start_from_env(self.name, lambda: {"sqlite_connections": self.db.connections()})
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

    async def _open_pool(self, threads: int) -> None:
        """Start every pool thread and open its index connection now, not one by one under load.

        Each holds a job until all have started (a barrier), so the pool creates
        all its threads; the memory they take is then part of the start-up.
        """
        barrier = threading.Barrier(threads)

        def open_connection() -> None:
            self.db.count(RECORDING)  # opens this thread's connection
            try:
                barrier.wait(THREAD_WAIT_CAP)
            except threading.BrokenBarrierError:
                pass  # a slow start: the pool grows under load instead, as it may

        await asyncio.gather(*(asyncio.to_thread(open_connection) for _ in range(threads)))

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

    def stats(self) -> dict:
        """Totals for metrics: read from the trigger-maintained ``totals`` table
        (a handful of rows), so this costs microseconds on the loop."""
        try:
            figures: dict = {
                f"{kind}s_{what}": (self.db.total_bytes(kind) if what == "bytes" else self.db.count(kind))
                for kind in ("recording", "snapshot")
                for what in ("bytes", "files")
            }
            policy = self.policies.current()  # as last read or written: no disk access here
            if policy is not None:
                figures["retention"] = policy
            return figures
        except sqlite3.Error as exc:
            self.log.warning("stats_unavailable", error=str(exc))
            return {}

    # --- events ------------------------------------------------------------------------------

    async def on_event(self, event: Event) -> None:
        if event.topic == topics.FILE_UPDATE:
            await asyncio.wait_for(asyncio.to_thread(self._apply_file_update, event.data), THREAD_WAIT_CAP)
        elif event.topic == topics.CAMERA_STATUS:
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


def main(index: int) -> None:
    run_worker(FilesWorker, index)
