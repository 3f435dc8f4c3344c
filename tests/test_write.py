"""Write-through: mv, rm, cp, edits, mkdir/rmdir/rename, flags — against the server's state.

Every test asserts what a separate IMAP connection sees afterwards. The same
tests run against full Dovecot and against Dovecot advertising no MOVE, and
the traffic is recorded by a proxy so the fallbacks are proven, not assumed
(Dovecot still accepts hidden commands; see tests/support/dovecot.py).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import dovecot as dv
from tests.support.dovecot import Dovecot
from tests.support.mount import Mount
from tests.support.proxy import Proxy

PROFILES = {"full": dv.FULL, "no-move": dv.NO_MOVE, "no-uidplus": dv.NO_UIDPLUS}


def msg(mid: str, subject: str = "hello", body: str = "body") -> bytes:
    return (f"Message-ID: <{mid}@test>\r\nSubject: {subject}\r\nFrom: a@example.org\r\n\r\n{body}\r\n").encode()


def eventually(fn, timeout: float = 10.0, interval: float = 0.05):
    """Poll *fn* until it returns something truthy (APPEND happens after release)."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {fn}")
        time.sleep(interval)


def message_ids(d: Dovecot, folder: str) -> list[str]:
    return sorted(re.search(rb"Message-ID: <([^>@]+)[@>]", b).group(1).decode()
                  for b in d.fetch_all(folder).values())


class Env:
    """A server (of one capability profile), a recording proxy, and a live mount."""

    def __init__(self, d: Dovecot, proxy: Proxy, m: Mount) -> None:
        self.d, self.proxy, self.m = d, proxy, m

    def path(self, *p: str) -> Path:
        return self.m.path(*p)

    def eml(self, folder: str) -> list[Path]:
        return sorted(self.path(folder).glob("*.eml"))

    def sent(self) -> bytes:
        return self.proxy.client_bytes()


@pytest.fixture(scope="module", params=list(PROFILES))
def env(request, tmp_path_factory):
    with Dovecot(capabilities=PROFILES[request.param]) as d:
        with Proxy(d.host, d.port) as proxy:
            mp = tmp_path_factory.mktemp("mnt")
            url = f"imap://{d.user}@127.0.0.1:{proxy.port}/"
            with Mount(url, mp, ["tls=off", "poll=1"], password=d.password,
                       allowed_errors=[r"refusing", r"could not store"]) as m:
                e = Env(d, proxy, m)
                e.profile = request.param
                yield e


def fresh(env: Env, name: str) -> str:
    """A new folder for one test, visible in the mount."""
    env.d.create(name)
    eventually(lambda: os.path.isdir(env.path(name)), timeout=5)
    return name


# -- mv ---------------------------------------------------------------------------

def test_mv_between_folders(env):
    a, b = fresh(env, "MvA"), fresh(env, "MvB")
    env.d.append(a, msg("mv1", "move me"), flags="\\Flagged")
    env.d.append(a, msg("stay1"))
    (src,) = [p for p in env.eml(a) if "move me" in p.name]
    data = src.read_bytes()
    env.proxy.clear()
    subprocess.run(["mv", str(src), str(env.path(b))], check=True)
    assert message_ids(env.d, a) == ["stay1"]
    assert message_ids(env.d, b) == ["mv1"]
    (moved,) = env.eml(b)
    assert moved.name.endswith(" #1.eml") and "move me" in moved.name  # canonical name, new UID
    assert moved.read_bytes() == data
    assert [p.name for p in env.eml(a)] == [p.name for p in env.eml(a) if "move me" not in p.name]
    assert "\\Flagged" in os.getxattr(moved, "user.imap.flags").decode()
    sent = env.sent()
    if env.profile == "no-move":
        assert b" MOVE " not in sent
        assert re.search(rb"UID COPY \d+ ", sent) and re.search(rb"UID EXPUNGE \d+\r\n", sent)
    else:
        assert b"UID MOVE" in sent
    assert not re.search(rb"\d+ EXPUNGE\r\n", sent)  # never a bare EXPUNGE


def test_mv_of_message_expunged_elsewhere_is_enoent(env):
    a, b = fresh(env, "GoneA"), fresh(env, "GoneB")
    uid = env.d.append(a, msg("gone1"))
    (src,) = env.eml(a)
    c = env.d.client()
    c.select(a)
    c.uid("STORE", str(uid), "+FLAGS", "(\\Deleted)")
    c.uid("EXPUNGE", str(uid))
    c.logout()
    with pytest.raises(OSError) as e:
        os.rename(src, env.path(b, src.name))
    assert e.value.errno == errno.ENOENT
    assert message_ids(env.d, b) == []


def test_two_mvs_race_safely(env):
    a, b, c = fresh(env, "RaceA"), fresh(env, "RaceB"), fresh(env, "RaceC")
    env.d.append(a, msg("race1"))
    (src,) = env.eml(a)
    p1 = subprocess.Popen(["mv", str(src), str(env.path(b))], stderr=subprocess.PIPE)
    p2 = subprocess.Popen(["mv", str(src), str(env.path(c))], stderr=subprocess.PIPE)
    results = sorted((p.wait(), p.stderr.read().decode()) for p in (p1, p2))
    # docs/writes.md: the second mv waits for the first, then gets ENOENT
    assert [rc for rc, _ in results] == [0, 1], results
    assert "No such file or directory" in results[1][1], results
    total = message_ids(env.d, a) + message_ids(env.d, b) + message_ids(env.d, c)
    assert total == ["race1"]  # exactly one copy, wherever it went


# -- rm -----------------------------------------------------------------------------

def test_rm_expunges_only_that_uid(env):
    a = fresh(env, "RmA")
    env.d.append(a, msg("rm1"))
    other = env.d.append(a, msg("other-deleted"))
    c = env.d.client()  # another client marks a message \Deleted but does not expunge it
    c.select(a)
    c.uid("STORE", str(other), "+FLAGS", "(\\Deleted)")
    c.logout()
    (victim,) = [p for p in env.eml(a) if p.name.endswith("#1.eml")]
    if env.profile == "no-uidplus":  # no UID EXPUNGE: refused rather than a bare EXPUNGE
        with pytest.raises(OSError) as e:
            victim.unlink()
        assert e.value.errno == errno.EPERM
        assert message_ids(env.d, a) == ["other-deleted", "rm1"]
        assert b"EXPUNGE" not in env.sent()
        return
    victim.unlink()
    assert message_ids(env.d, a) == ["other-deleted"]
    assert not victim.exists()
    assert len(env.eml(a)) == 1


# -- cp in, edits ---------------------------------------------------------------------

def test_cp_in_appends_exact_bytes_and_name_keeps_resolving(env, tmp_path):
    a = fresh(env, "CpA")
    src = tmp_path / "my mail.eml"
    src.write_bytes(msg("cp1", "copied in", "line1\r\nline2"))
    subprocess.run(["cp", str(src), str(env.path(a))], check=True)
    target = env.path(a, "my mail.eml")
    assert target.read_bytes() == src.read_bytes()  # readable at once, before and after APPEND
    eventually(lambda: message_ids(env.d, a) == ["cp1"])
    (stored,) = env.d.fetch_all(a).values()
    assert stored == src.read_bytes()
    eventually(lambda: [p.name for p in env.eml(a)] != ["my mail.eml"])
    (canonical,) = env.eml(a)
    assert canonical.name.endswith("copied in #1.eml")
    assert target.read_bytes() == stored  # the writer's name still resolves
    assert os.stat(target).st_size == len(stored)


def test_new_file_takes_flags_and_date_from_xattrs(env):
    a = fresh(env, "XattrA")
    p = env.path(a, "new.eml")
    with open(p, "wb") as f:
        f.write(msg("x1", "with flags"))
        os.setxattr(p, "user.imap.flags", b"\\Seen $Label1")
        os.setxattr(p, "user.imap.internaldate", b"01-Feb-2020 10:00:00 +0000")
    eventually(lambda: message_ids(env.d, a) == ["x1"])
    flags = next(iter(env.d.flags(a).values()))
    assert {"\\Seen", "$Label1"} <= set(flags)
    (canonical,) = eventually(lambda: [q for q in env.eml(a) if q.name != "new.eml"])
    assert canonical.name.startswith("2020-02-01_1000 ")
    assert os.stat(canonical).st_mtime == 1580551200


def test_non_message_file_is_stored_as_given(env):
    a = fresh(env, "Junk1")
    blob = bytes(range(1, 256)).replace(b"\n", b"").replace(b"\r", b"") + b"\r\n"
    env.path(a, "blob.bin").write_bytes(blob)
    eventually(lambda: len(env.d.fetch_all(a)) == 1)
    assert list(env.d.fetch_all(a).values()) == [blob]


def test_edit_appends_new_version_then_expunges_old_keeping_flags(env):
    a = fresh(env, "EditA")
    env.d.append(a, msg("ed1", "edit me", "old text"), flags="\\Flagged $Work")
    (p,) = env.eml(a)
    if env.profile == "no-uidplus":  # the old version could not be removed safely: refused up front
        with pytest.raises(OSError) as e:
            open(p, "r+b")
        assert e.value.errno == errno.EPERM
        assert message_ids(env.d, a) == ["ed1"]
        return
    with open(p, "r+b") as f:
        data = f.read()
        f.seek(0)
        f.write(data.replace(b"old text", b"new text"))
    eventually(lambda: list(env.d.fetch_all(a).values()) == [data.replace(b"old text", b"new text")])
    (uid,) = env.d.fetch_all(a)
    assert uid == 2
    assert {"\\Flagged", "$Work"} <= set(env.d.flags(a)[uid])
    eventually(lambda: [q.name for q in env.eml(a)] == [p.name.replace("#1.eml", "#2.eml")])


# -- folders ----------------------------------------------------------------------------

def test_mkdir_rmdir_and_rename(env):
    top = env.path("Projects")
    top.mkdir()
    (top / "Alpha").mkdir()
    assert "Projects/Alpha" in env.d.folders()
    c = env.d.client()
    subscribed = c.lsub('""', "Projects*")[1]
    c.logout()
    assert any(b"Projects/Alpha" in s for s in subscribed if s)
    with pytest.raises(FileExistsError):
        top.mkdir()
    env.d.append("Projects/Alpha", msg("in-alpha"))
    with pytest.raises(OSError) as e:
        (top / "Alpha").rmdir()
    assert e.value.errno == errno.ENOTEMPTY
    os.rename(top, env.path("Renamed"))
    assert "Renamed/Alpha" in env.d.folders() and "Projects/Alpha" not in env.d.folders()
    assert not top.exists()
    assert message_ids(env.d, "Renamed/Alpha") == ["in-alpha"]
    (m,) = sorted((env.path("Renamed", "Alpha")).glob("*.eml"))
    assert b"in-alpha" in m.read_bytes()
    if env.profile == "no-uidplus":
        c = env.d.client()  # rm is refused without UIDPLUS: empty it from elsewhere
        c.select("Renamed/Alpha")
        c.store("1", "+FLAGS", "(\\Deleted)")
        c.expunge()
        c.logout()
        eventually(lambda: not list((env.path("Renamed", "Alpha")).glob("*.eml")))
    else:
        m.unlink()
    (env.path("Renamed", "Alpha")).rmdir()
    env.path("Renamed").rmdir()
    assert not any(f.startswith(("Renamed", "Projects")) for f in env.d.folders())
    assert not env.path("Renamed").exists()


def test_inbox_cannot_be_removed(env):
    with pytest.raises(OSError) as e:
        env.path("INBOX").rmdir()
    assert e.value.errno in (errno.EPERM, errno.ENOTEMPTY)
    assert "INBOX" in env.d.folders()


# -- flags ----------------------------------------------------------------------------------

def test_flags_xattr(env):
    a = fresh(env, "FlagsA")
    env.d.append(a, msg("f1"))
    (p,) = env.eml(a)
    assert "user.imap.flags" in os.listxattr(p)
    os.setxattr(p, "user.imap.flags", b"\\Seen \\Flagged $Label1")
    assert set(env.d.flags(a)[1]) >= {"\\Seen", "\\Flagged", "$Label1"}
    assert set(os.getxattr(p, "user.imap.flags").decode().split()) == {"\\Seen", "\\Flagged", "$Label1"}
    os.setxattr(p, "user.imap.flags", b"")
    assert not (set(env.d.flags(a)[1]) & {"\\Seen", "\\Flagged", "$Label1"})
    with pytest.raises(OSError) as e:
        os.setxattr(p, "user.imap.uid", b"99")
    assert e.value.errno == errno.EPERM
    with pytest.raises(OSError) as e:
        os.setxattr(p, "user.imap.flags", b"bad(flag")
    assert e.value.errno == errno.EINVAL


def test_rsync_out_and_back_keeps_messages_and_flags(env, tmp_path):
    if not shutil.which("rsync"):
        pytest.fail("rsync is missing: scripts/setup installs it")
    a = fresh(env, "RsA")
    env.d.append(a, msg("rs1", "first"), flags="\\Seen")
    env.d.append(a, msg("rs2", "second"), flags="\\Flagged $Label2")
    env.d.append(a, msg("rs3", "third"))
    out = tmp_path / "backup"
    r = subprocess.run(["rsync", "-a", "--xattrs", "--exclude=*.parts", f"{env.path(a)}/", f"{out}/"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    env.path("RsB").mkdir()
    r = subprocess.run(["rsync", "-a", "--xattrs", f"{out}/", f"{env.path('RsB')}/"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    eventually(lambda: message_ids(env.d, "RsB") == ["rs1", "rs2", "rs3"])
    src = {re.search(rb"<(\S+)@", b).group(1): b for b in env.d.fetch_all(a).values()}
    dst = {re.search(rb"<(\S+)@", b).group(1): b for b in env.d.fetch_all("RsB").values()}
    assert src == dst

    def flagsets(folder):
        ids = {u: re.search(rb"<(\S+)@", b).group(1) for u, b in env.d.fetch_all(folder).items()}
        return {ids[u]: set(f) - {"\\Recent"} for u, f in env.d.flags(folder).items()}

    eventually(lambda: flagsets("RsB") == flagsets(a))


# -- read-only mounts -----------------------------------------------------------------------------

def test_ro_mount_refuses_every_write(tmp_path):
    with Dovecot() as d:
        d.append("INBOX", msg("ro1"))
        mp = tmp_path / "m"
        mp.mkdir()
        with Mount(d.url("imap"), mp, ["tls=off", "ro"], password=d.password) as m:
            (p,) = sorted(m.path("INBOX").glob("*.eml"))
            for action in (lambda: open(p, "r+b"), p.unlink, lambda: m.path("New").mkdir(),
                           lambda: m.path("INBOX", "x.eml").write_bytes(b"x"),
                           lambda: os.setxattr(p, "user.imap.flags", b"\\Seen"),
                           lambda: os.rename(p, m.path(p.name + ".x"))):
                with pytest.raises(OSError) as e:
                    action()
                assert e.value.errno == errno.EROFS
        assert message_ids(d, "INBOX") == ["ro1"]
        assert d.folders() == ["INBOX"] or "New" not in d.folders()


def test_writes_after_fsync_are_stored_too(env):
    a = fresh(env, "FsyncA")
    p = env.path(a, "draft.eml")
    first = msg("fs1", "draft", "first part")
    with open(p, "wb") as f:
        f.write(first)
        f.flush()
        os.fsync(f.fileno())  # stored now, synchronously
        assert message_ids(env.d, a) == ["fs1"]
        f.write(b"second part\r\n")
    if env.profile == "no-uidplus":  # the first version cannot be removed safely: both stay
        eventually(lambda: sorted(env.d.fetch_all(a).values()) == [first, first + b"second part\r\n"])
        return
    eventually(lambda: list(env.d.fetch_all(a).values()) == [first + b"second part\r\n"])
