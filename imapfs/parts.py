"""``NAME.parts/`` directories: a message's MIME parts as files.

The structure is the server's BODYSTRUCTURE (fetched in batches for messages
read in sequence); names come from :mod:`imapfs.mime`. Each part file has
one source for both its size and its bytes, fixed when its directory is
first listed, so ``st_size`` is exact before the first read:

* ``decoded``: our decoding of ``BODY[section]`` (text parts are converted to
  UTF-8). The raw section comes from the whole message when that is small
  (cut locally and checked against BODYSTRUCTURE's sizes) or from
  ``BODY.PEEK[section]``; the size is known after decoding.
* ``binary``: ``BINARY.PEEK[section]`` with ``BINARY.SIZE`` (RFC 3516), for
  non-text parts of large messages on servers with BINARY: reading one
  attachment transfers that attachment only, in ranges.
* ``raw``: ``BODY.PEEK[section]`` as is: attached messages (``.eml``) and
  parts that cannot be decoded (``.raw``).

A server whose answers contradict its BODYSTRUCTURE gets a log line and EIO
for that file only.

Nothing heavy runs on the trio loop: cutting sections out of a message and
decoding a part run in a worker thread once their input is over
:data:`SMALL`, and a part too big for the memory cache is decoded once into
a :class:`Spool` file that every later read is served from.
"""

from __future__ import annotations

import ast
import functools
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import IO, Any, TypeVar

import cachetools
import trio

from . import mime, transfer
from .connection import Connection
from .errors import CommandFailed, ImapfsError, NotFound, ProtocolError, ServerUnavailable, StaleError
from .inodes import Entry
from .model import CHUNK, Msg, NodeKey
from .tree import Tree

log = logging.getLogger(__name__)

STRUCT_WINDOW_MAX = 256
TAIL = 64 * 1024  # bytes read around an announced BINARY.SIZE to confirm it
_IDENTITY = {"7bit", "8bit", "binary", ""}
SMALL = 64 * 1024  # decoding more input than this runs in a worker thread
# Cutting a message into parts and sizing an attachment are scans in C (bytes.find,
# bytes.translate: about 0.5 ms per MiB); up to this much they run on the loop, where
# they cost less than the hand-off to a worker (1-4 ms under load; stop 18).
SMALL_SCAN = 256 * 1024
CPU_THREADS = 2  # worker threads for that (2 cores; the GIL makes more pointless)
SPOOL_BUDGET = 512 * 1024 * 1024  # bytes of decoded parts kept in spool files (LRU)

T = TypeVar("T")


class _Spooled:
    __slots__ = ("file", "size", "users", "dead")

    def __init__(self, file: IO[bytes], size: int) -> None:
        self.file = file
        self.size = size
        self.users = 0  # reads under way in threads: the file is closed only when none is
        self.dead = False


def _write_spool(directory: str | None, data: bytes) -> IO[bytes]:
    f = tempfile.TemporaryFile(prefix="imapfs-part-", dir=directory, buffering=0)  # unlinked (O_TMPFILE)
    try:
        view = memoryview(data)
        while view:
            view = view[f.write(view):]
    except BaseException:
        f.close()
        raise
    return f


def _pread(fd: int, size: int, offset: int) -> bytes:
    out = []
    while size > 0:
        b = os.pread(fd, size, offset)
        if not b:
            break
        out.append(b)
        size -= len(b)
        offset += len(b)
    return b"".join(out)


class Spool:
    """Decoded parts too big for the memory cache, each decoded once into an
    unlinked temporary file, kept least-recently-used under a byte budget.

    Without it such a part was fetched and decoded again for every 128 KiB
    ``read()`` (issue 11). Files are unlinked at creation, so nothing is left
    behind, whatever way the daemon ends; the budget may be exceeded by the
    one part just written when it alone is larger. Writes and reads run in
    worker threads; a file is closed only when no read of it is under way.
    """

    def __init__(self, budget: int = SPOOL_BUDGET, directory: str | None = None) -> None:
        self.budget = budget
        self.directory = directory
        self.used = 0
        self._files: OrderedDict[int, _Spooled] = OrderedDict()
        self._making: dict[int, trio.Event] = {}
        self._io = trio.CapacityLimiter(4)
        self._warned = False

    def __contains__(self, key: int) -> bool:
        return key in self._files

    async def put(self, key: int, data: bytes) -> None:
        """Keep *data* for *key* (OSError if it cannot be written: disk full...)."""
        f = await trio.to_thread.run_sync(_write_spool, self.directory, data, limiter=self._io)
        self.discard(key)
        self._files[key] = _Spooled(f, len(data))
        self.used += len(data)
        while self.used > self.budget and len(self._files) > 1:
            self.discard(next(iter(self._files)))

    async def read(self, key: int, offset: int, size: int) -> bytes | None:
        """*size* bytes at *offset*, or None if *key* is not spooled."""
        e = self._files.get(key)
        if e is None:
            return None
        self._files.move_to_end(key)
        e.users += 1
        try:
            return await trio.to_thread.run_sync(_pread, e.file.fileno(), size, offset, limiter=self._io)
        finally:
            e.users -= 1
            if e.dead and e.users == 0:
                e.file.close()

    async def read_or_make(self, key: int, offset: int, size: int, make: Callable[[], Awaitable[bytes]]) -> bytes:
        """Like :meth:`read`; a part not spooled yet is made with ``await make()``,
        once however many readers ask at the same time."""
        while True:
            got = await self.read(key, offset, size)
            if got is not None:
                return got
            ev = self._making.get(key)
            if ev is None:
                break
            await ev.wait()  # made by another reader (or failed: then try ourselves)
        ev = self._making[key] = trio.Event()
        try:
            data = await make()
            try:
                await self.put(key, data)
            except OSError as err:
                if not self._warned:
                    self._warned = True
                    log.warning("cannot spool a decoded part (%s): big parts are decoded again on each read", err)
        finally:
            del self._making[key]
            ev.set()
        return data[offset:offset + size]

    def discard(self, key: int) -> None:
        e = self._files.pop(key, None)
        if e is None:
            return
        self.used -= e.size
        e.dead = True
        if e.users == 0:
            e.file.close()


class PartsDir:
    """``NAME.parts`` of a message, or of a message attached inside it."""

    __slots__ = ("msg", "entry", "inode", "children", "gone", "lock")

    def __init__(self, msg: Msg, entry: mime.PartEntry | None) -> None:
        self.msg = msg
        self.entry = entry
        self.inode = 0
        self.children: list[tuple[str, PartNode]] | None = None  # (name, node) once loaded
        self.gone = False
        self.lock: trio.Lock | None = None  # made when first loaded (100k messages: no 100k locks)

    def key(self) -> NodeKey:
        m = self.msg
        return ("D", m.folder.path, m.uidvalidity, m.uid, self.entry.section if self.entry else "")


class PartFile:
    """One file in a ``.parts`` directory."""

    __slots__ = ("msg", "entry", "name", "mode", "size", "inode", "gone")

    def __init__(self, msg: Msg, entry: mime.PartEntry, name: str, mode: str, size: int | None) -> None:
        self.msg = msg
        self.entry = entry
        self.name = name
        self.mode = mode  # decoded | binary | raw | broken
        self.size = size  # None: not known yet (see Parts.ensure_size)
        self.inode = 0
        self.gone = False

    def key(self) -> NodeKey:
        m = self.msg
        return ("P", m.folder.path, m.uidvalidity, m.uid, self.entry.section, self.name)

    @property
    def mime_type(self) -> str:
        if self.entry.kind == "message" and self.mode == "raw" and not self.name.endswith(mime.RAW_SUFFIX):
            return "message/rfc822"
        return mime.mime_type(self.entry.part)


PartNode = PartsDir | PartFile  # what a .parts directory holds


class _Unparsed:
    """A BODYSTRUCTURE value as fetched (see :meth:`Parts._fetched`)."""

    __slots__ = ("value",)

    def __init__(self, value: list[Any]) -> None:
        self.value = value


class Parts:
    """Builds and serves ``.parts`` trees on top of the message tree."""

    def __init__(self, tree: Tree, struct_cache: int = 20000) -> None:
        self.tree = tree
        self._dirs: dict[int, PartsDir] = {}  # by message inode
        self._structs: cachetools.LRUCache = cachetools.LRUCache(maxsize=struct_cache)
        self._last_struct: dict[bytes, int] = {}  # folder → last UID whose structure was loaded
        self._window: dict[bytes, int] = {}
        self._cpu_limiter = trio.CapacityLimiter(CPU_THREADS)
        self.content = tree.content  # decoded part bytes share the message cache
        self.inodes = tree.inodes  # part nodes get their inodes there
        self.spool = Spool(SPOOL_BUDGET, directory=tree.spool_dir)
        self.inodes.on_drop(self._dropped)
        self.inodes.derive_with(self.dir_for)
        # BODYSTRUCTURE with every body batch: .parts listings need no extra trip
        self.content.fetch_with("BODYSTRUCTURE", self._fetched)

    # -- nodes ----------------------------------------------------------------

    def dir_for(self, m: Msg) -> PartsDir:
        """The message's NAME.parts node, at inode ``m.inode | 1`` (made on first use)."""
        d = self._dirs.get(m.inode)
        if d is None or d.msg is not m:
            d = PartsDir(m, None)
            d.inode = m.inode | 1
            self._dirs[m.inode] = d
        return d

    def _fetched(self, m: Msg, items: dict) -> None:
        """A BODYSTRUCTURE that came with a body batch: kept as fetched, parsed only
        when the message's ``.parts`` is first listed (:meth:`_parsed`). Most bodies
        are read without their parts (``cat``, ``grep --exclude-dir``), and parsing
        each one on the trio loop as its batch arrived was 30 % of the parts' time
        there in a cold grep (issue 12, stop 17)."""
        value = items.get(b"BODYSTRUCTURE")
        if not isinstance(value, list) or not value or m.inode in self._structs:
            return  # not a structure at all: _root asks again and degrades with a log line
        self._structs[m.inode] = _Unparsed(value)
        disk = self.tree.disk
        if disk is not None and m.folder.raw is not None:
            disk.put_structure(m.folder.raw, m.uidvalidity, m.uid, repr(value).encode("ascii"))

    def _dropped(self, node: Entry) -> None:
        if isinstance(node, Msg):
            d = self._dirs.pop(node.inode, None)
            if d is not None:
                self._release(d)
            self._structs.pop(node.inode, None)

    def _release(self, d: PartsDir) -> None:
        d.gone = True
        for _name, child in d.children or []:
            if isinstance(child, PartsDir):
                self._release(child)
            child.gone = True
            if isinstance(child, PartFile):
                self.spool.discard(child.inode)
            self.inodes.discard(child)
        self.inodes.discard(d)

    # -- listing ----------------------------------------------------------------

    async def listing(self, d: PartsDir) -> list[tuple[int, str, PartNode]]:
        children = await self._load(d)
        return [(i, name, node) for i, (name, node) in enumerate(children, 1)]

    async def lookup(self, d: PartsDir, name: str) -> PartNode:
        for n, node in await self._load(d):
            if n == name:
                return node
        raise NotFound(name)

    def _parsed(self, m: Msg) -> mime.BodyPart | None:
        """The message's part tree if known, parsed now if it was kept unparsed."""
        root = self._structs.get(m.inode)
        if isinstance(root, _Unparsed):
            try:
                root = mime.parse_bodystructure(root.value)
            except mime.MimeError:
                self._structs.pop(m.inode, None)  # ask the server, as if never fetched
                return None
            self._structs[m.inode] = root
        return root

    async def _root(self, m: Msg) -> mime.BodyPart:
        root = self._parsed(m)
        if root is not None:
            return root
        st = m.folder.state
        raw, uidv = m.folder.raw, m.uidvalidity
        assert raw is not None
        disk = self.tree.disk
        if disk is not None and (self.tree.is_offline() or self.content.on_disk(m)):
            saved = await disk.call(disk.store.get_structure, raw, uidv, m.uid)
            if saved is not None:
                try:
                    root = mime.parse_bodystructure(ast.literal_eval(saved.decode("ascii")))
                    self._structs[m.inode] = root
                    return root
                except (ValueError, SyntaxError, UnicodeDecodeError, RecursionError, MemoryError, mime.MimeError):
                    pass  # unreadable: ask the server
        uids = [m.uid]
        if st is not None and st.uidvalidity == uidv:
            # Listing .parts directories in UID order (grep -r, find): fetch ahead.
            prev = st.before(m.uid)
            w = self._window.get(raw, 0)
            w = min(STRUCT_WINDOW_MAX, max(8, w * 2)) if prev is not None and prev == self._last_struct.get(raw) else 0
            self._window[raw] = w
            for uid in st.after(m.uid)[:w]:
                n = st.msgs.get(uid)
                if n is not None and n.inode not in self._structs:
                    uids.append(uid)
        self._last_struct[raw] = m.uid

        def fetch(c: Connection) -> list[tuple[int, dict]]:
            return c.fetch_uids(raw, uidv, uids, "(UID BODYSTRUCTURE)")

        for uid, it in await self.tree.pool.run(fetch, folder=raw):
            n = st.msgs.get(uid) if st is not None else (m if uid == m.uid else None)
            if n is None or b"BODYSTRUCTURE" not in it:
                continue  # e.g. another client's flag change reported in passing
            try:
                self._structs[n.inode] = mime.parse_bodystructure(it.get(b"BODYSTRUCTURE"))
                if disk is not None:
                    disk.put_structure(raw, uidv, uid, repr(it[b"BODYSTRUCTURE"]).encode("ascii"))
            except mime.MimeError as e:
                log.warning("%r UID %d: unusable BODYSTRUCTURE (%s); showing the message as one part", raw, uid, e)
                self._structs[n.inode] = mime.BodyPart(section="1", size=n.size)
        root = self._parsed(m)
        if root is None:
            raise NotFound(f"{raw!r}: UID {m.uid} is gone (no BODYSTRUCTURE)")
        return root

    async def _load(self, d: PartsDir) -> list[tuple[str, PartNode]]:
        if d.children is not None:
            return d.children
        if d.lock is None:
            d.lock = trio.Lock()
        async with d.lock:
            if d.children is not None:
                return d.children
            m = d.msg
            if m.gone:
                raise NotFound(f"{m.name} was removed from the server")
            try:
                root = await self._root(m)
            except ServerUnavailable as e:
                raise self.content.offline_miss(m, e) from None
            entries = mime.list_entries(root) if d.entry is None else d.entry.children
            sections = await self._local_sections(m, root)
            d.children = await self._build(m, entries, sections)
            return d.children

    async def _local_sections(self, m: Msg, root: mime.BodyPart) -> dict[str, bytes]:
        """Parts cut from the whole message, when it is small enough to fetch whole (or cached)."""
        if m.size > CHUNK:
            return {}
        try:
            whole = await self.content.read(m, 0, m.size)
        except ImapfsError:
            return {}
        return await self._cpu(len(whole), mime.split_sections, whole, root, small=SMALL_SCAN)

    async def _cpu(self, size: int, fn: Callable[..., T], *args: Any, small: int = SMALL) -> T:
        """``fn(*args)``, in a worker thread when its input (*size* bytes) is more than
        *small*: decoding 20 MB on the loop would stall every FUSE request meanwhile."""
        if size <= small:
            return fn(*args)
        return await trio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._cpu_limiter)

    def _mem_limit(self) -> int:
        """Largest part kept whole in the memory cache; bigger ones go to the spool."""
        return min(CHUNK, self.content.maxsize // 4)

    def _served_whole(self, f: PartFile) -> bool:
        return f.mode == "decoded" or (f.size is not None and f.size <= CHUNK)

    async def _keep(self, f: PartFile, data: bytes) -> None:
        """Bytes of a whole-served file we hold anyway: cache them for its reads."""
        if not self._served_whole(f):
            return  # read in ranges from the server
        if len(data) <= self._mem_limit():
            self.content.put((f.inode, 0), data)
            return
        try:
            await self.spool.put(f.inode, data)
        except OSError as err:
            log.warning("cannot spool part %s of UID %d: %s", f.entry.section, f.msg.uid, err)

    async def _build(self, m: Msg, entries: list[mime.PartEntry],
                     sections: dict[str, bytes]) -> list[tuple[str, PartNode]]:
        out: list[tuple[str, PartNode]] = []
        need_body: list[mime.PartEntry] = []  # decoded, raw section not yet at hand
        need_size: list[mime.PartEntry] = []  # binary via BINARY.SIZE
        binary_ok = "BINARY" in self.tree.caps and m.size > CHUNK
        for e in entries:
            if e.section in sections:
                continue
            if e.kind == "message":
                if e.part.encoding.lower() not in _IDENTITY:
                    need_body.append(e)
                # else: its size is BODYSTRUCTURE's; the bytes come on read (checked then)
            elif e.kind == "binary" and binary_ok:
                need_size.append(e)
            elif e.kind == "binary" and m.size > CHUNK:
                pass  # size on first lookup: listing must not download every attachment
            else:
                need_body.append(e)
        fetched: dict[str, bytes] = {}
        sizes: dict[str, int] = {}
        if need_body or need_size:
            fetched, sizes = await self._fetch_sections(m, need_body, need_size)
        for e in entries:
            if e.kind == "message":
                raw = sections.get(e.section)
                if e.part.encoding.lower() in _IDENTITY:
                    f = self._file(m, e, e.name, "raw", len(raw) if raw is not None else e.part.size)
                    if raw is not None:
                        await self._keep(f, raw)
                    out.append((e.name, f))
                else:  # an attached message sent base64: decode it like any part
                    out.extend(await self._decoded(m, e, raw if raw is not None else fetched.get(e.section)))
                sub = PartsDir(m, e)
                self.inodes.alloc(sub)
                out.append((e.dir_name or e.name + ".parts", sub))
                continue
            if e.section in sizes:
                out.append((e.name, self._file(m, e, e.name, "binary", sizes[e.section])))
                continue
            if e.section not in sections and e.section not in fetched and e.kind == "binary" and m.size > CHUNK:
                # no BINARY, or a BINARY.SIZE we could not confirm: sized on first lookup
                out.append((e.name, self._file(m, e, e.name, "decoded", None)))
                continue
            raw = sections.get(e.section, fetched.get(e.section))
            out.extend(await self._decoded(m, e, raw))
        return out

    async def _decoded(self, m: Msg, e: mime.PartEntry, raw: bytes | None) -> list[tuple[str, PartNode]]:
        if raw is None or len(raw) != e.part.size:
            log.error("%r UID %d: part %s is not what BODYSTRUCTURE says (%s bytes, not %d); "
                      "reading it will fail", m.folder.raw, m.uid, e.section,
                      "no" if raw is None else len(raw), e.part.size)
            return [(e.name, self._file(m, e, e.name, "broken", 0))]
        try:
            size = await self._cpu(len(raw), transfer.decoded_size, e, raw, small=SMALL_SCAN)
            if size is not None:
                # An attachment's exact size without decoding it: decoded when read.
                return [(e.name, self._file(m, e, e.name, "decoded", size))]
            data = await self._cpu(len(raw), transfer.decode_part, e, raw)
        except transfer.DecodeError as err:
            name = mime.raw_name(e)
            log.warning("%r UID %d part %s cannot be decoded (%s); serving it raw as %s",
                        m.folder.raw, m.uid, e.section, err, name)
            f = self._file(m, e, name, "raw", len(raw))
            await self._keep(f, raw)
            return [(name, f)]
        f = self._file(m, e, e.name, "decoded", len(data))
        await self._keep(f, data)
        return [(e.name, f)]

    def _file(self, m: Msg, e: mime.PartEntry, name: str, mode: str, size: int | None) -> PartFile:
        f = PartFile(m, e, name, mode, size)
        self.inodes.alloc(f)
        return f

    async def ensure_size(self, f: PartFile) -> None:
        """A lazily sized part (no BINARY, big message): fetch and decode it once, now."""
        if f.size is not None:
            return
        m = f.msg
        raw, uidv = m.folder.raw, m.uidvalidity
        assert raw is not None
        item = f"BODY.PEEK[{f.entry.section}]"
        it = await self.tree.pool.run(lambda c: c.fetch_items(raw, uidv, m.uid, f"(UID {item})"), folder=raw)
        data = it.get(f"BODY[{f.entry.section}]".encode())
        if not isinstance(data, bytes) or len(data) != f.entry.part.size:
            log.error("%r UID %d: part %s is not what BODYSTRUCTURE says", raw, m.uid, f.entry.section)
            f.mode, f.size = "broken", 0
            return
        try:
            decoded = await self._cpu(len(data), transfer.decode_part, f.entry, data)
        except transfer.DecodeError as err:
            # The name was given before we could know; serve the bytes as they are.
            log.warning("%r UID %d part %s cannot be decoded (%s); serving it undecoded",
                        raw, m.uid, f.entry.section, err)
            f.mode, f.size = "raw", len(data)
            await self._keep(f, data)
            return
        f.size = len(decoded)
        await self._keep(f, decoded)

    async def _fetch_sections(self, m: Msg, bodies: list[mime.PartEntry], sizes: list[mime.PartEntry]
                              ) -> tuple[dict[str, bytes], dict[str, int]]:
        raw, uidv, uid = m.folder.raw, m.uidvalidity, m.uid
        assert raw is not None
        items = [f"BODY.PEEK[{e.section}]" for e in bodies] + [f"BINARY.SIZE[{e.section}]" for e in sizes]

        def fetch(c: Connection, items: list[str]) -> dict:
            return c.fetch_items(raw, uidv, uid, "(UID " + " ".join(items) + ")")

        try:
            it = await self.tree.pool.run(lambda c: fetch(c, items), folder=raw)
        except CommandFailed as err:
            if not sizes:
                raise
            # e.g. NO [UNKNOWN-CTE]: Dovecot cannot decode one of them; decode them ourselves.
            log.info("%r UID %d: BINARY.SIZE refused (%s); decoding locally", raw, uid, err)
            bodies, sizes = bodies + sizes, []
            items = [f"BODY.PEEK[{e.section}]" for e in bodies]
            it = await self.tree.pool.run(lambda c: fetch(c, items), folder=raw)
        got: dict[str, bytes] = {}
        for e in bodies:
            v = it.get(f"BODY[{e.section}]".encode())
            if isinstance(v, bytes):
                got[e.section] = v
        announced: dict[str, int] = {}
        for e in sizes:
            v = it.get(f"BINARY.SIZE[{e.section}]".encode())
            if isinstance(v, int):
                announced[e.section] = v
            else:
                log.warning("%r UID %d: no BINARY.SIZE for part %s", raw, uid, e.section)
        return got, await self._check_sizes(m, announced)

    async def _check_sizes(self, m: Msg, announced: dict[str, int]) -> dict[str, int]:
        """Confirm BINARY.SIZE by reading the decoded bytes around its end.

        Dovecot 2.3.19 announced 22020086 for a part whose BINARY[] is
        22020096 bytes; a wrong st_size would cut files short. The tail
        window tells the exact size when the error is under TAIL/2; parts
        it cannot settle are left to local decoding (absent from the result).
        """
        if not announced:
            return {}
        raw, uidv, uid = m.folder.raw, m.uidvalidity, m.uid
        assert raw is not None
        starts = {s: max(0, n - TAIL // 2) for s, n in announced.items()}
        items = " ".join(f"BINARY.PEEK[{s}]<{starts[s]}.{TAIL}>" for s in announced)
        it = await self.tree.pool.run(lambda c: c.fetch_items(raw, uidv, uid, f"(UID {items})"), folder=raw)
        exact: dict[str, int] = {}
        for s, n in announced.items():
            tail = it.get(f"BINARY[{s}]".encode())
            if not isinstance(tail, bytes) or len(tail) >= TAIL:
                log.warning("%r UID %d part %s: cannot confirm BINARY.SIZE %d; decoding it locally", raw, uid, s, n)
                continue
            real = starts[s] + len(tail)
            if real != n:
                log.warning("%r UID %d part %s: the server said BINARY.SIZE %d but has %d bytes; using %d",
                            raw, uid, s, n, real, real)
            exact[s] = real
        return exact

    # -- reading ------------------------------------------------------------------

    async def read(self, f: PartFile, offset: int, size: int) -> bytes:
        m = f.msg
        await self.ensure_size(f)
        assert f.size is not None
        if f.mode == "broken":
            raise ProtocolError(f"part {f.entry.section} of UID {m.uid} does not exist on the server")
        end = min(offset + size, f.size)
        if offset >= end:
            return b""
        if self._served_whole(f):
            if f.size > self._mem_limit():  # decoded once into the spool, read from there
                return await self.spool.read_or_make(f.inode, offset, end - offset, lambda: self._whole(f))
            data = await self.content.cached((f.inode, 0), lambda: self._whole(f))
            return data[offset:end]
        out = []
        pos = offset
        while pos < end:
            idx = pos // CHUNK
            chunk = await self.content.cached((f.inode, idx), functools.partial(self._range, f, idx * CHUNK, CHUNK))
            piece = chunk[pos - idx * CHUNK: end - idx * CHUNK]
            if not piece:
                log.error("%r UID %d part %s: the server sent fewer bytes than it announced (%d)",
                          m.folder.raw, m.uid, f.entry.section, f.size)
                raise ProtocolError("short part")
            out.append(piece)
            pos += len(piece)
        return b"".join(out)

    def _item(self, f: PartFile) -> tuple[str, bytes]:
        s = f.entry.section
        if f.mode == "binary":
            return f"BINARY.PEEK[{s}]", f"BINARY[{s}]".encode()
        return f"BODY.PEEK[{s}]", f"BODY[{s}]".encode()

    async def _fetch_part(self, f: PartFile, partial: str = "") -> Any:
        """The part's section (``<offset.length>`` with *partial*) from the server, as sent."""
        m = f.msg
        if m.gone:
            raise StaleError(f"{m.name} was removed from the server")
        item, key = self._item(f)
        raw, uidv = m.folder.raw, m.uidvalidity
        assert raw is not None
        it = await self.tree.pool.run(lambda c: c.fetch_items(raw, uidv, m.uid, f"(UID {item}{partial})"),
                                      folder=raw)
        return it.get(key)

    async def _whole(self, f: PartFile) -> bytes:
        m = f.msg
        raw = m.folder.raw
        sections = await self._local_sections(m, await self._root(m)) if f.mode != "binary" else {}
        data = sections.get(f.entry.section)
        if data is None:
            data = await self._fetch_part(f)
        if not isinstance(data, bytes) or (f.mode != "binary" and len(data) != f.entry.part.size):
            log.error("%r UID %d: the server has no part %s of %d bytes", raw, m.uid, f.entry.section,
                      f.entry.part.size)
            raise ProtocolError("missing part")
        if f.mode == "decoded":
            data = await self._cpu(len(data), transfer.decode_part, f.entry, data)
        if len(data) != f.size:
            log.error("%r UID %d part %s: %d bytes now, %d when listed; the server contradicts itself",
                      raw, m.uid, f.entry.section, len(data), f.size)
            raise ProtocolError("part size changed")
        return data

    async def _range(self, f: PartFile, offset: int, length: int) -> bytes:
        data = await self._fetch_part(f, f"<{offset}.{length}>")
        if not isinstance(data, bytes):
            log.error("%r UID %d: the server has no part %s", f.msg.folder.raw, f.msg.uid, f.entry.section)
            raise ProtocolError("missing part")
        return data
