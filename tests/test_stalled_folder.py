"""A folder the server stalls on must cost neither a connection per round nor the mount.

The rule itself (``Pool.run``) is pinned in-process first, against a stub server
whose folder commands time out on cue; then the whole story against Dovecot.

Dovecot blocks every SELECT (and APPEND) of a Maildir folder whose
``dovecot-uidlist.lock`` was left empty (a SIGKILL between create and write)
for its 2-minute stale-lock timeout, while other folders answer. Each command
imapfs gives up on after ``timeout=`` leaves one Dovecot process blocked on
the lock, and those count toward ``mail_max_userip_connections`` (10 by
default): tried every round, the folder soon has every login refused and the
whole mount offline. docs/reliability.md ("A folder that stalls").
"""

from __future__ import annotations

import os
import pwd
import re
import time
from typing import Any

import pytest

from imapfs.connection import Connection
from imapfs.errors import ConnectError, FolderStalled, ServerUnavailable, TimedOut
from imapfs.records import Account
from imapfs.session import STALL_MAX_FACTOR, Pool
from tests.support.dovecot import Dovecot
from tests.test_write import eventually, message_ids, msg

TIMEOUT = 2  # -o timeout=: the stalled folder's back-off starts at this and doubles up to 10 times it


# -- the pool's rule, in-process -----------------------------------------------------------------


class Server:
    """What the stub connections talk to: which folders stall, whether logins and NOOPs are answered."""

    def __init__(self) -> None:
        self.stalled: set[bytes] = set()
        self.lose_next = False  # the next folder command finds its connection dead (no time-out)
        self.away = False  # logins are refused, as when the server is gone
        self.logins = 0
        self.tried: list[bytes] = []  # the folder commands that reached the server


class _Imap:
    """The part of imaplib that Connection.noop and close use."""

    def __init__(self) -> None:
        self.untagged_responses: dict[str, Any] = {}

    def noop(self) -> tuple[str, list[Any]]:
        return "OK", [b"NOOP done"]

    def logout(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


class Stub(Connection):
    def __init__(self, server: Server, account: Account) -> None:
        super().__init__(account)
        self.server = server

    def open(self) -> None:
        if self.server.away:
            raise ConnectError("connection refused")
        self.server.logins += 1
        self.imap = _Imap()  # type: ignore[assignment]  # the stub's imaplib


def select(folder: bytes):
    """A folder command: SELECT, answered unless the folder stalls or the connection is dead."""

    def fn(c: Connection) -> str:
        server = c.server  # type: ignore[attr-defined]
        server.tried.append(folder)
        if server.lose_next:
            server.lose_next = False
            c.broken = True
            raise ServerUnavailable("SELECT: connection lost: EOF")
        if folder in server.stalled:
            c.broken = True
            raise TimedOut(f"SELECT {folder!r}: no answer within 5 s")
        c.selected = folder
        return "selected"

    return fn


async def stub_pool(server: Server) -> Pool:
    account = Account("stub.invalid", 143, "alice", lambda _k, _f: "pw", tls="off", timeout=5.0)
    pool = Pool(account, size=2, backoff_max=0.05, connection_factory=lambda a: Stub(server, a))
    await pool.start()  # one pooled connection
    return pool


@pytest.mark.trio
async def test_a_folder_that_times_out_while_the_server_answers_is_backed_off() -> None:
    """A pooled connection's time-out is tried once more on a new one (it may have died
    unnoticed); a time-out there too, with the server answering a NOOP on a third, backs the
    folder off: meanwhile its commands fail at once without reaching the server, other
    folders go on, and after the back-off one command tries it, on a new connection."""
    server = Server()
    pool = await stub_pool(server)
    server.stalled.add(b"A")
    with pytest.raises(FolderStalled) as info:
        await pool.run(select(b"A"), folder=b"A")
    assert info.value.sent and info.value.folder == b"A"
    assert server.tried == [b"A", b"A"]  # the pooled connection, then one new one: no more
    assert pool.held_back(b"A") and pool.stalls[b"A"].delay == 5.0  # timeout= of the account
    for _ in range(3):  # the rounds and a user's `ls` meanwhile: nothing reaches the server
        with pytest.raises(FolderStalled) as info:
            await pool.run(select(b"A"), folder=b"A")
        assert not info.value.sent
    with pytest.raises(FolderStalled) as info:  # an APPEND to it (run on any connection) neither
        await pool.run(select(b"A"), touches=b"A", retry=False)
    assert not info.value.sent
    assert server.tried == [b"A", b"A"]
    assert await pool.run(select(b"B"), folder=b"B") == "selected"
    # After the back-off: one try, on a new connection; still stalled, the back-off doubles.
    pool.stalls[b"A"].until = 0.0
    logins = server.logins
    with pytest.raises(FolderStalled):
        await pool.run(select(b"A"), folder=b"A")
    assert server.tried[-2:] == [b"B", b"A"]
    assert server.logins >= logins + 1
    assert pool.stalls[b"A"].delay == 10.0
    for _ in range(5):
        pool.stalls[b"A"].until = 0.0
        with pytest.raises(FolderStalled):
            await pool.run(select(b"A"), folder=b"A")
    assert pool.stalls[b"A"].delay == STALL_MAX_FACTOR * 5.0
    # The lock goes: the first try after the back-off ends the stall.
    server.stalled.clear()
    pool.stalls[b"A"].until = 0.0
    assert await pool.run(select(b"A"), folder=b"A") == "selected"
    assert not pool.stalls and not pool.held_back(b"A")
    await pool.close()


@pytest.mark.trio
@pytest.mark.parametrize("case", ["connection lost", "server gone", "no folder", "no retry, pooled"])
async def test_what_does_not_back_a_folder_off(case: str) -> None:
    """A dropped connection is retried on a new one as before (how a server restart is
    survived); a time-out while no new connection can be opened is the server's absence,
    not the folder's; a time-out of a command on no folder is retried as before; and a
    write's time-out on a pooled connection (not retried) may be that connection's death."""
    server = Server()
    pool = await stub_pool(server)
    if case == "connection lost":
        server.lose_next = True
        assert await pool.run(select(b"A"), folder=b"A") == "selected"
        assert server.tried == [b"A", b"A"]
    elif case == "server gone":
        server.stalled.add(b"A")
        server.away = True
        with pytest.raises(ServerUnavailable) as info:
            await pool.run(select(b"A"), folder=b"A")
        assert not isinstance(info.value, FolderStalled)
        assert not pool.online
    elif case == "no folder":
        server.stalled.add(b"A")
        with pytest.raises(TimedOut):
            await pool.run(select(b"A"))
        assert server.tried == [b"A", b"A"]
    else:
        server.stalled.add(b"A")
        with pytest.raises(TimedOut):
            await pool.run(select(b"A"), folder=b"A", retry=False)
        assert server.tried == [b"A"]
    assert not pool.stalls
    await pool.close()


# -- against Dovecot -------------------------------------------------------------------------------


def imap_processes(d: Dovecot) -> int:
    """Dovecot's imap processes of this server (one per logged-in connection, stuck ones included)."""
    assert d.proc is not None
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
        except OSError:
            continue
        fields = rest.split()
        if head.split("(", 1)[1] == "imap" and int(fields[2]) == d.proc.pid and fields[0] not in "ZX":
            n += 1
    return n


def stuck_connections(d: Dovecot) -> int:
    """The server's connections the client closed and its process did not (TCP CLOSE_WAIT):
    the processes blocked on the lock after a time-out."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            if int(local.rsplit(":", 1)[1], 16) == d.port and state == "08":
                n += 1
    return n


def names(p) -> list[str]:
    return sorted(n for n in os.listdir(p) if n.endswith(".eml"))


def subjects(p) -> list[str]:
    return sorted(n.split(" #")[0][16:] for n in names(p))


def test_a_stalled_folder_is_backed_off_and_the_mount_stays_online(make_dovecot, tmp_path, make_mount):
    """One stalled folder, Dovecot's default connection limit, rounds every second: the mount
    stays online (another folder's new mail shows), the stalled folder is listed from the
    cache at once and named in user.imapfs.state, the server's imap processes stay few
    however many rounds pass, and the folder comes back by itself once the lock is gone."""
    d = make_dovecot(max_connections=10)  # Dovecot's default mail_max_userip_connections
    for f in ("A", "B"):
        d.create(f)
    d.append("A", msg("a1", "before the stall"))
    d.append("B", msg("b1", "first in B"))
    mp = tmp_path / "mnt"
    mp.mkdir()
    m = make_mount(d.url(), mp, ["tls=off", f"timeout={TIMEOUT}", "poll=1", "connections=1"],
                   password=d.password)
    assert subjects(m.path("A")) == ["before the stall"]
    assert subjects(m.path("B")) == ["first in B"]
    other = d.client()  # another client, logged in before the stall (new logins may be refused)
    lock = d.maildir() / ".A" / "dovecot-uidlist.lock"
    lock.write_bytes(b"")
    mail = pwd.getpwnam("mail")
    os.chown(lock, mail.pw_uid, mail.pw_gid)
    try:
        # 15 s of rounds every second, and of `ls A` every half second (a file manager's
        # refresh). Each round's sync of A, and each `ls`, cost two time-outs (the pool tried
        # again on a new connection), each leaving a server process blocked on the lock:
        # the limit of 10 was soon reached, every login refused, the mount offline.
        most = stuck = 0
        end = time.monotonic() + 15
        while time.monotonic() < end:
            try:
                os.listdir(m.path("A"))
            except OSError:
                pass
            most = max(most, imap_processes(d))
            stuck = max(stuck, stuck_connections(d))
            time.sleep(0.5)
        # The mount is online: new mail in another folder shows.
        assert other.append("B", None, None, msg("b2", "new in B"))[0] == "OK"
        eventually(lambda: subjects(m.path("B")) == ["first in B", "new in B"], timeout=10)
        # Left blocked: two when A is first found stalled (the pool's one retry on a new
        # connection: the first may have been a pooled one that died unnoticed), then one
        # per try after 2, 4 and 8 s of back-off, whatever the number of rounds and `ls`.
        assert stuck <= 5, f"{stuck} connections left waiting on the server"
        # Besides: the pooled connection (the login that tells a stall from a server gone
        # replaces it), the push connection, the other client, a try under way.
        assert most <= 9, f"{most} imap processes on the server (its limit: 10)"
        started = time.monotonic()
        assert subjects(m.path("A")) == ["before the stall"]  # from the cache, at once
        assert time.monotonic() - started < TIMEOUT  # a try of A would take timeout= at least
        # A file written into A meanwhile goes to the journal (as offline) and shows at once.
        m.path("A", "n1.eml").write_bytes(msg("n1", "written during the stall"))
        eventually(lambda: "pending changes: 1" in os.getxattr(m.mountpoint, "user.imapfs.state").decode())
        assert m.path("A", "n1.eml").read_bytes() == msg("n1", "written during the stall")
        st = os.getxattr(m.mountpoint, "user.imapfs.state").decode()
        assert "state: online" in st
        assert re.search(r"^stalled folder: A \(no answer for \d+ s, shown as last seen; "
                         r"(next try in \d+ s|being tried again)\)", st, re.M), st
    finally:
        lock.unlink(missing_ok=True)
    assert other.append("A", None, None, msg("a2", "after the stall"))[0] == "OK"
    other.logout()
    # The first round after the back-off (at most 10 * timeout=) sends what waited and syncs A.
    eventually(lambda: message_ids(d, "A") == ["a1", "a2", "n1"], timeout=10 * TIMEOUT + 5)
    eventually(lambda: subjects(m.path("A")) == ["after the stall", "before the stall", "written during the stall"],
               timeout=10)
    eventually(lambda: "stalled folder" not in os.getxattr(m.mountpoint, "user.imapfs.state").decode(), timeout=5)
    # The change that waited for A was announced once, not at every round of the wait.
    assert len(re.findall(r"INFO imapfs\.offline: replaying 1 offline changes", m.log())) == 1, m.log()[-3000:]
