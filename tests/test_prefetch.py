"""Bulk prefetch (issue 12): `imapfs prefetch` has the daemon fetch whole folders in
batches straight into the disk cache, and says "done" only when every message is there.

End to end through a real mount (the Rig of tests/test_offline.py: Dovecot behind a
recording proxy that can refuse connections), plus in-process checks of
imapfs.bulk against a real Store with a scripted server, and of the command's
report when the daemon says messages are missing. The terminal and Ctrl-C
behaviour is tests/test_offline.py's.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.mount import imapfs_command
from tests.test_offline import SERVER_AWAY, Rig, emls
from tests.test_write import msg

FETCH_BODIES = re.compile(rb"UID FETCH [^\r\n]*BODY\.PEEK\[\]")


@pytest.fixture
def rig(tmp_path, request):
    r = Rig(tmp_path)
    yield r
    rep = getattr(request.node, "rep_call", None)
    r.close(check=rep is not None and rep.passed)


def prefetch(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(imapfs_command() + ["prefetch", *map(str, paths)], capture_output=True, text=True,
                          timeout=120)


def big(mid: str, mib: float) -> bytes:
    """A message of about *mib* MiB: plain 76-character lines, each one different."""
    lines = [f"{i:08d} " + "x" * 66 for i in range(int(mib * 1024 * 1024 / 77))]
    return msg(mid, f"big {mid}", "\r\n".join(lines))


def cached(p: Path) -> bool:
    return os.getxattr(p, "user.imapfs.cached") == b"1"


def body_fetches(rig: Rig) -> int:
    return len(FETCH_BODIES.findall(rig.proxy.client_bytes()))


def test_prefetch_stores_every_message_in_batches_and_serves_them_offline(rig, corpus):
    messages = [data for _name, data in corpus]
    # Subjects against UID order, as in any real folder: a reader going by name is never sequential.
    messages += [msg(f"g{i}", f"generated {199 - i:03d}", "y" * (500 + 397 * i)) for i in range(200)]
    messages += [big("big5", 5), big("big9", 9)]  # above the 4 MiB chunk: fetched in ranges
    rig.d.append_many("Pre", messages)
    server = rig.d.fetch_all("Pre")
    n = len(server)
    assert n == len(messages)
    m = rig.mount(allowed=[SERVER_AWAY])
    files = emls(m, "Pre")
    assert len(files) == n
    for p in files[:5]:
        p.read_bytes()  # some bodies in memory (and on disk) already
    rig.proxy.clear()
    res = prefetch(m.path("Pre"))
    assert res.returncode == 0, res.stderr
    assert "prefetch: done" in res.stderr, res.stderr
    assert all(cached(p) for p in files)
    # Batches, not one FETCH per message: the small ones in batches that grow from
    # 512 KB to 16 MiB, and 2 + 3 ranges of 4 MiB (plus the final short one) for the big two.
    fetches = body_fetches(rig)
    assert 2 <= fetches <= 20, fetches
    # A second run finds everything on disk and fetches nothing.
    rig.proxy.clear()
    res = prefetch(m.path("Pre"))
    assert res.returncode == 0, res.stderr
    assert f"{n} messages already cached" in res.stderr and "prefetch: 0/0 messages" in res.stderr
    assert body_fetches(rig) == 0
    # With the server away every message reads back exactly, and .parts lists from the stored
    # BODYSTRUCTUREs (checked on the generated ones: parts may still ask the server for a
    # section of an odd corpus message that it cannot cut locally).
    rig.server_away()
    for p in files:
        uid = int(re.search(r"#(\d+)\.eml$", p.name).group(1))
        assert p.read_bytes() == server[uid], p.name
        if "generated" in p.name:
            assert os.listdir(str(p)[:-len(".eml")] + ".parts"), p.name
    res = prefetch(m.path("Pre"))  # offline, nothing left to do: still done
    assert res.returncode == 0 and "prefetch: done" in res.stderr, res.stderr


def test_a_prefetch_the_cache_cannot_hold_fails_and_says_why(rig):
    """"done" only when every message is on disk: here cache_size= is too small for the folder."""
    for i in range(40):
        rig.d.append("Huge", msg(f"h{i}", f"huge {i}", "q" * 50_000))
    m = rig.mount("cache_size=500K")
    files = emls(m, "Huge")
    res = prefetch(m.path("Huge"))
    assert res.returncode == 1, res.stderr
    assert "prefetch: done" not in res.stderr
    uncached = sum(not cached(p) for p in files)
    assert uncached > 0
    assert f"prefetch: {uncached} messages could not be stored" in res.stderr
    assert "is cache_size= too small?" in res.stderr and "Huge/" in res.stderr


def test_prefetch_of_single_messages_on_a_read_only_mount(rig):
    """The request goes through getxattr, which a read-only mount still answers."""
    for i in range(30):
        rig.d.append("Few", msg(f"f{i}", f"few {i}", "z" * 3000))
    m = rig.mount("ro")
    files = emls(m, "Few")
    picked = files[3:6]
    res = prefetch(*picked)
    assert res.returncode == 0, res.stderr
    assert "prefetch: 3/3 messages" in res.stderr and "prefetch: done" in res.stderr
    assert [cached(p) for p in files] == [p in picked for p in files]


def test_prefetch_outside_a_mount_is_refused_clearly(tmp_path):
    (tmp_path / "x").mkdir()
    res = prefetch(tmp_path / "x")
    assert res.returncode == 2
    assert "is not a folder or message of an imapfs mount" in res.stderr


# -- in process: imapfs.bulk against a real Store --------------------------------------------

class _Conn:
    """A scripted server: one folder, its bodies, and a log of what was fetched."""

    def __init__(self, bodies: dict[int, bytes], withheld: set[int] = frozenset()) -> None:
        self.bodies = bodies
        self.withheld = withheld  # listed, but their bodies never come (as if expunged at once)
        self.fetched: list[list[int]] = []

    def sync(self, name, known, verify):
        from imapfs.records import RawMeta, SelectInfo, SyncResult

        metas = [RawMeta(u, len(b), 1700000000, (), f"s{u}".encode()) for u, b in sorted(self.bodies.items())]
        return SyncResult(SelectInfo(7, len(metas), max(self.bodies) + 1), reset=known is None,
                          added=metas if known is None else [], present=set(self.bodies))

    def fetch_bodies(self, name, uidvalidity, uids, extra=""):
        self.fetched.append(list(uids))
        return {u: (self.bodies[u], {b"BODYSTRUCTURE": [b"TEXT", b"PLAIN", None, None, None, b"7BIT", 1, 1]})
                for u in uids if u not in self.withheld}

    def fetch_uids(self, name, uidvalidity, uids, items):
        return [(u, {b"UID": u, b"BODYSTRUCTURE": [b"TEXT", b"PLAIN", None, None, None, b"7BIT", 1, 1]})
                for u in uids]


class _Pool:
    capabilities: frozenset = frozenset()
    last_error = None
    online = True

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn

    def available(self) -> bool:
        return True

    async def run(self, fn, folder=None, retry=True):
        return fn(self.conn)


def _run_bulk(tmp_path: Path, conn: _Conn, max_bytes: int = 1 << 30, in_memory: dict[int, bytes] | None = None):
    import trio

    from imapfs.bulk import Bulk
    from imapfs.disk import Disk
    from imapfs.imapproto import ListEntry
    from imapfs.store import Store
    from imapfs.tree import Tree

    out = {}

    async def main() -> None:
        store = Store(tmp_path / "cache", max_bytes)
        disk = Disk(store)
        try:
            tree = Tree(_Pool(conn), disk=disk)
            tree._apply_list([ListEntry(frozenset(), "/", b"Box")])
            folder = tree.root.children["Box"]
            st = await tree.sync(folder)
            for uid, data in (in_memory or {}).items():
                tree.content.put((st.msgs[uid].inode, 0), data)
            job = await Bulk(tree, disk).fill(folder)
            out["job"] = job
            out["stored"] = {u: store.get_body(b"Box", 7, u) for u in conn.bodies}
            out["structures"] = {u: store.get_structure(b"Box", 7, u) for u in conn.bodies}
            out["on_disk"] = set(folder.state.on_disk)
            out["cached"] = {u: await tree.is_cached(folder.state.msgs[u]) for u in conn.bodies}
        finally:
            await disk.close()

    trio.run(main)
    return out


def test_bulk_writes_bodies_from_memory_and_fetches_the_rest_in_batches(tmp_path):
    bodies = {u: msg(f"b{u}", f"s{u}", "w" * (100 * u)) for u in range(1, 41)}
    conn = _Conn(bodies)
    # Bodies a read left in memory (their write-behind may have been skipped): written, not fetched.
    out = _run_bulk(tmp_path, conn, in_memory={u: bodies[u] for u in (2, 3, 5)})
    job = out["job"]
    assert job.state == "done" and job.done == job.total == 40 and not job.failures
    assert out["stored"] == bodies
    assert all(out["structures"][u] is not None for u in bodies)  # for .parts offline
    assert out["on_disk"] == set(bodies) and all(out["cached"].values())
    fetched = [u for batch in conn.fetched for u in batch]
    assert sorted(fetched) == sorted(set(bodies) - {2, 3, 5})  # each once, none of those in memory
    assert 1 < len(conn.fetched) < 10  # batches


def test_bulk_never_reports_done_for_what_is_not_on_disk(tmp_path):
    bodies = {u: msg(f"c{u}", f"s{u}", "v" * 2000) for u in range(1, 21)}
    # The server lists UID 7 but never delivers it; the others arrive.
    out = _run_bulk(tmp_path, _Conn(bodies, withheld={7}))
    job = out["job"]
    assert job.state == "failed" and set(job.failures) == {7}
    assert "the server did not deliver it" in job.failures[7]
    assert job.done == 19 and job.total == 20
    from imapfs.bulk import format_progress
    text = format_progress([job])
    assert "state failed" in text and re.search(r"failure Box/.*#7\.eml: the server did not deliver it", text)
    # A cache too small for the folder: the bodies it evicted are failures, not "done".
    out = _run_bulk(tmp_path / "small", _Conn(bodies), max_bytes=10 * 2100)
    job = out["job"]
    assert job.state == "failed" and job.done < 20 and len(job.failures) == 20 - job.done
    assert all("cache_size" in why for why in job.failures.values())
    assert sum(v is not None for v in out["stored"].values()) == job.done


def test_the_command_names_what_could_not_be_stored(monkeypatch, tmp_path, capsys):
    from imapfs import prefetch as cmd

    (tmp_path / "F").mkdir()
    answers = {
        cmd.START: "started 1\n",
        cmd.PROGRESS: ("state failed\nfolders 1\nfinished 1\ncounting 0\nmessages 3\ncached 0\ntotal 3\n"
                       "done 2\nbytes 300\ndone_bytes 200\nfailed 1\n"
                       "failure F/x #2.eml: the server did not deliver it\n"),
    }
    monkeypatch.setattr(cmd, "_ask", lambda path, name: answers[name])

    class Err:
        text = ""

        def write(self, s: str) -> None:
            self.text += s

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return False

    err = Err()
    assert cmd.main([str(tmp_path / "F")], out=err) == 1
    assert "prefetch: F/x #2.eml: the server did not deliver it" in err.text
    assert "1 messages could not be stored" in err.text and "prefetch: done" not in err.text


def test_messages_of_one_command_are_counted_together_whatever_the_timing(tmp_path):
    """`imapfs prefetch a.eml b.eml c.eml` starts one request per message; when the job of
    the first had already ended as the next request came, that job used to be replaced, and
    the command reported (and judged "done" on) the last requests only: a flaky
    test_prefetch_of_single_messages_on_a_read_only_mount. Here the first job always ends first."""
    import trio
    import trio.testing

    from imapfs.bulk import Bulk
    from imapfs.disk import Disk
    from imapfs.imapproto import ListEntry
    from imapfs.prefetch import parse
    from imapfs.store import Store
    from imapfs.tree import Tree

    bodies = {u: msg(f"o{u}", f"s{u}", "u" * (1000 + u)) for u in range(1, 11)}
    conn = _Conn(bodies)
    reports = []

    async def main() -> None:
        store = Store(tmp_path / "cache", 1 << 30)
        disk = Disk(store)
        try:
            tree = Tree(_Pool(conn), disk=disk)
            tree._apply_list([ListEntry(frozenset(), "/", b"Box")])
            folder = tree.root.children["Box"]
            msgs = (await tree.sync(folder)).msgs
            await disk.flush()  # the folder's state in the store, then 9.eml on disk before the command
            store.put_bodies([(b"Box", 7, 9, bodies[9])])
            assert store.get_body(b"Box", 7, 9) == bodies[9]
            bulk = Bulk(tree, disk)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bulk.run)
                await trio.testing.wait_all_tasks_blocked()
                # One command: 4.eml (its job ends before the next request), then 9.eml and 5.eml.
                await bulk.start(msgs[4])
                await bulk.jobs[folder].finished.wait()
                await bulk.start(msgs[9])
                await bulk.start(msgs[5])
                await bulk.jobs[folder].finished.wait()
                reports.append(parse(bulk.progress(msgs[4])))
                # The next command, once that progress was read, is counted on its own.
                await bulk.start(msgs[6])
                await bulk.jobs[folder].finished.wait()
                reports.append(parse(bulk.progress(msgs[6])))
                nursery.cancel_scope.cancel()
            assert {u for u in bodies if store.get_body(b"Box", 7, u) is not None} == {4, 5, 6, 9}
        finally:
            await disk.close()

    trio.run(main)
    first, second = reports
    assert first["state"] == "done" and not first["lines"], first
    assert (first["messages"], first["cached"], first["total"], first["done"]) == (3, 1, 2, 2), first
    assert first["done_bytes"] == first["bytes"] == len(bodies[4]) + len(bodies[5])
    assert second["state"] == "done"
    assert (second["messages"], second["cached"], second["total"], second["done"]) == (1, 0, 1, 1), second
    assert sorted(u for batch in conn.fetched for u in batch) == [4, 5, 6]  # each fetched once
