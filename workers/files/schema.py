"""The file index's SQLite schema: tables, indexes and the triggers that keep ``totals``.

See :mod:`.index` for how the schema is used; :func:`schema_statements`
gives the statements one by one, for creation inside a transaction.
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    kind        TEXT    NOT NULL,           -- 'recording' | 'snapshot'
    filename    TEXT    NOT NULL,
    camera_id   TEXT,                       -- from the name, or from a _file_update event
    device      TEXT,                       -- from a _file_update event
    started     REAL,                       -- epoch seconds, from the name
    mtime_ns    INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    duration    REAL,                       -- seconds, recordings
    resolution  TEXT,                       -- 'WxH', snapshots
    probed_ns   INTEGER,                    -- mtime_ns the probe result belongs to
    recording   INTEGER NOT NULL DEFAULT 0, -- 1 while the recording worker writes it
    PRIMARY KEY (kind, filename)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_by_time ON files (kind, mtime_ns, filename);
CREATE INDEX IF NOT EXISTS files_by_camera ON files (kind, camera_id, mtime_ns, filename);
-- Few rows are flagged at any time: a partial index makes finding them O(flagged).
CREATE INDEX IF NOT EXISTS files_recording ON files (filename) WHERE recording = 1;

CREATE TABLE IF NOT EXISTS totals (
    kind      TEXT    NOT NULL,
    camera_id TEXT    NOT NULL,             -- '' for files without a camera
    files     INTEGER NOT NULL,
    bytes     INTEGER NOT NULL,
    PRIMARY KEY (kind, camera_id)
) WITHOUT ROWID;

CREATE TRIGGER IF NOT EXISTS files_insert AFTER INSERT ON files BEGIN
    INSERT INTO totals (kind, camera_id, files, bytes)
    VALUES (NEW.kind, IFNULL(NEW.camera_id, ''), 1, NEW.size)
    ON CONFLICT (kind, camera_id) DO UPDATE SET files = files + 1, bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER IF NOT EXISTS files_delete AFTER DELETE ON files BEGIN
    UPDATE totals SET files = files - 1, bytes = bytes - OLD.size
    WHERE kind = OLD.kind AND camera_id = IFNULL(OLD.camera_id, '');
END;
CREATE TRIGGER IF NOT EXISTS files_update AFTER UPDATE OF size, camera_id ON files BEGIN
    UPDATE totals SET files = files - 1, bytes = bytes - OLD.size
    WHERE kind = OLD.kind AND camera_id = IFNULL(OLD.camera_id, '');
    INSERT INTO totals (kind, camera_id, files, bytes)
    VALUES (NEW.kind, IFNULL(NEW.camera_id, ''), 1, NEW.size)
    ON CONFLICT (kind, camera_id) DO UPDATE SET files = files + 1, bytes = bytes + excluded.bytes;
END;
"""


def schema_statements() -> list[str]:
    return _split(_SCHEMA)


def _split(script: str) -> list[str]:
    """The statements of :data:`_SCHEMA`, one by one.

    ``executescript`` would commit the surrounding transaction, and the schema
    must be created inside the ``BEGIN IMMEDIATE`` that serialises processes
    starting together. ``complete_statement`` knows that a trigger body's
    ``;`` does not end the ``CREATE TRIGGER``.
    """
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements
