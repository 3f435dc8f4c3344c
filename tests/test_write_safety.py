"""No mail is ever lost: connection cuts at every step of a move, an edit and an APPEND,
and servers that lack MOVE or UIDPLUS.

After every cut, each message is still on the server (by Message-ID), at
worst twice, and the mount keeps working.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess

import pytest

from tests.support import dovecot as dv
from tests.support.dovecot import Dovecot
from tests.support.mount import Mount
from tests.support.proxy import Proxy
from tests.test_write import eventually, message_ids, msg

CUT_ERRORS = [r"unavailable", r"lost", r"could not store", r"refusing", r"failed"]


def all_ids(d: Dovecot, *folders: str) -> list[str]:
    return sorted(i for f in folders for i in message_ids(d, f))


@pytest.fixture
def rig(tmp_path):
    """A fresh server without MOVE (so a move is COPY, STORE, EXPUNGE), a proxy, a mount."""
    def make(capabilities=dv.NO_MOVE, options=()):
        d = Dovecot(capabilities=capabilities).start()
        proxy = Proxy(d.host, d.port).start()
        mp = tmp_path / f"m{len(made)}"
        mp.mkdir()
        m = Mount(f"imap://{d.user}@127.0.0.1:{proxy.port}/", mp, ["tls=off", "poll=1", *options],
                  password=d.password, allowed_errors=CUT_ERRORS).start()
        made.append((d, proxy, m))
        return d, proxy, m

    made: list = []
    yield make
    for d, proxy, m in reversed(made):
        m.unmount()
        proxy.stop()
        d.cleanup()


def recovers(m: Mount, folder: str) -> None:
    """The mount still lists and reads after the cut (a replay may still be settling)."""
    def readable():
        try:
            files = sorted(m.path(folder).glob("*.eml"))
            return bool(files) and bool(files[0].read_bytes())
        except OSError:
            return False

    eventually(readable, timeout=15)


CUTS = [
    (b"UID STORE", False),    # after COPY, before STORE \\Deleted
    (b"UID EXPUNGE", False),  # after STORE, before EXPUNGE
    (b"UID EXPUNGE", True),   # the server expunges, the client never hears
]


@pytest.mark.parametrize("cut_at,forward", CUTS)
@pytest.mark.parametrize("journal", [True, False], ids=["journal", "no-cache"])
def test_move_cut_never_loses_mail(rig, cut_at, forward, journal):
    """With the local cache the cut move is journaled and completed on replay; without
    it the move fails with EIO. Either way nothing is lost; at worst a copy is doubled."""
    d, proxy, m = rig(options=() if journal else ("cache_dir=none",))
    d.create("B")
    eventually(lambda: m.path("B").is_dir())
    d.append("INBOX", msg("keep-me", "precious"))
    d.append("INBOX", msg("bystander"))
    (src,) = [p for p in sorted(m.path("INBOX").glob("*.eml")) if "precious" in p.name]
    cut = proxy.cut_when(cut_at, forward=forward)
    if journal:
        os.rename(src, m.path("B", src.name))  # recorded; replayed once the server answers
        eventually(lambda: "keep-me" not in message_ids(d, "INBOX"), timeout=20)
    else:
        with pytest.raises(OSError) as e:
            os.rename(src, m.path("B", src.name))
        assert e.value.errno == errno.EIO
    assert cut.fired == 1  # the move really was cut there (else this proves nothing)
    ids = all_ids(d, "INBOX", "B")
    assert "keep-me" in message_ids(d, "B")  # the copy was confirmed before anything else
    assert ids.count("bystander") == 1 and 1 <= ids.count("keep-me") <= 2
    recovers(m, "B")
    recovers(m, "INBOX")


def test_move_cut_with_uid_move(rig):
    d, proxy, m = rig(capabilities=dv.FULL, options=("cache_dir=none",))
    d.create("B")
    eventually(lambda: m.path("B").is_dir())
    d.append("INBOX", msg("moved-blind"))
    (src,) = sorted(m.path("INBOX").glob("*.eml"))
    cut = proxy.cut_when(b"UID MOVE", forward=True)
    with pytest.raises(OSError):
        os.rename(src, m.path("B", src.name))
    assert cut.fired == 1
    assert all_ids(d, "INBOX", "B") == ["moved-blind"]
    recovers(m, "B")


def test_append_cut_before_server_sees_it_is_retried(rig, tmp_path):
    d, proxy, m = rig()
    cut = proxy.cut_when(b"APPEND", forward=False)
    m.path("INBOX", "new.eml").write_bytes(msg("appended"))
    assert eventually(lambda: message_ids(d, "INBOX"), timeout=20) == ["appended"]
    assert cut.fired == 1  # the first APPEND was cut, so the one stored is the retry


def test_append_cut_after_server_stored_it_leaves_at_worst_a_duplicate(rig):
    d, proxy, m = rig()
    cut = proxy.cut_when_server(b"[APPENDUID", forward=False)
    m.path("INBOX", "new.eml").write_bytes(msg("maybe-twice"))
    ids = eventually(lambda: message_ids(d, "INBOX"), timeout=20)
    eventually(lambda: cut.fired == 1)  # the server stored it and the answer was cut
    assert set(ids) == {"maybe-twice"} and 1 <= len(ids) <= 2
    recovers(m, "INBOX")


def test_edit_cut_after_new_version_keeps_both(rig):
    d, proxy, m = rig(capabilities=dv.FULL)
    d.append("INBOX", msg("ed", "v1", "version one"))
    (p,) = sorted(m.path("INBOX").glob("*.eml"))
    cut = proxy.cut_when(b"UID STORE", forward=False)  # the old version's \Deleted never arrives
    with open(p, "r+b") as f:
        f.write(f.read().replace(b"version one", b"version two"))
    bodies = eventually(lambda: [b for b in d.fetch_all("INBOX").values() if b"version two" in b], timeout=20)
    assert bodies
    eventually(lambda: cut.fired == 1)  # the STORE comes after the new version's APPEND
    assert any(b"version one" in b for b in d.fetch_all("INBOX").values())  # old one not lost either
    recovers(m, "INBOX")


# -- servers without MOVE and UIDPLUS ----------------------------------------------

def test_without_uidplus_rm_and_move_fallback_are_refused(rig):
    d, proxy, m = rig(capabilities=dv.capabilities_without("MOVE", "UIDPLUS"))
    d.create("B")
    eventually(lambda: m.path("B").is_dir())
    d.append("INBOX", msg("stays"))
    c = d.client()
    c.select("INBOX")
    d_uid = d.append("INBOX", msg("others-deleted"))
    c.uid("STORE", str(d_uid), "+FLAGS", "(\\Deleted)")
    c.logout()
    (p,) = [q for q in sorted(m.path("INBOX").glob("*.eml")) if q.name.endswith("#1.eml")]
    proxy.clear()
    with pytest.raises(OSError) as e:
        p.unlink()
    assert e.value.errno == errno.EPERM
    with pytest.raises(OSError) as e:
        os.rename(p, m.path("B", p.name))
    assert e.value.errno == errno.EPERM
    sent = proxy.client_bytes()
    assert b"EXPUNGE" not in sent and b"MOVE" not in sent and b"COPY" not in sent
    assert all_ids(d, "INBOX") == ["others-deleted", "stays"]
    assert "refusing" in m.log()


def test_move_without_uidplus_uses_move_and_shows_result(rig):
    d, proxy, m = rig(capabilities=dv.NO_UIDPLUS)
    d.create("B")
    eventually(lambda: m.path("B").is_dir())
    d.append("INBOX", msg("mv-no-uidplus", "travel"))
    (p,) = sorted(m.path("INBOX").glob("*.eml"))
    subprocess.run(["mv", str(p), str(m.path("B"))], check=True)
    assert message_ids(d, "B") == ["mv-no-uidplus"] and message_ids(d, "INBOX") == []
    (moved,) = eventually(lambda: sorted(m.path("B").glob("*.eml")))
    assert b"mv-no-uidplus" in moved.read_bytes()
    assert b"UID MOVE" in proxy.client_bytes()


def test_rm_with_trash_auto_moves_to_trash(rig):
    d, proxy, m = rig(capabilities=dv.FULL, options=["trash=auto"])
    d.create("Trash")
    eventually(lambda: m.path("Trash").is_dir())
    d.append("INBOX", msg("to-trash"))
    (p,) = sorted(m.path("INBOX").glob("*.eml"))
    p.unlink()
    assert message_ids(d, "INBOX") == [] and message_ids(d, "Trash") == ["to-trash"]
    (t,) = sorted(m.path("Trash").glob("*.eml"))
    t.unlink()  # in the trash itself, rm deletes for good
    assert message_ids(d, "Trash") == []
    assert re.search(rb"UID EXPUNGE \d+", proxy.client_bytes())


def test_refused_append_is_saved_not_retried_forever(tmp_path):
    """Dovecot refuses zero-byte messages: after a few NOs the bytes go to the unsent folder."""
    with Dovecot() as d:
        mp = tmp_path / "m"
        mp.mkdir()
        cache = tmp_path / "cache"
        with Mount(d.url("imap"), mp, ["tls=off"], password=d.password,
                   env_extra={"XDG_CACHE_HOME": str(cache)},
                   allowed_errors=[r"could not store", r"refused to store"]) as m:
            m.path("INBOX", "empty.eml").write_bytes(b"")
            eventually(lambda: "saved in" in m.log(), timeout=30)
            eventually(lambda: not m.path("INBOX", "empty.eml").exists())
        saved = list((cache / "imapfs" / "unsent").glob("unsent-*.eml"))
        assert len(saved) == 1 and saved[0].read_bytes() == b""
        assert message_ids(d, "INBOX") == []


@pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "close"])
def test_append_cut_then_replayed_shows_the_server_names_only(rig, fsync):
    """After the journaled APPEND is replayed, the listing shows the stored message
    under its real name, not the writer's name as well (found by the soak test)."""
    d, proxy, m = rig(capabilities=dv.FULL)
    cut = proxy.cut_when(b"APPEND", forward=False)
    with open(m.path("INBOX", "new.eml"), "wb") as f:
        f.write(msg("replayed"))
        f.flush()
        if fsync:
            try:
                os.fsync(f.fileno())
            except OSError:
                pass  # without a cache the cut APPEND would be EIO; with one it is journaled
    eventually(lambda: cut.fired == 1, timeout=20)
    eventually(lambda: message_ids(d, "INBOX") == ["replayed"], timeout=20)

    def listing_is_the_servers() -> bool:
        names = sorted(p.name for p in m.path("INBOX").glob("*.eml"))
        return len(names) == 1 and names[0].endswith(f"#{next(iter(d.fetch_all('INBOX')))}.eml")

    eventually(listing_is_the_servers, timeout=20)


@pytest.mark.parametrize("edit", [False, True], ids=["new-file", "edit"])
def test_a_file_whose_folder_another_client_deletes_is_stored_in_the_recovered_folder(tmp_path, edit):
    """Issue 10 (soak, seed 14): a file being written (or an edit) in a folder another
    client deleted meanwhile was refused ([TRYCREATE]) three times and set aside in
    unsent/, off the server. Online it now goes where the replay puts such mail: the
    folder imapfs-recovered, on the server."""
    with Dovecot() as d:
        d.create("Doomed")
        if edit:
            d.append("Doomed", msg("old", "the old version"))
        mp = tmp_path / "m"
        mp.mkdir()
        cache = tmp_path / "cache"
        with Mount(d.url("imap"), mp, ["tls=off", "poll=60"], password=d.password,
                   env_extra={"XDG_CACHE_HOME": str(cache)}) as m:
            if edit:
                (target,) = m.path("Doomed").glob("*.eml")
            else:
                target = m.path("Doomed", "new.eml")
            with open(target, "wb") as fh:
                fh.write(msg("kept", "written while the folder went away"))
                c = d.client()
                assert c.delete("Doomed")[0] == "OK"  # another client, while the file is open
                c.logout()
            def recovered() -> list[str]:
                try:
                    return message_ids(d, "imapfs-recovered")
                except Exception:  # noqa: BLE001 - not created yet
                    return []

            eventually(lambda: recovered() == ["kept"], timeout=20)
            assert "imapfs-recovered" in os.listdir(m.mountpoint) or eventually(
                lambda: "imapfs-recovered" in os.listdir(m.mountpoint), timeout=10)
            assert "is gone from the server: stored in imapfs-recovered instead" in m.log()
        assert not list((cache / "imapfs" / "unsent").glob("*"))
