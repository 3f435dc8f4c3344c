"""Commands that change the server: APPEND, MOVE/COPY, STORE, UID EXPUNGE, folders.

Write-through: callers update the tree after these return. Mail is removed
only after a confirmed copy, and only by ``UID EXPUNGE`` of exactly that UID
(never a bare EXPUNGE, which would take other clients' \\Deleted mail).
"""

from __future__ import annotations

import imaplib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .. import imapproto
from ..errors import CommandFailed, Exists, NotEmpty, NotFound, ProtocolError, Unsupported
from .reads import Reads
from .wire import Reply, reply_text

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


class StreamedLiteral(Protocol):
    """An APPEND literal sent in pieces (``pending.WireLiteral``): its size, then its bytes."""

    def __len__(self) -> int: ...

    def chunks(self) -> Iterator[bytes]: ...


class Writes(Reads):
    """The write commands of a connection (they look messages up with the reads)."""

    def _run_with_code(self, what: str, code: str, fn: Callable[[imaplib.IMAP4], Reply]
                       ) -> tuple[str, list[Any], list[bytes]]:
        """Run a command and collect the response code *code* (COPYUID, APPENDUID) it produced."""

        def do(i: imaplib.IMAP4) -> Reply:
            i.untagged_responses.pop(code, None)
            typ, dat = fn(i)
            return typ, [dat, [c for c in i.untagged_responses.pop(code, []) if isinstance(c, bytes)]]

        typ, (dat, codes) = self._cmd(what, do)
        return typ, dat, codes

    @staticmethod
    def _copyuid(codes: list[bytes], src_uid: int) -> tuple[int, int] | None:
        """(dest UIDVALIDITY, dest UID) for *src_uid* from COPYUID response codes."""
        for c in codes:
            parts = c.split()
            if len(parts) != 3:
                continue
            try:
                # Ranges, never expanded: 49 bytes of COPYUID could name millions of UIDs.
                dst_uid = imapproto.map_uid(parts[1], parts[2], src_uid)
                uidv = int(parts[0])
            except (ValueError, ProtocolError):
                continue
            if dst_uid is not None:
                return uidv, dst_uid
        return None

    def _uid_transfer(self, cmd: str, name: bytes, uidvalidity: int, uid: int, dest: bytes) -> tuple[int, int] | None:
        self.ensure_selected(name, uidvalidity)
        # imaplib sends a bytes argument (the quoted wire name) as it is; typeshed allows str only.
        typ, dat, codes = self._run_with_code(
            f"UID {cmd}", "COPYUID", lambda i: i.uid(cmd, str(uid), imapproto.quote(dest)))  # type: ignore[arg-type]
        if typ != "OK":
            self._check(f"UID {cmd} {uid} to {dest!r}", typ, dat)
        return self._copyuid(codes, uid)

    def uid_move(self, name: bytes, uidvalidity: int, uid: int, dest: bytes) -> tuple[int, int] | None:
        """``UID MOVE`` (RFC 6851); returns the copy's (UIDVALIDITY, UID) when the server says."""
        return self._uid_transfer("MOVE", name, uidvalidity, uid, dest)

    def uid_copy(self, name: bytes, uidvalidity: int, uid: int, dest: bytes) -> tuple[int, int] | None:
        """``UID COPY``; returns the copy's (UIDVALIDITY, UID) when the server says (COPYUID)."""
        return self._uid_transfer("COPY", name, uidvalidity, uid, dest)

    def uid_store(self, name: bytes, uidvalidity: int, uid: int, op: str, flags: Sequence[str]) -> None:
        """``UID STORE uid op (flags)``, e.g. op ``+FLAGS.SILENT``."""
        self.ensure_selected(name, uidvalidity)
        arg = "(" + " ".join(flags) + ")"
        typ, dat = self._cmd("UID STORE", lambda i: i.uid("STORE", str(uid), op, arg))
        if typ != "OK":
            self._check(f"UID STORE {uid} {op}", typ, dat)

    def uid_expunge(self, name: bytes, uidvalidity: int, uid: int) -> None:
        """``UID EXPUNGE`` of exactly *uid* (RFC 4315): never a bare EXPUNGE."""
        self.ensure_selected(name, uidvalidity)
        typ, dat = self._cmd("UID EXPUNGE", lambda i: i.uid("EXPUNGE", str(uid)))
        if typ != "OK":
            self._check(f"UID EXPUNGE {uid}", typ, dat)

    def move_message(self, src: bytes, uidvalidity: int, uid: int, dest: bytes) -> tuple[tuple[int, int] | None, bool]:
        """Move one message without ever losing it: ((dest UIDVALIDITY, UID) or None, moved?).

        UID MOVE where the server has MOVE; else UID COPY, and only once the
        copy is confirmed (COPYUID) STORE \\Deleted and UID EXPUNGE of exactly
        that UID. Without MOVE or UIDPLUS: Unsupported (a bare EXPUNGE could
        take other clients' \\Deleted mail). moved=False: the UID is gone.
        """
        caps = self.capabilities
        if "MOVE" in caps:
            if "UIDPLUS" not in caps and not self.uid_exists(src, uidvalidity, uid):
                return None, False  # without COPYUID a MOVE of nothing looks like success: look first
            res = self.uid_move(src, uidvalidity, uid, dest)
            if res is None and "UIDPLUS" in caps:
                return None, False  # the server moved nothing: the UID is gone
            return res, True
        if "UIDPLUS" not in caps:
            raise Unsupported("server lacks MOVE and UIDPLUS")
        res = self.uid_copy(src, uidvalidity, uid, dest)
        if res is None:
            return None, False  # nothing copied: the message is gone
        self.uid_store(src, uidvalidity, uid, "+FLAGS.SILENT", ["\\Deleted"])
        self.uid_expunge(src, uidvalidity, uid)
        return res, True

    def expunge_message(self, name: bytes, uidvalidity: int, uid: int) -> None:
        """\\Deleted + UID EXPUNGE of exactly *uid* (needs UIDPLUS; never a bare EXPUNGE)."""
        if "UIDPLUS" not in self.capabilities:
            raise Unsupported("server lacks UIDPLUS")
        self.uid_store(name, uidvalidity, uid, "+FLAGS.SILENT", ["\\Deleted"])
        self.uid_expunge(name, uidvalidity, uid)

    def append(self, dest: bytes, data: bytes | bytearray | memoryview | StreamedLiteral, flags: Sequence[str],
               date: int | None) -> tuple[int, int] | None:
        """APPEND; returns (UIDVALIDITY, UID) from APPENDUID when the server has UIDPLUS.

        *data* is bytes (imaplib turns every line end into CRLF), or a streamed
        literal: an object whose ``len()`` is the literal's size and whose
        ``chunks()`` yield exactly those bytes, already CRLF (``pending.WireLiteral``),
        so a big message never sits in memory. imaplib sends a literal with one
        ``self.send(literal)`` after the server's continuation; that one call is
        turned into a send per chunk.
        """
        fl = "(" + " ".join(flags) + ")" if flags else None
        when = imaplib.Time2Internaldate(date) if date is not None else None
        mailbox = imapproto.quote(dest).decode("ascii")
        if isinstance(data, (bytes, bytearray, memoryview)):
            def do(i: imaplib.IMAP4) -> Reply:
                return i.append(mailbox, fl, when, bytes(data))
        else:
            def do(i: imaplib.IMAP4) -> Reply:
                send = i.send
                utf8 = bool(getattr(i, "utf8_enabled", False))

                class Literal:  # what imaplib's _command sees: a size, then one send() of it
                    def __len__(self) -> int:
                        return len(data) + (len(b"UTF8 ()") if utf8 else 0)

                literal = Literal()

                def send_chunks(b: ReadableBuffer | Literal) -> None:
                    if not isinstance(b, Literal):  # the command line; `literal` is the one Literal
                        send(b)
                        return
                    if utf8:
                        send(b"UTF8 (")
                    for chunk in data.chunks():
                        send(chunk)
                    if utf8:
                        send(b")")

                # One send(literal) becomes a send per chunk (mypy types the method with its self).
                i.send = send_chunks  # type: ignore[method-assign, assignment]
                try:
                    i.literal = literal  # type: ignore[assignment]  # imaplib takes anything with a len()
                    reply: Reply = i._simple_command("APPEND", mailbox, fl, when)
                    return reply
                finally:
                    i.literal = None
                    del i.send
        typ, dat, codes = self._run_with_code("APPEND", "APPENDUID", do)
        if typ != "OK":
            self._check(f"APPEND to {dest!r}", typ, dat)
        for c in codes:
            parts = c.split()
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                return int(parts[0]), int(parts[1])
        return None

    def _mailbox_cmd(self, cmd: str, *names: bytes) -> None:
        args = [imapproto.quote(n) for n in names]
        if self.selected is not None and any(self.selected == n or self.selected.startswith(n + b"/")
                                             or self.selected.startswith(n + b".") for n in names):
            self.deselect()
        typ, dat = self._cmd(cmd, lambda i: i._simple_command(cmd, *args))
        if typ != "OK":
            msg = reply_text(dat[0] if dat else b"")
            if "[ALREADYEXISTS]" in msg:
                raise Exists(f"{cmd} {names[-1]!r}: {msg}")
            self._check(f"{cmd} {b' '.join(names)!r}", typ, dat)

    def append_or_recover(self, dest: bytes, data: bytes | StreamedLiteral, flags: Sequence[str],
                          date: int | None, recovered: bytes) -> tuple[bytes, tuple[int, int] | None]:
        """APPEND to *dest*, or, when the server says *dest* is gone (``[TRYCREATE]``,
        ``NONEXISTENT``: another client deleted or renamed it), to *recovered*, created
        if it is missing: a new message is stored, never dropped. Returns the folder it
        went to and the APPENDUID. *data* is sent twice at most (a streamed literal
        re-reads its frozen copy)."""
        try:
            return dest, self.append(dest, data, flags, date)
        except (NotFound, CommandFailed) as err:
            if isinstance(err, CommandFailed) and "TRYCREATE" not in str(err):
                raise
        try:
            self.create(recovered)
        except Exists:
            pass
        return recovered, self.append(recovered, data, flags, date)

    def create(self, name: bytes) -> None:
        self._mailbox_cmd("CREATE", name)

    def delete(self, name: bytes) -> None:
        self._mailbox_cmd("DELETE", name)

    def delete_if_empty(self, name: bytes) -> None:
        """DELETE *name* only if SELECT, just before on this connection, shows no message.

        IMAP has no "delete if empty"; checking on the same connection right
        before DELETE leaves one round trip for another client's delivery to
        slip in, instead of the time since the folder was last synced.
        """
        info = self.select(name)
        if info.exists:
            raise NotEmpty(f"{name.decode('ascii', 'replace')} holds {info.exists} messages")
        self.delete(name)

    def rename(self, old: bytes, new: bytes) -> None:
        self._mailbox_cmd("RENAME", old, new)

    def subscribe(self, name: bytes) -> None:
        self._mailbox_cmd("SUBSCRIBE", name)

    def unsubscribe(self, name: bytes) -> None:
        self._mailbox_cmd("UNSUBSCRIBE", name)
