"""``user.imap.flags`` as getxattr shows it: from the tree, refreshed once per folder per window.

Asking the server for one message's flags on every getxattr cost a round trip
per message (6 ms each: a no-change ``rsync -aX`` of 2,000 messages took
157x as long as ``rsync -a``, issue 12). The tree already holds every
message's flags, kept current by the syncs that push, STATUS polls and full
rounds start. So a getxattr is answered from the tree when the folder's flags
were refreshed less than :data:`FLAGS_FRESH` seconds ago, and otherwise one
refresh of the whole folder runs, which every reader of that folder waits
for and shares:

* with CONDSTORE and a mod-sequence the tree holds: ``Tree.sync``, one
  SELECT that carries the changed flags (QRESYNC), or a SELECT and one
  ``UID FETCH 1:* (UID FLAGS) (CHANGEDSINCE m)`` when HIGHESTMODSEQ moved;
* otherwise (no CONDSTORE, a NOMODSEQ folder, or a mod-sequence the journal
  dropped after a replay): a verify ``Tree.sync``, which adds
  ``UID FETCH 1:* (UID FLAGS)`` (and the UID set) to the SELECT. That costs
  in proportion to the folder, so the first read of a stale folder asks for
  its own message only, and the second read within the window (a walk)
  refreshes the folder.

The bound is exact, not "about": a refresh counts from the moment it was
asked for, before its SELECT, so a flag change another client made at time T
is shown by every getxattr that starts after T + FLAGS_FRESH. Syncs run by
others (push, polls, listings) are not counted: they stamp their end, not
their start, and without a mod-sequence they read flags only when verifying. They still
keep ``Msg.flags`` current between refreshes. docs/change-tracking.md has
the rule; docs/performance.md the figures.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

import trio

from .errors import NotFound, ServerUnavailable, StaleError
from .model import Folder, FolderState, Msg, flags_unsaved, without_recent

if TYPE_CHECKING:  # the tree builds its Writes, which builds this view, with itself
    from .connection import Connection
    from .tree import Tree

log = logging.getLogger(__name__)

# A folder's flags are served from the tree for this long after a refresh was asked
# for. 1 s: longer than a walk of a few thousand messages takes (so one refresh
# serves a whole `getfattr -d`/`rsync -aX`), short enough that a flag set on a phone
# shows at the next look.
FLAGS_FRESH = 1.0


class _Refresh:
    """One refresh of a folder's flags, in flight; its readers wait on ``done``."""

    __slots__ = ("started", "done", "error", "finished", "overtaken")

    def __init__(self, started: float) -> None:
        self.started = started
        self.done = trio.Event()
        self.error: Exception | None = None  # what the refresh raised: its readers get it too
        self.finished = False  # False when it was cancelled: its readers try again
        self.overtaken = False  # our own STORE came during it: it may bring older flags back


class FlagView:
    """Flags of messages for getxattr: from the tree, at most FLAGS_FRESH old, one refresh per folder."""

    def __init__(self, tree: Tree, fresh: float = FLAGS_FRESH) -> None:
        self.tree = tree
        self.fresh = fresh
        # folder → (the state the refresh brought up to date, clock() when it was asked for);
        # a new state (UIDVALIDITY change, folder gone and back) is not fresh.
        self._as_of: weakref.WeakKeyDictionary[Folder, tuple[FolderState, float]] = weakref.WeakKeyDictionary()
        self._inflight: dict[Folder, _Refresh] = {}
        # Full refreshes: folder → clock() of the last read that found it stale (see flags()).
        self._lone: weakref.WeakKeyDictionary[Folder, float] = weakref.WeakKeyDictionary()

    def _fresh_since(self, f: Folder) -> float | None:
        got = self._as_of.get(f)
        if got is None or got[0] is not f.state:
            return None
        return got[1]

    @staticmethod
    def _current(m: Msg) -> tuple[str, ...]:
        """*m*'s flags as the tree holds them (the folder's current node for that key, if any)."""
        st = m.folder.state
        if st is not None and st.uidvalidity == m.uidvalidity:
            cur = st.msgs.get(m.uid)
            if cur is not None:
                return without_recent(cur.flags)
        return without_recent(m.flags)

    async def flags(self, m: Msg) -> tuple[str, ...]:
        f = m.folder
        tree = self.tree
        if tree.notes.is_offline() or f.local or m.gone or f.raw is None or f.state is None:
            return without_recent(m.flags)
        asked = tree.clock()
        while True:
            since = self._fresh_since(f)
            if since is not None and asked - since < self.fresh:
                return self._current(m)
            r = self._inflight.get(f)
            if r is None:
                break
            await r.done.wait()
            if r.error is not None:
                raise r.error
            if r.finished and asked - r.started < self.fresh:
                # That refresh was asked for at most FLAGS_FRESH before this read: share it
                # (even when it could not stamp the folder: offline, or no mod-sequences).
                return await self._after(m, r)
            # It was asked for too long before this read: a change may have come since.
        if self._full(f):
            # Here a refresh reads every flag of the folder (UID FETCH 1:* FLAGS: at
            # least 0.5 s for 100,000 messages). A lone read asks for its own message;
            # a second read within the window is a walk, and refreshes the whole folder.
            last = self._lone.get(f)
            self._lone[f] = asked
            if last is None or asked - last >= self.fresh:
                return await self._one(m)
        r = self._inflight[f] = _Refresh(asked)
        try:
            await self._refresh(f, r)
            r.finished = True
        except Exception as e:
            r.error = e
            r.finished = True
            raise
        finally:
            del self._inflight[f]
            r.done.set()
        return await self._after(m, r)

    def stored(self, m: Msg) -> None:
        """Our own STORE of *m*'s flags is done and ``m.flags`` holds them.

        A sync of the folder in flight now may have read the flags before the
        STORE and will put them back into the tree when it ends: then the
        folder is not fresh any more, and the next read refreshes it. A sync
        that starts later reads them after the STORE.
        """
        f = m.folder
        if f.lock.locked():  # Tree.sync holds it from its SELECT to the end
            self._as_of.pop(f, None)
            r = self._inflight.get(f)
            if r is not None:
                r.overtaken = True

    async def _after(self, m: Msg, r: _Refresh) -> tuple[str, ...]:
        """*m*'s flags once refresh *r* is over: from the tree, or asked of the server when it could not tell."""
        f = m.folder
        since = self._fresh_since(f)
        if since is not None and since >= r.started:
            return self._current(m)
        if self.tree.notes.is_offline() or m.gone or f.raw is None:
            return without_recent(m.flags)
        return await self._one(m)

    def _full(self, f: Folder) -> bool:
        """Must a refresh of *f* read every flag? (No CONDSTORE, or no mod-sequence to go from.)"""
        st = f.state
        return "CONDSTORE" not in self.tree.pool.capabilities or st is None or st.highestmodseq is None

    async def _refresh(self, f: Folder, r: _Refresh) -> None:
        """Bring every flag of *f* up to date in one sync (shared by every reader waiting on *r*).

        Connection.sync reads every flag on a verify when there is no CONDSTORE or
        no mod-sequence to go from, and the changed ones by CHANGEDSINCE otherwise.
        """
        tree = self.tree
        raw = f.raw
        full = self._full(f)
        log.debug("refreshing the flags of %s", (raw or b"").decode("ascii", "replace"))
        new = await tree.sync(f, force=True, verify=full)
        if new is None or tree.notes.is_offline() or f.raw != raw or f.gone or r.overtaken:
            # The state as last seen (server away), a folder renamed or gone meanwhile,
            # or our own STORE during it (stored()).
            return
        if not full and new.highestmodseq is None:
            return  # the server stopped reporting a mod-sequence: CHANGEDSINCE was not asked
        self._as_of[f] = (new, r.started)

    async def _one(self, m: Msg) -> tuple[str, ...]:
        """One message's flags, asked of the server: a lone read, or a refresh that could not tell."""
        tree = self.tree
        raw, uidv = m.folder.raw, m.uidvalidity
        assert raw is not None
        uid = m.uid

        def fetch(c: Connection) -> list[tuple[int, dict[bytes, Any]]]:
            # A fresh SELECT: a folder selected a while ago on this connection may show
            # flags as of its last command (and Connection.fetch_items takes a FLAGS-only
            # answer for a missing message, so it re-selects anyway: 3 commands, not 2).
            if c.select(raw).uidvalidity != uidv:
                raise StaleError(f"UIDVALIDITY of {raw.decode('ascii', 'replace')} changed")
            return c.uid_fetch(str(uid), "(UID FLAGS)")

        try:
            got = await tree.pool.run(fetch, folder=raw)
        except ServerUnavailable:
            tree.notes.note((raw, "flags"), "flags shown as last seen")
            return without_recent(m.flags)
        fl = next((it.get(b"FLAGS") for u, it in got if u == uid and isinstance(it.get(b"FLAGS"), list)), None)
        if fl is None:
            raise NotFound(f"message UID {uid} is gone from {raw.decode('ascii', 'replace')}")
        m.flags = without_recent(f.decode("utf-8", "replace") if isinstance(f, bytes) else str(f) for f in fl)
        flags_unsaved(m)
        return m.flags
