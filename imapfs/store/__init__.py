"""The persistent local store under the offline cache (issue 7).

One directory, two halves with opposite durability contracts:

* :mod:`.cache` (``cache.db``, ``bodies/``): what the mount has seen of the
  server. Disposable: a damaged ``cache.db`` is moved aside and the cache
  starts empty; a damaged body file is deleted, never served.
  :mod:`.bodies` keeps the message bytes, :mod:`.cachedb` opens the database.
* :mod:`.journal` (``journal.db``, ``journal-blobs/``): the changes made
  offline. Durable: every ``journal_add`` is on disk before it returns, a
  damaged ``journal.db`` stops the store, and nothing deletes a pending change
  or a new message's bytes.

:class:`Store` takes the directory lock, opens both halves and offers their
calls as one blocking, thread-safe object that callers run in worker threads
(``trio.to_thread.run_sync``, through :class:`imapfs.disk.Disk`). Standard
library only. ``docs/offline.md`` has the layout, the invariants and the
crash-safety argument in full.

Errors: every method returns or raises :class:`StoreError` (a full disk is
:class:`StoreFull`; another process holding the directory is
:class:`StoreLocked`).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..imapproto import ListEntry
from ..records import FolderRecord, RawMeta
from .base import Errors, NoSuchEntry, StoreError, StoreFull, StoreLocked, fsync_dir, mkdirs
from .bodies import ATIME_GRANULARITY
from .cache import Cache
from .journal import HistoryEntry, JournalEntry, JournalStore

__all__ = ["FolderRecord", "HistoryEntry", "JournalEntry", "NoSuchEntry", "Store", "StoreError", "StoreFull",
           "StoreLocked"]

log = logging.getLogger(__name__)


def _take_lock(root: Path) -> int:
    """flock the directory's ``lock`` file (and write our pid in it); StoreLocked if another holds it."""
    path = root / "lock"
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
                f"cache directory {root} is in use by another imapfs{who}; two mounts must not "
                f"share one cache directory: give each its own cache_dir") from None
        raise StoreError(f"cannot lock {path}: {e.strerror or e}") from e
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # the pid is only for the message above
    return fd


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
        self._errors = Errors(self.root, clock)
        self._lockfd: int | None = None
        journal: JournalStore | None = None
        cache: Cache | None = None
        try:
            try:
                mkdirs(self.root)
            except OSError as e:
                raise StoreError(f"cannot create cache directory {self.root}: {e.strerror or e}") from e
            st = os.stat(self.root)
            if st.st_mode & 0o077:
                log.warning("cache directory %s is accessible to other users (mode %o); it holds mail",
                            self.root, st.st_mode & 0o777)
            self._lockfd = _take_lock(self.root)
            journal = JournalStore(self.root, self._errors, clock=clock)  # first: it must open
            cache = Cache(self.root, max_bytes, pinned, self._errors, clock=clock, atime_granularity=atime_granularity)
            with self._errors("opening the cache"):
                fsync_dir(self.root)
            cache.sweep()
            journal.sweep()
        except BaseException:
            for half in (journal, cache):
                if half is not None:
                    half.close()
            self._unlock()
            raise
        self.journal = journal
        self.cache = cache

    def close(self) -> None:
        """Close the databases and release the directory lock. Idempotent."""
        self.journal.close()
        self.cache.close()
        self._unlock()

    def _unlock(self) -> None:
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

    @property
    def max_bytes(self) -> int:
        return self.cache.bodies.max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        self.cache.bodies.max_bytes = int(value)

    def stats(self) -> dict[str, Any]:
        """Counts for the state xattr and logs: the cache's, ``pending``, and the last error of either."""
        out: dict[str, Any] = dict(self.cache.stats())
        out["pending"], replay_error = self.journal.stats()
        errors = [e for e in (self._errors.last, replay_error) if e]
        out["last_error"] = max(errors)[1] if errors else None
        return out

    # ------------------------------------------------------------ the cache (see .cache, .bodies)

    def put_folders(self, entries: list[ListEntry]) -> None:
        self.cache.put_folders(entries)

    def get_folders(self) -> list[ListEntry] | None:
        return self.cache.get_folders()

    def put_folder(self, name: bytes, uidvalidity: int, uidnext: int | None, highestmodseq: int | None,
                   messages: Iterable[RawMeta], replace: bool) -> None:
        self.cache.put_folder(name, uidvalidity, uidnext, highestmodseq, messages, replace)

    def add_messages(self, name: bytes, uidvalidity: int, metas: Iterable[RawMeta]) -> bool:
        return self.cache.add_messages(name, uidvalidity, metas)

    def remove_messages(self, name: bytes, uidvalidity: int, uids: Iterable[int]) -> bool:
        return self.cache.remove_messages(name, uidvalidity, uids)

    def set_flags(self, name: bytes, uidvalidity: int, uid: int, flags: Iterable[str]) -> bool:
        return self.cache.set_flags(name, uidvalidity, uid, flags)

    def set_flags_many(self, name: bytes, uidvalidity: int, flags: Mapping[int, Iterable[str]]) -> int:
        return self.cache.set_flags_many(name, uidvalidity, flags)

    def set_sync_state(self, name: bytes, uidvalidity: int, uidnext: int | None, highestmodseq: int | None) -> bool:
        return self.cache.set_sync_state(name, uidvalidity, uidnext, highestmodseq)

    def get_folder(self, name: bytes) -> FolderRecord | None:
        return self.cache.get_folder(name)

    def folder_names(self) -> list[bytes]:
        return self.cache.folder_names()

    def drop_folder(self, name: bytes, delimiter: str | bytes | None = None) -> int:
        return self.cache.drop_folder(name, delimiter)

    def rename_folder(self, old: bytes, new: bytes, delimiter: str | bytes | None = None) -> int:
        return self.cache.rename_folder(old, new, delimiter)

    def put_structure(self, name: bytes, uidvalidity: int, uid: int, data: bytes) -> bool:
        return self.cache.put_structure(name, uidvalidity, uid, data)

    def put_structures(self, items: Iterable[tuple[bytes, int, int, bytes]]) -> int:
        return self.cache.put_structures(items)

    def get_structure(self, name: bytes, uidvalidity: int, uid: int) -> bytes | None:
        return self.cache.get_structure(name, uidvalidity, uid)

    def put_body(self, name: bytes, uidvalidity: int, uid: int, data: bytes, *, fsync: bool = True) -> bool:
        return self.cache.bodies.put_body(name, uidvalidity, uid, data, fsync=fsync)

    def put_bodies(self, items: Iterable[tuple[bytes, int, int, bytes]]) -> int:
        return self.cache.bodies.put_bodies(items)

    def get_body(self, name: bytes, uidvalidity: int, uid: int) -> bytes | None:
        return self.cache.bodies.get_body(name, uidvalidity, uid)

    def body_uids(self, name: bytes, uidvalidity: int) -> set[int]:
        return self.cache.bodies.body_uids(name, uidvalidity)

    def has_body(self, name: bytes, uidvalidity: int, uid: int) -> bool:
        return self.cache.bodies.has_body(name, uidvalidity, uid)

    def body_size(self, name: bytes, uidvalidity: int, uid: int) -> int | None:
        return self.cache.bodies.body_size(name, uidvalidity, uid)

    def copy_body(self, src: tuple[bytes, int, int], dst: tuple[bytes, int, int], *, fsync: bool = True) -> bool:
        return self.cache.bodies.copy_body(src, dst, fsync=fsync)

    def evict(self) -> int:
        return self.cache.bodies.evict()

    # ------------------------------------------------------------ the journal (see .journal)

    def journal_add(self, op: str, args: dict[str, Any], blob: bytes | None = None) -> int:
        return self.journal.journal_add(op, args, blob)

    def journal_pending(self) -> list[JournalEntry]:
        return self.journal.journal_pending()

    def journal_started(self, seq: int) -> None:
        self.journal.journal_started(seq)

    def journal_done(self, seq: int, outcome: str) -> None:
        self.journal.journal_done(seq, outcome)

    def journal_skip(self, seq: int, why: str) -> None:
        self.journal.journal_skip(seq, why)

    def journal_failed(self, seq: int, error: str) -> None:
        self.journal.journal_failed(seq, error)

    def journal_history(self, limit: int = 20) -> list[HistoryEntry]:
        return self.journal.journal_history(limit)
