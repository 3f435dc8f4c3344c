"""What goes over the wire below a connection: imaplib with bounds, TLS, reply text.

The bounded imaplib subclasses (``BoundedIMAP4``, ``BoundedIMAP4_SSL``) read every line
and literal against the limits in docs/reliability.md; ``make_ssl_context``
is the one place certificates get verified; ``parse_status`` reads STATUS
data (used by a connection and by the push listener in ``watch``).
"""

from __future__ import annotations

import imaplib
import io
import socket
import ssl
import time
from collections.abc import Iterable
from typing import IO, Any, cast

from .. import imapproto
from ..errors import ProtocolError, TLSError
from ..records import Status

# What one server reply may make us read (docs/reliability.md, "Limits"). Past
# any of them the connection is out of step with the server: it is closed and
# the command fails with ProtocolError (EIO), never the mount.
MAX_LINE = 8 * 1024 * 1024  # one response line (between literals); imaplib's own 1 MB is too
# small for a 10,000-part BODYSTRUCTURE (Dovecot's own part limit), 8 MiB is 5 times that.
MAX_LITERAL = 1024 * 1024 * 1024  # one literal: a whole decoded part of a big message comes as one
MIN_RATE = 64 * 1024  # bytes/s: a line or literal must arrive within timeout + size / MIN_RATE
LITERAL_STEP = 8 * 1024 * 1024  # a big literal's buffer grows by this much as its bytes arrive
LITERAL_AT_ONCE = 64 * 1024 * 1024  # up to this, a literal's bytes object is allocated whole, unfilled

# What an imaplib command returns: (typ, data), as typeshed types it. The data items are
# bytes, (bytes, bytes) for a literal, or None; imapproto parses them.
Reply = tuple[str, list[Any]]


class _LiteralLate(Exception):
    """A literal's time limit passed between two receives."""


class _TimedSocketIO(socket.SocketIO):
    """The socket reads under imaplib's file, each refused once ``deadline`` has passed.

    So ``BufferedReader.read(n)`` can receive a whole literal straight into the
    bytes object it returns (allocated unfilled, pages touched only as bytes
    arrive) and a trickling server is still stopped between two receives.
    """

    deadline: float | None = None
    received = 0

    def readinto(self, b: Any) -> int | None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise _LiteralLate
        n = super().readinto(b)
        self.received += n or 0
        return n


def timed_reader(sock: socket.socket) -> io.BufferedReader:
    """What ``sock.makefile("rb")`` returns, over a :class:`_TimedSocketIO`."""
    raw = _TimedSocketIO(sock, "rb")
    sock._io_refs += 1  # type: ignore[attr-defined]  # as makefile does: closing the file decrefs
    return io.BufferedReader(raw, io.DEFAULT_BUFFER_SIZE)


class _Bounded:
    """imaplib's reads with limits: line length, literal size, and time.

    imaplib reads a line with ``file.readline(_MAXLINE)`` (its own check
    raises ``error``, which looks like a BAD answer) and a literal with
    ``file.read(size)``, which for ``{2^62}`` raises MemoryError and for
    ``{10^20}`` OverflowError, and which a server trickling one byte a second
    keeps busy forever despite the socket timeout. Here each read takes what
    is buffered or one ``recv`` at a time, so the limits are checked as bytes
    arrive; a violation raises ``abort`` (the connection is unusable).
    """

    # imaplib's own attributes, filled in by IMAP4.open, as typeshed types them. `file` is
    # sock.makefile("rb"), a BufferedReader (peek, read1): see _reader.
    file: IO[str] | IO[bytes]
    sock: socket.socket
    limit_hit: str | None = None  # why a bound was violated (imaplib re-wraps our abort)

    def _violation(self, why: str) -> Exception:
        self.limit_hit = why
        return imaplib.IMAP4.abort(why)

    def _deadline(self, size: int) -> float:
        timeout = self.sock.gettimeout() if self.sock is not None else None
        return time.monotonic() + (timeout or 30.0) + size / MIN_RATE

    def open(self, *args: Any, **kwargs: Any) -> None:
        super().open(*args, **kwargs)  # type: ignore[misc]  # imaplib's, mixed in below
        plain, self.file = self.file, timed_reader(self.sock)  # nothing was read from it yet
        plain.close()

    def _reader(self) -> io.BufferedReader:
        return cast(io.BufferedReader, self.file)

    def readline(self) -> bytes:
        f = self._reader()
        data = f.peek(1)
        i = data.find(b"\n")
        if 0 <= i < MAX_LINE:  # the whole line is buffered: the common case
            return f.read(i + 1)
        buf = bytearray()
        start = time.monotonic()
        deadline = self._deadline(0)
        while True:
            if not data:
                return bytes(buf)  # EOF: imaplib reports it
            i = data.find(b"\n")
            take = i + 1 if i >= 0 else len(data)
            buf += f.read(min(take, MAX_LINE + 1 - len(buf)))
            if len(buf) > MAX_LINE:
                raise self._violation(f"server sent a line longer than {MAX_LINE} bytes")
            if i >= 0:
                return bytes(buf)
            if time.monotonic() > deadline + len(buf) / MIN_RATE:
                raise self._violation(f"server line incomplete after {time.monotonic() - start:.0f} s "
                                      f"({len(buf)} bytes so far)")
            data = f.peek(1)

    def _get_line(self) -> bytes:
        """imaplib's, less its debug log: that formats every line it reads (``'< %r'``),
        which nothing here ever prints. A sixth of imaplib's time in a metadata FETCH
        of 10,000 messages (two lines each; issue 12, cold ``ls -l``)."""
        line = self.readline()
        if not line:
            raise imaplib.IMAP4.abort("socket error: EOF")
        if not line.endswith(b"\r\n"):  # the protocol ends every line with CRLF
            raise imaplib.IMAP4.abort(f"socket error: unterminated line: {line[:200]!r}")
        return line[:-2]

    def read(self, size: int) -> bytes:
        if size > MAX_LITERAL:
            raise self._violation(f"server announced a literal of {size} bytes (limit {MAX_LITERAL})")
        f = self._reader()
        if size <= 0 or len(f.peek(1)) >= size:  # buffered already (one recv at most): small literals
            return f.read(size)
        raw = f.raw
        if isinstance(raw, _TimedSocketIO) and size <= LITERAL_AT_ONCE:
            # A big literal (a 4 MiB chunk of a big message) is received straight into
            # the bytes object BufferedReader.read allocates, unfilled: the BytesIO
            # below zero-fills its buffer before the receive writes it, a second pass
            # over fresh memory (a fifth of the client's CPU for a 50 MB FETCH; issue
            # 12, stop 18). Memory still follows the bytes that arrive: an unfilled
            # allocation touches no page until they do.
            raw.deadline, raw.received = self._deadline(size), 0
            try:
                return f.read(size)  # short at EOF: imaplib finds the short literal
            except _LiteralLate:
                raise self._violation(f"literal of {size} bytes incomplete after its time limit "
                                      f"({raw.received} bytes arrived)") from None
            finally:
                raw.deadline = None
        # Above that (or on a file without the timed reads), a literal is received into
        # one buffer: reading it in pieces and joining them cost a copy and, worse,
        # page faults on every fresh piece; that was most of a 50 MB read (issue 12).
        # BytesIO.getvalue() hands its buffer over without a copy once no view is
        # held. The buffer grows LITERAL_STEP at a time, so memory follows the bytes
        # that arrive, not the size a server announces.
        deadline = self._deadline(size)
        buf = io.BytesIO()
        got = 0
        while got < size:
            end = min(size, got + LITERAL_STEP)
            buf.seek(end - 1)
            buf.write(b"\0")
            with buf.getbuffer() as view:
                while got < end:
                    with view[got:end] as room:
                        n = f.readinto1(room)  # what is buffered, or one recv
                    if not n:
                        break
                    got += n
                    if got < size and time.monotonic() > deadline:
                        raise self._violation(f"literal of {size} bytes incomplete after its time limit "
                                              f"({got} bytes arrived)")
            if got < end:
                buf.truncate(got)  # EOF: imaplib finds the short literal or the missing line
                break
        return buf.getvalue()


class BoundedIMAP4(_Bounded, imaplib.IMAP4):
    pass


class BoundedIMAP4_SSL(_Bounded, imaplib.IMAP4_SSL):
    pass


def make_ssl_context(cafile: str | None) -> ssl.SSLContext:
    """System trust store plus *cafile*; hostname checking on."""
    ctx = ssl.create_default_context()
    if cafile:
        try:
            ctx.load_verify_locations(cafile=cafile)
        except (OSError, ssl.SSLError) as e:
            raise TLSError(f"cannot load CA file {cafile}: {e}") from None
    return ctx


def reply_text(v: object) -> str:
    if isinstance(v, (list, tuple)):
        v = b" ".join(x if isinstance(x, bytes) else str(x).encode() for x in v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def flag_str(f: object) -> str:
    return f.decode("utf-8", "replace") if isinstance(f, bytes) else str(f)


def parse_status(lines: Iterable[bytes | tuple[bytes, bytes] | None]) -> Iterable[tuple[bytes, Status]]:
    """``* STATUS name (MESSAGES 3 UIDNEXT 9 ...)`` data → (name, Status); bad lines skipped."""
    chunks: list[bytes | tuple[bytes, bytes]] = []
    for d in lines:
        if d is None:
            continue
        chunks.append(d)
        if isinstance(d, tuple):
            continue  # a literal name: its tail follows
        try:
            vals = imapproto.parse(chunks)
        except ProtocolError:
            chunks = []
            continue
        chunks = []
        if len(vals) != 2 or not isinstance(vals[1], list):
            continue
        name = vals[0] if isinstance(vals[0], bytes) else str(vals[0]).encode()
        kv = vals[1]
        st = Status()
        for k, v in zip(kv[::2], kv[1::2]):
            if not isinstance(k, bytes) or not isinstance(v, int):
                continue
            key = k.upper()
            if key == b"MESSAGES":
                st.messages = v
            elif key == b"UIDNEXT":
                st.uidnext = v
            elif key == b"UIDVALIDITY":
                st.uidvalidity = v
            elif key == b"HIGHESTMODSEQ":
                st.highestmodseq = v
        yield name, st
