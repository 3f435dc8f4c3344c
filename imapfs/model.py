"""The nodes of the tree: folders, messages, their state, and how they get stable inodes.

Data only, no I/O: what :mod:`imapfs.tree` keeps, :mod:`imapfs.content` reads,
:mod:`imapfs.writes` and :mod:`imapfs.uploads` change, and :mod:`imapfs.offline`
overlays. Invariants are in docs/architecture.md ("The cache and its invariants").
"""

from __future__ import annotations

import bisect
import datetime
import hashlib
import logging
import re
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Union

import trio

from . import naming
from .errors import InvalidArgument

if TYPE_CHECKING:
    from .pending import PendingFile
    from .records import RawMeta, Status
    from .session import Pool

log = logging.getLogger(__name__)

ROOT_INODE = 1
CHUNK = 4 * 1024 * 1024  # messages up to this size are fetched whole; larger in chunks
# Where a new message goes when its folder is gone from the server (online and at replay):
# stored there, never dropped (invariant 3).
RECOVERED = b"imapfs-recovered"
PENDING_INODE_BASE = 1 << 62  # files being written: not stable, they are not mail yet
# Messages: MSG_INODE_BIT | folder bucket << 33 | UID << 1, and NAME.parts at that | 1. So inode
# order is UID order: GNU grep/fts walk directories of more than 10,000 entries in inode order,
# and read-ahead only works when that order is the folder's.
MSG_INODE_BIT = 1 << 61
NodeKey = tuple[object, ...]  # what names a node for good: ("F", path), ("M", path, UIDVALIDITY, UID), ...
# A flag we may send: a system flag, or a keyword, which is an atom (RFC 3501 flag-keyword = atom):
# 1*ATOM-CHAR, any CHAR (US-ASCII 1-127) except ( ) { SP CTL % * " \ ]. "[" is an ATOM-CHAR.
# \Recent is the server's alone (dropped before sending).
_FLAG = re.compile(r"^(\\(Seen|Answered|Flagged|Deleted|Draft|Recent)"
                   r"|[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+)$", re.I | re.A)
MAX_FLAG_LEN = 1000  # bytes of one keyword we send (RFC 5322 lines are 998; servers limit them too)
MAX_FLAGS = 256  # keywords set on one message at once
# INTERNALDATEs we send: 1970-01-01 to 9999-12-31 (4-digit years; imaplib fails outside)
MIN_DATE = 0
MAX_DATE = 253402300799


def split_flags(text: str) -> list[str]:
    """A ``user.imap.flags`` value: flags separated by ASCII blanks (not by other Unicode spaces)."""
    return [f for f in re.split(r"[ \t\r\n]+", text) if f]


def check_flags(flags: list[str] | tuple[str, ...]) -> None:
    """InvalidArgument unless every flag can be sent as it is (an atom per RFC 3501, bounded)."""
    if len(flags) > MAX_FLAGS:
        raise InvalidArgument(f"more than {MAX_FLAGS} flags")
    for f in flags:
        if not sendable_flag(f):
            raise InvalidArgument(f"not a valid IMAP flag or keyword: {f[:80]!r}")


def check_date(when: int | None) -> None:
    """InvalidArgument unless *when* (seconds since the epoch) can be sent as an INTERNALDATE."""
    if when is not None and not (isinstance(when, int) and MIN_DATE <= when <= MAX_DATE):
        raise InvalidArgument(f"INTERNALDATE out of range (1970 to 9999): {when!r}")


def sendable_flag(flag: str) -> bool:
    """Whether *flag* can be sent as it is (see check_flags)."""
    return len(flag) <= MAX_FLAG_LEN and bool(_FLAG.match(flag))


def without_recent(flags: Iterable[str]) -> tuple[str, ...]:
    """*flags* without ``\\Recent``, which is the server's alone: never sent, never shown."""
    return tuple(f for f in flags if f.lower() != "\\recent")


class Notifier(Protocol):
    """How the tree tells the kernel that a name went away or an inode changed."""

    def entry_removed(self, parent_inode: int, name: str) -> None: ...

    def inode_changed(self, inode: int) -> None: ...


class NullNotifier:
    def entry_removed(self, parent_inode: int, name: str) -> None:
        pass

    def inode_changed(self, inode: int) -> None:
        pass


def key_hash(key: NodeKey) -> int:
    return int.from_bytes(hashlib.blake2b(repr(key).encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "little")


def stable_inode(key: NodeKey) -> int:
    """An inode below MSG_INODE_BIT from *key*, the same on every mount (backups compare inodes)."""
    h = key_hash(key) & (MSG_INODE_BIT - 1)
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

    def key(self) -> NodeKey:
        return ("M", self.folder.path, self.uidvalidity, self.uid)


def status_differs(st: FolderState, status: Status | None) -> bool:
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


class MsgTable(dict[int, "Msg"]):
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

    def update(self, *args: Any, **kw: Any) -> None:
        for uid, m in dict(*args, **kw).items():
            self[uid] = m

    # dict's |= is typed for any mapping and returns Self; this one takes what update takes.
    def __ior__(self, other: Any) -> MsgTable:  # type: ignore[override,misc]
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
    # UIDs whose flags in memory may differ from the cache's: set by a writer that does
    # not write the cache (the offline journal, a one-message flag read).  The next sync
    # writes these even when the server agrees with memory, as the cache's stored
    # mod-sequence moves past them; every other flag in memory equals the cache's.
    flags_unsaved: set[int] = field(default_factory=set)
    # sequential-read detection for body prefetch
    last_read_uid: int = 0
    window: int = 0
    ahead_at: int | None = None  # UID at which a sequential reader triggers the next read-ahead

    def after(self, uid: int) -> list[int]:
        return self.uids[bisect.bisect_right(self.uids, uid):]

    def before(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        return self.uids[i - 1] if i > 0 else None


def flags_unsaved(m: Msg) -> None:
    """Note that ``m.flags`` was set in memory only: the next sync writes it to the cache."""
    st = m.folder.state
    if st is not None and st.uidvalidity == m.uidvalidity:
        st.flags_unsaved.add(m.uid)


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

    def key(self) -> NodeKey:
        return ("F", self.path)


Node = Union[Folder, Msg, "PendingFile"]  # what a folder directory lists


class OfflineNotes:
    """Whether a request would try the server, and one log line per thing (a folder, a
    kind of request) while it would not: a server away must not flood the log."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._noted: set[Hashable] = set()

    def is_offline(self) -> bool:
        """True when a request would not even try the server (forced, or waiting to reconnect)."""
        return not self.pool.available()

    def note(self, key: Hashable, what: str) -> None:
        """One log line per *key* (not per file) while the server is away."""
        if key in self._noted:
            return
        self._noted.add(key)
        log.warning("offline: %s (%s)", what, self.pool.last_error or "server unreachable")

    def back_online(self) -> None:
        """The server answered: the next time it is away is worth a line again."""
        self._noted.clear()

    @property
    def any(self) -> bool:
        return bool(self._noted)
