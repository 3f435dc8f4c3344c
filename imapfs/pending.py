"""Files being written: bytes buffered until they are APPENDed to the server.

A new file (``cp``, ``rsync``, an editor's save) or an existing message opened
for writing becomes a :class:`PendingFile`. Its bytes live in memory up to
``SPOOL_LIMIT`` and in an unlinked temporary file beyond, so a 30 MB
attachment does not sit in RAM. It is not mail yet: the tree APPENDs it once
the last handle is released and the writer has been quiet for a moment
(rsync sets times and xattrs and renames *after* closing), then it becomes
an alias of the message the server stored.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

SPOOL_LIMIT = 1024 * 1024


class PendingFile:
    """Bytes, flags and date of a message that is not on the server yet."""

    def __init__(self, folder: Any, name: str, inode: int, *, replaces: Any = None,
                 spool_dir: str | None = None) -> None:
        self.folder = folder
        self.name = name  # the writer's name; None while editing an existing message
        self.inode = inode
        self.replaces = replaces  # the Msg this new version supersedes, if any
        self.flags: tuple[str, ...] | None = None  # None: keep the replaced message's flags
        self.date: int | None = None  # INTERNALDATE to give; None: the replaced one's, or the server's now
        self.mtime = time.time()
        self.opens = 0
        self.dirty = False
        self.ready_at: float | None = None  # monotonic time after which it may be appended
        self.committed: Any = None  # the Msg the server stored, once appended
        self.failures = 0
        self.last_error: str | None = None
        self.gone = False
        self._buf = tempfile.SpooledTemporaryFile(max_size=SPOOL_LIMIT, dir=spool_dir)
        self._size = 0

    def key(self) -> tuple:
        return ("P", self.inode)

    @property
    def stored(self) -> bool:
        """Stored on the server and not changed since: it now stands for ``committed``."""
        return self.committed is not None and not self.dirty

    @property
    def size(self) -> int:
        return self._size

    def reopen(self) -> None:
        """Written again after it was stored (fsync, then more writes): a new version of it."""
        if self.committed is not None and not self.committed.gone:
            self.replaces = self.committed
            self.flags = None  # take the stored message's flags
        self.committed = None

    def write(self, offset: int, data: bytes) -> int:
        self._buf.seek(offset)
        self._buf.write(data)
        self._size = max(self._size, offset + len(data))
        self.dirty = True
        self.mtime = time.time()
        return len(data)

    def read(self, offset: int, size: int) -> bytes:
        self._buf.seek(offset)
        return self._buf.read(max(0, min(size, self._size - offset)))

    def truncate(self, size: int) -> None:
        self._buf.truncate(size)
        if size > self._size:  # extend with zeros like a sparse file would
            self._buf.seek(self._size)
            self._buf.write(b"\0" * (size - self._size))
        self._size = size
        self.dirty = True
        self.mtime = time.time()

    def data(self) -> bytes:
        self._buf.seek(0)
        return self._buf.read(self._size)

    def save_copy(self, directory: str) -> str:
        """Write the bytes to *directory* (when they could not reach the server)."""
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="unsent-", suffix=".eml", dir=directory)
        with os.fdopen(fd, "wb") as f:
            f.write(self.data())
            f.flush()
            os.fsync(f.fileno())
        return path

    def close(self) -> None:
        self._buf.close()
