"""The file worker's ``delete_recording`` and ``delete_snapshot``.

Mixed into :class:`~camservice.workers.files.worker.FilesWorker`. A file
being recorded is refused (-32009); a file gone already is -32010 and leaves
the index; a read-only or unwritable folder is -32012 naming it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from camservice.workers.base import CallContext

from camservice import storage_errors
from camservice.active_files import ActiveFiles
from camservice.errors import IN_PROGRESS, INTERNAL_ERROR, RpcError, file_not_found

from .blocking import in_thread
from .catalogue import URL_FOLDERS, is_recording
from .index import FileIndex
from .names import RECORDING, SNAPSHOT

LABELS = {RECORDING: "Recording", SNAPSHOT: "Snapshot"}


class Deletion:
    """Deleting one file on a client's request (retention deletes in :mod:`.upkeep`)."""

    # Set up by FilesWorker.__init__; _resolve comes from Catalogue.
    log: Any
    db: FileIndex
    active: ActiveFiles
    #: Catalogue's (the path of a file name, -32602/-32010 for bad ones).
    _resolve: Callable[[str, str], Path]

    async def delete_recording(self, params: dict, ctx: CallContext) -> dict:
        return await self._delete(RECORDING, params["filename"], ctx)

    async def delete_snapshot(self, params: dict, ctx: CallContext) -> dict:
        return await self._delete(SNAPSHOT, params["filename"], ctx)

    async def _delete(self, kind: str, filename: str, ctx: CallContext) -> dict:
        path = self._resolve(kind, filename)
        row = self.db.get(kind, filename)
        if is_recording(filename, row, self.active.names()):
            raise RpcError(IN_PROGRESS, data={"filename": filename, "reason": "the file is being recorded"})
        try:
            await in_thread(ctx, _unlink_regular, path)
        except FileNotFoundError:
            await in_thread(ctx, self.db.remove, kind, filename)
            raise file_not_found(filename) from None
        except OSError as exc:
            self.log.warning("delete_failed", kind=kind, filename=filename, error=exc.strerror)
            if exc.errno in storage_errors.STORAGE_ERRNOS:  # read-only, not writable: -32012 naming it
                error = storage_errors.from_os_error(exc, URL_FOLDERS[kind])
                raise RpcError(error.code, data={**error.data, "filename": filename}) from None
            raise RpcError(INTERNAL_ERROR, data={"reason": f"could not delete: {exc.strerror}"}) from None
        await in_thread(ctx, self.db.remove, kind, filename)
        self.log.info("file_deleted", kind=kind, filename=filename, caller=ctx.caller.get("sub"))
        return {"filename": filename, "deleted": True, "message": f"{LABELS[kind]} deleted"}


def _unlink_regular(path: Path) -> None:
    """Remove ``path`` if it is a regular file; symlinks and folders count as missing."""
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise FileNotFoundError(str(path))
    os.unlink(path)
