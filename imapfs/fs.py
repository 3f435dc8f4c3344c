"""The FUSE layer: pyfuse3 ``Operations`` over a :class:`~imapfs.tree.Tree`.

Its one job is to translate: requests into tree calls, nodes into
``EntryAttributes``, domain errors into ``FUSEError``. Every handler is
wrapped by :func:`_guarded`, because any exception other than ``FUSEError``
that leaves a handler ends ``pyfuse3.main()`` and with it the mount.

Kernel caching: a message's bytes and attributes never change for its inode
(the inode is derived from UIDVALIDITY and UID), so files are opened with
``keep_cache`` and long attribute/entry timeouts; the tree invalidates names
explicitly when it learns that a message or folder is gone. ``flush`` is
left unimplemented (ENOSYS), which makes the kernel stop sending it.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3
import trio

from .errors import ImapfsError, ReadOnly, errno_for
from .tree import Folder, Msg, Tree

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

MESSAGE_TIMEOUT = 3600.0  # immutable per inode; removal is invalidated explicitly
FOLDER_TIMEOUT = 1.0
BLOCK = 4096

XATTR_UID = b"user.imap.uid"
XATTR_UIDVALIDITY = b"user.imap.uidvalidity"
XATTR_FLAGS = b"user.imap.flags"


def _guarded(fn: F) -> F:
    """Let only FUSEError out of a handler; log what it replaces."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except ImapfsError as e:
            code = errno_for(e)
            if code == errno.ENOENT:
                log.debug("%s: %s", fn.__name__, e)
            else:
                log.warning("%s failed: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(code) from None
        except Exception:  # noqa: BLE001 - a bug must cost one request, not the mount
            log.exception("unexpected error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


class KernelNotifier:
    """Tree → kernel invalidations, queued so they never run inside a request."""

    def entry_removed(self, parent_inode: int, name: str) -> None:
        try:
            pyfuse3.invalidate_entry_async(parent_inode, os.fsencode(name), ignore_enoent=True)
        except Exception as e:  # noqa: BLE001 - before init or after close
            log.debug("could not invalidate %r: %s", name, e)

    def inode_changed(self, inode: int) -> None:
        async def inval() -> None:
            try:
                await trio.to_thread.run_sync(pyfuse3.invalidate_inode, inode, True)
            except Exception as e:  # noqa: BLE001
                log.debug("could not invalidate inode %d: %s", inode, e)

        try:
            trio.lowlevel.spawn_system_task(inval)
        except RuntimeError:
            pass


class Operations(pyfuse3.Operations):
    """Serves the tree. Collaborators come from outside (see mount.py)."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, tree: Tree, *, uid: int | None = None, gid: int | None = None,
                 read_only: bool = True) -> None:
        super().__init__()
        self.tree = tree
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.read_only = read_only
        self._dirs: dict[int, list[tuple[int, str, Any]]] = {}
        self._next_fh = 1

    # -- attributes -----------------------------------------------------------

    def _attrs(self, node: Any) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.inode
        a.generation = 0
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_blksize = BLOCK
        if isinstance(node, Msg):
            a.st_mode = stat.S_IFREG | (0o444 if self.read_only else 0o644)
            a.st_nlink = 1
            a.st_size = node.size
            a.st_blocks = (node.size + 511) // 512
            ns = node.date * 1_000_000_000
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns
            a.entry_timeout = a.attr_timeout = MESSAGE_TIMEOUT
        else:
            a.st_mode = stat.S_IFDIR | (0o555 if self.read_only else 0o755)
            a.st_nlink = 1  # unknown: tells find(1) not to count subdirectories
            a.st_size = 0
            ns = int(self.tree.mount_time * 1_000_000_000)
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns
            a.entry_timeout = a.attr_timeout = FOLDER_TIMEOUT
        return a

    def _folder(self, inode: int) -> Folder:
        node = self.tree.node(inode)
        if not isinstance(node, Folder):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return node

    # -- lookups --------------------------------------------------------------

    @_guarded
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext = None) -> pyfuse3.EntryAttributes:
        parent = self._folder(parent_inode)
        sname = os.fsdecode(name)
        if sname == ".":
            node: Any = parent
        elif sname == "..":
            node = parent.parent or parent
        else:
            node = await self.tree.lookup(parent, sname)
        self.tree.remember(node.inode)
        return self._attrs(node)

    @_guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext = None) -> pyfuse3.EntryAttributes:
        return self._attrs(self.tree.node(inode))

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for inode, n in inode_list:
            try:
                self.tree.forget(inode, n)
            except Exception:  # noqa: BLE001 - forget must never raise
                log.exception("forget(%d) failed", inode)

    # -- directories ----------------------------------------------------------

    @_guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        folder = self._folder(inode)
        entries = await self.tree.listing(folder)
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = entries
        return fh

    @_guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self._dirs.get(fh)
        if entries is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        # entries are in cookie order: skip what the kernel already has
        lo, hi = 0, len(entries)
        while lo < hi:
            mid = (lo + hi) // 2
            if entries[mid][0] <= start_id:
                lo = mid + 1
            else:
                hi = mid
        for cookie, name, node in entries[lo:]:
            if node.gone:
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attrs(node), cookie):
                return
            self.tree.remember(node.inode)

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files ----------------------------------------------------------------

    @_guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.tree.node(inode)
        if isinstance(node, Folder):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise ReadOnly("writing messages is not supported yet")
        return pyfuse3.FileInfo(fh=inode, keep_cache=True, direct_io=False)

    @_guarded
    async def read(self, fh: int, off: int, size: int) -> bytes:
        node = self.tree.node(fh)
        if not isinstance(node, Msg):
            raise pyfuse3.FUSEError(errno.EISDIR)
        return await self.tree.read(node, off, size)

    async def release(self, fh: int) -> None:
        pass

    # -- extended attributes --------------------------------------------------

    @_guarded
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        node = self.tree.node(inode)
        if isinstance(node, Msg):
            return [XATTR_FLAGS, XATTR_UID, XATTR_UIDVALIDITY]
        return []

    @_guarded
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        node = self.tree.node(inode)
        if isinstance(node, Msg):
            if name == XATTR_UID:
                return str(node.uid).encode()
            if name == XATTR_UIDVALIDITY:
                return str(node.uidvalidity).encode()
            if name == XATTR_FLAGS:
                flags = await self.tree.flags(node)
                return " ".join(flags).encode("utf-8")
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    # -- the file system ------------------------------------------------------

    @_guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        count, total = self.tree.stats()
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK
        used = (total + BLOCK - 1) // BLOCK
        free = 0 if self.read_only else (1 << 40) // BLOCK  # unknown quota: report 1 TiB free
        s.f_blocks = used + free
        s.f_bfree = s.f_bavail = free
        s.f_files = count + (1 << 20)
        s.f_ffree = s.f_favail = 1 << 20
        s.f_namemax = 255
        return s
