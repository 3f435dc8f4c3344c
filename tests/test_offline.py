"""Offline and disconnected use: the persistent cache, the journal, prefetch.

The server "goes away" for imapfs through a proxy that refuses connections,
while a second client can still reach Dovecot directly to play another
device. Every outcome is checked on the server by Message-ID.
"""

from __future__ import annotations

import errno
import os
import pty
import re
import select
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.dovecot import Dovecot
from tests.support.mount import Mount, force_unmount, imapfs_command
from tests.support.proxy import Proxy
from tests.test_write import eventually, message_ids, msg

if TYPE_CHECKING:
    from imapfs.store import Store

# ERROR lines a test may allow, each only where its scenario causes it (Rig.mount(allowed=...)).
# The server goes away (the proxy refuses, or Dovecot is stopped behind it): one line per outage.
# The proxy may also cut a login under way (seen once in five runs of a test).
SERVER_AWAY = (r"ERROR imapfs\.session: IMAP server \S+ unavailable: "
               r"(cannot connect to \S+: socket error: EOF|connection to \S+ lost during login: "
               r"(socket error: EOF|[A-Za-z]+Error)) \(retrying in \d+ s\)$")
# An offline zero-byte file: Dovecot refuses it at replay, twice retried, then it is saved aside.
ZERO_BYTES_REFUSED = [
    r"ERROR imapfs\.offline: offline change #\d+ \(append\) failed: APPEND to b'A': "
    r"NO Can't save a zero byte message .*; will retry$",
    r"ERROR imapfs\.offline: offline change #\d+: the server refused it 3 times \(APPEND to b'A': "
    r"NO Can't save a zero byte message .*\); its bytes are saved in \S+/imapfs/unsent/unsent-\d+-\S+$",
]


class Rig:
    def __init__(self, tmp_path: Path, delay_ms: float = 0) -> None:
        self.d = Dovecot().start()
        self.proxy = Proxy(self.d.host, self.d.port, delay_ms=delay_ms).start()
        self.cache = tmp_path / "cache"
        self.tmp = tmp_path
        self.mounts: list[Mount] = []

    def mount(self, *opts: str, allowed: Sequence[str] = ()) -> Mount:
        """A mount through the proxy; its log may hold ERROR lines matching
        ``allowed`` (the scenario's expected messages), no others."""
        mp = self.tmp / f"m{len(self.mounts)}"
        mp.mkdir()
        m = Mount(f"imap://{self.d.user}@127.0.0.1:{self.proxy.port}/", mp,
                  ["tls=off", "poll=2", "backoff_max=1", *opts], password=self.d.password,
                  env_extra={"XDG_CACHE_HOME": str(self.cache)},
                  allowed_errors=allowed)
        self.mounts.append(m)
        return m.start()

    def server_away(self) -> None:
        self.proxy.refuse = True
        self.proxy.cut()

    def server_back(self) -> None:
        self.proxy.refuse = False

    def close(self, check: bool = True) -> None:
        """Unmount what is still mounted, stop the proxy and the server; with
        ``check``, then fail unless every mount exited 0 with a clean log."""
        errors = []
        try:
            for m in reversed(self.mounts):
                try:
                    m.unmount(check=check)  # a no-op for mounts already unmounted (and checked)
                except AssertionError as e:
                    errors.append(str(e))
        finally:
            self.proxy.stop()
            self.d.cleanup()
        if errors:
            pytest.fail("\n\n".join(errors))


@pytest.fixture
def rig(tmp_path, request):
    r = Rig(tmp_path)
    yield r
    rep = getattr(request.node, "rep_call", None)  # set by tests/conftest.py
    r.close(check=rep is not None and rep.passed)  # a failed test's own error comes first


def state(m: Mount) -> str:
    return os.getxattr(m.mountpoint, "user.imapfs.state").decode()


def emls(m: Mount, folder: str) -> list[Path]:
    return sorted(m.path(folder).glob("*.eml"))


def pending(m: Mount) -> int:
    return int(re.search(r"pending changes: (\d+)", state(m)).group(1))


def test_cached_mail_reads_offline_and_uncached_fails_clearly(rig):
    for i in range(5):
        rig.d.append("Box", msg(f"box{i}", f"box {i}", f"needle-{i} text"))
    m = rig.mount(allowed=[SERVER_AWAY])  # Dovecot is stopped
    files = emls(m, "Box")
    seen = {p: p.read_bytes() for p in reversed(files[:3])}  # out of order: no read-ahead of 4 and 5
    rig.d.stop()  # the real server goes away
    rig.proxy.cut()
    assert [p.name for p in emls(m, "Box")] == [p.name for p in files]  # the listing as last seen
    for p, data in seen.items():
        assert p.read_bytes() == data
    out = subprocess.run(["grep", "-rl", "--include=*.eml", "needle-", str(m.path("Box"))],
                         capture_output=True, text=True)
    assert sorted(out.stdout.split("\n")[:-1]) == sorted(str(p) for p in seen)
    for p in files[3:]:
        with pytest.raises(OSError) as e:
            p.read_bytes()
        assert e.value.errno == errno.EIO
    assert "state: offline" in state(m)
    assert "last error:" in state(m)
    # one log line for the folder, not one per file
    assert m.log().count("messages of Box that are not in the local cache cannot be read") == 1
    rig.d.start()  # same ports
    eventually(lambda: "state: online" in state(m), timeout=15)
    assert files[4].read_bytes() == rig.d.fetch_all("Box")[5]


def test_remount_while_server_is_away_serves_the_cache(rig):
    for i in range(3):
        rig.d.append("INBOX", msg(f"r{i}", f"remount {i}"))
    m = rig.mount()
    before = {p.name: p.read_bytes() for p in emls(m, "INBOX")}
    m.unmount()
    rig.server_away()
    m2 = rig.mount(allowed=[SERVER_AWAY])  # started while the server is away
    assert {p.name: p.read_bytes() for p in emls(m2, "INBOX")} == before
    assert "state: offline" in state(m2)
    m2.unmount()
    rig.server_back()
    m3 = rig.mount("offline")  # forced, although the server is there
    assert {p.name: p.read_bytes() for p in emls(m3, "INBOX")} == before
    assert "offline (forced" in state(m3)


def test_remount_costs_only_the_changes(rig):
    for i in range(200):
        rig.d.append("Big", msg(f"b{i}", f"b {i}"))
    m = rig.mount()
    assert len(emls(m, "Big")) == 200
    m.unmount()
    rig.d.append("Big", msg("late", "arrived while unmounted"))
    m2 = rig.mount()
    rig.proxy.clear()
    names = [p.name for p in emls(m2, "Big")]
    assert len(names) == 201 and any("arrived while unmounted" in n for n in names)
    sent = rig.proxy.client_bytes()
    assert b"(QRESYNC (" in sent  # resumed from the cached UIDVALIDITY/MODSEQ
    assert not re.search(rb"UID FETCH 1:\* \(UID FLAGS INTERNALDATE", sent)  # no full metadata fetch


def test_offline_changes_are_journaled_shown_and_replayed(rig, tmp_path):
    d = rig.d
    for f in ("A", "B", "Gone"):
        d.create(f)
    d.append("A", msg("a1", "move me"))
    d.append("A", msg("a2", "delete me"))
    a3 = d.append("A", msg("a3", "flag me"))
    m = rig.mount(allowed=[SERVER_AWAY])
    for f in ("A", "B", "Gone"):
        os.listdir(m.path(f))
    files = {re.search(r" (\w+ me) #", p.name).group(1): p for p in emls(m, "A")}
    files["move me"].read_bytes()
    rig.server_away()

    subprocess.run(["mv", str(files["move me"]), str(m.path("B"))], check=True)
    files["delete me"].unlink()
    os.setxattr(files["flag me"], "user.imap.flags", b"\\Flagged")
    m.path("NewDir").mkdir()
    # a name only the server can judge (Dovecot's Maildir++ refuses any "."): not taken offline,
    # so no file is journaled into a folder the server would refuse at replay (issue 10, soak)
    # (EIO: needs the server; EINVAL if a connection still open let the server refuse it)
    for odd in ("a.b", "~tilde", "Invoice #12"):
        with pytest.raises(OSError) as e:
            m.path(odd).mkdir()
        assert e.value.errno in (errno.EIO, errno.EINVAL) and not m.path(odd).exists()
    src = tmp_path / "new.eml"
    for mid, folder in (("new1", "NewDir"), ("new2", "Gone"), ("new3", "A")):
        src.write_bytes(msg(mid, f"{mid} written offline"))
        subprocess.run(["cp", str(src), str(m.path(folder, f"{mid}.eml"))], check=True)
    # shown at once
    assert [p.name for p in emls(m, "B")] == [files["move me"].name]
    assert b"a1@test" in (m.path("B", files["move me"].name)).read_bytes()
    assert not files["delete me"].exists() and not files["move me"].exists()
    assert m.path("NewDir", "new1.eml").read_bytes() == msg("new1", "new1 written offline")
    eventually(lambda: pending(m) == 7)
    # meanwhile, another device: the flagged message goes away, so does folder Gone
    c = d.client()
    c.select("A")
    c.uid("STORE", str(a3), "+FLAGS", "(\\Deleted)")
    c.uid("EXPUNGE", str(a3))
    c.close()
    assert c.delete("Gone")[0] == "OK"
    c.logout()
    assert message_ids(d, "A") == ["a1", "a2"]  # nothing reached the server yet

    rig.server_back()
    eventually(lambda: pending(m) == 0, timeout=30)
    assert message_ids(d, "A") == ["new3"]
    assert message_ids(d, "B") == ["a1"]
    assert message_ids(d, "NewDir") == ["new1"]
    assert not any(b"a.b" in n or b"tilde" in n or b"Invoice" in n for n in d.client().list()[1])
    assert message_ids(d, "imapfs-recovered") == ["new2"]  # its folder was gone: kept, not dropped
    s = state(m)
    assert "not applied" in s and "flags" in s
    eventually(lambda: sorted(p.name.split(" #")[0][16:] for p in emls(m, "A")) == ["new3 written offline"])


def test_sigkill_between_journal_and_replay_loses_nothing_and_repeats_nothing(rig, tmp_path):
    d = rig.d
    d.create("B")
    d.append("A", msg("k1", "moved offline"))
    m = rig.mount(allowed=[SERVER_AWAY])
    (p,) = emls(m, "A")
    os.listdir(m.path("B"))
    rig.server_away()
    os.rename(p, m.path("B", p.name))
    (tmp_path / "n.eml").write_bytes(msg("k2", "new offline"))
    subprocess.run(["cp", str(tmp_path / "n.eml"), str(m.path("A", "n.eml"))], check=True)
    eventually(lambda: pending(m) == 2)
    os.kill(m.pid, signal.SIGKILL)
    m.proc.wait(10)
    force_unmount(m.mountpoint)
    assert m.unmount(check=False) == -signal.SIGKILL  # killed on purpose: no clean exit to check,
    assert not m.bad_log_lines()  # but its log up to the kill is
    m2 = rig.mount(allowed=[SERVER_AWAY])  # still offline: the journal is shown again
    assert pending(m2) == 2
    assert [q.name for q in emls(m2, "B")] == [p.name]
    assert m2.path("A", "n.eml").read_bytes() == msg("k2", "new offline")
    rig.server_back()
    eventually(lambda: pending(m2) == 0, timeout=30)
    assert message_ids(d, "A") == ["k2"]
    assert message_ids(d, "B") == ["k1"]


# -- prefetch ---------------------------------------------------------------------------

def run_prefetch(*paths: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(imapfs_command() + ["prefetch", *map(str, paths)], capture_output=True, text=True,
                          timeout=120, **kw)


def test_prefetch_makes_a_folder_readable_offline_and_resumes(rig):
    for i in range(60):
        rig.d.append("Keep", msg(f"p{i}", f"prefetch {i}", "x" * 5000))
    m = rig.mount(allowed=[SERVER_AWAY])  # the server goes away once all is cached
    files = emls(m, "Keep")
    for p in reversed(files[:20]):
        p.read_bytes()  # as if a run was interrupted after 20 (out of order: no read-ahead)
    res = run_prefetch(m.path("Keep"))
    assert res.returncode == 0, res.stderr
    assert "20 messages already cached" in res.stderr
    assert "prefetch: 40/40 messages" in res.stderr and "done" in res.stderr
    assert all(os.getxattr(p, "user.imapfs.cached") == b"1" for p in files)
    rig.server_away()
    server = rig.d.fetch_all("Keep")
    for p in files:
        uid = int(re.search(r"#(\d+)\.eml$", p.name).group(1))
        assert p.read_bytes() == server[uid]
    res = run_prefetch(m.path("Keep"))
    assert "60 messages already cached" in res.stderr and res.returncode == 0


def test_prefetch_shows_progress_on_a_terminal_and_can_be_interrupted(rig):
    r = rig
    for i in range(120):
        r.d.append("Slow", msg(f"s{i}", f"slow {i}", "y" * 20000))
    r.proxy.delay_ms = 200  # slow link: the run takes seconds, long enough to interrupt
    m = r.mount()
    master, slave = pty.openpty()
    proc = subprocess.Popen(imapfs_command() + ["prefetch", str(m.path("Slow"))], stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 60
    # interrupt once it has fetched something, so the rerun has something to resume from
    while not re.search(rb"prefetch: [1-9]\d*/120 messages", out) and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                out += os.read(master, 65536)
            except OSError:
                break
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(60)
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert rc == 130, out
    assert b"\r" in out and b"interrupted; run the same command again" in out
    res = run_prefetch(m.path("Slow"))
    assert res.returncode == 0, res.stderr
    assert "already cached" in res.stderr and "done" in res.stderr


def test_keep_option_fills_the_cache_in_the_background(rig):
    for i in range(30):
        rig.d.append("Archive/2026", msg(f"kp{i}", f"kept {i}"))
    m = rig.mount("keep=Archive/2026,INBOX")
    files = eventually(lambda: emls(m, "Archive/2026"))
    eventually(lambda: all(os.getxattr(p, "user.imapfs.cached") == b"1" for p in files), timeout=20)


def test_offline_edge_cases_reach_the_server_correctly(rig, tmp_path):
    d = rig.d
    for f in ("A", "Doomed"):
        d.create(f)
    d.append("A", msg("stays-visible", "to doomed"))
    m = rig.mount(f"cache_dir={tmp_path / 'c2'}", allowed=[SERVER_AWAY, *ZERO_BYTES_REFUSED])
    os.listdir(m.path("Doomed"))
    (src,) = emls(m, "A")
    rig.server_away()
    # 1. a new file, journaled, then written again: only the last version is stored
    p = m.path("A", "grow.eml")
    p.write_bytes(msg("grow", "grows", "v1"))
    eventually(lambda: pending(m) == 1)
    with open(p, "ab") as f:
        f.write(b"v2\r\n")
    # 2. a file the server will refuse (zero bytes) must not block what follows
    m.path("A", "empty.eml").write_bytes(b"")
    # 3. a move into a folder another device deletes meanwhile
    os.rename(src, m.path("Doomed", src.name))
    m.path("A", "after.eml").write_bytes(msg("after", "after the refused one"))
    eventually(lambda: pending(m) >= 4)
    c = d.client()
    assert c.delete("Doomed")[0] == "OK"
    c.logout()
    rig.server_back()
    eventually(lambda: pending(m) == 0, timeout=60)
    bodies = list(d.fetch_all("A").values())
    grow = [b for b in bodies if b"<grow@test>" in b]
    assert grow == [msg("grow", "grows", "v1") + b"v2\r\n"]  # once, the final version
    assert "after" in message_ids(d, "A") and "stays-visible" in message_ids(d, "A")
    saved = list((rig.cache / "imapfs" / "unsent").glob("unsent-*.eml"))  # XDG_CACHE_HOME/imapfs/unsent
    assert [q.read_bytes() for q in saved] == [b""]  # refused, so kept aside, never dropped
    assert "refused it" in state(m)
    # the message whose move could not be applied is shown where it is again
    eventually(lambda: any("to doomed" in q.name for q in emls(m, "A")), timeout=15)


def test_offline_edit_and_rm_to_trash_are_replayed(rig):
    d = rig.d
    d.create("Trash")
    d.append("INBOX", msg("ed", "edit offline", "old text"), flags="\\Flagged")
    d.append("INBOX", msg("tr", "trash offline"))
    m = rig.mount("trash=auto", allowed=[SERVER_AWAY])
    os.listdir(m.path("Trash"))
    files = {("edit" if "edit" in p.name else "trash"): p for p in emls(m, "INBOX")}
    files["edit"].read_bytes()
    rig.server_away()
    with open(files["edit"], "r+b") as f:  # an edit while offline: journaled as a new version
        data = f.read()
        f.seek(0)
        f.write(data.replace(b"old text", b"new text"))
    files["trash"].unlink()  # rm with trash=auto while offline: journaled as a move to Trash
    assert not files["trash"].exists()
    eventually(lambda: pending(m) == 2)
    rig.server_back()
    eventually(lambda: pending(m) == 0, timeout=30)
    inbox = list(d.fetch_all("INBOX").values())
    assert len(inbox) == 1 and b"new text" in inbox[0]  # the new version, once; the old one expunged
    assert "\\Flagged" in next(iter(d.flags("INBOX").values()))  # flags carried over
    assert message_ids(d, "Trash") == ["tr"]


# -- issue 10 items 4 and 5: a bad journal entry, a move into a folder never opened -------------

def test_offline_mv_into_a_folder_never_opened_is_journaled(rig):
    d = rig.d
    d.create("Never")
    d.append("A", msg("nv", "to never"))
    m = rig.mount(allowed=[SERVER_AWAY])
    (src,) = emls(m, "A")
    src.read_bytes()
    rig.server_away()  # "Never" was listed (LIST) but never opened: its messages are unknown
    r = subprocess.run(["mv", str(src), str(m.path("Never"))], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not src.exists() and m.path("Never", src.name).read_bytes() == msg("nv", "to never")
    assert pending(m) == 1
    rig.server_back()
    eventually(lambda: pending(m) == 0, timeout=30)
    assert message_ids(d, "Never") == ["nv"] and message_ids(d, "A") == []


def test_a_journal_entry_that_cannot_be_sent_does_not_stop_the_others(rig, tmp_path):
    """Entries an older imapfs may have recorded: a non-ASCII keyword (UnicodeEncodeError in
    imaplib), an absurd INTERNALDATE, a record it cannot even read (KeyError), a Message-ID
    with NUL on an APPEND that may have been sent. Each fails alone, counts its attempts and is
    set aside; none holds back the entries after it."""
    from imapfs.store import Store

    d = rig.d
    uid = d.append("INBOX", msg("victim", "flag me"))
    c = d.client()
    c.select("INBOX")
    uidv = int(c.response("UIDVALIDITY")[1][0])
    c.logout()
    cache = tmp_path / "jc"
    nul = b"Message-ID: <nul\x00id@test>\r\nSubject: nul\r\n\r\nnul in its id\r\n"
    with Store(str(cache), 1 << 30) as s:
        s.journal_add("flags", {"folder": b"INBOX", "uidvalidity": uidv, "uid": uid, "flags": ["caf\u00e9"]})
        s.journal_add("append", {"folder": b"INBOX", "flags": [], "date": 10 ** 20, "replaces": None,
                                 "name": "absurd.eml"}, msg("absurd", "absurd date"))
        s.journal_add("move", {"src": b"INBOX", "uidvalidity": uidv, "uid": uid})  # no "dest"
        s.journal_started(s.journal_add("append", {"folder": b"INBOX", "flags": [], "date": None,
                                                    "replaces": None, "name": "nul.eml"}, nul))
        s.journal_add("append", {"folder": b"INBOX", "flags": ["$Fine"], "date": None, "replaces": None,
                                 "name": "fine.eml"}, msg("fine", "after the bad ones"))
    m = rig.mount(f"cache_dir={cache}", allowed=[
        r"ERROR imapfs\.offline: offline change #1 \(flags\) failed: not a valid IMAP flag .*; will retry$",
        r"ERROR imapfs\.offline: offline change #1 \(flags\) gave up after 5 attempts: not a valid IMAP flag",
        r"ERROR imapfs\.offline: offline change #2 \(append\) failed: INTERNALDATE out of range",
        r"ERROR imapfs\.offline: offline change #2: it could not be sent 3 times \(INTERNALDATE out of range",
        r"ERROR imapfs\.offline: offline change #3 \(move\) failed: KeyError: 'dest'; will retry$",
        r"ERROR imapfs\.offline: offline change #3 \(move\) gave up after 5 attempts: KeyError: 'dest'$",
    ])

    def subjects() -> list[bytes]:  # (Dovecot stores the NUL as 0x80)
        return sorted(re.search(rb"Subject: ([^\r]*)", b).group(1) for b in d.fetch_all("INBOX").values())

    expected = [b"after the bad ones", b"flag me", b"nul"]  # the later entries went through at once
    eventually(lambda: subjects() == expected, timeout=20)
    eventually(lambda: pending(m) == 0, timeout=60)
    assert subjects() == expected
    assert d.flags("INBOX")[uid] == set()  # the bad keyword never reached the server
    saved = list((rig.cache / "imapfs" / "unsent").glob("unsent-2-*.eml"))
    s = state(m)
    assert "#1 flags" in s and "#2 append" in s and "#3 move" in s
    log = m.log()  # the good ones did not wait for the bad ones to be given up
    assert log.index("offline change #5 (append): stored") < log.index("offline change #1 (flags) gave up")
    assert [q.read_bytes() for q in saved] == [msg("absurd", "absurd date")]  # set aside, never dropped


def test_a_write_made_while_the_journal_records_a_file_is_recorded_too():
    """Issue 10 item 3, offline: Journal.append must not mark a file clean when it was
    written to while its record was being written (in-process: the record waits on a gate)."""
    import trio

    from imapfs.offline import Journal
    from imapfs.tree import Tree

    class Pool:
        capabilities: frozenset = frozenset()
        last_error = None

        def available(self) -> bool:
            return False  # offline: commits go to the journal

    class Entry:
        def __init__(self, seq: int) -> None:
            self.seq = seq

    class Store:
        def __init__(self) -> None:
            self.blobs: dict[int, bytes] = {}
            self.skipped: list[int] = []

        def journal_add(self, op, args, blob=None):
            seq = len(self.blobs) + 1
            self.blobs[seq] = blob
            return seq

        def journal_pending(self):
            return [Entry(s) for s in self.blobs if s not in self.skipped]

        def journal_skip(self, seq, why):
            self.skipped.append(seq)

    class Disk:
        def __init__(self) -> None:
            self.store = Store()
            self.recording = trio.Event()
            self.gate = trio.Event()

        async def call(self, fn, *args):
            if fn.__name__ == "journal_add":
                self.recording.set()
                await self.gate.wait()
            return fn(*args)

    async def main() -> None:
        tree = Tree(Pool())
        disk = Disk()
        Journal(tree, disk)
        folder = tree.ensure_path(("A",))
        folder.raw, folder.selectable = b"A", True
        p = tree.create_file(folder, "x.eml")
        await tree.write_pending(p, 0, b"v1")
        async with trio.open_nursery() as n:
            n.start_soon(tree.commit, p)
            await disk.recording.wait()  # the record of v1 is being written
            await tree.write_pending(p, 2, b"v2")
            disk.gate.set()
        assert p.dirty and tree.uploads.tracked(p)  # v2 is still owed
        await tree.commit(p)
        assert disk.store.blobs == {1: b"v1", 2: b"v1v2"}
        assert disk.store.skipped == [1]  # superseded by the record of the last version
        assert not p.dirty and not tree.uploads.tracked(p)

    trio.run(main)


def test_offline_file_given_a_date_after_its_record_is_stored_and_leaves_the_listing(rig):
    """`cp -p` offline: the file is recorded at close, then utime gives it a date. That
    change must be stored too, and once the server is back the listing shows only the
    server's message (the soak test found the writer's name shown for good)."""
    rig.d.create("Dated")
    m = rig.mount(allowed=[SERVER_AWAY])
    os.listdir(m.path("Dated"))
    rig.server_away()
    p = m.path("Dated", "copied.eml")
    p.write_bytes(msg("dated", "dated offline"))
    eventually(lambda: pending(m) >= 1, timeout=15)  # recorded at close
    when = 1_500_000_000
    os.utime(p, (when, when))
    rig.server_back()
    eventually(lambda: message_ids(rig.d, "Dated") == ["dated"], timeout=30)

    def only_the_servers() -> bool:
        names = [q.name for q in emls(m, "Dated")]
        return len(names) == 1 and names[0] != "copied.eml" and names[0].startswith("2017-07-14_")

    eventually(only_the_servers, timeout=30)


def _listdir_within(path: Path, seconds: float) -> list[str] | None:
    """``os.listdir`` in a thread: None if it has not answered in time (the
    kernel would keep the hung call; the test must still end)."""
    import threading
    box: dict[str, list[str]] = {}
    t = threading.Thread(target=lambda: box.setdefault("v", os.listdir(path)), daemon=True)
    t.start()
    t.join(seconds)
    return box.get("v")


def test_a_folder_holding_offline_moves_and_an_unsent_file_lists_each_entry_once(rig):
    """Issue 10 (soak, seed 5): a folder holding server messages, messages
    moved in while offline and a file written while offline. Their readdir
    cookies were out of order, so the kernel's next readdir restarted
    mid-list and ``ls`` never ended; and a moved-in message's ``.parts``
    shared the next one's cookie, so a listing longer than one readdir
    skipped messages."""
    d = rig.d
    d.append("B", msg("b0", "already here"))
    long = "a subject long enough that a few dozen fill more than one readdir page " * 2
    for i in range(30):
        d.append("A", msg(f"mv{i}", f"{long}{i}"))
    m = rig.mount(allowed=[SERVER_AWAY])
    srcs = emls(m, "A")
    for p in srcs:
        p.read_bytes()
    (b0,) = emls(m, "B")
    rig.server_away()
    os.rename(srcs[0], m.path("B", srcs[0].name))
    m.path("B", "new.eml").write_bytes(msg("new", "written offline"))
    names = _listdir_within(m.path("B"), 20)
    assert names is not None, "ls B did not answer"
    assert sorted(names) == sorted([b0.name, f".{b0.stem}.parts", srcs[0].name, f".{srcs[0].stem}.parts", "new.eml"])
    for p in srcs[1:]:
        os.rename(p, m.path("B", p.name))
    names = _listdir_within(m.path("B"), 20)
    assert names is not None, "ls B did not answer"
    want = {b0.name, f".{b0.stem}.parts", "new.eml"} | {p.name for p in srcs} | {f".{p.stem}.parts" for p in srcs}
    assert len(names) == len(set(names)) and set(names) == want
    rig.server_back()
    eventually(lambda: pending(m) == 0, timeout=30)
    eventually(lambda: len(emls(m, "B")) == 32, timeout=20)
    names = _listdir_within(m.path("B"), 20)
    assert names is not None, "ls B did not answer after the replay"
    assert len(names) == len(set(names)) == 64
    assert sorted(message_ids(d, "B")) == sorted(["b0", "new"] + [f"mv{i}" for i in range(30)])


def test_a_replayed_move_shows_once_while_a_later_entry_keeps_its_folder_busy(rig):
    """Issue 10 (soak, seeds 12 and 13): a move replayed into a folder for which the journal
    still owes something (here two empty files the server refuses, tried for rounds) kept
    showing under its offline name beside the real message, another message's UID in its
    name. Each entry's overlay now goes as soon as that entry is done."""
    d = rig.d
    d.append("A", msg("x", "moved offline"))
    d.create("B")
    m = rig.mount(allowed=[SERVER_AWAY] + [z.replace("b'A'", "b'B'") for z in ZERO_BYTES_REFUSED])
    (src,) = emls(m, "A")
    src.read_bytes()
    assert os.listdir(m.path("B")) == []
    rig.server_away()
    os.rename(src, m.path("B", src.name))
    empties = [f"empty{i}.eml" for i in range(6)]  # refused 3 times each, one after the other
    for name in empties:
        m.path("B", name).write_bytes(b"")
    eventually(lambda: pending(m) == 7)
    assert sorted(os.listdir(m.path("B"))) == sorted([src.name, f".{src.stem}.parts", *empties])
    rig.server_back()
    eventually(lambda: message_ids(d, "B") == ["x"], timeout=20)
    (uid,) = d.fetch_all("B")
    real = f"#{uid}.eml"

    def shown() -> list[str]:
        return sorted(n for n in os.listdir(m.path("B")) if n.endswith(".eml"))

    def only_the_real_one() -> bool:
        xs = [n for n in shown() if not n.startswith("empty")]
        return len(xs) == 1 and xs[0].endswith(real)

    eventually(only_the_real_one, timeout=3)
    assert pending(m) >= 1, "the window closed before the check: make the busy entries last longer"
    xs = [n for n in shown() if not n.startswith("empty")]
    assert len(xs) == 1 and xs[0].endswith(real)
    assert m.path("B", xs[0]).read_bytes() == d.fetch_all("B")[uid]
    eventually(lambda: pending(m) == 0, timeout=60)
    assert [n for n in shown() if not n.startswith("empty")] == xs


class _StoreDisk:
    """Disk's interface over a real Store, called inline (the in-process replay tests)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def call(self, fn, *args):
        return fn(*args)


class _StubPool:
    """Pool's interface over one stub connection (the in-process replay tests): online, no
    folder backed off, every command carried out at once."""

    capabilities: frozenset = frozenset({"UIDPLUS"})
    last_error = None
    forced_offline = False
    online = True

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def available(self) -> bool:
        return True

    def held_back(self, folder: bytes) -> bool:  # no folder backed off (Pool.stalls)
        return False

    async def run(self, fn, *args, **kwargs):
        return fn(self.conn)

    async def run_list(self, *args, **kwargs):
        from imapfs.errors import ServerUnavailable
        raise ServerUnavailable("the folder list is not part of this test")


def test_a_journal_entry_superseded_while_it_is_replayed_costs_nothing(tmp_path):
    """Issue 10 (soak, seed 12): the uploader stored a newer version of a file (superseding
    its journal record) while a replay held that record. The replay stopped at "no pending
    journal entry", skipped its settle, and the writers' names of everything it had just
    stored stayed listed for good. Now a superseded entry is passed over; one whose APPEND
    went through meanwhile has that copy of the older version taken back (in-process)."""
    import trio

    from imapfs.connection.writes import Writes as ConnectionWrites
    from imapfs.offline import Journal
    from imapfs.store import Store
    from imapfs.tree import Tree

    class Info:
        uidvalidity = 9

    class Conn:
        # the real fallback to imapfs-recovered, over this fake's append
        append_or_recover = ConnectionWrites.append_or_recover

        def __init__(self, store: Store) -> None:
            self.store = store
            self.boxes: dict[int, bytes] = {}
            self.supersede_during: dict[bytes, int] = {}  # APPEND of these bytes: skip that seq meanwhile

        def append(self, folder, data, flags, date):
            uid = len(self.boxes) + 1
            self.boxes[uid] = data
            for marker, seq in self.supersede_during.items():
                if marker in data:
                    self.store.journal_skip(seq, "superseded by a later version of the file")
            return (9, uid)

        def select(self, box):
            return Info()

        def uid_exists(self, box, uidv, uid):
            return uid in self.boxes

        def expunge_message(self, box, uidv, uid):
            del self.boxes[uid]

    def body(mid: str) -> bytes:
        return f"Message-ID: <{mid}@t>\r\nSubject: {mid}\r\n\r\n{mid}\r\n".encode()

    async def main(store: Store) -> None:
        conn = Conn(store)
        tree = Tree(_StubPool(conn))
        journal = Journal(tree, _StoreDisk(store))
        add = {mid: store.journal_add("append", {"folder": b"A", "flags": [], "date": None, "replaces": None,
                                                 "name": f"{mid}.eml"}, body(mid))
               for mid in ("old", "x", "y", "z")}
        conn.supersede_during = {b"<old@t>": add["old"], b"<x@t>": add["y"]}
        journal.pending = 4
        await journal.replay()
        stored = sorted(conn.boxes.values())
        assert stored == sorted([body("x"), body("z")])  # old: taken back; y: never sent
        assert store.journal_pending() == []  # one round did it all
        assert journal.due  # and the folder still gets settled (its list could not be read here)

    with Store(str(tmp_path / "c"), 1 << 30) as store:
        trio.run(main, store)


def test_flags_set_offline_show_after_the_replay_and_a_remount(rig):
    """Issue 10 (soak, seeds 11 and 13, once getxattr answered from the tree): flags set
    offline were replayed, and the sync that saw them took the server's mod-sequence
    into the cache without the flags (they already matched in memory). The next mount
    loaded the old flags with the new mod-sequence and showed them for good."""
    d = rig.d
    d.append("A", msg("f1", "flag me offline"))
    m = rig.mount(allowed=[SERVER_AWAY])
    (p,) = emls(m, "A")
    p.read_bytes()
    assert os.getxattr(p, "user.imap.flags") == b""
    rig.server_away()
    os.setxattr(p, "user.imap.flags", b"\\Flagged $Work")
    rig.server_back()
    eventually(lambda: pending(m) == 0, timeout=30)
    eventually(lambda: list(d.flags("A").values()) == [{"\\Flagged", "$Work"}], timeout=10)
    time.sleep(2.5)  # a poll round syncs the folder (its mod-sequence moved past the replayed STORE)
    os.listdir(m.path("A"))
    m.unmount()
    m2 = rig.mount()
    (p2,) = emls(m2, "A")
    assert sorted(os.getxattr(p2, "user.imap.flags").decode().split()) == ["$Work", "\\Flagged"]


def test_a_stalled_folder_holds_back_only_the_changes_that_wait_for_it(rig):
    """docs/reliability.md (stop 16): a folder the server stalls on held back the replay of
    every later journal entry. An empty ``dovecot-uidlist.lock`` (what a SIGKILL can leave)
    makes Dovecot block each SELECT or APPEND of that folder for 2 minutes while the others
    answer. Entries of other folders now go at once; those touching the stalled folder, or a
    folder of an entry that waits (the move A -> C makes C's file wait), follow in their
    order once it answers, each once."""
    import pwd

    d = rig.d
    for f in ("A", "B", "C"):
        d.create(f)
    d.append("A", msg("a1", "moved offline"))
    b1 = d.append("B", msg("b1", "flagged offline"))
    m = rig.mount("timeout=2", allowed=[SERVER_AWAY])
    for f in ("A", "B", "C"):
        os.listdir(m.path(f))
    (a1,) = emls(m, "A")
    a1.read_bytes()
    (b1_file,) = emls(m, "B")
    rig.server_away()
    m.path("A", "n1.eml").write_bytes(msg("n1", "written into the stalled folder"))
    eventually(lambda: pending(m) == 1)
    os.rename(a1, m.path("C", a1.name))
    m.path("B", "n2.eml").write_bytes(msg("n2", "written into a free folder"))
    eventually(lambda: pending(m) == 3)
    os.setxattr(b1_file, "user.imap.flags", b"\\Flagged")
    m.path("C", "n3.eml").write_bytes(msg("n3", "written after the move into C"))
    eventually(lambda: pending(m) == 5)
    lock = d.maildir() / ".A" / "dovecot-uidlist.lock"
    lock.write_bytes(b"")
    mail = pwd.getpwnam("mail")
    os.chown(lock, mail.pw_uid, mail.pw_gid)
    try:
        rig.server_back()
        eventually(lambda: message_ids(d, "B") == ["b1", "n2"], timeout=15)
        eventually(lambda: d.flags("B")[b1] == {"\\Flagged"}, timeout=10)
        (n2_uid,) = (u for u, b in d.fetch_all("B").items() if b"<n2@" in b)

        def n2_by_its_real_name() -> bool:
            names = os.listdir(m.path("B"))
            return "n2.eml" not in names and any(n.endswith(f"#{n2_uid}.eml") for n in names)

        eventually(n2_by_its_real_name, timeout=10)
        assert pending(m) == 3  # n1, the move and n3 wait for A
        assert message_ids(d, "C") == []
        c = d.client()  # (a SELECT of A would wait on the lock too; STATUS answers)
        assert c.status("A", "(MESSAGES)")[1] == [b"A (MESSAGES 1)"]
        c.logout()
        assert m.path("C", "n3.eml").read_bytes() == msg("n3", "written after the move into C")
        # Later rounds try A again, each with its first entry only: one time-out a round.
        eventually(lambda: m.log().count("offline change #1 (append) waits: ") >= 2, timeout=15)
        assert not re.search(r"offline change #[25] \(\w+\) waits: ", m.log())
        assert pending(m) == 3
    finally:
        lock.unlink(missing_ok=True)
    eventually(lambda: pending(m) == 0, timeout=30)
    assert message_ids(d, "A") == ["n1"]
    assert message_ids(d, "B") == ["b1", "n2"]
    in_c = [re.search(rb"Message-ID: <(\w+)@", b).group(1) for _, b in sorted(d.fetch_all("C").items())]
    assert in_c == [b"a1", b"n3"]  # the move first, as recorded

    def shown_in_c() -> list[str]:
        return sorted(p.name.split(" #")[0][16:] for p in emls(m, "C"))

    eventually(lambda: shown_in_c() == ["moved offline", "written after the move into C"], timeout=15)


@pytest.mark.parametrize("a_fails", ["refused", "stalls", "backed off", "server gone"])
def test_a_waiting_entry_holds_back_its_folders_and_what_follows_a_waiting_mkdir(tmp_path, a_fails):
    """The replay's order rules, in-process (a stub connection): an APPEND to A that the
    server refuses, or that times out while the server still answers a NOOP, holds back
    A's later entries but not B's; a mkdir after it waits too (a folder-list change stays
    in order with everything), and so does every entry after that mkdir. When the NOOP
    fails as well, the server is gone: the round pauses, nothing after A is tried, and
    only a refusal is counted against the entry. A folder the pool backs off (FolderStalled:
    it found the server answering) waits the same way, without a probe of its own."""
    import trio

    from imapfs.errors import CommandFailed, FolderStalled, ServerUnavailable
    from imapfs.offline import Journal
    from imapfs.store import Store
    from imapfs.tree import Tree

    class Conn:
        def __init__(self) -> None:
            self.stored: list[tuple[bytes, bytes]] = []
            self.created: list[bytes] = []

        def append_or_recover(self, folder, data, flags, date, recovered):
            if folder == b"A":
                if a_fails == "refused":
                    raise CommandFailed("APPEND to b'A': NO [OVERQUOTA] quota exceeded")
                if a_fails == "backed off":
                    raise FolderStalled("APPEND b'A': no answer within 30 s; A is not tried again for 30 s",
                                        b"A", sent=True)
                raise ServerUnavailable("SELECT b'A': connection lost: timed out")
            self.stored.append((folder, data))
            return folder, (9, len(self.stored))

        def create(self, name):
            self.created.append(name)

        def subscribe(self, name):
            pass

    class Pool(_StubPool):
        probes = 0

        async def probe(self) -> bool:
            self.probes += 1
            return a_fails != "server gone"

    def append(store: Store, folder: bytes, mid: str) -> int:
        return store.journal_add("append", {"folder": folder, "flags": [], "date": None, "replaces": None,
                                            "name": f"{mid}.eml"}, msg(mid))

    async def main(store: Store) -> None:
        conn = Conn()
        pool = Pool(conn)
        journal = Journal(Tree(pool), _StoreDisk(store))
        seqs = [append(store, b"A", "a1"), append(store, b"B", "b1"), append(store, b"A", "a2"),
                store.journal_add("mkdir", {"name": b"X", "path": ["X"]}), append(store, b"B", "b2")]
        journal.pending = len(seqs)
        await journal.replay()
        left = {e.seq: e for e in store.journal_pending()}
        if a_fails == "server gone":
            assert conn.stored == [] and conn.created == [] and sorted(left) == seqs
        else:
            assert conn.stored == [(b"B", msg("b1"))]  # b1 at once; b2 waits behind the waiting mkdir
            assert conn.created == [] and sorted(left) == [seqs[0], seqs[2], seqs[3], seqs[4]]
        assert pool.probes == (0 if a_fails in ("refused", "backed off") else 1)  # one try of A a round
        assert left[seqs[0]].attempts == (1 if a_fails == "refused" else 0)  # a time-out is not its fault
        assert left[seqs[2]].attempts == 0  # never tried: it waited

    with Store(str(tmp_path / "c"), 1 << 30) as store:
        trio.run(main, store)
