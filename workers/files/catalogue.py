"""The file worker's read side: listing, info and download links.

Mixed into :class:`~camservice.workers.files.worker.FilesWorker`, which owns
the state named in the class body (the folders, the index, the camera
replica...). Listing reads the SQLite index (:mod:`.index`); info brings one
row in line with the disk and probes duration and resolution once per file
version; a file counts as being recorded while the recording worker's
``recording-active.json`` names it (:func:`is_recording`).
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from camservice.workers.base import CallContext

from camservice import ffmpeg
from camservice.active_files import ActiveFiles
from camservice.errors import file_not_found, invalid_params
from camservice.httpauth import LinkSigner, link_path
from camservice.replica import CameraReplica
from camservice.timestamps import utc_iso

from .blocking import in_thread
from .index import FileIndex, Row, ScanResult
from .names import RECORDING, SNAPSHOT, Escape, admitted, resolve_inside

URL_FOLDERS = {RECORDING: "recordings", SNAPSHOT: "snapshots"}
#: Pages up to this many rows (offset + limit) are read inline on the event
#: loop: an indexed read of that size takes well under a millisecond.
INLINE_ROWS = 2000
#: Longest a listing filtered by device waits for the camera replica's first snapshot.
CAMERAS_WAIT = 2.0
PROBE_TIMEOUT = 10.0


def is_recording(filename: str, row: Row | None, active: set[str] | None) -> bool:
    """Being recorded: ``recording-active.json`` decides while it exists, else the row's flag."""
    if active is not None:
        return filename in active
    return bool(row is not None and row.recording)


class Catalogue:
    """``list_*``, ``get_*_info`` and ``get_download_link`` (see the module docstring)."""

    # Set up by FilesWorker.__init__.
    config: Any
    log: Any
    folders: dict[str, Path]
    db: FileIndex
    active: ActiveFiles
    cameras: CameraReplica
    signer: LinkSigner
    url_base: str
    _probes: dict[tuple[str, str, int], asyncio.Future]
    _folder_fds: dict[str, int]
    #: Upkeep's: each folder's (inode, mtime) when this process last walked it.
    _folder_stamps: dict[str, tuple[int, int] | None]
    #: Upkeep's (reconcile the index with the folders).
    rescan: Callable[..., Awaitable[list[ScanResult]]]

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
        await self._catch_up_entries(kind)
        if offset + limit <= INLINE_ROWS:
            rows, total = self.db.listing(kind, limit, offset, camera_ids)
        else:  # a deep OFFSET walks that many index entries: keep it off the loop
            rows, total = await in_thread(ctx, self.db.listing, kind, limit, offset, camera_ids)
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

    async def _catch_up_entries(self, kind: str) -> None:
        """Files added or removed since this process last walked the folder: walk it now.

        A new file is indexed when the recording worker's ``_file_update``
        event arrives, but that event travels through the event bus, not
        the caller's path: a client that took a snapshot and lists at once
        could be answered before it. The folder's own mtime moves with every
        entry added, removed or renamed, so one ``stat`` per listing tells
        whether the index may lag; then the quick rescan (this folder only,
        at most once per change and per process) brings it up to date, files
        copied in by hand included.
        """
        try:
            st = os.stat(self.folders[kind])
        except OSError:
            return  # missing: _catch_up has unlisted it
        if self._folder_stamps.get(kind) != (st.st_ino, st.st_mtime_ns):
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
            entry["recording"] = is_recording(row.filename, row, active)
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
        await in_thread(ctx, self._refresh_row, kind, filename, path, self.active.names())  # -32010 if gone
        expires = int(time.time()) + params["expires_in"]
        target = link_path(URL_FOLDERS[kind], filename)
        return {
            "url": f"{self.url_base}{target}?{self.signer.sign(target, expires)}",
            "expires_at": utc_iso(expires, "seconds"),
        }

    # --- info ------------------------------------------------------------------------------

    async def get_recording_info(self, params: dict, ctx: CallContext) -> dict:
        return await self._info(RECORDING, params["filename"], ctx)

    async def get_snapshot_info(self, params: dict, ctx: CallContext) -> dict:
        return await self._info(SNAPSHOT, params["filename"], ctx)

    async def _info(self, kind: str, filename: str, ctx: CallContext) -> dict:
        path = self._resolve(kind, filename)
        active = self.active.names()
        row = await in_thread(ctx, self._refresh_row, kind, filename, path, active)
        recording = is_recording(filename, row, active)
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
            if row is not None and not is_recording(filename, row, active):
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

    # --- names and cameras -----------------------------------------------------------------

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
