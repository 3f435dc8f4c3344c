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
import re
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pyfuse3
import trio

from .errors import ImapfsError, InvalidArgument, Offline, ProtocolError, ReadOnly, Unsupported, errno_for
from .imapproto import parse_internaldate
from .model import Folder, Msg, Node, check_date, split_flags
from .naming import PARTS_PREFIX, PARTS_SUFFIX, parts_names
from .parts import PartFile, Parts, PartsDir
from .pending import PendingFile
from .tree import Tree

if TYPE_CHECKING:  # mount hands the Bulk in
    from .bulk import Bulk

log = logging.getLogger(__name__)

# What the inode table holds and a lookup finds: the tree's nodes and the .parts ones.
FsNode = Folder | Msg | PendingFile | PartsDir | PartFile

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

MESSAGE_TIMEOUT = 3600.0  # immutable per inode; removal is invalidated explicitly
FOLDER_TIMEOUT = 1.0
BLOCK = 4096

XATTR_UID = b"user.imap.uid"
XATTR_UIDVALIDITY = b"user.imap.uidvalidity"
XATTR_FLAGS = b"user.imap.flags"
XATTR_DATE = b"user.imap.internaldate"
XATTR_MIME = b"user.mime_type"
XATTR_STATE = b"user.imapfs.state"
XATTR_CACHED = b"user.imapfs.cached"
# Bulk prefetch (imapfs.bulk, docs/offline.md): unlisted, asked for by name by `imapfs prefetch`.
# getxattr, not setxattr, so that a read-only mount (where the VFS refuses setxattr) can be prefetched.
XATTR_PREFETCH = b"user.imapfs.prefetch"  # progress of the jobs of a folder (and sub-folders) or a message's folder
XATTR_PREFETCH_START = b"user.imapfs.prefetch.start"  # start or join those jobs; answers how many folders
XATTR_PREFETCH_STOP = b"user.imapfs.prefetch.stop"  # stop them; answers how many were running
XATTR_SECTION = b"user.imap.section"
MESSAGE_XATTRS = [XATTR_FLAGS, XATTR_DATE, XATTR_UID, XATTR_UIDVALIDITY]
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND


# Answers to a request that made no sense, not failures of ours: no warning.
_USER_ERRNOS = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.EROFS, errno.EINVAL, errno.ESTALE, errno.EFBIG}


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
            if code in _USER_ERRNOS or isinstance(e, Offline):  # Offline: the tree logged it per folder
                log.debug("%s: %s", fn.__name__, e)
            else:
                log.warning("%s failed: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(code) from None
        except Exception:  # noqa: BLE001 - a bug must cost one request, not the mount
            log.exception("unexpected error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return cast(F, wrapper)  # functools.wraps keeps fn's signature; mypy cannot see it


class _PartsRef:
    """A NAME.parts entry in a folder listing, before anyone looks inside."""

    __slots__ = ("msg",)

    def __init__(self, msg: Msg) -> None:
        self.msg = msg

    @property
    def inode(self) -> int:
        return self.msg.inode | 1

    @property
    def gone(self) -> bool:
        return self.msg.gone


class KernelNotifier:
    """Tree → kernel invalidations, queued so they never run inside a request.

    ``active`` is cleared at unmount: after ``pyfuse3.close()`` the kernel
    channel is gone and a queued invalidation would fail.
    """

    def __init__(self) -> None:
        self.active = False  # set by the mount once the kernel channel exists

    def entry_removed(self, parent_inode: int, name: str) -> None:
        if not self.active:
            return
        try:
            pyfuse3.invalidate_entry_async(parent_inode, os.fsencode(name), ignore_enoent=True)
        except Exception as e:  # noqa: BLE001 - before init or after close
            log.debug("could not invalidate %r: %s", name, e)

    def inode_changed(self, inode: int) -> None:
        if not self.active:
            return

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
    # FUSE_POSIX_ACL was measured not to stop ls -l's per-entry ACL queries (the kernel
    # still asks on every listing), so there is no reason to change permission semantics.
    enable_acl = False

    def __init__(self, tree: Tree, parts: Parts | None = None, *, uid: int | None = None,
                 gid: int | None = None, read_only: bool = True, file_mode: int = 0o600,
                 dir_mode: int = 0o700, bulk: Bulk | None = None) -> None:
        super().__init__()
        self.tree = tree
        self.bulk = bulk  # None with cache_dir=none: nothing to prefetch into
        self.parts = parts  # None: -o noparts
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.read_only = read_only
        # -o file_mode=/dir_mode=/umask= (private by default: with allow_other, only the
        # owner reads the mail). Read-only views (.parts, -o ro) drop the write bits.
        self.file_mode = file_mode
        self.dir_mode = dir_mode
        self._dirs: dict[int, Sequence[tuple[int, str, FsNode | _PartsRef]]] = {}
        self._next_fh = 1

    # -- attributes -----------------------------------------------------------

    def _attrs(self, node: FsNode | _PartsRef) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.inode
        a.generation = 0
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_blksize = BLOCK
        if isinstance(node, PendingFile):
            if node.stored:
                assert node.committed is not None  # stored: it stands for committed
                c = self._attrs(node.committed)
                c.st_ino = node.inode
                return c
            a.st_mode = stat.S_IFREG | self.file_mode
            a.st_nlink = 1
            a.st_size = node.size
            a.st_blocks = (node.size + 511) // 512
            ns = int((node.date if node.date is not None else node.mtime) * 1_000_000_000)
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns
            a.entry_timeout = a.attr_timeout = 0.0
        elif isinstance(node, PartFile):
            a.st_mode = stat.S_IFREG | (self.file_mode & ~0o222)
            a.st_nlink = 1
            size = node.size
            if size is None:
                # Not known until the part is fetched (see Parts.ensure_size): a
                # provisional size the kernel must not keep; lookup/getattr give the real one.
                size = node.entry.part.size * 3 // 4
                a.entry_timeout = a.attr_timeout = 0.0
            else:
                a.entry_timeout = a.attr_timeout = MESSAGE_TIMEOUT
            a.st_size = size
            a.st_blocks = (size + 511) // 512
            ns = node.msg.date * 1_000_000_000
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns
        elif isinstance(node, (PartsDir, _PartsRef)):
            a.st_mode = stat.S_IFDIR | (self.dir_mode & ~0o222)
            a.st_nlink = 1
            a.st_size = 0
            ns = node.msg.date * 1_000_000_000
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns
            a.entry_timeout = a.attr_timeout = MESSAGE_TIMEOUT
        elif isinstance(node, Msg):
            a.st_mode = stat.S_IFREG | (self.file_mode & ~0o222 if self.read_only else self.file_mode)
            a.st_nlink = 1
            a.st_size = node.size
            a.st_blocks = (node.size + 511) // 512
            ns = node.date * 1_000_000_000
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns
            a.entry_timeout = a.attr_timeout = MESSAGE_TIMEOUT
        else:
            a.st_mode = stat.S_IFDIR | (self.dir_mode & ~0o222 if self.read_only else self.dir_mode)
            a.st_nlink = 1  # unknown: tells find(1) not to count subdirectories
            a.st_size = 0
            ns = int(self.tree.mount_time * 1_000_000_000)
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns
            a.entry_timeout = a.attr_timeout = FOLDER_TIMEOUT
        return a

    def _node(self, inode: int) -> FsNode:
        return cast(FsNode, self.tree.node(inode))  # Entry, the table's protocol: one of these kinds

    def _folder(self, inode: int) -> Folder:
        node = self._node(inode)
        if isinstance(node, PartsDir):
            raise pyfuse3.FUSEError(errno.EROFS)  # .parts trees are a read-only view
        if not isinstance(node, Folder):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return node

    async def _lookup(self, parent: FsNode, name: str) -> FsNode:
        if isinstance(parent, PartsDir):
            if self.parts is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return await self.parts.lookup(parent, name)
        if not isinstance(parent, Folder):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if self.parts is not None and name.endswith(PARTS_SUFFIX) and name not in parent.children:
            # Listed as .STEM.parts; STEM.parts (the name before issue 12) still resolves, unlisted.
            # Stems start with a date, never with a dot.
            stem = name[: -len(PARTS_SUFFIX)].removeprefix(PARTS_PREFIX)
            m = await self.tree.lookup(parent, stem + ".eml")
            if isinstance(m, Msg) and m.stem == stem:
                return self.parts.dir_for(m)
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.tree.lookup(parent, name)

    # -- lookups --------------------------------------------------------------

    @_guarded
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        sname = os.fsdecode(name)
        if sname == ".":
            node: FsNode = parent
        elif sname == ".." and isinstance(parent, Folder):
            node = parent.parent or parent
        elif sname == "..":
            assert isinstance(parent, PartsDir)  # the one other kind of directory
            node = self._node(parent.msg.folder.inode)  # good enough for a .parts tree
        else:
            node = await self._lookup(parent, sname)
        await self._sized(node)
        self.tree.remember(node.inode)
        return self._attrs(node)

    async def _sized(self, node: FsNode) -> None:
        if isinstance(node, PartFile) and node.size is None and self.parts is not None:
            await self.parts.ensure_size(node)

    @_guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        await self._sized(node)
        return self._attrs(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, n in inode_list:
            try:
                self.tree.forget(inode, n)
            except Exception:  # noqa: BLE001 - forget must never raise
                log.exception("forget(%d) failed", inode)

    # -- directories ----------------------------------------------------------

    @_guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        entries: Sequence[tuple[int, str, FsNode | _PartsRef]]
        if isinstance(node, PartsDir):
            if self.parts is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            entries = await self.parts.listing(node)
        elif isinstance(node, Folder):
            entries = await self.tree.listing(node)
            if self.parts is not None:
                entries = self._with_parts(entries)
        else:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
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

    def _with_parts(self, entries: list[tuple[int, str, Node]]) -> list[tuple[int, str, FsNode | _PartsRef]]:
        """Each message's ``.STEM.parts`` right after its ``STEM.eml`` (cookie + 1, inode + 1).

        A dot-name, so ``ls -l`` and ``ls`` skip it: ``ls -l`` asks two or three
        getxattr of every entry it shows, and pyfuse3 answers each in about
        60 µs (docs/performance.md, issue 12). ``grep -r`` and ``find`` still
        see it. A light stand-in is listed; the real directory node is made when
        the kernel first asks for that inode (most are never opened).
        """
        out: list[tuple[int, str, FsNode | _PartsRef]] = []
        for cookie, name, node in entries:
            out.append((cookie, name, node))
            if isinstance(node, Msg):
                out.append((cookie + 1, parts_names(node.stem)[0], _PartsRef(node)))
        return out

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files ----------------------------------------------------------------

    @_guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if isinstance(node, (Folder, PartsDir)):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if isinstance(node, PartFile):
            if flags & WRITE_FLAGS:
                raise pyfuse3.FUSEError(errno.EROFS)
            await self._sized(node)
            if node.mode == "broken":  # logged when the directory was listed
                raise pyfuse3.FUSEError(errno.EIO)
            return pyfuse3.FileInfo(fh=node.inode, keep_cache=True, direct_io=False)
        if isinstance(node, PendingFile) and node.stored:
            assert node.committed is not None  # stored: it stands for committed
            node = node.committed
        writing = bool(flags & WRITE_FLAGS)
        if writing and self.read_only:
            raise ReadOnly("mounted read-only")
        if isinstance(node, PendingFile):
            self.tree.opened(node)
            return pyfuse3.FileInfo(fh=node.inode, keep_cache=False, direct_io=False)
        assert isinstance(node, Msg)  # what is left: directories and the other files are handled above
        if writing:
            p = await self.tree.open_for_write(node, truncate=bool(flags & os.O_TRUNC))
            self.tree.opened(p)
            return pyfuse3.FileInfo(fh=p.inode, keep_cache=False, direct_io=False)
        # A message's bytes never change for its inode: the page cache may keep them.
        node.folder.open_files += 1
        return pyfuse3.FileInfo(fh=node.inode, keep_cache=True, direct_io=False)

    @_guarded
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._folder(parent_inode)
        if not stat.S_ISREG(mode) and stat.S_IFMT(mode):
            raise pyfuse3.FUSEError(errno.EPERM)
        p = self.tree.create_file(parent, os.fsdecode(name))
        self.tree.opened(p)
        self.tree.remember(p.inode)
        return pyfuse3.FileInfo(fh=p.inode, keep_cache=False, direct_io=False), self._attrs(p)

    @_guarded
    async def read(self, fh: int, off: int, size: int) -> bytes:
        node = self._node(fh)
        if isinstance(node, PendingFile):
            if node.stored:
                assert node.committed is not None  # stored: it stands for committed
                return await self.tree.read(node.committed, off, size)
            return await self.tree.read_pending(node, off, size)
        if isinstance(node, PartFile):
            assert self.parts is not None
            return await self.parts.read(node, off, size)
        if not isinstance(node, Msg):
            raise pyfuse3.FUSEError(errno.EISDIR)
        return await self.tree.read(node, off, size)

    @_guarded
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        node = self._node(fh)
        if not isinstance(node, PendingFile) or node.gone:
            raise pyfuse3.FUSEError(errno.EBADF)
        return await self.tree.write_pending(node, off, buf)  # EFBIG past max_message / APPENDLIMIT

    @_guarded
    async def fsync(self, fh: int, datasync: bool) -> None:
        node = self._node(fh)
        if isinstance(node, PendingFile) and node.dirty and not node.gone:
            await self.tree.commit(node)  # the caller hears if the server refused it

    @_guarded
    async def release(self, fh: int) -> None:
        try:
            node = self._node(fh)
        except ImapfsError:
            return
        if isinstance(node, PendingFile):
            self.tree.released(node)
        elif isinstance(node, Msg):
            node.folder.open_files = max(0, node.folder.open_files - 1)

    # -- changes --------------------------------------------------------------

    @_guarded
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        target = self._node(fh) if fh is not None else node
        if isinstance(target, PendingFile) and fh is not None and fields.update_size and target.committed is not None:
            self.tree.reopen(target)  # ftruncate on a handle whose file was already stored
        if isinstance(target, PendingFile) and not target.stored:
            if fields.update_size:
                await self.tree.truncate_pending(target, attr.st_size)  # sparse; EFBIG past the limit
            if fields.update_mtime:
                when = attr.st_mtime_ns // 1_000_000_000
                try:
                    self.tree.set_pending_date(target, when)
                except InvalidArgument:  # `touch -d 1900-01-01`: rsync -a must not fail on it
                    log.debug("%s: mtime %d cannot be an INTERNALDATE; the server's time is used",
                              target.name, when)
            return self._attrs(target if fh is None else node)
        if fields.update_size:
            if self.read_only:
                raise ReadOnly("mounted read-only")
            raise Unsupported("truncate a message by opening it for writing")
        # chmod, chown and utimens on stored mail: accepted and ignored (cp -a, rsync -a
        # must not fail); the time shown stays the INTERNALDATE.
        return self._attrs(node)

    @_guarded
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self._folder(parent_inode)
        sname = os.fsdecode(name)
        node = await self._lookup(parent, sname)
        if isinstance(node, (Folder, PartsDir)):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if isinstance(node, PendingFile):
            if node.committed is None:
                self.tree.unlink_pending(node)
                return
            node = node.committed
        assert isinstance(node, Msg)  # what else a folder holds
        if parent.aliases.get(sname) is node:
            del parent.aliases[sname]
        await self.tree.delete(node)

    @_guarded
    async def rename(self, parent_old: int, name_old: bytes, parent_new: int, name_new: bytes,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        src = self._folder(parent_old)
        dst = self._folder(parent_new)
        old, new = os.fsdecode(name_old), os.fsdecode(name_new)
        node = await self._lookup(src, old)
        if isinstance(node, PartsDir):
            raise pyfuse3.FUSEError(errno.EROFS)
        if isinstance(node, Folder):
            await self.tree.rename_folder(node, dst, new)
            return
        if isinstance(node, PendingFile) and not node.stored:
            self.tree.rename_pending(node, dst, new)
            return
        if isinstance(node, PendingFile):
            assert node.committed is not None  # stored (the unstored case is above)
            node = node.committed
        assert isinstance(node, Msg)  # what else a folder holds
        if src is dst:
            if src.aliases.get(old) is node:  # a writer's name: rsync renaming its temp file
                del src.aliases[old]
                src.aliases[new] = node
                return
            raise Unsupported("a message's name is derived from it; it can only move to another folder")
        try:
            existing = await self.tree.lookup(dst, new)
        except ImapfsError:
            existing = None
        if existing is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        await self.tree.move(node, dst, new)

    @_guarded
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        folder = await self.tree.mkdir(self._folder(parent_inode), os.fsdecode(name))
        self.tree.remember(folder.inode)
        return self._attrs(folder)

    @_guarded
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.tree.rmdir(self._folder(parent_inode), os.fsdecode(name))

    # -- extended attributes --------------------------------------------------

    def _xnode(self, inode: int) -> FsNode:
        node = self._node(inode)
        if isinstance(node, PendingFile) and node.stored:
            assert node.committed is not None  # stored: it stands for committed
            return node.committed
        return node

    @_guarded
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        node = self._xnode(inode)
        if isinstance(node, Msg):
            return list(MESSAGE_XATTRS)
        if isinstance(node, PendingFile):
            return [XATTR_FLAGS, XATTR_DATE]
        if isinstance(node, PartFile):
            return [XATTR_MIME, XATTR_SECTION]
        if isinstance(node, Folder) and node.inode == pyfuse3.ROOT_INODE:
            return [XATTR_STATE]
        return []

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        # ls -l asks security.selinux and system.posix_acl_* of every entry; the kernel
        # cannot be told to stop asking without losing xattrs altogether, so answer
        # those before any other work (see docs/performance.md). A new exception each
        # time: raising one shared instance chained a traceback, two frames, onto it per
        # request, kept for good (80,000 frames after two ls -l of 10,000 messages, and
        # every full GC pass walked them: issue 12, stop 17).
        if not name.startswith(b"user."):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return await self._getxattr(inode, name, ctx)

    @_guarded
    async def _getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._xnode(inode)
        if name == XATTR_STATE and isinstance(node, Folder) and node.inode == pyfuse3.ROOT_INODE:
            return (await self.tree.state_text()).encode()
        if name in (XATTR_PREFETCH, XATTR_PREFETCH_START, XATTR_PREFETCH_STOP) and isinstance(node, (Folder, Msg)):
            return await self._prefetch(node, name)
        if isinstance(node, Msg):
            if name == XATTR_CACHED:  # not listed: asked for by `imapfs prefetch`
                return b"1" if await self.tree.is_cached(node) else b"0"
            if name == XATTR_UID:
                return str(node.uid).encode()
            if name == XATTR_UIDVALIDITY:
                return str(node.uidvalidity).encode()
            if name == XATTR_FLAGS:
                flags = await self.tree.flags(node)
                return " ".join(flags).encode("utf-8")
            if name == XATTR_DATE:
                return format_internaldate(node.date)
        if isinstance(node, PartFile):
            if name == XATTR_MIME:
                return node.mime_type.encode()
            if name == XATTR_SECTION:
                return node.entry.section.encode()
        if isinstance(node, PendingFile):
            if name == XATTR_FLAGS:
                return " ".join(node.flags or ()).encode("utf-8")
            if name == XATTR_DATE and node.date is not None:
                return format_internaldate(node.date)
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def _prefetch(self, node: Folder | Msg, name: bytes) -> bytes:
        """The bulk prefetch xattrs: short answers to start/stop (os.getxattr may ask twice)."""
        if self.bulk is None:
            return b"state nocache\n"
        if name == XATTR_PREFETCH_START:
            return f"started {await self.bulk.start(node)}\n".encode()
        if name == XATTR_PREFETCH_STOP:
            return f"stopped {self.bulk.stop(node)}\n".encode()
        return self.bulk.progress(node).encode("utf-8", "replace")

    @_guarded
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self._xnode(inode)
        if self.read_only or isinstance(node, (PartFile, PartsDir)):
            raise ReadOnly("mounted read-only")
        text = value.decode("utf-8", "replace").strip().rstrip("\0")
        if isinstance(node, PendingFile):
            if name == XATTR_FLAGS:
                self.tree.set_pending_flags(node, split_flags(text))
            elif name == XATTR_DATE:
                self.tree.set_pending_date(node, parse_date_xattr(text))
            # Anything else (user.imap.uid of the source, other tools' xattrs) is
            # accepted and dropped: rsync -X and cp -a must not fail on it.
            return
        if not isinstance(node, Msg):
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        if name == XATTR_FLAGS:
            await self.tree.set_flags(node, split_flags(text))
        elif name in (XATTR_UID, XATTR_UIDVALIDITY, XATTR_DATE):
            current = await self._getxattr(inode, name, ctx)
            if text != current.decode():
                raise pyfuse3.FUSEError(errno.EPERM)  # read-only: they name the stored message
        else:
            raise pyfuse3.FUSEError(errno.ENOTSUP)

    @_guarded
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self._xnode(inode)
        if self.read_only:
            raise ReadOnly("mounted read-only")
        if name == XATTR_FLAGS and isinstance(node, Msg):
            await self.tree.set_flags(node, [])
        elif name == XATTR_FLAGS and isinstance(node, PendingFile):
            self.tree.set_pending_flags(node, [])
        else:
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


_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def format_internaldate(epoch: int) -> bytes:
    """Seconds since the epoch → IMAP date-time in UTC, as APPEND takes it."""
    t = time.gmtime(epoch)
    return (f"{t.tm_mday:02d}-{_MONTHS[t.tm_mon - 1]}-{t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000").encode()


def parse_date_xattr(text: str) -> int:
    """``user.imap.internaldate``: an IMAP date-time, or seconds since the epoch (ASCII digits).

    Only dates that can be sent (1970 to 9999) are accepted: anything else is
    refused here with EINVAL rather than fail the APPEND later.
    """
    if re.fullmatch(r"[0-9]{1,20}", text):
        when = int(text)
    else:
        try:
            when = parse_internaldate(text.encode("utf-8", "replace"))
        except ProtocolError:
            raise InvalidArgument(f"not an IMAP date-time: {text[:80]!r}") from None
    check_date(when)
    return when
