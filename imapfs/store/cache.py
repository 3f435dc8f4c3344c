"""The disposable half of the store: ``cache.db`` and ``bodies/``.

What the mount has seen of the server, kept so a folder can be listed and
read while the server is away and a remount fetches only the changes: the
folder list (the server's LIST answer), and per folder its UIDVALIDITY,
UIDNEXT, HIGHESTMODSEQ and message metadata (:class:`~imapfs.records.RawMeta`),
the messages' BODYSTRUCTUREs, and their bytes (:mod:`.bodies`).

Everything here may be thrown away: a damaged ``cache.db`` is moved aside and
the cache starts empty (:func:`.cachedb.open_cache`); a damaged body file is
deleted and fetched again. Nothing here is the only copy of anything.

Metadata is not bounded: 100,000 messages cost about 5 MB of ``cache.db``,
which is small next to their bodies, and a folder's metadata is what lets it
be listed offline at all, so it is kept until the folder is dropped.
``scripts/store_bench.py`` times the operations (``docs/offline.md``,
"Tuning and numbers").
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..imapproto import ListEntry
from ..records import FolderRecord, RawMeta
from .base import Errors, OneDb, mkdirs, tx
from .bodies import ATIME_GRANULARITY, Bodies, Files
from .cachedb import as_name, folder_row, match, open_cache

_FLAG_SEP = "\x1f"
_FLAG_JSON = "\x1e"


def _enc_flags(flags: tuple[str, ...]) -> str | None:
    """Flags as one TEXT: NULL for none, atoms joined by US, JSON for oddities."""
    if not flags:
        return None
    s = _FLAG_SEP.join(flags)
    if s.isascii() and s.count(_FLAG_SEP) == len(flags) - 1 and all(flags) and not s.startswith(_FLAG_JSON):
        return s
    return _FLAG_JSON + json.dumps(list(flags))


def _dec_flags(s: str | None) -> tuple[str, ...]:
    if s is None:
        return ()
    if s.startswith(_FLAG_JSON):
        return tuple(json.loads(s[1:]))
    return tuple(s.split(_FLAG_SEP))


def _delim(delimiter: str | bytes | None) -> bytes | None:
    if delimiter is None or delimiter == "" or delimiter == b"":
        return None
    return delimiter if isinstance(delimiter, bytes) else delimiter.encode("latin-1")


def _renamed(name: bytes, old: bytes, new: bytes, d: bytes | None) -> bytes | None:
    if name == old:
        return new
    if d is not None and name.startswith(old + d):
        return new + name[len(old):]
    return None


def _in_family(name: bytes, top: bytes, d: bytes | None) -> bool:
    return name == top or (d is not None and name.startswith(top + d))


def _rows(fid: int, metas: Iterable[RawMeta]) -> Iterator[tuple[Any, ...]]:
    for m in metas:
        yield (fid, m.uid, m.size, m.internaldate, _enc_flags(m.flags), m.subject)


class Cache(OneDb):
    """``cache.db`` and ``bodies/`` under *root*; blocking and thread-safe (one lock).

    Opened by :class:`~imapfs.store.Store`, which holds the directory lock.
    Body calls go to :attr:`bodies`; folder-level calls here drop the bodies
    they make obsolete in the same transaction.
    """

    def __init__(self, root: Path, max_bytes: int, pinned: Callable[[bytes], bool], errors: Errors, *,
                 clock: Callable[[], float] = time.time,
                 atime_granularity: float = ATIME_GRANULARITY) -> None:
        self.root = root
        self._errors = errors
        self._lock = threading.RLock()  # cache.db, bodies/, the body counters
        self._con: sqlite3.Connection | None = None
        self.bodies = Bodies(root / "bodies", self._db, self._lock, errors, max_bytes, pinned,
                             clock=clock, atime_granularity=atime_granularity)
        with errors("opening the cache"):
            self._con = open_cache(root / "cache.db", self.bodies.dir, errors)
            mkdirs(self.bodies.dir)

    def sweep(self) -> None:
        """Reconcile bodies/ with its index after a crash (at open, once the directory is synced)."""
        with self._lock, self._errors("opening the cache"):
            self.bodies.sweep()

    def _drop_content(self, con: sqlite3.Connection, fid: int, token: str,
                      uids: Iterable[int] | None = None, *, absent: bool = False) -> Files:
        """Bodies and structures of folder *fid* (all, *uids*, or *absent* from messages); files to forget."""
        uids = None if uids is None else set(uids)
        files = self.bodies.drop_rows(con, fid, token, uids, absent=absent)
        if uids is None and not absent:
            con.execute("DELETE FROM structures WHERE folder=?", (fid,))
        elif uids is not None:
            con.executemany("DELETE FROM structures WHERE folder=? AND uid=?", [(fid, u) for u in uids])
        return files

    def _delete_folder(self, con: sqlite3.Connection, fid: int, token: str) -> Files:
        files = self._drop_content(con, fid, token)
        con.execute("DELETE FROM messages WHERE folder=?", (fid,))
        con.execute("DELETE FROM folders WHERE id=?", (fid,))
        return files

    # ------------------------------------------------------------ folder list

    def put_folders(self, entries: list[ListEntry]) -> None:
        """Store the server's folder list (replaces the stored one)."""
        with self._lock, self._errors("storing the folder list"):
            rows = [(i, as_name(e.name), e.delimiter,
                     json.dumps(sorted(f.decode("latin-1") for f in e.flags)))
                    for i, e in enumerate(entries)]
            con = self._db()
            with tx(con):
                con.execute("DELETE FROM folder_list")
                con.executemany("INSERT INTO folder_list VALUES (?,?,?,?)", rows)
                con.execute("INSERT OR REPLACE INTO state VALUES ('folder_list', 1)")

    def get_folders(self) -> list[ListEntry] | None:
        """The stored folder list, in the order stored; None if none was ever stored."""
        with self._lock, self._errors("reading the folder list"):
            con = self._db()
            if con.execute("SELECT 1 FROM state WHERE key='folder_list'").fetchone() is None:
                return None
            return [ListEntry(frozenset(f.encode("latin-1") for f in json.loads(flags)), delim, bytes(name))
                    for name, delim, flags in con.execute(
                        "SELECT name, delimiter, flags FROM folder_list ORDER BY pos")]

    # ------------------------------------------------------------ folder state

    def put_folder(self, name: bytes, uidvalidity: int, uidnext: int | None, highestmodseq: int | None,
                   messages: Iterable[RawMeta], replace: bool) -> None:
        """Store a folder's sync state and messages in one transaction.

        ``replace=True``: *messages* is the folder's whole content; messages
        (and bodies) not in it are dropped. ``replace=False``: they are added
        or updated (flags). A UIDVALIDITY other than the stored one always
        replaces, and drops every body of the folder first.
        """
        with self._lock, self._errors(f"storing folder {name!r}"):
            name = as_name(name)
            con = self._db()
            files: Files = []
            with tx(con):
                rec = folder_row(con, name)
                if rec is None:
                    con.execute("INSERT INTO folders(name, token, uidvalidity, uidnext, highestmodseq) "
                                "VALUES (?,?,?,?,?)", (name, uuid.uuid4().hex, uidvalidity, uidnext, highestmodseq))
                    fid = con.execute("SELECT id FROM folders WHERE name=?", (name,)).fetchone()[0]
                else:
                    fid, token, old_uv = rec
                    if old_uv != uidvalidity:
                        replace = True
                        files += self._drop_content(con, fid, token)
                    con.execute("UPDATE folders SET uidvalidity=?, uidnext=?, highestmodseq=? WHERE id=?",
                                (uidvalidity, uidnext, highestmodseq, fid))
                    if replace:
                        con.execute("DELETE FROM messages WHERE folder=?", (fid,))
                con.executemany("INSERT OR REPLACE INTO messages VALUES (?,?,?,?,?,?)", _rows(fid, messages))
                if replace and rec is not None:
                    files += self._drop_content(con, fid, rec[1], absent=True)
            self.bodies.forget(files)

    def add_messages(self, name: bytes, uidvalidity: int, metas: Iterable[RawMeta]) -> bool:
        """Add or update messages; False (nothing stored) unless the folder is stored under *uidvalidity*."""
        with self._lock, self._errors(f"adding messages to {name!r}"):
            con = self._db()
            with tx(con):
                m = match(con, name, uidvalidity)
                if m is None:
                    return False
                con.executemany("INSERT OR REPLACE INTO messages VALUES (?,?,?,?,?,?)", _rows(m[0], metas))
            return True

    def remove_messages(self, name: bytes, uidvalidity: int, uids: Iterable[int]) -> bool:
        """Remove messages and their bodies; False unless the folder is stored under *uidvalidity*."""
        with self._lock, self._errors(f"removing messages from {name!r}"):
            con = self._db()
            uids = list(uids)
            with tx(con):
                m = match(con, name, uidvalidity)
                if m is None:
                    return False
                con.executemany("DELETE FROM messages WHERE folder=? AND uid=?", [(m[0], u) for u in uids])
                files = self._drop_content(con, m[0], m[1], uids)
            self.bodies.forget(files)
            return True

    def set_flags(self, name: bytes, uidvalidity: int, uid: int, flags: Iterable[str]) -> bool:
        """Replace one message's flags; False if that message is not stored."""
        return self.set_flags_many(name, uidvalidity, {uid: tuple(flags)}) == 1

    def set_flags_many(self, name: bytes, uidvalidity: int, flags: Mapping[int, Iterable[str]]) -> int:
        """Replace the flags of several messages (CONDSTORE changes); returns how many were stored."""
        with self._lock, self._errors(f"setting flags in {name!r}"):
            con = self._db()
            with tx(con):
                m = match(con, name, uidvalidity)
                if m is None:
                    return 0
                before = con.total_changes
                con.executemany("UPDATE messages SET flags=? WHERE folder=? AND uid=?",
                                [(_enc_flags(tuple(f)), m[0], uid) for uid, f in flags.items()])
                return con.total_changes - before

    def set_sync_state(self, name: bytes, uidvalidity: int, uidnext: int | None, highestmodseq: int | None) -> bool:
        """Record UIDNEXT and HIGHESTMODSEQ; False unless the folder is stored under *uidvalidity*."""
        with self._lock, self._errors(f"storing sync state of {name!r}"):
            con = self._db()
            with tx(con):
                m = match(con, name, uidvalidity)
                if m is None:
                    return False
                con.execute("UPDATE folders SET uidnext=?, highestmodseq=? WHERE id=?", (uidnext, highestmodseq, m[0]))
            return True

    def get_folder(self, name: bytes) -> FolderRecord | None:
        """The stored state of folder *name*, messages sorted by UID; None if not stored."""
        with self._lock, self._errors(f"reading folder {name!r}"):
            name = as_name(name)
            con = self._db()
            con.execute("BEGIN")  # one snapshot for both queries
            try:
                rec = con.execute("SELECT id, uidvalidity, uidnext, highestmodseq FROM folders WHERE name=?",
                                  (name,)).fetchone()
                if rec is None:
                    return None
                rows = con.execute("SELECT uid, size, internaldate, flags, subject FROM messages "
                                   "WHERE folder=? ORDER BY uid", (rec[0],)).fetchall()
            finally:
                con.execute("COMMIT")
            metas = [RawMeta(uid, size, date, _dec_flags(fl), subj) for uid, size, date, fl, subj in rows]
            return FolderRecord(name, rec[1], rec[2], rec[3], metas)

    def folder_names(self) -> list[bytes]:
        """Names of the folders with stored state (not the folder list), sorted."""
        with self._lock, self._errors("listing stored folders"):
            return [bytes(n) for (n,) in self._db().execute("SELECT name FROM folders ORDER BY name")]

    def drop_folder(self, name: bytes, delimiter: str | bytes | None = None) -> int:
        """Forget a folder's state and bodies (with *delimiter*, also ``name<delim>...``).

        The folder list is not touched (a listed folder without state is just
        not cached); returns how many folders were dropped.
        """
        with self._lock, self._errors(f"dropping folder {name!r}"):
            name = as_name(name)
            d = _delim(delimiter)
            con = self._db()
            files: Files = []
            with tx(con):
                victims = [(fid, token) for fid, n, token in con.execute("SELECT id, name, token FROM folders")
                           if _in_family(bytes(n), name, d)]
                for fid, token in victims:
                    files += self._delete_folder(con, fid, token)
            self.bodies.forget(files)
            return len(victims)

    def rename_folder(self, old: bytes, new: bytes, delimiter: str | bytes | None = None) -> int:
        """Rename a folder (with *delimiter*, also its sub-folders ``old<delim>...``).

        State, messages and bodies follow (bodies are keyed by a per-folder
        token, so no file moves). Stale records already under a target name
        are dropped. Folder-list entries are renamed in the same transaction,
        so the list and the state agree. Returns how many folders moved.
        """
        with self._lock, self._errors(f"renaming folder {old!r} to {new!r}"):
            old, new = as_name(old), as_name(new)
            d = _delim(delimiter)
            if old == new:
                return 0
            con = self._db()
            files: Files = []
            with tx(con):
                rows = [(fid, bytes(n), token) for fid, n, token in con.execute("SELECT id, name, token FROM folders")]
                moves = {fid: t for fid, n, _ in rows if (t := _renamed(n, old, new, d)) is not None}
                targets = set(moves.values())
                for fid, n, token in rows:
                    if n in targets and fid not in moves:
                        files += self._delete_folder(con, fid, token)
                # two phases, so that no intermediate name collides
                con.executemany("UPDATE folders SET name=? WHERE id=?",
                                [(b"\0imapfs-rename\0" + str(fid).encode(), fid) for fid in moves])
                con.executemany("UPDATE folders SET name=? WHERE id=?", [(t, fid) for fid, t in moves.items()])
                self._rename_listed(con, old, new, d)
            self.bodies.forget(files)
            return len(moves)

    @staticmethod
    def _rename_listed(con: sqlite3.Connection, old: bytes, new: bytes, d: bytes | None) -> None:
        """rename_folder's part in the folder list (inside its transaction)."""
        listed = con.execute("SELECT pos, name, delimiter, flags FROM folder_list ORDER BY pos").fetchall()
        if not listed:
            return
        renamed = [(pos, bytes(n), _renamed(bytes(n), old, new, d), dl, fl) for pos, n, dl, fl in listed]
        new_names = {t for _, _, t, _, _ in renamed if t is not None}
        # a renamed entry replaces one already listed under its new name
        out = [(pos, n if t is None else t, dl, fl) for pos, n, t, dl, fl in renamed
               if t is not None or n not in new_names]
        con.execute("DELETE FROM folder_list")
        con.executemany("INSERT INTO folder_list VALUES (?,?,?,?)", out)

    # ------------------------------------------------------------ structures

    def put_structure(self, name: bytes, uidvalidity: int, uid: int, data: bytes) -> bool:
        """Keep a message's BODYSTRUCTURE (serialised by the caller) for offline ``.parts`` listings."""
        with self._lock, self._errors(f"storing the structure of message {uid} of {name!r}"):
            con = self._db()
            with tx(con):
                m = match(con, name, uidvalidity)
                if m is None:
                    return False
                con.execute("INSERT OR REPLACE INTO structures VALUES (?, ?, ?, ?)", (m[0], uidvalidity, uid, data))
            return True

    def put_structures(self, items: Iterable[tuple[bytes, int, int, bytes]]) -> int:
        """Several ``put_structure`` in one transaction; returns how many were stored."""
        items = list(items)
        with self._lock, self._errors(f"storing {len(items)} message structures"):
            con = self._db()
            n = 0
            with tx(con):
                matches: dict[tuple[bytes, int], tuple[int, str] | None] = {}
                for name, uv, uid, data in items:
                    if (name, uv) not in matches:
                        matches[(name, uv)] = match(con, name, uv)
                    m = matches[(name, uv)]
                    if m is not None:
                        con.execute("INSERT OR REPLACE INTO structures VALUES (?, ?, ?, ?)", (m[0], uv, uid, data))
                        n += 1
            return n

    def get_structure(self, name: bytes, uidvalidity: int, uid: int) -> bytes | None:
        with self._lock, self._errors(f"reading the structure of message {uid} of {name!r}"):
            r = self._db().execute(
                "SELECT s.data FROM folders f JOIN structures s ON s.folder = f.id "
                "WHERE f.name=? AND f.uidvalidity=? AND s.uidvalidity=? AND s.uid=?",
                (as_name(name), uidvalidity, uidvalidity, uid)).fetchone()
            return None if r is None else bytes(r[0])

    # ------------------------------------------------------------ stats

    def stats(self) -> dict[str, int]:
        """Counts for the state xattr and logs."""
        with self._lock, self._errors("reading cache statistics"):
            con = self._db()
            return {
                "body_bytes": self.bodies.bytes,
                "body_count": self.bodies.count,
                "max_bytes": self.bodies.max_bytes,
                "folders": con.execute("SELECT count(*) FROM folders").fetchone()[0],
                "messages": con.execute("SELECT count(*) FROM messages").fetchone()[0],
            }
