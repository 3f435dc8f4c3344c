"""Odd folder names through the mount, checked against the server's own LIST.

Issue 10 item 8: a name a user can type works as typed where the server
takes it (``mkdir 100%`` makes the folder ``100%`` and it shows as ``100%``),
and whenever mkdir, mv or rmdir answers an error the server is as it was.

Issue 10 item 6: two server folders that decode to one name (``AT&T`` sent
raw and ``AT&-T``; ``Caf&AOk-`` and UTF-8 ``Café``) both stay reachable,
under distinct names that do not depend on LIST order, and writes reach the
right one.  Dovecot refuses such names (``Mailbox name is not valid
mUTF-7``), so those tests put a relay between imapfs and Dovecot that
renames two of Dovecot's folders to the raw names both ways (same length,
so literals keep their sizes): to imapfs, the server *has* them.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import threading
from pathlib import Path

import pytest

from tests.support.dovecot import Dovecot
from tests.support.mount import Mount
from tests.test_write import eventually


def wire_folders(d: Dovecot) -> set[bytes]:
    """The server's folder names exactly as LIST sends them (our own parser: the oracle)."""
    c = d.client()
    try:
        typ, data = c.list('""', "*")
    finally:
        c.logout()
    assert typ == "OK"
    out = set()
    for line in data:
        if isinstance(line, tuple):  # name sent as a literal
            out.add(line[1])
            continue
        m = re.match(rb'\([^)]*\) (?:"(?:[^"\\]|\\.)*"|NIL) (.*)$', line)
        name = m.group(1)
        if name.startswith(b'"'):
            name = re.sub(rb"\\(.)", rb"\1", name[1:-1])
        out.add(name)
    return out


def msg(mid: str) -> bytes:
    return f"Message-ID: <{mid}@test>\r\nSubject: {mid}\r\nFrom: a@example.org\r\n\r\nbody of {mid}\r\n".encode()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with Dovecot() as d:
        mp = tmp_path_factory.mktemp("names") / "mnt"
        mp.mkdir()
        with Mount(d.url("imap"), mp, ["tls=off", "poll=1"], password=d.password,
                   allowed_errors=[r"could not delete .* again"]) as m:
            yield d, m


OK = None  # expected: success; else the errno

# (typed name, errno or OK, the server name it must create)
MKDIR = [
    ("100%", OK, b"100%"),
    ("%", OK, b"%"),
    ("*", OK, b"*"),
    ("a*b%c", OK, b"a*b%c"),
    (" lead", OK, b" lead"),
    ("trail ", OK, b"trail "),
    ('q"uote', OK, b'q"uote'),
    ("back\\slash", OK, b"back\\slash"),
    ("AT&T", OK, b"AT&-T"),
    ("Café", OK, b"Caf&AOk-"),
    ("Cafe\u0301 nfd", OK, b"Cafe&AwE- nfd"),
    ("日本語", OK, b"&ZeVnLIqe-"),
    ("%2525", OK, b"%25"),  # the name a folder literally called "%25" shows under
    ("x" * 200, OK, b"x" * 200),
    ("%25", errno.EINVAL, None),  # the escape of "%": would show as "%"
    ("100%25", errno.EINVAL, None),
    ("%%", errno.EINVAL, None),  # an empty level
    ("a%2Fb", errno.EINVAL, None),  # "/" is the delimiter
    ("x #raw", errno.EINVAL, None),  # reserved for non-canonical server names
    ("x #12.eml", errno.EINVAL, None),  # looks like a message file
    ("v1.2", errno.EINVAL, None),  # Dovecot (Maildir++) refuses "." with "/" as delimiter
    ("~tilde", errno.EINVAL, None),  # Dovecot refuses a leading "~"
    ("tab\tx", errno.EINVAL, None),  # Dovecot refuses control characters
    ("x" * 255, errno.EINVAL, None),  # Dovecot: too long for its Maildir
    ("inbox", errno.EEXIST, None),
    ("Inbox", errno.EEXIST, None),
    ("INBOX", errno.EEXIST, None),
]


def _errno(fn) -> int | None:
    try:
        fn()
    except OSError as e:
        return e.errno
    return None


@pytest.mark.parametrize(("name", "err", "wire"), MKDIR, ids=[repr(c[0])[:30] for c in MKDIR])
def test_mkdir_then_rmdir(env, name: str, err: int | None, wire: bytes | None):
    d, m = env
    before = wire_folders(d)
    assert _errno(lambda: os.mkdir(m.path(name))) == err
    after = wire_folders(d)
    if err is not None:
        assert after == before, "a refused mkdir changed the server"
        assert name not in os.listdir(m.mountpoint) or name == "INBOX"
        return
    assert after - before == {wire}
    assert name in os.listdir(m.mountpoint)
    assert os.listdir(m.path(name)) == []
    os.rmdir(m.path(name))
    assert wire_folders(d) == before
    assert name not in os.listdir(m.mountpoint)


def test_mkdir_of_a_name_that_is_not_utf8_is_refused(env):
    d, m = env
    before = wire_folders(d)
    assert _errno(lambda: os.mkdir(os.fsencode(m.path()) + b"/bad\xff")) == errno.EINVAL
    assert wire_folders(d) == before


# Dovecot answers RENAME to a too long name with NO [SERVERBUG]: EIO, the server unchanged.
RENAME = [(n, errno.EIO if n == "x" * 255 else e, w) for n, e, w in MKDIR]


@pytest.mark.parametrize(("name", "err", "wire"), RENAME, ids=[repr(c[0])[:30] for c in RENAME])
def test_rename_there_and_back(env, name: str, err: int | None, wire: bytes | None):
    d, m = env
    src = "Src-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    d.append(src, msg(src))
    eventually(lambda: any(n.endswith(".eml") for n in os.listdir(m.path(src))) if m.path(src).is_dir() else False)
    before = wire_folders(d)
    got = _errno(lambda: os.rename(m.path(src), m.path(name)))
    if name == "INBOX":
        assert got in (errno.EEXIST, errno.ENOTEMPTY)  # the kernel may answer for a non-empty target
    else:
        assert got == err
    after = wire_folders(d)
    if err is not None:
        assert after == before, "a refused rename changed the server"
        assert [n for n in os.listdir(m.path(src)) if n.endswith(".eml")]
        return
    assert after == (before - {src.encode()}) | {wire}
    (eml,) = [n for n in os.listdir(m.path(name)) if n.endswith(".eml")]
    assert m.path(name, eml).read_bytes() == msg(src)
    assert not m.path(src).exists()
    os.rename(m.path(name), m.path(src))
    assert wire_folders(d) == before


def test_refused_rmdir_leaves_the_server_alone(env):
    d, m = env
    d.append("Full", msg("full"))
    d.create("100% sure")
    eventually(lambda: m.path("Full").is_dir() and m.path("100% sure").is_dir())
    before = wire_folders(d)
    assert _errno(lambda: os.rmdir(m.path("Full"))) == errno.ENOTEMPTY
    assert _errno(lambda: os.rmdir(m.path("INBOX"))) in (errno.EPERM, errno.ENOTEMPTY)
    assert _errno(lambda: os.rmdir(m.path("100%25 sure"))) == errno.ENOENT  # not the folder's name
    assert wire_folders(d) == before
    os.rmdir(m.path("100% sure"))
    assert wire_folders(d) == before - {b"100% sure"}


# --------------------------------------------------------------------------
# Two server names, one decoded text (item 6)
# --------------------------------------------------------------------------

# Dovecot's stand-in folder -> the raw name imapfs sees (same length each).
ALIASES = {b"ATqT": b"AT&T", b"Cafzz": "Café".encode()}
# One message in each (their text must not hold a stand-in name: the relay would rewrite it).
TWIN_MIDS = {"AT&T": "m-amp", "ATqT": "m-raw-amp", "Café": "m-cafe", "Cafzz": "m-raw-cafe"}


class RenamingRelay:
    """A TCP relay replacing bytes in what the client sends (*to_server*) and reads (*to_client*).

    Default: Dovecot's folders ``ATqT``/``Cafzz`` show as ``AT&T``/UTF-8
    ``Café``.  Line-buffered both ways, so a name split across reads is still
    replaced; same-length replacement keeps literal sizes right.
    """

    def __init__(self, host: str, port: int, to_server: dict[bytes, bytes] | None = None,
                 to_client: dict[bytes, bytes] | None = None) -> None:
        self.to_client = ALIASES if to_client is None else to_client
        self.to_server = {raw: alias for alias, raw in ALIASES.items()} if to_server is None else to_server
        self.upstream = (host, port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            u = socket.create_connection(self.upstream)
            self.conns += [c, u]
            threading.Thread(target=self._pump, args=(c, u, self.to_server), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, self.to_client), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, table: dict[bytes, bytes]) -> None:
        buf = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                buf += data
                cut = buf.rfind(b"\n") + 1
                out, buf = buf[:cut], buf[cut:]
                for a, b in table.items():
                    out = out.replace(a, b)
                if out:
                    dst.sendall(out)
            if buf:
                dst.sendall(buf)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        for s in self.conns + [self.sock]:
            try:
                s.close()
            except OSError:
                pass


@pytest.fixture
def twins(make_dovecot):
    d = make_dovecot()
    for folder, mid in TWIN_MIDS.items():  # Dovecot's own names (mUTF-7-encoded by the helper)
        d.append(folder, msg(mid))
    relay = RenamingRelay(d.host, d.port)
    try:
        yield d, relay
    finally:
        relay.close()


def _only_message(folder: Path) -> bytes:
    (eml,) = [n for n in os.listdir(folder) if n.endswith(".eml")]
    return (folder / eml).read_bytes()


def test_colliding_server_names_each_get_their_own_directory(twins, tmp_path):
    d, relay = twins
    url = f"imap://{d.user}@127.0.0.1:{relay.port}/"
    names = ["AT&T", "AT&T #raw", "Café", "Café #raw", "INBOX"]
    inodes = {}
    mp = tmp_path / "mnt"
    mp.mkdir()
    with Mount(url, mp, ["tls=off", "poll=1"], password=d.password):
        assert sorted(os.listdir(mp)) == sorted(names)
        assert _only_message(mp / "AT&T") == msg("m-amp")
        assert _only_message(mp / "AT&T #raw") == msg("m-raw-amp")
        assert _only_message(mp / "Café") == msg("m-cafe")
        assert _only_message(mp / "Café #raw") == msg("m-raw-cafe")
        inodes = {n: os.stat(mp / n).st_ino for n in names}
        # Writes go to the folder shown, not to its twin.
        (mp / "AT&T #raw" / "new.eml").write_bytes(msg("written-raw"))
        eventually(lambda: len(d.fetch_all("ATqT")) == 2)
        assert sorted(d.fetch_all("ATqT").values()) == sorted([msg("m-raw-amp"), msg("written-raw")])
        assert list(d.fetch_all("AT&T").values()) == [msg("m-amp")]
        (eml,) = [n for n in os.listdir(mp / "Café") if n.endswith(".eml")]
        os.rename(mp / "Café" / eml, mp / "Café #raw" / eml)
        assert d.fetch_all("Café") == {}
        assert sorted(d.fetch_all("Cafzz").values()) == sorted([msg("m-cafe"), msg("m-raw-cafe")])
        # A sub-folder of the raw one is made under the server's own name.
        os.mkdir(mp / "AT&T #raw" / "Sub")
        assert "ATqT/Sub" in d.folders()
        assert os.listdir(mp / "AT&T #raw" / "Sub") == []
        os.rmdir(mp / "AT&T #raw" / "Sub")
        assert "ATqT/Sub" not in d.folders()
        # A name shaped like the raw one cannot be made by hand.
        assert _errno(lambda: os.mkdir(mp / "Other #raw")) == errno.EINVAL
    # Stable across remounts: same names, same inodes.
    with Mount(url, mp, ["tls=off", "poll=1"], password=d.password):
        assert sorted(os.listdir(mp)) == sorted(names)
        assert {n: os.stat(mp / n).st_ino for n in names} == inodes
        assert len([n for n in os.listdir(mp / "AT&T #raw") if n.endswith(".eml")]) == 2


def test_a_name_the_server_keeps_differently_is_taken_back(make_dovecot, tmp_path):
    """CREATE/RENAME answered OK, but the server lists another name: undone, and the user gets EINVAL.

    Dovecot keeps every name it accepts as sent, so the relay plays a server
    that changes ``Norm`` into ``NORM`` (on the way in only, as a
    case-folding server would).
    """
    d = make_dovecot()
    d.append("Src", msg("src"))
    relay = RenamingRelay(d.host, d.port, to_server={b'"Norm"': b'"NORM"'}, to_client={})
    mp = tmp_path / "mnt"
    mp.mkdir()
    try:
        with Mount(f"imap://{d.user}@127.0.0.1:{relay.port}/", mp, ["tls=off"], password=d.password,
                   allowed_errors=[]) as m:
            before = wire_folders(d)
            assert _errno(lambda: os.mkdir(mp / "Norm")) == errno.EINVAL
            assert wire_folders(d) == before
            assert _errno(lambda: os.rename(mp / "Src", mp / "Norm")) == errno.EINVAL
            assert wire_folders(d) == before
            assert sorted(os.listdir(mp)) == ["INBOX", "Src"]
            assert _only_message(mp / "Src") == msg("src")
            assert "deleting it again" in m.log() and "renaming it back" in m.log()
    finally:
        relay.close()
