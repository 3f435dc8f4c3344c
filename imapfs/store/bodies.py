"""Message bodies in the disposable cache: ``bodies/`` and their index rows.

Exact server bytes, one file each, keyed by (folder token, UIDVALIDITY, UID),
with a header that lets every read verify the file: a torn, truncated or
foreign file is deleted, never served. Bounded by ``max_bytes`` (LRU by
bytes; folders for which ``pinned(name)`` is true are never evicted).

:class:`Bodies` shares ``cache.db`` and its lock with :class:`.cache.Cache`,
which owns both; it keeps the byte and file counters exact (they change only
after a commit).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .base import Errors, fsync_dir, mkdirs, tx, unlink, write_new
from .cachedb import as_name, match

log = logging.getLogger(__name__)

BODY_MAGIC = b"IMAPFSB1"  # first bytes of every body file (format 1)
ATIME_GRANULARITY = 60.0  # seconds: a body's access time is written at most this often

Files = list[tuple[Path, int]]  # body files to unlink after a commit, with their bytes on disk


def _body_key(token: str, uidvalidity: int, uid: int) -> bytes:
    return f"{token}\0{uidvalidity}\0{uid}".encode("ascii")


def _body_name(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()


def _body_header(key: bytes, data: bytes) -> bytes:
    return (BODY_MAGIC + struct.pack(">H", len(key)) + key
            + struct.pack(">Q", len(data)) + hashlib.sha256(data).digest())


def _verify_body(key: bytes, buf: bytes) -> bytes | None:
    """The data of a body file if its header names *key* and its bytes check out."""
    n = len(BODY_MAGIC)
    if len(buf) < n + 2 or buf[:n] != BODY_MAGIC:
        return None
    (klen,) = struct.unpack_from(">H", buf, n)
    if klen != len(key) or buf[n + 2:n + 2 + klen] != key:
        return None
    off = n + 2 + klen
    if len(buf) < off + 40:
        return None
    (dlen,) = struct.unpack_from(">Q", buf, off)
    digest = buf[off + 8:off + 40]
    data = buf[off + 40:]
    if len(data) != dlen or hashlib.sha256(data).digest() != digest:
        return None
    return data


def _read(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


class Bodies:
    """The ``bodies`` table and ``bodies/`` of one cache; see the module docstring.

    *db* returns the cache's connection (or raises once it is closed); *lock*
    is the cache's lock, held around every use of it.
    """

    def __init__(self, directory: Path, db: Callable[[], sqlite3.Connection], lock: threading.RLock,
                 errors: Errors, max_bytes: int, pinned: Callable[[bytes], bool], *,
                 clock: Callable[[], float] = time.time, atime_granularity: float = ATIME_GRANULARITY) -> None:
        self.dir = directory
        self._db = db
        self._lock = lock
        self._errors = errors
        self.max_bytes = int(max_bytes)
        self.pinned = pinned
        self._clock = clock
        self._granularity = atime_granularity
        self.bytes = 0  # body files on disk, headers included
        self.count = 0

    # ------------------------------------------------------------ bookkeeping

    def sweep(self) -> None:
        """Make bodies/ and the bodies table agree after a crash.

        Files that no row names (tmp files, a crash between rename and
        commit, or between commit and unlink) are removed; rows whose file is
        gone are deleted. Then the byte counters are exact.
        """
        con = self._db()
        con.execute("DELETE FROM bodies WHERE folder NOT IN (SELECT id FROM folders)")
        expected: dict[str, tuple[int, int, int, int]] = {}
        for fid, token, uv, uid, disk in con.execute(
                "SELECT b.folder, f.token, b.uidvalidity, b.uid, b.disk FROM bodies b "
                "JOIN folders f ON f.id = b.folder"):
            expected[_body_name(_body_key(token, uv, uid))] = (fid, uv, uid, disk)
        found: set[str] = set()
        resized: list[tuple[int, int, int, int]] = []
        removed = 0
        with os.scandir(self.dir) as shards:
            for shard in shards:
                if not shard.is_dir(follow_symlinks=False):
                    unlink(Path(shard.path))
                    continue
                with os.scandir(shard.path) as files:
                    for e in files:
                        if e.name in expected and e.name[:2] == shard.name:
                            found.add(e.name)
                            fid, uv, uid, disk = expected[e.name]
                            size = e.stat(follow_symlinks=False).st_size
                            if size != disk:  # replaced, then killed before its row was
                                resized.append((size, fid, uv, uid))
                        else:
                            removed += 1
                            unlink(Path(e.path))
        missing = [expected[n][:3] for n in expected.keys() - found]
        if missing or resized:
            with tx(con):
                con.executemany("DELETE FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?", missing)
                con.executemany("UPDATE bodies SET disk=? WHERE folder=? AND uidvalidity=? AND uid=?", resized)
        if removed or missing:
            log.info("cache sweep: removed %d stray body files, %d index rows without a file", removed, len(missing))
        self.count, self.bytes = con.execute("SELECT count(*), coalesce(sum(disk), 0) FROM bodies").fetchone()

    def _path(self, key: bytes) -> Path:
        n = _body_name(key)
        return self.dir / n[:2] / n

    def drop_rows(self, con: sqlite3.Connection, fid: int, token: str,
                  uids: Iterable[int] | None = None, *, absent: bool = False) -> Files:
        """Delete body rows of folder *fid* (all, those in *uids*, or with *absent* those
        not in messages), inside the caller's transaction; returns the files for :meth:`forget`."""
        if absent:
            rows = con.execute(
                "SELECT uidvalidity, uid, disk FROM bodies b WHERE folder=? AND NOT EXISTS "
                "(SELECT 1 FROM messages m WHERE m.folder=b.folder AND m.uid=b.uid)", (fid,)).fetchall()
        elif uids is None:
            rows = con.execute("SELECT uidvalidity, uid, disk FROM bodies WHERE folder=?", (fid,)).fetchall()
        else:
            wanted = set(uids)
            rows = [r for r in con.execute("SELECT uidvalidity, uid, disk FROM bodies WHERE folder=?", (fid,))
                    if r[1] in wanted]
        con.executemany("DELETE FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?",
                        [(fid, uv, uid) for uv, uid, _ in rows])
        return [(self._path(_body_key(token, uv, uid)), disk) for uv, uid, disk in rows]

    def forget(self, files: Files) -> None:
        """After a commit that deleted their rows (lock held): unlink and count."""
        for path, disk in files:
            unlink(path)
            self.bytes -= disk
            self.count -= 1

    # ------------------------------------------------------------ writing

    def put_body(self, name: bytes, uidvalidity: int, uid: int, data: bytes, *, fsync: bool = True) -> bool:
        """Store a message's bytes; False (not stored) unless the folder is stored under *uidvalidity*.

        The file is written as ``.tmp-*`` beside its final name, fsynced,
        renamed into place and the directory fsynced (*fsync* False skips
        both: the header still makes a torn file detectable); then its index
        row is committed and, if the store is over ``max_bytes``, the least
        recently used bodies of unpinned folders are evicted (never this one).
        """
        with self._errors(f"storing message {uid} of {name!r}"):
            data = bytes(data)
            with self._lock:
                m = match(self._db(), name, uidvalidity)
            if m is None:
                return False
            path, tmp, disk = self._write_tmp(m[1], uidvalidity, uid, data, fsync)
            try:
                with self._lock:
                    con = self._db()
                    if match(con, name, uidvalidity) != m:
                        return False  # dropped, renamed or reset meanwhile
                    old = con.execute("SELECT disk FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?",
                                      (m[0], uidvalidity, uid)).fetchone()
                    os.rename(tmp, path)
                    try:
                        con.execute("INSERT OR REPLACE INTO bodies VALUES (?,?,?,?,?,?)",
                                    (m[0], uidvalidity, uid, len(data), disk, self._clock()))
                    except BaseException:
                        # the row is not there: the file must not be either
                        unlink(path)
                        if old is not None:
                            con.execute("DELETE FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?",
                                        (m[0], uidvalidity, uid))
                            self.bytes -= old[0]
                            self.count -= 1
                        raise
                    if old is None:
                        self.count += 1
                        self.bytes += disk
                    else:
                        self.bytes += disk - old[0]
                    if self.bytes > self.max_bytes:
                        self._evict_locked(keep=(m[0], uidvalidity, uid))
            finally:
                if tmp.exists():
                    unlink(tmp)
            if fsync:
                fsync_dir(path.parent)
            return True

    def _write_tmp(self, token: str, uidvalidity: int, uid: int, data: bytes, fsync: bool) -> tuple[Path, Path, int]:
        """Write a body file (header and *data*) as ``.tmp-*`` beside its final name.

        Returns (final path, tmp path, bytes on disk); the caller renames it
        into place before indexing it. Shared by put_body and put_bodies so
        both write the one file format every read verifies.
        """
        key = _body_key(token, uidvalidity, uid)
        path = self._path(key)
        tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
        header = _body_header(key, data)
        if not path.parent.is_dir():
            mkdirs(path.parent)
        write_new(tmp, (header, data), fsync)
        return path, tmp, len(header) + len(data)

    def put_bodies(self, items: Iterable[tuple[bytes, int, int, bytes]]) -> int:
        """Store several bodies (name, uidvalidity, uid, data) without fsync, in one transaction.

        The write-behind path of a cold ``grep -r``: one commit for many files
        instead of one each. Same guarantees as ``put_body(fsync=False)``: each
        file is renamed into place before its row commits; a file whose row
        never commits is swept at the next open. Returns how many were stored.
        """
        items = list(items)
        if not items:
            return 0
        with self._errors(f"storing {len(items)} messages"):
            with self._lock:
                con = self._db()
                matches = {(n, uv): match(con, n, uv) for n, uv, _u, _d in items}
            written: list[tuple[bytes, int, int, Path, int, int]] = []
            for name, uv, uid, data in items:
                m = matches[(name, uv)]
                if m is None:
                    continue
                path, tmp, disk = self._write_tmp(m[1], uv, uid, data, False)
                os.rename(tmp, path)
                written.append((name, uv, uid, path, len(data), disk))
            with self._lock:
                return self._index(written, matches)

    def _index(self, written: list[tuple[bytes, int, int, Path, int, int]],
               matches: dict[tuple[bytes, int], tuple[int, str] | None]) -> int:
        """put_bodies' commit of the files it renamed into place (lock held)."""
        con = self._db()
        keep = None
        stored = 0
        with tx(con):
            for name, uv, uid, path, size, disk in written:
                m = match(con, name, uv)
                if m is None or m != matches[(name, uv)]:
                    unlink(path)  # dropped, renamed or reset meanwhile
                    continue
                old = con.execute("SELECT disk FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?",
                                  (m[0], uv, uid)).fetchone()
                con.execute("INSERT OR REPLACE INTO bodies VALUES (?,?,?,?,?,?)",
                            (m[0], uv, uid, size, disk, self._clock()))
                self.bytes += disk - (old[0] if old else 0)
                self.count += 0 if old else 1
                keep = (m[0], uv, uid)
                stored += 1
        if self.bytes > self.max_bytes:
            self._evict_locked(keep=keep)
        return stored

    def copy_body(self, src: tuple[bytes, int, int], dst: tuple[bytes, int, int], *, fsync: bool = True) -> bool:
        """Store the body of *src* (name, uidvalidity, uid) also under *dst*
        (after COPYUID/APPENDUID told the new UID); False if src is not stored."""
        data = self.get_body(*src)
        if data is None:
            return False
        return self.put_body(*dst, data, fsync=fsync)

    # ------------------------------------------------------------ reading

    def _lookup(self, name: bytes, uidvalidity: int, uid: int) -> tuple[int, str, int, int, float] | None:
        row: tuple[int, str, int, int, float] | None = self._db().execute(
            "SELECT f.id, f.token, b.size, b.disk, b.atime FROM folders f JOIN bodies b ON b.folder = f.id "
            "WHERE f.name=? AND f.uidvalidity=? AND b.uidvalidity=? AND b.uid=?",
            (as_name(name), uidvalidity, uidvalidity, uid)).fetchone()
        return row

    def get_body(self, name: bytes, uidvalidity: int, uid: int) -> bytes | None:
        """A message's bytes, verified; None if not stored (a damaged file is deleted, never served)."""
        with self._errors(f"reading message {uid} of {name!r}"):
            with self._lock:
                r = self._lookup(name, uidvalidity, uid)
            if r is None:
                return None
            fid, token, _size, _disk, atime = r
            key = _body_key(token, uidvalidity, uid)
            path = self._path(key)
            buf = _read(path)
            data = None if buf is None else _verify_body(key, buf)
            with self._lock:
                con = self._db()
                if data is None:
                    # re-check under the lock: a concurrent put_body may have just replaced it
                    again = _read(path)
                    data = None if again is None else _verify_body(key, again)
                    if data is None:
                        log.warning("cache: %s for message %d of %r is %s; discarded", path, uid, name,
                                    "missing" if buf is None else "damaged")
                        row = con.execute("SELECT disk FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?",
                                          (fid, uidvalidity, uid)).fetchone()
                        if row is not None:
                            con.execute("DELETE FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?",
                                        (fid, uidvalidity, uid))
                            self.forget([(path, row[0])])
                        else:
                            unlink(path)
                        return None
                now = self._clock()
                if now - atime >= self._granularity:
                    con.execute("UPDATE bodies SET atime=? WHERE folder=? AND uidvalidity=? AND uid=?",
                                (now, fid, uidvalidity, uid))
            return data

    def body_uids(self, name: bytes, uidvalidity: int) -> set[int]:
        """UIDs of the folder's messages whose bytes are stored (indexed; not verified)."""
        with self._lock, self._errors(f"listing stored messages of {name!r}"):
            return {r[0] for r in self._db().execute(
                "SELECT b.uid FROM folders f JOIN bodies b ON b.folder = f.id "
                "WHERE f.name=? AND f.uidvalidity=? AND b.uidvalidity=?",
                (as_name(name), uidvalidity, uidvalidity))}

    def has_body(self, name: bytes, uidvalidity: int, uid: int) -> bool:
        """Whether a body is indexed (not verified: get_body may still find it damaged)."""
        with self._lock, self._errors(f"looking up message {uid} of {name!r}"):
            return self._lookup(name, uidvalidity, uid) is not None

    def body_size(self, name: bytes, uidvalidity: int, uid: int) -> int | None:
        """Length of a stored body's data, or None."""
        with self._lock, self._errors(f"looking up message {uid} of {name!r}"):
            r = self._lookup(name, uidvalidity, uid)
            return None if r is None else r[2]

    # ------------------------------------------------------------ eviction

    def evict(self) -> int:
        """Evict least recently used bodies of unpinned folders until under max_bytes; returns bytes freed."""
        with self._lock, self._errors("evicting cached messages"):
            return self._evict_locked()

    def _unpinned(self, con: sqlite3.Connection) -> dict[int, str]:
        """id → token of the folders whose bodies may be evicted."""
        out: dict[int, str] = {}
        for fid, name, token in con.execute("SELECT id, name, token FROM folders").fetchall():
            try:
                pinned = bool(self.pinned(bytes(name)))
            except Exception:  # a broken predicate must not cost pinned mail
                log.exception("pinned(%r) failed; treating the folder as pinned", bytes(name))
                pinned = True
            if not pinned:
                out[fid] = token
        return out

    def _evict_locked(self, keep: tuple[int, int, int] | None = None) -> int:
        excess = self.bytes - self.max_bytes
        if excess <= 0:
            return 0
        con = self._db()
        unpinned = self._unpinned(con)
        if not unpinned:
            return 0
        victims = list(_oldest(con, unpinned, keep, excess))
        if not victims:
            return 0
        with tx(con):
            con.executemany("DELETE FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?",
                            [v[:3] for v in victims])
        self.forget([(self._path(_body_key(unpinned[fid], uv, uid)), disk) for fid, uv, uid, disk in victims])
        return sum(v[3] for v in victims)


def _oldest(con: sqlite3.Connection, unpinned: dict[int, str], keep: tuple[int, int, int] | None,
            excess: int) -> Iterator[tuple[int, int, int, int]]:
    """Bodies of *unpinned* folders, least recently used first, until *excess* bytes (never *keep*)."""
    freed = 0
    cur = con.execute("SELECT folder, uidvalidity, uid, disk FROM bodies ORDER BY atime, folder, uid")
    try:
        for fid, uv, uid, disk in cur:
            if fid not in unpinned or (fid, uv, uid) == keep:
                continue
            yield fid, uv, uid, disk
            freed += disk
            if freed >= excess:
                return
    finally:
        cur.close()
