"""The trio side of the on-disk :class:`~imapfs.store.Store`.

Every store call runs in one worker thread (sqlite and fsync must never run
on the trio loop). Cache updates are *write-behind*: the tree queues them
(``later``) in the order it changed its own state, and one task applies them
in that order, so the disk never sees a body before its folder's metadata.
A full or broken cache disk costs the cache, never a request: failures are
logged once and the mount goes on from memory and the server. The journal
(offline changes) is different: :meth:`call` is awaited and its errors reach
the writer, because a change that is not on disk must not be acknowledged.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from .store import Store, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")

QUEUE_BYTES = 16 * 1024 * 1024  # bodies waiting to be written; beyond, bodies are skipped (RSS)


class Disk:
    """Async access to a Store, plus an ordered write-behind queue."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._limiter = trio.CapacityLimiter(1)
        self._queue: deque[tuple[Callable[..., Any], tuple, dict, int]] = deque()
        self._queued_bytes = 0
        self._wakeup = trio.Event()
        self._warned: set[str] = set()

    async def call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run ``fn(*args, **kw)`` (a Store method) in the store's thread."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kw), limiter=self._limiter)

    def later(self, fn: Callable[..., Any], *args: Any, size: int = 0, **kw: Any) -> bool:
        """Queue a cache update. Bodies (``size`` > 0) are dropped (False) when the queue is full."""
        if size and self._queued_bytes + size > QUEUE_BYTES:
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
        while self._queue:
            fn, args, kw, size = self._queue.popleft()
            self._queued_bytes -= size
            batched = {self.store.put_body: self.store.put_bodies,
                       self.store.put_structure: self.store.put_structures}.get(fn)
            if batched is not None:
                # Consecutive writes of one kind go to disk in one transaction.
                batch = [args[:4]]
                while self._queue and self._queue[0][0] == fn and len(batch) < 256:
                    _fn, a2, _kw, s2 = self._queue.popleft()
                    self._queued_bytes -= s2
                    batch.append(a2[:4])
                fn, args, kw = batched, (batch,), {}
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
