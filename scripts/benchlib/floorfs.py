"""The trivial pyfuse3 filesystem: the floor imapfs's listing and reads are held against.

    python floorfs.py MANIFEST MOUNTPOINT

MANIFEST holds NUL-separated pairs ``name\\0path\\0``: one regular file per pair
in the root directory, with that name and the bytes (and mtime) of that local
file, all read into memory before mounting.  Every request is answered from
memory: ``getxattr`` says ENODATA (so ``ls -l`` costs 2 per entry, as on
imapfs), ``listxattr`` is empty, ``flush`` is declined (ENOSYS, as imapfs
does).  Attribute and entry timeouts, ``keep_cache`` and the mount options
are imapfs's (imapfs/fs.py, imapfs/mount.py), so the request pattern is the
same and only the work per request differs.  Runs in the foreground until
unmounted (scripts/bench unmounts it).  scripts/benchlib/floorfs.c is the
same filesystem in C against libfuse3.
"""
from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio

FILE_TIMEOUT = 3600.0   # imapfs MESSAGE_TIMEOUT
DIR_TIMEOUT = 1.0       # imapfs FOLDER_TIMEOUT
ROOT = pyfuse3.ROOT_INODE


class Floor(pyfuse3.Operations):
    """Names, attributes and bytes in lists indexed by inode - ROOT - 1."""

    def __init__(self, entries: list[tuple[bytes, bytes, int]]) -> None:
        super().__init__()
        self.names = [n for n, _, _ in entries]
        self.data = [d for _, d, _ in entries]
        self.by_name = {n: ROOT + 1 + i for i, n in enumerate(self.names)}
        uid, gid = os.getuid(), os.getgid()
        self.attrs: list[pyfuse3.EntryAttributes] = []
        for i, (_, data, mtime_ns) in enumerate(entries):
            a = pyfuse3.EntryAttributes()
            a.st_ino = ROOT + 1 + i
            a.st_mode = stat.S_IFREG | 0o644
            a.st_nlink = 1
            a.st_size = len(data)
            a.st_blksize = 4096
            a.st_blocks = (len(data) + 511) // 512
            a.st_uid, a.st_gid = uid, gid
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = mtime_ns
            a.entry_timeout = a.attr_timeout = FILE_TIMEOUT
            self.attrs.append(a)
        r = pyfuse3.EntryAttributes()
        r.st_ino = ROOT
        r.st_mode = stat.S_IFDIR | 0o755
        r.st_nlink = 1
        r.st_blksize = 4096
        r.st_uid, r.st_gid = uid, gid
        r.entry_timeout = r.attr_timeout = DIR_TIMEOUT
        self.root = r

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        if inode == ROOT:
            return self.root
        i = inode - ROOT - 1
        if not 0 <= i < len(self.attrs):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attrs[i]

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        inode = self.by_name.get(name) if parent_inode == ROOT else None
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attrs[inode - ROOT - 1]

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(inode)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != ROOT:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        for i in range(start_id, len(self.names)):
            if not pyfuse3.readdir_reply(token, self.names[i], self.attrs[i], i + 1):
                return

    async def releasedir(self, fh: int) -> None:
        return None

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        self._attr(inode)
        if inode == ROOT:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise pyfuse3.FUSEError(errno.EROFS)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True, direct_io=False)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self.data[fh - ROOT - 1][off:off + size]

    async def release(self, fh: int) -> None:
        return None

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        raise pyfuse3.FUSEError(errno.ENODATA)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return []

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = sum(len(d) for d in self.data) // 4096 + 1
        s.f_files = len(self.data) + 1
        s.f_namemax = 255
        return s


def load(manifest: str) -> list[tuple[bytes, bytes, int]]:
    with open(manifest, "rb") as f:
        fields = f.read().split(b"\0")
    out = []
    for name, path in zip(fields[0:-1:2], fields[1::2]):
        with open(path, "rb") as f:
            data = f.read()
        out.append((name, data, os.stat(path).st_mtime_ns))
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    ops = Floor(load(argv[0]))
    opts = set(pyfuse3.default_options) | {"noatime", "fsname=floor", "subtype=floorpy"}
    pyfuse3.init(ops, argv[1], opts)
    try:
        trio.run(pyfuse3.main)
    except BaseException:
        pyfuse3.close(unmount=False)
        raise
    pyfuse3.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
