"""Read-ahead of whole messages for a reader going through a folder in UID order
(content.py ``_maybe_read_ahead``), in process against the fake server.

``grep -r`` and backups read a folder's messages one after another. Each body batch
is fetched before the reader reaches it, so the reader waits only for the first ones.
A profile of the bench's cold grep (stop 18) found the mark that starts the next
batch cleared and not set again: from the third batch on, every batch was fetched
by the reader itself, which then waited for it (77 of 78 batches of 10,000 messages).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

from imapfs.model import Msg
from imapfs.session import Pool
from imapfs.tree import Tree
from tests.support.fake_imap import FakeServer

N = 700  # several batches of the largest window (128 messages)


def _message(i: int) -> bytes:
    return (f"Message-ID: <{i}@example.org>\r\nSubject: message {i}\r\n\r\n".encode()
            + b"line of text\r\n" * (20 + i % 50))


async def _read_in_order(server: FakeServer, tmp_path: Path, cache: bool
                         ) -> tuple[list[tuple[int, int]], dict[int, bytes], dict[int, bytes]]:
    """Read every message of INBOX in UID order; return, for each body FETCH, (the UID the
    reader was at when it was sent, the first UID it asked for), and the bytes read."""
    at = [0]
    fetches: list[tuple[int, int]] = []
    disk = None
    if cache:
        from imapfs.disk import Disk
        from imapfs.store import Store
        store = await trio.to_thread.run_sync(lambda: Store(tmp_path / "cache", 1 << 30))
        disk = Disk(store)
    pool = Pool(server.account(), size=3, backoff_max=0.05, connection_factory=server.connection)
    await pool.start()
    tree = Tree(pool, mem_cache=64 << 20, disk=disk, unsent_dir=str(tmp_path / "unsent"),
                spool_dir=str(tmp_path))
    await tree.refresh_folders(force=True)
    st = await tree.sync(tree.root.children["INBOX"], force=True)
    assert st is not None
    msgs: list[Msg] = [st.msgs[uid] for uid in sorted(st.msgs)]
    fetch_batch = tree.content._fetch_batch

    async def logged(batch: list[Msg]) -> Any:
        fetches.append((at[0], batch[0].uid))  # on the loop, when the batch is asked for
        return await fetch_batch(batch)

    tree.content._fetch_batch = logged  # type: ignore[method-assign]
    got: dict[int, bytes] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(tree.run)  # the read-ahead runs in its nursery
        for m in msgs:
            at[0] = m.uid
            got[m.uid] = await tree.read(m, 0, m.size + 1)
            await trio.lowlevel.checkpoint()  # as between two files of grep: the loop serves others
        nursery.cancel_scope.cancel()
    await pool.close()
    if disk is not None:
        await disk.close()
    return fetches, got, server.bodies("INBOX")


@pytest.mark.trio
@pytest.mark.parametrize("cache", [False, True], ids=["memory", "disk-cache"])
async def test_a_reader_in_uid_order_waits_only_for_the_first_batches(tmp_path: Path, cache: bool) -> None:
    server = FakeServer(folders=["INBOX"])
    for i in range(N):
        server.deliver("INBOX", _message(i))
    fetches, got, bodies = await _read_in_order(server, tmp_path, cache)
    assert got == bodies
    assert len(fetches) >= 6, fetches  # the window grows to 128: several batches
    # A batch sent when the reader was at its first UID is one the reader waited for.
    waited = [first for reader, first in fetches if reader >= first]
    assert len(waited) <= 3, f"the reader fetched {len(waited)} of {len(fetches)} batches itself: {fetches}"
    assert all(n == 1 for n in server.body_fetches.values())  # each body fetched once
