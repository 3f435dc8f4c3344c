"""Message bodies in the disposable cache: their index rows, ``blobs`` and ``bodies/``.

Exact server bytes, keyed by (folder, UIDVALIDITY, UID). A body of at most
``inline_max`` bytes (:data:`INLINE_MAX`) is *inline*: a row of the ``blobs``
table in ``cache.db``, written in the same transaction as its index row.
A larger one is a file in ``bodies/`` with a header that lets every read
verify it: a torn, truncated or foreign file is deleted, never served.
Creating a file per message costs the writer 100-150 us of kernel time (far
more on a disk without a journal); a row costs a few (issue 12, stop 18 in
``docs/performance.md``). Bounded by ``max_bytes`` (LRU by bytes; folders
for which ``pinned(name)`` is true are never evicted).

Why an inline body needs no header: the header exists because a file and its
row are written apart, so after a crash or a power loss a committed row can
name a torn or empty file (``fsync=False``) or a file written for another
key. An inline body shares its row's transaction: sqlite's WAL commits are
atomic and checksummed, so after any crash the row is there with all its
bytes or not at all; a deleted row takes its blob with it in the same
statement (the ``bodies_blob_gone`` trigger), and a read finds the blob by
the id its row holds, under the cache's lock. What a crash cannot do, a
damaged disk can: sqlite checksums its WAL frames, not the database's pages,
so each blob carries the CRC-32 of its bytes (about 0.1 s per 265 MB, in the
store's thread) and a read compares it and the length with the row's.

:class:`Bodies` shares ``cache.db`` and its lock with :class:`.cache.Cache`,
which owns both; it keeps the byte and body counters exact (they change only
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
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .base import Errors, fsync_dir, mkdirs, tx, unlink, write_new
from .cachedb import as_name, match

log = logging.getLogger(__name__)

BODY_MAGIC = b"IMAPFSB1"  # first bytes of every body file (format 1)
ATIME_GRANULARITY = 60.0  # seconds: a body's access time is written at most this often
INLINE_MAX = 256 * 1024  # bytes: a body this long or shorter is kept in cache.db (measured: docs/performance.md)

# bodies whose rows a commit deleted, with their bytes: a file to unlink, or None for an
# inline body (its bytes went with the row)
Files = list[tuple[Path | None, int]]

# a body for Bodies._index: name, uidvalidity, uid, then either (None, its bytes) for an
# inline one or (its file, None) for a file already in place; then data length, bytes on disk
_Written = tuple[bytes, int, int, Path | None, bytes | None, int, int]


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


@contextmanager
def _durable(con: sqlite3.Connection, on: bool) -> Iterator[None]:
    """Make the commits inside durable (``synchronous=FULL``: the WAL is fsynced) if *on*;
    cache.db otherwise runs at NORMAL (a power loss may roll the last commits back)."""
    if not on:
        yield
        return
    con.execute("PRAGMA synchronous=FULL")
    try:
        yield
    finally:
        con.execute("PRAGMA synchronous=NORMAL")


def _read(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


class Bodies:
    """The ``bodies`` and ``blobs`` tables and ``bodies/`` of one cache; see the module docstring.

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
        self.inline_max = INLINE_MAX
        self.bytes = 0  # body files on disk (headers included) and inline bodies' lengths
        self.count = 0

    # ------------------------------------------------------------ bookkeeping

    def sweep(self) -> None:
        """Make bodies/ and the bodies table agree after a crash.

        Files that no row names (tmp files, a crash between rename and
        commit, or between commit and unlink, a file whose body went inline)
        are removed; rows whose file is gone are deleted. Then the byte
        counters are exact. Inline bodies need nothing: they commit with
        their rows.
        """
        con = self._db()
        con.execute("DELETE FROM bodies WHERE folder NOT IN (SELECT id FROM folders)")
        expected: dict[str, tuple[int, int, int, int]] = {}
        for fid, token, uv, uid, disk in con.execute(
                "SELECT b.folder, f.token, b.uidvalidity, b.uid, b.disk FROM bodies b "
                "JOIN folders f ON f.id = b.folder WHERE b.blob IS NULL"):
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
                "SELECT uidvalidity, uid, disk, blob FROM bodies b WHERE folder=? AND NOT EXISTS "
                "(SELECT 1 FROM messages m WHERE m.folder=b.folder AND m.uid=b.uid)", (fid,)).fetchall()
        elif uids is None:
            rows = con.execute("SELECT uidvalidity, uid, disk, blob FROM bodies WHERE folder=?", (fid,)).fetchall()
        else:
            wanted = set(uids)
            rows = [r for r in con.execute("SELECT uidvalidity, uid, disk, blob FROM bodies WHERE folder=?", (fid,))
                    if r[1] in wanted]
        # the trigger deletes the inline bodies' blobs with their rows
        con.executemany("DELETE FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?",
                        [(fid, uv, uid) for uv, uid, _, _ in rows])
        return [(self._file(token, uv, uid, blob), disk) for uv, uid, disk, blob in rows]

    def _file(self, token: str, uidvalidity: int, uid: int, blob: int | None) -> Path | None:
        """The file of a body row, or None for an inline body."""
        return self._path(_body_key(token, uidvalidity, uid)) if blob is None else None

    def forget(self, files: Files) -> None:
        """After a commit that deleted their rows (lock held): unlink and count."""
        for path, disk in files:
            if path is not None:
                unlink(path)
            self.bytes -= disk
            self.count -= 1

    def _replace_row(self, con: sqlite3.Connection, fid: int, token: str, uidvalidity: int, uid: int,
                     size: int, disk: int, blob: int | None) -> tuple[int, int, Path | None]:
        """Inside a transaction: index (fid, uidvalidity, uid) as *size* bytes, *disk* on disk, in
        *blob* (None: in its file). Returns the change of (count, bytes) to apply after the
        commit, and the old row's file if the body left it for a blob (to unlink then).

        The old row is deleted, not REPLACEd: a REPLACE fires no delete trigger,
        so an old inline body's blob would stay behind.
        """
        key = (fid, uidvalidity, uid)
        old = con.execute("SELECT disk, blob FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?",
                          key).fetchone()
        if old is not None:
            con.execute("DELETE FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?", key)
        con.execute("INSERT INTO bodies VALUES (?,?,?,?,?,?,?)", (*key, size, disk, self._clock(), blob))
        if old is None:
            return 1, disk, None
        left = blob is not None and old[1] is None
        return 0, disk - old[0], self._path(_body_key(token, uidvalidity, uid)) if left else None

    # ------------------------------------------------------------ writing

    def put_body(self, name: bytes, uidvalidity: int, uid: int, data: bytes, *, fsync: bool = True) -> bool:
        """Store a message's bytes; False (not stored) unless the folder is stored under *uidvalidity*.

        Up to ``inline_max`` bytes: one transaction writes the bytes and
        their row; *fsync* makes that commit durable (the WAL is fsynced).
        Larger: the file is written as ``.tmp-*`` beside its final name,
        fsynced, renamed into place and the directory fsynced (*fsync* False
        skips both: the header still makes a torn file detectable); then its
        index row is committed. Either way, if the store is then over
        ``max_bytes``, the least recently used bodies of unpinned folders are
        evicted (never this one).
        """
        with self._errors(f"storing message {uid} of {name!r}"):
            data = bytes(data)
            if len(data) <= self.inline_max:
                with self._lock:
                    return self._index([(name, uidvalidity, uid, None, data, len(data), len(data))], None, fsync) == 1
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
                    old = con.execute("SELECT disk, blob FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?",
                                      (m[0], uidvalidity, uid)).fetchone()
                    os.rename(tmp, path)
                    try:
                        with tx(con):
                            dcount, dbytes, _ = self._replace_row(con, m[0], m[1], uidvalidity, uid,
                                                                  len(data), disk, None)
                    except BaseException:
                        # the row is not there: the file must not be either, nor a row for the file it replaced
                        unlink(path)
                        if old is not None and old[1] is None:
                            con.execute("DELETE FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?",
                                        (m[0], uidvalidity, uid))
                            self.bytes -= old[0]
                            self.count -= 1
                        raise
                    self.count += dcount
                    self.bytes += dbytes
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

        The write-behind path of a cold ``grep -r``: one commit for many
        bodies instead of one each, and no file at all for the inline ones.
        Same guarantees as ``put_body(fsync=False)``: each file is renamed
        into place before its row commits; a file whose row never commits is
        swept at the next open. Returns how many were stored.
        """
        items = list(items)
        if not items:
            return 0
        with self._errors(f"storing {len(items)} messages"):
            with self._lock:
                con = self._db()
                matches = {(n, uv): match(con, n, uv) for n, uv, _u, _d in items}
            written: list[_Written] = []
            for name, uv, uid, data in items:
                m = matches[(name, uv)]
                if m is None:
                    continue
                if len(data) <= self.inline_max:
                    written.append((name, uv, uid, None, data, len(data), len(data)))
                    continue
                path, tmp, disk = self._write_tmp(m[1], uv, uid, data, False)
                os.rename(tmp, path)
                written.append((name, uv, uid, path, None, len(data), disk))
            with self._lock:
                return self._index(written, matches, False)

    def _index(self, written: list[_Written], matches: dict[tuple[bytes, int], tuple[int, str] | None] | None,
               fsync: bool) -> int:
        """Index bodies in one transaction (lock held): inline ones with their bytes, files
        already renamed into place. A file whose folder was dropped, renamed or reset since
        *matches* was taken is unlinked instead. Returns how many were stored."""
        con = self._db()
        keep = None
        stored = count = nbytes = 0
        left: list[Path] = []
        current: dict[tuple[bytes, int], tuple[int, str] | None] = {}
        with _durable(con, fsync), tx(con):
            for name, uv, uid, path, data, size, disk in written:
                if (name, uv) not in current:
                    current[(name, uv)] = match(con, name, uv)
                m = current[(name, uv)]
                if m is None or (matches is not None and m != matches[(name, uv)]):
                    if path is not None:
                        unlink(path)  # dropped, renamed or reset meanwhile
                    continue
                blob = None if data is None else con.execute("INSERT INTO blobs(data, crc) VALUES (?, ?)",
                                                             (data, zlib.crc32(data))).lastrowid
                dc, db, gone = self._replace_row(con, m[0], m[1], uv, uid, size, disk, blob)
                count += dc
                nbytes += db
                if gone is not None:
                    left.append(gone)
                keep = (m[0], uv, uid)
                stored += 1
        self.count += count
        self.bytes += nbytes
        for path in left:
            unlink(path)
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

    def _lookup(self, name: bytes, uidvalidity: int, uid: int) -> tuple[int, str, int, int, float, int | None] | None:
        """(folder id, token, size, disk, atime, blob id or None) of a stored body."""
        row: tuple[int, str, int, int, float, int | None] | None = self._db().execute(
            "SELECT f.id, f.token, b.size, b.disk, b.atime, b.blob FROM folders f JOIN bodies b ON b.folder = f.id "
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
                fid, token, size, disk, atime, blob = r
                if blob is not None:
                    return self._get_inline(name, (fid, uidvalidity, uid), size, disk, atime, blob)
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
                        row = con.execute("SELECT disk FROM bodies WHERE folder=? AND uidvalidity=? AND uid=? "
                                          "AND blob IS NULL", (fid, uidvalidity, uid)).fetchone()
                        if row is not None:
                            con.execute("DELETE FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?",
                                        (fid, uidvalidity, uid))
                            self.forget([(path, row[0])])
                        else:
                            unlink(path)
                        return None
                self._touch(con, (fid, uidvalidity, uid), atime)
            return data

    def _get_inline(self, name: bytes, key: tuple[int, int, int], size: int, disk: int, atime: float,
                    blob: int) -> bytes | None:
        """get_body of an inline body (lock held). Its row and bytes committed together,
        so what is checked is damage to cache.db after the commit (sqlite checksums WAL
        frames, not the database's pages): a length that differs from the row's, or bytes
        whose CRC-32 is not the one written with them. Such a body is deleted and logged,
        never served (a body file's sha256 header does the same for files)."""
        con = self._db()
        got = con.execute("SELECT data, crc FROM blobs WHERE id=?", (blob,)).fetchone()
        why = ("missing" if got is None else f"{len(got[0])} long, not {size}" if len(got[0]) != size
               else "damaged (CRC-32)" if zlib.crc32(got[0]) != got[1] else None)
        if got is None or why is not None:
            log.warning("cache: the bytes of message %d of %r in cache.db are %s; discarded", key[2], name, why)
            con.execute("DELETE FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?", key)
            self.forget([(None, disk)])
            return None
        self._touch(con, key, atime)
        return bytes(got[0])

    def _touch(self, con: sqlite3.Connection, key: tuple[int, int, int], atime: float) -> None:
        """Record a read for the LRU, at most once per granularity (lock held)."""
        now = self._clock()
        if now - atime >= self._granularity:
            con.execute("UPDATE bodies SET atime=? WHERE folder=? AND uidvalidity=? AND uid=?", (now, *key))

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
        with tx(con):  # the trigger deletes the inline bodies' blobs with their rows
            con.executemany("DELETE FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?",
                            [v[:3] for v in victims])
        self.forget([(self._file(unpinned[fid], uv, uid, blob), disk) for fid, uv, uid, disk, blob in victims])
        return sum(v[3] for v in victims)


def _oldest(con: sqlite3.Connection, unpinned: dict[int, str], keep: tuple[int, int, int] | None,
            excess: int) -> Iterator[tuple[int, int, int, int, int | None]]:
    """Bodies of *unpinned* folders, least recently used first, until *excess* bytes (never *keep*)."""
    freed = 0
    cur = con.execute("SELECT folder, uidvalidity, uid, disk, blob FROM bodies ORDER BY atime, folder, uid")
    try:
        for fid, uv, uid, disk, blob in cur:
            if fid not in unpinned or (fid, uv, uid) == keep:
                continue
            yield fid, uv, uid, disk, blob
            freed += disk
            if freed >= excess:
                return
    finally:
        cur.close()
