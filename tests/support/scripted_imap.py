"""A small scripted IMAP server: just enough IMAP for imapfs to mount, and hostile replies on cue.

    srv = ScriptedIMAP({"INBOX": [Msg(1, b"Subject: hi\\r\\n\\r\\nbody\\r\\n")],
                        "Bad": [Msg(1, BODY, size=10**20)]}).start()
    mount imap://alice@127.0.0.1:{srv.port}/ with -o tls=off and password srv.password
    ...
    srv.stop()

It listens on a free loopback port, one thread per connection, and speaks the
commands imapfs sends on a plaintext mount (CAPABILITY, LOGIN, LIST, LSUB,
SELECT/EXAMINE, STATUS, UID FETCH/SEARCH/STORE/MOVE/COPY/EXPUNGE, UNSELECT,
NOOP, IDLE, LOGOUT) well enough; anything else gets ``BAD``. It is not a
correct IMAP server and never will be: it exists to send what a broken or
hostile one sends, and Dovecot (tests/support/dovecot.py) is the server for
everything else.

Hostile replies are set per message (``Msg``): ``size`` (RFC822.SIZE
announced in metadata), ``meta`` (raw bytes that replace the items after
``UID n`` in the metadata reply: deep nesting, a line of many MB, ...) and
``body`` (a callable that writes its own reply to a body fetch and may hang or
trickle bytes, e.g. :func:`literal_bomb`, :func:`slow_loris`). Per server:
``copyuid`` (the COPYUID code a MOVE answers with), ``idle`` (what the push
connection gets once it is idling) and ``vanished`` (what a SELECT with
QRESYNC hears, where QRESYNC is advertised). ``commands`` records every command line.
"""
from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

HOST = "127.0.0.1"
UIDVALIDITY = 1700000000
MODSEQ = 5  # HIGHESTMODSEQ, where CONDSTORE is advertised (nothing ever changes it)
DATE = b'"05-Mar-2024 08:07:02 +0000"'

Writer = Callable[["Session", bytes, "Msg"], None]  # (session, tag, message): sends a reply


@dataclass
class Msg:
    uid: int
    data: bytes
    flags: list[bytes] = field(default_factory=list)
    size: int | None = None  # RFC822.SIZE to announce (None: the real size)
    meta: bytes | None = None  # raw metadata items after "UID n " (None: the usual ones)
    body: Writer | None = None  # hostile reply to any body fetch of this message

    def subject_header(self) -> bytes:
        for line in self.data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
            if line.lower().startswith(b"subject:"):
                return line + b"\r\n\r\n"
        return b"\r\n"


class _Closed(Exception):
    pass


class Session:
    """One client connection."""

    def __init__(self, server: ScriptedIMAP, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.buf = b""
        self.selected: str | None = None

    # -- wire --------------------------------------------------------------
    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            raise _Closed() from None

    def readline(self) -> bytes:
        while b"\r\n" not in self.buf:
            try:
                data = self.sock.recv(65536)
            except OSError:
                raise _Closed() from None
            if not data:
                raise _Closed()
            self.buf += data
            if len(self.buf) > 1 << 20:
                raise _Closed()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def alive(self) -> bool:
        return not self.server.stopped.is_set()

    # -- conversation ------------------------------------------------------
    def run(self) -> None:
        caps = b" ".join(self.server.capabilities)
        self.send(b"* OK [CAPABILITY " + caps + b"] scripted server ready\r\n")
        while self.alive():
            line = self.readline()
            self.server.commands.append(line)
            tag, _, rest = line.partition(b" ")
            cmd, _, args = rest.partition(b" ")
            cmd = cmd.upper()
            if cmd == b"UID":
                sub, _, args = args.partition(b" ")
                cmd = b"UID " + sub.upper()
            handler = getattr(self, "cmd_" + cmd.decode("ascii", "replace").replace(" ", "_"), None)
            if handler is None:
                self.send(tag + b" BAD unknown command\r\n")
                continue
            handler(tag, args)

    def ok(self, tag: bytes, text: bytes = b"done") -> None:
        self.send(tag + b" OK " + text + b"\r\n")

    def cmd_CAPABILITY(self, tag: bytes, args: bytes) -> None:
        self.send(b"* CAPABILITY " + b" ".join(self.server.capabilities) + b"\r\n")
        self.ok(tag)

    def cmd_LOGIN(self, tag: bytes, args: bytes) -> None:
        words = [w.strip(b'"') for w in args.split(b" ")]
        if words[:2] == [self.server.user.encode(), self.server.password.encode()]:
            self.ok(tag, b"logged in")
        else:
            self.send(tag + b" NO [AUTHENTICATIONFAILED] no\r\n")

    def cmd_LOGOUT(self, tag: bytes, args: bytes) -> None:
        self.send(b"* BYE bye\r\n")
        self.ok(tag)
        raise _Closed()

    def cmd_NOOP(self, tag: bytes, args: bytes) -> None:
        self.ok(tag)

    cmd_CHECK = cmd_NOOP
    cmd_SUBSCRIBE = cmd_NOOP
    cmd_UNSUBSCRIBE = cmd_NOOP

    def cmd_ENABLE(self, tag: bytes, args: bytes) -> None:
        self.send(b"* ENABLED " + args.upper() + b"\r\n")
        self.ok(tag)

    def cmd_LIST(self, tag: bytes, args: bytes) -> None:
        for name in self.server.folders:
            self.send(b'* LIST (\\HasNoChildren) "/" "' + name.encode() + b'"\r\n')
        self.ok(tag)

    def cmd_LSUB(self, tag: bytes, args: bytes) -> None:
        self.cmd_LIST(tag, args)

    def _folder(self, args: bytes) -> str | None:
        name = args.split(b" ")[0].strip(b'"').decode("ascii", "replace")
        return name if name in self.server.folders else None

    def cmd_SELECT(self, tag: bytes, args: bytes) -> None:
        name = self._folder(args)
        if name is None:
            self.send(tag + b" NO [NONEXISTENT] Mailbox doesn't exist\r\n")
            return
        self.selected = name
        msgs = self.server.folders[name]
        self.send(b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
                  b"* %d EXISTS\r\n* 0 RECENT\r\n"
                  b"* OK [UIDVALIDITY %d] UIDs valid\r\n"
                  b"* OK [UIDNEXT %d] Predicted next UID\r\n"
                  % (len(msgs), UIDVALIDITY, self.server.uidnext(name)))
        if b"CONDSTORE" in self.server.capabilities:
            self.send(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % MODSEQ)
        if b"(QRESYNC (" in args.upper() and name in self.server.vanished:
            self.send(b"* VANISHED (EARLIER) " + self.server.vanished[name] + b"\r\n")
        self.ok(tag, b"[READ-WRITE] selected")

    cmd_EXAMINE = cmd_SELECT

    def cmd_UNSELECT(self, tag: bytes, args: bytes) -> None:
        self.selected = None
        self.ok(tag)

    def cmd_STATUS(self, tag: bytes, args: bytes) -> None:
        name = self._folder(args)
        if name is None:
            self.send(tag + b" NO [NONEXISTENT] Mailbox doesn't exist\r\n")
            return
        modseq = b" HIGHESTMODSEQ %d" % MODSEQ if b"CONDSTORE" in self.server.capabilities else b""
        self.send(b'* STATUS "%s" (MESSAGES %d UIDNEXT %d UIDVALIDITY %d%s)\r\n'
                  % (name.encode(), len(self.server.folders[name]), self.server.uidnext(name), UIDVALIDITY, modseq))
        self.ok(tag)

    def _messages(self, uidset: bytes) -> list[tuple[int, Msg]]:
        msgs = self.server.folders.get(self.selected or "", [])
        top = max((m.uid for m in msgs), default=0)
        want: set[int] = set()
        for part in uidset.split(b","):
            a, _, b = part.partition(b":")
            lo = top if a == b"*" else int(a)
            hi = lo if not b else top if b == b"*" else int(b)
            lo, hi = min(lo, hi), max(lo, hi)
            want.update(m.uid for m in msgs if lo <= m.uid <= hi)
        return [(i, m) for i, m in enumerate(msgs, 1) if m.uid in want]

    def cmd_UID_SEARCH(self, tag: bytes, args: bytes) -> None:
        msgs = self.server.folders.get(self.selected or "", [])
        self.send(b"* SEARCH" + b"".join(b" %d" % m.uid for m in msgs) + b"\r\n")
        self.ok(tag)

    def cmd_UID_FETCH(self, tag: bytes, args: bytes) -> None:
        uidset, _, items = args.partition(b" ")
        up = items.upper()
        for seq, m in self._messages(uidset):
            if b"BODY.PEEK[]" in up or b"BINARY" in up or b"BODY[]" in up:
                if m.body is not None:
                    m.body(self, tag, m)  # may never return: the connection is the hostile server's
                    return
                mo = re.search(rb"BODY\.PEEK\[\]<(\d+)\.(\d+)>", up)
                if mo:
                    off, n = int(mo.group(1)), int(mo.group(2))
                    part = m.data[off:off + n]
                    self.send(b"* %d FETCH (UID %d BODY[]<%d> {%d}\r\n" % (seq, m.uid, off, len(part)) + part + b")\r\n")
                else:
                    bs = b""
                    if b"BODYSTRUCTURE" in up:
                        bs = (b' BODYSTRUCTURE ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" %d 1 NIL NIL NIL NIL)'
                              % len(m.data))
                    self.send(b"* %d FETCH (UID %d%s BODY[] {%d}\r\n" % (seq, m.uid, bs, len(m.data)) + m.data + b")\r\n")
            elif b"RFC822.SIZE" in up:
                if m.meta is not None:
                    self.send(b"* %d FETCH (UID %d " % (seq, m.uid) + m.meta + b")\r\n")
                    continue
                subj = m.subject_header()
                self.send(b"* %d FETCH (UID %d FLAGS (%s) INTERNALDATE %s RFC822.SIZE %d "
                          b"BODY[HEADER.FIELDS (SUBJECT)] {%d}\r\n"
                          % (seq, m.uid, b" ".join(m.flags), DATE,
                             len(m.data) if m.size is None else m.size, len(subj)) + subj + b")\r\n")
            elif b"BODYSTRUCTURE" in up:
                self.send(b'* %d FETCH (UID %d BODYSTRUCTURE ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" %d 1 NIL NIL NIL NIL))\r\n'
                          % (seq, m.uid, len(m.data)))
            elif b"FLAGS" in up:
                self.send(b"* %d FETCH (UID %d FLAGS (%s))\r\n" % (seq, m.uid, b" ".join(m.flags)))
            else:
                self.send(b"* %d FETCH (UID %d)\r\n" % (seq, m.uid))
        self.ok(tag)

    def cmd_UID_STORE(self, tag: bytes, args: bytes) -> None:
        uidset, op, flags = args.split(b" ", 2)
        new = flags.strip(b"()").split()
        for seq, m in self._messages(uidset):
            if op.upper().startswith(b"+"):
                m.flags = m.flags + [f for f in new if f not in m.flags]
            elif op.upper().startswith(b"-"):
                m.flags = [f for f in m.flags if f not in new]
            else:
                m.flags = new
            if b".SILENT" not in op.upper():
                self.send(b"* %d FETCH (UID %d FLAGS (%s))\r\n" % (seq, m.uid, b" ".join(m.flags)))
        self.ok(tag)

    def _transfer(self, tag: bytes, args: bytes, move: bool) -> None:
        uidset, _, dest = args.partition(b" ")
        name = dest.strip(b'"').decode()
        if name not in self.server.folders:
            self.send(tag + b" NO [TRYCREATE] no such mailbox\r\n")
            return
        src_uids, dst_uids = [], []
        for _seq, m in self._messages(uidset):
            new = Msg(self.server.uidnext(name), m.data, list(m.flags))
            self.server.folders[name].append(new)
            src_uids.append(m.uid)
            dst_uids.append(new.uid)
            if move:
                self.server.folders[self.selected or ""].remove(m)
        code = self.server.copyuid or b"COPYUID %d %s %s" % (
            UIDVALIDITY, b",".join(b"%d" % u for u in src_uids), b",".join(b"%d" % u for u in dst_uids))
        self.ok(tag, b"[" + code + b"] done")

    def cmd_UID_MOVE(self, tag: bytes, args: bytes) -> None:
        self._transfer(tag, args, True)

    def cmd_UID_COPY(self, tag: bytes, args: bytes) -> None:
        self._transfer(tag, args, False)

    def cmd_UID_EXPUNGE(self, tag: bytes, args: bytes) -> None:
        msgs = self.server.folders.get(self.selected or "", [])
        for seq, m in reversed(self._messages(args.strip())):
            if b"\\Deleted" in m.flags:
                msgs.remove(m)
                self.send(b"* %d EXPUNGE\r\n" % seq)
        self.ok(tag)

    def cmd_IDLE(self, tag: bytes, args: bytes) -> None:
        self.server.idles += 1
        self.send(b"+ idling\r\n")
        if self.server.idle is not None:
            self.server.idle(self, tag, Msg(0, b""))
            return
        while self.readline().upper() != b"DONE":
            pass
        self.ok(tag)


class ScriptedIMAP:
    """The server (see the module docstring)."""

    def __init__(self, folders: dict[str, list[Msg]], *, capabilities: tuple[bytes, ...] = (
            b"IMAP4rev1", b"UIDPLUS", b"MOVE", b"UNSELECT"),
            copyuid: bytes | None = None, idle: Writer | None = None,
            vanished: dict[str, bytes] | None = None) -> None:
        self.folders = folders
        self.vanished = vanished or {}  # folder: the VANISHED (EARLIER) a SELECT with QRESYNC gets
        self.capabilities = capabilities
        self.copyuid = copyuid
        self.idle = idle
        self.idles = 0
        self.user = "alice"
        self.password = "scripted-pw"
        self.commands: list[bytes] = []
        self.stopped = threading.Event()
        self._listener: socket.socket | None = None
        self._socks: list[socket.socket] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"imap://{self.user}@{HOST}:{self.port}/"

    def uidnext(self, folder: str) -> int:
        return max((m.uid for m in self.folders[folder]), default=0) + 1

    def start(self) -> ScriptedIMAP:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, 0))
        s.listen(16)
        self.port = s.getsockname()[1]
        self._listener = s
        threading.Thread(target=self._accept, name="scripted-imap", daemon=True).start()
        return self

    def _accept(self) -> None:
        assert self._listener is not None
        while not self.stopped.is_set():
            try:
                c, _ = self._listener.accept()
            except OSError:
                return
            self._socks.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        try:
            Session(self, c).run()
        except (_Closed, OSError):
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def stop(self) -> None:
        self.stopped.set()
        for s in [self._listener, *self._socks]:
            if s is None:
                continue
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def __enter__(self) -> ScriptedIMAP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- hostile replies to a body fetch (Msg.body) or to IDLE (ScriptedIMAP.idle) --

def _hang(s: Session) -> None:
    """Keep the connection open and say nothing more (the client must give up)."""
    while s.alive():
        try:
            if not s.sock.recv(65536):
                return
        except OSError:
            return


def literal_bomb(size: int) -> Writer:
    """A FETCH announcing a literal of *size* bytes (10**20, 2**62), then a few bytes and silence."""
    def write(s: Session, tag: bytes, m: Msg) -> None:
        s.send(b"* 1 FETCH (UID %d BODY[] {%d}\r\n" % (m.uid, size) + b"x" * 100)
        _hang(s)
    return write


def long_line(n: int, unit: bytes = b"a[ ") -> Writer:
    """A FETCH whose line is *n* bytes of *unit* (at full speed), then the end of the reply."""
    def write(s: Session, tag: bytes, m: Msg) -> None:
        s.send(b"* 1 FETCH (UID %d X (" % m.uid)
        block = unit * (65536 // len(unit))
        sent = 0
        while sent < n and s.alive():
            s.send(block)
            sent += len(block)
        s.send(b"))\r\n" + tag + b" OK done\r\n")
    return write


def slow_loris(every: float = 0.05, literal: int | None = None) -> Writer:
    """A FETCH line (or a literal of *literal* bytes) that never ends: one byte each *every* seconds."""
    def write(s: Session, tag: bytes, m: Msg) -> None:
        if literal is None:
            s.send(b'* 1 FETCH (UID %d BODY[] "' % m.uid)
        else:
            s.send(b"* 1 FETCH (UID %d BODY[] {%d}\r\n" % (m.uid, literal))
        s.sock.settimeout(every)
        while s.alive():
            s.send(b"a")
            try:
                if s.sock.recv(65536) == b"":
                    return
            except TimeoutError:
                pass
            except OSError:
                return
    return write


def idle_flood(line: bytes, repeat: int = 1, trickle: float | None = None) -> Writer:
    """What an idling push connection gets: *line* (*repeat* times, or one byte each *trickle* s)."""
    def write(s: Session, tag: bytes, m: Msg) -> None:
        if trickle is None:
            for _ in range(repeat):
                s.send(line)
        else:
            for b in line:
                if not s.alive():
                    return
                s.send(bytes([b]))
                time.sleep(trickle)
        _hang(s)
    return write
