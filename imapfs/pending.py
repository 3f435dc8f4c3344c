"""Files being written: bytes buffered until they are APPENDed to the server.

A new file (``cp``, ``rsync``, an editor's save) or an existing message opened
for writing becomes a :class:`PendingFile`. Its bytes live in memory up to
``SPOOL_LIMIT`` and in an unlinked temporary file beyond, so a 30 MB
attachment does not sit in RAM. It is not mail yet: the tree APPENDs it once
the last handle is released and the writer has been quiet for a moment
(rsync sets times and xattrs and renames *after* closing), then it becomes
an alias of the message the server stored.

Every change bumps a generation number. A commit records the generation of
what it sent and marks the file clean only if nothing changed meanwhile, so
a write made while the APPEND is on its way is never taken as stored.

The byte methods (``write``, ``read``, ``truncate``, ``snapshot``, ``data``,
``save_copy``) may touch the disk and are meant for worker threads; they are
thread-safe. A sparse extension (``truncate`` up, a write far out) never
allocates: past ``SPOOL_LIMIT`` the file is extended with ``ftruncate``.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: pending imports nothing of imapfs at run time
    from .model import Folder, Msg

SPOOL_LIMIT = 1024 * 1024
CHUNK = 1024 * 1024  # spool I/O and streamed APPEND literals go in pieces of this size
_CRLF = re.compile(rb"\r\n|\r|\n")  # what imaplib.MapCRLF makes of line ends: all CRLF


class WireLiteral:
    """An APPEND literal streamed from an unlinked file: the CRLF-normalised bytes, frozen.

    ``len()`` is the announced ``{n}``; :meth:`chunks` yields exactly that many
    bytes, because the file is a private copy nothing writes to any more.
    ``connection.Connection.append`` sends it without holding it in memory.
    """

    def __init__(self, f: IO[bytes], size: int) -> None:
        self._f = f
        self.size = size

    def __len__(self) -> int:
        return self.size

    def chunks(self) -> Iterator[bytes]:
        off = 0
        while off < self.size:
            b = os.pread(self._f.fileno(), min(CHUNK, self.size - off), off)
            if not b:
                raise OSError(f"APPEND snapshot ended at {off} of {self.size} bytes")
            off += len(b)
            yield b

    def close(self) -> None:
        self._f.close()


class PendingFile:
    """Bytes, flags and date of a message that is not on the server yet."""

    def __init__(self, folder: Folder, name: str, inode: int, *, replaces: Msg | None = None,
                 spool_dir: str | None = None) -> None:
        self.folder = folder
        self.name = name  # the writer's name; None while editing an existing message
        self.inode = inode
        self.replaces = replaces  # the Msg this new version supersedes, if any
        self.superseded: list[Msg] = []  # our own earlier copies, expunged once a newer one is stored
        self.flags: tuple[str, ...] | None = None  # None: keep the replaced message's flags
        self.date: int | None = None  # INTERNALDATE to give; None: the replaced one's, or the server's now
        self.mtime = time.time()
        self.opens = 0
        self.ready_at: float | None = None  # monotonic time after which it may be appended
        self.committed: Msg | None = None  # the Msg the server stored, once appended
        self.failures = 0  # failed commits in a row (the retry delay grows with it)
        self.refusals = 0  # of those, the ones that were not "server away": REFUSED_APPEND_TRIES ends it
        self.last_error: str | None = None
        self.gone = False
        self.journal_seq: int | None = None  # its pending record in the offline journal, if any
        self.too_large = False  # a write or truncate got EFBIG: cut short, so it is not stored as mail
        self._spool_dir = spool_dir
        self._lock = threading.Lock()  # the bytes: writers and readers run in worker threads
        self._mem = bytearray()  # the bytes while small (len == _size)
        self._file: IO[bytes] | None = None  # the spool file once past SPOOL_LIMIT
        self._size = 0
        # Generations: bytes are changed in worker threads (under _lock), the rest
        # (flags, date, folder) on the trio loop; each side bumps only its own counter.
        self._data_gen = 0
        self.meta_generation = 0
        self.clean_generation = 0  # the generation last stored or journaled

    def key(self) -> tuple[str, int]:
        return ("P", self.inode)

    # -- versions ----------------------------------------------------------

    @property
    def generation(self) -> int:
        """Grows with every change of bytes, flags, date or folder."""
        return self._data_gen + self.meta_generation

    @property
    def dirty(self) -> bool:
        """Changed since it was last stored (or journaled)."""
        return self.generation != self.clean_generation

    def changed(self) -> None:
        """Flags, date or folder changed (on the trio loop): a new version to store."""
        self.meta_generation += 1
        self.mtime = time.time()

    def mark_clean(self, generation: int) -> None:
        """*generation* is on the server (or in the journal); clean unless changed since."""
        self.clean_generation = max(self.clean_generation, generation)

    @property
    def stored(self) -> bool:
        """Stored on the server and not changed since: it now stands for ``committed``."""
        return self.committed is not None and not self.dirty

    @property
    def size(self) -> int:
        return self._size

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def reopen(self) -> None:
        """Written again after it was stored (fsync, then more writes): a new version of it."""
        if self.committed is not None and not self.committed.gone:
            self.replaces = self.committed
            self.flags = None  # take the stored message's flags
        self.committed = None

    # -- bytes (blocking: worker threads) ---------------------------------------------

    def _spill(self) -> None:
        f = tempfile.TemporaryFile(dir=self._spool_dir)
        try:
            if self._mem:
                _pwrite_all(f.fileno(), bytes(self._mem), 0)
        except BaseException:
            f.close()
            raise
        self._file = f
        self._mem = bytearray()

    def write(self, offset: int, data: bytes) -> int:
        if not data:
            return 0
        end = offset + len(data)
        with self._lock:
            if self._file is None and end > SPOOL_LIMIT:
                self._spill()
            if self._file is None:
                if offset > len(self._mem):
                    self._mem.extend(bytes(offset - len(self._mem)))
                self._mem[offset:end] = data
            else:
                _pwrite_all(self._file.fileno(), data, offset)
            self._size = max(self._size, end)
            self._data_gen += 1
        self.mtime = time.time()
        return len(data)

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            n = max(0, min(size, self._size - offset))
            if n == 0:
                return b""
            if self._file is None:
                return bytes(self._mem[offset:offset + n])
            return _pread_all(self._file.fileno(), n, offset)

    def truncate(self, size: int) -> None:
        with self._lock:
            if self._file is None and size > SPOOL_LIMIT:
                self._spill()
            if self._file is None:
                if size < len(self._mem):
                    del self._mem[size:]
                else:
                    self._mem.extend(bytes(size - len(self._mem)))
            else:
                os.ftruncate(self._file.fileno(), size)  # sparse: nothing is allocated
            self._size = size
            self._data_gen += 1
        self.mtime = time.time()

    def _chunks(self) -> Iterator[bytes]:
        """The bytes in pieces; call with _lock held."""
        if self._file is None:
            yield bytes(self._mem)
            return
        off = 0
        while off < self._size:
            n = min(CHUNK, self._size - off)
            yield _pread_all(self._file.fileno(), n, off)
            off += n

    def data(self) -> bytes:
        return self.data_and_generation()[0]

    def data_and_generation(self) -> tuple[bytes, int]:
        """All the bytes and the data generation they belong to."""
        with self._lock:
            return b"".join(self._chunks()), self._data_gen

    def snapshot(self) -> tuple[bytes | WireLiteral, int]:
        """What to APPEND, and the data generation it belongs to.

        Small files: their bytes (imaplib normalises the line ends). Spilled ones:
        a CRLF-normalised private copy in an unlinked file, streamed to the server,
        so a write made during the APPEND changes neither what is sent nor its
        announced length, and the file never sits in memory.
        """
        with self._lock:
            gen = self._data_gen
            if self._file is None:
                return bytes(self._mem), gen
            out = tempfile.TemporaryFile(dir=self._spool_dir)
            try:
                n = 0
                carry = b""
                for piece in self._chunks():
                    piece = carry + piece
                    carry = b""
                    if piece.endswith(b"\r"):  # maybe the first half of a CRLF
                        piece, carry = piece[:-1], b"\r"
                    wire = _CRLF.sub(b"\r\n", piece)
                    _pwrite_all(out.fileno(), wire, n)
                    n += len(wire)
                if carry:
                    _pwrite_all(out.fileno(), b"\r\n", n)
                    n += 2
            except BaseException:
                out.close()
                raise
            return WireLiteral(out, n), gen

    def save_copy(self, directory: str) -> str:
        """Write the bytes to *directory* (when they could not reach the server)."""
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="unsent-", suffix=".eml", dir=directory)
        with os.fdopen(fd, "wb") as f:
            with self._lock:
                for piece in self._chunks():
                    f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        return path

    def close(self) -> None:
        """Free the bytes. Never waits (it is called on the trio loop): if a worker
        thread holds them, the file object is dropped and closed when it is collected."""
        if self._lock.acquire(blocking=False):
            try:
                if self._file is not None:
                    self._file.close()
            finally:
                self._lock.release()
        self._file = None
        self._mem = bytearray()
        self._size = 0


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _pread_all(fd: int, n: int, offset: int) -> bytes:
    parts = []
    while n > 0:
        b = os.pread(fd, n, offset)
        if not b:  # past the end of the file: a sparse tail reads as zeros
            parts.append(bytes(n))
            break
        parts.append(b)
        n -= len(b)
        offset += len(b)
    return b"".join(parts)
