"""The cached tree of folders and messages that the FUSE layer serves.

Invariants (docs/architecture.md has the long form):

* A message node is named by (folder path, UIDVALIDITY, UID) and never
  changes its bytes; its inode is a hash of that key, so it is the same on
  every mount. A UIDVALIDITY change drops every node of that folder.
* Message bytes live in a byte-bounded LRU; any entry may be evicted at any
  time because it can be fetched again. Nothing in this cache is dirty: the
  write-through layer changes the server first and then this tree.
* A node leaves the inode table only when it is gone from the server *and*
  the kernel has forgotten it (lookup count 0), so a file that is open while
  its message is expunged never resolves to another message.
* Absence from a listing is never read as "deleted by the user": only the
  server's own answer (a full UID list of a folder whose UIDVALIDITY we know)
  removes nodes.

Nothing here touches FUSE; kernel invalidations go through the ``Notifier``
the FUSE layer passes in.
"""

from __future__ import annotations

import bisect
import datetime
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, Union

import cachetools
import trio

from . import codec, naming
from .errors import NotFound, ProtocolError, StaleError
from .imapproto import format_uid_set
from .session import Connection, Pool, RawMeta, SyncResult

log = logging.getLogger(__name__)

ROOT_INODE = 1
CHUNK = 4 * 1024 * 1024  # messages up to this size are fetched whole; larger in chunks
PREFETCH_MAX_MESSAGES = 128
PREFETCH_MAX_BYTES = 8 * 1024 * 1024
_COOKIE_MESSAGES = 1 << 33


class Notifier(Protocol):
    """How the tree tells the kernel that a name went away or an inode changed."""

    def entry_removed(self, parent_inode: int, name: str) -> None: ...

    def inode_changed(self, inode: int) -> None: ...


class NullNotifier:
    def entry_removed(self, parent_inode: int, name: str) -> None:
        pass

    def inode_changed(self, inode: int) -> None:
        pass


def stable_inode(key: tuple) -> int:
    """A 63-bit inode from *key*, the same on every mount (backups compare inodes)."""
    h = int.from_bytes(hashlib.blake2b(repr(key).encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    h &= (1 << 63) - 1
    return h if h > 1024 else h + 1024


class Msg:
    """One message: immutable for its (UIDVALIDITY, UID) except flags."""

    __slots__ = ("folder", "uidvalidity", "uid", "size", "date", "flags", "stem", "inode", "gone")

    def __init__(self, folder: Folder, uidvalidity: int, meta: RawMeta) -> None:
        self.folder = folder
        self.uidvalidity = uidvalidity
        self.uid = meta.uid
        self.size = meta.size
        self.date = meta.internaldate
        self.flags = meta.flags
        self.stem = _stem(meta)
        self.inode = 0
        self.gone = False

    @property
    def name(self) -> str:
        return self.stem + ".eml"

    def key(self) -> tuple:
        return ("M", self.folder.path, self.uidvalidity, self.uid)


def _stem(meta: RawMeta) -> str:
    when = datetime.datetime.fromtimestamp(meta.internaldate, datetime.timezone.utc)
    return naming.message_stem(meta.uid, when, naming.decode_subject(meta.subject))


@dataclass
class FolderState:
    """What we know of a selectable folder's messages."""

    uidvalidity: int
    uidnext: int | None
    exists: int
    msgs: dict[int, Msg] = field(default_factory=dict)
    uids: list[int] = field(default_factory=list)  # sorted
    checked: float = 0.0
    # sequential-read detection for body prefetch
    last_read_uid: int = 0
    window: int = 0

    def after(self, uid: int) -> list[int]:
        return self.uids[bisect.bisect_right(self.uids, uid):]

    def before(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        return self.uids[i - 1] if i > 0 else None


class Folder:
    """A directory: an IMAP folder, or a parent implied by the hierarchy (\\Noselect)."""

    def __init__(self, path: tuple[str, ...], parent: Folder | None) -> None:
        self.path = path
        self.parent = parent
        self.raw: bytes | None = None  # the server's name; None for implied parents
        self.selectable = False
        self.special: frozenset[bytes] = frozenset()
        self.children: dict[str, Folder] = {}
        self.state: FolderState | None = None
        self.lock = trio.Lock()
        self.inode = ROOT_INODE if not path else 0
        self.gone = False

    @property
    def name(self) -> str:
        return self.path[-1] if self.path else ""

    def key(self) -> tuple:
        return ("F", self.path)


Node = Union[Folder, Msg]


@dataclass
class _Fetch:
    """An in-flight body fetch other readers can wait for."""

    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: BaseException | None = None


class Tree:
    """Folders, messages and their bytes, kept coherent with the server."""

    def __init__(self, pool: Pool, *, revalidate: float = 5.0, mem_cache: int = 128 * 1024 * 1024,
                 notifier: Notifier | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.pool = pool
        self.revalidate = revalidate
        self.notifier: Notifier = notifier or NullNotifier()
        self.clock = clock
        self.root = Folder((), None)
        self.delimiter: str | None = "/"
        self._inodes: dict[int, Any] = {ROOT_INODE: self.root}
        self._lookups: dict[int, int] = {}
        self._folders_checked = 0.0
        self._folders_lock = trio.Lock()
        self.content: cachetools.LRUCache = cachetools.LRUCache(maxsize=max(1, mem_cache), getsizeof=len)
        self._inflight: dict[tuple[int, int], _Fetch] = {}
        self.mount_time = time.time()

    # -- inode table --------------------------------------------------------

    def _alloc(self, node: Any) -> int:
        key = node.key()
        ino = stable_inode(key)
        while True:
            other = self._inodes.get(ino)
            if other is None or other is node:
                break
            if other.key() == key:  # the same object's new incarnation: take over
                break
            ino = ino + 1 if ino < (1 << 63) - 1 else 1025  # collision: probe on, deterministically
        self._inodes[ino] = node
        node.inode = ino
        return ino

    def node(self, inode: int) -> Any:
        n = self._inodes.get(inode)
        if n is None:
            raise NotFound(f"inode {inode} is unknown")
        return n

    def remember(self, inode: int) -> None:
        """The kernel holds one more reference (lookup, readdirplus, create)."""
        self._lookups[inode] = self._lookups.get(inode, 0) + 1

    def forget(self, inode: int, nlookup: int) -> None:
        left = self._lookups.get(inode, 0) - nlookup
        if left > 0:
            self._lookups[inode] = left
            return
        self._lookups.pop(inode, None)
        n = self._inodes.get(inode)
        if n is not None and n.gone and inode != ROOT_INODE:
            del self._inodes[inode]

    def _drop(self, node: Any, parent_inode: int, name: str) -> None:
        node.gone = True
        if self._lookups.get(node.inode, 0) == 0 and self._inodes.get(node.inode) is node:
            del self._inodes[node.inode]
        self.notifier.entry_removed(parent_inode, name)

    # -- folders ------------------------------------------------------------

    async def refresh_folders(self, force: bool = False) -> None:
        """LIST all folders and reconcile the directory tree (at most every ``revalidate`` s)."""
        if not force and self.clock() - self._folders_checked < self.revalidate:
            return
        async with self._folders_lock:
            if not force and self.clock() - self._folders_checked < self.revalidate:
                return
            entries = await self.pool.run(Connection.list_folders)
            self._apply_list(entries)
            self._folders_checked = self.clock()

    def _apply_list(self, entries: list) -> None:
        seen: set[tuple[str, ...]] = set()
        for e in entries:
            try:
                text = e.name.decode("ascii")
                decoded = codec.decode_mutf7(text)
            except UnicodeDecodeError:
                decoded = e.name.decode("utf-8", "replace")  # UTF8=ACCEPT servers
            if e.delimiter:
                self.delimiter = e.delimiter
            try:
                path = codec.folder_to_path(decoded, e.delimiter)
            except ValueError as err:
                log.warning("folder %r cannot be shown: %s", e.name, err)
                continue
            if b"\\nonexistent" in e.flags and not path:
                continue
            node = self._ensure_path(path)
            node.raw = e.name
            node.selectable = b"\\noselect" not in e.flags and b"\\nonexistent" not in e.flags
            node.special = frozenset(f for f in e.flags if f in {
                b"\\trash", b"\\sent", b"\\drafts", b"\\junk", b"\\archive", b"\\all", b"\\flagged"})
            for i in range(1, len(path) + 1):
                seen.add(path[:i])
        self._prune(self.root, seen)

    def _ensure_path(self, path: tuple[str, ...]) -> Folder:
        node = self.root
        for i, comp in enumerate(path):
            child = node.children.get(comp)
            if child is None:
                child = Folder(path[: i + 1], node)
                node.children[comp] = child
                self._alloc(child)
            node = child
        return node

    def _prune(self, folder: Folder, seen: set[tuple[str, ...]]) -> None:
        for comp, child in list(folder.children.items()):
            if child.path not in seen:
                log.info("folder %s is gone from the server", "/".join(child.path))
                self._remove_subtree(child)
                del folder.children[comp]
                self._drop(child, folder.inode, comp)
            else:
                self._prune(child, seen)

    def _remove_subtree(self, folder: Folder) -> None:
        for comp, child in list(folder.children.items()):
            self._remove_subtree(child)
            self._drop(child, folder.inode, comp)
        folder.children.clear()
        self._drop_messages(folder)

    def _drop_messages(self, folder: Folder) -> None:
        st, folder.state = folder.state, None
        if st is None:
            return
        for m in st.msgs.values():
            self._drop(m, folder.inode, m.name)

    # -- messages -----------------------------------------------------------

    async def sync(self, folder: Folder, force: bool = False) -> FolderState | None:
        """Make the folder's message list current (cheap when nothing changed)."""
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
            known = (st.uidvalidity, len(st.msgs), st.uidnext) if st else (None, 0, None)
            res: SyncResult = await self.pool.run(lambda c: c.sync(raw, *known), folder=raw)
            if folder.raw != raw or folder.gone:
                return folder.state
            if res.reset or st is None:
                if st is not None:
                    log.warning("UIDVALIDITY of %s changed from %d to %d: dropping its cached state",
                                raw, st.uidvalidity, res.info.uidvalidity)
                self._drop_messages(folder)
                st = FolderState(res.info.uidvalidity, res.info.uidnext, res.info.exists)
                self._add(folder, st, res.added)
                folder.state = st
            else:
                st.exists = res.info.exists
                if res.present is not None:
                    for uid in [u for u in st.msgs if u not in res.present]:
                        m = st.msgs.pop(uid)
                        self._drop(m, folder.inode, m.name)
                    st.uids = sorted(st.msgs)
                    new = sorted(res.present - st.msgs.keys())
                    if new:
                        added = await self.pool.run(
                            lambda c: (c.ensure_selected(raw, st.uidvalidity), c.fetch_meta(format_uid_set(new)))[1],
                            folder=raw)
                        self._add(folder, st, added)
                st.uidnext = res.info.uidnext
            st.checked = self.clock()
            return st

    def _add(self, folder: Folder, st: FolderState, metas: list[RawMeta]) -> None:
        for meta in metas:
            if meta.uid in st.msgs:
                continue
            try:
                m = Msg(folder, st.uidvalidity, meta)
            except (ValueError, ProtocolError) as e:
                log.warning("folder %s: cannot name message UID %d: %s", folder.raw, meta.uid, e)
                continue
            self._alloc(m)
            st.msgs[m.uid] = m
        st.uids = sorted(st.msgs)

    # -- lookups and listings -----------------------------------------------

    async def lookup(self, parent: Folder, name: str) -> Node:
        child = parent.children.get(name)
        if child is not None:
            return child
        parsed = naming.parse_message_name(name)
        if parsed is not None and parsed[1] == "eml" and parent.selectable:
            uid = parsed[0]
            st = await self.sync(parent)
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
        """
        await self.refresh_folders()
        st = await self.sync(folder)
        out: list[tuple[int, str, Node]] = []
        for i, comp in enumerate(sorted(folder.children), 1):
            out.append((i, comp, folder.children[comp]))
        if st is not None:
            for uid in st.uids:
                m = st.msgs[uid]
                out.append((_COOKIE_MESSAGES + 2 * uid, m.name, m))
        return out

    # -- reading ------------------------------------------------------------

    async def read(self, m: Msg, offset: int, size: int) -> bytes:
        if m.gone and not self._cached(m, offset // CHUNK):
            raise StaleError(f"message UID {m.uid} was removed from the server")
        out = []
        end = min(offset + size, m.size)
        pos = offset
        while pos < end:
            idx = pos // CHUNK
            chunk = await self._chunk(m, idx)
            start = pos - idx * CHUNK
            piece = chunk[start: start + (end - pos)]
            if not piece:
                break
            out.append(piece)
            pos += len(piece)
        return b"".join(out)

    def _cached(self, m: Msg, idx: int) -> bool:
        return (m.inode, idx) in self.content

    async def _chunk(self, m: Msg, idx: int) -> bytes:
        key = (m.inode, idx)
        if idx == 0:
            self._note_read(m)
        while True:
            data = self.content.get(key)
            if data is not None:
                return data
            f = self._inflight.get(key)
            if f is None:
                break
            await f.done.wait()
            if f.data is not None:
                return f.data
            if f.error is not None:
                raise f.error
        if m.size <= CHUNK:
            return await self._fetch_whole(m)
        f = self._inflight[key] = _Fetch()
        try:
            raw, uidv = m.folder.raw, m.uidvalidity
            assert raw is not None
            data = await self.pool.run(lambda c: c.fetch_range(raw, uidv, m.uid, idx * CHUNK, CHUNK), folder=raw)
            f.data = data
            self._store(key, data)
            return data
        except BaseException as e:
            f.error = e
            raise
        finally:
            del self._inflight[key]
            f.done.set()

    def _note_read(self, m: Msg) -> None:
        st = m.folder.state
        if st is None or st.uidvalidity != m.uidvalidity:
            return
        prev = st.before(m.uid)
        if prev is not None and prev == st.last_read_uid:
            st.window = min(PREFETCH_MAX_MESSAGES, max(4, st.window * 2))
        elif m.uid != st.last_read_uid:
            st.window = 0
        st.last_read_uid = m.uid

    def _prefetch_candidates(self, m: Msg) -> list[Msg]:
        st = m.folder.state
        if st is None or st.window <= 0 or st.uidvalidity != m.uidvalidity:
            return []
        out: list[Msg] = []
        total = m.size
        for uid in st.after(m.uid):
            if len(out) >= st.window or total >= PREFETCH_MAX_BYTES:
                break
            n = st.msgs.get(uid)
            if n is None or n.size > CHUNK or (n.inode, 0) in self.content or (n.inode, 0) in self._inflight:
                continue
            out.append(n)
            total += n.size
        return out

    async def _fetch_whole(self, m: Msg) -> bytes:
        batch = [m] + self._prefetch_candidates(m)
        fetches = {}
        for n in batch:
            fetches[n.uid] = self._inflight[(n.inode, 0)] = _Fetch()
        raw, uidv = m.folder.raw, m.uidvalidity
        assert raw is not None
        try:
            bodies = await self.pool.run(lambda c: c.fetch_bodies(raw, uidv, [n.uid for n in batch]), folder=raw)
            for n in batch:
                body = bodies.get(n.uid)
                f = fetches[n.uid]
                if body is None:
                    f.error = StaleError(f"{raw!r}: the server did not deliver message UID {n.uid}")
                    continue
                if len(body) != n.size:
                    log.warning("%r UID %d: server said RFC822.SIZE %d but sent %d bytes; using the bytes",
                                raw, n.uid, n.size, len(body))
                    n.size = len(body)
                    self.notifier.inode_changed(n.inode)
                f.data = body
                self._store((n.inode, 0), body)
        except BaseException as e:
            for f in fetches.values():
                if f.data is None and f.error is None:
                    f.error = e
            raise
        finally:
            for n in batch:
                self._inflight.pop((n.inode, 0), None)
                fetches[n.uid].done.set()
        f = fetches[m.uid]
        if f.error is not None:
            log.error("%s", f.error)
            raise f.error
        assert f.data is not None
        return f.data

    def _store(self, key: tuple[int, int], data: bytes) -> None:
        try:
            self.content[key] = data
        except ValueError:  # larger than the whole cache: serve it uncached
            pass

    async def flags(self, m: Msg) -> tuple[str, ...]:
        """Current flags, asked of the server (they change under us)."""
        raw, uidv = m.folder.raw, m.uidvalidity
        assert raw is not None
        it = await self.pool.run(lambda c: c.fetch_items(raw, uidv, m.uid, "(UID FLAGS)"), folder=raw)
        fl = it.get(b"FLAGS") or []
        m.flags = tuple(s for s in (f.decode("utf-8", "replace") if isinstance(f, bytes) else str(f) for f in fl)
                        if s.lower() != "\\recent")
        return m.flags

    def stats(self) -> tuple[int, int]:
        """(messages known, bytes known) for statfs."""
        count = total = 0
        stack = [self.root]
        while stack:
            f = stack.pop()
            stack.extend(f.children.values())
            if f.state is not None:
                count += len(f.state.msgs)
                total += sum(m.size for m in f.state.msgs.values())
        return count, total
