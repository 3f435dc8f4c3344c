"""Unit tests for the imapfs/store/ package: no server, no mount.

Table-driven round trips, a model-based (hypothesis stateful) test of the
folder/body operations, torn and foreign body files, LRU eviction, the
directory lock, the journal (including a child killed with SIGKILL right after
``journal_add`` returned), ENOSPC (monkeypatched write and a real 2 MB tmpfs),
and the 100k-message timings (printed, not asserted).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import runpy
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from imapfs.errors import ImapfsError
from imapfs.imapproto import ListEntry
from imapfs.records import RawMeta
from imapfs.store import (
    FolderRecord,
    Store,
    StoreError,
    StoreFull,
    StoreLocked,
)
from imapfs.store import base as store_base
from imapfs.store import bodies as store_bodies
from imapfs.store import cachedb as store_cachedb
from imapfs.store import journal as store_journal

REPO = Path(__file__).resolve().parents[1]
BIG = 1 << 40


def meta(uid: int, flags: tuple[str, ...] = (), subject: bytes | None = b"s", size: int = 100) -> RawMeta:
    return RawMeta(uid, size, 1_700_000_000 + uid, flags, subject)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def s(root: Path):
    with Store(root, BIG) as st_:
        yield st_


def body_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "bodies").glob("*/*"))


def blobs(root: Path) -> list[bytes]:
    """The inline bodies' bytes in cache.db, read through a connection of the test's own."""
    con = sqlite3.connect(f"file:{root / 'cache.db'}?mode=ro", uri=True)
    try:
        return [bytes(d) for (d,) in con.execute("SELECT data FROM blobs ORDER BY id")]
    finally:
        con.close()


def stored(root: Path) -> tuple[int, int]:
    """(count, bytes) of the bodies really kept, files and inline, counted apart from the
    store's counters and its index: what ``body_count`` and ``body_bytes`` must equal."""
    files, inline = body_files(root), blobs(root)
    return len(files) + len(inline), sum(p.stat().st_size for p in files) + sum(map(len, inline))


def child(code: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True)


# ---------------------------------------------------------------- opening, lock, formats

def test_creates_root_and_parents_0700(tmp_path: Path):
    root = tmp_path / "a" / "b" / "c"
    mode_before = stat.S_IMODE(os.stat(tmp_path).st_mode)
    with Store(root, BIG):
        for d in (tmp_path / "a", tmp_path / "a" / "b", root, root / "bodies", root / "journal-blobs"):
            assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
        for f in ("cache.db", "journal.db", "lock"):
            assert stat.S_IMODE(os.stat(root / f).st_mode) == 0o600, f
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) == mode_before


def test_root_that_is_a_file(tmp_path: Path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        Store(tmp_path / "f", BIG)


def test_second_store_on_one_root_is_locked(root: Path):
    a = Store(root, BIG)
    with pytest.raises(StoreLocked, match=f"in use by another imapfs \\(pid {os.getpid()}\\)"):
        Store(root, BIG)
    assert issubclass(StoreLocked, StoreError) and issubclass(StoreError, ImapfsError)
    a.close()
    a.close()  # idempotent
    with Store(root, BIG) as b:
        assert b.stats()["folders"] == 0


def test_locked_by_another_process(root: Path):
    Store(root, BIG).close()
    p = child("import sys, time; from imapfs.store import Store; s = Store(sys.argv[1], 1); "
              "print('open', flush=True); time.sleep(30)", str(root))
    try:
        assert p.stdout.readline().strip() == "open"
        with pytest.raises(StoreLocked, match=f"pid {p.pid}"):
            Store(root, BIG)
    finally:
        p.kill()
        p.wait()
    Store(root, BIG).close()  # the kernel released the lock with the process


def test_closed_store_raises_store_error(root: Path):
    st_ = Store(root, BIG)
    st_.close()
    with pytest.raises(StoreError, match="closed"):
        st_.get_folder(b"INBOX")
    with pytest.raises(StoreError, match="closed"):
        st_.journal_pending()


@pytest.mark.parametrize("db", ["cache.db", "journal.db"])
def test_newer_format_is_refused(root: Path, db: str):
    Store(root, BIG).close()
    con = sqlite3.connect(root / db)
    con.execute("PRAGMA user_version=99")
    con.close()
    with pytest.raises(StoreError, match="newer imapfs"):
        Store(root, BIG)


@pytest.mark.parametrize("garbage", [b"not a database at all" * 200, b"SQLite format 3\0" + b"\xff" * 5000])
def test_corrupt_cache_is_moved_aside_journal_kept(root: Path, garbage: bytes, caplog):
    with Store(root, BIG) as st_:
        st_.put_folder(b"INBOX", 7, 3, None, [meta(1), meta(2)], replace=True)
        st_.put_body(b"INBOX", 7, 1, b"hello")
        seq = st_.journal_add("delete", {"folder": b"INBOX", "uid": 2})
    (root / "cache.db").write_bytes(garbage)
    with caplog.at_level(logging.WARNING, logger="imapfs.store"):
        with Store(root, BIG) as st_:
            assert st_.get_folder(b"INBOX") is None
            assert st_.get_body(b"INBOX", 7, 1) is None
            assert [e.seq for e in st_.journal_pending()] == [seq]
            assert st_.stats()["body_count"] == 0
            assert "damaged" in st_.stats()["last_error"]
            st_.put_folder(b"INBOX", 7, 3, None, [meta(1)], replace=True)  # usable again
    assert list(root.glob("cache.db.corrupt-*"))
    assert body_files(root) == []
    assert "damaged" in caplog.text


def test_corrupt_journal_is_refused_and_left_alone(root: Path):
    with Store(root, BIG) as st_:
        st_.journal_add("mkdir", {"name": b"X"})
    garbage = b"garbage, not sqlite" * 300
    (root / "journal.db").write_bytes(garbage)
    with pytest.raises(StoreError, match=r"journal .* is damaged"):
        Store(root, BIG)
    assert (root / "journal.db").read_bytes() == garbage
    fd = os.open(root / "lock", os.O_RDWR)  # and the lock was released on the way out
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- folder list

LIST_CASES = [
    [],
    [ListEntry(frozenset(), "/", b"INBOX")],
    [ListEntry(frozenset({b"\\noselect", b"\\haschildren"}), "/", b"A"),
     ListEntry(frozenset({b"\\hasnochildren"}), "/", b"A/b"),
     ListEntry(frozenset({b"\\xff\xfe"}), None, b"&AOk-t&AOk-"),
     ListEntry(frozenset(), ".", b"\xff\x00raw")],
]


@pytest.mark.parametrize("entries", LIST_CASES)
def test_folder_list_round_trip(s: Store, entries):
    assert s.get_folders() is None
    s.put_folders(entries)
    assert s.get_folders() == entries
    s.put_folders(entries[:1])
    assert s.get_folders() == entries[:1]


# ---------------------------------------------------------------- folder state

FLAG_CASES = [(), ("\\Seen",), ("\\Seen", "\\Flagged", "$Label1"), ("",), ("a\x1fb", "c"), ("\x1ejson",),
              ("ünïcode",), ("\ud800",), ("", "")]


@pytest.mark.parametrize("flags", FLAG_CASES)
@pytest.mark.parametrize("subject", [None, b"", b"Hello", b"\xff\x00=?utf-8?q?x?="])
def test_message_round_trip(s: Store, flags, subject):
    m = RawMeta(4_294_967_295, 2**40, -2**40, flags, subject)
    s.put_folder(b"F", 2**32 - 1, 2**32, 2**63 - 1, [m], replace=True)
    rec = s.get_folder(b"F")
    assert rec == FolderRecord(b"F", 2**32 - 1, 2**32, 2**63 - 1, [m])


def test_put_folder_merge_replace_and_sorted(s: Store):
    assert s.get_folder(b"F") is None
    s.put_folder(b"F", 1, 10, 5, [meta(5), meta(2), meta(9)], replace=True)
    assert [m.uid for m in s.get_folder(b"F").messages] == [2, 5, 9]
    s.put_folder(b"F", 1, 12, 6, [meta(11), meta(2, ("\\Seen",))], replace=False)
    rec = s.get_folder(b"F")
    assert [(m.uid, m.flags) for m in rec.messages] == [(2, ("\\Seen",)), (5, ()), (9, ()), (11, ())]
    assert (rec.uidnext, rec.highestmodseq) == (12, 6)
    s.put_folder(b"F", 1, 13, None, [meta(9)], replace=True)
    rec = s.get_folder(b"F")
    assert [m.uid for m in rec.messages] == [9] and rec.highestmodseq is None
    s.put_folder(b"F", 1, 13, None, [], replace=True)
    assert s.get_folder(b"F").messages == []  # stored and empty: not None


def test_incremental_ops_need_matching_uidvalidity(s: Store):
    for fn, args in [(s.add_messages, ([meta(1)],)), (s.remove_messages, ([1],)),
                     (s.set_flags, (1, ["\\Seen"])), (s.set_sync_state, (5, 5))]:
        assert fn(b"nope", 1, *args) is False, fn
    s.put_folder(b"F", 1, 3, 1, [meta(1), meta(2)], replace=True)
    for fn, args in [(s.add_messages, ([meta(3)],)), (s.remove_messages, ([1],)),
                     (s.set_flags, (1, ["\\Seen"])), (s.set_sync_state, (5, 5))]:
        assert fn(b"F", 2, *args) is False, fn
    assert s.get_folder(b"F") == FolderRecord(b"F", 1, 3, 1, [meta(1), meta(2)])
    assert s.add_messages(b"F", 1, [meta(3), meta(1, ("\\Answered",))])
    assert s.set_flags(b"F", 1, 2, ["\\Deleted", "x"])
    assert not s.set_flags(b"F", 1, 99, ["\\Seen"])
    assert s.set_flags_many(b"F", 1, {1: (), 3: ("a",), 77: ("b",)}) == 2
    assert s.remove_messages(b"F", 1, [3, 1234])
    assert s.set_sync_state(b"F", 1, 9, 99)
    assert s.get_folder(b"F") == FolderRecord(b"F", 1, 9, 99, [meta(1), meta(2, ("\\Deleted", "x"))])


def test_uidvalidity_change_replaces_and_drops_bodies(s: Store, root: Path):
    s.put_folder(b"F", 1, 4, None, [meta(1), meta(2), meta(3)], replace=True)
    for u in (1, 2):
        assert s.put_body(b"F", 1, u, b"old %d" % u)
    s.put_folder(b"G", 1, 2, None, [meta(1)], replace=True)
    assert s.put_body(b"G", 1, 1, b"other folder")
    s.put_folder(b"F", 2, 3, None, [meta(2)], replace=False)  # replace=False, still replaces
    assert s.get_folder(b"F") == FolderRecord(b"F", 2, 3, None, [meta(2)])
    assert s.get_body(b"F", 1, 1) is None and s.get_body(b"F", 2, 2) is None
    assert not s.has_body(b"F", 2, 2)
    assert s.get_body(b"G", 1, 1) == b"other folder"
    assert s.stats()["body_count"] == 1 and stored(root) == (1, s.stats()["body_bytes"])


def test_replace_drops_bodies_of_vanished_messages(s: Store, root: Path):
    s.put_folder(b"F", 1, 4, None, [meta(1), meta(2), meta(3)], replace=True)
    for u in (1, 2, 3):
        s.put_body(b"F", 1, u, b"b%d" % u)
    s.put_folder(b"F", 1, 5, None, [meta(1), meta(3), meta(4)], replace=True)
    assert [s.get_body(b"F", 1, u) for u in (1, 2, 3)] == [b"b1", None, b"b3"]
    s.remove_messages(b"F", 1, [3])
    assert s.get_body(b"F", 1, 3) is None
    assert stored(root) == (1, s.stats()["body_bytes"]) and s.stats()["body_count"] == 1


def test_drop_folder(s: Store, root: Path):
    for n in (b"A", b"A/x", b"Ax", b"B"):
        s.put_folder(n, 1, 2, None, [meta(1)], replace=True)
        s.put_body(n, 1, 1, n)
    s.put_folders([ListEntry(frozenset(), "/", b"A")])
    assert s.drop_folder(b"A") == 1
    assert s.folder_names() == [b"A/x", b"Ax", b"B"]
    assert s.drop_folder(b"A", "/") == 1  # A/x; never Ax
    assert s.folder_names() == [b"Ax", b"B"]
    assert s.get_folders() == [ListEntry(frozenset(), "/", b"A")]  # the listing is the server's
    assert s.drop_folder(b"nope") == 0
    assert stored(root) == (2, s.stats()["body_bytes"])


RENAME_CASES = [
    # (old, new, delimiter, folders after, list after, {folder after: the folder it was before})
    (b"A", b"C", "/", [b"Ax", b"B", b"C", b"C/x", b"C/x/y"], [b"C", b"C/x", b"C/x/y", b"Ax", b"B"],
     {b"C": b"A", b"C/x": b"A/x", b"C/x/y": b"A/x/y"}),
    (b"A", b"C", None, [b"A/x", b"A/x/y", b"Ax", b"B", b"C"], [b"C", b"A/x", b"A/x/y", b"Ax", b"B"],
     {b"C": b"A"}),
    (b"A/x", b"B/x", "/", [b"A", b"Ax", b"B", b"B/x", b"B/x/y"], [b"A", b"B/x", b"B/x/y", b"Ax", b"B"],
     {b"B/x": b"A/x", b"B/x/y": b"A/x/y"}),
    (b"A", b"B", "/", [b"Ax", b"B", b"B/x", b"B/x/y"], [b"B", b"B/x", b"B/x/y", b"Ax"],  # stale B dropped
     {b"B": b"A", b"B/x": b"A/x", b"B/x/y": b"A/x/y"}),
    (b"Z", b"Q", "/", [b"A", b"A/x", b"A/x/y", b"Ax", b"B"], [b"A", b"A/x", b"A/x/y", b"Ax", b"B"], {}),
]


@pytest.mark.parametrize("old,new,delim,after,listed,moves", RENAME_CASES)
def test_rename_folder(s: Store, root: Path, old, new, delim, after, listed, moves):
    names = [b"A", b"A/x", b"A/x/y", b"Ax", b"B"]
    for i, n in enumerate(names):
        s.put_folder(n, 100 + i, 2, None, [meta(1, subject=n)], replace=True)
        s.put_body(n, 100 + i, 1, b"body of " + n)
    s.put_folders([ListEntry(frozenset(), "/", n) for n in names])
    before = {n: s.get_folder(n) for n in names}
    moved = s.rename_folder(old, new, delim)
    assert s.folder_names() == after
    assert [e.name for e in s.get_folders()] == listed
    assert moved == len(moves)
    for t in after:
        src = moves.get(t, t)  # a stale target loses to the folder moved onto it
        rec = s.get_folder(t)
        assert rec.uidvalidity == before[src].uidvalidity and rec.messages == before[src].messages
        assert s.get_body(t, rec.uidvalidity, 1) == b"body of " + src
    assert s.stats()["body_count"] == len(after) == stored(root)[0]


def test_name_must_be_bytes(s: Store):
    with pytest.raises(StoreError, match="bytes"):
        s.get_folder("INBOX")
    with pytest.raises(StoreError):
        s.put_folder(b"F", 2**64, 2, None, [], replace=True)


# ---------------------------------------------------------------- model-based test of folders and bodies

NAMES = [b"A", b"A/x", b"Ax"]
UIDS = st.integers(1, 3)
metas_st = st.lists(st.builds(RawMeta, UIDS, st.integers(0, 2**40), st.integers(-2**40, 2**40),
                              st.lists(st.sampled_from(["\\Seen", "$X", "", "a\x1fb", "é"]), max_size=3).map(tuple),
                              st.none() | st.binary(max_size=8)), max_size=5)


def in_family(name: bytes, top: bytes, delim: str | None) -> bool:
    """The model's hierarchy: ``name`` is ``top`` or below it, compared by path
    components (written here, not taken from the store, so the test checks it)."""
    if not delim:
        return name == top
    parts, top_parts = name.split(delim.encode()), top.split(delim.encode())
    return parts[:len(top_parts)] == top_parts


class StoreModel(RuleBasedStateMachine):
    """Compare every folder/body operation with a dict model."""

    @initialize()
    def setup(self):
        self.dir = tempfile.mkdtemp(prefix="store-model-")
        self.s = Store(self.dir, BIG)
        self.s.cache.bodies.inline_max = 32  # bodies of up to 64 bytes: both kinds, and changes of kind
        self.m: dict[bytes, dict] = {}

    def teardown(self):
        self.s.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(name=st.sampled_from(NAMES), uv=st.integers(1, 2), uidnext=st.none() | st.integers(1, 9),
          hms=st.none() | st.integers(1, 9), metas=metas_st, replace=st.booleans())
    def put_folder(self, name, uv, uidnext, hms, metas, replace):
        self.s.put_folder(name, uv, uidnext, hms, metas, replace)
        f = self.m.get(name)
        if f is None or f["uv"] != uv:
            f = self.m[name] = {"uv": uv, "msgs": {}, "bodies": {}}
        elif replace:
            f["msgs"] = {}
        for mm in metas:
            f["msgs"][mm.uid] = mm
        if replace:
            f["bodies"] = {u: b for u, b in f["bodies"].items() if u in f["msgs"]}
        f["uidnext"], f["hms"] = uidnext, hms

    def _f(self, name, uv):
        f = self.m.get(name)
        return f if f is not None and f["uv"] == uv else None

    def _target(self, data):
        """Mostly a stored folder under its UIDVALIDITY; sometimes a wrong one or an unknown one."""
        if self.m and data.draw(st.integers(0, 4)):
            name = data.draw(st.sampled_from(sorted(self.m)))
            uv = self.m[name]["uv"] if data.draw(st.integers(0, 5)) else 3 - self.m[name]["uv"]
            return name, uv
        return data.draw(st.sampled_from(NAMES)), data.draw(st.integers(1, 2))

    @rule(data=st.data(), metas=metas_st)
    def add(self, data, metas):
        name, uv = self._target(data)
        f = self._f(name, uv)
        assert self.s.add_messages(name, uv, metas) is (f is not None)
        if f:
            f["msgs"].update({mm.uid: mm for mm in metas})

    @rule(data=st.data(), uids=st.lists(UIDS, max_size=3))
    def remove(self, data, uids):
        name, uv = self._target(data)
        f = self._f(name, uv)
        assert self.s.remove_messages(name, uv, uids) is (f is not None)
        if f:
            for u in uids:
                f["msgs"].pop(u, None)
                f["bodies"].pop(u, None)

    @rule(data=st.data(), uid=UIDS, flags=st.lists(st.sampled_from(["\\Seen", "k", "\x1e"]), max_size=2).map(tuple))
    def flags(self, data, uid, flags):
        name, uv = self._target(data)
        f = self._f(name, uv)
        ok = f is not None and uid in f["msgs"]
        assert self.s.set_flags(name, uv, uid, flags) is ok
        if ok:
            old = f["msgs"][uid]
            f["msgs"][uid] = RawMeta(uid, old.size, old.internaldate, flags, old.subject)

    @rule(data=st.data(), uid=UIDS, body=st.binary(max_size=64))
    def put_body(self, data, uid, body):
        name, uv = self._target(data)
        f = self._f(name, uv)
        assert self.s.put_body(name, uv, uid, body, fsync=False) is (f is not None)
        if f:
            f["bodies"][uid] = body

    @rule(name=st.sampled_from(NAMES), delim=st.sampled_from([None, "/"]))
    def drop(self, name, delim):
        gone = [n for n in self.m if in_family(n, name, delim)]
        assert self.s.drop_folder(name, delim) == len(gone)
        for n in gone:
            del self.m[n]

    @rule(old=st.sampled_from(NAMES), new=st.sampled_from(NAMES + [b"B", b"B/x"]), delim=st.sampled_from([None, "/"]))
    def rename(self, old, new, delim):
        if old == new or (delim and new.startswith(old + b"/")):
            return  # IMAP forbids renaming a folder into itself
        moves = {n: new + n[len(old):] for n in self.m if in_family(n, old, delim)}
        assert self.s.rename_folder(old, new, delim) == len(moves)
        moved = {t: self.m.pop(n) for n, t in moves.items()}
        for t in moved:
            self.m.pop(t, None)
        self.m.update(moved)

    @invariant()
    def agrees(self):
        if not hasattr(self, "s"):
            return
        assert self.s.folder_names() == sorted(self.m)
        count = 0
        for n, f in self.m.items():
            rec = self.s.get_folder(n)
            assert rec == FolderRecord(n, f["uv"], f.get("uidnext"), f.get("hms"),
                                       [f["msgs"][u] for u in sorted(f["msgs"])])
            for u in range(1, 4):
                assert self.s.get_body(n, f["uv"], u) == f["bodies"].get(u)
            count += len(f["bodies"])
        assert self.s.stats()["body_count"] == count
        assert stored(Path(self.dir)) == (count, self.s.stats()["body_bytes"])


StoreModel.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
test_store_model = StoreModel.TestCase


# ---------------------------------------------------------------- bodies

@pytest.mark.parametrize("data", [b"", b"x", b"\r\n" * 1000, os.urandom(300_000)])
def test_body_round_trip(s: Store, data: bytes):
    assert not s.put_body(b"F", 1, 1, data)  # no folder: not stored
    s.put_folder(b"F", 1, 2, None, [meta(1)], replace=True)
    assert not s.has_body(b"F", 1, 1) and s.body_size(b"F", 1, 1) is None and s.get_body(b"F", 1, 1) is None
    assert s.put_body(b"F", 1, 1, data)
    assert not s.put_body(b"F", 9, 1, data)  # wrong UIDVALIDITY
    assert s.has_body(b"F", 1, 1) and s.body_size(b"F", 1, 1) == len(data)
    assert s.get_body(b"F", 1, 1) == data
    assert s.put_body(b"F", 1, 1, data + b"!")  # overwrite
    assert s.get_body(b"F", 1, 1) == data + b"!"
    assert s.stats()["body_count"] == 1
    assert s.stats()["body_bytes"] == stored(s.root)[1]
    assert s.copy_body((b"F", 1, 1), (b"F", 1, 2))
    assert s.get_body(b"F", 1, 2) == data + b"!"
    assert not s.copy_body((b"F", 1, 3), (b"F", 1, 4))


def _two_bodies(s: Store) -> tuple[Path, Path]:
    s.cache.bodies.inline_max = -1  # files: the damage below is to their headers
    s.put_folder(b"F", 1, 3, None, [meta(1), meta(2)], replace=True)
    s.put_body(b"F", 1, 1, b"first message " * 50)
    before = set(body_files(s.root))
    s.put_body(b"F", 1, 2, b"second message " * 50)
    (p2,) = set(body_files(s.root)) - before
    (p1,) = before
    return p1, p2


def _flip(pos: int):
    def f(p: Path, other: Path) -> None:
        b = bytearray(p.read_bytes())
        b[pos] ^= 0x01
        p.write_bytes(bytes(b))
    return f


TORN = {
    "truncated to half": lambda p, o: os.truncate(p, p.stat().st_size // 2),
    "truncated to zero": lambda p, o: os.truncate(p, 0),
    "header only": lambda p, o: os.truncate(p, 60),
    "one byte short": lambda p, o: os.truncate(p, p.stat().st_size - 1),
    "one byte more": lambda p, o: p.write_bytes(p.read_bytes() + b"x"),
    # header: magic 0-7, key length 8-9, key 10-45 (36 bytes here), data length 46-53, sha256 54-85
    "magic flipped": _flip(0),
    "key length flipped": _flip(9),
    "key flipped": _flip(12),
    "length flipped": _flip(53),
    "digest flipped": _flip(60),
    "data flipped": _flip(-1),
    "foreign (another key's file)": lambda p, o: shutil.copyfile(o, p),
    "garbage": lambda p, o: p.write_bytes(os.urandom(800)),
}


@pytest.mark.parametrize("how", list(TORN))
def test_torn_body_is_discarded_never_served(s: Store, how: str, caplog):
    p1, p2 = _two_bodies(s)
    TORN[how](p1, p2)
    with caplog.at_level(logging.WARNING, logger="imapfs.store"):
        assert s.get_body(b"F", 1, 1) is None
    assert not p1.exists() and not s.has_body(b"F", 1, 1)
    assert s.get_body(b"F", 1, 2) == b"second message " * 50
    assert s.stats()["body_count"] == 1 and s.stats()["body_bytes"] == p2.stat().st_size
    assert "damaged" in caplog.text
    assert s.put_body(b"F", 1, 1, b"again") and s.get_body(b"F", 1, 1) == b"again"


def test_missing_body_file(s: Store):
    p1, _ = _two_bodies(s)
    p1.unlink()
    assert s.get_body(b"F", 1, 1) is None and not s.has_body(b"F", 1, 1)


def test_reopen_sweeps_tmp_partial_and_stray_files(root: Path):
    with Store(root, BIG) as s:
        p1, p2 = _two_bodies(s)
        s.put_folder(b"G", 1, 2, None, [meta(1)], replace=True)
        s.put_body(b"G", 1, 1, b"third")
    # a writer killed mid-put: its tmp file, a torn file at a final name, a file with no row, a row with no file
    (p1.parent / ".tmp-deadbeef").write_bytes(p1.read_bytes()[:100])
    os.truncate(p1, 50)
    stray = root / "bodies" / "ab" / ("ab" + "0" * 62)
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"stray")
    p2.unlink()
    with Store(root, BIG) as s:
        assert not (p1.parent / ".tmp-deadbeef").exists() and not stray.exists()
        assert s.stats()["body_count"] == 2  # p1's row remains until read: it is verified then
        assert s.get_body(b"F", 1, 1) is None
        assert s.get_body(b"F", 1, 2) is None and s.get_body(b"G", 1, 1) == b"third"
        assert s.stats()["body_count"] == 1
        assert s.stats()["body_bytes"] == stored(root)[1]


PUT_BODY_CHILD = r"""
import hashlib, sys
from imapfs.store import Store
s = Store(sys.argv[1], 1 << 40)
s.cache.bodies.inline_max = 50_000  # both kinds, and a UID's body changes kind
s.put_folder(b"F", 1, None, None, [], replace=True)
i = 0
while True:
    i += 1
    uid = i % 40 + 1
    data = hashlib.sha256(b"%d" % i).digest() * (200 + i % 3000)
    s.put_body(b"F", 1, uid, data, fsync=bool(i % 2))
    print("put", uid, i, flush=True)
"""


def _written_by_child(uid: int, got: bytes) -> bool:
    """Whether *got* is exactly what PUT_BODY_CHILD wrote for *uid* at some step i."""
    digest, k = got[:32], len(got) // 32
    for i in range(uid - 1 or 40, 1_000_000, 40):
        if hashlib.sha256(b"%d" % i).digest() == digest:
            return got == digest * (200 + i % 3000) and k == 200 + i % 3000
    return False


@pytest.mark.parametrize("after", [3, 25, 70])
def test_writer_killed_during_put_body_never_serves_torn_bytes(root: Path, after: int):
    p = child(PUT_BODY_CHILD, str(root))
    try:
        for _ in range(after):
            assert p.stdout.readline().startswith("put"), p.stderr.read()
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with Store(root, BIG) as s:
        assert not list(root.glob("bodies/*/.tmp-*"))
        served = 0
        for uid in range(1, 41):
            got = s.get_body(b"F", 1, uid)
            if got is not None:
                served += 1
                assert _written_by_child(uid, got)
        assert served >= min(after, 40)
        assert s.stats()["body_bytes"] == stored(root)[1]


def test_concurrent_threads(root: Path):
    errors = []
    with Store(root, 200_000) as s:
        s.cache.bodies.inline_max = 2500  # both kinds, and bodies that change kind
        for n in (b"A", b"B", b"C"):
            s.put_folder(n, 1, None, None, [], replace=True)

        def work(n: bytes, k: int):
            try:
                for i in range(60):
                    uid = i % 15 + 1
                    data = bytes([k]) * (1000 + i * 50)
                    s.put_body(n, 1, uid, data, fsync=False)
                    got = s.get_body(n, 1, (i * 7) % 15 + 1)
                    assert got is None or (set(got) <= {0, 1, 2, 3, 4, 5} and len(set(got)) == 1)
                    if i % 20 == 19:
                        s.remove_messages(n, 1, [uid])
                    s.journal_add("flags", {"folder": n, "i": i})
            except BaseException as e:  # noqa: BLE001 - reported below  # pragma: no cover
                errors.append(e)

        ts = [threading.Thread(target=work, args=(n, k)) for k, n in enumerate([b"A", b"B", b"C", b"A", b"B"])]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors, errors
        st_ = s.stats()
        assert st_["body_bytes"] <= 200_000 + 5 * 4000
        assert st_["body_bytes"] == stored(root)[1]
        assert st_["pending"] == 300
        assert [e.seq for e in s.journal_pending()] == sorted(e.seq for e in s.journal_pending())


# ---------------------------------------------------------------- eviction

class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _disk(s: Store) -> int:
    return s.stats()["body_bytes"]


def test_lru_eviction_order_and_pinned(root: Path):
    clock = Clock()
    with Store(root, BIG, pinned=lambda n: n == b"Keep", clock=clock, atime_granularity=10) as s:
        for n in (b"F", b"Keep"):
            s.put_folder(n, 1, None, None, [], replace=True)
        clock.t = 0
        s.put_body(b"Keep", 1, 1, b"k" * 1000)  # oldest of all, but pinned
        for uid in (1, 2, 3):
            clock.t = uid
            s.put_body(b"F", 1, uid, b"f" * 1000)
        one = _disk(s) // 4
        s.max_bytes = 4 * one
        clock.t = 5
        assert s.get_body(b"F", 1, 1)  # within the granularity: its access time stays 1
        clock.t = 20
        assert s.get_body(b"F", 1, 2)  # past it: 2 is now the most recent
        clock.t = 21
        s.put_body(b"F", 1, 4, b"f" * 1000)  # one over: evicts LRU unpinned = uid 1
        assert [s.has_body(b"F", 1, u) for u in (1, 2, 3, 4)] == [False, True, True, True]
        clock.t = 22
        s.put_body(b"F", 1, 5, b"f" * 1000)  # next: uid 3 (2 was read at t=20)
        assert [s.has_body(b"F", 1, u) for u in (2, 3, 4, 5)] == [True, False, True, True]
        assert s.has_body(b"Keep", 1, 1)
        s.max_bytes = 0
        assert s.evict() == 3 * one
        assert _disk(s) == one and s.has_body(b"Keep", 1, 1)  # pinned mail stays even over the limit
        assert s.put_body(b"F", 1, 6, b"f" * 1000)  # the body just written is never its own victim
        assert s.get_body(b"F", 1, 6) == b"f" * 1000
        assert stored(root) == (2, _disk(s))


def test_eviction_survives_a_broken_pinned_predicate(root: Path, caplog):
    def pinned(n: bytes) -> bool:
        raise RuntimeError("boom")

    with Store(root, 1, pinned=pinned) as s:
        s.put_folder(b"F", 1, None, None, [], replace=True)
        s.put_body(b"F", 1, 1, b"x")
        s.put_body(b"F", 1, 2, b"y")
        assert s.has_body(b"F", 1, 1) and s.has_body(b"F", 1, 2)  # treated as pinned
    assert "treating the folder as pinned" in caplog.text


# ---------------------------------------------------------------- journal

ARGS_CASES = [
    {},
    {"folder": b"INBOX", "uid": 7, "uidvalidity": 1234},
    {"src": b"\xff\x00&AOk-", "dst": b"", "uids": [1, 2, 3], "flags": ("\\Seen", "$x")},
    {"$b": "not bytes", "$t": [1], "nested": {"$d": {"x": b"y"}}, "f": 1.5, "n": None, "t": True},
    {"deep": [[{"a": (b"b", [b"c"])}]], "big": 2**80, "text": "ünï\ud800"},
]


@pytest.mark.parametrize("args", ARGS_CASES)
def test_journal_args_round_trip(s: Store, args):
    seq = s.journal_add("move", args)
    (e,) = s.journal_pending()
    assert (e.seq, e.op, e.args, e.blob_path, e.attempts, e.last_error) == (seq, "move", args, None, 0, None)
    assert e.read_blob() is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.lists(inner, max_size=4).map(tuple)
    | st.dictionaries(st.text(max_size=3) | st.sampled_from(["$b", "$t", "$d"]), inner, max_size=4),
    max_leaves=20)


@given(st.dictionaries(st.text(max_size=4) | st.sampled_from(["$b", "$t", "$d"]), json_values, max_size=5))
@settings(max_examples=150, deadline=None)
def test_journal_args_encoding_property(args):
    assert store_journal._dec_arg(json.loads(json.dumps(store_journal._enc_arg(args), ensure_ascii=True))) == args


@pytest.mark.parametrize("bad", [{"x": {1, 2}}, {"x": {1: "int key"}}, {"x": object()}])
def test_journal_args_refused(s: Store, bad):
    with pytest.raises(StoreError):
        s.journal_add("x", bad)
    assert s.journal_pending() == []


def test_journal_lifecycle(root: Path):
    clock = Clock()
    with Store(root, BIG, clock=clock) as s:
        blob = b"From: a\r\nSubject: new\r\n\r\nbody\r\n"
        a = s.journal_add("mkdir", {"name": b"New"})
        clock.t += 1
        b = s.journal_add("append", {"folder": b"New", "flags": ("\\Seen",)}, blob)
        c = s.journal_add("move", {"src": b"INBOX", "uid": 3, "dst": b"New"})
        d = s.journal_add("append", {"folder": b"Gone"}, b"another new message")
        assert a < b < c < d
        pend = s.journal_pending()
        assert [(e.seq, e.op) for e in pend] == [(a, "mkdir"), (b, "append"), (c, "move"), (d, "append")]
        assert pend[1].read_blob() == blob and pend[1].blob_size == len(blob) and pend[1].created == 1001
        assert pend[1].blob_path.parent == root / "journal-blobs"
        assert pend[2].started is None
        s.journal_started(c)
        s.journal_failed(c, "NO [TRYCREATE] no such mailbox")
        s.journal_failed(c, "connection reset")
        assert s.stats()["last_error"] == f"journal entry {c}: connection reset"
    with Store(root, BIG, clock=clock) as s:  # all of it survives a reopen
        pend = {e.seq: e for e in s.journal_pending()}
        assert (pend[c].attempts, pend[c].last_error, pend[c].started) == (2, "connection reset", 1001)
        assert pend[b].started is None
        blob_path = pend[b].blob_path
        s.journal_done(a, "created")
        s.journal_done(b, "APPENDUID 5 1")
        assert not blob_path.exists()
        s.journal_skip(c, "message 3 was expunged elsewhere")
        kept_from = pend[d].blob_path
        s.journal_skip(d, "folder Gone does not exist")
        assert not kept_from.exists()
        (kept,) = (root / "journal-kept").iterdir()
        assert kept.read_bytes() == b"another new message"  # a skipped new message is never lost
        assert s.journal_pending() == []
        hist = s.journal_history()
        assert [(h.seq, h.op, h.status) for h in hist] == [
            (d, "append", "skipped"), (c, "move", "skipped"), (b, "append", "done"), (a, "mkdir", "done")]
        assert hist[2].outcome == "APPENDUID 5 1" and hist[1].outcome == "message 3 was expunged elsewhere"
        assert "kept in" in hist[0].outcome
        assert [h.seq for h in s.journal_history(limit=2)] == [d, c]
        for fn in (s.journal_done, s.journal_skip, s.journal_failed, lambda seq, _: s.journal_started(seq)):
            with pytest.raises(StoreError, match="no pending journal entry"):
                fn(a, "again")
        e = s.journal_add("delete", {"uid": 1})
        assert e > d  # seqs are never reused
        assert s.stats()["pending"] == 1


def test_journal_blob_damage_is_reported_not_hidden(s: Store):
    seq = s.journal_add("append", {}, b"abc" * 100)
    (e,) = s.journal_pending()
    e.blob_path.write_bytes(b"abc" * 99)
    with pytest.raises(StoreError, match=f"journal entry {seq}.*does not match"):
        e.read_blob()
    e.blob_path.unlink()
    with pytest.raises(StoreError, match="cannot read"):
        e.read_blob()
    s.journal_skip(seq, "folder gone")  # a missing file does not wedge the journal
    assert "missing" in s.journal_history()[0].outcome and s.journal_pending() == []


def test_journal_reopen_sorts_blob_files(root: Path, caplog):
    with Store(root, BIG) as s:
        keep = s.journal_add("append", {}, b"pending message")
        done = s.journal_add("append", {}, b"applied message")
        pend = {e.seq: e.blob_path for e in s.journal_pending()}
        applied = pend[done].read_bytes()
        s.journal_done(done, "ok")
    # crash between journal_done's commit and its unlink: the file is still there
    pend[done].write_bytes(applied)
    # crash between a blob's rename and its row's commit: a file nobody knows
    (root / "journal-blobs" / "0123.eml").write_bytes(b"unrecorded message")
    (root / "journal-blobs" / ".tmp-0456.eml").write_bytes(b"half")
    with caplog.at_level(logging.WARNING, logger="imapfs.store"):
        with Store(root, BIG) as s:
            assert [e.seq for e in s.journal_pending()] == [keep]
            assert s.journal_pending()[0].read_blob() == b"pending message"
    assert sorted(p.name for p in (root / "journal-blobs").iterdir()) == [pend[keep].name]
    assert (root / "journal-orphans" / "0123.eml").read_bytes() == b"unrecorded message"
    assert "belongs to no journal entry" in caplog.text


JOURNAL_CHILD = r"""
import sys
from imapfs.store import Store
s = Store(sys.argv[1], 1 << 30)
i = int(sys.argv[2])
while True:
    i += 1
    seq = s.journal_add("append", {"folder": b"INBOX\xff", "i": i}, (b"message %d\r\n" % i) * (50 + i % 700))
    print("added", seq, i, flush=True)
"""


def test_journal_survives_sigkill_right_after_add(root: Path):
    reported: dict[int, int] = {}
    start = 0
    for rounds in (1, 17, 40):  # three children, killed at different points
        p = child(JOURNAL_CHILD, str(root), str(start))
        try:
            for _ in range(rounds):
                line = p.stdout.readline()
                assert line.startswith("added"), p.stderr.read()
                _, seq, i = line.split()
                reported[int(seq)] = int(i)
        finally:
            p.send_signal(signal.SIGKILL)  # it is already in the next journal_add
            p.wait()
        start = 10_000 * (rounds + 1)
    with Store(root, BIG) as s:
        pend = {e.seq: e for e in s.journal_pending()}
        assert set(reported) <= set(pend)
        for seq, e in pend.items():  # every entry there, reported or not, is whole
            i = e.args["i"]
            assert e.args == {"folder": b"INBOX\xff", "i": i}
            assert reported.get(seq, i) == i
            assert e.read_blob() == (b"message %d\r\n" % i) * (50 + i % 700)
        assert not list((root / "journal-blobs").glob(".tmp-*"))


# ---------------------------------------------------------------- ENOSPC

def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_enospc_on_body_write(s: Store, monkeypatch):
    s.cache.bodies.inline_max = -1  # files: _os_write writes them (inline ones: test_real_full_disk)
    s.put_folder(b"F", 1, 3, None, [meta(1), meta(2)], replace=True)
    s.put_body(b"F", 1, 1, b"old bytes")
    before = s.stats()
    monkeypatch.setattr(store_base, "_os_write", _enospc)
    with pytest.raises(StoreFull, match="full"):
        s.put_body(b"F", 1, 2, b"new")
    with pytest.raises(StoreFull):
        s.put_body(b"F", 1, 1, b"replacement")
    with pytest.raises(StoreFull):
        s.journal_add("append", {"folder": b"F"}, b"new message")
    assert s.stats()["last_error"].startswith("recording offline change")
    monkeypatch.undo()
    assert not list(s.root.glob("bodies/*/.tmp-*")) and list((s.root / "journal-blobs").iterdir()) == []
    assert s.journal_pending() == []
    assert s.get_body(b"F", 1, 1) == b"old bytes" and not s.has_body(b"F", 1, 2)
    after = s.stats()
    assert (after["body_bytes"], after["body_count"]) == (before["body_bytes"], before["body_count"])
    assert s.put_body(b"F", 1, 2, b"new") and s.get_body(b"F", 1, 2) == b"new"


@pytest.fixture
def tiny_fs(tmp_path: Path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)])


@pytest.mark.parametrize("kind", ["files", "inline"])
def test_real_full_disk(tiny_fs: Path, kind: str):
    root = tiny_fs / "store"
    with Store(root, BIG) as s:
        if kind == "files":
            s.cache.bodies.inline_max = -1
        s.put_folder(b"F", 1, None, None, [meta(u) for u in range(1, 200)], replace=True)
        seq = s.journal_add("mkdir", {"name": b"X"})
        full = None
        for uid in range(1, 200):
            try:
                s.put_body(b"F", 1, uid, os.urandom(64 * 1024))
            except StoreFull as e:
                full = (uid, e)
                break
        assert full is not None, "the 2 MB tmpfs never filled"
        assert "full" in str(full[1])
        assert not list(root.glob("bodies/*/.tmp-*"))
        kept = [u for u in range(1, full[0]) if s.has_body(b"F", 1, u)]
        assert kept == list(range(1, full[0]))
        assert s.stats()["body_bytes"] == stored(root)[1]
        with pytest.raises(StoreFull):
            s.journal_add("append", {"folder": b"F"}, os.urandom(512 * 1024))
        assert [e.seq for e in s.journal_pending()] == [seq]
        assert list((root / "journal-blobs").iterdir()) == []
        for u in kept:
            assert len(s.get_body(b"F", 1, u)) == 64 * 1024
        if kind == "files":
            # evicted files give their room back to the disk. Inline bodies are all in
            # cache.db-wal here (a 2 MB disk never reaches a checkpoint), and even an
            # eviction needs room to commit (docs/offline.md, "cache.db").
            s.max_bytes = 0
            s.evict()
            assert s.put_body(b"F", 1, 1, b"room again")
            s.journal_add("append", {"folder": b"F"}, b"fits now")
    with Store(root, BIG) as s:  # opens on the full disk too
        if kind == "files":
            assert s.get_body(b"F", 1, 1) == b"room again"
            assert [e.op for e in s.journal_pending()] == ["mkdir", "append"]
        else:
            assert [len(s.get_body(b"F", 1, u)) for u in kept] == [64 * 1024] * len(kept)
            assert s.stats()["body_count"] == len(kept) and s.stats()["body_bytes"] == stored(root)[1]
            assert [e.op for e in s.journal_pending()] == ["mkdir"]


# ---------------------------------------------------------------- stats and timing

def test_stats(s: Store):
    assert s.stats() == {"body_bytes": 0, "body_count": 0, "max_bytes": BIG, "folders": 0, "messages": 0,
                         "pending": 0, "last_error": None}
    s.put_folder(b"F", 1, None, None, [meta(1), meta(2)], replace=True)
    s.put_folder(b"G", 1, None, None, [meta(1)], replace=True)
    s.put_body(b"F", 1, 1, b"abc")
    s.journal_add("delete", {"uid": 1})
    got = s.stats()
    assert (got["folders"], got["messages"], got["body_count"], got["pending"]) == (2, 3, 1, 1)
    assert got["body_bytes"] == 3 == stored(s.root)[1]


def test_timing_100k(tmp_path: Path, capsys):
    bench = runpy.run_path(str(REPO / "scripts" / "store_bench.py"))["bench"]
    with capsys.disabled():
        print()
        res = bench(tmp_path / "bench", 100_000, out=lambda line: print("   ", line))
    assert res  # printed, not asserted: scripts/store_bench.py has the numbers measured


def test_body_uids_lists_stored_bodies(tmp_path):
    with Store(tmp_path / "c", 10 << 20) as s:
        s.put_folder(b"F", 7, 4, None, [RawMeta(u, 3, 0, (), None) for u in (1, 2, 3)], replace=True)
        assert s.body_uids(b"F", 7) == set()
        s.put_body(b"F", 7, 1, b"abc")
        s.put_body(b"F", 7, 3, b"xyz")
        assert s.body_uids(b"F", 7) == {1, 3}
        assert s.body_uids(b"F", 8) == set()
        assert s.body_uids(b"G", 7) == set()


def test_put_bodies_stores_a_batch_in_one_go(tmp_path):
    with Store(tmp_path / "c", 10 << 20) as s:
        s.put_folder(b"F", 7, 9, None, [RawMeta(u, 3, 0, (), None) for u in range(1, 9)], replace=True)
        n = s.put_bodies([(b"F", 7, u, b"m%d" % u) for u in range(1, 6)] + [(b"F", 8, 6, b"wrong uv"),
                                                                           (b"G", 7, 1, b"no folder")])
        assert n == 5
        assert s.body_uids(b"F", 7) == {1, 2, 3, 4, 5}
        assert s.get_body(b"F", 7, 3) == b"m3"
        assert s.stats()["body_count"] == 5
    with Store(tmp_path / "c", 10 << 20) as s:  # survives a reopen (and its sweep)
        assert s.get_body(b"F", 7, 5) == b"m5"


# ---------------------------------------------------------------- inline bodies (issue 12, stop 18)

INLINE_MAX = store_bodies.INLINE_MAX


@pytest.mark.parametrize("batch", [False, True], ids=["put_body", "put_bodies"])
@pytest.mark.parametrize("size,inline", [(0, True), (1, True), (INLINE_MAX - 1, True), (INLINE_MAX, True),
                                         (INLINE_MAX + 1, False), (2 * INLINE_MAX, False)])
def test_inline_or_file_by_size(root: Path, size: int, inline: bool, batch: bool):
    data = os.urandom(size)
    with Store(root, BIG) as s:
        s.put_folder(b"F", 1, 2, None, [meta(1)], replace=True)
        assert (s.put_bodies([(b"F", 1, 1, data)]) == 1) if batch else s.put_body(b"F", 1, 1, data)
        assert blobs(root) == ([data] if inline else [])
        assert len(body_files(root)) == (0 if inline else 1)
        assert s.stats()["body_bytes"] == stored(root)[1]
    with Store(root, BIG) as s:  # the sweep at open keeps both kinds
        assert s.get_body(b"F", 1, 1) == data and s.body_size(b"F", 1, 1) == size
        assert s.has_body(b"F", 1, 1) and s.body_uids(b"F", 1) == {1}
        assert (s.stats()["body_count"], s.stats()["body_bytes"]) == stored(root)
        assert stored(root)[0] == 1


@pytest.mark.parametrize("src_size,dst_before", [(100, None), (100, 100), (100, 3000), (3000, 100), (3000, None)])
def test_copy_body_and_changes_of_kind(s: Store, src_size: int, dst_before: int | None):
    s.cache.bodies.inline_max = 1000
    s.put_folder(b"F", 1, 2, None, [meta(1)], replace=True)
    s.put_folder(b"G", 5, 3, None, [meta(2)], replace=True)
    src = os.urandom(src_size)
    assert s.put_body(b"F", 1, 1, src)
    if dst_before is not None:
        assert s.put_body(b"G", 5, 2, os.urandom(dst_before))
    assert s.copy_body((b"F", 1, 1), (b"G", 5, 2))
    assert s.get_body(b"G", 5, 2) == src == s.get_body(b"F", 1, 1)
    inline = src_size <= 1000
    assert blobs(root=s.root) == ([src, src] if inline else [])  # the replaced body's bytes are gone
    assert len(body_files(s.root)) == (0 if inline else 2)
    assert (s.stats()["body_count"], s.stats()["body_bytes"]) == stored(s.root) and stored(s.root)[0] == 2


def test_eviction_counts_both_kinds(root: Path):
    clock = Clock()
    with Store(root, BIG, clock=clock, atime_granularity=1) as s:
        s.cache.bodies.inline_max = 1500
        s.put_folder(b"F", 1, None, None, [], replace=True)
        sizes = {1: 1000, 2: 2000, 3: 1000, 4: 2000, 5: 1000}  # inline, file, inline, file, inline
        for uid, n in sizes.items():
            clock.t = uid
            s.put_body(b"F", 1, uid, bytes([uid]) * n)
        total = s.stats()["body_bytes"]
        assert stored(root) == (5, total) and len(blobs(root)) == 3
        file_disk = (total - 3000) // 2  # a file's 2000 bytes and its header
        s.max_bytes = total - 1000 - file_disk
        assert s.evict() == 1000 + file_disk  # the two oldest: 1 (inline), 2 (file)
        assert [s.has_body(b"F", 1, u) for u in sizes] == [False, False, True, True, True]
        assert stored(root) == (3, s.stats()["body_bytes"]) == (3, total - 1000 - file_disk)
        assert sorted(blobs(root)) == [b"\x03" * 1000, b"\x05" * 1000]
        clock.t = 6
        assert s.put_body(b"F", 1, 6, b"\x06" * 1000)  # 1000 over: the oldest, 3, goes
        assert [s.has_body(b"F", 1, u) for u in (3, 4, 5, 6)] == [False, True, True, True]
        assert stored(root) == (3, s.stats()["body_bytes"]) and s.stats()["body_bytes"] <= s.max_bytes
        assert sorted(blobs(root)) == [b"\x05" * 1000, b"\x06" * 1000]


DROP_CASES = [
    # (id, the call, F's UIDs whose bodies remain, whether G's body remains (under F after the rename))
    ("drop_folder", lambda s: s.drop_folder(b"F"), [], True),
    ("uidvalidity change", lambda s: s.put_folder(b"F", 2, 5, None, [meta(1), meta(2)], replace=False), [], True),
    ("replace without 2", lambda s: s.put_folder(b"F", 1, 5, None, [meta(1), meta(3)], replace=True), [1, 3], True),
    ("remove_messages", lambda s: s.remove_messages(b"F", 1, [1, 2]), [3], True),
    ("rename over it", lambda s: s.rename_folder(b"G", b"F"), [], True),
    ("drop both", lambda s: s.drop_folder(b"F") + s.drop_folder(b"G"), [], False),
]


@pytest.mark.parametrize("call,left,g_left", [c[1:] for c in DROP_CASES], ids=[c[0] for c in DROP_CASES])
def test_dropping_messages_drops_inline_bytes_with_them(s: Store, call, left: list[int], g_left: bool):
    s.cache.bodies.inline_max = 1000
    s.put_folder(b"F", 1, 4, None, [meta(1), meta(2), meta(3)], replace=True)
    s.put_folder(b"G", 7, 2, None, [meta(1)], replace=True)
    bodies = {1: b"one" * 100, 2: b"two" * 1000, 3: b"three" * 100}  # inline, file, inline
    for uid, data in bodies.items():
        assert s.put_body(b"F", 1, uid, data)
    assert s.put_body(b"G", 7, 1, b"other folder")
    call(s)
    expect = sorted([bodies[u] for u in left if len(bodies[u]) <= 1000] + ([b"other folder"] if g_left else []))
    assert sorted(blobs(s.root)) == expect
    assert (s.stats()["body_count"], s.stats()["body_bytes"]) == stored(s.root)
    assert s.stats()["body_count"] == len(left) + g_left
    rec = s.get_folder(b"F")
    for u in left:
        assert s.get_body(b"F", 1, u) == bodies[u]
    if g_left:
        assert s.get_body(*((b"F", 7, 1) if rec is not None and rec.uidvalidity == 7 else (b"G", 7, 1))) \
            == b"other folder"


INLINE_DAMAGE = {  # done to an inline body's blob behind the store's back
    "shorter": "UPDATE blobs SET data = substr(data, 1, length(data) - 1)",
    "longer": "UPDATE blobs SET data = data || x'00'",
    "missing": "DELETE FROM blobs",
    "same length, other bytes": "UPDATE blobs SET data = CAST(upper(CAST(data AS TEXT)) AS BLOB)",
}


@pytest.mark.parametrize("how", list(INLINE_DAMAGE))
def test_a_damaged_inline_body_is_discarded(s: Store, how: str, caplog):
    s.put_folder(b"F", 1, 3, None, [meta(1), meta(2)], replace=True)
    s.cache.bodies.inline_max = 1000
    assert s.put_body(b"F", 1, 1, b"inline body")
    assert s.put_body(b"F", 1, 2, b"a file" * 500)
    con = sqlite3.connect(s.root / "cache.db", isolation_level=None)
    con.execute(INLINE_DAMAGE[how])
    con.close()
    with caplog.at_level(logging.WARNING, logger="imapfs.store"):
        assert s.get_body(b"F", 1, 1) is None
    assert "discarded" in caplog.text and not s.has_body(b"F", 1, 1)
    assert s.get_body(b"F", 1, 2) == b"a file" * 500
    assert blobs(s.root) == [] and (s.stats()["body_count"], s.stats()["body_bytes"]) == stored(s.root)


_V1_SCHEMA = """
CREATE TABLE state(key TEXT PRIMARY KEY, value);
CREATE TABLE folder_list(pos INTEGER PRIMARY KEY, name BLOB NOT NULL, delimiter TEXT, flags TEXT NOT NULL);
CREATE TABLE folders(id INTEGER PRIMARY KEY, name BLOB NOT NULL UNIQUE, token TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL, uidnext INTEGER, highestmodseq INTEGER);
CREATE TABLE messages(folder INTEGER NOT NULL, uid INTEGER NOT NULL, size INTEGER NOT NULL,
    internaldate INTEGER NOT NULL, flags TEXT, subject BLOB, PRIMARY KEY(folder, uid)) WITHOUT ROWID;
CREATE TABLE bodies(folder INTEGER NOT NULL, uidvalidity INTEGER NOT NULL, uid INTEGER NOT NULL,
    size INTEGER NOT NULL, disk INTEGER NOT NULL, atime REAL NOT NULL,
    PRIMARY KEY(folder, uidvalidity, uid)) WITHOUT ROWID;
CREATE INDEX bodies_atime ON bodies(atime);
CREATE TABLE structures(folder INTEGER NOT NULL, uidvalidity INTEGER NOT NULL, uid INTEGER NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY(folder, uidvalidity, uid)) WITHOUT ROWID;
PRAGMA user_version=1;
"""


def _v1_cache(root: Path, bodies: dict[int, bytes]) -> list[Path]:
    """A cache.db and body files as imapfs wrote them before stop 18 (format 1): INBOX, UIDVALIDITY 7."""
    root.mkdir(parents=True, mode=0o700)
    con = sqlite3.connect(root / "cache.db", isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript(_V1_SCHEMA)
    con.execute("INSERT INTO folders VALUES (1, ?, 'tok', 7, 9, NULL)", (b"INBOX",))
    con.executemany("INSERT INTO messages VALUES (1, ?, 10, 0, NULL, NULL)", [(u,) for u in range(1, 9)])
    files = []
    for uid, data in bodies.items():
        key = b"tok\x007\x00%d" % uid
        name = hashlib.sha256(key).hexdigest()
        path = root / "bodies" / name[:2] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"IMAPFSB1" + len(key).to_bytes(2, "big") + key + len(data).to_bytes(8, "big")
                         + hashlib.sha256(data).digest() + data)
        con.execute("INSERT INTO bodies VALUES (1, 7, ?, ?, ?, 1000.0)", (uid, len(data), path.stat().st_size))
        files.append(path)
    con.close()
    return files


def test_format_1_cache_opens_and_serves_its_files(root: Path):
    old = {1: b"From: a\r\n\r\nold body\r\n", 2: b"x" * 5000}
    files = _v1_cache(root, old)
    with Store(root, BIG) as s:
        assert [s.get_body(b"INBOX", 7, u) for u in (1, 2)] == [old[1], old[2]]
        assert (s.stats()["body_count"], s.stats()["body_bytes"]) == (2, sum(p.stat().st_size for p in files))
        assert s.put_body(b"INBOX", 7, 3, b"new body")  # new ones go inline
        assert s.put_body(b"INBOX", 7, 2, b"replaced")  # a file body replaced by an inline one
        assert blobs(root) == [b"new body", b"replaced"] and body_files(root) == [files[0]]
        assert (s.stats()["body_count"], s.stats()["body_bytes"]) == stored(root)
    con = sqlite3.connect(root / "cache.db")
    assert con.execute("PRAGMA user_version").fetchone()[0] == 2
    con.close()
    with Store(root, BIG) as s:  # and once more, as format 2
        assert [s.get_body(b"INBOX", 7, u) for u in (1, 2, 3)] == [old[1], b"replaced", b"new body"]
        s.max_bytes = 0
        s.evict()
        assert stored(root) == (0, 0) and s.stats()["body_bytes"] == 0


def test_format_1_upgrade_is_one_transaction(root: Path, monkeypatch):
    files = _v1_cache(root, {1: b"old body"})
    monkeypatch.setattr(store_cachedb, "_CACHE_SCHEMA", store_cachedb._CACHE_SCHEMA + "SELECT * FROM no_such_table;")
    with pytest.raises(StoreError, match="no_such_table"):
        Store(root, BIG)  # fails after the upgrade's ALTER TABLE, before its COMMIT
    con = sqlite3.connect(root / "cache.db")
    assert con.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "blob" not in [r[1] for r in con.execute("PRAGMA table_info(bodies)")]
    con.close()
    monkeypatch.undo()
    with Store(root, BIG) as s:
        assert s.get_body(b"INBOX", 7, 1) == b"old body" and body_files(root) == files
        assert s.put_body(b"INBOX", 7, 2, b"new") and blobs(root) == [b"new"]


PUT_BODIES_CHILD = r"""
import hashlib, sys
from imapfs.store import Store
s = Store(sys.argv[1], 1 << 40)
s.cache.bodies.inline_max = 50_000  # both kinds, and a UID's body changes kind
s.put_folder(b"F", 1, None, None, [], replace=True)
k = 0
while True:
    k += 1
    s.put_bodies([(b"F", 1, uid, hashlib.sha256(b"%d %d" % (k, uid)).digest() * (100 + (k * 7 + uid * 13) % 3000))
                  for uid in range(1, 41)])
    print("batch", k, flush=True)
"""


@pytest.mark.parametrize("after", [1, 6])
def test_writer_killed_during_put_bodies_keeps_whole_bodies(root: Path, after: int):
    p = child(PUT_BODIES_CHILD, str(root))
    try:
        for _ in range(after):
            assert p.stdout.readline().startswith("batch"), p.stderr.read()
    finally:
        p.send_signal(signal.SIGKILL)  # inside a later batch, or between two
        p.wait()
    with Store(root, BIG) as s:
        for uid in range(1, 41):
            got = s.get_body(b"F", 1, uid)
            assert got is not None  # batch `after` committed every one
            ks = [k for k in range(after, after + 50) if hashlib.sha256(b"%d %d" % (k, uid)).digest() == got[:32]]
            assert len(ks) == 1 and got == got[:32] * (100 + (ks[0] * 7 + uid * 13) % 3000)
        assert (s.stats()["body_count"], s.stats()["body_bytes"]) == stored(root) and stored(root)[0] == 40
