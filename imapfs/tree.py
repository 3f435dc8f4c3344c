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
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Union

import cachetools
import trio

from . import codec, naming
from .errors import (
    CommandFailed,
    Exists,
    ImapfsError,
    InvalidArgument,
    NotEmpty,
    NotFound,
    Offline,
    ProtocolError,
    ReadOnly,
    ServerUnavailable,
    StaleError,
    TooLarge,
    Unsupported,
)
from .imapproto import format_uid_set
from .pending import PendingFile
from .session import Connection, Known, Pool, RawMeta, Status, SyncResult

if TYPE_CHECKING:  # tree does not import disk at run time: mount hands the Disk in
    from .disk import Disk

log = logging.getLogger(__name__)

ROOT_INODE = 1
CHUNK = 4 * 1024 * 1024  # messages up to this size are fetched whole; larger in chunks
PREFETCH_MAX_MESSAGES = 128
PREFETCH_MAX_BYTES = 8 * 1024 * 1024
_COOKIE_MESSAGES = 1 << 33
# A flag we may send: a system flag, or a keyword, which is an atom (RFC 3501 flag-keyword = atom):
# 1*ATOM-CHAR, any CHAR (US-ASCII 1-127) except ( ) { SP CTL % * " \ ]. "[" is an ATOM-CHAR.
# \Recent is the server's alone (dropped before sending).
_FLAG = re.compile(r"^(\\(Seen|Answered|Flagged|Deleted|Draft|Recent)|[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+)$", re.I | re.A)
MAX_FLAG_LEN = 1000  # bytes of one keyword we send (RFC 5322 lines are 998; servers limit them too)
MAX_FLAGS = 256  # keywords set on one message at once
# INTERNALDATEs we send: 1970-01-01 to 9999-12-31 (4-digit years; imaplib fails outside)
MIN_DATE = 0
MAX_DATE = 253402300799
DEFAULT_MAX_MESSAGE = 256 * 1024 * 1024  # -o max_message=: the largest file written into the mount


def split_flags(text: str) -> list[str]:
    """A ``user.imap.flags`` value: flags separated by ASCII blanks (not by other Unicode spaces)."""
    return [f for f in re.split(r"[ \t\r\n]+", text) if f]


def check_flags(flags: list[str] | tuple[str, ...]) -> None:
    """InvalidArgument unless every flag can be sent as it is (an atom per RFC 3501, bounded)."""
    if len(flags) > MAX_FLAGS:
        raise InvalidArgument(f"more than {MAX_FLAGS} flags")
    for f in flags:
        if len(f) > MAX_FLAG_LEN or not _FLAG.match(f):
            raise InvalidArgument(f"not a valid IMAP flag or keyword: {f[:80]!r}")


def check_date(when: int | None) -> None:
    """InvalidArgument unless *when* (seconds since the epoch) can be sent as an INTERNALDATE."""
    if when is not None and not (isinstance(when, int) and MIN_DATE <= when <= MAX_DATE):
        raise InvalidArgument(f"INTERNALDATE out of range (1970 to 9999): {when!r}")


def appendlimit(caps: frozenset[str]) -> int | None:
    """The server's APPENDLIMIT=n (RFC 7889), if it announces one for every folder."""
    for c in caps:
        if c.startswith("APPENDLIMIT="):
            v = c[len("APPENDLIMIT="):]
            if v.isascii() and v.isdigit() and len(v) <= 19:
                return int(v)
    return None
_COOKIE_PENDING = 1 << 60
_COOKIE_OFFLINE = 1 << 59
PENDING_INODE_BASE = 1 << 62  # files being written: not stable, they are not mail yet
# Messages: MSG_INODE_BIT | folder bucket << 33 | UID << 1, and NAME.parts at that | 1. So inode
# order is UID order: GNU grep/fts walk directories of more than 10,000 entries in inode order,
# and read-ahead only works when that order is the folder's.
MSG_INODE_BIT = 1 << 61
_BUCKET_MASK = (1 << 28) - 1
APPEND_QUIET = 0.5
REFUSED_APPEND_TRIES = 3  # a server that answers NO this often will not change its mind  # seconds a released file waits for rsync's utimens/setxattr/rename


class Notifier(Protocol):
    """How the tree tells the kernel that a name went away or an inode changed."""

    def entry_removed(self, parent_inode: int, name: str) -> None: ...

    def inode_changed(self, inode: int) -> None: ...


class NullNotifier:
    def entry_removed(self, parent_inode: int, name: str) -> None:
        pass

    def inode_changed(self, inode: int) -> None:
        pass


def _hash(key: tuple) -> int:
    return int.from_bytes(hashlib.blake2b(repr(key).encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "little")


def stable_inode(key: tuple) -> int:
    """An inode below MSG_INODE_BIT from *key*, the same on every mount (backups compare inodes)."""
    h = _hash(key) & (MSG_INODE_BIT - 1)
    return h if h > 1024 else h + 1024


class Msg:
    """One message: immutable for its (UIDVALIDITY, UID) except flags."""

    __slots__ = ("folder", "uidvalidity", "uid", "size", "date", "flags", "stem", "inode", "gone", "successor")

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
        self.successor: Msg | None = None  # where a move or edit took it (same bytes or newer)

    @property
    def name(self) -> str:
        return self.stem + ".eml"

    def key(self) -> tuple:
        return ("M", self.folder.path, self.uidvalidity, self.uid)


def _status_differs(st: FolderState, status: Status | None) -> bool:
    if status is None:
        return False
    return ((status.uidvalidity is not None and status.uidvalidity != st.uidvalidity)
            or (status.uidnext is not None and status.uidnext != st.uidnext)
            or (status.messages is not None and status.messages != st.exists)
            or (status.highestmodseq is not None and st.highestmodseq is not None
                and status.highestmodseq != st.highestmodseq))


def _stem(meta: RawMeta) -> str:
    when = datetime.datetime.fromtimestamp(meta.internaldate, datetime.timezone.utc)
    return naming.message_stem(meta.uid, when, naming.decode_subject(meta.subject))


class MsgTable(dict):
    """UID → Msg that keeps the sum of the messages' sizes as it changes, so that
    statfs costs O(folders) instead of a walk of every message on the trio loop."""

    __slots__ = ("bytes",)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__()
        self.bytes = 0
        self.update(*args, **kw)

    def __setitem__(self, uid: int, m: Msg) -> None:
        old = super().get(uid)
        if old is not None:
            self.bytes -= old.size
        super().__setitem__(uid, m)
        self.bytes += m.size

    def __delitem__(self, uid: int) -> None:
        self.bytes -= self[uid].size
        super().__delitem__(uid)

    def pop(self, uid: int, *default: Any) -> Any:
        if uid in self:
            m = super().pop(uid)
            self.bytes -= m.size
            return m
        return super().pop(uid, *default)

    def popitem(self) -> tuple[int, Msg]:
        uid, m = super().popitem()
        self.bytes -= m.size
        return uid, m

    def clear(self) -> None:
        super().clear()
        self.bytes = 0

    def update(self, *args: Any, **kw: Any) -> None:  # type: ignore[override]
        for uid, m in dict(*args, **kw).items():
            self[uid] = m

    def __ior__(self, other: Any) -> MsgTable:  # type: ignore[override]
        self.update(other)
        return self

    def setdefault(self, uid: int, default: Any = None) -> Any:
        if uid not in self:
            self[uid] = default
        return self[uid]

    def resize(self, m: Msg, size: int) -> None:
        """Set ``m.size`` (a corrected RFC822.SIZE), keeping the sum right."""
        if super().get(m.uid) is m:
            self.bytes += size - m.size
        m.size = size


@dataclass
class FolderState:
    """What we know of a selectable folder's messages."""

    uidvalidity: int
    uidnext: int | None
    exists: int
    msgs: MsgTable = field(default_factory=MsgTable)
    highestmodseq: int | None = None
    uids: list[int] = field(default_factory=list)  # sorted
    on_disk: set[int] = field(default_factory=set)  # UIDs whose bytes the local cache holds
    checked: float = 0.0
    # Convergence (issue 10): False until a sync has compared this state's UID set with
    # the server's (a state loaded from disk, or one a failed step may have left short).
    verified: bool = False
    skipped: set[int] = field(default_factory=set)  # on the server, but unusable metadata: not shown
    # sequential-read detection for body prefetch
    last_read_uid: int = 0
    window: int = 0
    ahead_at: int | None = None  # UID at which a sequential reader triggers the next read-ahead

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
        self.wire: bytes | None = None  # the server's spelling of this path, also for implied parents
        self.selectable = False
        self.special: frozenset[bytes] = frozenset()
        self.children: dict[str, Folder] = {}
        self.state: FolderState | None = None
        self.lock = trio.Lock()
        self.inode = ROOT_INODE if not path else 0
        self.gone = False
        self.last_used = 0.0  # clock() of the last listing, lookup or read: "in use" for change tracking
        self.open_files = 0
        self.pending: dict[str, PendingFile] = {}  # files being written, by the writer's name
        self.aliases: dict[str, Msg] = {}  # writers' names of messages stored during this mount
        # Offline changes not yet sent (imapfs.offline): shown here, not in the cache.
        self.offline_entries: dict[str, Msg] = {}  # moved here while offline
        self.hidden: set[tuple[int, int]] = set()  # (UIDVALIDITY, UID) moved away or deleted while offline
        self.local = False  # created while offline

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

    def __init__(self, pool: Pool, *, revalidate: float = 5.0, mem_cache: int = 64 * 1024 * 1024,
                 notifier: Notifier | None = None, clock: Callable[[], float] = time.monotonic,
                 read_only: bool = False, trash: str | None = None, spool_dir: str | None = None,
                 unsent_dir: str | None = None, disk: Disk | None = None) -> None:
        self.pool = pool
        self.disk = disk  # the persistent second tier of this cache (None with cache_dir=none)
        self.journal: Any = None  # imapfs.offline.Journal, set by it: records changes made offline
        self._offline_noted: set[Any] = set()
        self.read_only = read_only
        self.trash = trash  # None, "auto" (the \Trash folder) or a folder path with "/"
        self.spool_dir = spool_dir
        self.unsent_dir = unsent_dir or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "imapfs", "unsent")
        self._next_pending = PENDING_INODE_BASE
        self._pendings: set[PendingFile] = set()  # every file not yet stored (the uploader's work list)
        self._msg_locks: dict[int, trio.Lock] = {}
        self._upload_wakeup = trio.Event()
        self.max_message = DEFAULT_MAX_MESSAGE  # set by the mount from -o max_message=
        self._spool_limiter = trio.CapacityLimiter(4)  # threads for the bytes of files being written
        self.revalidate = revalidate
        self.notifier: Notifier = notifier or NullNotifier()
        self.clock = clock
        self.root = Folder((), None)
        self.delimiter: str | None = "/"
        self._inodes: dict[int, Any] = {ROOT_INODE: self.root}
        self._buckets: dict[tuple, int] = {}
        self._bucket_keys: dict[int, tuple] = {}
        self.derive: Callable[[Msg], Any] | None = None  # inode|1 of a message → its NAME.parts
        self._lookups: dict[int, int] = {}
        self._folders_checked = 0.0
        self._folders_lock = trio.Lock()
        self.content: cachetools.LRUCache = cachetools.LRUCache(maxsize=max(1, mem_cache), getsizeof=len)
        self._inflight: dict[tuple[int, int], _Fetch] = {}
        self.mount_time = time.time()
        self.on_drop: list[Callable[[Any], None]] = []  # told when a node leaves the tree
        self.fetch_extra = ""  # FETCH items asked along with bodies (parts asks for BODYSTRUCTURE)
        self.fetch_hooks: list[Callable[[Msg, dict], None]] = []  # given those items per message
        self.nursery: Any = None  # for read-ahead; set by the mount once it serves

    # -- inode table --------------------------------------------------------

    def _msg_inode(self, m: Msg) -> int:
        """UID-ordered and stable: the folder's (path, UIDVALIDITY) picks a bucket by hash."""
        key = (m.folder.path, m.uidvalidity)
        b = self._buckets.get(key)
        if b is None:
            b = _hash(("B",) + key) & _BUCKET_MASK
            while self._bucket_keys.get(b, key) != key:  # two folders, one bucket: probe on
                b = (b + 1) & _BUCKET_MASK
            self._buckets[key] = b
            self._bucket_keys[b] = key
        return MSG_INODE_BIT | (b << 33) | (m.uid << 1)

    def _alloc(self, node: Any) -> int:
        if isinstance(node, Msg):
            ino = self._msg_inode(node)
            self._inodes[ino] = node  # a new incarnation of the same message takes over
            node.inode = ino
            return ino
        key = node.key()
        ino = stable_inode(key)
        while True:
            other = self._inodes.get(ino)
            if other is None or other is node:
                break
            if other.key() == key:  # the same object's new incarnation: take over
                break
            ino = ino + 1 if ino < MSG_INODE_BIT - 1 else 1025  # collision: probe on, deterministically
        self._inodes[ino] = node
        node.inode = ino
        return ino

    def node(self, inode: int) -> Any:
        n = self._inodes.get(inode)
        if n is None:
            if inode & MSG_INODE_BIT and inode & 1 and inode < PENDING_INODE_BASE and self.derive is not None:
                m = self._inodes.get(inode & ~1)
                if isinstance(m, Msg):
                    return self.derive(m)  # NAME.parts, made when first asked for
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
        self.discard_node(node)
        self.notifier.entry_removed(parent_inode, name)
        for hook in self.on_drop:
            hook(node)

    def discard_node(self, node: Any) -> None:
        """Leave the inode table now, or at the kernel's last forget if it still holds the inode."""
        node.gone = True
        if self._lookups.get(node.inode, 0) == 0 and self._inodes.get(node.inode) is node:
            del self._inodes[node.inode]

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
            self._add(f, st, rec.messages, persist=False)
            st.on_disk = await self.disk.call(store.body_uids, raw, rec.uidvalidity)
            f.state = st
        log.info("loaded %d folders from the local cache", len(entries))
        return True

    def is_offline(self) -> bool:
        """True when a request would not even try the server (forced, or waiting to reconnect)."""
        return not self.pool.available()

    def note_offline(self, key: Any, what: str) -> None:
        """One log line per folder (not per file) while the server is away."""
        if key in self._offline_noted:
            return
        self._offline_noted.add(key)
        log.warning("offline: %s (%s)", what, self.pool.last_error or "server unreachable")

    def back_online(self) -> None:
        self._offline_noted.clear()

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
            entries, statuses = await self.pool.run(Connection.list_status)
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
                try:
                    status = await self.pool.run(lambda c: c.status(raw))
                except (NotFound, CommandFailed):
                    continue
            if _status_differs(st, status):
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
                entries = await self.pool.run(Connection.list_folders)
            except ServerUnavailable:
                if not self.root.children:
                    raise
                self.note_offline("LIST", "showing the folders from the local cache")
                self._folders_checked = self.clock()
                return
            self._apply_list(entries)
            if self.disk is not None:
                self.disk.put_folders(entries)
            self._folders_checked = self.clock()

    def _apply_list(self, entries: list) -> None:
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
            node = self._ensure_path(path, fp.wires)
            node.raw = e.name
            node.selectable = b"\\noselect" not in e.flags and b"\\nonexistent" not in e.flags
            node.special = frozenset(f for f in e.flags if f in {
                b"\\trash", b"\\sent", b"\\drafts", b"\\junk", b"\\archive", b"\\all", b"\\flagged"})
            for i in range(1, len(path) + 1):
                seen.add(path[:i])
        self._prune(self.root, seen)

    def _ensure_path(self, path: tuple[str, ...], wires: tuple[bytes, ...] | None = None) -> Folder:
        """The folder at *path*, made (with its implied parents) if new; *wires*: each level's server name."""
        node = self.root
        for i, comp in enumerate(path):
            child = node.children.get(comp)
            if child is None:
                child = Folder(path[: i + 1], node)
                node.children[comp] = child
                self._alloc(child)
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
            except ServerUnavailable:
                if st is None:
                    self.note_offline(raw, f"{raw.decode('ascii', 'replace')} was never cached: cannot list it")
                    raise
                self.note_offline(raw, f"showing {raw.decode('ascii', 'replace')} as last seen")
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
                self._add(folder, st, res.added, persist=False)
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
                        self._drop(m, folder.inode, m.name)
                if gone:
                    log.debug("%s: %d messages gone", raw.decode("ascii", "replace"), len(gone))
                    if self.disk is not None:
                        self.disk.remove_messages(raw, st.uidvalidity, sorted(gone))
                if res.added:
                    log.debug("%s: %d messages new", raw.decode("ascii", "replace"), len(res.added))
                self._add(folder, st, [a for a in res.added if a.uid not in gone])
                changed_flags = {}
                for uid, fl in res.flags.items():
                    m = st.msgs.get(uid)
                    if m is not None and m.flags != fl:
                        m.flags = fl
                        changed_flags[uid] = fl
                if changed_flags and self.disk is not None:
                    self.disk.set_flags_many(raw, st.uidvalidity, changed_flags)
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
            if self._offline_noted:
                self.back_online()
            return st

    def _add(self, folder: Folder, st: FolderState, metas: list[RawMeta], persist: bool = True) -> None:
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
            self._alloc(m)
            st.msgs[m.uid] = m
        st.uids = sorted(st.msgs)

    # -- lookups and listings -----------------------------------------------

    async def lookup(self, parent: Folder, name: str) -> Node:
        parent.last_used = self.clock()
        child = parent.children.get(name)
        if child is not None:
            return child
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
        for p in sorted(folder.pending.values(), key=lambda p: p.inode):
            out.append((_COOKIE_PENDING + (p.inode - PENDING_INODE_BASE), p.name, p))
        for i, name in enumerate(sorted(folder.offline_entries)):
            out.append((_COOKIE_OFFLINE + i, name, folder.offline_entries[name]))
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
        data = await self._peek(key)
        if data is not None:
            if idx == 0:
                self._maybe_read_ahead(m)
            elif m.size > CHUNK:
                self._chunk_ahead(m, idx + 1)
            return data
        if m.size <= CHUNK:
            return await self._fetch_whole(m)
        if self._on_disk(m):
            whole = await self._disk_body(m)
            if whole is not None:
                for i in range(0, max(1, (len(whole) + CHUNK - 1) // CHUNK)):
                    self._store((m.inode, i), whole[i * CHUNK:(i + 1) * CHUNK])
                return whole[idx * CHUNK:(idx + 1) * CHUNK]
        data = await self.cached(key, lambda: self._fetch_chunk(m, idx))
        self._chunk_ahead(m, idx + 1)
        self._persist_if_complete(m)
        return data

    async def _fetch_chunk(self, m: Msg, idx: int) -> bytes:
        raw, uidv = m.folder.raw, m.uidvalidity
        assert raw is not None
        try:
            return await self.pool.run(lambda c: c.fetch_range(raw, uidv, m.uid, idx * CHUNK, CHUNK), folder=raw)
        except ServerUnavailable as e:
            raise self._offline_miss(m, e) from None

    def _chunk_ahead(self, m: Msg, idx: int) -> None:
        """Reading a big message: fetch its next chunk on another connection meanwhile."""
        key = (m.inode, idx)
        if (self.nursery is None or idx * CHUNK >= m.size or key in self.content or key in self._inflight):
            return

        async def ahead() -> None:
            try:
                await self.cached(key, lambda: self._fetch_chunk(m, idx))
                self._persist_if_complete(m)
            except Exception as e:  # noqa: BLE001 - the reader will fetch it itself
                log.debug("chunk read-ahead failed: %s", e)

        self.nursery.start_soon(ahead)

    async def is_cached(self, m: Msg) -> bool:
        """Stored in the persistent cache, checked with the store (``user.imapfs.cached``)."""
        if not self._on_disk(m) or m.folder.raw is None or self.disk is None:
            return False
        if await self.disk.call(self.disk.store.has_body, m.folder.raw, m.uidvalidity, m.uid):
            return True
        # queued but not written yet, or dropped/evicted: let the writer catch up once
        await self.disk.flush()
        ok = await self.disk.call(self.disk.store.has_body, m.folder.raw, m.uidvalidity, m.uid)
        if not ok and m.folder.state is not None:
            m.folder.state.on_disk.discard(m.uid)
        return ok

    def _on_disk(self, m: Msg) -> bool:
        st = m.folder.state
        return (self.disk is not None and st is not None and st.uidvalidity == m.uidvalidity
                and m.uid in st.on_disk)

    async def _disk_body(self, m: Msg) -> bytes | None:
        raw = m.folder.raw
        assert raw is not None and self.disk is not None
        try:
            data = await self.disk.call(self.disk.store.get_body, raw, m.uidvalidity, m.uid)
        except Exception as e:  # noqa: BLE001 - a broken cache costs a fetch, not the read
            log.debug("local cache read failed: %s", e)
            data = None
        if data is None or len(data) != m.size:
            st = m.folder.state
            if st is not None:
                st.on_disk.discard(m.uid)
            return None
        return data

    def _offline_miss(self, m: Msg, e: Exception) -> Exception:
        if self.is_offline():
            raw = m.folder.raw or b"?"
            self.note_offline((raw, "read"), f"messages of {raw.decode('ascii', 'replace')} that are not in "
                                              "the local cache cannot be read")
            return Offline(f"{m.name} is not in the local cache and the server is unreachable")
        return e

    def _persist_body(self, m: Msg, data: bytes) -> None:
        st = m.folder.state
        if self.disk is None or st is None or st.uidvalidity != m.uidvalidity or m.folder.raw is None:
            return
        if m.uid in st.on_disk:
            return
        if self.disk.put_body(m.folder.raw, m.uidvalidity, m.uid, data):
            st.on_disk.add(m.uid)

    def _persist_if_complete(self, m: Msg) -> None:
        """A big message read to its end: keep it on disk too (offline reading, prefetch)."""
        if self.disk is None or self._on_disk(m):
            return
        # Stop at the first chunk not in memory: RFC822.SIZE is the server's word
        # (up to imapproto.MAX_MESSAGE_SIZE), never a reason to build a huge list.
        chunks = []
        for i in range((m.size + CHUNK - 1) // CHUNK):
            c = self.content.get((m.inode, i))
            if c is None:
                return
            chunks.append(c)
        self._persist_body(m, b"".join(chunks))

    async def _peek(self, key: tuple[int, int]) -> bytes | None:
        """Cached bytes for *key*, waiting for a fetch of it already under way; None if neither."""
        while True:
            data = self.content.get(key)
            if data is not None:
                return data
            f = self._inflight.get(key)
            if f is None:
                return None
            await f.done.wait()
            if f.data is not None:
                return f.data
            if f.error is not None:
                raise f.error

    async def cached(self, key: tuple[int, int], fetch: Callable[[], Any]) -> bytes:
        """Bytes for *key* from the content cache, else from ``await fetch()``, fetched once
        however many readers ask at the same time."""
        data = await self._peek(key)
        if data is not None:
            return data
        f = self._inflight[key] = _Fetch()
        try:
            data = await fetch()
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
        m.folder.last_used = self.clock()
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
        if self._on_disk(m):
            data = await self._disk_body(m)
            if data is not None:
                self._store((m.inode, 0), data)
                return data
        batch = [m] + [n for n in self._prefetch_candidates(m) if not self._on_disk(n)]
        fetches = await self._fetch_batch(batch)
        f = fetches[m.uid]
        if f.error is not None:
            log.info("%s (expunged by another client?)", f.error)
            raise f.error
        assert f.data is not None
        return f.data

    async def _fetch_batch(self, batch: list[Msg]) -> dict[int, _Fetch]:
        """Fetch whole bodies of *batch* (one folder) in one FETCH; readers of any of them wait."""
        m = batch[0]
        fetches: dict[int, _Fetch] = {}
        for n in batch:
            fetches[n.uid] = self._inflight[(n.inode, 0)] = _Fetch()
        raw, uidv = m.folder.raw, m.uidvalidity
        assert raw is not None
        extra = self.fetch_extra
        try:
            got = await self.pool.run(lambda c: c.fetch_bodies(raw, uidv, [n.uid for n in batch], extra),
                                      folder=raw)
            for n in batch:
                f = fetches[n.uid]
                if n.uid not in got:
                    f.error = StaleError(f"{raw!r}: the server did not deliver message UID {n.uid}")
                    continue
                body, items = got[n.uid]
                if len(body) != n.size:
                    log.warning("%r UID %d: server said RFC822.SIZE %d but sent %d bytes; using the bytes",
                                raw, n.uid, n.size, len(body))
                    if n.folder.state is not None:
                        n.folder.state.msgs.resize(n, len(body))
                    n.size = len(body)
                    self.notifier.inode_changed(n.inode)
                f.data = body
                self._store((n.inode, 0), body)
                self._persist_body(n, body)
                for hook in self.fetch_hooks:
                    hook(n, items)
            st = m.folder.state
            if st is not None and len(batch) > 1:
                st.ahead_at = batch[len(batch) // 2].uid  # read ahead once the reader gets here
        except BaseException as e:
            if isinstance(e, ServerUnavailable):
                e = self._offline_miss(m, e)
            for f in fetches.values():
                if f.data is None and f.error is None:
                    f.error = e
            raise e from None
        finally:
            for n in batch:
                self._inflight.pop((n.inode, 0), None)
                fetches[n.uid].done.set()
        return fetches

    def _maybe_read_ahead(self, m: Msg) -> None:
        """A sequential reader served from cache: fetch the next batch before it stalls on it.

        Checked only once the reader passes the middle of the last batch
        (``st.ahead_at``), so a cache hit costs O(1).
        """
        st = m.folder.state
        if self.nursery is None or st is None or st.window <= 0 or st.uidvalidity != m.uidvalidity:
            return
        if st.ahead_at is None or m.uid < st.ahead_at:
            return
        st.ahead_at = None
        after = st.after(m.uid)
        for i, uid in enumerate(after[: st.window]):
            n = st.msgs.get(uid)
            if n is None or n.size > CHUNK:
                continue
            key = (n.inode, 0)
            if key in self.content or key in self._inflight or self._on_disk(n):
                continue
            if i >= st.window // 2:
                return  # enough is cached ahead of the reader
            batch = [n] + [c for c in self._prefetch_candidates(n) if not self._on_disk(c)]
            self.nursery.start_soon(self._read_ahead, batch)
            return

    async def _read_ahead(self, batch: list[Msg]) -> None:
        try:
            await self._fetch_batch(batch)
        except Exception as e:  # noqa: BLE001 - a failed read-ahead costs the reader a fetch, nothing more
            log.debug("read-ahead failed: %s", e)

    def _store(self, key: tuple[int, int], data: bytes) -> None:
        try:
            self.content[key] = data
        except ValueError:  # larger than the whole cache: serve it uncached
            pass

    # -- write-through: the server first, then the tree ---------------------

    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnly("mounted read-only")

    def _msg_lock(self, m: Msg) -> trio.Lock:
        lock = self._msg_locks.get(m.inode)
        if lock is None:
            lock = self._msg_locks[m.inode] = trio.Lock()
        return lock

    @property
    def caps(self) -> frozenset[str]:
        return self.pool.capabilities

    def trash_folder(self) -> Folder | None:
        if not self.trash:
            return None
        if self.trash == "auto":
            stack = [self.root]
            while stack:
                f = stack.pop()
                if b"\\trash" in f.special and f.selectable:
                    return f
                stack.extend(f.children.values())
            return None
        node = self.root
        for comp in self.trash.strip("/").split("/"):
            node = node.children.get(comp)  # type: ignore[assignment]
            if node is None:
                return None
        return node if node.selectable else None

    async def _new_msg(self, folder: Folder, where: tuple[int, int] | None) -> Msg | None:
        """Add the message the server just stored at *where* = (UIDVALIDITY, UID) to *folder*."""
        st = folder.state
        raw = folder.raw
        if where is None or raw is None:
            # No APPENDUID/COPYUID (no UIDPLUS): the next sync shows it.
            if st is not None:
                st.checked = 0.0
            return None
        uidv, uid = where
        if st is None or st.uidvalidity != uidv:
            st = await self.sync(folder, force=True)  # a folder never listed: its sync has the message
            return st.msgs.get(uid) if st is not None and st.uidvalidity == uidv else None
        if uid in st.msgs:
            return st.msgs[uid]
        try:
            metas = await self.pool.run(lambda c: (c.ensure_selected(raw, uidv), c.fetch_meta(str(uid)))[1],
                                        folder=raw)
        except BaseException:
            st.verified = False  # the next sync compares UID sets and finds it
            st.checked = 0.0
            raise
        self._add(folder, st, metas)
        if uid not in st.msgs:
            # A connection whose selected view lagged, or metadata we could not use:
            # never leave a hole that counters alone would hide (issue 10 item 1).
            log.info("%s: UID %d not listed yet; the next sync compares UID sets",
                     raw.decode("ascii", "replace"), uid)
            st.verified = False
            st.checked = 0.0
        return st.msgs.get(uid)

    def _forget_msg(self, m: Msg) -> None:
        st = m.folder.state
        if st is not None and st.msgs.get(m.uid) is m:
            del st.msgs[m.uid]
            st.uids = sorted(st.msgs)
            st.on_disk.discard(m.uid)
            if m.folder.raw is not None and self.disk is not None:
                self.disk.remove_messages(m.folder.raw, m.uidvalidity, [m.uid])
        for name, a in list(m.folder.aliases.items()):
            if a is m:
                del m.folder.aliases[name]
        self._drop(m, m.folder.inode, m.name)

    async def move(self, m: Msg, dest: Folder, name: str | None = None) -> Msg | None:
        """Move *m* to *dest*: UID MOVE, else COPY + STORE \\Deleted + UID EXPUNGE of that UID.

        The original is removed only by the server's MOVE or after COPY was
        confirmed; without MOVE or UIDPLUS we refuse rather than EXPUNGE blindly.
        """
        self._writable()
        if not dest.selectable or dest.raw is None:
            raise Unsupported(f"{'/'.join(dest.path) or '/'} cannot hold messages (\\Noselect)")
        if dest is m.folder:
            raise Unsupported("a message keeps its name; renaming within a folder is not possible")
        if self.journal is not None and self.is_offline():
            await self.journal.move(m, dest, name)
            return None
        caps = self.caps
        if "MOVE" not in caps and "UIDPLUS" not in caps:
            log.error("refusing to move %s: the server has neither MOVE nor UIDPLUS, and a plain "
                      "EXPUNGE could remove other clients' deleted mail", m.name)
            raise Unsupported("server lacks MOVE and UIDPLUS")
        async with self._msg_lock(m):
            if m.gone:
                raise NotFound(f"{m.name} is gone")
            src, uidv, uid, dst = m.folder.raw, m.uidvalidity, m.uid, dest.raw
            assert src is not None
            try:
                where, moved = await self.pool.run(lambda c: c.move_message(src, uidv, uid, dst), folder=src,
                                                   retry=False)
            except ServerUnavailable:
                if self.journal is None:
                    raise
                # It may have happened in part; the replay checks the message is still
                # there before it moves it: a duplicate at worst, never a loss.
                await self.journal.move(m, dest, name)
                return None
            if not moved:
                self._forget_msg(m)
                raise NotFound(f"{m.name} was removed from the server by someone else")
            log.info("moved %s/%s to %s", src.decode("ascii", "replace"), m.name, dst.decode("ascii", "replace"))
            self._forget_msg(m)
            new = await self._new_msg(dest, where)
            m.successor = new
            if new is not None and name and name != new.name:
                dest.aliases[name] = new
            return new

    async def delete(self, m: Msg) -> None:
        """``rm``: into the trash folder when one is set, else \\Deleted + UID EXPUNGE of that UID."""
        self._writable()
        trash = self.trash_folder()
        if self.trash and trash is None:
            log.error("trash=%s: no such folder; refusing to delete %s for good", self.trash, m.name)
            raise Unsupported("trash folder not found")
        if self.journal is not None and self.is_offline():
            await self.journal.delete(m, trash if trash is not m.folder else None)
            return
        if trash is not None and trash is not m.folder:
            await self.move(m, trash)
            return
        if "UIDPLUS" not in self.caps:
            log.error("refusing to delete %s: the server lacks UIDPLUS, and a plain EXPUNGE could "
                      "remove other clients' deleted mail", m.name)
            raise Unsupported("server lacks UIDPLUS")
        try:
            await self._expunge(m)
        except ServerUnavailable:
            if self.journal is None:
                raise
            await self.journal.delete(m, None)
            return
        log.info("deleted %s/%s", (m.folder.raw or b"").decode("ascii", "replace"), m.name)

    async def set_flags(self, m: Msg, flags: list[str]) -> None:
        self._writable()
        check_flags(flags)
        flags = [f for f in flags if f.lower() != "\\recent"]
        src, uidv, uid = m.folder.raw, m.uidvalidity, m.uid
        assert src is not None
        if self.journal is not None and self.is_offline():
            await self.journal.flags(m, flags)
            return
        try:
            await self.pool.run(lambda c: c.uid_store(src, uidv, uid, "FLAGS.SILENT", flags), folder=src)
        except ServerUnavailable:
            if self.journal is None:
                raise
            await self.journal.flags(m, flags)
            return
        m.flags = tuple(flags)
        if self.disk is not None:
            self.disk.set_flags(src, uidv, uid, tuple(flags))

    # -- new files and edits -------------------------------------------------

    def _pending(self, folder: Folder, name: str | None, replaces: Msg | None = None) -> PendingFile:
        self._next_pending += 1
        p = PendingFile(folder, name or "", self._next_pending, replaces=replaces, spool_dir=self.spool_dir)
        p.commit_lock = trio.Lock()  # type: ignore[attr-defined]  # one commit of a file at a time
        self._inodes[p.inode] = p
        self._pendings.add(p)
        return p

    def rejournal(self, p: PendingFile) -> None:
        """A file already in the offline journal changed (written, renamed): record it again;
        the new record supersedes the old one (see Journal.append)."""
        p.changed()
        self._pendings.add(p)

    def reopen(self, p: PendingFile) -> None:
        """More writes to a file that was already stored: it is pending again, as a new version."""
        p.reopen()
        self._pendings.add(p)
        if p.name:
            p.folder.pending[p.name] = p

    def create_file(self, folder: Folder, name: str) -> PendingFile:
        self._writable()
        if not folder.selectable or folder.raw is None:
            raise Unsupported(f"{'/'.join(folder.path) or '/'} cannot hold messages")
        if name in folder.children or name in folder.pending:
            raise Exists(name)
        p = self._pending(folder, name)
        p.changed()  # an empty new file is still a file the user made
        folder.pending[name] = p
        return p

    async def open_for_write(self, m: Msg, truncate: bool) -> PendingFile:
        """An edit: a new version is buffered; on release it is APPENDed, then the old one expunged."""
        self._writable()
        unknown = not self.caps and self.journal is not None  # started offline: decided at replay
        if "UIDPLUS" not in self.caps and not unknown:
            log.error("refusing to edit %s: without UIDPLUS the old version cannot be removed safely", m.name)
            raise Unsupported("server lacks UIDPLUS")
        p = self._pending(m.folder, None, replaces=m)
        if not truncate:
            try:
                for off in range(0, m.size, CHUNK):  # a chunk at a time: a big message never sits in memory
                    piece = await self.read(m, off, CHUNK)
                    if piece:
                        await trio.to_thread.run_sync(p.write, off, piece, limiter=self._spool_limiter)
            except BaseException:
                self._discard(p)
                raise
            p.mark_clean(p.generation)  # the old version: nothing to store yet
        return p

    def opened(self, p: PendingFile) -> None:
        p.opens += 1
        p.ready_at = None

    def released(self, p: PendingFile) -> None:
        p.opens = max(0, p.opens - 1)
        if p.opens == 0:
            self._touch(p)
            if not p.dirty and p.name == "" and p.committed is None and not p.superseded:
                self._discard(p)  # opened for writing, nothing written

    def _touch(self, p: PendingFile) -> None:
        """Restart the quiet period (rsync's utimens/setxattr/rename follow the close)."""
        if p.opens == 0 and p.dirty:
            p.ready_at = self.clock() + APPEND_QUIET
            self._upload_wakeup.set()

    def set_pending_flags(self, p: PendingFile, flags: list[str]) -> None:
        check_flags(flags)
        p.flags = tuple(f for f in flags if f.lower() != "\\recent")
        p.changed()
        self._touch(p)

    def set_pending_date(self, p: PendingFile, when: int) -> None:
        check_date(when)
        p.date = when
        p.changed()
        self._touch(p)

    def message_limit(self) -> int:
        """The largest file that may be written: ``-o max_message=``, or the server's APPENDLIMIT if lower."""
        limit = appendlimit(self.caps)
        return self.max_message if limit is None else min(self.max_message, limit)

    def _check_size(self, p: PendingFile, size: int) -> None:
        """EFBIG past the limit. The file is then marked: what was written is incomplete
        (cp stopped half way), so it is not stored as mail but saved aside (see uploader)."""
        limit = self.message_limit()
        if size > limit:
            log.info("refused: %s would be %d bytes, more than the %d this mount stores "
                     "(-o max_message= or the server's APPENDLIMIT)", p.name or "an edited message", size, limit)
            p.too_large = True
            raise TooLarge(f"{p.name or 'an edited message'} would be {size} bytes (limit {limit})")

    async def write_pending(self, p: PendingFile, offset: int, data: bytes) -> int:
        """write(2) on a file being written: EFBIG past the limit; the bytes go in a worker thread."""
        if not data:
            return 0
        self._check_size(p, offset + len(data))
        if p.committed is not None:
            self.reopen(p)  # written again after it was stored: a new version
        elif p.journal_seq is not None:
            self._pendings.add(p)  # written again after it was journaled: record it again
        return await trio.to_thread.run_sync(p.write, offset, data, limiter=self._spool_limiter)

    async def truncate_pending(self, p: PendingFile, size: int) -> None:
        """truncate/ftruncate: sparse, so growing allocates nothing; EFBIG past the limit.
        Truncating to a size within the limit starts over: the file may be stored again."""
        self._check_size(p, size)
        if p.journal_seq is not None:
            self._pendings.add(p)
        await trio.to_thread.run_sync(p.truncate, size, limiter=self._spool_limiter)
        p.too_large = False

    async def read_pending(self, p: PendingFile, offset: int, size: int) -> bytes:
        return await trio.to_thread.run_sync(p.read, offset, size, limiter=self._spool_limiter)

    def rename_pending(self, p: PendingFile, dest: Folder, name: str) -> None:
        self._writable()
        if not dest.selectable or dest.raw is None:
            raise Unsupported("that folder cannot hold messages")
        if name in dest.children:
            raise Exists(name)
        if p.folder.pending.get(p.name) is p:
            del p.folder.pending[p.name]
        old = dest.pending.pop(name, None)
        if old is not None and old is not p:
            self._discard(old)
        target = dest.aliases.get(name)
        if target is None:
            parsed = naming.parse_message_name(name)
            st = dest.state
            cand = st.msgs.get(parsed[0]) if parsed and st else None
            target = cand if cand is not None and cand.name == name else None
        if target is not None and not target.gone:
            p.replaces = target  # a save over an existing message: the old one goes after the new is stored
        if dest is not p.folder:
            p.changed()  # a copy being APPENDed to the old folder must be stored again in the new one
        p.folder = dest
        p.name = name
        dest.pending[name] = p
        if p.journal_seq is not None:
            self.rejournal(p)  # its recorded folder or name is stale now
        self._touch(p)

    def _discard(self, p: PendingFile) -> None:
        if p.folder.pending.get(p.name) is p:
            del p.folder.pending[p.name]
        self._pendings.discard(p)
        p.gone = True
        if self._lookups.get(p.inode, 0) == 0:
            self._inodes.pop(p.inode, None)
        p.close()

    def unlink_pending(self, p: PendingFile) -> None:
        self._discard(p)

    def _sendable(self, p: PendingFile) -> tuple[tuple[str, ...], int | None]:
        """The flags and date to APPEND *p* with. What the user set was checked when it was
        set; what an edit takes over from the old version is filtered here (a keyword another
        client stored, an INTERNALDATE out of range) rather than make the new version unsendable."""
        if p.flags is not None:
            flags = p.flags
            check_flags(flags)
        else:
            flags = p.replaces.flags if p.replaces else ()
            bad = [f for f in flags if len(f) > MAX_FLAG_LEN or not _FLAG.match(f)]
            if bad:
                log.warning("%s: the old version's flags %s cannot be sent; storing the new one without them",
                            p.name or "an edited message", " ".join(repr(f) for f in bad))
                flags = tuple(f for f in flags if f not in bad)
        flags = tuple(f for f in flags if f.lower() != "\\recent")
        if p.date is not None:
            date: int | None = p.date
            check_date(date)
        else:
            date = p.replaces.date if p.replaces else None
            try:
                check_date(date)
            except InvalidArgument:
                log.warning("%s: the old version's date %r cannot be sent; the server's time is used",
                            p.name or "an edited message", date)
                date = None
        return flags, date

    async def commit(self, p: PendingFile) -> Msg | None:
        """Store the current version of *p*: APPEND, then expunge what it replaces, then show it.

        One commit of a file at a time: a second one (fsync while the uploader is at it) waits,
        then finds the file clean, so a file is never APPENDed twice. The version sent is
        marked stored only if the file did not change meanwhile; otherwise the newer version
        stays dirty, is stored next, and the copy stored now is expunged once it is.
        """
        lock: trio.Lock = p.commit_lock  # type: ignore[attr-defined]
        if lock.locked():
            log.debug("%s: waits for the APPEND in progress", p.name or "an edited message")
        async with lock:
            return await self._commit(p)

    async def _commit(self, p: PendingFile) -> Msg | None:
        if p.gone or not p.dirty:
            return p.committed
        if p.too_large:
            raise TooLarge(f"{p.name or 'an edited message'} was cut short by the size limit; it is not stored")
        folder = p.folder
        raw = folder.raw
        assert raw is not None
        if self.journal is not None and (self.is_offline() or folder.local):
            await self.journal.append(p)
            return None
        flags, date = self._sendable(p)
        meta = p.meta_generation  # flags, date and folder as read just above
        snap, data_gen = await trio.to_thread.run_sync(p.snapshot, limiter=self._spool_limiter)
        size = len(snap)
        try:
            where = await self.pool.run(lambda c: c.append(raw, snap, flags, date), retry=False)
        except ServerUnavailable:
            if self.journal is None:
                raise
            await self.journal.append(p, maybe_sent=True)  # replay looks it up by Message-ID first
            return None
        finally:
            if not isinstance(snap, bytes):
                snap.close()
        # Stored. No checkpoint since the APPEND returned: the version sent is marked before a
        # cancellation could make us send it again; the rest runs to its end (shielded).
        p.mark_clean(data_gen + meta)
        with trio.CancelScope(shield=True):
            return await self._stored(p, folder, where, size)

    async def _stored(self, p: PendingFile, folder: Folder, where: tuple[int, int] | None,
                      size: int) -> Msg | None:
        """After an APPEND of *p* to *folder*: show the new message, expunge what it replaces."""
        raw = folder.raw or b""
        name = p.name or "a new version"
        log.info("stored %s in %s (%d bytes)", name, raw.decode("ascii", "replace"), size)
        if self.journal is not None and p.journal_seq is not None:
            try:
                await self.journal.supersede(p)
            except Exception as e:  # noqa: BLE001 - the replay finds it stored (same bytes) at worst
                log.warning("stored %s, but its offline record could not be dropped (%s)", name, e)
        # The message is on the server now: nothing below may make us store it
        # again, so what follows is best effort and only logged.
        new: Msg | None = None
        try:
            new = await self._new_msg(folder, where)
        except Exception as e:  # noqa: BLE001
            log.warning("stored %s but could not list it yet (%s); the next sync shows it", p.name, e)
            if folder.state is not None:
                folder.state.checked = 0.0
        if p.gone:
            # Removed (rm, or replaced by a rename) while its APPEND was on the way: what the
            # user last saw is no such file, so the copies we stored of it go too (by UID).
            # Whatever it was to replace is left alone.
            for copy in ([new] if new is not None else []) + p.superseded:
                if copy.gone:
                    continue
                try:
                    await self.delete_exact(copy)
                    log.info("%s was removed while it was being stored; its stored copy is removed too", name)
                except Exception as e:  # noqa: BLE001 - a message the user removed stays: never a loss
                    log.warning("%s was removed while it was being stored, but its stored copy stays (%s)",
                                name, e)
            p.superseded.clear()
            return None
        old = p.replaces
        if old is not None and not old.gone:
            try:
                await self.delete_exact(old)
                old.successor = new
            except NotFound:
                pass
            except Exception as e:  # noqa: BLE001 - a duplicate, never a loss
                log.warning("stored the new version of %s but could not remove the old one (%s); "
                            "both are on the server", old.name, e)
        for earlier in list(p.superseded):  # our own copies of earlier versions of this file
            p.superseded.remove(earlier)
            if earlier is new or earlier.gone:
                continue
            try:
                await self.delete_exact(earlier)
                earlier.successor = new
            except NotFound:
                pass
            except Exception as e:  # noqa: BLE001 - a duplicate, never a loss
                log.warning("stored %s but could not remove the copy of its earlier version (%s); "
                            "both are on the server", name, e)
        if p.dirty:
            # Written (or renamed, or its flags set) while the APPEND was on its way: the
            # server has an earlier version. Store the newer one too; this copy goes once it is.
            if new is not None:
                p.superseded.append(new)
            else:
                log.warning("%s changed while it was being stored; without APPENDUID the copy of the "
                            "earlier version cannot be told apart and stays on the server", name)
            log.info("%s changed while it was being stored; the newer version follows", name)
            self._pendings.add(p)
            self._touch(p)
            return None
        p.committed = new
        self._pendings.discard(p)
        if folder.pending.get(p.name) is p:
            del folder.pending[p.name]
            self.notifier.entry_removed(folder.inode, p.name)
        if new is not None and p.name and p.name != new.name:
            folder.aliases[p.name] = new
        return new

    async def delete_exact(self, m: Msg) -> None:
        """\\Deleted + UID EXPUNGE of this one UID (an edit's old version; never into the trash)."""
        if "UIDPLUS" not in self.caps:
            log.warning("kept the old version of %s: without UIDPLUS it cannot be removed safely", m.name)
            return
        await self._expunge(m)

    async def _expunge(self, m: Msg) -> None:
        """\\Deleted + UID EXPUNGE of exactly this UID, under the message's lock, then forget it."""
        async with self._msg_lock(m):
            if m.gone:
                raise NotFound(f"{m.name} is gone")
            src, uidv, uid = m.folder.raw, m.uidvalidity, m.uid
            assert src is not None
            await self.pool.run(lambda c: c.expunge_message(src, uidv, uid), folder=src, retry=False)
            self._forget_msg(m)

    def _all_pending(self) -> list[PendingFile]:
        return [p for p in self._pendings if not p.gone]

    async def uploader(self) -> None:
        """Background task: APPEND released files once their writer has been quiet."""
        while True:
            now = self.clock()
            due = [p for p in self._all_pending()
                   if p.opens == 0 and p.dirty and p.ready_at is not None and p.ready_at <= now]
            for p in due:
                try:
                    if p.too_large:
                        await self._set_aside_too_large(p)
                        continue
                    await self._commit_logged(p)
                except Exception:  # noqa: BLE001 - a bug costs this file's turn, never the uploader
                    log.exception("storing %s failed unexpectedly; trying again in 60 s", p.name)
                    p.ready_at = self.clock() + 60
            self._upload_wakeup = trio.Event()
            with trio.move_on_after(0.1 if self._all_pending() else 5):
                await self._upload_wakeup.wait()

    async def _set_aside(self, p: PendingFile, why: str) -> bool:
        """Save the bytes of a file that cannot be stored to the unsent folder; False if that fails too."""
        try:
            path = await trio.to_thread.run_sync(p.save_copy, self.unsent_dir, limiter=self._spool_limiter)
        except OSError as err:
            log.critical("could not save %s to %s either (%s); keeping it in memory",
                         p.name or "an edited message", self.unsent_dir, err)
            return False
        log.error("%s; its bytes are saved in %s", why, path)
        self._discard(p)
        self.notifier.entry_removed(p.folder.inode, p.name)
        return True

    async def _set_aside_too_large(self, p: PendingFile) -> None:
        """A file cut short by EFBIG: not mail (the writer stopped half way); saved aside, not stored."""
        name = p.name or "an edited message"
        if p.size == 0:  # `truncate -s 50G x.eml`: nothing was written
            log.info("%s was refused as too large and holds nothing; dropped", name)
            self._discard(p)
            self.notifier.entry_removed(p.folder.inode, p.name)
            return
        try:
            path = await trio.to_thread.run_sync(p.save_copy, self.unsent_dir, limiter=self._spool_limiter)
        except OSError as err:
            log.critical("could not save %s to %s (%s); keeping it in memory", name, self.unsent_dir, err)
            p.ready_at = self.clock() + 60
            return
        log.warning("%s grew past the size limit (EFBIG) and is not stored as mail; what was written "
                    "(%d bytes) is saved in %s", name, p.size, path)
        self._discard(p)
        self.notifier.entry_removed(p.folder.inode, p.name)

    async def _commit_logged(self, p: PendingFile) -> None:
        """The uploader's commit: any failure is this file's, retried with a growing delay.

        A server that is away is waited for as long as the mount lives. Any other failure
        (NO, a value imaplib cannot send, a bug) counts, and after REFUSED_APPEND_TRIES of
        them the bytes are saved to the unsent folder: never retried forever, never dropped.
        """
        try:
            await self.commit(p)
            p.failures = p.refusals = 0
        except Exception as e:  # noqa: BLE001 - keep the bytes, retry later
            p.failures += 1
            p.last_error = str(e) if isinstance(e, ImapfsError) else f"{type(e).__name__}: {e}"
            name = p.name or "an edited message"
            where = (p.folder.raw or b"").decode("ascii", "replace")
            if not isinstance(e, ServerUnavailable):
                p.refusals += 1
                if p.refusals >= REFUSED_APPEND_TRIES:
                    # Retrying forever helps nobody (e.g. "Can't save a zero byte message");
                    # keep the bytes where the user can find them.
                    if isinstance(e, CommandFailed):
                        why = f"the server refused to store {name} in {where} {p.refusals} times ({e})"
                    else:
                        why = f"could not store {name} in {where} ({p.refusals} attempts failed: {p.last_error})"
                    if not await self._set_aside(p, why):
                        p.ready_at = self.clock() + 60
                    return
            delay = min(60.0, 2.0 ** min(p.failures, 6))
            p.ready_at = self.clock() + delay
            log.error("could not store %s in %s: %s (will retry in %.0f s)", name, where, p.last_error, delay)

    async def flush_all(self) -> None:
        """At unmount: store every pending file; save what cannot be stored, never drop it."""
        for p in self._all_pending():
            if p.too_large:
                await self._set_aside_too_large(p)
                continue
            for _ in range(3):  # a version that changed during its APPEND is stored next
                if p.gone or not p.dirty:
                    break
                try:
                    with trio.fail_after(60):
                        await self.commit(p)
                except Exception as e:  # noqa: BLE001
                    err = str(e) if isinstance(e, ImapfsError) else f"{type(e).__name__}: {e}"
                    try:
                        path = await trio.to_thread.run_sync(p.save_copy, self.unsent_dir)
                    except OSError as oserr:
                        log.critical("could not store %s in %s at unmount (%s) nor save it in %s (%s)",
                                     p.name or "an edited message", p.folder.raw, err, self.unsent_dir, oserr)
                        break
                    log.error("could not store %s in %s at unmount (%s); its bytes are saved in %s",
                              p.name or "an edited message", p.folder.raw, err, path)
                    break

    # -- folders ---------------------------------------------------------------

    def _wire(self, f: Folder) -> bytes:
        """The server's name of an existing folder (or implied parent): never re-derived from its path.

        A directory name is not always the decoding of the server's name (a
        non-canonical one shows with `` #raw``), so commands must use what
        LIST said.
        """
        wire = f.raw if f.raw is not None else f.wire
        if wire is None:  # made before anything listed it (cannot happen for LIST's own nodes)
            wire = codec.encode_mutf7(codec.path_to_folder(f.path, self.delimiter)).encode("ascii")
        return wire

    def _server_name(self, parent: Folder, name: str) -> bytes:
        """Server name of a new folder *name* in *parent*; ValueError/UnicodeError if it cannot have one.

        The parent's own server name + delimiter + the new level in mUTF-7.
        The level must be exactly the name it will show under
        (codec.new_level), so mkdir/rename never make a folder that then
        appears under another name.
        """
        level = codec.new_level(name, self.delimiter)
        if parent is self.root:
            return level
        if self.delimiter is None:
            raise ValueError("the server has no folder hierarchy (no sub-folders)")
        return self._wire(parent) + self.delimiter.encode("utf-8") + level

    def _check_new_name(self, parent: Folder, name: str) -> bytes:
        """Everything that can be checked before a CREATE or RENAME is sent → the new server name."""
        if name in parent.children or name in parent.pending:
            raise Exists(name)
        if parent is self.root and codec.is_inbox(name):
            raise Exists(f"{name}: INBOX exists (its name is case-insensitive)")
        try:
            return self._server_name(parent, name)
        except (ValueError, UnicodeError) as e:
            raise InvalidArgument(f"cannot name a folder {name!r}: {e}") from None

    @staticmethod
    def _refused_name(e: CommandFailed) -> ImapfsError:
        """A NO to CREATE/RENAME that refuses the name ([CANNOT], or no code at all) is EINVAL."""
        text = str(e)
        if ": NO " in text:
            reply = text.rsplit(": NO ", 1)[1]  # the server's words come last (the name could hold ": NO ")
            if reply.startswith("[CANNOT]") or not reply.startswith("["):
                return InvalidArgument(text)
        return e

    async def mkdir(self, parent: Folder, name: str) -> Folder:
        """CREATE; the server is left as it was whenever this raises (except a lost connection after CREATE)."""
        self._writable()
        raw = self._check_new_name(parent, name)
        if self.journal is not None and self.is_offline():
            return await self.journal.mkdir(parent, name, raw)
        try:
            await self.pool.run(lambda c: c.create(raw), retry=False)
        except ServerUnavailable:
            if self.journal is None:
                raise
            return await self.journal.mkdir(parent, name, raw)  # replay: "already existed" is fine
        except CommandFailed as e:
            raise self._refused_name(e) from None
        try:
            await self.pool.run(lambda c: c.subscribe(raw))
        except (CommandFailed, ServerUnavailable) as e:
            log.warning("created %r but could not subscribe to it: %s", raw, e)
        log.info("created folder %s", raw.decode("ascii", "replace"))
        await self.refresh_folders(force=True)
        child = parent.children.get(name)
        if child is not None and child.raw == raw:
            return child
        if not self.pool.online:
            # CREATE was answered OK, the listing could not be read: show it; the next LIST confirms.
            child = self._ensure_path(parent.path + (name,), None)
            child.raw, child.wire, child.selectable = raw, raw, True
            return child
        # The server keeps it under another name (or not at all): take back what this CREATE made.
        log.warning("the server created %r but does not list it under that name; deleting it again", raw)
        try:
            await self.pool.run(lambda c: c.delete_if_empty(raw), retry=False)
        except ImapfsError as e:
            log.error("could not delete %r again (%s); it may show under another name", raw, e)
        await self.refresh_folders(force=True)
        raise InvalidArgument(f"the server does not keep a folder named {name!r} under that name")

    def _online_only(self, what: str) -> None:
        if self.is_offline():
            self.note_offline(("only-online", what), f"{what} needs the server; try again when it is back")
            raise Offline(f"{what} needs the server")

    async def rmdir(self, parent: Folder, name: str) -> None:
        self._writable()
        self._online_only("removing a folder")
        f = parent.children.get(name)
        if f is None:
            raise NotFound(name)
        if f.path == ("INBOX",):
            raise Unsupported("INBOX cannot be removed")
        if f.children or f.pending:
            raise NotEmpty(name)
        if f.selectable:
            st = await self.sync(f, force=True)
            if st is not None and st.msgs:
                raise NotEmpty(name)
        raw = self._wire(f)
        await self.pool.deselect_everywhere(raw)
        try:
            if f.selectable:
                await self.pool.run(lambda c: c.delete_if_empty(raw), retry=False)
            else:
                await self.pool.run(lambda c: c.delete(raw), retry=False)
        except (CommandFailed, NotFound):
            if f.selectable:
                raise
            # An implied parent (\Noselect) may not exist as a mailbox at all:
            # gone from LIST is what rmdir asked for.
            await self.refresh_folders(force=True)
            if name in parent.children:
                raise
            return
        try:
            await self.pool.run(lambda c: c.unsubscribe(raw))
        except (CommandFailed, ServerUnavailable):
            pass
        log.info("deleted folder %s", raw.decode("ascii", "replace"))
        del parent.children[name]
        self._remove_subtree(f)
        self._drop(f, parent.inode, name)

    async def rename_folder(self, f: Folder, dest: Folder, name: str) -> None:
        """RENAME; checked before it is sent, and undone if the server keeps another name."""
        self._writable()
        self._online_only("renaming a folder")
        if f.path == ("INBOX",):
            raise Unsupported("INBOX cannot be renamed (IMAP would move its messages instead)")
        node: Folder | None = dest
        while node is not None:
            if node is f:
                raise InvalidArgument("cannot move a folder into itself")
            node = node.parent
        new_raw = self._check_new_name(dest, name)
        old_raw = self._wire(f)
        new_path = dest.path + (name,)
        await self.pool.deselect_everywhere(old_raw)
        try:
            await self.pool.run(lambda c: c.rename(old_raw, new_raw), retry=False)
        except CommandFailed as e:
            raise self._refused_name(e) from None
        log.info("renamed folder %s to %s", old_raw.decode("ascii", "replace"), new_raw.decode("ascii", "replace"))
        self.pool.forget_selected(old_raw)
        # Keep the nodes and their inodes: the kernel moved its dentry to the
        # new name and still holds these inodes.
        assert f.parent is not None
        del f.parent.children[f.name]
        old_path = f.path
        stack = [f]
        while stack:
            n = stack.pop()
            n.path = new_path + n.path[len(old_path):]
            for attr in ("raw", "wire"):
                w = getattr(n, attr)
                if w is not None and (w == old_raw or w.startswith(old_raw + (self.delimiter or "").encode("utf-8"))):
                    setattr(n, attr, new_raw + w[len(old_raw):])
            stack.extend(n.children.values())
        f.parent = dest
        dest.children[name] = f
        await self.refresh_folders(force=True)
        if dest.children.get(name) is f or not self.pool.online:
            return
        log.warning("the server renamed %r to %r but does not list it under that name; renaming it back",
                    old_raw, new_raw)
        try:
            await self.pool.run(lambda c: c.rename(new_raw, old_raw), retry=False)
        except ImapfsError as e:
            log.error("could not rename %r back to %r (%s)", new_raw, old_raw, e)
        await self.refresh_folders(force=True)
        raise InvalidArgument(f"the server does not keep a folder named {name!r} under that name")

    async def flags(self, m: Msg) -> tuple[str, ...]:
        """Current flags, asked of the server (they change under us)."""
        raw, uidv = m.folder.raw, m.uidvalidity
        assert raw is not None
        if self.is_offline() or m.folder.local:
            return tuple(f for f in m.flags if f.lower() != "\\recent")
        try:
            it = await self.pool.run(lambda c: c.fetch_items(raw, uidv, m.uid, "(UID FLAGS)"), folder=raw)
        except ServerUnavailable:
            self.note_offline((raw, "flags"), "flags shown as last seen")
            return tuple(f for f in m.flags if f.lower() != "\\recent")
        fl = it.get(b"FLAGS") or []
        m.flags = tuple(s for s in (f.decode("utf-8", "replace") if isinstance(f, bytes) else str(f) for f in fl)
                        if s.lower() != "\\recent")
        return m.flags

    async def state_text(self) -> str:
        """``user.imapfs.state``: online or offline, what is owed to the server, the last error."""
        pool = self.pool
        state = "offline (forced by -o offline)" if pool.forced_offline else ("online" if pool.online else "offline")
        lines = [f"state: {state}", f"server: {pool.account.label}"]
        if self.journal is not None:
            lines += await self.journal.state_lines()
        else:
            lines.append("pending changes: 0 (no local cache)")
        uploading = len(self._all_pending())
        if uploading:
            lines.append(f"files waiting to be stored: {uploading}")
        if pool.last_error:
            lines.append(f"last error: {pool.last_error}")
        return "\n".join(lines) + "\n"

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
