"""Message bytes: the memory tier, the disk tier, one fetch per chunk, read-ahead.

A read looks in memory (a byte-bounded LRU of 4 MiB chunks), then on disk (the
``Disk`` the mount hands in), then asks the server. Concurrent readers of one
chunk share a single fetch (``_inflight``). A reader going through a folder in
UID order gets the following messages fetched with its own, in batches that
grow, and the next batch fetched before it gets there (read-ahead, in the
nursery of :meth:`Content.run`). Nothing here is dirty: any entry may be
evicted at any time because it can be fetched again (invariants 2, 6, 8, 9).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cachetools
import trio

from .errors import Offline, ServerUnavailable, StaleError
from .model import CHUNK, Msg, Notifier, OfflineNotes

if TYPE_CHECKING:  # content does not import disk or session at run time: mount hands them in
    from .disk import Disk
    from .session import Pool

log = logging.getLogger(__name__)

PREFETCH_MAX_MESSAGES = 128
PREFETCH_MAX_BYTES = 8 * 1024 * 1024
CHUNKS_AHEAD = 2  # chunks of a big message fetched ahead of its reader, each on its own connection
# A message above this, read in order from its start, drops each chunk from memory once the
# reader is past it. It is disk.QUEUE_BYTES: a smaller one is kept whole to be joined for
# the disk cache (_persist_if_complete); a bigger one never is.
DROP_BEHIND_MIN = 16 * 1024 * 1024
SEQ_READERS = 64  # big messages whose sequential reading is followed at once
Key = tuple[int, int]  # (inode, chunk index)
FetchHook = Callable[[Msg, dict[bytes, object]], None]



@dataclass
class _Fetch:
    """An in-flight body fetch other readers can wait for."""

    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: BaseException | None = None



class Content:
    """The bytes of messages (and of decoded ``.parts`` files), by (inode, chunk)."""

    def __init__(self, pool: Pool, disk: Disk | None, notes: OfflineNotes, *, mem_cache: int,
                 notifier: Notifier, clock: Callable[[], float]) -> None:
        self.pool = pool
        self.disk = disk
        self.notes = notes
        self.notifier = notifier
        self.clock = clock
        self.lru: cachetools.LRUCache[Key, bytes] = cachetools.LRUCache(maxsize=max(1, mem_cache), getsizeof=len)
        self._inflight: dict[Key, _Fetch] = {}
        self._nursery: trio.Nursery | None = None  # for read-ahead, while run() runs
        self._fetch_extra = ""  # FETCH items asked along with bodies (parts asks for BODYSTRUCTURE)
        self._fetch_hooks: list[FetchHook] = []  # given those items per message
        # inode → where the next read of a big message read in order from 0 will start
        self._seq: cachetools.LRUCache[int, int] = cachetools.LRUCache(maxsize=SEQ_READERS)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve read-ahead until cancelled (unmount); none is started before or after."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def fetch_with(self, items: str, hook: FetchHook) -> None:
        """Ask for FETCH *items* along with every body batch, and give them to *hook* per message."""
        self._fetch_extra = items
        self._fetch_hooks.append(hook)

    # -- the memory tier ----------------------------------------------------------

    @property
    def maxsize(self) -> int:
        return int(self.lru.maxsize)

    def get(self, key: Key) -> bytes | None:
        """Bytes in memory for *key*, or None (no fetch, no wait)."""
        data: bytes | None = self.lru.get(key)
        return data

    def __contains__(self, key: Key) -> bool:
        return key in self.lru

    def put(self, key: Key, data: bytes) -> None:
        try:
            self.lru[key] = data
        except ValueError:  # larger than the whole cache: serve it uncached
            pass

    # -- reading --------------------------------------------------------------

    async def read(self, m: Msg, offset: int, size: int) -> bytes:
        if m.gone and not self._cached(m, offset // CHUNK):
            raise StaleError(f"message UID {m.uid} was removed from the server")
        out = []
        end = min(offset + size, m.size)
        behind = m.size > DROP_BEHIND_MIN and self._in_order(m, offset, end)
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
        if behind:
            for idx in range(offset // CHUNK, pos // CHUNK):  # chunks this read finished
                self.lru.pop((m.inode, idx), None)
        return b"".join(out)

    def _in_order(self, m: Msg, offset: int, end: int) -> bool:
        """Whether this read of big message *m* continues one that started at 0 (noted at once,
        before any await: the kernel sends its read-ahead requests together).

        Such a reader (``cat``, ``cp``) has what it passed in the kernel's page cache, so
        its chunks are dropped behind it: their memory serves the next chunks (freshly
        mapped memory costs more than the receive itself, and a 50 MB message kept
        whole would push most of the memory cache out; issue 12, stop 18). A reader
        that jumps keeps every chunk, as before.
        """
        if offset == 0 or self._seq.get(m.inode) == offset:
            self._seq[m.inode] = end
            return True
        self._seq.pop(m.inode, None)
        return False

    def _cached(self, m: Msg, idx: int) -> bool:
        return (m.inode, idx) in self.lru

    async def _chunk(self, m: Msg, idx: int) -> bytes:
        key = (m.inode, idx)
        if idx == 0:
            self._note_read(m)
        data = await self._peek(key)
        if data is not None:
            if idx == 0:
                self._maybe_read_ahead(m)
            elif m.size > CHUNK:
                self._chunks_ahead(m, idx)
            return data
        if m.size <= CHUNK:
            return await self._fetch_whole(m)
        if self.on_disk(m):
            whole = await self._disk_body(m)
            if whole is not None:
                for i in range(max(1, (len(whole) + CHUNK - 1) // CHUNK)):
                    self.put((m.inode, i), whole[i * CHUNK:(i + 1) * CHUNK])
                return whole[idx * CHUNK:(idx + 1) * CHUNK]
        self._chunks_ahead(m, idx)  # started before this chunk's fetch: they run beside it
        data = await self.cached(key, lambda: self._fetch_chunk(m, idx))
        self._persist_if_complete(m)
        return data

    async def _fetch_chunk(self, m: Msg, idx: int) -> bytes:
        raw, uidv = m.folder.raw, m.uidvalidity
        assert raw is not None
        try:
            return await self.pool.run(lambda c: c.fetch_range(raw, uidv, m.uid, idx * CHUNK, CHUNK), folder=raw)
        except ServerUnavailable as e:
            raise self.offline_miss(m, e) from None

    def _chunks_ahead(self, m: Msg, idx: int) -> None:
        """Reading chunk *idx* of a big message: have the next CHUNKS_AHEAD fetched meanwhile,
        as many as the memory cache holds beside the chunk being read (with ``mem_cache=8M``,
        two chunks, a second one ahead could push out the first before the reader got to it,
        and it was fetched twice)."""
        ahead = min(CHUNKS_AHEAD, self.maxsize // CHUNK - 1)
        for i in range(idx + 1, idx + 1 + ahead):
            self._chunk_ahead(m, i)

    def _chunk_ahead(self, m: Msg, idx: int) -> None:
        """Reading a big message: fetch its next chunk on another connection meanwhile."""
        key = (m.inode, idx)
        if (self._nursery is None or idx * CHUNK >= m.size or key in self.lru or key in self._inflight):
            return

        async def ahead() -> None:
            try:
                await self.cached(key, lambda: self._fetch_chunk(m, idx))
                self._persist_if_complete(m)
            except Exception as e:  # noqa: BLE001 - the reader will fetch it itself
                log.debug("chunk read-ahead failed: %s", e)

        self._nursery.start_soon(ahead)

    async def is_cached(self, m: Msg) -> bool:
        """Stored in the persistent cache, checked with the store (``user.imapfs.cached``)."""
        if not self.on_disk(m) or m.folder.raw is None or self.disk is None:
            return False
        if await self.disk.call(self.disk.store.has_body, m.folder.raw, m.uidvalidity, m.uid):
            return True
        # queued but not written yet, or dropped/evicted: let the writer catch up once
        await self.disk.flush()
        ok = await self.disk.call(self.disk.store.has_body, m.folder.raw, m.uidvalidity, m.uid)
        if not ok and m.folder.state is not None:
            m.folder.state.on_disk.discard(m.uid)
        return ok

    def on_disk(self, m: Msg) -> bool:
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

    def offline_miss(self, m: Msg, e: Exception) -> Exception:
        if self.notes.is_offline():
            raw = m.folder.raw or b"?"
            self.notes.note((raw, "read"), f"messages of {raw.decode('ascii', 'replace')} that are not in "
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
        """A big message read to its end: keep it on disk too (offline reading, prefetch).

        Joined only if the write-behind queue would take it: a 50 MB message
        never fits, and joining it anyway cost a second copy of it in memory
        (the peak RSS) and a 50 MB copy on the trio thread (issue 12).
        """
        if self.disk is None or self.on_disk(m) or not self.disk.has_room(m.size):
            return
        # Stop at the first chunk not in memory: RFC822.SIZE is the server's word
        # (up to imapproto.MAX_MESSAGE_SIZE), never a reason to build a huge list.
        chunks = []
        for i in range((m.size + CHUNK - 1) // CHUNK):
            c = self.lru.get((m.inode, i))
            if c is None:
                return
            chunks.append(c)
        self._persist_body(m, b"".join(chunks))

    async def _peek(self, key: Key) -> bytes | None:
        """Cached bytes for *key*, waiting for a fetch of it already under way; None if neither."""
        while True:
            data = self.lru.get(key)
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

    async def cached(self, key: Key, fetch: Callable[[], Awaitable[bytes]]) -> bytes:
        """Bytes for *key* from the content cache, else from ``await fetch()``, fetched once
        however many readers ask at the same time."""
        data = await self._peek(key)
        if data is not None:
            return data
        f = self._inflight[key] = _Fetch()
        try:
            data = await fetch()
            f.data = data
            self.put(key, data)
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
            if n is None or n.size > CHUNK or (n.inode, 0) in self.lru or (n.inode, 0) in self._inflight:
                continue
            out.append(n)
            total += n.size
        return out

    async def _fetch_whole(self, m: Msg) -> bytes:
        if self.on_disk(m):
            data = await self._disk_body(m)
            if data is not None:
                self.put((m.inode, 0), data)
                return data
        batch = [m] + [n for n in self._prefetch_candidates(m) if not self.on_disk(n)]
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
        extra = self._fetch_extra
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
                self.put((n.inode, 0), body)
                self._persist_body(n, body)
                for hook in self._fetch_hooks:
                    hook(n, items)
            st = m.folder.state
            if st is not None and len(batch) > 1:
                st.ahead_at = batch[len(batch) // 2].uid  # read ahead once the reader gets here
        except BaseException as e:
            if isinstance(e, ServerUnavailable):
                e = self.offline_miss(m, e)
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
        if self._nursery is None or st is None or st.window <= 0 or st.uidvalidity != m.uidvalidity:
            return
        if st.ahead_at is None or m.uid < st.ahead_at:
            return
        st.ahead_at = None
        after = st.after(m.uid)[: st.window]
        half = st.window // 2
        for i, uid in enumerate(after):
            n = st.msgs.get(uid)
            if n is None or n.size > CHUNK:
                continue
            key = (n.inode, 0)
            if key in self.lru or key in self._inflight or self.on_disk(n):
                continue
            if i > half:
                # More than half a window is cached ahead: look again once the reader
                # is half a window from the first message that is not (clearing the
                # mark without setting it again left every later batch to the reader).
                st.ahead_at = after[i - half]
                return
            batch = [n] + [c for c in self._prefetch_candidates(n) if not self.on_disk(c)]
            self._nursery.start_soon(self._read_ahead, batch)
            return
        if len(after) > half:
            st.ahead_at = after[half]  # all of the window is cached: look again further on

    async def _read_ahead(self, batch: list[Msg]) -> None:
        try:
            await self._fetch_batch(batch)
        except Exception as e:  # noqa: BLE001 - a failed read-ahead costs the reader a fetch, nothing more
            log.debug("read-ahead failed: %s", e)
