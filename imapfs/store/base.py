"""What the cache and the journal share: the errors, sqlite plumbing, files.

Both halves of the store follow the same rules for errors (everything
leaves as :class:`StoreError`), transactions (``BEGIN IMMEDIATE``, rolled
back on any exception) and new files (written beside their final name,
removed on any error). Only those mechanics are here; what each half
promises about durability is in its own module.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from ..errors import ImapfsError

log = logging.getLogger(__name__)

SQLITE_CORRUPT = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_SQLITE_FULL = 13

# test seam: the one place body and blob bytes are written
_os_write = os.write


class StoreError(ImapfsError):
    """The local store failed; the message says what and where."""


class NoSuchEntry(StoreError):
    """The journal entry is no longer pending: finished or superseded meanwhile (a newer
    version of its file was recorded or stored while a replay held the older one)."""


class StoreFull(StoreError):
    """The disk holding the store is full (ENOSPC / SQLITE_FULL)."""


class StoreLocked(StoreError):
    """Another process (or Store object) has the cache directory open."""


class Corrupt(Exception):
    """A database failed its integrity check (the cache is then reset)."""


def errcode(e: sqlite3.Error) -> int | None:
    """The primary sqlite result code of *e*, if sqlite3 reported one."""
    code = getattr(e, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


class Errors:
    """Turns failures into StoreError and remembers the last one (for ``stats``).

    One instance is shared by the cache and the journal of a store, so the
    state xattr shows the last failure of either.
    """

    def __init__(self, root: Path, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self._clock = clock
        self.last: tuple[float, str] | None = None

    def note(self, msg: str) -> None:
        self.last = (self._clock(), msg)

    @contextmanager
    def __call__(self, what: str) -> Iterator[None]:
        """Turn everything into StoreError (ENOSPC and SQLITE_FULL into StoreFull)."""
        try:
            yield
        except StoreError as e:
            self.note(str(e))
            raise
        except sqlite3.Error as e:
            if errcode(e) == _SQLITE_FULL:
                err: StoreError = StoreFull(f"{what}: the disk holding {self.root} is full ({e})")
            else:
                err = StoreError(f"{what}: {self.root}: {e}")
            self.note(str(err))
            raise err from e
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                err = StoreFull(f"{what}: the disk holding {self.root} is full ({e.strerror})")
            else:
                err = StoreError(f"{what}: {e.filename or self.root}: {e.strerror or e}")
            self.note(str(err))
            raise err from e
        except (TypeError, ValueError, OverflowError) as e:
            err = StoreError(f"{what}: invalid argument: {e}")
            self.note(str(err))
            raise err from e


# ---------------------------------------------------------------- sqlite

def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """A WAL connection usable from any thread (callers serialise with their lock); a new file is 0600."""
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


def open_versioned(path: Path, synchronous: str, schema: str, fmt: int, kind: str, advice: str,
                   check: Callable[[sqlite3.Connection], None] | None = None,
                   upgrades: Mapping[int, Sequence[str]] | None = None) -> sqlite3.Connection:
    """Open a store database of format *fmt*: refuse a newer one, run *check*, upgrade, apply *schema*.

    A file written by a newer imapfs raises StoreError naming the *kind*
    ("cache", "journal") and what to do (*advice*); the connection is closed
    on any error. What a damaged file means is each caller's business.
    ``upgrades[v]`` holds the statements that turn format *v* into *v* + 1
    (before *schema*, which then adds what is new).
    """
    con = connect(path, synchronous)
    try:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > fmt:
            raise StoreError(
                f"{path} was written by a newer imapfs ({kind} format {version}, this one knows {fmt}); {advice}")
        if check is not None:
            check(con)
        if version != fmt:
            # One transaction: the upgrade steps, the schema and the version number commit
            # together (a crash leaves the old format or the new one, whole), and a new file
            # is written in a few WAL frames rather than a commit per statement. A file
            # already at fmt is not written to at all (it opens on a full disk).
            steps: list[str] = []
            for v in range(version, fmt) if version else ():  # 0: a new file, created at fmt
                if v not in (upgrades or {}):
                    raise StoreError(f"{path}: cannot upgrade {kind} format {v} to {fmt}; {advice}")
                steps += (upgrades or {})[v]
            con.executescript("BEGIN IMMEDIATE;\n" + "".join(f"{st};\n" for st in steps)
                              + f"{schema}\nPRAGMA user_version={fmt};\nCOMMIT;")
            if version:
                log.info("%s: %s format %d upgraded to %d", path, kind, version, fmt)
    except BaseException:
        con.close()
        raise
    return con


class OneDb:
    """One sqlite file opened by a store half: closing it, and refusing use once closed.

    Subclasses set ``root``, ``_lock`` (a threading lock) and ``_con``."""

    root: Path
    _lock: AbstractContextManager[object]
    _con: sqlite3.Connection | None

    def close(self) -> None:
        with self._lock:
            close_quietly(self._con)
            self._con = None

    def _db(self) -> sqlite3.Connection:
        if self._con is None:
            raise StoreError(f"store {self.root} is closed")
        return self._con


def close_quietly(con: sqlite3.Connection | None) -> None:
    if con is not None:
        try:
            con.close()
        except sqlite3.Error:
            pass


@contextmanager
def tx(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taken at once (``BEGIN IMMEDIATE``), rolled back on any exception."""
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


# ---------------------------------------------------------------- files

def mkdirs(path: Path) -> None:
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


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new(path: Path, parts: Iterable[bytes], sync: bool) -> None:
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


def unlink(path: Path) -> None:
    """Remove *path* if it is there; any other failure is logged, not raised."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("cannot remove %s: %s", path, e)
