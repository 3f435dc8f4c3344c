"""``cache.db``: its schema, opening it (and resetting it when damaged), folder lookups.

The cache is disposable: a damaged ``cache.db`` is moved aside, its body
files are removed (they are reachable only through it), and the store starts
with an empty cache. The journal is a separate database and is never touched
here. Both :mod:`.cache` (metadata) and :mod:`.bodies` (message bytes) use
the folder lookups, which is why they live in neither.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from .base import SQLITE_CORRUPT, Corrupt, Errors, StoreError, errcode, open_versioned

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # PRAGMA user_version of cache.db (2: small bodies inline, in ``blobs``)

_CACHE_SCHEMA = """
CREATE TABLE IF NOT EXISTS state(key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS folder_list(
    pos INTEGER PRIMARY KEY, name BLOB NOT NULL, delimiter TEXT, flags TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS folders(
    id INTEGER PRIMARY KEY, name BLOB NOT NULL UNIQUE, token TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL, uidnext INTEGER, highestmodseq INTEGER);
CREATE TABLE IF NOT EXISTS messages(
    folder INTEGER NOT NULL, uid INTEGER NOT NULL, size INTEGER NOT NULL,
    internaldate INTEGER NOT NULL, flags TEXT, subject BLOB,
    PRIMARY KEY(folder, uid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bodies(
    folder INTEGER NOT NULL, uidvalidity INTEGER NOT NULL, uid INTEGER NOT NULL,
    size INTEGER NOT NULL, disk INTEGER NOT NULL, atime REAL NOT NULL, blob INTEGER,
    PRIMARY KEY(folder, uidvalidity, uid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS bodies_atime ON bodies(atime);
CREATE TABLE IF NOT EXISTS blobs(id INTEGER PRIMARY KEY, data BLOB NOT NULL, crc INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS bodies_blob_gone AFTER DELETE ON bodies WHEN old.blob IS NOT NULL
BEGIN DELETE FROM blobs WHERE id = old.blob; END;
CREATE TABLE IF NOT EXISTS structures(
    folder INTEGER NOT NULL, uidvalidity INTEGER NOT NULL, uid INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY(folder, uidvalidity, uid)) WITHOUT ROWID;
"""


# format v -> v + 1 (base.open_versioned). 1 -> 2: bodies.blob (NULL: the body is a file,
# as every body of format 1 is); the blobs table and its trigger come from the schema.
_UPGRADES = {1: ("ALTER TABLE bodies ADD COLUMN blob INTEGER",)}

# sqlite keeps a -wal file at its largest transaction's size unless told otherwise; a batch
# of inline bodies can be as large as disk.QUEUE_BYTES (16 MiB).
_WAL_LIMIT = 64 << 20


def open_cache(path: Path, bodies_dir: Path, errors: Errors) -> sqlite3.Connection:
    """Open (or create) ``cache.db``; a damaged one is moved aside with ``bodies/`` and started anew."""
    try:
        return _try_open(path)
    except Corrupt as e:
        why = str(e)
    except sqlite3.DatabaseError as e:
        if errcode(e) not in SQLITE_CORRUPT:
            raise
        why = str(e)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"cache.db.corrupt-{stamp}")
    log.warning("cache %s is damaged (%s): moved to %s, starting with an empty cache "
                "(the journal of offline changes is separate and kept)", path, why, aside)
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            os.replace(src, Path(str(aside) + suffix))
    # body files are only reachable through cache.db: they go with it
    if bodies_dir.exists():
        trash = bodies_dir.with_name(f"bodies.corrupt-{stamp}")
        os.replace(bodies_dir, trash)
        shutil.rmtree(trash, ignore_errors=True)
    errors.note(f"cache {path} was damaged and reset: {why}")
    return _try_open(path)


def _try_open(path: Path) -> sqlite3.Connection:
    con = open_versioned(path, "NORMAL", _CACHE_SCHEMA, CACHE_FORMAT, "cache",
                         "use the newer imapfs, or give this one another cache_dir", check=_quick_check,
                         upgrades=_UPGRADES)
    con.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
    return con


def _quick_check(con: sqlite3.Connection) -> None:
    """quick_check every table but ``blobs``, at every open.

    ``blobs`` holds the inline message bytes, up to ``cache_size`` (2 GiB by
    default): checking it would read all of them at every mount (2 s for
    300 MB on a cold page cache). A damaged page there makes the read of that
    one message fail with an error; its bytes are never misread as another
    message's, because a row finds its blob by id in the same statement.
    """
    tables = [n for (n,) in con.execute(
        "SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE 'sqlite_%' AND name != 'blobs'")]
    for table in tables:
        check = con.execute(f'PRAGMA quick_check("{table}")').fetchone()[0]
        if check != "ok":
            raise Corrupt(f"quick_check: {check}")


def as_name(name: Any) -> bytes:
    """A folder name as the store keys it: the server's bytes (anything else is a caller's bug)."""
    if not isinstance(name, bytes):
        raise StoreError(f"folder names are bytes (the server's name), not {type(name).__name__}")
    return name


def folder_row(con: sqlite3.Connection, name: bytes) -> tuple[int, str, int] | None:
    """(id, body token, uidvalidity) of a stored folder."""
    row: tuple[int, str, int] | None = con.execute(
        "SELECT id, token, uidvalidity FROM folders WHERE name=?", (name,)).fetchone()
    return row


def match(con: sqlite3.Connection, name: bytes, uidvalidity: int) -> tuple[int, str] | None:
    """(id, body token) of the folder if it is stored under exactly *uidvalidity*."""
    rec = folder_row(con, as_name(name))
    if rec is None or rec[2] != uidvalidity:
        return None
    return rec[0], rec[1]
