"""The trio side of the on-disk :class:`~imapfs.store.Store`.

Every store call runs in one worker thread (sqlite and fsync must never run
on the trio loop). Cache updates are *write-behind*: the tree queues them
(:meth:`Disk.put_folder`, :meth:`Disk.put_body`, ...) in the order it changed
its own state, and one task applies them in that order, so the disk never
sees a body before its folder's metadata. Each update has its own typed
method, so a renamed or mistyped store call fails the type check, not a
mount at run time. A full or broken cache disk costs the cache, never a
request: failures are logged once and the mount goes on from memory and the
server. The journal (offline changes) is different: :meth:`call` is awaited
and its errors reach the writer, because a change that is not on disk must
not be acknowledged.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import trio

from .imapproto import ListEntry
from .records import RawMeta
from .store import Store, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")

QUEUE_BYTES = 16 * 1024 * 1024  # bodies waiting to be written; beyond, bodies are skipped (RSS)
BATCH = 256  # consecutive bodies (or structures) written in one transaction


class Disk:
    """Async access to a Store, plus an ordered write-behind queue."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._limiter = trio.CapacityLimiter(1)
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], int]] = deque()
        self._queued_bytes = 0
        self._wakeup = trio.Event()
        self._draining = trio.Lock()  # one drainer at a time: the writer, or a flush waiting for it
        self._warned: set[str] = set()

    async def call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run ``fn(*args, **kw)`` (a Store method) in the store's thread."""
        result: T = await trio.to_thread.run_sync(functools.partial(fn, *args, **kw), limiter=self._limiter)
        return result

    # ------------------------------------------------------------ write-behind cache updates

    def put_folders(self, entries: Sequence[ListEntry]) -> None:
        """Queue the server's folder list (replaces the stored one)."""
        self._later(self.store.put_folders, list(entries))

    def put_folder(self, name: bytes, uidvalidity: int, uidnext: int | None, highestmodseq: int | None,
                   messages: Sequence[RawMeta], replace: bool) -> None:
        """Queue a folder's sync state and messages (``replace``: *messages* is all of it)."""
        self._later(self.store.put_folder, name, uidvalidity, uidnext, highestmodseq, messages, replace)

    def add_messages(self, name: bytes, uidvalidity: int, metas: Sequence[RawMeta]) -> None:
        self._later(self.store.add_messages, name, uidvalidity, metas)

    def remove_messages(self, name: bytes, uidvalidity: int, uids: Sequence[int]) -> None:
        """Queue the removal of messages (and their bodies)."""
        self._later(self.store.remove_messages, name, uidvalidity, uids)

    def set_flags(self, name: bytes, uidvalidity: int, uid: int, flags: Sequence[str]) -> None:
        self._later(self.store.set_flags, name, uidvalidity, uid, tuple(flags))

    def set_flags_many(self, name: bytes, uidvalidity: int, flags: Mapping[int, Sequence[str]]) -> None:
        self._later(self.store.set_flags_many, name, uidvalidity, flags)

    def set_sync_state(self, name: bytes, uidvalidity: int, uidnext: int | None, highestmodseq: int | None) -> None:
        self._later(self.store.set_sync_state, name, uidvalidity, uidnext, highestmodseq)

    def drop_folder(self, name: bytes, delimiter: str | bytes | None = None) -> None:
        """Queue forgetting a folder's state and bodies (with *delimiter*, its sub-folders too)."""
        self._later(self.store.drop_folder, name, delimiter)

    def put_body(self, name: bytes, uidvalidity: int, uid: int, data: bytes) -> bool:
        """Queue a message's bytes (written without fsync: the header makes a torn file detectable).

        False if it was not queued because the bodies already waiting hold
        :data:`QUEUE_BYTES`: the message is then simply not on disk.
        """
        return self._later(self.store.put_body, name, uidvalidity, uid, data, fsync=False, size=len(data))

    def has_room(self, size: int) -> bool:
        """Would :meth:`put_body` queue *size* bytes now? Asked before building a big body at all."""
        return self._queued_bytes + size <= QUEUE_BYTES

    def put_structure(self, name: bytes, uidvalidity: int, uid: int, data: bytes) -> None:
        """Queue a message's serialised BODYSTRUCTURE (for offline ``.parts`` listings)."""
        self._later(self.store.put_structure, name, uidvalidity, uid, data)

    def _later(self, fn: Callable[..., Any], *args: Any, size: int = 0, **kw: Any) -> bool:
        """Queue ``fn(*args, **kw)``. Bodies (``size`` > 0) are dropped (False) when the queue is full."""
        if size and not self.has_room(size):
            return False
        self._queue.append((fn, args, kw, size))
        self._queued_bytes += size
        self._wakeup.set()
        return True

    async def writer(self) -> None:
        """Background task: apply queued updates in order."""
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            await self._drain()

    async def _drain(self) -> None:
        """Apply the queue in order. One drainer at a time: a flush that ran beside the
        writer could apply a later update before the writer's run was written, and return
        before it was."""
        async with self._draining:
            while self._queue:
                fn, args, kw, size = self._queue.popleft()
                self._queued_bytes -= size
                if fn == self.store.put_body or fn == self.store.put_structure:
                    await self._write_run(fn, args)
                    continue
                await self._apply(fn, args, kw)

    async def _write_run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """A run of queued bodies and structures, in one transaction per kind.

        A body batch queues them in turn, a body and a structure per message
        (issue 12, stop 17: 2 store calls and 2 commits per message of a cold
        grep). They are independent rows, so their order between kinds does
        not matter; the run stops at any other update, which keeps its place.
        """
        put_body, put_structure = self.store.put_body, self.store.put_structure
        bodies: list[tuple[Any, ...]] = []
        structures: list[tuple[Any, ...]] = []
        (bodies if fn == put_body else structures).append(args[:4])
        while self._queue and len(bodies) < BATCH and len(structures) < BATCH:
            f2, a2, _kw, s2 = self._queue[0]
            if f2 == put_body:
                bodies.append(a2[:4])
            elif f2 == put_structure:
                structures.append(a2[:4])
            else:
                break
            self._queue.popleft()
            self._queued_bytes -= s2
        if bodies:
            await self._apply(self.store.put_bodies, (bodies,), {})
        if structures:
            await self._apply(self.store.put_structures, (structures,), {})

    async def _apply(self, fn: Callable[..., Any], args: tuple[Any, ...], kw: dict[str, Any]) -> None:
        try:
            # Shielded: once taken off the queue, an update must reach the store even
            # if the writer is cancelled at unmount (the final flush would not see it).
            with trio.CancelScope(shield=True):
                await self.call(fn, *args, **kw)
        except StoreError as e:
            key = type(e).__name__ + getattr(fn, "__name__", "")
            if key not in self._warned:
                self._warned.add(key)
                log.warning("the local cache could not be updated (%s); going on without it", e)

    async def flush(self) -> None:
        """Apply everything queued (at unmount)."""
        await self._drain()

    async def close(self) -> None:
        await self.flush()
        await self.call(self.store.close)
