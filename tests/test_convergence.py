"""Convergence (issue 10 items 1 and 9): the mount repairs by comparing UID sets.

Counters (UIDNEXT, MESSAGES, HIGHESTMODSEQ) can agree with the server while
the mount's message list does not: a push connection died mid-burst, an
APPENDUID could not be listed, or the disk cache kept a state that missed an
event. These tests make such a divergence directly (in the disk cache,
where it survives a remount) and check that the mount shows exactly what the
server holds. The randomized differential test (tests/test_soak.py) is the
broader arbiter; these pin the mechanisms.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from pathlib import Path

import pytest

from tests.support.dovecot import PROFILES, Dovecot
from tests.support.mount import Mount
from tests.test_write import eventually, msg

UID_RE = re.compile(r"#(\d+)\.eml$")


def mount_uids(m: Mount, folder: str) -> list[int]:
    out = []
    for name in os.listdir(m.path(folder)):
        hit = UID_RE.search(name)
        if hit:
            out.append(int(hit.group(1)))
    return sorted(out)


def server_uids(d: Dovecot, folder: str) -> list[int]:
    return sorted(d.fetch_all(folder))


def cache_db(cache_home: Path) -> Path:
    found = list(cache_home.rglob("cache.db"))
    assert len(found) == 1, found
    return found[0]


def tamper(db: Path, folder: str, drop: list[int], phantom: list[int],
           flags: dict[int, str] | None = None) -> None:
    """Make the stored state miss messages the server has and hold ones it has not.

    The counters (UIDNEXT, HIGHESTMODSEQ) are left as the server reported them,
    so a client that trusts counters sees nothing to do.
    """
    con = sqlite3.connect(db)
    try:
        (fid,) = con.execute("SELECT id FROM folders WHERE name=?", (folder.encode(),)).fetchone()
        row = con.execute("SELECT size, internaldate, flags, subject FROM messages WHERE folder=? LIMIT 1",
                          (fid,)).fetchone()
        for uid in drop:
            assert con.execute("DELETE FROM messages WHERE folder=? AND uid=?", (fid, uid)).rowcount == 1
        for uid in phantom:
            con.execute("INSERT INTO messages(folder, uid, size, internaldate, flags, subject) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (fid, uid, *row))
        for uid, fl in (flags or {}).items():  # flags the server does not have, under its mod-sequence
            assert con.execute("UPDATE messages SET flags=? WHERE folder=? AND uid=?", (fl, fid, uid)).rowcount == 1
        con.commit()
    finally:
        con.close()


@pytest.mark.parametrize("profile", ["FULL", "IDLE_ONLY", "MINIMAL"])
def test_remount_repairs_a_cache_that_missed_events(tmp_path, make_dovecot, profile):
    """A stored state missing a message and holding an expunged one is corrected at once."""
    d = make_dovecot(capabilities=PROFILES[profile])
    d.create("Conv")
    for i in range(6):
        d.append("Conv", msg(f"conv{i}", f"conv {i}"))
    c = d.client()
    c.select("Conv")
    c.uid("STORE", "3", "+FLAGS", r"(\Deleted)")
    c.uid("EXPUNGE", "3")
    c.logout()
    assert server_uids(d, "Conv") == [1, 2, 4, 5, 6]

    cache_home = tmp_path / "xdg"
    opts_m = ["tls=off", "poll=60"]
    env = {"XDG_CACHE_HOME": str(cache_home)}
    m = Mount(d.url(), tmp_path / "m1", opts_m, password=d.password, env_extra=env)
    (tmp_path / "m1").mkdir()
    with m:
        assert mount_uids(m, "Conv") == [1, 2, 4, 5, 6]
        time.sleep(0.5)  # the write-behind task persists the folder state
    db = cache_db(cache_home)
    tamper(db, "Conv", drop=[5], phantom=[3], flags={2: "\\Flagged"})

    (tmp_path / "m2").mkdir()
    m2 = Mount(d.url(), tmp_path / "m2", opts_m, password=d.password, env_extra=env)
    with m2:
        assert eventually(lambda: mount_uids(m2, "Conv") == [1, 2, 4, 5, 6], timeout=15), \
            f"mount shows {mount_uids(m2, 'Conv')}, server has {server_uids(d, 'Conv')}"
        five = next(p for p in m2.path("Conv").iterdir() if p.name.endswith("#5.eml"))
        assert five.read_bytes() == d.fetch_all("Conv")[5]
        # flags are compared too, not taken on the mod-sequence's word
        two = next(p for p in m2.path("Conv").iterdir() if p.name.endswith("#2.eml"))
        assert os.getxattr(two, "user.imap.flags") == b""


def test_state_turns_offline_when_the_push_connection_ends(tmp_path, make_dovecot):
    """Item 9: the push connection's EOF is news enough; no wait for a poll.

    Before, the state said "online" until the next STATUS poll of a folder in
    use (every 2 s) or a request that needed the server, while reads were
    already served from the cache. The bound below (1 s, several times the
    ~0.1 s this takes) is generous for a loaded CI machine yet below that 2 s
    poll period; two rounds make a lucky pass of the old behaviour unlikely.
    """
    d = make_dovecot()
    d.create("Away")
    d.append("Away", msg("away1", "away"))
    (tmp_path / "m").mkdir()
    m = Mount(d.url(), tmp_path / "m", ["tls=off", "poll=120", "backoff_max=1"], password=d.password,
              env_extra={"XDG_CACHE_HOME": str(tmp_path / "xdg")},
              allowed_errors=[r"unavailable", r"offline"])
    with m:
        f = next(m.path("Away").glob("*.eml"))
        data = f.read_bytes()

        def state() -> str:
            return os.getxattr(m.mountpoint, "user.imapfs.state").decode()

        for round_ in (1, 2):
            eventually(lambda: m.log().count("watching every folder with NOTIFY") >= round_,  # noqa: B023 - polled now
                       timeout=20)
            assert state().startswith("state: online")
            d.stop()
            stopped = time.monotonic()
            try:
                eventually(lambda: state().startswith("state: offline"), timeout=10, interval=0.02)
                took = time.monotonic() - stopped
                assert took < 1.0, f"state said online for {took:.2f} s after the server went away"
                assert f.read_bytes() == data  # served from the cache meanwhile
            finally:
                d.start()
            eventually(lambda: (os.listdir(m.path("Away")), state().startswith("state: online"))[1], timeout=20)
