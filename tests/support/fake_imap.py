"""An in-memory IMAP server and the ``Connection`` that talks to it, for in-process tests.

    server = FakeServer(capabilities={"UIDPLUS", "MOVE"}, folders=["INBOX", "Archive"])
    uid = server.deliver("INBOX", b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
    pool = Pool(server.account(), connection_factory=server.connection)

The model is one mailbox server: folders with a UIDVALIDITY and a UIDNEXT,
messages with their bytes, flags and INTERNALDATE, and the capabilities a
test switches on or off (``UIDPLUS``, ``MOVE``, ``UNSELECT``). Another client
is the test itself: :meth:`FakeServer.deliver`, :meth:`~FakeServer.set_flags`,
:meth:`~FakeServer.recreate`. Faults come on cue: :meth:`FakeServer.drop`
makes the next command of a kind fail as a dropped connection does (before or
after the server applied it), and ``server.down`` refuses logins and drops
every open connection at its next command, until the test sets it back.

Why below ``Connection`` and not instead of it: the no-loss rules live in the
real ``Connection``'s compositions (``move_message`` is UID MOVE, or COPY then
STORE \\Deleted then UID EXPUNGE of that UID; ``expunge_message``, ``sync``,
``fetch_uids``, ``uid_exists``...), and the tree calls some methods unbound
(``Connection.list_folders``). So :class:`FakeConnection` is the real
``Connection`` with only ``open`` replaced: it is given a :class:`FakeIMAP4`
instead of an ``imaplib.IMAP4``, which answers the few imaplib calls
``Connection`` makes the way imaplib hands a server's answers over (the same
untagged lists, response codes and exceptions). A lost connection therefore
reaches imapfs as ``imaplib.IMAP4.abort``, and ``Connection._cmd`` turns it
into ``ServerUnavailable`` and marks the connection broken, exactly as with a
real server. ``server.log`` records every command the server carried out.

Not modelled (a test that needs them sends an unmodelled command and fails
loudly with NotImplementedError): CONDSTORE/QRESYNC, ESEARCH, LIST-STATUS,
NOTIFY/IDLE, BODYSTRUCTURE and section fetches, sequence-number commands.
"""

from __future__ import annotations

import imaplib
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from imapfs import imapproto
from imapfs.connection import Connection
from imapfs.errors import ConnectError
from imapfs.records import Account

MODELLED = frozenset({"IMAP4rev1", "UIDPLUS", "MOVE", "UNSELECT"})
DELIMITER = "/"
_DATE = 1709626022  # 2024-03-05 08:07:02 UTC, the INTERNALDATE of a delivery without one


@dataclass
class Message:
    data: bytes
    flags: set[str] = field(default_factory=set)
    date: int = _DATE


@dataclass
class Mailbox:
    uidvalidity: int
    messages: dict[int, Message] = field(default_factory=dict)  # by UID, ascending
    uidnext: int = 1

    def add(self, msg: Message) -> int:
        uid = self.uidnext
        self.uidnext += 1
        self.messages[uid] = msg
        return uid


@dataclass
class _Drop:
    command: str  # a prefix of the command's name, e.g. "UID MOVE", "APPEND"
    applied: bool  # the server carried it out before the connection died (the reply is lost)
    stay_down: bool  # and the server is away afterwards (until the test sets down = False)


class FakeServer:
    """One account's mailbox, shared by every connection (thread-safe: the pool uses threads)."""

    def __init__(self, capabilities: Iterable[str] = ("UIDPLUS", "MOVE", "UNSELECT"),
                 folders: Iterable[str] = ("INBOX",)) -> None:
        self.capabilities = frozenset(capabilities) | {"IMAP4rev1"}
        unknown = self.capabilities - MODELLED
        if unknown:
            raise ValueError(f"the fake server does not model {sorted(unknown)}")
        self.lock = threading.RLock()
        self._uidvalidity = itertools.count(1_700_000_000)
        self.folders: dict[str, Mailbox] = {}
        for name in folders:
            self.create(name)
        self.down = False  # refuses logins; open connections die at their next command
        self.log: list[str] = []  # every command carried out, e.g. "UID EXPUNGE INBOX 3"
        self.logins = 0
        self.body_fetches: dict[tuple[str, int], int] = {}  # (folder, UID) → whole or partial body fetches
        self._drops: list[_Drop] = []

    # -- what a test (or "another client") does -------------------------------------

    def account(self) -> Account:
        return Account(host="fake.invalid", port=143, user="alice", secret=lambda _kind, _fresh: "secret",
                       tls="off", timeout=5.0)

    def connection(self, account: Account) -> FakeConnection:
        """The ``Pool(connection_factory=)`` of this server."""
        return FakeConnection(self, account)

    def create(self, name: str) -> Mailbox:
        with self.lock:
            box = self.folders[name] = Mailbox(next(self._uidvalidity))
            return box

    def recreate(self, name: str) -> Mailbox:
        """Another client deletes *name* and creates it again: a new UIDVALIDITY, UIDs from 1."""
        with self.lock:
            del self.folders[name]
            return self.create(name)

    def deliver(self, folder: str, data: bytes, flags: Iterable[str] = (), date: int = _DATE) -> int:
        """Another client stores a message; returns its UID."""
        with self.lock:
            return self.folders[folder].add(Message(data, set(flags), date))

    def set_flags(self, folder: str, uid: int, *flags: str) -> None:
        with self.lock:
            self.folders[folder].messages[uid].flags = set(flags)

    def bodies(self, folder: str) -> dict[int, bytes]:
        with self.lock:
            return {uid: m.data for uid, m in self.folders[folder].messages.items()}

    def flags(self, folder: str, uid: int) -> set[str]:
        with self.lock:
            return set(self.folders[folder].messages[uid].flags)

    def drop(self, command: str, *, applied: bool = False, stay_down: bool = False) -> None:
        """The next command whose name starts with *command* loses its connection: before the
        server acts on it, or (*applied*) after, so only the reply is lost. *stay_down*: the
        server is away from then on (``down``), until the test sets ``down = False``."""
        with self.lock:
            self._drops.append(_Drop(command, applied, stay_down))

    def commands(self, prefix: str) -> list[str]:
        with self.lock:
            return [c for c in self.log if c.startswith(prefix)]

    # -- the connection side ----------------------------------------------------------

    def login(self, conn: FakeConnection) -> None:
        with self.lock:
            if self.down:
                raise ConnectError(f"cannot connect to {conn.account.host}:{conn.account.port}: "
                                   "Connection refused")
            self.logins += 1

    def run(self, client: FakeIMAP4, what: str, fn: Callable[[], tuple[str, list[Any]]]) -> tuple[str, list[Any]]:
        """Carry out one command for *client*, or lose its connection as planned."""
        with self.lock:
            if client.closed:
                raise imaplib.IMAP4.abort("socket error: EOF")
            drop = next((d for d in self._drops if what.startswith(d.command)), None)
            if drop is not None:
                self._drops.remove(drop)
            if self.down or (drop is not None and not drop.applied):
                self._lose(client, drop)
            result = fn()
            self.log.append(what)
            if drop is not None:
                self._lose(client, drop)
            return result

    def _lose(self, client: FakeIMAP4, drop: _Drop | None) -> None:
        client.closed = True
        if drop is not None and drop.stay_down:
            self.down = True
        raise imaplib.IMAP4.abort("socket error: EOF")


class FakeConnection(Connection):
    """The real Connection, logged in to a :class:`FakeServer` instead of a socket."""

    def __init__(self, server: FakeServer, account: Account) -> None:
        super().__init__(account)
        self.server = server

    def open(self) -> None:
        self.server.login(self)
        self.imap = FakeIMAP4(self.server)  # type: ignore[assignment]
        self.capabilities = self.server.capabilities
        self.greeting = "* OK [CAPABILITY IMAP4rev1] fake IMAP server ready"
        self.broken = False


def _unquote(arg: str | bytes) -> str:
    s = arg.decode("utf-8") if isinstance(arg, bytes) else arg
    if len(s) >= 2 and s[0] == s[-1] == '"':
        return re.sub(r"\\(.)", r"\1", s[1:-1])
    return s


def _quote(name: str) -> bytes:
    return imapproto.quote(name)


def _flag_list(text: str) -> set[str]:
    return set(text.strip().strip("()").split())


def _internaldate(when: int) -> bytes:
    return time.strftime("%d-%b-%Y %H:%M:%S +0000", time.gmtime(when)).encode("ascii")


def _subject_header(data: bytes) -> bytes:
    head = data.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"subject:"):
            return line + b"\r\n\r\n"
    return b"\r\n"


def _header_values(data: bytes, field_name: str) -> list[bytes]:
    head = data.split(b"\r\n\r\n", 1)[0]
    want = field_name.lower().encode("ascii") + b":"
    return [line[len(want):].strip() for line in head.split(b"\r\n") if line.lower().startswith(want)]


_NOT_FOUND = "[NONEXISTENT] Mailbox doesn't exist: "
_FETCH_ITEMS = re.compile(r"UID|FLAGS|INTERNALDATE|RFC822\.SIZE|BODY\.PEEK\[HEADER\.FIELDS \(SUBJECT\)\]"
                          r"|BODY\.PEEK\[\](?:<(\d+)\.(\d+)>)?")


class FakeIMAP4:
    """The imaplib calls ``Connection`` makes, answered from a :class:`FakeServer`'s state, in
    the shapes imaplib returns (typ, data) and with its response codes in ``untagged_responses``."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.untagged_responses: dict[str, list[Any]] = {}
        self.state = "AUTH"
        self.literal: Any = None
        self.utf8_enabled = False
        self.closed = False
        self.selected: tuple[str, int] | None = None  # (name, UIDVALIDITY at SELECT)
        self._sent: list[bytes] = []

    # -- imaplib's surface ------------------------------------------------------------

    def list(self, directory: str = '""', pattern: str = "*") -> tuple[str, list[Any]]:
        def do() -> tuple[str, list[Any]]:
            names = sorted(self.server.folders)
            return "OK", [b'(\\HasNoChildren) "' + DELIMITER.encode() + b'" ' + _quote(n) for n in names]
        return self.server.run(self, "LIST", do)

    def noop(self) -> tuple[str, list[Any]]:
        return self.server.run(self, "NOOP", lambda: ("OK", [b"NOOP completed."]))

    def logout(self) -> tuple[str, list[Any]]:
        self.closed = True
        return "BYE", [b"Logging out"]

    def shutdown(self) -> None:
        self.closed = True

    def send(self, data: bytes) -> None:
        self._sent.append(bytes(data))

    def append(self, mailbox: str, flags: str | None, date_time: str | None, message: bytes) -> tuple[str, list[Any]]:
        data = imaplib.MapCRLF.sub(b"\r\n", message)  # imaplib makes every line end CRLF
        return self._append(mailbox, flags, date_time, data)

    def uid(self, command: str, *args: Any) -> tuple[str, list[Any]]:
        cmd = command.upper()
        if cmd == "FETCH":
            return self._uid_fetch(str(args[0]), str(args[1]))
        if cmd == "SEARCH":
            return self._uid_search([_unquote(a) for a in args])
        if cmd == "STORE":
            return self._uid_store(str(args[0]), str(args[1]), str(args[2]))
        if cmd in ("COPY", "MOVE"):
            return self._uid_copy(cmd, str(args[0]), _unquote(args[1]))
        if cmd == "EXPUNGE":
            return self._uid_expunge(str(args[0]))
        raise NotImplementedError(f"fake IMAP: UID {cmd} is not modelled")

    def _simple_command(self, name: str, *args: Any) -> tuple[str, list[Any]]:
        cmd = name.upper()
        if cmd in ("SELECT", "EXAMINE"):
            if len(args) != 1:
                raise NotImplementedError(f"fake IMAP: {cmd} with {args[1:]} is not modelled")
            return self._select(cmd, _unquote(args[0]))
        if cmd == "UNSELECT":
            if "UNSELECT" not in self.server.capabilities:
                raise imaplib.IMAP4.error("UNSELECT command error: BAD [b'Unknown command']")

            def unselect() -> tuple[str, list[Any]]:
                self.selected = None
                return "OK", [b"Unselect completed."]
            return self.server.run(self, "UNSELECT", unselect)
        if cmd in ("CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE"):
            return self._mailbox(cmd, [_unquote(a) for a in args])
        if cmd == "STATUS":
            return self._status(_unquote(args[0]))
        if cmd == "APPEND" and self.literal is not None:
            self._sent = []
            self.send(self.literal)  # Connection.append replaced send: the literal comes in chunks
            data, self._sent = b"".join(self._sent), []
            return self._append(str(args[0]), args[1], args[2], data)
        raise NotImplementedError(f"fake IMAP: {cmd} is not modelled")

    # -- commands -------------------------------------------------------------------------

    def _box(self) -> Mailbox:
        """The selected mailbox; a connection whose mailbox was deleted meanwhile is dropped (Dovecot)."""
        if self.selected is None:
            raise imaplib.IMAP4.error("command error: BAD [b'No mailbox selected']")
        name, uidv = self.selected
        box = self.server.folders.get(name)
        if box is None or box.uidvalidity != uidv:
            self.closed = True
            raise imaplib.IMAP4.abort("BYE Mailbox was deleted")
        return box

    def _uids(self, box: Mailbox, uidset: str) -> list[int]:
        top = max(box.messages, default=0)
        out: set[int] = set()
        for part in uidset.split(","):
            lo, _, hi = part.partition(":")
            a = top if lo == "*" else int(lo)
            b = a if not hi else (top if hi == "*" else int(hi))
            lo_, hi_ = min(a, b), max(a, b)
            out.update(u for u in box.messages if lo_ <= u <= hi_)
        return sorted(out)

    def _select(self, cmd: str, name: str) -> tuple[str, list[Any]]:
        def do() -> tuple[str, list[Any]]:
            box = self.server.folders.get(name)
            self.selected = None
            if box is None:
                return "NO", [(_NOT_FOUND + name).encode()]
            self.selected = (name, box.uidvalidity)
            ur = self.untagged_responses
            ur["EXISTS"] = [str(len(box.messages)).encode()]
            ur["UIDVALIDITY"] = [str(box.uidvalidity).encode()]
            ur["UIDNEXT"] = [str(box.uidnext).encode()]
            ur["FLAGS"] = [b"(\\Answered \\Flagged \\Deleted \\Seen \\Draft)"]
            return "OK", [b"[READ-WRITE] Select completed."]
        return self.server.run(self, f"{cmd} {name}", do)

    def _status(self, name: str) -> tuple[str, list[Any]]:
        def do() -> tuple[str, list[Any]]:
            box = self.server.folders.get(name)
            if box is None:
                return "NO", [(_NOT_FOUND + name).encode()]
            self.untagged_responses["STATUS"] = [
                _quote(name) + b" (MESSAGES %d UIDNEXT %d UIDVALIDITY %d)"
                % (len(box.messages), box.uidnext, box.uidvalidity)]
            return "OK", [b"Status completed."]
        return self.server.run(self, f"STATUS {name}", do)

    def _uid_fetch(self, uidset: str, items: str) -> tuple[str, list[Any]]:
        wanted = items.strip()
        if wanted.startswith("(") and wanted.endswith(")"):
            wanted = wanted[1:-1]
        rest = _FETCH_ITEMS.sub("", wanted).strip()
        if rest:
            raise NotImplementedError(f"fake IMAP: FETCH items {rest!r} are not modelled")
        partial = re.search(r"BODY\.PEEK\[\]<(\d+)\.(\d+)>", wanted)
        whole = "BODY.PEEK[]" in wanted and partial is None

        def do() -> tuple[str, list[Any]]:
            box = self._box()
            name = self.selected[0] if self.selected else ""
            order = sorted(box.messages)
            out: list[Any] = []
            for uid in self._uids(box, uidset):
                msg = box.messages[uid]
                seq = order.index(uid) + 1
                head = [b"UID %d" % uid]
                if "FLAGS" in wanted:
                    head.append(b"FLAGS (" + " ".join(sorted(msg.flags)).encode() + b")")
                if "INTERNALDATE" in wanted:
                    head.append(b'INTERNALDATE "' + _internaldate(msg.date) + b'"')
                if "RFC822.SIZE" in wanted:
                    head.append(b"RFC822.SIZE %d" % len(msg.data))
                key, literal = None, None
                if "HEADER.FIELDS (SUBJECT)" in wanted:
                    key, literal = b"BODY[HEADER.FIELDS (SUBJECT)]", _subject_header(msg.data)
                elif partial is not None:
                    off, length = int(partial.group(1)), int(partial.group(2))
                    key, literal = b"BODY[]<%d>" % off, msg.data[off:off + length]
                elif whole:
                    key, literal = b"BODY[]", msg.data
                if key is not None and key.startswith(b"BODY[]"):
                    self.server.body_fetches[(name, uid)] = self.server.body_fetches.get((name, uid), 0) + 1
                line = b"%d (" % seq + b" ".join(head)
                if literal is None:
                    out.append(line + b")")
                else:
                    out.append((line + b" " + key + b" {%d}" % len(literal), literal))
                    out.append(b")")
            return "OK", out or [None]
        return self.server.run(self, f"UID FETCH {self._name()} {uidset} {items}", do)

    def _name(self) -> str:
        return self.selected[0] if self.selected else "-"

    def _uid_search(self, args: list[str]) -> tuple[str, list[Any]]:
        def do() -> tuple[str, list[Any]]:
            box = self._box()
            if args == ["ALL"]:
                found = sorted(box.messages)
            elif len(args) == 3 and args[0].upper() == "HEADER":
                needle = args[2].encode("utf-8").lower()
                found = [u for u, m in box.messages.items()
                         if any(needle in v.lower() for v in _header_values(m.data, args[1]))]
            else:
                raise NotImplementedError(f"fake IMAP: UID SEARCH {args} is not modelled")
            return "OK", [b" ".join(b"%d" % u for u in found)]
        return self.server.run(self, f"UID SEARCH {self._name()} {' '.join(args)}", do)

    def _uid_store(self, uidset: str, op: str, flags: str) -> tuple[str, list[Any]]:
        if not op.upper().endswith(".SILENT"):
            raise NotImplementedError(f"fake IMAP: STORE {op} is not modelled (imapfs stores .SILENT)")

        def do() -> tuple[str, list[Any]]:
            box = self._box()
            new = _flag_list(flags)
            for uid in self._uids(box, uidset):
                m = box.messages[uid]
                if op.startswith("+"):
                    m.flags |= new
                elif op.startswith("-"):
                    m.flags -= new
                else:
                    m.flags = set(new)
            return "OK", [None]
        return self.server.run(self, f"UID STORE {self._name()} {uidset} {op} {flags}", do)

    def _uid_copy(self, cmd: str, uidset: str, dest: str) -> tuple[str, list[Any]]:
        if cmd == "MOVE" and "MOVE" not in self.server.capabilities:
            raise imaplib.IMAP4.error("UID command error: BAD [b'Unknown command MOVE']")

        def do() -> tuple[str, list[Any]]:
            box = self._box()
            target = self.server.folders.get(dest)
            if target is None:
                return "NO", [(f"[TRYCREATE] Mailbox doesn't exist: {dest}").encode()]
            src = self._uids(box, uidset)
            if not src:
                return "OK", [b"No messages found."]
            dst = []
            for uid in src:
                m = box.messages[uid]
                dst.append(target.add(Message(m.data, set(m.flags) - {"\\Recent"}, m.date)))
                if cmd == "MOVE":
                    del box.messages[uid]
            if "UIDPLUS" in self.server.capabilities:
                self.untagged_responses["COPYUID"] = [b"%d %s %s" % (
                    target.uidvalidity, imapproto.format_uid_set(src).encode(),
                    imapproto.format_uid_set(dst).encode())]
            if cmd == "MOVE":
                self.untagged_responses["EXPUNGE"] = [b"%d" % u for u in src]
            return "OK", [f"{cmd.capitalize()} completed.".encode()]
        return self.server.run(self, f"UID {cmd} {self._name()} {uidset} {dest}", do)

    def _uid_expunge(self, uidset: str) -> tuple[str, list[Any]]:
        if "UIDPLUS" not in self.server.capabilities:
            raise imaplib.IMAP4.error("UID command error: BAD [b'Unknown command EXPUNGE']")

        def do() -> tuple[str, list[Any]]:
            box = self._box()
            gone = [u for u in self._uids(box, uidset) if "\\Deleted" in box.messages[u].flags]
            for uid in gone:
                del box.messages[uid]
            if gone:
                self.untagged_responses["EXPUNGE"] = [b"%d" % u for u in gone]
            return "OK", [b"Expunge completed."]
        return self.server.run(self, f"UID EXPUNGE {self._name()} {uidset}", do)

    def _append(self, mailbox: str, flags: str | None, date_time: str | None, data: bytes) -> tuple[str, list[Any]]:
        name = _unquote(mailbox)
        when = imapproto.parse_internaldate(_unquote(date_time).encode()) if date_time else int(time.time())

        def do() -> tuple[str, list[Any]]:
            box = self.server.folders.get(name)
            if box is None:
                return "NO", [(f"[TRYCREATE] Mailbox doesn't exist: {name}").encode()]
            uid = box.add(Message(data, _flag_list(flags or ""), when))
            if "UIDPLUS" in self.server.capabilities:
                self.untagged_responses["APPENDUID"] = [b"%d %d" % (box.uidvalidity, uid)]
            return "OK", [b"Append completed."]
        return self.server.run(self, f"APPEND {name}", do)

    def _mailbox(self, cmd: str, names: list[str]) -> tuple[str, list[Any]]:
        def do() -> tuple[str, list[Any]]:
            folders = self.server.folders
            if cmd == "CREATE":
                if names[0] in folders:
                    return "NO", [b"[ALREADYEXISTS] Mailbox already exists"]
                self.server.create(names[0])
            elif cmd == "DELETE":
                if folders.pop(names[0], None) is None:
                    return "NO", [(_NOT_FOUND + names[0]).encode()]
            elif cmd == "RENAME":
                if names[0] not in folders:
                    return "NO", [(_NOT_FOUND + names[0]).encode()]
                if names[1] in folders:
                    return "NO", [b"[ALREADYEXISTS] Target mailbox already exists"]
                folders[names[1]] = folders.pop(names[0])
            return "OK", [f"{cmd.capitalize()} completed.".encode()]
        return self.server.run(self, f"{cmd} {' '.join(names)}", do)
