"""In-process tests of the write fallbacks, the content cache and the journal (issue 14).

The real collaborators, built the way ``imapfs.mount`` builds them (Store → Disk
→ Pool → Tree → Journal), talk to an in-memory server
(``tests/support/fake_imap.py``) through ``Pool(connection_factory=)``: no
FUSE, no Dovecot, no sockets. Each test takes milliseconds and can put a fault
on exactly one command (the UID EXPUNGE of a delete, the APPEND of a file).
The real-mount suite (test_write, test_offline, ...) stays the end-to-end
proof; these pin the decisions below the FUSE layer, and every assertion is on
the fake server's state or on the bytes and errors a user would get.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from imapfs.disk import Disk
from imapfs.errors import ServerUnavailable, Unsupported, errno_for
from imapfs.model import Folder, Msg, flags_unsaved
from imapfs.offline import Journal
from imapfs.session import Pool
from imapfs.store import JournalEntry, Store
from imapfs.tree import Tree
from tests.support.fake_imap import FakeServer


def message(tag: str, size: int = 0) -> bytes:
    head = f"Message-ID: <{tag}@example.org>\r\nSubject: {tag}\r\nFrom: a@example.org\r\n\r\n".encode()
    body = f"This is {tag}.\r\n".encode()
    if size:
        body += b"x" * (size - len(head) - len(body) - 2) + b"\r\n"
    return head + body


OURS = message("ours")  # INBOX UID 1: the message the tests change
OTHER = message("other")  # INBOX UID 2: flagged \Deleted by another client, never ours to remove
NOTE = message("note")  # a file written into the mount


@dataclass
class Rig:
    """One mount's objects, without FUSE."""

    server: FakeServer
    pool: Pool
    tree: Tree
    disk: Disk | None
    journal: Journal | None

    def folder(self, name: str) -> Folder:
        return self.tree.root.children[name]

    async def msgs(self, name: str) -> dict[int, Msg]:
        st = await self.tree.sync(self.folder(name), force=True)
        assert st is not None
        return dict(st.msgs)

    async def names(self, name: str) -> set[str]:
        """What ``ls FOLDER`` shows."""
        return {n for _cookie, n, _node in await self.tree.listing(self.folder(name))}

    async def owed(self) -> list[JournalEntry]:
        assert self.disk is not None
        return await self.disk.call(self.disk.store.journal_pending)

    async def server_back(self) -> None:
        """The server answers again; wait out the pool's (short) backoff."""
        self.server.down = False
        with trio.fail_after(10):
            while not self.pool.available():  # noqa: ASYNC110 - the pool's backoff has no event to wait on
                await trio.sleep(0.01)

    async def close(self) -> None:
        """Unmount: store what is pending, log out, flush and close the store (mount.serve's order)."""
        await self.tree.flush_all()
        await self.pool.close()
        if self.disk is not None:
            await self.disk.close()


async def mount(server: FakeServer, where: Path, *, cache: bool = True, offline: bool = False,
                mem_cache: int = 64 * 1024 * 1024, cache_size: int = 1 << 30) -> Rig:
    """Build the collaborators as ``mount._serve`` does, with the fake server behind the pool."""
    disk = None
    if cache:
        root = where / "cache"
        store = await trio.to_thread.run_sync(lambda: Store(root, cache_size))
        disk = Disk(store)
    # backoff_max: a server that comes back is tried again within 50 ms, not 1 s.
    pool = Pool(server.account(), size=2, backoff_max=0.05, connection_factory=server.connection)
    if offline:
        pool.forced_offline = True
    else:
        await pool.start()
    tree = Tree(pool, mem_cache=mem_cache, disk=disk, unsent_dir=str(where / "unsent"),
                spool_dir=str(where))
    journal = Journal(tree, disk) if disk is not None else None
    await tree.load_from_disk()
    if pool.online:
        await tree.refresh_folders(force=True)
    if journal is not None:
        await journal.restore()
    return Rig(server, pool, tree, disk, journal)


def two_folders(capabilities: set[str] | None = None) -> FakeServer:
    """INBOX: OURS (UID 1) and OTHER (UID 2, \\Deleted by another client); Archive: empty."""
    server = FakeServer(capabilities if capabilities is not None else {"UIDPLUS", "MOVE", "UNSELECT"},
                        folders=["INBOX", "Archive"])
    assert server.deliver("INBOX", OURS) == 1
    assert server.deliver("INBOX", OTHER, ["\\Deleted"]) == 2
    return server


def writes(server: FakeServer) -> list[str]:
    """The commands that change mail, in order."""
    return [c for c in server.log if c.split(" ", 2)[:2] in (["UID", "MOVE"], ["UID", "COPY"], ["UID", "STORE"],
                                                               ["UID", "EXPUNGE"])
            or c.startswith(("APPEND", "EXPUNGE"))]


# -- moves without MOVE --------------------------------------------------------------------


@pytest.mark.trio
@pytest.mark.parametrize("caps, sent", [
    ({"UIDPLUS"}, ["UID COPY INBOX 1 Archive", "UID STORE INBOX 1 +FLAGS.SILENT (\\Deleted)",
                   "UID EXPUNGE INBOX 1"]),
    ({"UIDPLUS", "MOVE"}, ["UID MOVE INBOX 1 Archive"]),
    ({"MOVE"}, ["UID MOVE INBOX 1 Archive"]),
], ids=["uidplus-only", "move-and-uidplus", "move-only"])
async def test_move_removes_exactly_that_uid(tmp_path: Path, caps: set[str], sent: list[str]) -> None:
    """Without MOVE a move is COPY, then \\Deleted and UID EXPUNGE of exactly that UID: the
    message another client flagged \\Deleted (UID 2) survives; the copy holds the same bytes."""
    server = two_folders(caps)
    rig = await mount(server, tmp_path, cache=False)
    m = (await rig.msgs("INBOX"))[1]
    await rig.tree.move(m, rig.folder("Archive"))
    assert writes(server) == sent
    assert server.bodies("INBOX") == {2: OTHER}
    assert server.flags("INBOX", 2) == {"\\Deleted"}
    assert list(server.bodies("Archive").values()) == [OURS]
    assert m.name not in await rig.names("INBOX")
    [moved] = (await rig.msgs("Archive")).values()
    assert await rig.tree.read(moved, 0, moved.size) == OURS
    await rig.close()


@pytest.mark.trio
async def test_move_without_move_or_uidplus_is_refused_and_sends_nothing(tmp_path: Path) -> None:
    """Neither MOVE nor UIDPLUS: a plain EXPUNGE could take other clients' mail, so EPERM."""
    server = two_folders({"UNSELECT"})
    rig = await mount(server, tmp_path, cache=False)
    m = (await rig.msgs("INBOX"))[1]
    with pytest.raises(Unsupported) as err:
        await rig.tree.move(m, rig.folder("Archive"))
    assert errno_for(err.value) == errno.EPERM
    assert writes(server) == []
    assert server.bodies("INBOX") == {1: OURS, 2: OTHER} and server.bodies("Archive") == {}
    assert m.name in await rig.names("INBOX")
    await rig.close()


# -- a write whose connection drops ------------------------------------------------------------


@dataclass
class Op:
    """A user's write, the command whose connection dies under it, and the server state expected."""

    drop: str
    run: Callable[[Rig, Msg], Awaitable[object]]
    done: Callable[[FakeServer], bool]  # the server shows the change

    def untouched(self, server: FakeServer) -> bool:
        """Nothing removed, nothing added (a delete cut short may have left \\Deleted on UID 1)."""
        return (server.bodies("INBOX") == {1: OURS, 2: OTHER} and server.bodies("Archive") == {}
                and server.flags("INBOX", 1) <= {"\\Deleted"} and server.flags("INBOX", 2) == {"\\Deleted"})


async def _write_note(rig: Rig, _m: Msg) -> object:
    p = rig.tree.create_file(rig.folder("Archive"), "note.eml")
    await rig.tree.write_pending(p, 0, NOTE)
    return await rig.tree.commit(p)


OPS = {
    "move": Op("UID MOVE", lambda rig, m: rig.tree.move(m, rig.folder("Archive")),
               lambda s: s.bodies("INBOX") == {2: OTHER} and list(s.bodies("Archive").values()) == [OURS]),
    # Cut short after the \Deleted flag was stored: the replay finds UID 1 still there and
    # expunges exactly it; UID 2 (another client's \Deleted) stays.
    "delete": Op("UID EXPUNGE", lambda rig, m: rig.tree.delete(m),
                 lambda s: s.bodies("INBOX") == {2: OTHER} and s.bodies("Archive") == {}),
    "flags": Op("UID STORE", lambda rig, m: rig.tree.set_flags(m, ["\\Flagged", "\\Seen"]),
                lambda s: s.flags("INBOX", 1) == {"\\Flagged", "\\Seen"} and s.bodies("Archive") == {}),
    "append": Op("APPEND", _write_note,
                 lambda s: list(s.bodies("Archive").values()) == [NOTE] and s.bodies("INBOX") == {1: OURS, 2: OTHER}),
}


@pytest.mark.trio
@pytest.mark.parametrize("op", list(OPS))
async def test_write_whose_connection_drops_is_journaled_and_replayed_once(tmp_path: Path, op: str) -> None:
    """With a cache, a write cut short by a lost connection is recorded, not failed; the
    server is untouched until it is back; the replay applies it once, and a second replay
    (or a later round) sends nothing again."""
    o = OPS[op]
    server = two_folders()
    rig = await mount(server, tmp_path)
    m = (await rig.msgs("INBOX"))[1]
    server.drop(o.drop, stay_down=True)
    assert await o.run(rig, m) is None  # recorded: the system call succeeds
    assert [e.op for e in await rig.owed()] == [op]
    assert o.untouched(server)
    assert rig.journal is not None
    await rig.journal.replay()  # the server is still away: nothing is sent, nothing is lost
    assert [e.op for e in await rig.owed()] == [op] and o.untouched(server)

    await rig.server_back()
    await rig.journal.replay()
    assert o.done(server)
    assert await rig.owed() == []
    sent = writes(server)
    await rig.journal.replay()
    assert writes(server) == sent  # exactly once
    await rig.close()


@pytest.mark.trio
@pytest.mark.parametrize("op", list(OPS))
async def test_write_whose_connection_drops_without_a_cache_fails_with_eio(tmp_path: Path, op: str) -> None:
    """``cache_dir=none``: nothing can hold the change while the server is away, so the user
    gets EIO and the server is as it was; a file being written stays pending with its bytes,
    and is stored (once) when the server is back."""
    o = OPS[op]
    server = two_folders()
    rig = await mount(server, tmp_path, cache=False)
    m = (await rig.msgs("INBOX"))[1]
    server.drop(o.drop, stay_down=True)
    with pytest.raises(ServerUnavailable) as err:
        await o.run(rig, m)
    assert errno_for(err.value) == errno.EIO
    assert o.untouched(server)
    if op == "append":
        p = rig.folder("Archive").pending["note.eml"]
        assert p.dirty and await rig.tree.read_pending(p, 0, len(NOTE) + 1) == NOTE
    else:
        st = rig.folder("INBOX").state
        assert not m.gone and st is not None and st.msgs.get(1) is m  # still shown where it was
    await rig.server_back()
    await rig.close()  # flush_all at unmount
    if op == "append":
        assert o.done(server) and len(server.commands("APPEND")) == 1
    else:
        assert o.untouched(server)


@pytest.mark.trio
async def test_flag_change_whose_connection_drops_is_sent_again_on_a_new_connection(tmp_path: Path) -> None:
    """UID STORE FLAGS.SILENT sets the whole list, so repeating it is safe: the pool retries
    it once on a fresh connection instead of journaling it (moves, deletes and APPENDs are
    never repeated blindly)."""
    server = two_folders()
    rig = await mount(server, tmp_path)
    m = (await rig.msgs("INBOX"))[1]
    server.drop("UID STORE")
    await rig.tree.set_flags(m, ["\\Answered"])
    assert server.flags("INBOX", 1) == {"\\Answered"}
    assert await rig.owed() == [] and server.logins == 2
    await rig.close()


@pytest.mark.trio
async def test_a_verify_sync_writes_only_the_flags_the_cache_lacks(tmp_path: Path) -> None:
    """A verify sync reads every flag; it must write to the cache only those that changed and
    those memory holds without the cache (a flag journaled offline, then replayed), not every
    row of the folder each round; and the cache must end up with the server's flags."""
    server = FakeServer(folders=["INBOX"])
    uids = [server.deliver("INBOX", message(f"m{i}")) for i in range(5)]
    rig = await mount(server, tmp_path)
    assert rig.disk is not None
    store = rig.disk.store
    written: list[dict[int, tuple[str, ...]]] = []
    real = store.set_flags_many

    def spy(name: bytes, uidvalidity: int, flags: dict[int, tuple[str, ...]]) -> int:
        written.append(dict(flags))
        return real(name, uidvalidity, flags)

    store.set_flags_many = spy  # type: ignore[method-assign]  # a spy on the store's one flag writer
    folder = rig.folder("INBOX")
    msgs = await rig.msgs("INBOX")
    await rig.tree.sync(folder, force=True, verify=True)
    await rig.disk.flush()
    assert written == []  # nothing changed: no row rewritten

    server.set_flags("INBOX", uids[1], "\\Seen")  # another client
    msgs[uids[3]].flags = ("\\Flagged",)  # memory only, as the journal and flagview set them
    flags_unsaved(msgs[uids[3]])
    server.set_flags("INBOX", uids[3], "\\Flagged")  # ... and then replayed to the server
    await rig.tree.sync(folder, force=True, verify=True)
    await rig.disk.flush()
    assert written == [{uids[1]: ("\\Seen",), uids[3]: ("\\Flagged",)}]
    rec = await rig.disk.call(store.get_folder, b"INBOX")
    assert rec is not None
    assert {m.uid: set(m.flags) for m in rec.messages} == {u: server.flags("INBOX", u) for u in uids}
    await rig.tree.sync(folder, force=True, verify=True)
    await rig.disk.flush()
    assert len(written) == 1  # and only once
    await rig.close()


@pytest.mark.trio
@pytest.mark.parametrize("away", [True, False], ids=["server-away", "connection-only"])
async def test_append_stored_before_its_reply_was_lost_is_not_stored_twice(tmp_path: Path, away: bool) -> None:
    """The server stored the APPEND, then the connection died (and the server went away, or
    not): the APPEND is not repeated on a new connection but journaled, and the replay finds
    the message by Message-ID and the same bytes instead of storing a second copy."""
    server = two_folders()
    rig = await mount(server, tmp_path)
    server.drop("APPEND", applied=True, stay_down=away)
    assert await _write_note(rig, None) is None  # type: ignore[arg-type]
    assert list(server.bodies("Archive").values()) == [NOTE]  # it did arrive
    await rig.server_back()
    assert rig.journal is not None
    await rig.journal.replay()
    assert list(server.bodies("Archive").values()) == [NOTE]
    assert len(server.commands("APPEND")) == 1
    assert await rig.owed() == []
    await rig.close()


# -- the content cache -----------------------------------------------------------------------------


@pytest.mark.trio
async def test_memory_tier_serves_a_body_once_fetched_and_fetches_it_again_after_eviction(tmp_path: Path) -> None:
    server = FakeServer(folders=["INBOX"])
    a = server.deliver("INBOX", message("a", 2000))
    b = server.deliver("INBOX", message("b", 2000))
    rig = await mount(server, tmp_path, cache=False, mem_cache=3000)  # room for one of them
    msgs = await rig.msgs("INBOX")
    for _ in range(3):
        assert await rig.tree.read(msgs[a], 0, 4096) == server.bodies("INBOX")[a]
    assert server.body_fetches == {("INBOX", a): 1}
    assert await rig.tree.read(msgs[b], 0, 4096) == server.bodies("INBOX")[b]  # evicts a
    assert await rig.tree.read(msgs[a], 0, 4096) == server.bodies("INBOX")[a]
    assert server.body_fetches == {("INBOX", a): 2, ("INBOX", b): 1}
    await rig.close()


@pytest.mark.trio
async def test_disk_tier_serves_a_body_across_a_remount_and_fetches_it_again_once_evicted(tmp_path: Path) -> None:
    """mem_cache=1 turns the memory tier off, so every read below is the disk's or the server's.
    The store holds one body: storing b evicts a, whose `on_disk` hint is then wrong once."""
    server = FakeServer(folders=["INBOX"])
    a = server.deliver("INBOX", message("a", 2000))
    b = server.deliver("INBOX", message("b", 2000))
    body = server.bodies("INBOX")
    rig = await mount(server, tmp_path, mem_cache=1, cache_size=3000)
    msgs = await rig.msgs("INBOX")
    assert await rig.tree.read(msgs[a], 0, 4096) == body[a]
    assert rig.disk is not None
    await rig.disk.flush()
    assert await rig.tree.read(msgs[a], 0, 4096) == body[a]
    assert server.body_fetches == {("INBOX", a): 1}
    await rig.close()

    rig = await mount(server, tmp_path, mem_cache=1, cache_size=3000)  # a fresh process, same cache
    msgs = await rig.msgs("INBOX")
    assert await rig.tree.read(msgs[a], 0, 4096) == body[a]
    assert server.body_fetches == {("INBOX", a): 1}
    assert await rig.tree.read(msgs[b], 0, 4096) == body[b]
    assert rig.disk is not None
    await rig.disk.flush()  # b is written, and a evicted to stay within cache_size
    uidv = msgs[a].uidvalidity
    assert not await rig.disk.call(rig.disk.store.has_body, b"INBOX", uidv, a)
    assert await rig.tree.read(msgs[a], 0, 4096) == body[a]
    assert server.body_fetches == {("INBOX", a): 2, ("INBOX", b): 1}
    await rig.close()


@pytest.mark.trio
async def test_a_uid_reused_under_a_new_uidvalidity_never_shows_the_old_bytes(tmp_path: Path) -> None:
    """Another client deletes and recreates INBOX, and UID 1 now names a message of the same
    size with other bytes: neither the memory tier nor the disk cache may serve the old ones."""
    old, new, newer = message("old", 1000), message("new", 1000), message("nwr", 1000)
    assert len(old) == len(new) == len(newer)
    server = FakeServer(folders=["INBOX"])
    server.deliver("INBOX", old)
    rig = await mount(server, tmp_path)
    m_old = (await rig.msgs("INBOX"))[1]
    assert await rig.tree.read(m_old, 0, 4096) == old
    server.recreate("INBOX")
    assert server.deliver("INBOX", new) == 1
    m_new = (await rig.msgs("INBOX"))[1]
    assert await rig.tree.read(m_new, 0, 4096) == new
    assert m_new.uidvalidity != m_old.uidvalidity and m_new.inode != m_old.inode and m_old.gone
    await rig.close()  # new is on disk under the second UIDVALIDITY

    server.recreate("INBOX")
    assert server.deliver("INBOX", newer) == 1
    rig = await mount(server, tmp_path)  # starts from the cache, which holds new as UID 1
    m = (await rig.msgs("INBOX"))[1]
    assert await rig.tree.read(m, 0, 4096) == newer
    assert server.body_fetches == {("INBOX", 1): 3}
    await rig.close()


# -- the journal across a restart ------------------------------------------------------------------


@pytest.mark.trio
async def test_journal_survives_a_restart_and_replays_exactly_once(tmp_path: Path) -> None:
    """Changes made on an offline mount (-o offline) are on disk when it ends; the next mount
    shows them, replays them once, and a mount after that owes and sends nothing."""
    server = two_folders()
    third = server.deliver("INBOX", message("third"))
    rig = await mount(server, tmp_path)  # online once: the cache learns the folders
    for name in ("INBOX", "Archive"):
        await rig.msgs(name)
    await rig.close()

    rig = await mount(server, tmp_path, offline=True)
    before = len(server.log)
    inbox = rig.folder("INBOX").state
    assert inbox is not None
    m1, m3 = inbox.msgs[1], inbox.msgs[third]
    assert await rig.tree.move(m1, rig.folder("Archive")) is None
    await rig.tree.set_flags(m3, ["\\Flagged"])
    assert await _write_note(rig, m1) is None
    assert [e.op for e in await rig.owed()] == ["move", "flags", "append"]
    await rig.close()
    assert server.log[before:] == [] and server.logins == 1  # the offline mount never connected

    rig = await mount(server, tmp_path)  # the journal is read back and shown
    assert m1.name not in await rig.names("INBOX")
    assert {m1.name, "note.eml"} <= await rig.names("Archive")
    assert server.bodies("Archive") == {}
    assert rig.journal is not None
    await rig.journal.replay()
    assert server.bodies("INBOX").keys() == {2, third}
    assert sorted(server.bodies("Archive").values()) == sorted([OURS, NOTE])
    assert server.flags("INBOX", third) == {"\\Flagged"}
    assert await rig.owed() == []
    archive = await rig.msgs("Archive")
    assert await rig.names("Archive") == {m.name for m in archive.values()}  # the server's, nothing else
    sent = writes(server)
    await rig.journal.replay()
    await rig.close()

    rig = await mount(server, tmp_path)
    assert rig.journal is not None and rig.journal.pending == 0
    await rig.journal.replay()
    assert writes(server) == sent
    assert len(server.commands("APPEND")) == 1 and len(server.commands("UID MOVE")) == 1
    await rig.close()


# -- a large folder's metadata, in batches ---------------------------------------------------


@pytest.mark.trio
async def test_a_large_folder_is_listed_from_batched_metadata_fetches(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12 (memory per message): a folder larger than META_BATCH is fetched a batch of
    UIDs at a time, the UID set first, so one answer's parse garbage never holds the whole
    folder. Every message is listed once, gaps in the UIDs included; so are the messages a
    later sync finds new."""
    from imapfs.connection import reads

    monkeypatch.setattr(reads, "META_BATCH", 3)
    server = FakeServer({"UIDPLUS", "MOVE", "UNSELECT"}, folders=["INBOX", "Big"])
    for i in range(10):
        server.deliver("Big", message(f"big{i}"))
    c = server.log  # another client expunges two, leaving gaps
    server.folders["Big"].messages.pop(4)
    server.folders["Big"].messages.pop(5)
    rig = await mount(server, tmp_path)
    try:
        before = len(c)
        msgs = await rig.msgs("Big")
        assert sorted(msgs) == [1, 2, 3, 6, 7, 8, 9, 10]
        meta = [x for x in server.log[before:] if x.startswith("UID FETCH Big") and "RFC822.SIZE" in x]
        assert [x.split()[3] for x in meta] == ["1:3", "6:8", "9:10"]
        for i in range(10, 14):
            server.deliver("Big", message(f"big{i}"))
        before = len(server.log)
        msgs = await rig.msgs("Big")
        assert sorted(msgs) == [1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14]
        meta = [x for x in server.log[before:] if x.startswith("UID FETCH Big") and "RFC822.SIZE" in x]
        assert [x.split()[3] for x in meta] == ["11:13", "14"]
    finally:
        await rig.close()
