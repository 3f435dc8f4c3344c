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

CACHE_FORMAT = 1  # PRAGMA user_version of cache.db

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
    size INTEGER NOT NULL, disk INTEGER NOT NULL, atime REAL NOT NULL,
    PRIMARY KEY(folder, uidvalidity, uid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS bodies_atime ON bodies(atime);
CREATE TABLE IF NOT EXISTS structures(
    folder INTEGER NOT NULL, uidvalidity INTEGER NOT NULL, uid INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY(folder, uidvalidity, uid)) WITHOUT ROWID;
"""


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
    return open_versioned(path, "NORMAL", _CACHE_SCHEMA, CACHE_FORMAT, "cache",
                          "use the newer imapfs, or give this one another cache_dir", check=_quick_check)


def _quick_check(con: sqlite3.Connection) -> None:
    check = con.execute("PRAGMA quick_check").fetchone()[0]
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
