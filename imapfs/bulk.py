"""Bulk prefetch: whole folders fetched in batches straight into the disk cache (issue 12).

``imapfs prefetch`` asks for it through the mount (the ``user.imapfs.prefetch*``
xattrs, served by ``fs.py``) and ``-o keep=`` uses it too. Reading every
message through the mount cost one FUSE read per file and went through the
write-behind queue, which skips bodies when 16 MiB already wait
(``disk.QUEUE_BYTES``): a prefetch could say "done" with messages missing.
Here instead:

* what to fetch comes from the store (``Store.body_uids``), not from the
  tree's ``on_disk`` hint;
* one ``UID FETCH (BODY.PEEK[] BODYSTRUCTURE)`` per batch, batches growing
  from :data:`FIRST_BATCH_BYTES` to :data:`BATCH_MESSAGES` /
  :data:`BATCH_BYTES` (small first batches give progress early on a slow
  link); messages above ``tree.CHUNK`` in ranges of that size;
* bodies already in the memory cache are written from there, not fetched;
* every batch is written with ``put_bodies`` and awaited (back-pressure:
  the next batch is fetched while this one is written, never more), and the
  tree's ``on_disk`` hint is updated from what the store then holds;
* progress and completion are read back from the store: a job is ``done``
  only when every message it wanted is indexed there. A message that could
  not be stored is a failure, with its reason, never a silent gap.

One folder is fetched at a time (:data:`JOBS`), so memory stays bounded by
two batches whatever is asked for; folders wait their turn after counting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from .disk import Disk
from .errors import ImapfsError, ProtocolError, ServerUnavailable, StaleError
from .model import CHUNK, Folder, FolderState, Msg
from .store import StoreError
from .tree import Tree

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger(__name__)

BATCH_MESSAGES = 500  # messages in one UID FETCH at most
BATCH_BYTES = 16 * 1024 * 1024  # bytes of one batch at most (two batches are in memory at once)
FIRST_BATCH_BYTES = 512 * 1024  # the first batch; each next one twice as large, up to BATCH_BYTES
FIRST_BATCH_MESSAGES = 16
JOBS = 1  # folders fetched at the same time
LEASE = 60.0  # a job started through the mount stops when nobody asked for its progress this long
MAX_REPORTED = 20  # failure lines in one progress answer
MAX_ROUNDS = 8  # rounds of sync + fetch in one job (new mail, joined requests, a UIDVALIDITY change)


@dataclass
class Job:
    """One folder's prefetch: what it wants, and what the store holds of it."""

    folder: Folder
    uids: set[int] | None  # None: every message of the folder
    lease: bool  # started through the mount: stops when its progress is not asked for
    touched: float = 0.0
    state: str = "counting"  # counting, waiting, fetching, done, failed, stopped
    messages: int = 0  # messages wanted
    cached: int = 0  # of them already on disk when the job first wanted them
    total: int = 0  # messages to store (not on disk at the start, or evicted since)
    done: int = 0  # of those, on disk now (the store's word)
    bytes: int = 0
    done_bytes: int = 0
    failures: dict[int, str] = field(default_factory=dict)  # uid → why it is not on disk
    names: dict[int, str] = field(default_factory=dict)  # uid → path in the mount, for failures
    error: str | None = None  # why the job as a whole stopped short
    generation: int = 0  # bumped by every joined request: the job looks again before it ends
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    finished: trio.Event = field(default_factory=trio.Event)
    stopping: bool = False
    reported: bool = False  # its progress was read since it ended: a new request starts a new job
    # Kept across a reopening, so that what this job stored counts as done, not as already cached:
    uidvalidity: int | None = None  # the epoch the sets below belong to
    judged: set[int] = field(default_factory=set)  # wanted UIDs looked up in the store once
    cached_at_start: set[int] = field(default_factory=set)  # of those, the ones already on disk then

    def want(self, uids: set[int] | None) -> None:
        """Join a request into this running job (it looks again before it ends)."""
        if uids is None:
            self.uids = None
        elif self.uids is not None:
            self.uids |= uids
        self.generation += 1

    def reopen(self, uids: set[int] | None) -> None:
        """Extend an ended job by a request that came before anyone read its end.

        ``imapfs prefetch a.eml b.eml`` asks once per message; when the job of
        a.eml has already ended as b.eml comes, a new job would leave a.eml out
        of the progress the command reads. Counters and failures are kept (the
        next run recounts them from the store); the error is the new run's.
        """
        self.want(uids)
        self.state = "counting"
        self.error = None
        self.reported = False
        self.scope = trio.CancelScope()  # a cancel scope and an event serve one run only
        self.finished = trio.Event()

    def stop(self, why: str) -> None:
        if not self.finished.is_set():
            self.stopping = True
            self.error = self.error or why
            self.scope.cancel()

    @property
    def path(self) -> str:
        return "/".join(self.folder.path)


class Bulk:
    """Prefetch jobs of one mount; :meth:`run` is a task of the mount's nursery."""

    def __init__(self, tree: Tree, disk: Disk, *, clock: Callable[[], float] = time.monotonic,
                 lease: float = LEASE) -> None:
        self.tree = tree
        self.disk = disk
        self.clock = clock
        self.lease = lease
        self.jobs: dict[Folder, Job] = {}  # the last job of each folder, finished or not
        self._slots = trio.CapacityLimiter(JOBS)
        self._nursery: trio.Nursery | None = None

    async def run(self) -> None:
        """Serve jobs until cancelled (unmount); stop those nobody follows any more."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                while True:
                    await trio.sleep(max(0.5, self.lease / 4))
                    now = self.clock()
                    for folder, job in list(self.jobs.items()):
                        if job.finished.is_set() and folder.gone:
                            del self.jobs[folder]  # a folder removed from the server: its last report too
                        elif job.lease and not job.finished.is_set() and now - job.touched > self.lease:
                            log.info("prefetch of %s stopped: nobody asked for its progress for %.0f s",
                                     job.path, self.lease)
                            job.stop(f"stopped: nobody asked for its progress for {self.lease:.0f} s")
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()

    # -- requests (fs.py) -------------------------------------------------------

    async def start(self, node: Folder | Msg) -> int:
        """Start, or join, the jobs for a folder and its sub-folders, or for one message.

        Returns how many folders that concerns. Idempotent: asking again while
        a job runs joins it.
        """
        if self._nursery is None:
            raise ImapfsError("prefetch is not available yet (the mount is starting or stopping)")
        if isinstance(node, Msg):
            return self._launch(node.folder, {node.uid})
        try:
            await self.tree.refresh_folders()
        except ServerUnavailable:
            pass  # the folders as last seen
        return sum(self._launch(f, None) for f in self._subtree(node) if f.selectable and f.raw is not None)

    def stop(self, node: Folder | Msg) -> int:
        """Stop the running jobs of a folder and its sub-folders (or of a message's folder)."""
        jobs = [j for j in self._jobs_under(node) if not j.finished.is_set()]
        for j in jobs:
            j.stop("stopped on request")
        return len(jobs)

    def progress(self, node: Folder | Msg) -> str:
        """The ``user.imapfs.prefetch`` answer: the jobs of a folder and its sub-folders summed up."""
        jobs = self._jobs_under(node)
        now = self.clock()
        for j in jobs:
            j.touched = now
            if j.finished.is_set():
                j.reported = True
        return format_progress(jobs)

    async def fill(self, folder: Folder) -> Job:
        """Run one folder's job to its end in the caller's task (``-o keep=``); joins a running one."""
        job = self.jobs.get(folder)
        if job is not None and not job.finished.is_set():
            job.want(None)
            await job.finished.wait()
            return job
        job = self.jobs[folder] = Job(folder, None, lease=False, touched=self.clock())
        await self._run(job)
        return job

    def _launch(self, folder: Folder, uids: set[int] | None) -> int:
        """Join the folder's running job; reopen its ended one nobody has read the end of
        yet (the next request of the same command); else start a new job."""
        job = self.jobs.get(folder)
        if job is not None and not job.finished.is_set() and not job.stopping:
            job.want(uids)
            job.touched = self.clock()
            return 1
        if job is not None and job.finished.is_set() and job.lease and not job.reported and not job.stopping:
            job.reopen(uids)
            job.touched = self.clock()
            assert self._nursery is not None
            self._nursery.start_soon(self._run, job)
            return 1
        job = self.jobs[folder] = Job(folder, None if uids is None else set(uids), lease=True, touched=self.clock())
        assert self._nursery is not None
        self._nursery.start_soon(self._run, job)
        return 1

    def _subtree(self, node: Folder) -> Iterator[Folder]:
        stack = [node]
        while stack:
            f = stack.pop()
            yield f
            stack.extend(f.children.values())

    def _jobs_under(self, node: Folder | Msg) -> list[Job]:
        if isinstance(node, Msg):
            job = self.jobs.get(node.folder)
            return [job] if job is not None else []
        out = []
        for f, job in self.jobs.items():
            p: Folder | None = f
            while p is not None and p is not node:
                p = p.parent
            if p is node:
                out.append(job)
        return out

    # -- a job ------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        t0 = time.monotonic()
        try:
            with job.scope:
                await self._work(job)
        except ServerUnavailable as e:
            job.error = f"the server is unreachable ({e}); run the same command again when it is back"
        except StoreError as e:
            job.error = f"the local cache failed: {e}"
        except ImapfsError as e:
            job.error = str(e)
        except Exception as e:  # noqa: BLE001 - a bug costs this job, not the mount
            log.exception("prefetch of %s failed", job.path)
            job.error = f"internal error: {type(e).__name__}: {e}"
        finally:
            if job.stopping:
                job.state = "stopped"
            elif job.error or job.failures or job.done < job.total:
                job.state = "failed"
            else:
                job.state = "done"
            job.finished.set()
        # A keep= round with nothing to do (every few seconds) is not worth a line.
        quiet = job.state == "done" and job.total == 0
        level = logging.DEBUG if quiet else logging.INFO if job.state in ("done", "stopped") else logging.WARNING
        log.log(level, "prefetch of %s %s: %d of %d messages stored (%.1f MB) in %.1f s, %d already cached%s%s",
                job.path, job.state, job.done, job.total, job.done_bytes / 1e6, time.monotonic() - t0,
                job.cached, f", {len(job.failures)} failed" if job.failures else "",
                f" ({job.error})" if job.error else "")

    async def _work(self, job: Job) -> None:
        folder, tree, store = job.folder, self.tree, self.disk.store
        attempted: set[int] = set()  # per run: a reopened job tries again what is still missing
        cached_at_start = job.cached_at_start
        force = False
        for _round in range(MAX_ROUNDS):
            generation = job.generation
            st = await tree.sync(folder, force=force)
            raw = folder.raw
            if st is None or raw is None:
                raise ImapfsError(f"{job.path} holds no messages (not a selectable folder)")
            if job.uidvalidity is not None and st.uidvalidity != job.uidvalidity:
                attempted.clear()  # another epoch: other messages under the same UIDs
                job.judged.clear()
                cached_at_start.clear()
                job.failures.clear()
            job.uidvalidity = st.uidvalidity
            # The folder's state must be in the store before its bodies (put_bodies matches it).
            await self.disk.flush()
            wanted = _wanted(st, job.uids)
            have = await self.disk.call(store.body_uids, raw, st.uidvalidity)
            # "Already cached" is judged once per message, when the job first wants it: what
            # this job stored (in an earlier round or run) is done, never already cached.
            fresh = wanted.keys() - job.judged
            cached_at_start |= fresh & have
            job.judged |= fresh
            self._account(job, st, wanted, have, cached_at_start)
            todo = [m for uid, m in wanted.items() if uid not in have and uid not in attempted]
            if not todo:
                if job.generation == generation:
                    for uid in wanted.keys() - have:
                        job.names[uid] = _name(wanted[uid])
                        job.failures.setdefault(uid, "the local cache did not keep it (is cache_size= too small?)")
                    return
                continue
            attempted.update(m.uid for m in todo)
            job.state = "waiting"
            async with self._slots:
                job.state = "fetching"
                try:
                    force = await self._fetch(job, st, raw, todo, wanted, cached_at_start)
                except StaleError as e:  # UIDVALIDITY changed under us: look again
                    log.info("prefetch of %s: %s; syncing again", job.path, e)
                    force = True
        raise ImapfsError(f"{job.path} kept changing; run the same command again")

    def _account(self, job: Job, st: FolderState, wanted: dict[int, Msg], have: set[int],
                 cached_at_start: set[int]) -> None:
        """Progress from what the store holds; the tree's on_disk hint learns it too."""
        job.messages = len(wanted)
        job.cached = len(cached_at_start & have)
        todo = [m for uid, m in wanted.items() if uid not in cached_at_start or uid not in have]
        job.total = len(todo)
        job.bytes = sum(m.size for m in todo)
        stored = [m for m in todo if m.uid in have]
        job.done = len(stored)
        job.done_bytes = sum(m.size for m in stored)
        for uid in [u for u in job.failures if u not in wanted or u in have]:
            del job.failures[uid]  # stored after all, or gone from the server (expunged meanwhile)
        cur = job.folder.state
        if cur is not None and cur.uidvalidity == st.uidvalidity:
            cur.on_disk |= have & wanted.keys()

    async def _fetch(self, job: Job, st: FolderState, raw: bytes, todo: list[Msg],
                     wanted: dict[int, Msg], cached_at_start: set[int]) -> bool:
        """Fetch *todo* into the store, one batch written while the next is fetched.

        Returns True when the server left some out (expunged meanwhile?): the
        next round then syncs the folder before it judges them.
        """
        send, recv = trio.open_memory_channel[list[tuple[Msg, bytes, Any]]](0)
        missing: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._produce, job, raw, st.uidvalidity, todo, send, missing)
            async with recv:
                async for batch in recv:
                    await self._write(job, st, raw, batch, wanted, cached_at_start)
        return bool(missing)

    async def _produce(self, job: Job, raw: bytes, uv: int, todo: list[Msg],
                       send: trio.MemorySendChannel[list[tuple[Msg, bytes, Any]]], missing: list[int]) -> None:
        async with send:
            from_memory, small, big = [], [], []
            for m in todo:
                data = self._in_memory(m)
                if data is not None:
                    from_memory.append((m, data, None))
                elif m.size <= CHUNK:
                    small.append(m)
                else:
                    big.append(m)
            for i in range(0, len(from_memory), BATCH_MESSAGES):
                await send.send(await self._with_structures(raw, uv, from_memory[i:i + BATCH_MESSAGES]))
            limit_n, limit_b = FIRST_BATCH_MESSAGES, FIRST_BATCH_BYTES
            for batch in _batches(small, limit_n, limit_b):
                got = await self._fetch_batch(job, raw, uv, batch, missing)
                if got:
                    await send.send(got)
            for m in big:
                one = await self._fetch_big(job, raw, uv, m, missing)
                if one is not None:
                    await send.send([one])

    async def _with_structures(self, raw: bytes, uv: int,
                               batch: list[tuple[Msg, bytes, Any]]) -> list[tuple[Msg, bytes, Any]]:
        """Bodies from memory, with their BODYSTRUCTUREs if the server gives them (offline: without)."""
        uids = [m.uid for m, _, _ in batch]
        try:
            its = await self.tree.pool.run(lambda c: c.fetch_uids(raw, uv, uids, "(UID BODYSTRUCTURE)"), folder=raw)
        except ImapfsError as e:
            log.debug("prefetch: no BODYSTRUCTUREs for bodies from memory: %s", e)
            return batch
        structures = {u: it.get(b"BODYSTRUCTURE") for u, it in its}
        return [(m, body, structures.get(m.uid)) for m, body, _ in batch]

    def _in_memory(self, m: Msg) -> bytes | None:
        """The whole body from the tree's memory cache (a read fetched it), or None."""
        n = max(1, (m.size + CHUNK - 1) // CHUNK)
        chunks = []
        for i in range(n):
            c = self.tree.content.get((m.inode, i))
            if c is None:
                return None
            chunks.append(c)
        data = b"".join(chunks)
        return data if len(data) == m.size else None

    async def _fetch_batch(self, job: Job, raw: bytes, uv: int, batch: list[Msg],
                           missing: list[int]) -> list[tuple[Msg, bytes, Any]]:
        """One UID FETCH of whole bodies and their BODYSTRUCTURE. A batch the server
        answers with an error is split until that error belongs to one message."""
        uids = [m.uid for m in batch]
        try:
            got = await self.tree.pool.run(
                lambda c: c.fetch_bodies(raw, uv, uids, "BODYSTRUCTURE"), folder=raw)
        except (ServerUnavailable, StaleError):
            raise
        except ImapfsError as e:
            if len(batch) == 1:
                job.failures[batch[0].uid] = f"the server's answer was unusable: {e}"
                job.names[batch[0].uid] = _name(batch[0])
                return []
            half = len(batch) // 2
            return (await self._fetch_batch(job, raw, uv, batch[:half], missing)
                    + await self._fetch_batch(job, raw, uv, batch[half:], missing))
        out = []
        for m in batch:
            if m.uid not in got:
                missing.append(m.uid)
                job.failures[m.uid] = "the server did not deliver it"
                job.names[m.uid] = _name(m)
                continue
            body, items = got[m.uid]
            out.append((m, body, items.get(b"BODYSTRUCTURE")))
        return out

    async def _fetch_big(self, job: Job, raw: bytes, uv: int, m: Msg,
                         missing: list[int]) -> tuple[Msg, bytes, Any] | None:
        """A message above CHUNK, in CHUNK ranges (each a bounded literal), and its BODYSTRUCTURE."""
        pieces: list[bytes] = []
        off = 0
        bound = 2 * m.size + CHUNK  # a server sending far more than its RFC822.SIZE is not followed
        try:
            while True:  # up to a short piece: RFC822.SIZE is the server's word, not a length
                def fetch(c: Connection, o: int = off) -> bytes:
                    return c.fetch_range(raw, uv, m.uid, o, CHUNK)

                piece = await self.tree.pool.run(fetch, folder=raw)
                pieces.append(piece)
                off += len(piece)
                if len(piece) < CHUNK:
                    break
                if off > bound:
                    raise ProtocolError(f"it is larger than the {m.size} bytes the server announced")
            its = await self.tree.pool.run(
                lambda c: c.fetch_uids(raw, uv, [m.uid], "(UID BODYSTRUCTURE)"), folder=raw)
        except (ServerUnavailable, StaleError):
            raise
        except ImapfsError as e:
            job.failures[m.uid] = f"fetching it failed: {e}"
            job.names[m.uid] = _name(m)
            missing.append(m.uid)
            return None
        structure = next((it.get(b"BODYSTRUCTURE") for u, it in its if u == m.uid), None)
        return m, b"".join(pieces), structure

    async def _write(self, job: Job, st: FolderState, raw: bytes, batch: list[tuple[Msg, bytes, Any]],
                     wanted: dict[int, Msg], cached_at_start: set[int]) -> None:
        """Store one batch (awaited: back-pressure on the fetches), then account from the store."""
        store, uv = self.disk.store, st.uidvalidity
        structures = []
        for m, body, structure in batch:
            if len(body) != m.size:
                log.warning("%r UID %d: server said RFC822.SIZE %d but sent %d bytes; using the bytes",
                            raw, m.uid, m.size, len(body))
                self._resize(m, len(body))
            if structure is not None:
                try:
                    structures.append((raw, uv, m.uid, repr(structure).encode("ascii")))
                except UnicodeEncodeError:
                    pass  # parts asks the server again
        await self.disk.call(store.put_bodies, [(raw, uv, m.uid, body) for m, body, _ in batch])
        if structures:
            await self.disk.call(store.put_structures, structures)
        have = await self.disk.call(store.body_uids, raw, uv)
        self._account(job, st, wanted, have, cached_at_start)

    def _resize(self, m: Msg, size: int) -> None:
        """What the tree does when a body's length is not its RFC822.SIZE: the bytes win."""
        st = m.folder.state
        if st is not None and st.msgs.get(m.uid) is m:
            st.msgs.resize(m, size)
        m.size = size
        self.tree.notifier.inode_changed(m.inode)


def _wanted(st: FolderState, uids: set[int] | None) -> dict[int, Msg]:
    if uids is None:
        return dict(st.msgs)
    return {u: st.msgs[u] for u in uids if u in st.msgs}


def _batches(msgs: list[Msg], first_n: int, first_b: int) -> Iterator[list[Msg]]:
    """Consecutive batches, growing from (first_n, first_b) to (BATCH_MESSAGES, BATCH_BYTES)."""
    limit_n, limit_b = first_n, first_b
    batch: list[Msg] = []
    size = 0
    for m in msgs:
        if batch and (len(batch) >= limit_n or size + m.size > limit_b):
            yield batch
            batch, size = [], 0
            limit_n, limit_b = min(BATCH_MESSAGES, limit_n * 2), min(BATCH_BYTES, limit_b * 2)
        batch.append(m)
        size += m.size
    if batch:
        yield batch


def _name(m: Msg) -> str:
    return "/".join((*m.folder.path, m.name))


def format_progress(jobs: list[Job]) -> str:
    """Jobs summed up as ``key value`` lines (docs/offline.md, "Bulk prefetch")."""
    if not jobs:
        return "state idle\n"
    running = [j for j in jobs if not j.finished.is_set()]
    if running:
        state = "running"
    elif any(j.state == "stopped" for j in jobs):
        state = "stopped"
    elif any(j.state == "failed" for j in jobs):
        state = "failed"
    else:
        state = "done"
    lines = [f"state {state}", f"folders {len(jobs)}", f"finished {len(jobs) - len(running)}",
             f"counting {sum(1 for j in jobs if j.state == 'counting')}"]
    for key in ("messages", "cached", "total", "done", "bytes", "done_bytes"):
        lines.append(f"{key} {sum(getattr(j, key) for j in jobs)}")
    failed = sum(len(j.failures) for j in jobs)
    lines.append(f"failed {failed}")
    shown = 0
    for j in jobs:
        if j.error and shown < MAX_REPORTED:
            shown += 1
            lines.append(f"error {j.path}: {j.error}"[:500])
        for uid, why in sorted(j.failures.items()):
            if shown >= MAX_REPORTED:
                break
            shown += 1
            lines.append(f"failure {j.names.get(uid) or f'{j.path}/UID {uid}'}: {why}"[:500])
    return "\n".join(lines) + "\n"
