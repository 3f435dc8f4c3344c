"""Change tracking: learn what other clients did, then sync only what changed.

Three sources, best first (docs/change-tracking.md):

* push on a dedicated connection: NOTIFY (RFC 5465) reports new/expunged
  messages, flag changes and folder renames for every folder; without
  NOTIFY, IDLE (RFC 2177) watches one folder — the one in use — renewed
  every 25 minutes;
* STATUS polling every ``hot_poll`` seconds of the folders in use that the
  push does not cover (INBOX, folders listed or read in the last minute,
  folders with open files);
* a full round every ``poll`` seconds: one ``LIST ... RETURN (STATUS ...)``
  (RFC 5819) where the server has LIST-STATUS, which also catches folders
  created, deleted or renamed by others.

A folder whose STATUS differs from what the tree knows is synced at once,
incrementally (QRESYNC/CONDSTORE where available, see Connection.sync), and
the tree invalidates the kernel's entries for whatever vanished.

The push connection is read by its own thread with a private line buffer
and a short socket timeout (imaplib's buffered file must not see a timeout),
and it only ever reads and writes its own socket.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

import trio

from . import imapproto
from .connection import Connection
from .connection.wire import parse_status
from .errors import ImapfsError, ProtocolError
from .model import Folder, status_differs
from .records import Account
from .tree import Tree

log = logging.getLogger(__name__)

IDLE_RENEW = 25 * 60  # RFC 2177: servers may drop an IDLE after 30 minutes
# NOOP on the NOTIFY connection this often: rarely. Dovecot 2.3.19's NOTIFY
# process goes deaf after its list index log rotates (~330 APPENDs) until its
# 30 s timer, and dies (signal 11, "Failed to map view for dovecot.list.index",
# fixed in 2.4.0 by commit d8465d7b5c) if the log rotated three times by then.
# A NOOP every 0.5 s avoided both, but it made the server's LIST stale for
# every client: a folder another client renamed kept its old name in LIST for
# as long as we measured (40 s+), a worse failure than a crash we recover from
# (reconnect + verify round). So: no fast NOOP; folders in use are STATUS-polled
# even while NOTIFY runs (covers()), which bounds the deafness for them.
# docs/change-tracking.md, "Dovecot NOTIFY crash"; scripts/repro_notify_crash.py.
NOTIFY_POLL = 10 * 60
HOT_SECONDS = 60.0
TICK = 1.0

Event = tuple  # ("folder", raw_name) | ("folders",)


# What one push response may make the listener buffer (docs/reliability.md,
# "Limits"). Push responses are short (EXISTS, EXPUNGE, FETCH FLAGS, STATUS,
# LIST); past a limit the push connection is dropped and reconnects.
PUSH_MAX_LINE = 1024 * 1024
PUSH_MAX_LITERAL = 1024 * 1024
PUSH_MAX_RESPONSE = 4 * 1024 * 1024  # lines and literals of one response together


class _Reader:
    """Responses from a socket with our own buffer, so timeouts lose nothing.

    The buffer is a bytearray that is searched only where new bytes arrived
    (linear, not quadratic, in what a slow sender trickles) and never holds
    more than one line or literal over its limit.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self._scanned = 0  # the first bytes of buf known to hold no CRLF

    def _fill(self, timeout: float) -> bool:
        pending = getattr(self.sock, "pending", None)
        self.sock.settimeout(timeout if not (pending and pending()) else 0.5)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        if not data:
            raise EOFError("connection closed by the server")
        self.buf += data
        return True

    def line(self, timeout: float) -> bytes | None:
        while True:
            i = self.buf.find(b"\r\n", max(0, self._scanned - 1))
            if i >= 0:
                break
            self._scanned = len(self.buf)
            if self._scanned > PUSH_MAX_LINE:
                raise ProtocolError(f"push response line longer than {PUSH_MAX_LINE} bytes")
            if not self._fill(timeout):
                return None
        if i > PUSH_MAX_LINE:
            raise ProtocolError(f"push response line longer than {PUSH_MAX_LINE} bytes")
        line = bytes(self.buf[:i])
        del self.buf[:i + 2]  # cheap at the front of a bytearray
        self._scanned = 0
        return line

    def response(self, timeout: float) -> list | None:
        """One response as imaplib shapes it: ``[(head, literal), ..., tail]``."""
        line = self.line(timeout)
        if line is None:
            return None
        out: list = []
        total = len(line)
        while line.endswith(b"}") and b"{" in line:
            digits = line[line.rindex(b"{") + 1:-1].rstrip(b"+")
            if not digits.isdigit():
                break
            n = int(digits) if len(digits) <= 12 else PUSH_MAX_LITERAL + 1
            total += n
            if n > PUSH_MAX_LITERAL or total > PUSH_MAX_RESPONSE:
                raise ProtocolError(f"push response literal of {digits[:20].decode()} bytes is over the limit")
            while len(self.buf) < n:
                if not self._fill(30.0):
                    raise ProtocolError("literal did not arrive")
            lit = bytes(self.buf[:n])
            del self.buf[:n]
            self._scanned = 0
            out.append((line, lit))
            nxt = self.line(30.0)
            if nxt is None:
                raise ProtocolError("response did not end")
            line = nxt
            total += len(line)
            if total > PUSH_MAX_RESPONSE:
                raise ProtocolError(f"push response longer than {PUSH_MAX_RESPONSE} bytes")
        out.append(line)
        return out


class PushListener:
    """A thread that keeps one NOTIFY or IDLE session and reports events."""

    def __init__(self, account: Account, capabilities: Callable[[], frozenset[str]],
                 report: Callable[[Event], None]) -> None:
        self.account = account
        self._caps = capabilities  # known once some connection logged in (not when started offline)
        self.mode: str | None = None
        self.report = report
        self.target: bytes = b"INBOX"  # IDLE mode: the folder to watch
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._tag = 0
        self.connected = False
        self._was_connected = False

    def _now_connected(self) -> None:
        """A push session is live: from here on no event is missed, but some may
        have been before it (mount, reconnect), so every folder is compared once."""
        if not self._was_connected:
            self._was_connected = True
            self.report(("verify",))
        self.connected = True

    def covers(self, folder: bytes) -> bool:
        """Does a live push session report changes of *folder*? (Not while reconnecting.)"""
        if not self.connected:
            return False
        # Not NOTIFY: Dovecot 2.3's NOTIFY can go deaf for 30 s (see NOTIFY_POLL), so
        # folders in use keep their STATUS polling; NOTIFY still covers the rest.
        return self.mode == "idle" and folder == self.target

    def stop(self) -> None:
        self._stop.set()
        s = self._sock
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def run(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            if self.mode is None:
                caps = self._caps()
                if not caps:
                    self._stop.wait(2.0)
                    continue
                self.mode = "notify" if "NOTIFY" in caps else "idle" if "IDLE" in caps else "none"
            try:
                self._session()
                delay = 1.0
            except (ImapfsError, OSError, EOFError, ProtocolError) as e:
                if self._stop.is_set():
                    return
                if self._was_connected:
                    # News that the server may be gone (or kicked us): check now, so
                    # user.imapfs.state does not lag (issue 10 item 9); events may
                    # have been missed, so the next session starts with a comparison.
                    self.report(("lost",))
                    delay = 1.0  # that session worked: start the backoff afresh
                log.info("push connection (%s): %s; reconnecting in %.0f s", self.mode, e, delay)
                self._stop.wait(delay)
                delay = min(60.0, delay * 2)
            except Exception:  # noqa: BLE001 - a bug here must not end change tracking
                log.exception("push listener failed")
                self._stop.wait(delay)
                delay = min(60.0, delay * 2)

    def _send(self, cmd: bytes) -> bytes:
        self._tag += 1
        tag = b"W%d" % self._tag
        assert self._sock is not None
        self._sock.sendall(tag + b" " + cmd + b"\r\n")
        return tag

    def _wait_tagged(self, reader: _Reader, tag: bytes) -> None:
        deadline = time.monotonic() + self.account.timeout
        while time.monotonic() < deadline:
            resp = reader.response(TICK)
            if resp is None:
                if self._stop.is_set():
                    return
                continue
            tail = resp[-1]
            if tail.startswith(tag + b" "):
                if not tail[len(tag) + 1:].upper().startswith(b"OK"):
                    raise ProtocolError(f"watcher command refused: {tail!r}")
                return
            self._handle(resp)
        raise ProtocolError("watcher command timed out")

    def _session(self) -> None:
        self._was_connected = False
        if self.mode == "none":  # neither NOTIFY nor IDLE: STATUS polling does it all
            self._stop.wait()
            return
        conn = Connection(self.account)
        conn.open()
        imap = conn.imap
        assert imap is not None
        self._sock = imap.sock
        reader = _Reader(imap.sock)
        try:
            if self.mode == "notify":
                # Any NOTIFY SET naming mailboxes other than the selected one
                # (personal, subscribed, inboxes, with or without MailboxName
                # or FlagChange, STATUS or not) crashed Dovecot 2.3.19 alike;
                # imapfs recovers from that crash by reconnecting and comparing
                # (see NOTIFY_POLL for why it does not poll fast instead).
                tag = self._send(b"NOTIFY SET (personal (MessageNew MessageExpunge FlagChange MailboxName))")
                try:
                    self._wait_tagged(reader, tag)
                except ProtocolError as e:
                    if "refused" not in str(e):
                        raise
                    # Advertised but refused (Dovecot with mailbox_list_index = no answers
                    # NO [NOTIFICATIONOVERFLOW]): watch one folder with IDLE instead of
                    # retrying NOTIFY forever.
                    self.mode = "idle" if "IDLE" in self._caps() else "none"
                    log.warning("the server refused NOTIFY (%s); using %s instead", e,
                                "IDLE" if self.mode == "idle" else "STATUS polling")
                    raise
                self._now_connected()
                log.debug("watching every folder with NOTIFY")
                # A NOOP now and then keeps the connection alive (see NOTIFY_POLL).
                last = time.monotonic()
                while not self._stop.is_set():
                    resp = reader.response(TICK)
                    if resp is not None:
                        self._handle(resp)
                    if time.monotonic() - last >= NOTIFY_POLL:
                        self._wait_tagged(reader, self._send(b"NOOP"))
                        last = time.monotonic()
            else:
                while not self._stop.is_set():
                    self._idle(reader)
        finally:
            self.connected = False
            self._sock = None
            conn.broken = True
            conn.close()

    def _idle(self, reader: _Reader) -> None:
        target = self.target
        self._current = target
        self._wait_tagged(reader, self._send(b"EXAMINE " + imapproto.quote(target)))
        tag = self._send(b"IDLE")
        while True:  # the continuation
            resp = reader.response(self.account.timeout)
            if resp is None:
                raise ProtocolError("no answer to IDLE")
            if resp[-1].startswith(b"+"):
                break
            if resp[-1].startswith(tag + b" "):
                raise ProtocolError(f"IDLE refused: {resp[-1]!r}")
            self._handle(resp)
        log.debug("IDLE on %r", target)
        self._now_connected()
        started = time.monotonic()
        while not self._stop.is_set() and self.target == target and time.monotonic() - started < IDLE_RENEW:
            resp = reader.response(TICK)
            if resp is not None:
                self._handle(resp)
        assert self._sock is not None
        self._sock.sendall(b"DONE\r\n")
        self._wait_tagged(reader, tag)

    def _handle(self, resp: list) -> None:
        first = resp[0][0] if isinstance(resp[0], tuple) else resp[0]
        if not first.startswith(b"* "):
            return
        words = first[2:].split(b" ", 2)
        kind = words[0].upper()
        if kind == b"BYE":
            raise EOFError(first.decode("utf-8", "replace"))
        if kind == b"STATUS":
            head = resp[0]
            start = len(b"* STATUS ")
            chunks = [(head[0][start:], head[1]) if isinstance(head, tuple) else head[start:]] + resp[1:]
            for name, _st in parse_status(chunks):
                self.report(("folder", name))
            return
        if kind == b"LIST":
            self.report(("folders",))
            return
        if kind == b"VANISHED" or (len(words) > 1 and words[1].upper() in (b"EXISTS", b"EXPUNGE", b"FETCH")):
            if self.mode == "idle":
                self.report(("folder", self._current))


class Watcher:
    """Drives syncs from push events, STATUS of folders in use, and periodic full rounds."""

    def __init__(self, tree: Tree, account: Account, *, poll: float = 60.0, hot_poll: float = 2.0) -> None:
        self.tree = tree
        self.account = account
        self.poll = max(0.5, poll)
        self.hot_poll = max(0.5, min(hot_poll, self.poll))
        self.listener: PushListener | None = None

    def hot_folders(self) -> list[Folder]:
        now = self.tree.clock()
        out = []
        for f in self.tree.folders():
            if f.state is None or f.raw is None:
                continue
            if f.path == ("INBOX",) or f.open_files > 0 or now - f.last_used < HOT_SECONDS:
                out.append(f)
        return out

    async def run(self) -> None:
        send, recv = trio.open_memory_channel[Event](1000)
        token = trio.lowlevel.current_trio_token()

        def report(ev: Event) -> None:
            try:
                trio.from_thread.run_sync(send.send_nowait, ev, trio_token=token)
            except (trio.WouldBlock, trio.RunFinishedError):
                pass  # the periodic rounds will catch up

        self.listener = PushListener(self.account, lambda: self.tree.pool.capabilities, report)
        thread = threading.Thread(target=self.listener.run, name="imapfs-push", daemon=True)
        thread.start()
        clock = self.tree.clock
        next_full = clock() + self.poll
        next_hot = clock() + self.hot_poll
        was_online = self.tree.pool.online
        try:
            while True:
                dirty: set[bytes] = set()
                folders_changed = False
                verify = False
                lost = False
                with trio.move_on_at(trio.current_time() + max(0.0, min(next_full, next_hot) - clock())):
                    ev = await recv.receive()
                    await trio.sleep(0.05)  # let a burst of events arrive: one sync for all
                    while True:
                        if ev[0] == "folder":
                            dirty.add(ev[1])
                        elif ev[0] == "verify":
                            verify = folders_changed = True
                        elif ev[0] == "lost":
                            lost = True
                        else:
                            folders_changed = True
                        try:
                            ev = recv.receive_nowait()
                        except trio.WouldBlock:
                            break
                if lost and not await self.tree.pool.probe():
                    log.info("push connection lost and the server does not answer: offline")
                    continue  # the pool's backoff decides when to try again; rounds would only fail
                if verify or (self.tree.pool.online and not was_online):
                    # (Re)connected: what happened meanwhile is unknown; compare everything.
                    next_full = clock()
                was_online = self.tree.pool.online
                try:
                    await self._round(dirty, folders_changed, clock() >= next_hot, clock() >= next_full)
                except ImapfsError as e:
                    log.debug("change tracking round failed: %s", e)
                except Exception:  # noqa: BLE001 - never let this end the mount
                    log.exception("change tracking round failed")
                now = clock()
                if now >= next_hot:
                    next_hot = now + self.hot_poll
                if now >= next_full:
                    next_full = now + self.poll
        finally:
            self.listener.stop()

    async def _round(self, dirty: set[bytes], folders_changed: bool, hot: bool, full: bool) -> None:
        tree = self.tree
        listener = self.listener
        assert listener is not None
        todo: dict[bytes, Folder] = {}
        by_raw = {f.raw: f for f in tree.folders() if f.raw is not None}
        dirty |= tree.pool.changed_folders()
        if tree.journal is not None and tree.journal.due:
            await tree.journal.replay()  # before any sync, so the server's state includes our changes
        for raw in dirty:
            f = by_raw.get(raw)
            if f is not None and f.state is not None:
                todo[raw] = f
        if folders_changed:
            await tree.refresh_folders(force=True)
        verify: set[bytes] = set()
        if full:
            for f in await tree.poll_all():
                if f.raw is not None:  # poll_all returns server folders only
                    todo[f.raw] = f
            # Counters can agree while UID sets differ (a missed expunge and a missed
            # append): every full round compares each folder the tree shows (issue 10).
            for f in tree.folders():
                if f.raw is not None and f.state is not None:
                    todo[f.raw] = f
                    verify.add(f.raw)
        elif hot:
            for f in self.hot_folders():
                hot_raw = f.raw
                if (hot_raw is None or listener.covers(hot_raw) or hot_raw in todo  # hot_folders has raw set
                        or tree.pool.held_back(hot_raw)):
                    continue
                status = await tree.pool.run(lambda c: c.status(hot_raw))  # noqa: B023 - awaited here
                if f.state is not None and status_differs(f.state, status):
                    todo[hot_raw] = f
        for raw, f in todo.items():
            # A stalled folder waits for its back-off (Pool.stalls); the first round after it
            # syncs it, which ends the stall if it answers.
            if not f.gone and f.state is not None and not tree.pool.held_back(raw):
                await tree.sync(f, force=True, verify=raw in verify)
        hot_now = self.hot_folders()
        if listener.mode == "idle" and hot_now:
            best = max(hot_now, key=lambda f: (f.open_files > 0, f.last_used))
            if best.raw is not None:  # hot_folders has raw set
                listener.target = best.raw
