"""The inode table: every node the kernel may name, and how often the kernel names it.

Message inodes are UID-ordered and stable (docs/architecture.md, "Inode
numbers"); folders and ``.parts`` files get :func:`~imapfs.model.stable_inode`
of their key; files being written count up from ``PENDING_INODE_BASE``.

A node leaves the table only when it is gone from the server *and* the kernel
has forgotten it (lookup count 0), so an inode the kernel still holds never
resolves to another node (invariant 4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .errors import NotFound
from .model import MSG_INODE_BIT, PENDING_INODE_BASE, ROOT_INODE, Folder, Msg, NodeKey, Notifier, key_hash, stable_inode

_BUCKET_MASK = (1 << 28) - 1


class Entry(Protocol):
    """What the table holds: a folder, a message, a file being written, a ``.parts`` node."""

    inode: int
    gone: bool

    def key(self) -> NodeKey: ...


class Inodes:
    """Inode → node, the kernel's lookup counts, and the hooks told when a node goes."""

    def __init__(self, root: Folder, notifier: Notifier) -> None:
        self.notifier = notifier
        self._table: dict[int, Entry] = {ROOT_INODE: root}
        self._buckets: dict[tuple[tuple[str, ...], int], int] = {}
        self._bucket_keys: dict[int, tuple[tuple[str, ...], int]] = {}
        self._lookups: dict[int, int] = {}
        self._next_pending = PENDING_INODE_BASE
        self._derive: Callable[[Msg], Entry] | None = None
        self._on_drop: list[Callable[[Entry], None]] = []

    # -- hooks (parts) --------------------------------------------------------

    def derive_with(self, derive: Callable[[Msg], Entry]) -> None:
        """``NAME.parts`` nodes are made by *derive* when the kernel first asks for a message's inode | 1."""
        self._derive = derive

    def on_drop(self, hook: Callable[[Entry], None]) -> None:
        """Call *hook* with every node that leaves the tree."""
        self._on_drop.append(hook)

    # -- numbers --------------------------------------------------------------

    def msg_inode(self, m: Msg) -> int:
        """UID-ordered and stable: the folder's (path, UIDVALIDITY) picks a bucket by hash."""
        key = (m.folder.path, m.uidvalidity)
        b = self._buckets.get(key)
        if b is None:
            b = key_hash(("B",) + key) & _BUCKET_MASK
            while self._bucket_keys.get(b, key) != key:  # two folders, one bucket: probe on
                b = (b + 1) & _BUCKET_MASK
            self._buckets[key] = b
            self._bucket_keys[b] = key
        return MSG_INODE_BIT | (b << 33) | (m.uid << 1)

    def alloc(self, node: Entry) -> int:
        """Give *node* its inode (from its key) and enter it in the table."""
        if isinstance(node, Msg):
            ino = self.msg_inode(node)
            self._table[ino] = node  # a new incarnation of the same message takes over
            node.inode = ino
            return ino
        key = node.key()
        ino = stable_inode(key)
        while True:
            other = self._table.get(ino)
            if other is None or other is node:
                break
            if other.key() == key:  # the same object's new incarnation: take over
                break
            ino = ino + 1 if ino < MSG_INODE_BIT - 1 else 1025  # collision: probe on, deterministically
        self._table[ino] = node
        node.inode = ino
        return ino

    def next_pending(self) -> int:
        """The inode of a new file being written (not stable: it is not mail yet)."""
        self._next_pending += 1
        return self._next_pending

    def enter(self, node: Entry) -> None:
        """Enter a node that has its number already (a file being written)."""
        self._table[node.inode] = node

    # -- lookups ----------------------------------------------------------------

    def node(self, inode: int) -> Entry:
        n = self._table.get(inode)
        if n is None:
            if inode & MSG_INODE_BIT and inode & 1 and inode < PENDING_INODE_BASE and self._derive is not None:
                m = self._table.get(inode & ~1)
                if isinstance(m, Msg):
                    return self._derive(m)  # NAME.parts, made when first asked for
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
        n = self._table.get(inode)
        if n is not None and n.gone and inode != ROOT_INODE:
            del self._table[inode]

    # -- removal ----------------------------------------------------------------

    def drop(self, node: Entry, parent_inode: int, name: str) -> None:
        """*node* left the tree: gone, the kernel told, the hooks told."""
        node.gone = True
        self.discard(node)
        self.notifier.entry_removed(parent_inode, name)
        for hook in self._on_drop:
            hook(node)

    def discard(self, node: Entry) -> None:
        """Leave the inode table now, or at the kernel's last forget if it still holds the inode."""
        node.gone = True
        if self._lookups.get(node.inode, 0) == 0 and self._table.get(node.inode) is node:
            del self._table[node.inode]

    def discard_pending(self, inode: int) -> None:
        """A file being written went: its number leaves the table unless the kernel holds it."""
        if self._lookups.get(inode, 0) == 0:
            self._table.pop(inode, None)
