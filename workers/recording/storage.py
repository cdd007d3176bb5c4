"""The free-space floor (``storage.min_free_bytes``) for snapshots and recordings."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from camservice.errors import STORAGE_FULL, RpcError


def _free(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except FileNotFoundError:  # removed behind our back: it is about to be written to
        folder.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(folder).free


async def free_bytes(folder: Path) -> int:
    # statvfs on a hung network mount blocks: keep it off the loop.
    return await asyncio.to_thread(_free, folder)


async def ensure_space(folder: Path, min_free: int) -> None:
    """Raise -32007 when ``folder``'s file system is below the floor."""
    free = await free_bytes(folder)
    if free < min_free:
        raise RpcError(
            STORAGE_FULL,
            data={
                "reason": f"only {free} bytes free, {min_free} required",
                "free_bytes": free,
                "min_free_bytes": min_free,
            },
        )
