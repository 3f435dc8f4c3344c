"""Unit tests for imapfs/disk.py: the typed write-behind calls over a real Store (no server, no mount).

Each typed ``Disk`` method must queue the store call it names, with its
arguments in the right places: the table below makes each call through the
``Disk``, drains the queue (``flush``, as at unmount) and reads the outcome
back from the ``Store``. Run with ``trio.run`` (pytest-trio is not a
dependency).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from imapfs import disk as disk_mod
from imapfs.disk import Disk
from imapfs.imapproto import ListEntry
from imapfs.records import RawMeta
from imapfs.store import Store


def meta(uid: int, flags: tuple[str, ...] = ()) -> RawMeta:
    return RawMeta(uid, 100 + uid, 1_700_000_000 + uid, flags, b"subject %d" % uid)


def seeded(root: Path) -> Store:
    """Folder F (UIDVALIDITY 7, messages 1-3, the bytes of 1 and 2) and F/sub, as a sync leaves them."""
    s = Store(root, 1 << 30)
    s.put_folder(b"F", 7, 4, 10, [meta(1), meta(2), meta(3)], replace=True)
    s.put_folder(b"F/sub", 3, 2, None, [meta(1)], replace=True)
    s.put_body(b"F", 7, 1, b"one")
    s.put_body(b"F", 7, 2, b"two")
    return s


def uids(s: Store, name: bytes = b"F") -> list[int]:
    rec = s.get_folder(name)
    return [] if rec is None else [m.uid for m in rec.messages]


def flags(s: Store, uid: int) -> tuple[str, ...]:
    rec = s.get_folder(b"F")
    assert rec is not None
    return next(m.flags for m in rec.messages if m.uid == uid)


LIST = [ListEntry(frozenset({b"\\HasChildren"}), "/", b"F"), ListEntry(frozenset(), "/", b"F/sub")]

# (id, the Disk call, what the Store holds once the queue is drained)
CASES: list[tuple[str, Callable[[Disk], Any], Callable[[Store], bool]]] = [
    ("put_folders", lambda d: d.put_folders(LIST), lambda s: s.get_folders() == LIST),
    ("put_folder replace", lambda d: d.put_folder(b"F", 7, 9, 11, [meta(2), meta(5)], replace=True),
     lambda s: uids(s) == [2, 5] and s.body_uids(b"F", 7) == {2}
     and (s.get_folder(b"F").uidnext, s.get_folder(b"F").highestmodseq) == (9, 11)),
    ("put_folder merge", lambda d: d.put_folder(b"F", 7, 9, 11, [meta(5)], replace=False),
     lambda s: uids(s) == [1, 2, 3, 5] and s.body_uids(b"F", 7) == {1, 2}),
    ("put_folder new uidvalidity", lambda d: d.put_folder(b"F", 8, 2, None, [meta(1)], replace=False),
     lambda s: uids(s) == [1] and s.get_folder(b"F").uidvalidity == 8 and s.body_uids(b"F", 8) == set()),
    ("add_messages", lambda d: d.add_messages(b"F", 7, [meta(4), meta(3, ("\\Seen",))]),
     lambda s: uids(s) == [1, 2, 3, 4] and flags(s, 3) == ("\\Seen",)),
    ("add_messages old uidvalidity", lambda d: d.add_messages(b"F", 6, [meta(4)]), lambda s: uids(s) == [1, 2, 3]),
    ("remove_messages", lambda d: d.remove_messages(b"F", 7, [1, 3]),
     lambda s: uids(s) == [2] and s.get_body(b"F", 7, 1) is None and s.get_body(b"F", 7, 2) == b"two"),
    ("set_flags", lambda d: d.set_flags(b"F", 7, 2, ["\\Flagged", "$Work"]),
     lambda s: flags(s, 2) == ("\\Flagged", "$Work") and flags(s, 1) == ()),
    ("set_flags_many", lambda d: d.set_flags_many(b"F", 7, {1: ("\\Seen",), 3: ("\\Answered",)}),
     lambda s: [flags(s, u) for u in (1, 2, 3)] == [("\\Seen",), (), ("\\Answered",)]),
    ("set_sync_state", lambda d: d.set_sync_state(b"F", 7, 40, 99),
     lambda s: (s.get_folder(b"F").uidnext, s.get_folder(b"F").highestmodseq) == (40, 99) and uids(s) == [1, 2, 3]),
    ("drop_folder", lambda d: d.drop_folder(b"F"),
     lambda s: s.get_folder(b"F") is None and s.get_body(b"F", 7, 1) is None and uids(s, b"F/sub") == [1]),
    ("drop_folder with sub-folders", lambda d: d.drop_folder(b"F", "/"),
     lambda s: s.folder_names() == []),
    ("put_body", lambda d: d.put_body(b"F", 7, 3, b"three"),
     lambda s: s.get_body(b"F", 7, 3) == b"three" and s.body_uids(b"F", 7) == {1, 2, 3}),
    ("put_body replaces", lambda d: d.put_body(b"F", 7, 1, b"ONE"), lambda s: s.get_body(b"F", 7, 1) == b"ONE"),
    ("put_body old uidvalidity", lambda d: d.put_body(b"F", 6, 3, b"x"), lambda s: s.body_uids(b"F", 6) == set()),
    ("put_structure", lambda d: d.put_structure(b"F", 7, 2, b"(TEXT PLAIN)"),
     lambda s: s.get_structure(b"F", 7, 2) == b"(TEXT PLAIN)" and s.get_structure(b"F", 7, 1) is None),
]


@pytest.mark.parametrize("call, check", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_typed_call_reaches_the_store(tmp_path: Path, call: Callable[[Disk], Any], check: Callable[[Store], bool]):
    s = seeded(tmp_path / "cache")
    disk = Disk(s)

    async def main() -> None:
        call(disk)
        assert s.stats()["body_count"] == 2 and uids(s) == [1, 2, 3]  # queued, not yet written
        await disk.flush()

    trio.run(main)
    try:
        assert check(s)
    finally:
        s.close()


def test_updates_are_applied_in_order_by_the_writer(tmp_path: Path):
    """A new folder, its bodies (batched) and structures, then a removal: applied in the order queued.

    Out of order, the bodies would be refused (their folder not yet stored) or
    the removed message's body would survive its removal.
    """
    s = Store(tmp_path / "cache", 1 << 30)
    disk = Disk(s)

    async def main() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(disk.writer)
            disk.put_folder(b"G", 1, 6, None, [meta(u) for u in range(1, 6)], replace=True)
            for u in range(1, 6):
                assert disk.put_body(b"G", 1, u, b"body %d" % u)
                disk.put_structure(b"G", 1, u, b"s%d" % u)
            disk.remove_messages(b"G", 1, [5])
            disk.set_flags(b"G", 1, 1, ("\\Seen",))
            await disk.flush()
            n.cancel_scope.cancel()

    trio.run(main)
    with s:
        assert uids(s, b"G") == [1, 2, 3, 4]
        assert [s.get_body(b"G", 1, u) for u in range(1, 5)] == [b"body %d" % u for u in range(1, 5)]
        assert [s.get_structure(b"G", 1, u) for u in (1, 4, 5)] == [b"s1", b"s4", None]
        assert s.get_body(b"G", 1, 5) is None  # written, then removed: in that order
        assert s.get_folder(b"G").messages[0].flags == ("\\Seen",)


def test_bodies_over_the_queue_bound_are_not_queued(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(disk_mod, "QUEUE_BYTES", 10)
    with Store(tmp_path / "cache", 1 << 30) as s:
        s.put_folder(b"F", 7, 4, None, [meta(1), meta(2), meta(3)], replace=True)
        disk = Disk(s)

        async def main() -> list[bool]:
            got = [disk.put_body(b"F", 7, 1, b"123456"), disk.put_body(b"F", 7, 2, b"12345"),
                   disk.put_body(b"F", 7, 3, b"1234")]
            await disk.flush()
            return got

        assert trio.run(main) == [True, False, True]
        assert s.body_uids(b"F", 7) == {1, 3}


def test_a_store_failure_is_logged_once_and_the_queue_goes_on(tmp_path: Path, caplog):
    with Store(tmp_path / "cache", 1 << 30) as s:
        s.put_folder(b"F", 7, 4, None, [meta(1)], replace=True)
        disk = Disk(s)

        async def main() -> None:
            disk.put_folders([ListEntry(frozenset(), "/", "not bytes")])  # type: ignore[arg-type]
            disk.put_folders([ListEntry(frozenset(), "/", "again")])  # type: ignore[arg-type]
            disk.set_flags(b"F", 7, 1, ("\\Seen",))
            await disk.flush()

        with caplog.at_level(logging.WARNING, logger="imapfs.disk"):
            trio.run(main)
        warnings = [r.getMessage() for r in caplog.records if r.name == "imapfs.disk"]
        assert len(warnings) == 1 and "folder names are bytes" in warnings[0], warnings
        assert s.get_folders() is None
        assert s.get_folder(b"F").messages[0].flags == ("\\Seen",)


def test_interleaved_bodies_and_structures_are_written_in_one_transaction_per_kind(tmp_path: Path):
    """A body batch queues a body and a structure per message, in turn (issue 12, stop 17).

    Each used to be its own store call and commit (600 for 300 messages); a run
    of them now costs one call per kind and per BATCH, and every row arrives.
    """
    with Store(tmp_path / "cache", 1 << 30) as s:
        s.put_folder(b"F", 7, 301, None, [meta(u) for u in range(1, 301)], replace=True)
        disk = Disk(s)
        calls: list[str] = []
        real_call = disk.call

        async def counting_call(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
            calls.append(fn.__name__)
            return await real_call(fn, *args, **kw)

        disk.call = counting_call  # type: ignore[method-assign]

        async def main() -> None:
            for u in range(1, 301):
                assert disk.put_body(b"F", 7, u, b"body %d" % u)
                disk.put_structure(b"F", 7, u, b"s%d" % u)
            disk.set_flags(b"F", 7, 1, ("\\Seen",))
            await disk.flush()

        trio.run(main)
        assert calls == ["put_bodies", "put_structures", "put_bodies", "put_structures", "set_flags"], calls
        assert s.body_uids(b"F", 7) == set(range(1, 301))
        assert [s.get_structure(b"F", 7, u) for u in (1, 256, 257, 300)] == [b"s1", b"s256", b"s257", b"s300"]
        assert s.get_body(b"F", 7, 300) == b"body 300"
        assert s.get_folder(b"F").messages[0].flags == ("\\Seen",)
