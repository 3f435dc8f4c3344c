"""The trio side of the IMAP session: the pool that runs blocking connections.

A :class:`~imapfs.connection.Connection` is used by one thread at a time. The
:class:`Pool` hands connections to ``trio.to_thread.run_sync`` under a
``CapacityLimiter``, so no network call ever runs on the trio loop, and
reconnects with exponential backoff while the server is away.

For compatibility this module re-exports ``Connection`` (from
``imapfs.connection``) and the records ``Account``, ``Known``, ``RawMeta``,
``SelectInfo``, ``Status`` and ``SyncResult`` (from ``imapfs.records``):
callers of ``Pool`` and fakes given to ``Pool(connection_factory=)`` use
them. New code imports them from their home.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import trio

from .connection import Connection
from .errors import FolderStalled, ImapfsError, ServerUnavailable, TimedOut
from .records import Account, Known, RawMeta, SelectInfo, Status, SyncResult

__all__ = ["Account", "Connection", "Known", "Pool", "RawMeta", "SelectInfo", "Status", "SyncResult"]

log = logging.getLogger(__name__)

T = TypeVar("T")

STALL_MAX_FACTOR = 10  # a stalled folder's back-off grows from timeout= to this many times it


@dataclass
class Stall:
    """A folder whose commands time out while the server answers, and when it is tried next."""

    delay: float  # the back-off now running (s)
    until: float  # time.monotonic() of the next try
    since: float  # time.monotonic() it was first seen stalled
    why: str  # the time-out that started or renewed it
    trying: bool = False  # a try after the back-off is under way: nobody else tries meanwhile


class Pool:
    """A few IMAP connections shared by trio tasks, each used by one thread at a time.

    ``run(fn)`` calls ``fn(connection)`` in a worker thread. A connection that
    failed is discarded; new ones are opened on demand, but after a failure
    not before the backoff delay has passed (1 s doubling up to
    ``backoff_max``), so a vanished server costs one quick EIO per request,
    not a timeout each.

    A folder can stall while the server answers (Dovecot waits minutes on a stale
    Maildir lock, and each command given up on leaves one of its processes blocked,
    counted against its per-user connection limit). A command on a folder that times
    out on a connection opened for it, while a NOOP on another new connection is
    answered, backs that folder off (``stalls``): it is not tried again for
    ``timeout=`` seconds, doubling up to ``STALL_MAX_FACTOR`` times that, and
    meanwhile every command on it fails at once with ``FolderStalled``. After the
    back-off one command tries it (on a new connection); its success ends the stall.
    docs/reliability.md, "A folder that stalls".
    """

    def __init__(self, account: Account, size: int = 4, backoff_max: float = 30.0,
                 connection_factory: Callable[[Account], Connection] = Connection) -> None:
        self.account = account
        self.size = max(1, size)
        self.backoff_max = backoff_max
        self._factory = connection_factory
        self._limiter = trio.CapacityLimiter(self.size)
        self._slots = trio.Semaphore(self.size)
        self._idle: list[Connection] = []
        self._delay = 0.0
        self._next_try = 0.0
        self._last_error: str | None = None
        self.capabilities: frozenset[str] = frozenset()
        self.online = False
        self.forced_offline = False  # -o offline: never connect
        self.greeting = ""  # the server's greeting (run_list tells Dovecot by it)
        self.stall_first = max(1.0, account.timeout)
        self.stall_max = STALL_MAX_FACTOR * self.stall_first
        self.stalls: dict[bytes, Stall] = {}  # folders backed off (see the class docstring)

    def available(self) -> bool:
        """Would a request try the server now (online, or the backoff delay is over)?"""
        if self.forced_offline:
            return False
        return self.online or time.monotonic() >= self._next_try

    def mark_offline(self, why: str) -> None:
        """Start without the server (it was unreachable at mount time)."""
        self._failed(why)

    async def start(self) -> None:
        """Open the first connection; its errors (wrong password, bad TLS) reach the caller."""
        conn = self._factory(self.account)
        await trio.to_thread.run_sync(conn.open, limiter=self._limiter)
        self.capabilities = conn.capabilities
        self.greeting = conn.greeting
        self._idle.append(conn)
        self.online = True

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def _checkout(self, folder: bytes | None) -> Connection | None:
        if folder is not None:
            for i, c in enumerate(self._idle):
                if c.selected == folder:
                    return self._idle.pop(i)
        return self._idle.pop() if self._idle else None

    async def _connect(self) -> Connection:
        if self.forced_offline:
            raise ServerUnavailable("offline mode (-o offline)")
        now = time.monotonic()
        if now < self._next_try:
            raise ServerUnavailable(
                f"{self.account.label} unreachable ({self._last_error}); next attempt in {self._next_try - now:.0f} s"
            )
        conn = self._factory(self.account)
        try:
            await trio.to_thread.run_sync(conn.open, limiter=self._limiter)
        except ImapfsError as e:
            self._failed(str(e))
            raise ServerUnavailable(str(e)) from None
        if not self.online:
            log.info("reconnected to %s", self.account.label)
            self._last_error = None
        self.online = True
        self._delay = 0.0
        self.capabilities = conn.capabilities
        self.greeting = conn.greeting
        return conn

    def _failed(self, why: str) -> None:
        self._delay = min(self.backoff_max, max(1.0, self._delay * 2))
        self._next_try = time.monotonic() + self._delay
        if self.online or why != self._last_error:
            log.error("IMAP server %s unavailable: %s (retrying in %.0f s)", self.account.label, why, self._delay)
        self._last_error = why
        self.online = False

    def held_back(self, folder: bytes) -> bool:
        """Would a command on *folder* be refused now (its back-off runs, or a try is under way)?"""
        stall = self.stalls.get(folder)
        return stall is not None and (stall.trying or time.monotonic() < stall.until)

    async def run(self, fn: Callable[[Connection], T], folder: bytes | None = None,
                  retry: bool = True, new: bool = False, touches: bytes | None = None) -> T:
        """Run ``fn(connection)`` in a worker thread.

        *folder*: the folder *fn* works in (a connection that has it selected is
        preferred; a stalled folder is backed off, see the class docstring).
        *touches*: a folder *fn* acts on without selecting it (APPEND): backed off
        the same way, but no connection is preferred for it (Dovecot answers an
        APPEND on a connection whose selected folder was deleted with SERVERBUG,
        not TRYCREATE).
        *retry*: when the connection turns out to be dead (server restart,
        idle timeout), run *fn* once more on a fresh connection. Only for
        commands that are safe to repeat; writes pass ``retry=False``. A time-out
        on a fresh connection is never retried: the server did not answer, and
        with *folder* given, a second try would only leave a second server process
        waiting for that folder.
        *new*: run it on a newly opened connection (it then replaces the
        oldest idle one); see ``run_list``.
        """
        box = folder if folder is not None else touches
        stall = self.stalls.get(box) if box is not None else None
        if stall is not None:
            assert box is not None
            now = time.monotonic()
            if stall.trying or now < stall.until:
                wait = "being tried again" if stall.trying else f"next try in {stall.until - now:.0f} s"
                raise FolderStalled(f"{box.decode('ascii', 'replace')} does not answer ({stall.why}); "
                                    f"{wait}", box, sent=False)
            stall.trying = True  # this call is the one try after the back-off
            new = True  # on a connection of its own: a pooled one may have died meanwhile
        try:
            result = await self._run(fn, folder, retry, new)
        except TimedOut as exc:
            if box is None or not exc.fresh or not await self._answers():
                raise
            raise await self._stalled(box, exc, stall) from exc
        except ServerUnavailable:
            raise  # the server is away, or the connection was lost: nothing is known of the folder
        except ImapfsError:
            self._answered(box)  # a NO, BAD or an unusable reply: the folder answered
            raise
        finally:
            if stall is not None:
                stall.trying = False
        self._answered(box)
        return result

    def _answered(self, folder: bytes | None) -> None:
        if folder is not None and self.stalls.pop(folder, None) is not None:
            log.info("folder %s answers again", folder.decode("ascii", "replace"))

    async def _answers(self) -> bool:
        """Does the server answer a NOOP on a new connection (no folder selected, nothing waiting)?"""
        try:
            await self.run(Connection.noop, retry=False, new=True)
        except ImapfsError:
            return False
        return True

    async def _stalled(self, folder: bytes, exc: TimedOut, stall: Stall | None) -> FolderStalled:
        """Back *folder* off after *exc*, a time-out while the server answers; the error to raise.

        *stall*: the back-off whose one try this was (it then doubles). Without one, a
        back-off is started, unless a concurrent command on the folder started it already.
        """
        name = folder.decode("ascii", "replace")
        now = time.monotonic()
        current = self.stalls.get(folder)
        if current is None:
            current = self.stalls[folder] = Stall(self.stall_first, now + self.stall_first, now, str(exc))
            log.warning("folder %s does not answer while the server does (%s): it is shown as last seen "
                        "and not tried again for %.0f s", name, exc, current.delay)
            for c in [c for c in self._idle if c.selected == folder]:  # any command may wait for it too
                self._idle.remove(c)
                c.broken = True  # no LOGOUT: just close the socket
                await trio.to_thread.run_sync(c.close, limiter=self._limiter)
        elif current is stall:
            current.delay = min(self.stall_max, current.delay * 2)
            current.until = now + current.delay
            current.why = str(exc)
            log.info("folder %s still does not answer (%s); next try in %.0f s", name, exc, current.delay)
        return FolderStalled(f"{exc}; {name} is not tried again for {current.delay:.0f} s", folder, sent=True)

    async def _run(self, fn: Callable[[Connection], T], folder: bytes | None, retry: bool, new: bool) -> T:
        async with self._slots:
            conn = None if new else self._checkout(folder)
            if conn is None and new and len(self._idle) >= self.size:
                old = self._idle.pop(0)
                await trio.to_thread.run_sync(old.close, limiter=self._limiter)
            fresh = conn is None
            if conn is None:
                conn = await self._connect()
            while True:
                try:
                    result = await trio.to_thread.run_sync(fn, conn, limiter=self._limiter)
                except BaseException as exc:
                    if not conn.broken:
                        self._idle.append(conn)
                        raise
                    await trio.to_thread.run_sync(conn.close, limiter=self._limiter)
                    if isinstance(exc, TimedOut):
                        exc.fresh = fresh  # Pool.run: on a connection opened for it, the folder stalls
                    if not retry or fresh or not isinstance(exc, ServerUnavailable):
                        raise  # an unusable reply (ProtocolError) would only come again
                    log.info("connection to %s was dead; retrying on a new one", self.account.label)
                    fresh = True
                    conn = await self._connect()
                    continue
                self._idle.append(conn)
                return result

    async def run_list(self, fn: Callable[[Connection], T]) -> T:
        """Run a LIST on a connection whose view of the folder list is current.

        Dovecot 2.3 (maildir, mailbox_list_index) keeps a per-process view of
        the folder list that a LIST in the same second as another client's
        CREATE/RENAME/DELETE can freeze: that connection's LIST then shows the
        old folders for as long as we measured (15 s+), while a new connection
        shows the truth. So against Dovecot every LIST runs on a new
        connection (one login; it then serves as a pooled one).
        """
        return await self.run(fn, new=self.fresh_lists)

    @property
    def fresh_lists(self) -> bool:
        return "dovecot" in self.greeting.lower()

    async def probe(self) -> bool:
        """Is the server there right now? A NOOP on a pooled connection (or a new one).

        Used when something outside the pool (the push connection's EOF) says
        the server may be gone, so ``user.imapfs.state`` does not lag behind
        reads that are already served from the cache (issue 10 item 9).
        """
        if self.forced_offline:
            return False
        if not self.available():
            return False
        try:
            await self.run(Connection.noop)
        except ImapfsError:
            return False
        return True

    async def deselect_everywhere(self, name: bytes) -> None:
        """Make every idle connection leave *name* (and folders under it) before DELETE/RENAME."""
        for c in list(self._idle):
            sel = c.selected
            if sel is not None and (sel == name or sel.startswith((name + b"/", name + b"."))):
                self._idle.remove(c)
                try:
                    await trio.to_thread.run_sync(c.deselect, limiter=self._limiter)
                except ImapfsError:
                    pass
                if c.broken:
                    await trio.to_thread.run_sync(c.close, limiter=self._limiter)
                else:
                    self._idle.append(c)

    def forget_selected(self, prefix: bytes) -> None:
        """A folder was renamed or deleted: no idle connection may think it still has it selected."""
        for c in self._idle:
            if c.selected is not None and c.selected.startswith(prefix):
                c.selected = None
                c.select_info = None
        for name in [n for n in self.stalls if n.startswith(prefix)]:
            del self.stalls[name]

    def changed_folders(self) -> set[bytes]:
        """Folders the server mentioned unasked since the last call (cheap hint)."""
        out: set[bytes] = set()
        for c in self._idle:
            out |= c.changed
            c.changed.clear()
        return out

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for c in idle:
            with trio.move_on_after(5) as scope:
                scope.shield = True
                await trio.to_thread.run_sync(c.close, limiter=self._limiter)
