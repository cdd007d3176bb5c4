"""The file index: one SQLite row per recording or snapshot.

Listing 100,000 files by scanning the folder on every call would cost a
``stat`` per file per request; instead every file worker process reads one
shared SQLite database in WAL mode (readers never wait for the writer, and
several processes may open it at once). The index is a cache of the
folders, never the truth: a rescan rebuilds it, and a database that cannot
be opened is moved aside and recreated.

* Ordering ("newest first") uses the index ``(kind, mtime_ns, filename)``,
  so ``LIMIT 100`` reads 100 index entries whatever the table size.
* ``totals`` keeps the row count and byte sum per ``(kind, camera_id)``,
  maintained by triggers, so ``total`` and the storage sums are O(cameras),
  not O(files).
* Durations and resolutions are cached together with the mtime they were
  probed at (``probed_ns``); a file that changed is probed again.

Thread use: a :class:`FileIndex` hands each thread its own connection
(sqlite3 connections must not be shared between threads). Writes take
``BEGIN IMMEDIATE`` and may wait up to ``busy_timeout`` for another
process's write, so async callers run them in a thread; small indexed reads
are fine inline (a WAL reader does not wait for writers). The file worker
runs its blocking work on a fixed pool of threads (``workers.files_concurrency``
+ 2), so the index holds at most that many connections plus the event
loop's.

Memory: each connection's page cache is capped at :data:`CACHE_KIB` (see
there). A rescan builds structures as large as the folder (one entry per
file), which is why :class:`DiskFile` and :class:`Row` have slots.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .names import KINDS, admitted, parse_name
from .schema import SCHEMA_VERSION, schema_statements

BUSY_TIMEOUT_MS = 5000
#: Page cache per connection, in KiB: a bounded cache, not a leak. In WAL mode a
#: connection drops its whole cache when it starts reading after another connection
#: (of any process) committed, and this index takes a write every few seconds, so a
#: large cache buys little; bounded, the page caches of all connections together stay
#: under CACHE_KIB x connections whatever the index's size (SQLite's default is 2000).
CACHE_KIB = 1024
#: Rows per write transaction during a rescan, so other processes' writes
#: (a delete, an event) wait milliseconds, not the whole rescan.
SCAN_BATCH = 2000
#: Files of a folder walk looked up in the index by one query (below SQLite's
#: oldest limit of 999 bound parameters).
LOOKUP_BATCH = 500
_LOOKUP = "SELECT filename, size, mtime_ns FROM files WHERE kind = ? AND filename IN (%s)" % ", ".join(
    "?" * LOOKUP_BATCH
)

_COLUMNS = (
    "kind",
    "filename",
    "camera_id",
    "device",
    "started",
    "mtime_ns",
    "size",
    "duration",
    "resolution",
    "probed_ns",
    "recording",
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM files"


@dataclass(frozen=True, slots=True)
class Row:
    kind: str
    filename: str
    camera_id: str | None
    device: str | None
    started: float | None
    mtime_ns: int
    size: int
    duration: float | None
    resolution: str | None
    probed_ns: int | None
    recording: bool

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9


def _row(values: tuple) -> Row:
    *head, recording = values
    return Row(*head, bool(recording))


@dataclass(frozen=True, slots=True)
class DiskFile:
    """What one ``stat`` says about a file in a folder."""

    filename: str
    size: int
    mtime_ns: int


@dataclass
class ScanResult:
    kind: str
    on_disk: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    skipped: bool = False  # the folder had not changed since the last scan


def walk_folder(kind: str, folder: Path) -> Iterator[DiskFile]:
    """Every admitted regular file directly in ``folder``, one at a time (blocking: run in a thread).

    Symlinks are skipped: the index lists what the service stores, and a
    link could point anywhere. A missing folder has no files.
    """
    try:
        entries = os.scandir(folder)
    except FileNotFoundError:
        return
    with entries:
        for entry in entries:
            if not admitted(kind, entry.name):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # deleted while we looked
                continue
            yield DiskFile(entry.name, st.st_size, st.st_mtime_ns)


class FileIndex:
    """The shared SQLite index; safe to use from several threads and processes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()

    # --- connections ---------------------------------------------------------------

    def open(self) -> None:
        """Create the database (or move an unreadable one aside); blocking."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._prepare()
        except sqlite3.DatabaseError:
            # The index is only a cache of the folders: start afresh, keep the
            # broken file for a post-mortem.
            self.close()
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for suffix in ("", "-wal", "-shm"):
                old = Path(f"{self.path}{suffix}")
                if old.exists():
                    old.rename(f"{self.path}.corrupt-{stamp}{suffix}")
            self._prepare()

    def _prepare(self) -> None:
        db = self._db()
        with self._write(db):
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                # A different layout from another release: it is a cache, rebuild it.
                for table in ("files", "totals"):
                    db.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in schema_statements():
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # WAL: readers in every process go on while one writes. NORMAL sync
            # is durable enough for a cache and much cheaper per commit.
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            self._local.db = db
            with self._all_lock:
                self._all.append(db)
        return db

    def connections(self) -> int:
        """How many SQLite connections are open (one per thread that used the index)."""
        with self._all_lock:
            return len(self._all)

    class _write:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error)."""

        def __init__(self, db: sqlite3.Connection):
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type, exc, tb) -> None:
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def close(self) -> None:
        with self._all_lock:
            connections, self._all = self._all, []
        for db in connections:
            try:
                db.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    # --- reads -----------------------------------------------------------------------

    def get(self, kind: str, filename: str) -> Row | None:
        values = self._db().execute(f"{_SELECT} WHERE kind = ? AND filename = ?", (kind, filename)).fetchone()
        return _row(values) if values else None

    def page(self, kind: str, limit: int, offset: int, camera_ids: Iterable[str] | None = None) -> list[Row]:
        """Newest first (mtime, then name, both descending), ``limit`` rows from ``offset``.

        The inner query walks only the secondary index (it holds the primary
        key, so it is covering): skipping 100,000 entries of a deep ``OFFSET``
        then costs a few ms instead of 100,000 row lookups.
        """
        where, args = "kind = ?", [kind]
        if camera_ids is not None:
            ids = sorted(set(camera_ids))
            if not ids:
                return []
            where += f" AND camera_id IN ({', '.join('?' * len(ids))})"
            args += ids
        # CROSS JOIN fixes the join order: the page first, then one primary-key
        # lookup per row of the page.
        cursor = self._db().execute(
            f"SELECT {', '.join('f.' + c for c in _COLUMNS)} FROM "
            f"(SELECT filename FROM files WHERE {where} ORDER BY mtime_ns DESC, filename DESC "
            f"LIMIT ? OFFSET ?) AS p CROSS JOIN files AS f ON f.kind = ? AND f.filename = p.filename "
            f"ORDER BY f.mtime_ns DESC, f.filename DESC",
            (*args, limit, offset, kind),
        )
        return [_row(values) for values in cursor]

    def listing(
        self, kind: str, limit: int, offset: int, camera_ids: Iterable[str] | None = None
    ) -> tuple[list[Row], int]:
        """One page and the matching total, read from one consistent snapshot."""
        db = self._db()
        db.execute("BEGIN")  # a WAL read transaction: page and total agree
        try:
            return self.page(kind, limit, offset, camera_ids), self.count(kind, camera_ids)
        finally:
            db.execute("COMMIT")

    def count(self, kind: str, camera_ids: Iterable[str] | None = None) -> int:
        if camera_ids is None:
            value = self._db().execute("SELECT SUM(files) FROM totals WHERE kind = ?", (kind,)).fetchone()[0]
        else:
            ids = sorted(set(camera_ids))
            if not ids:
                return 0
            marks = ", ".join("?" * len(ids))
            value = (
                self._db()
                .execute(f"SELECT SUM(files) FROM totals WHERE kind = ? AND camera_id IN ({marks})", (kind, *ids))
                .fetchone()[0]
            )
        return int(value or 0)

    def total_bytes(self, kind: str) -> int:
        value = self._db().execute("SELECT SUM(bytes) FROM totals WHERE kind = ?", (kind,)).fetchone()[0]
        return int(value or 0)

    def oldest_first(self, kind: str, batch: int = 500) -> Iterator[Row]:
        """Every row of ``kind``, oldest first, fetched lazily (blocking: a thread).

        Uses keyset pagination instead of one long cursor, so no read
        transaction stays open while the caller deletes files and rows.
        """
        db = self._db()
        after: tuple[int, str] | None = None
        while True:
            if after is None:
                cursor = db.execute(f"{_SELECT} WHERE kind = ? ORDER BY mtime_ns, filename LIMIT ?", (kind, batch))
            else:
                cursor = db.execute(
                    f"{_SELECT} WHERE kind = ? AND (mtime_ns, filename) > (?, ?) ORDER BY mtime_ns, filename LIMIT ?",
                    (kind, *after, batch),
                )
            rows = [_row(values) for values in cursor]
            yield from rows
            if len(rows) < batch:
                return
            after = (rows[-1].mtime_ns, rows[-1].filename)

    def recording_names(self) -> set[str]:
        """Names flagged as being recorded by ``_file_update`` events."""
        return {name for (name,) in self._db().execute("SELECT filename FROM files WHERE recording = 1")}

    # --- writes (blocking; may wait for another process's write) --------------------------

    def upsert(
        self,
        kind: str,
        filename: str,
        *,
        size: int,
        mtime_ns: int,
        camera_id: str | None = None,
        device: str | None = None,
        duration: float | None = None,
        probed_ns: int | None = None,
        recording: bool | None = None,
    ) -> None:
        """Insert or refresh one file; ``None`` keeps what the row already has."""
        parsed = parse_name(filename)
        camera_id = camera_id or parsed.camera_id
        with self._write(self._db()) as db:
            db.execute(
                """INSERT INTO files (kind, filename, camera_id, device, started, mtime_ns, size,
                                      duration, probed_ns, recording)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (kind, filename) DO UPDATE SET
                       camera_id = IFNULL(excluded.camera_id, camera_id),
                       device    = IFNULL(excluded.device, device),
                       mtime_ns  = excluded.mtime_ns,
                       size      = excluded.size,
                       duration  = IFNULL(excluded.duration, duration),
                       probed_ns = IFNULL(excluded.probed_ns, probed_ns),
                       recording = IFNULL(?, recording)""",
                (
                    kind,
                    filename,
                    camera_id,
                    device,
                    parsed.started,
                    mtime_ns,
                    size,
                    duration,
                    probed_ns,
                    int(bool(recording)),
                    None if recording is None else int(recording),
                ),
            )

    def set_probe(
        self, kind: str, filename: str, probed_ns: int, duration: float | None, resolution: str | None
    ) -> None:
        with self._write(self._db()) as db:
            db.execute(
                "UPDATE files SET probed_ns = ?, duration = ?, resolution = ? WHERE kind = ? AND filename = ?",
                (probed_ns, duration, resolution, kind, filename),
            )

    def remove(self, kind: str, filename: str) -> bool:
        with self._write(self._db()) as db:
            return db.execute("DELETE FROM files WHERE kind = ? AND filename = ?", (kind, filename)).rowcount > 0

    def set_recording_flags(self, active: set[str]) -> int:
        """Make the ``recording`` flags match the recording worker's active list."""
        with self._write(self._db()) as db:
            flagged = {name for (name,) in db.execute("SELECT filename FROM files WHERE recording = 1")}
            stale = flagged - active
            fresh = active - flagged
            # "kind IN (...)" lets each update use the primary key instead of a table scan.
            db.executemany(
                "UPDATE files SET recording = 0 WHERE kind IN (?, ?) AND filename = ?", [(*KINDS, n) for n in stale]
            )
            db.executemany(
                "UPDATE files SET recording = 1 WHERE kind IN (?, ?) AND filename = ?", [(*KINDS, n) for n in fresh]
            )
            return len(stale) + len(fresh)

    def reconcile(self, kind: str, folder: Path, protect: set[str] = frozenset()) -> ScanResult:
        """Make the rows of ``kind`` match the folder (blocking: run in a thread).

        Rows whose file vanished are removed unless the file is in
        ``protect`` (being recorded: it may not exist yet); a row that looks
        vanished is checked once more on disk before removal, because a
        ``_file_update`` may have added it after the folder was listed.
        """
        # Nothing here grows with the folder: a rescan runs after every change of
        # a folder, so its peak should not depend on how many files the folder
        # holds (it was ~200 bytes per file). The files on disk are looked up by
        # key, a batch at a time; the rows without a file are looked for only
        # when the index holds more rows than the walk matched.
        result = ScanResult(kind)
        db = self._db()
        upserts: list[DiskFile] = []
        matched = 0
        walk = walk_folder(kind, folder)
        while batch := list(itertools.islice(walk, LOOKUP_BATCH)):
            result.on_disk += len(batch)
            # Always LOOKUP_BATCH parameters, the last batch padded with NULL (which
            # matches nothing): one SQL text, so one prepared statement per
            # connection. A text per batch length filled sqlite3's statement cache
            # (128 per connection) with large statements: +200 MB/h in an endurance run.
            names = [found.filename for found in batch]
            names += [None] * (LOOKUP_BATCH - len(names))
            known = {name: (size, mtime_ns) for name, size, mtime_ns in db.execute(_LOOKUP, (kind, *names))}
            matched += len(known)
            for found in batch:
                seen = known.get(found.filename)
                if seen is None:
                    upserts.append(found)
                elif (found.size, found.mtime_ns) != seen:
                    result.changed += 1
                    upserts.append(found)
        result.added = len(upserts) - result.changed
        gone: list[str] = []
        if self.count(kind) > matched:
            gone = [
                name
                for (name,) in db.execute("SELECT filename FROM files WHERE kind = ?", (kind,))
                if name not in protect and not os.path.lexists(os.path.join(folder, name))
            ]
        result.removed = len(gone)
        # Primary-key order: each batch appends to the B-tree instead of
        # touching pages all over it (scandir order is the directory's hash order).
        upserts.sort(key=lambda f: f.filename)
        for start in range(0, len(upserts), SCAN_BATCH):
            chunk = upserts[start : start + SCAN_BATCH]
            with self._write(self._db()) as db:
                db.executemany(
                    """INSERT INTO files (kind, filename, camera_id, started, mtime_ns, size)
                       VALUES (?, ?, ?, ?, ?, ?)
                       ON CONFLICT (kind, filename) DO UPDATE SET
                           mtime_ns = excluded.mtime_ns, size = excluded.size""",
                    [(kind, f.filename, *_parsed(f.filename), f.mtime_ns, f.size) for f in chunk],
                )
        for start in range(0, len(gone), SCAN_BATCH):
            with self._write(self._db()) as db:
                db.executemany(
                    "DELETE FROM files WHERE kind = ? AND filename = ?",
                    [(kind, name) for name in gone[start : start + SCAN_BATCH]],
                )
        return result


def _parsed(filename: str) -> tuple[str | None, float | None]:
    parsed = parse_name(filename)
    return parsed.camera_id, parsed.started
