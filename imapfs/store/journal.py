"""The durable half of the store: ``journal.db`` and ``journal-blobs/``.

The journal holds the changes made while the server was away until they
reach it: ``journal.db`` (sqlite, ``synchronous=FULL``) with new messages'
bytes in ``journal-blobs/``. Every :meth:`JournalStore.journal_add` is on
disk (blob fsynced, row committed) before it returns, so a change is
acknowledged only once it survives a crash. It also keeps a short history of
finished entries, for the state xattr.

The opposite of the cache: a damaged ``journal.db`` stops the store with a
clear message and is left as it is, and nothing in this module ever deletes a
pending change or a new message's bytes (a skipped entry's blob is kept in
``journal-kept/``, a blob no entry names is set aside in ``journal-orphans/``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import (
    SQLITE_CORRUPT,
    Errors,
    NoSuchEntry,
    OneDb,
    StoreError,
    errcode,
    fsync_dir,
    mkdirs,
    open_versioned,
    tx,
    unlink,
    write_new,
)

log = logging.getLogger(__name__)

JOURNAL_FORMAT = 1  # PRAGMA user_version of journal.db
HISTORY_KEEP = 1000  # finished journal entries remembered

_JOURNAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS state(key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS pending(
    seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL, args TEXT NOT NULL,
    blob TEXT, blob_size INTEGER, blob_sha256 TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, last_attempt REAL,
    created REAL NOT NULL, started REAL);
CREATE TABLE IF NOT EXISTS history(
    id INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER NOT NULL, op TEXT NOT NULL,
    status TEXT NOT NULL, outcome TEXT NOT NULL, time REAL NOT NULL, blob TEXT, args TEXT);
"""


@dataclass
class JournalEntry:
    """One pending offline change, as :meth:`JournalStore.journal_add` recorded it."""

    seq: int
    op: str
    args: dict[str, Any]
    blob_path: Path | None  # the new message's bytes, if the change carries one
    blob_size: int | None
    blob_sha256: str | None
    attempts: int
    last_error: str | None
    created: float
    started: float | None = None  # journal_started() time: a past attempt may have reached the server

    def read_blob(self) -> bytes | None:
        """The blob's bytes, verified against the length and hash recorded with it."""
        if self.blob_path is None:
            return None
        try:
            data = self.blob_path.read_bytes()
        except OSError as e:
            raise StoreError(f"journal entry {self.seq}: cannot read {self.blob_path}: {e.strerror or e}") from e
        if len(data) != self.blob_size or hashlib.sha256(data).hexdigest() != self.blob_sha256:
            raise StoreError(f"journal entry {self.seq}: {self.blob_path} does not match its recorded "
                             f"length and sha256 (damaged disk?); the file is left in place")
        return data


@dataclass
class HistoryEntry:
    """A journal entry that left the journal: ``status`` is "done" or "skipped"."""

    seq: int
    op: str
    status: str
    outcome: str
    time: float


def _enc_arg(v: Any) -> Any:
    """Journal args to JSON: bytes as {"$b": base64}, tuples as {"$t": [...]}, dicts with $-keys escaped."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"$b": base64.b64encode(bytes(v)).decode("ascii")}
    if isinstance(v, tuple):
        return {"$t": [_enc_arg(x) for x in v]}
    if isinstance(v, list):
        return [_enc_arg(x) for x in v]
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if not isinstance(k, str):
                raise StoreError(f"journal args: dict keys must be str, not {type(k).__name__}")
            out[k] = _enc_arg(x)
        if any(k.startswith("$") for k in out):
            return {"$d": out}
        return out
    raise StoreError(f"journal args: cannot store a {type(v).__name__}")


def _dec_arg(v: Any) -> Any:
    if isinstance(v, list):
        return [_dec_arg(x) for x in v]
    if isinstance(v, dict):
        if len(v) == 1:
            ((k, x),) = v.items()
            if k == "$b":
                return base64.b64decode(x)
            if k == "$t":
                return tuple(_dec_arg(y) for y in x)
            if k == "$d":
                return {kk: _dec_arg(xx) for kk, xx in x.items()}
        return {k: _dec_arg(x) for k, x in v.items()}
    return v


class JournalStore(OneDb):
    """``journal.db`` and ``journal-blobs/`` under *root*; blocking and thread-safe (one lock).

    Opened by :class:`~imapfs.store.Store`, which holds the directory lock,
    before the cache: a journal that cannot be opened stops the mount.
    """

    def __init__(self, root: Path, errors: Errors, *, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.blobs_dir = root / "journal-blobs"
        self._errors = errors
        self._clock = clock
        self._lock = threading.RLock()  # journal.db, journal-blobs/
        self._con: sqlite3.Connection | None = None
        with errors("opening the journal"):
            self._con = self._open(root / "journal.db")
            mkdirs(self.blobs_dir)

    def _open(self, path: Path) -> sqlite3.Connection:
        try:
            con = open_versioned(path, "FULL", _JOURNAL_SCHEMA, JOURNAL_FORMAT, "journal",
                                 "it may hold offline changes not yet sent: use the newer imapfs to replay them")
        except sqlite3.DatabaseError as e:
            if errcode(e) in SQLITE_CORRUPT:
                raise StoreError(
                    f"the offline journal {path} is damaged ({e}); it may hold changes not yet sent to the "
                    f"server, so it is left as it is: move it (and journal.db-wal, journal-blobs/) aside "
                    f"to mount without it; new messages are in journal-blobs/") from e
            raise
        return con

    def sweep(self) -> None:
        """Journal blobs: keep pending ones, remove finished ones, set unknown ones aside.

        A blob that no row names was written by a ``journal_add`` that never
        returned (a crash before its commit): nobody was told it was saved,
        but it is someone's mail, so it is moved to ``journal-orphans/``.
        """
        with self._lock, self._errors("opening the journal"):
            con = self._db()
            pending = {b for (b,) in con.execute("SELECT blob FROM pending WHERE blob IS NOT NULL")}
            finished = {b for (b,) in con.execute("SELECT blob FROM history WHERE blob IS NOT NULL")}
            with os.scandir(self.blobs_dir) as it:
                entries = list(it)
            for e in entries:
                if e.name in pending:
                    continue
                if e.name in finished or e.name.startswith(".tmp-"):
                    unlink(Path(e.path))
                    continue
                orphans = self.root / "journal-orphans"
                mkdirs(orphans)
                os.replace(e.path, orphans / e.name)
                log.warning("journal: %s belongs to no journal entry (a crash before it was recorded); "
                            "kept in %s", e.name, orphans)
            for seq, blob in con.execute("SELECT seq, blob FROM pending WHERE blob IS NOT NULL"):
                if not (self.blobs_dir / blob).exists():
                    log.error("journal entry %d: its message file %s is missing", seq, self.blobs_dir / blob)

    # ------------------------------------------------------------ recording

    def journal_add(self, op: str, args: dict[str, Any], blob: bytes | None = None) -> int:
        """Record an offline change; it is on disk (fsynced) when this returns its seq.

        *args* may hold bytes (folder names), tuples, lists, dicts, str,
        numbers, None; they come back exactly. *blob* (a new message) is
        written and fsynced to ``journal-blobs/`` before the row commits.
        """
        with self._lock, self._errors(f"recording offline change {op!r}"):
            con = self._db()
            if not isinstance(op, str) or not op:
                raise StoreError(f"journal op must be a non-empty str, not {op!r}")
            if not isinstance(args, dict):
                raise StoreError(f"journal args must be a dict, not {type(args).__name__}")
            args_json = json.dumps(_enc_arg(args), ensure_ascii=True)
            blob_name = size = digest = None
            path = None
            if blob is not None:
                blob = bytes(blob)
                blob_name = f"{uuid.uuid4().hex}.eml"
                path = self.blobs_dir / blob_name
                self._write_blob(path, blob)
                size, digest = len(blob), hashlib.sha256(blob).hexdigest()
            try:
                with tx(con):
                    cur = con.execute("INSERT INTO pending(op, args, blob, blob_size, blob_sha256, created) "
                                      "VALUES (?,?,?,?,?,?)", (op, args_json, blob_name, size, digest, self._clock()))
                    seq = cur.lastrowid
            except BaseException:
                if path is not None:
                    unlink(path)
                raise
            assert seq is not None
            return seq

    def _write_blob(self, path: Path, blob: bytes) -> None:
        """Write and fsync *blob* as *path* (through a tmp file and a synced rename); nothing left on error."""
        tmp = path.with_name(f".tmp-{path.name}")
        write_new(tmp, (blob,), True)
        try:
            os.rename(tmp, path)
            fsync_dir(self.blobs_dir)
        except BaseException:
            unlink(tmp)
            unlink(path)
            raise

    def journal_started(self, seq: int) -> None:
        """Record (durably) that the change is about to be sent to the server.

        After a crash, an entry whose ``started`` is set may already have been
        applied: a replayer must check before repeating a non-idempotent
        change (an APPEND: look for the message first, as mbsync does).
        """
        with self._lock, self._errors(f"marking journal entry {seq} as started"):
            con = self._db()
            with tx(con):
                cur = con.execute("UPDATE pending SET started=? WHERE seq=?", (self._clock(), seq))
                if cur.rowcount != 1:
                    raise NoSuchEntry(f"no pending journal entry {seq}")

    def journal_failed(self, seq: int, error: str) -> None:
        """An attempt failed: count it, keep the entry for the next replay."""
        with self._lock, self._errors(f"recording failure of journal entry {seq}"):
            con = self._db()
            now = self._clock()
            with tx(con):
                cur = con.execute("UPDATE pending SET attempts=attempts+1, last_error=?, last_attempt=? WHERE seq=?",
                                  (error, now, seq))
                if cur.rowcount != 1:
                    raise NoSuchEntry(f"no pending journal entry {seq}")
                con.execute("INSERT OR REPLACE INTO state VALUES ('last_error', ?)",
                            (json.dumps([now, f"journal entry {seq}: {error}"]),))

    def journal_done(self, seq: int, outcome: str) -> None:
        """The change reached the server: remove it (and its blob), remember *outcome*."""
        self._finish(seq, "done", outcome)

    def journal_skip(self, seq: int, why: str) -> None:
        """The change no longer applies: remove it, remember *why*. A blob is kept in journal-kept/."""
        self._finish(seq, "skipped", why)

    def _finish(self, seq: int, status: str, outcome: str) -> None:
        with self._lock, self._errors(f"finishing journal entry {seq}"):
            con = self._db()
            now = self._clock()
            with tx(con):
                row = con.execute("SELECT op, blob, args FROM pending WHERE seq=?", (seq,)).fetchone()
                if row is None:
                    raise NoSuchEntry(f"no pending journal entry {seq}")
                op, blob, args = row
                if blob is not None and status == "skipped":
                    outcome = self._keep_blob(seq, blob, outcome)
                con.execute("DELETE FROM pending WHERE seq=?", (seq,))
                con.execute("INSERT INTO history(seq, op, status, outcome, time, blob, args) VALUES (?,?,?,?,?,?,?)",
                            (seq, op, status, outcome, now, blob, args))
                con.execute("DELETE FROM history WHERE id <= (SELECT max(id) FROM history) - ?", (HISTORY_KEEP,))
            if blob is not None:
                unlink(self.blobs_dir / blob)

    def _keep_blob(self, seq: int, blob: str, outcome: str) -> str:
        """A skipped change never costs a new message's bytes: link its blob into journal-kept/."""
        kept_dir = self.root / "journal-kept"
        mkdirs(kept_dir)
        kept = kept_dir / f"{seq}-{blob}"
        unlink(kept)  # left by a crash before this commit
        try:
            os.link(self.blobs_dir / blob, kept)
        except FileNotFoundError:
            log.error("journal entry %d: its message file %s was already missing", seq, blob)
            return f"{outcome} (its message file was missing)"
        fsync_dir(kept_dir)
        return f"{outcome} (message kept in {kept})"

    # ------------------------------------------------------------ reading

    def _entry(self, row: tuple[Any, ...]) -> JournalEntry:
        seq, op, args, blob, size, digest, attempts, err, created, started = row
        return JournalEntry(seq, op, _dec_arg(json.loads(args)), None if blob is None else self.blobs_dir / blob,
                            size, digest, attempts, err, created, started)

    def journal_pending(self) -> list[JournalEntry]:
        """Every pending change, oldest first (replay order)."""
        with self._lock, self._errors("reading the journal"):
            return [self._entry(r) for r in self._db().execute(
                "SELECT seq, op, args, blob, blob_size, blob_sha256, attempts, last_error, created, started "
                "FROM pending ORDER BY seq")]

    def journal_history(self, limit: int = 20) -> list[HistoryEntry]:
        """The last *limit* finished entries, newest first."""
        with self._lock, self._errors("reading the journal history"):
            return [HistoryEntry(*r) for r in self._db().execute(
                "SELECT seq, op, status, outcome, time FROM history ORDER BY id DESC LIMIT ?", (limit,))]

    def stats(self) -> tuple[int, tuple[float, str] | None]:
        """How many changes are pending, and the last replay failure recorded (time, text)."""
        with self._lock, self._errors("reading journal statistics"):
            con = self._db()
            pending = con.execute("SELECT count(*) FROM pending").fetchone()[0]
            row = con.execute("SELECT value FROM state WHERE key='last_error'").fetchone()
        if row is None:
            return pending, None
        when, text = json.loads(row[0])
        return pending, (float(when), str(text))
