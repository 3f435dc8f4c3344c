"""The persistent local store under the offline cache (issue 7).

A blocking, thread-safe store that callers run in worker threads
(``trio.to_thread.run_sync``). Standard library only. It keeps four things:

* the folder list (the server's LIST answer) and, per folder, its
  UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and message metadata (``RawMeta``),
  in ``cache.db`` (sqlite, WAL);
* message bodies, exact server bytes, one file each under ``bodies/``, keyed
  by (folder, UIDVALIDITY, UID), with a header that lets every read verify
  the file (a torn, truncated or foreign file is deleted, never served), and
  bounded by ``max_bytes`` (LRU by bytes; folders for which ``pinned(name)``
  is true are never evicted);
* the journal of offline changes in ``journal.db`` (sqlite,
  ``synchronous=FULL``) with new messages' bytes in ``journal-blobs/``:
  every ``journal_add`` is on disk before it returns;
* a short history of finished journal entries (for the state xattr).

The cache (``cache.db`` and ``bodies/``) is disposable: a damaged
``cache.db`` is moved aside and the store starts empty. The journal is not:
a damaged ``journal.db`` stops the store with a clear message, and nothing in
this module ever deletes a pending change or a new message's bytes.
``docs/offline.md`` has the layout, the invariants and the crash-safety
argument in full.

Errors: every method returns or raises :class:`StoreError` (a full disk is
:class:`StoreFull`; another process holding the directory is
:class:`StoreLocked`).

Measured on the development machine (2 cores, ext4 on virtio, Python 3.11,
sqlite 3.40; ``python -m imapfs.store --bench 100000 --sweep``, and printed by
``tests/test_store.py::test_timing_100k``), one folder of 100,000 messages:

=================================================  ===========
``put_folder(..., replace=True)``, new folder       0.23-0.25 s
``put_folder(..., replace=True)`` over itself       0.25-0.27 s
``get_folder`` (100,000 ``RawMeta``)                0.23-0.26 s
``add_messages`` of 1,000 into it                   2-3 ms
``put_body`` 25 KB, fsync on / off                  0.95 ms / 0.2 ms
``get_body`` 25 KB (verified)                       0.09 ms
opening a store holding 100,000 bodies (sweep)      0.65-0.85 s
``cache.db`` size per message (short subjects)      ~50 bytes
=================================================  ===========

Metadata is not bounded: 100,000 messages cost about 5 MB of ``cache.db``,
which is small next to their bodies, and a folder's metadata is what lets it
be listed offline at all, so it is kept until the folder is dropped.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ImapfsError
from .imapproto import ListEntry
from .session import RawMeta

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # PRAGMA user_version of cache.db
JOURNAL_FORMAT = 1  # PRAGMA user_version of journal.db
BODY_MAGIC = b"IMAPFSB1"  # first bytes of every body file (format 1)
ATIME_GRANULARITY = 60.0  # seconds: a body's access time is written at most this often
HISTORY_KEEP = 1000  # finished journal entries remembered
_SQLITE_CORRUPT = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_SQLITE_FULL = 13
_FLAG_SEP = "\x1f"
_FLAG_JSON = "\x1e"

# test seam: the one place body and blob bytes are written
_os_write = os.write


class StoreError(ImapfsError):
    """The local store failed; the message says what and where."""


class StoreFull(StoreError):
    """The disk holding the store is full (ENOSPC / SQLITE_FULL)."""


class StoreLocked(StoreError):
    """Another process (or Store object) has the cache directory open."""


@dataclass
class FolderRecord:
    """What the store knows of one folder; ``messages`` are sorted by UID."""

    name: bytes
    uidvalidity: int
    uidnext: int | None
    highestmodseq: int | None
    messages: list[RawMeta]


@dataclass
class JournalEntry:
    """One pending offline change, as :meth:`Store.journal_add` recorded it."""

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


# ---------------------------------------------------------------- encodings

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


def _as_name(name: Any) -> bytes:
    if not isinstance(name, bytes):
        raise StoreError(f"folder names are bytes (the server's name), not {type(name).__name__}")
    return name


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


# ---------------------------------------------------------------- files

def _mkdirs(path: Path) -> None:
    """Create *path* and missing parents with mode 0700 (only the ones we create)."""
    missing = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)  # the umask may have taken bits; we want exactly 0700
    if not path.is_dir():
        raise StoreError(f"{path} exists and is not a directory")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, parts: Iterable[bytes], sync: bool) -> None:
    """Write *parts* into a new file *path* (O_EXCL); on any error remove it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    n = _os_write(fd, view)
                    view = view[n:]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("cannot remove %s: %s", path, e)


# ---------------------------------------------------------------- schemas

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


class _Corrupt(Exception):
    pass


def _errcode(e: sqlite3.Error) -> int | None:
    code = getattr(e, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


# ---------------------------------------------------------------- the store

class Store:
    """The offline cache and journal under one directory; see the module docstring.

    ``Store(root, max_bytes, pinned)``: *max_bytes* bounds the bytes of body
    files on disk (headers included); ``pinned(folder_name)`` says a folder's
    bodies must not be evicted. Keyword-only: *clock* (``time.time``) and
    *atime_granularity* exist for tests.
    """

    def __init__(self, root: str | Path, max_bytes: int,
                 pinned: Callable[[bytes], bool] = lambda folder: False, *,
                 clock: Callable[[], float] = time.time,
                 atime_granularity: float = ATIME_GRANULARITY) -> None:
        self.root = Path(root).absolute()
        self.max_bytes = int(max_bytes)
        self.pinned = pinned
        self._clock = clock
        self._granularity = atime_granularity
        self._lock = threading.RLock()  # cache.db, bodies/, counters
        self._jlock = threading.RLock()  # journal.db, journal-blobs/
        self._con: sqlite3.Connection | None = None
        self._jcon: sqlite3.Connection | None = None
        self._lockfd: int | None = None
        self._body_bytes = 0
        self._body_count = 0
        self._last_error: tuple[float, str] | None = None
        self.bodies_dir = self.root / "bodies"
        self.blobs_dir = self.root / "journal-blobs"
        try:
            try:
                _mkdirs(self.root)
            except OSError as e:
                raise StoreError(f"cannot create cache directory {self.root}: {e.strerror or e}") from e
            st = os.stat(self.root)
            if st.st_mode & 0o077:
                log.warning("cache directory %s is accessible to other users (mode %o); it holds mail",
                            self.root, st.st_mode & 0o777)
            self._take_lock()
            with self._errors("opening the journal"):
                self._jcon = self._open_journal()
            with self._errors("opening the cache"):
                self._con = self._open_cache()
                _mkdirs(self.bodies_dir)
                _mkdirs(self.blobs_dir)
                _fsync_dir(self.root)
                self._sweep_bodies()
                self._sweep_blobs()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ lifecycle

    def _take_lock(self) -> None:
        path = self.root / "lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise StoreError(f"cannot open {path}: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            try:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            except OSError:
                holder = ""
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise StoreLocked(
                    f"cache directory {self.root} is in use by another imapfs{who}; two mounts must not "
                    f"share one cache directory: give each its own cache_dir") from None
            raise StoreError(f"cannot lock {path}: {e.strerror or e}") from e
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is only for the message above
        self._lockfd = fd

    def close(self) -> None:
        """Close the databases and release the directory lock. Idempotent."""
        with self._jlock:
            if self._jcon is not None:
                try:
                    self._jcon.close()
                except sqlite3.Error:
                    pass
                self._jcon = None
        with self._lock:
            if self._con is not None:
                try:
                    self._con.close()
                except sqlite3.Error:
                    pass
                self._con = None
            if self._lockfd is not None:
                try:
                    fcntl.flock(self._lockfd, fcntl.LOCK_UN)
                finally:
                    os.close(self._lockfd)
                    self._lockfd = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self, path: Path, synchronous: str) -> sqlite3.Connection:
        new = not path.exists()
        con = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(f"PRAGMA synchronous={synchronous}")
            if new:
                os.chmod(path, 0o600)
        except BaseException:
            con.close()
            raise
        return con

    def _open_journal(self) -> sqlite3.Connection:
        path = self.root / "journal.db"
        try:
            con = self._connect(path, "FULL")
            try:
                version = con.execute("PRAGMA user_version").fetchone()[0]
                if version > JOURNAL_FORMAT:
                    raise StoreError(
                        f"{path} was written by a newer imapfs (journal format {version}, this one "
                        f"knows {JOURNAL_FORMAT}); it may hold offline changes not yet sent: "
                        f"use the newer imapfs to replay them")
                con.executescript(_JOURNAL_SCHEMA)
                con.execute(f"PRAGMA user_version={JOURNAL_FORMAT}")
            except BaseException:
                con.close()
                raise
        except sqlite3.DatabaseError as e:
            if _errcode(e) in _SQLITE_CORRUPT:
                raise StoreError(
                    f"the offline journal {path} is damaged ({e}); it may hold changes not yet sent to the "
                    f"server, so it is left as it is: move it (and journal.db-wal, journal-blobs/) aside "
                    f"to mount without it; new messages are in journal-blobs/") from e
            raise
        return con

    def _open_cache(self) -> sqlite3.Connection:
        path = self.root / "cache.db"
        try:
            return self._try_open_cache(path)
        except _Corrupt as e:
            why = str(e)
        except sqlite3.DatabaseError as e:
            if _errcode(e) not in _SQLITE_CORRUPT:
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
        if self.bodies_dir.exists():
            trash = self.root / f"bodies.corrupt-{stamp}"
            os.replace(self.bodies_dir, trash)
            shutil.rmtree(trash, ignore_errors=True)
        self._note_error(f"cache {path} was damaged and reset: {why}")
        return self._try_open_cache(path)

    def _try_open_cache(self, path: Path) -> sqlite3.Connection:
        con = self._connect(path, "NORMAL")
        try:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version > CACHE_FORMAT:
                raise StoreError(
                    f"{path} was written by a newer imapfs (cache format {version}, this one knows "
                    f"{CACHE_FORMAT}); use the newer imapfs, or give this one another cache_dir")
            check = con.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise _Corrupt(f"quick_check: {check}")
            con.executescript(_CACHE_SCHEMA)
            con.execute(f"PRAGMA user_version={CACHE_FORMAT}")
        except BaseException:
            con.close()
            raise
        return con

    def _sweep_bodies(self) -> None:
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
        with os.scandir(self.bodies_dir) as shards:
            for shard in shards:
                if not shard.is_dir(follow_symlinks=False):
                    _unlink(Path(shard.path))
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
                            _unlink(Path(e.path))
        missing = [expected[n][:3] for n in expected.keys() - found]
        if missing or resized:
            with self._tx(con):
                con.executemany("DELETE FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?", missing)
                con.executemany("UPDATE bodies SET disk=? WHERE folder=? AND uidvalidity=? AND uid=?", resized)
        if removed or missing:
            log.info("cache sweep: removed %d stray body files, %d index rows without a file", removed, len(missing))
        self._body_count, self._body_bytes = con.execute(
            "SELECT count(*), coalesce(sum(disk), 0) FROM bodies").fetchone()

    def _sweep_blobs(self) -> None:
        """Journal blobs: keep pending ones, remove finished ones, set unknown ones aside.

        A blob that no row names was written by a ``journal_add`` that never
        returned (a crash before its commit): nobody was told it was saved,
        but it is someone's mail, so it is moved to ``journal-orphans/``.
        """
        jcon = self._jdb()
        pending = {b for (b,) in jcon.execute("SELECT blob FROM pending WHERE blob IS NOT NULL")}
        finished = {b for (b,) in jcon.execute("SELECT blob FROM history WHERE blob IS NOT NULL")}
        with os.scandir(self.blobs_dir) as it:
            entries = list(it)
        for e in entries:
            if e.name in pending:
                continue
            if e.name in finished or e.name.startswith(".tmp-"):
                _unlink(Path(e.path))
                continue
            orphans = self.root / "journal-orphans"
            _mkdirs(orphans)
            os.replace(e.path, orphans / e.name)
            log.warning("journal: %s belongs to no journal entry (a crash before it was recorded); "
                        "kept in %s", e.name, orphans)
        for seq, blob in jcon.execute("SELECT seq, blob FROM pending WHERE blob IS NOT NULL"):
            if not (self.blobs_dir / blob).exists():
                log.error("journal entry %d: its message file %s is missing", seq, self.blobs_dir / blob)

    # ------------------------------------------------------------ plumbing

    def _db(self) -> sqlite3.Connection:
        if self._con is None:
            raise StoreError(f"store {self.root} is closed")
        return self._con

    def _jdb(self) -> sqlite3.Connection:
        if self._jcon is None:
            raise StoreError(f"store {self.root} is closed")
        return self._jcon

    @contextmanager
    def _tx(self, con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                try:
                    con.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise

    def _note_error(self, msg: str) -> None:
        self._last_error = (self._clock(), msg)

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn everything into StoreError (ENOSPC and SQLITE_FULL into StoreFull)."""
        try:
            yield
        except StoreError as e:
            self._note_error(str(e))
            raise
        except sqlite3.Error as e:
            if _errcode(e) == _SQLITE_FULL:
                err: StoreError = StoreFull(f"{what}: the disk holding {self.root} is full ({e})")
            else:
                err = StoreError(f"{what}: {self.root}: {e}")
            self._note_error(str(err))
            raise err from e
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                err = StoreFull(f"{what}: the disk holding {self.root} is full ({e.strerror})")
            else:
                err = StoreError(f"{what}: {e.filename or self.root}: {e.strerror or e}")
            self._note_error(str(err))
            raise err from e
        except (TypeError, ValueError, OverflowError) as e:
            err = StoreError(f"{what}: invalid argument: {e}")
            self._note_error(str(err))
            raise err from e

    def _folder(self, con: sqlite3.Connection, name: bytes) -> tuple[int, str, int] | None:
        return con.execute("SELECT id, token, uidvalidity FROM folders WHERE name=?", (name,)).fetchone()

    def _body_path(self, key: bytes) -> Path:
        n = _body_name(key)
        return self.bodies_dir / n[:2] / n

    def _drop_bodies(self, con: sqlite3.Connection, fid: int, token: str,
                     uids: Iterable[int] | None = None, *, absent: bool = False) -> list[tuple[Path, int]]:
        """Delete body rows of folder *fid* (all, those in *uids*, or with *absent* those
        not in messages); returns (file, disk bytes) to unlink after the commit."""
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
        if uids is None and not absent:
            con.execute("DELETE FROM structures WHERE folder=?", (fid,))
        elif uids is not None:
            con.executemany("DELETE FROM structures WHERE folder=? AND uid=?", [(fid, u) for u in set(uids)])
        return [(self._body_path(_body_key(token, uv, uid)), disk) for uv, uid, disk in rows]

    def _forget_files(self, files: list[tuple[Path, int]]) -> None:
        """After a commit that deleted their rows (lock held): unlink and count."""
        for path, disk in files:
            _unlink(path)
            self._body_bytes -= disk
            self._body_count -= 1

    @staticmethod
    def _rows(fid: int, metas: Iterable[RawMeta]) -> Iterator[tuple]:
        for m in metas:
            yield (fid, m.uid, m.size, m.internaldate, _enc_flags(m.flags), m.subject)

    # ------------------------------------------------------------ folder list

    def put_folders(self, entries: list[ListEntry]) -> None:
        """Store the server's folder list (replaces the stored one)."""
        with self._lock, self._errors("storing the folder list"):
            rows = [(i, _as_name(e.name), e.delimiter,
                     json.dumps(sorted(f.decode("latin-1") for f in e.flags)))
                    for i, e in enumerate(entries)]
            con = self._db()
            with self._tx(con):
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
            name = _as_name(name)
            con = self._db()
            files: list[tuple[Path, int]] = []
            with self._tx(con):
                rec = self._folder(con, name)
                if rec is None:
                    con.execute("INSERT INTO folders(name, token, uidvalidity, uidnext, highestmodseq) "
                                "VALUES (?,?,?,?,?)", (name, uuid.uuid4().hex, uidvalidity, uidnext, highestmodseq))
                    fid = self._folder(con, name)[0]
                else:
                    fid, token, old_uv = rec
                    if old_uv != uidvalidity:
                        replace = True
                        files += self._drop_bodies(con, fid, token)
                    con.execute("UPDATE folders SET uidvalidity=?, uidnext=?, highestmodseq=? WHERE id=?",
                                (uidvalidity, uidnext, highestmodseq, fid))
                    if replace:
                        con.execute("DELETE FROM messages WHERE folder=?", (fid,))
                con.executemany("INSERT OR REPLACE INTO messages VALUES (?,?,?,?,?,?)", self._rows(fid, messages))
                if replace and rec is not None:
                    files += self._drop_bodies(con, fid, rec[1], absent=True)
            self._forget_files(files)

    def _match(self, con: sqlite3.Connection, name: bytes, uidvalidity: int) -> tuple[int, str] | None:
        rec = self._folder(con, _as_name(name))
        if rec is None or rec[2] != uidvalidity:
            return None
        return rec[0], rec[1]

    def add_messages(self, name: bytes, uidvalidity: int, metas: Iterable[RawMeta]) -> bool:
        """Add or update messages; False (nothing stored) unless the folder is stored under *uidvalidity*."""
        with self._lock, self._errors(f"adding messages to {name!r}"):
            con = self._db()
            with self._tx(con):
                m = self._match(con, name, uidvalidity)
                if m is None:
                    return False
                con.executemany("INSERT OR REPLACE INTO messages VALUES (?,?,?,?,?,?)", self._rows(m[0], metas))
            return True

    def remove_messages(self, name: bytes, uidvalidity: int, uids: Iterable[int]) -> bool:
        """Remove messages and their bodies; False unless the folder is stored under *uidvalidity*."""
        with self._lock, self._errors(f"removing messages from {name!r}"):
            con = self._db()
            uids = list(uids)
            with self._tx(con):
                m = self._match(con, name, uidvalidity)
                if m is None:
                    return False
                con.executemany("DELETE FROM messages WHERE folder=? AND uid=?", [(m[0], u) for u in uids])
                files = self._drop_bodies(con, m[0], m[1], uids)
            self._forget_files(files)
            return True

    def set_flags(self, name: bytes, uidvalidity: int, uid: int, flags: Iterable[str]) -> bool:
        """Replace one message's flags; False if that message is not stored."""
        return self.set_flags_many(name, uidvalidity, {uid: tuple(flags)}) == 1

    def set_flags_many(self, name: bytes, uidvalidity: int, flags: Mapping[int, Iterable[str]]) -> int:
        """Replace the flags of several messages (CONDSTORE changes); returns how many were stored."""
        with self._lock, self._errors(f"setting flags in {name!r}"):
            con = self._db()
            with self._tx(con):
                m = self._match(con, name, uidvalidity)
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
            with self._tx(con):
                m = self._match(con, name, uidvalidity)
                if m is None:
                    return False
                con.execute("UPDATE folders SET uidnext=?, highestmodseq=? WHERE id=?", (uidnext, highestmodseq, m[0]))
            return True

    def get_folder(self, name: bytes) -> FolderRecord | None:
        """The stored state of folder *name*, messages sorted by UID; None if not stored."""
        with self._lock, self._errors(f"reading folder {name!r}"):
            name = _as_name(name)
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
            name = _as_name(name)
            d = _delim(delimiter)
            con = self._db()
            files: list[tuple[Path, int]] = []
            with self._tx(con):
                victims = [(fid, token) for fid, n, token in con.execute("SELECT id, name, token FROM folders")
                           if _in_family(bytes(n), name, d)]
                for fid, token in victims:
                    files += self._drop_bodies(con, fid, token)
                    con.execute("DELETE FROM messages WHERE folder=?", (fid,))
                    con.execute("DELETE FROM folders WHERE id=?", (fid,))
            self._forget_files(files)
            return len(victims)

    def rename_folder(self, old: bytes, new: bytes, delimiter: str | bytes | None = None) -> int:
        """Rename a folder (with *delimiter*, also its sub-folders ``old<delim>...``).

        State, messages and bodies follow (bodies are keyed by a per-folder
        token, so no file moves). Stale records already under a target name
        are dropped. Folder-list entries are renamed in the same transaction,
        so the list and the state agree. Returns how many folders moved.
        """
        with self._lock, self._errors(f"renaming folder {old!r} to {new!r}"):
            old, new = _as_name(old), _as_name(new)
            d = _delim(delimiter)
            if old == new:
                return 0
            con = self._db()
            files: list[tuple[Path, int]] = []
            with self._tx(con):
                rows = [(fid, bytes(n), token) for fid, n, token in con.execute("SELECT id, name, token FROM folders")]
                moves = {fid: t for fid, n, _ in rows if (t := _renamed(n, old, new, d)) is not None}
                targets = set(moves.values())
                for fid, n, token in rows:
                    if n in targets and fid not in moves:
                        files += self._drop_bodies(con, fid, token)
                        con.execute("DELETE FROM messages WHERE folder=?", (fid,))
                        con.execute("DELETE FROM folders WHERE id=?", (fid,))
                # two phases, so that no intermediate name collides
                con.executemany("UPDATE folders SET name=? WHERE id=?",
                                [(b"\0imapfs-rename\0" + str(fid).encode(), fid) for fid in moves])
                con.executemany("UPDATE folders SET name=? WHERE id=?", [(t, fid) for fid, t in moves.items()])
                listed = con.execute("SELECT pos, name, delimiter, flags FROM folder_list ORDER BY pos").fetchall()
                if listed:
                    out = []
                    renamed = [(pos, _renamed(bytes(n), old, new, d), dl, fl) for pos, n, dl, fl in listed]
                    new_names = {t for _, t, _, _ in renamed if t is not None}
                    for (pos, n, dl, fl), (_, t, _, _) in zip(listed, renamed):
                        if t is not None:
                            out.append((pos, t, dl, fl))
                        elif bytes(n) not in new_names:
                            out.append((pos, bytes(n), dl, fl))
                    con.execute("DELETE FROM folder_list")
                    con.executemany("INSERT INTO folder_list VALUES (?,?,?,?)", out)
            self._forget_files(files)
            return len(moves)

    # ------------------------------------------------------------ bodies

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
                m = self._match(self._db(), name, uidvalidity)
            if m is None:
                return False
            key = _body_key(m[1], uidvalidity, uid)
            path = self._body_path(key)
            tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
            header = _body_header(key, data)
            if not path.parent.is_dir():
                _mkdirs(path.parent)
            _write_new(tmp, (header, data), fsync)
            try:
                with self._lock:
                    con = self._db()
                    if self._match(con, name, uidvalidity) != m:
                        return False  # dropped, renamed or reset meanwhile
                    old = con.execute("SELECT disk FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?",
                                      (m[0], uidvalidity, uid)).fetchone()
                    os.rename(tmp, path)
                    disk = len(header) + len(data)
                    try:
                        con.execute("INSERT OR REPLACE INTO bodies VALUES (?,?,?,?,?,?)",
                                    (m[0], uidvalidity, uid, len(data), disk, self._clock()))
                    except BaseException:
                        # the row is not there: the file must not be either
                        _unlink(path)
                        if old is not None:
                            con.execute("DELETE FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?",
                                        (m[0], uidvalidity, uid))
                            self._body_bytes -= old[0]
                            self._body_count -= 1
                        raise
                    if old is None:
                        self._body_count += 1
                        self._body_bytes += disk
                    else:
                        self._body_bytes += disk - old[0]
                    if self._body_bytes > self.max_bytes:
                        self._evict_locked(keep=(m[0], uidvalidity, uid))
            finally:
                if tmp.exists():
                    _unlink(tmp)
            if fsync:
                _fsync_dir(path.parent)
            return True

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
                matches = {(n, uv): self._match(con, n, uv) for n, uv, _u, _d in items}
            written: list[tuple[bytes, int, int, Path, int, int]] = []
            for name, uv, uid, data in items:
                m = matches[(name, uv)]
                if m is None:
                    continue
                key = _body_key(m[1], uv, uid)
                path = self._body_path(key)
                tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
                header = _body_header(key, data)
                if not path.parent.is_dir():
                    _mkdirs(path.parent)
                _write_new(tmp, (header, data), False)
                os.rename(tmp, path)
                written.append((name, uv, uid, path, len(data), len(header) + len(data)))
            stored = 0
            with self._lock:
                con = self._db()
                keep = None
                with self._tx(con):
                    for name, uv, uid, path, size, disk in written:
                        m = self._match(con, name, uv)
                        if m is None or m != matches[(name, uv)]:
                            _unlink(path)  # dropped, renamed or reset meanwhile
                            continue
                        old = con.execute("SELECT disk FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?",
                                          (m[0], uv, uid)).fetchone()
                        con.execute("INSERT OR REPLACE INTO bodies VALUES (?,?,?,?,?,?)",
                                    (m[0], uv, uid, size, disk, self._clock()))
                        self._body_bytes += disk - (old[0] if old else 0)
                        self._body_count += 0 if old else 1
                        keep = (m[0], uv, uid)
                        stored += 1
                if self._body_bytes > self.max_bytes:
                    self._evict_locked(keep=keep)
            return stored

    def _lookup_body(self, name: bytes, uidvalidity: int, uid: int) -> tuple[int, str, int, int, float] | None:
        return self._db().execute(
            "SELECT f.id, f.token, b.size, b.disk, b.atime FROM folders f JOIN bodies b ON b.folder = f.id "
            "WHERE f.name=? AND f.uidvalidity=? AND b.uidvalidity=? AND b.uid=?",
            (_as_name(name), uidvalidity, uidvalidity, uid)).fetchone()

    def get_body(self, name: bytes, uidvalidity: int, uid: int) -> bytes | None:
        """A message's bytes, verified; None if not stored (a damaged file is deleted, never served)."""
        with self._errors(f"reading message {uid} of {name!r}"):
            with self._lock:
                r = self._lookup_body(name, uidvalidity, uid)
            if r is None:
                return None
            fid, token, _size, _disk, atime = r
            key = _body_key(token, uidvalidity, uid)
            path = self._body_path(key)
            try:
                with open(path, "rb") as f:
                    buf = f.read()
            except FileNotFoundError:
                buf = None
            data = None if buf is None else _verify_body(key, buf)
            with self._lock:
                con = self._db()
                if data is None:
                    # re-check under the lock: a concurrent put_body may have just replaced it
                    try:
                        with open(path, "rb") as f:
                            data = _verify_body(key, f.read())
                    except FileNotFoundError:
                        data = None
                    if data is None:
                        log.warning("cache: %s for message %d of %r is %s; discarded", path, uid, name,
                                    "missing" if buf is None else "damaged")
                        row = con.execute("SELECT disk FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?",
                                          (fid, uidvalidity, uid)).fetchone()
                        if row is not None:
                            con.execute("DELETE FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?",
                                        (fid, uidvalidity, uid))
                            self._forget_files([(path, row[0])])
                        else:
                            _unlink(path)
                        return None
                now = self._clock()
                if now - atime >= self._granularity:
                    con.execute("UPDATE bodies SET atime=? WHERE folder=? AND uidvalidity=? AND uid=?",
                                (now, fid, uidvalidity, uid))
            return data

    def put_structure(self, name: bytes, uidvalidity: int, uid: int, data: bytes) -> bool:
        """Keep a message's BODYSTRUCTURE (serialised by the caller) for offline ``.parts`` listings."""
        with self._lock, self._errors(f"storing the structure of message {uid} of {name!r}"):
            con = self._db()
            with self._tx(con):
                m = self._match(con, name, uidvalidity)
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
            with self._tx(con):
                matches: dict[tuple[bytes, int], Any] = {}
                for name, uv, uid, data in items:
                    if (name, uv) not in matches:
                        matches[(name, uv)] = self._match(con, name, uv)
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
                (_as_name(name), uidvalidity, uidvalidity, uid)).fetchone()
            return None if r is None else bytes(r[0])

    def body_uids(self, name: bytes, uidvalidity: int) -> set[int]:
        """UIDs of the folder's messages whose bytes are stored (indexed; not verified)."""
        with self._lock, self._errors(f"listing stored messages of {name!r}"):
            return {r[0] for r in self._db().execute(
                "SELECT b.uid FROM folders f JOIN bodies b ON b.folder = f.id "
                "WHERE f.name=? AND f.uidvalidity=? AND b.uidvalidity=?",
                (_as_name(name), uidvalidity, uidvalidity))}

    def has_body(self, name: bytes, uidvalidity: int, uid: int) -> bool:
        """Whether a body is indexed (not verified: get_body may still find it damaged)."""
        with self._lock, self._errors(f"looking up message {uid} of {name!r}"):
            return self._lookup_body(name, uidvalidity, uid) is not None

    def body_size(self, name: bytes, uidvalidity: int, uid: int) -> int | None:
        """Length of a stored body's data, or None."""
        with self._lock, self._errors(f"looking up message {uid} of {name!r}"):
            r = self._lookup_body(name, uidvalidity, uid)
            return None if r is None else r[2]

    def copy_body(self, src: tuple[bytes, int, int], dst: tuple[bytes, int, int], *, fsync: bool = True) -> bool:
        """Store the body of *src* (name, uidvalidity, uid) also under *dst*
        (after COPYUID/APPENDUID told the new UID); False if src is not stored."""
        data = self.get_body(*src)
        if data is None:
            return False
        return self.put_body(*dst, data, fsync=fsync)

    def evict(self) -> int:
        """Evict least recently used bodies of unpinned folders until under max_bytes; returns bytes freed."""
        with self._lock, self._errors("evicting cached messages"):
            return self._evict_locked()

    def _evict_locked(self, keep: tuple[int, int, int] | None = None) -> int:
        excess = self._body_bytes - self.max_bytes
        if excess <= 0:
            return 0
        con = self._db()
        unpinned: dict[int, str] = {}
        for fid, name, token in con.execute("SELECT id, name, token FROM folders").fetchall():
            try:
                pinned = bool(self.pinned(bytes(name)))
            except Exception:  # a broken predicate must not cost pinned mail
                log.exception("pinned(%r) failed; treating the folder as pinned", bytes(name))
                pinned = True
            if not pinned:
                unpinned[fid] = token
        if not unpinned:
            return 0
        victims = []
        freed = 0
        cur = con.execute("SELECT folder, uidvalidity, uid, disk FROM bodies ORDER BY atime, folder, uid")
        try:
            for fid, uv, uid, disk in cur:
                if fid not in unpinned or (fid, uv, uid) == keep:
                    continue
                victims.append((fid, uv, uid, disk))
                freed += disk
                if freed >= excess:
                    break
        finally:
            cur.close()
        if not victims:
            return 0
        with self._tx(con):
            con.executemany("DELETE FROM bodies WHERE folder=? AND uidvalidity=? AND uid=?",
                            [v[:3] for v in victims])
        self._forget_files([(self._body_path(_body_key(unpinned[fid], uv, uid)), disk)
                            for fid, uv, uid, disk in victims])
        return freed

    # ------------------------------------------------------------ journal

    def journal_add(self, op: str, args: dict[str, Any], blob: bytes | None = None) -> int:
        """Record an offline change; it is on disk (fsynced) when this returns its seq.

        *args* may hold bytes (folder names), tuples, lists, dicts, str,
        numbers, None; they come back exactly. *blob* (a new message) is
        written and fsynced to ``journal-blobs/`` before the row commits.
        """
        with self._jlock, self._errors(f"recording offline change {op!r}"):
            jcon = self._jdb()
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
                tmp = self.blobs_dir / f".tmp-{blob_name}"
                _write_new(tmp, (blob,), True)
                try:
                    os.rename(tmp, path)
                    _fsync_dir(self.blobs_dir)
                except BaseException:
                    _unlink(tmp)
                    _unlink(path)
                    raise
                size, digest = len(blob), hashlib.sha256(blob).hexdigest()
            try:
                with self._tx(jcon):
                    cur = jcon.execute("INSERT INTO pending(op, args, blob, blob_size, blob_sha256, created) "
                                       "VALUES (?,?,?,?,?,?)", (op, args_json, blob_name, size, digest, self._clock()))
                    seq = cur.lastrowid
            except BaseException:
                if path is not None:
                    _unlink(path)
                raise
            return seq

    def _entry(self, row: tuple) -> JournalEntry:
        seq, op, args, blob, size, digest, attempts, err, created, started = row
        return JournalEntry(seq, op, _dec_arg(json.loads(args)), None if blob is None else self.blobs_dir / blob,
                            size, digest, attempts, err, created, started)

    def journal_pending(self) -> list[JournalEntry]:
        """Every pending change, oldest first (replay order)."""
        with self._jlock, self._errors("reading the journal"):
            return [self._entry(r) for r in self._jdb().execute(
                "SELECT seq, op, args, blob, blob_size, blob_sha256, attempts, last_error, created, started "
                "FROM pending ORDER BY seq")]

    def _finish(self, seq: int, status: str, outcome: str) -> None:
        with self._jlock, self._errors(f"finishing journal entry {seq}"):
            jcon = self._jdb()
            now = self._clock()
            with self._tx(jcon):
                row = jcon.execute("SELECT op, blob, args FROM pending WHERE seq=?", (seq,)).fetchone()
                if row is None:
                    raise StoreError(f"no pending journal entry {seq}")
                op, blob, args = row
                kept = None
                if blob is not None and status == "skipped":
                    # a skipped change never costs a new message's bytes
                    kept_dir = self.root / "journal-kept"
                    _mkdirs(kept_dir)
                    kept = kept_dir / f"{seq}-{blob}"
                    _unlink(kept)  # left by a crash before this commit
                    try:
                        os.link(self.blobs_dir / blob, kept)
                    except FileNotFoundError:
                        log.error("journal entry %d: its message file %s was already missing", seq, blob)
                        outcome = f"{outcome} (its message file was missing)"
                    else:
                        _fsync_dir(kept_dir)
                        outcome = f"{outcome} (message kept in {kept})"
                jcon.execute("DELETE FROM pending WHERE seq=?", (seq,))
                jcon.execute("INSERT INTO history(seq, op, status, outcome, time, blob, args) VALUES (?,?,?,?,?,?,?)",
                             (seq, op, status, outcome, now, blob, args))
                jcon.execute("DELETE FROM history WHERE id <= (SELECT max(id) FROM history) - ?", (HISTORY_KEEP,))
            if blob is not None:
                _unlink(self.blobs_dir / blob)

    def journal_done(self, seq: int, outcome: str) -> None:
        """The change reached the server: remove it (and its blob), remember *outcome*."""
        self._finish(seq, "done", outcome)

    def journal_skip(self, seq: int, why: str) -> None:
        """The change no longer applies: remove it, remember *why*. A blob is kept in journal-kept/."""
        self._finish(seq, "skipped", why)

    def journal_started(self, seq: int) -> None:
        """Record (durably) that the change is about to be sent to the server.

        After a crash, an entry whose ``started`` is set may already have been
        applied: a replayer must check before repeating a non-idempotent
        change (an APPEND: look for the message first, as mbsync does).
        """
        with self._jlock, self._errors(f"marking journal entry {seq} as started"):
            jcon = self._jdb()
            with self._tx(jcon):
                cur = jcon.execute("UPDATE pending SET started=? WHERE seq=?", (self._clock(), seq))
                if cur.rowcount != 1:
                    raise StoreError(f"no pending journal entry {seq}")

    def journal_failed(self, seq: int, error: str) -> None:
        """An attempt failed: count it, keep the entry for the next replay."""
        with self._jlock, self._errors(f"recording failure of journal entry {seq}"):
            jcon = self._jdb()
            now = self._clock()
            with self._tx(jcon):
                cur = jcon.execute("UPDATE pending SET attempts=attempts+1, last_error=?, last_attempt=? WHERE seq=?",
                                   (error, now, seq))
                if cur.rowcount != 1:
                    raise StoreError(f"no pending journal entry {seq}")
                jcon.execute("INSERT OR REPLACE INTO state VALUES ('last_error', ?)",
                             (json.dumps([now, f"journal entry {seq}: {error}"]),))

    def journal_history(self, limit: int = 20) -> list[HistoryEntry]:
        """The last *limit* finished entries, newest first."""
        with self._jlock, self._errors("reading the journal history"):
            return [HistoryEntry(*r) for r in self._jdb().execute(
                "SELECT seq, op, status, outcome, time FROM history ORDER BY id DESC LIMIT ?", (limit,))]

    # ------------------------------------------------------------ stats

    def stats(self) -> dict[str, Any]:
        """Counts for the state xattr and logs."""
        with self._lock, self._errors("reading cache statistics"):
            con = self._db()
            folders = con.execute("SELECT count(*) FROM folders").fetchone()[0]
            messages = con.execute("SELECT count(*) FROM messages").fetchone()[0]
            out: dict[str, Any] = {
                "body_bytes": self._body_bytes,
                "body_count": self._body_count,
                "max_bytes": self.max_bytes,
                "folders": folders,
                "messages": messages,
            }
        with self._jlock, self._errors("reading journal statistics"):
            jcon = self._jdb()
            out["pending"] = jcon.execute("SELECT count(*) FROM pending").fetchone()[0]
            row = jcon.execute("SELECT value FROM state WHERE key='last_error'").fetchone()
        errors = [e for e in (self._last_error, tuple(json.loads(row[0])) if row else None) if e]
        out["last_error"] = max(errors)[1] if errors else None
        return out


# ---------------------------------------------------------------- benchmark

def bench(root: str | Path, n: int = 100_000, out: Callable[[str], None] = print) -> dict[str, float]:
    """Time the operations the module docstring quotes; *root* must be an empty directory."""
    metas = [RawMeta(uid, 20_000 + uid % 5000, 1_700_000_000 + uid, ("\\Seen",) if uid % 3 else (),
                     b"Subject number %d" % uid) for uid in range(1, n + 1)]
    res: dict[str, float] = {}

    def timed(label: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        r = fn()
        res[label] = time.perf_counter() - t
        out(f"{label:<44} {res[label] * 1000:9.1f} ms")
        return r

    with Store(root, 1 << 40) as st:
        timed(f"put_folder {n} (new)", lambda: st.put_folder(b"INBOX", 1, n + 1, 5, metas, replace=True))
        timed(f"put_folder {n} (replace same)", lambda: st.put_folder(b"INBOX", 1, n + 1, 6, metas, replace=True))
        rec = timed(f"get_folder {n}", lambda: st.get_folder(b"INBOX"))
        assert rec is not None and len(rec.messages) == n
        more = [RawMeta(n + i, 100, 0, (), None) for i in range(1, 1001)]
        timed("add_messages 1000", lambda: st.add_messages(b"INBOX", 1, more))
        body = os.urandom(25_000)
        k = 300
        timed(f"put_body 25KB x{k} (fsync)", lambda: [st.put_body(b"INBOX", 1, u, body) for u in range(1, k + 1)])
        timed(f"put_body 25KB x{k} (no fsync)",
              lambda: [st.put_body(b"INBOX", 1, u, body, fsync=False) for u in range(k + 1, 2 * k + 1)])
        timed(f"get_body 25KB x{2 * k}", lambda: [st.get_body(b"INBOX", 1, u) for u in range(1, 2 * k + 1)])
    db = Path(root) / "cache.db"
    out(f"cache.db: {db.stat().st_size / (n + 1000):.0f} bytes per message")
    return res


if __name__ == "__main__":  # python -m imapfs.store --bench [N]
    import sys
    import tempfile

    if len(sys.argv) >= 2 and sys.argv[1] == "--bench":
        with tempfile.TemporaryDirectory() as d:
            bench(Path(d) / "store", int(sys.argv[2]) if len(sys.argv) > 2 else 100_000)
            if "--sweep" in sys.argv:
                with Store(Path(d) / "s2", 1 << 40) as st:
                    st.put_folder(b"F", 1, None, None, [], replace=True)
                    for u in range(1, 100_001):
                        st.put_body(b"F", 1, u, b"x" * 100, fsync=False)
                t = time.perf_counter()
                Store(Path(d) / "s2", 1 << 40).close()
                print(f"open with 100000 bodies (sweep)             {(time.perf_counter() - t) * 1000:9.1f} ms")
    else:
        print("usage: python -m imapfs.store --bench [N] [--sweep]")
