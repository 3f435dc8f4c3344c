"""The cached tree of folders and messages that the FUSE layer serves.

:class:`Tree` keeps the folder list (LIST), each folder's messages (sync),
lookups and listings, and is the one facade ``fs.py`` calls. The other roles
are its parts, each in its own module: the inode table (:mod:`imapfs.inodes`),
message bytes (:mod:`imapfs.content`), write-through (:mod:`imapfs.writes`)
and files being written (:mod:`imapfs.uploads`); the nodes are in
:mod:`imapfs.model`.

Invariants (docs/architecture.md has the long form):

* A message node is named by (folder path, UIDVALIDITY, UID) and never
  changes its bytes; its inode is a hash of that key, so it is the same on
  every mount. A UIDVALIDITY change drops every node of that folder.
* Absence from a listing is never read as "deleted by the user": only the
  server's own answer (a full UID list of a folder whose UIDVALIDITY we know)
  removes nodes.

Nothing here touches FUSE; kernel invalidations go through the ``Notifier``
the FUSE layer passes in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from . import codec, naming
from .connection import Connection
from .content import Content
from .errors import CommandFailed, FolderStalled, NotFound, ProtocolError, ServerUnavailable
from .imapproto import ListEntry, format_uid_set
from .inodes import Entry, Inodes
from .model import (
    PENDING_INODE_BASE,
    Folder,
    FolderState,
    Msg,
    MsgTable,
    Node,
    Notifier,
    NullNotifier,
    OfflineNotes,
    status_differs,
)
from .records import Known, RawMeta, SyncResult
from .session import Pool
from .uploads import DEFAULT_MAX_MESSAGE, Uploads
from .writes import Writes

if TYPE_CHECKING:  # tree does not import disk or offline at run time: the mount hands them in
    from .disk import Disk
    from .offline import Journal
    from .pending import PendingFile

log = logging.getLogger(__name__)

# readdir cookies, ascending in listing order: folders, messages, moved in offline, being written
_COOKIE_MESSAGES = 1 << 33
_COOKIE_OFFLINE = 1 << 59
_COOKIE_PENDING = 1 << 60


class Tree:
    """Folders and messages, kept coherent with the server; the facade of their bytes and writes."""

    def __init__(self, pool: Pool, *, revalidate: float = 5.0, mem_cache: int = 64 * 1024 * 1024,
                 notifier: Notifier | None = None, clock: Callable[[], float] = time.monotonic,
                 read_only: bool = False, trash: str | None = None, spool_dir: str | None = None,
                 unsent_dir: str | None = None, disk: Disk | None = None,
                 max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.pool = pool
        self.disk = disk  # the persistent second tier of this cache (None with cache_dir=none)
        self.journal: Journal | None = None  # records changes made offline (attach_journal)
        self.revalidate = revalidate
        self.notifier: Notifier = notifier or NullNotifier()
        self.clock = clock
        self.notes = OfflineNotes(pool)
        self.root = Folder((), None)
        self.delimiter: str | None = "/"
        self.inodes = Inodes(self.root, self.notifier)
        self._folders_checked = 0.0
        self._folders_lock = trio.Lock()
        self.mount_time = time.time()
        self.spool_dir = spool_dir
        self.spool_limiter = trio.CapacityLimiter(4)  # threads for the bytes of files being written
        self.content = Content(pool, disk, self.notes, mem_cache=mem_cache, notifier=self.notifier, clock=clock)
        self.writes = Writes(self, read_only=read_only, trash=trash)
        self.uploads = Uploads(self, spool_dir=spool_dir, unsent_dir=unsent_dir, max_message=max_message)

    def attach_journal(self, journal: Journal) -> None:
        """Changes that cannot reach the server go to *journal* from now on (Journal.__init__)."""
        self.journal = journal

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The tree's tasks, in the mount's nursery until unmount: read-ahead and the uploader."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.content.run)
            nursery.start_soon(self.uploads.uploader)
            task_status.started()

    @property
    def caps(self) -> frozenset[str]:
        return self.pool.capabilities

    @property
    def unsent_dir(self) -> str:
        return self.uploads.unsent_dir

    def is_offline(self) -> bool:
        """True when a request would not even try the server (forced, or waiting to reconnect)."""
        return self.notes.is_offline()

    # -- inode table (imapfs.inodes) ------------------------------------------

    def node(self, inode: int) -> Entry:
        return self.inodes.node(inode)

    def remember(self, inode: int) -> None:
        """The kernel holds one more reference (lookup, readdirplus, create)."""
        self.inodes.remember(inode)

    def forget(self, inode: int, nlookup: int) -> None:
        self.inodes.forget(inode, nlookup)

    # -- folders ------------------------------------------------------------

    async def load_from_disk(self) -> bool:
        """Start from the persistent cache: folders and message lists as last seen. True if any."""
        if self.disk is None:
            return False
        store = self.disk.store
        entries = await self.disk.call(store.get_folders)
        if entries is None:
            return False
        self._apply_list(entries)
        for f in self.folders():
            if f.raw is None or not f.selectable:
                continue
            raw = f.raw
            rec = await self.disk.call(store.get_folder, raw)
            if rec is None:
                continue
            st = FolderState(rec.uidvalidity, rec.uidnext, len(rec.messages), highestmodseq=rec.highestmodseq)
            self.add(f, st, rec.messages, persist=False)
            st.on_disk = await self.disk.call(store.body_uids, raw, rec.uidvalidity)
            f.state = st
        log.info("loaded %d folders from the local cache", len(entries))
        return True

    def folders(self) -> list[Folder]:
        out: list[Folder] = []
        stack = list(self.root.children.values())
        while stack:
            f = stack.pop()
            out.append(f)
            stack.extend(f.children.values())
        return out

    async def poll_all(self) -> list[Folder]:
        """One round over every folder: LIST (with STATUS where the server can) → folders that changed."""
        async with self._folders_lock:
            entries, statuses = await self.pool.run_list(Connection.list_status)
            self._apply_list(entries)
            if self.disk is not None:
                self.disk.put_folders(entries)
            self._folders_checked = self.clock()
        changed = []
        for f in self.folders():
            st = f.state
            if st is None or f.raw is None:
                continue
            status = statuses.get(f.raw)
            if status is None:
                raw = f.raw
                if self.pool.held_back(raw):  # a stalled folder waits for its back-off (Pool.stalls)
                    continue
                try:
                    status = await self.pool.run(lambda c: c.status(raw))  # noqa: B023 - awaited here
                except (NotFound, CommandFailed):
                    continue
            if status_differs(st, status):
                changed.append(f)
        return changed

    async def refresh_folders(self, force: bool = False) -> None:
        """LIST all folders and reconcile the directory tree (at most every ``revalidate`` s)."""
        if not force and self.clock() - self._folders_checked < self.revalidate:
            return
        async with self._folders_lock:
            if not force and self.clock() - self._folders_checked < self.revalidate:
                return
            try:
                entries = await self.pool.run_list(Connection.list_folders)
            except ServerUnavailable:
                if not self.root.children:
                    raise
                self.notes.note("LIST", "showing the folders from the local cache")
                self._folders_checked = self.clock()
                return
            self._apply_list(entries)
            if self.disk is not None:
                self.disk.put_folders(entries)
            self._folders_checked = self.clock()

    def _apply_list(self, entries: list[ListEntry]) -> None:
        """Make the folder tree what LIST said: every server name at its own path (codec.map_folders)."""
        seen: set[tuple[str, ...]] = set()
        entries = sorted(entries, key=lambda e: e.name)  # implied parents' wires: the same in any LIST order
        mapped, refused = codec.map_folders((e.name, e.delimiter) for e in entries)
        for wire, why in refused.items():
            log.warning("folder %r cannot be shown: %s", wire, why)
        for e in entries:
            if e.delimiter:
                self.delimiter = e.delimiter
            fp = mapped.get(e.name)
            if fp is None:
                continue
            path = fp.path
            node = self.ensure_path(path, fp.wires)
            node.raw = e.name
            node.selectable = b"\\noselect" not in e.flags and b"\\nonexistent" not in e.flags
            node.special = frozenset(f for f in e.flags if f in {
                b"\\trash", b"\\sent", b"\\drafts", b"\\junk", b"\\archive", b"\\all", b"\\flagged"})
            for i in range(1, len(path) + 1):
                seen.add(path[:i])
        self._prune(self.root, seen)

    def ensure_path(self, path: tuple[str, ...], wires: tuple[bytes, ...] | None = None) -> Folder:
        """The folder at *path*, made (with its implied parents) if new; *wires*: each level's server name."""
        node = self.root
        for i, comp in enumerate(path):
            child = node.children.get(comp)
            if child is None:
                child = Folder(path[: i + 1], node)
                node.children[comp] = child
                self.inodes.alloc(child)
            if wires is not None and child.wire is None:
                child.wire = wires[i]
            node = child
        return node

    def _prune(self, folder: Folder, seen: set[tuple[str, ...]]) -> None:
        for comp, child in list(folder.children.items()):
            if child.path not in seen:
                log.info("folder %s is gone from the server", "/".join(child.path))
                if child.raw is not None and self.disk is not None:
                    self.disk.drop_folder(child.raw)
                self.remove_subtree(child)
                del folder.children[comp]
                self.inodes.drop(child, folder.inode, comp)
            else:
                self._prune(child, seen)

    def remove_subtree(self, folder: Folder) -> None:
        for comp, child in list(folder.children.items()):
            self.remove_subtree(child)
            self.inodes.drop(child, folder.inode, comp)
        folder.children.clear()
        self._drop_messages(folder)

    def _drop_messages(self, folder: Folder) -> None:
        st, folder.state = folder.state, None
        if st is None:
            return
        for m in st.msgs.values():
            self.inodes.drop(m, folder.inode, m.name)

    # -- messages -----------------------------------------------------------

    def _known(self, folder: Folder, st: FolderState) -> Known:
        """What the tree holds of *folder*, as a sync compares it with the server."""
        uids = set(st.msgs) | st.skipped
        uids.update(u for v, u in folder.hidden if v == st.uidvalidity)
        return Known(st.uidvalidity, len(uids), st.uidnext, st.highestmodseq, frozenset(uids))

    async def sync(self, folder: Folder, force: bool = False, verify: bool = False) -> FolderState | None:
        """Make the folder's message list current (cheap when nothing changed).

        *verify* compares the whole UID set with the server's even when the
        counters agree (full rounds, push reconnects, the first sync after a
        remount: events can always be lost, issue 10).
        """
        if not folder.selectable or folder.raw is None:
            return None
        st = folder.state
        if not force and st is not None and self.clock() - st.checked < self.revalidate:
            return st
        async with folder.lock:
            st = folder.state
            if not force and st is not None and self.clock() - st.checked < self.revalidate:
                return st
            raw = folder.raw
            known = self._known(folder, st) if st else None
            verify = verify or (st is not None and not st.verified)
            try:
                res: SyncResult = await self.pool.run(lambda c: c.sync(raw, known, verify), folder=raw)
            except ServerUnavailable as err:
                if st is None:
                    self.notes.note(raw, f"{raw.decode('ascii', 'replace')} was never cached: cannot list it")
                    raise
                if not isinstance(err, FolderStalled):  # (the pool logs a stalled folder itself)
                    self.notes.note(raw, f"showing {raw.decode('ascii', 'replace')} as last seen")
                st.checked = self.clock()
                return st
            if folder.raw != raw or folder.gone:
                return folder.state
            if res.reset or st is None or known is None:
                if st is not None:
                    log.warning("UIDVALIDITY of %s changed from %d to %d: its cached messages are void; "
                                "names are recomputed and nothing is deleted on the server",
                                raw.decode("ascii", "replace"), st.uidvalidity, res.info.uidvalidity)
                self._drop_messages(folder)
                st = FolderState(res.info.uidvalidity, res.info.uidnext, res.info.exists)
                self.add(folder, st, res.added, persist=False)
                if self.disk is not None:
                    self.disk.put_folder(raw, st.uidvalidity, st.uidnext, res.info.highestmodseq,
                                         res.added, replace=True)
                if self.disk is not None and known is None:
                    st.on_disk = await self.disk.call(self.disk.store.body_uids, raw, st.uidvalidity)
                if res.present is not None:
                    st.skipped = res.present - st.msgs.keys() - {u for v, u in folder.hidden if v == st.uidvalidity}
                    if st.skipped:
                        log.warning("%s: %d messages on the server cannot be shown (unusable metadata): UIDs %s",
                                    raw.decode("ascii", "replace"), len(st.skipped), format_uid_set(st.skipped))
                st.verified = True
                folder.state = st
            else:
                # Only what the snapshot held can be judged gone: a message our own
                # APPEND or MOVE added meanwhile was not in the server's answer yet.
                gone = set(res.removed) & known.uids
                if res.present is not None:
                    gone |= known.uids - res.present
                st.skipped -= gone
                for uid in gone:
                    m = st.msgs.pop(uid, None)
                    st.on_disk.discard(uid)
                    if m is not None:
                        self.inodes.drop(m, folder.inode, m.name)
                if gone:
                    log.debug("%s: %d messages gone", raw.decode("ascii", "replace"), len(gone))
                    if self.disk is not None:
                        self.disk.remove_messages(raw, st.uidvalidity, sorted(gone))
                if res.added:
                    log.debug("%s: %d messages new", raw.decode("ascii", "replace"), len(res.added))
                self.add(folder, st, [a for a in res.added if a.uid not in gone])
                # The server's flags, kept in memory and in the cache.  The cache gets those
                # that differ from memory and those memory holds without the cache
                # (st.flags_unsaved: set offline or read one by one), as the cache's stored
                # mod-sequence moves past them now.  A verify sync reports every flag, so
                # writing only these keeps it from rewriting the whole folder's rows.
                server_flags = {}
                unsaved = st.flags_unsaved
                for uid, fl in res.flags.items():
                    m = st.msgs.get(uid)
                    if m is not None:
                        if m.flags != fl or uid in unsaved:
                            server_flags[uid] = fl
                        m.flags = fl
                unsaved.difference_update(server_flags)
                if server_flags and self.disk is not None:
                    self.disk.set_flags_many(raw, st.uidvalidity, server_flags)
                if res.present is not None:
                    hidden = {u for v, u in folder.hidden if v == st.uidvalidity}
                    lacking = res.present - st.msgs.keys() - hidden
                    if lacking - st.skipped:
                        log.warning("%s: %d messages on the server cannot be shown (unusable metadata): UIDs %s",
                                    raw.decode("ascii", "replace"), len(lacking), format_uid_set(lacking))
                    st.skipped = lacking
                    st.verified = True
                st.exists = res.info.exists
                st.uidnext = res.info.uidnext
            st.highestmodseq = res.info.highestmodseq
            st.checked = self.clock()
            if self.disk is not None:
                self.disk.set_sync_state(raw, st.uidvalidity, st.uidnext, st.highestmodseq)
            if self.notes.any:
                self.notes.back_online()
            return st

    def add(self, folder: Folder, st: FolderState, metas: list[RawMeta], persist: bool = True) -> None:
        if persist and metas and folder.raw is not None and self.disk is not None:
            self.disk.add_messages(folder.raw, st.uidvalidity, list(metas))
        for meta in metas:
            if meta.uid in st.msgs or (st.uidvalidity, meta.uid) in folder.hidden:
                continue
            try:
                m = Msg(folder, st.uidvalidity, meta)
            except (ValueError, ProtocolError) as e:
                log.warning("folder %s: cannot name message UID %d: %s", folder.raw, meta.uid, e)
                continue
            self.inodes.alloc(m)
            st.msgs[m.uid] = m
        st.uids = sorted(st.msgs)

    # -- lookups and listings -----------------------------------------------


    async def lookup(self, parent: Folder, name: str) -> Node:
        parent.last_used = self.clock()
        child = parent.children.get(name)
        if child is not None:
            # A folder another client deleted is told by no push when NOTIFY was deaf
            # or its LIST came a moment too early (Dovecot drops an implied parent
            # lazily): revalidate the folder list like a listing does (every
            # ``revalidate`` s at most), so a lookup never keeps a folder forever.
            await self.refresh_folders()
            child = parent.children.get(name)
            if child is not None:
                return child
            raise NotFound(name)
        p = parent.pending.get(name)
        if p is not None:
            return p
        moved_here = parent.offline_entries.get(name)
        if moved_here is not None:
            return moved_here
        alias = parent.aliases.get(name)
        if alias is not None and not alias.gone:
            return alias
        parsed = naming.parse_message_name(name)
        if parsed is not None and parsed[1] == "eml" and parent.selectable:
            uid = parsed[0]
            try:
                st = await self.sync(parent)
            except ServerUnavailable:
                if parent.state is not None:
                    raise
                # Offline, in a folder never listed: nothing of it can be shown, and no
                # name in it can be opened, so as far as this mount goes it holds no such
                # message. ENOENT (not EIO) lets `mv x.eml FOLDER/` go on and be journaled.
                raise NotFound(f"{name} (offline, and {parent.name} was never listed)") from None
            m = st.msgs.get(uid) if st else None
            if m is None and st is not None and self.clock() - st.checked > 0.5:
                st = await self.sync(parent, force=True)
                m = st.msgs.get(uid) if st else None
            if m is not None and m.name == name:
                return m
            raise NotFound(name)
        # A folder created by another client since the last LIST.
        if self.clock() - self._folders_checked > 1.0:
            await self.refresh_folders(force=True)
            child = parent.children.get(name)
            if child is not None:
                return child
        raise NotFound(name)

    async def listing(self, folder: Folder) -> list[tuple[int, str, Node]]:
        """Entries of a folder directory as (cookie, name, node), in cookie order.

        Cookies are stable across changes: child folders by position, messages
        by UID, so a listing that spans a change never skips or repeats one.
        They must ascend: fs.readdir resumes by bisecting on the cookie, and an
        out-of-order list made the kernel's next readdir start over forever.
        """
        folder.last_used = self.clock()
        await self.refresh_folders()
        st = await self.sync(folder)
        out: list[tuple[int, str, Node]] = []
        for i, comp in enumerate(sorted(folder.children), 1):
            out.append((i, comp, folder.children[comp]))
        if st is not None:
            for uid in st.uids:
                m = st.msgs[uid]
                out.append((_COOKIE_MESSAGES + 2 * uid, m.name, m))
        # even offsets: fs lists each message's ``.parts`` at cookie + 1
        for i, name in enumerate(sorted(folder.offline_entries)):
            out.append((_COOKIE_OFFLINE + 2 * i, name, folder.offline_entries[name]))
        for p in sorted(folder.pending.values(), key=lambda p: p.inode):
            out.append((_COOKIE_PENDING + (p.inode - PENDING_INODE_BASE), p.name, p))
        return out

    # -- reading ------------------------------------------------------------

    async def state_text(self) -> str:
        """``user.imapfs.state``: online or offline, what is owed to the server, the last error."""
        pool = self.pool
        state = "offline (forced by -o offline)" if pool.forced_offline else ("online" if pool.online else "offline")
        lines = [f"state: {state}", f"server: {pool.account.label}"]
        if self.journal is not None:
            lines += await self.journal.state_lines()
        else:
            lines.append("pending changes: 0 (no local cache)")
        uploading = len(self.uploads.all_pending())
        if uploading:
            lines.append(f"files waiting to be stored: {uploading}")
        if pool.last_error:
            lines.append(f"last error: {pool.last_error}")
        lines += self._stall_lines()
        return "\n".join(lines) + "\n"

    def _stall_lines(self) -> list[str]:
        """One line per folder the pool backs off (Pool.stalls): which, since when, the next try."""
        if not self.pool.stalls:
            return []
        paths = {f.raw: "/".join(f.path) for f in self.folders() if f.raw is not None}
        now = time.monotonic()
        out = []
        for raw, s in sorted(self.pool.stalls.items()):
            when = "being tried again" if s.trying else f"next try in {max(0.0, s.until - now):.0f} s"
            out.append(f"stalled folder: {paths.get(raw) or raw.decode('ascii', 'replace')} (no answer for "
                       f"{now - s.since:.0f} s, shown as last seen; {when}): {s.why}")
        return out

    def stats(self) -> tuple[int, int]:
        """(messages known, bytes known) for statfs: O(folders), from each MsgTable's sum."""
        count = total = 0
        stack = [self.root]
        while stack:
            f = stack.pop()
            stack.extend(f.children.values())
            if f.state is not None:
                msgs = f.state.msgs
                count += len(msgs)
                total += msgs.bytes if isinstance(msgs, MsgTable) else sum(m.size for m in msgs.values())
        return count, total

    # -- the facade fs.py calls: bytes (imapfs.content) ---------------------------

    async def read(self, m: Msg, offset: int, size: int) -> bytes:
        return await self.content.read(m, offset, size)

    async def is_cached(self, m: Msg) -> bool:
        """Stored in the persistent cache, checked with the store (``user.imapfs.cached``)."""
        return await self.content.is_cached(m)

    # -- writes (imapfs.writes) ----------------------------------------------------

    async def move(self, m: Msg, dest: Folder, name: str | None = None) -> Msg | None:
        return await self.writes.move(m, dest, name)

    async def delete(self, m: Msg) -> None:
        await self.writes.delete(m)

    async def flags(self, m: Msg) -> tuple[str, ...]:
        return await self.writes.flags(m)

    async def set_flags(self, m: Msg, flags: list[str]) -> None:
        await self.writes.set_flags(m, flags)

    async def mkdir(self, parent: Folder, name: str) -> Folder:
        return await self.writes.mkdir(parent, name)

    async def rmdir(self, parent: Folder, name: str) -> None:
        await self.writes.rmdir(parent, name)

    async def rename_folder(self, f: Folder, dest: Folder, name: str) -> None:
        await self.writes.rename_folder(f, dest, name)

    # -- files being written (imapfs.uploads) -----------------------------------------

    def create_file(self, folder: Folder, name: str) -> PendingFile:
        return self.uploads.create_file(folder, name)

    async def open_for_write(self, m: Msg, truncate: bool) -> PendingFile:
        return await self.uploads.open_for_write(m, truncate)

    def opened(self, p: PendingFile) -> None:
        self.uploads.opened(p)

    def released(self, p: PendingFile) -> None:
        self.uploads.released(p)

    def reopen(self, p: PendingFile) -> None:
        self.uploads.reopen(p)

    async def read_pending(self, p: PendingFile, offset: int, size: int) -> bytes:
        return await self.uploads.read_pending(p, offset, size)

    async def write_pending(self, p: PendingFile, offset: int, data: bytes) -> int:
        return await self.uploads.write_pending(p, offset, data)

    async def truncate_pending(self, p: PendingFile, size: int) -> None:
        await self.uploads.truncate_pending(p, size)

    def set_pending_flags(self, p: PendingFile, flags: list[str]) -> None:
        self.uploads.set_pending_flags(p, flags)

    def set_pending_date(self, p: PendingFile, when: int) -> None:
        self.uploads.set_pending_date(p, when)

    def rename_pending(self, p: PendingFile, dest: Folder, name: str) -> None:
        self.uploads.rename_pending(p, dest, name)

    def unlink_pending(self, p: PendingFile) -> None:
        self.uploads.unlink_pending(p)

    async def commit(self, p: PendingFile) -> Msg | None:
        """fsync, or the uploader: store the current version of *p* (Uploads.commit)."""
        return await self.uploads.commit(p)

    async def flush_all(self) -> None:
        """At unmount: store every pending file; save what cannot be stored, never drop it."""
        await self.uploads.flush_all()
