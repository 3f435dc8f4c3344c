"""Reading a real Dovecot through a real mount: bytes, sizes, names, folders.

Every assertion compares with what the server holds, fetched over a separate
IMAP connection.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess

import pytest

from tests.support import dovecot as dv
from tests.support.corpus import corpus_messages
from tests.support.dovecot import Dovecot
from tests.support.mount import mount_dovecot
from tests.support.proxy import Proxy

FOLDERS = ["Archive/2026/Q1", "Entwürfe", "Tom & Jerry", "日本語/子", "100% done", "Parent/Child"]
DATE = datetime.datetime(2025, 3, 14, 23, 59, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=-5)))


@pytest.fixture(scope="module")
def server():
    with Dovecot() as d:
        corpus = corpus_messages()
        for i, (_name, data) in enumerate(corpus):
            d.append("Corpus", data, date=DATE + datetime.timedelta(minutes=i))
        for f in FOLDERS:
            d.create(f)
        d.append("Entwürfe", b"Subject: =?ISO-8859-1?Q?Gr=FC=DFe?=\r\n\r\nHallo\r\n")
        d.append("Tom & Jerry", b"Subject: cat/mouse\r\n\r\nchase\r\n")
        yield d


@pytest.fixture(scope="module")
def mnt(server, tmp_path_factory):
    with mount_dovecot(server, tmp_path_factory.mktemp("mnt")) as m:
        yield m


def _files(path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(".eml"))


def test_every_corpus_message_is_byte_exact(server, mnt):
    on_server = server.fetch_all("Corpus")
    names = _files(mnt.path("Corpus"))
    assert len(names) == len(on_server) == len(corpus_messages())
    for name in names:
        p = mnt.path("Corpus", name)
        uid = int(os.getxattr(p, "user.imap.uid"))
        data = p.read_bytes()
        assert data == on_server[uid], name
        assert os.stat(p).st_size == len(on_server[uid]), name
        assert b"\r\n" in data  # CRLF kept as the server stores it


def test_times_are_internaldate_and_names_sort_by_date(server, mnt):
    names = _files(mnt.path("Corpus"))
    by_uid = {int(os.getxattr(mnt.path("Corpus", n), "user.imap.uid")): n for n in names}
    for i, uid in enumerate(sorted(by_uid)):
        st = os.stat(mnt.path("Corpus", by_uid[uid]))
        want = (DATE + datetime.timedelta(minutes=i)).timestamp()
        assert st.st_mtime == want
        assert st.st_ctime == want
    # appended one minute apart in UID order: sorting names == sorting UIDs
    assert [by_uid[u] for u in sorted(by_uid)] == sorted(names)
    assert names[0].startswith("2025-03-15_0459 ")  # 23:59 -05:00 is 04:59 UTC


def test_names_are_decoded_sanitised_and_resolvable(server, mnt):
    (name,) = _files(mnt.path("Entwürfe"))
    c = server.client()  # the name starts with the server's INTERNALDATE in UTC (not "today")
    c.select(dv.quote(dv.mutf7_encode("Entwürfe")))
    (arrived,) = re.findall(rb'INTERNALDATE "([^"]+)"', c.fetch("1", "(INTERNALDATE)")[1][0])
    c.logout()
    when = datetime.datetime.strptime(arrived.decode().strip(), "%d-%b-%Y %H:%M:%S %z")
    assert name.startswith(when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d_%H%M "))
    assert " Grüße #1.eml" in name
    (cat,) = _files(mnt.path("Tom & Jerry"))
    assert "/" not in cat and cat.endswith(" #1.eml")
    # lookup without a listing: a fresh path resolves straight to the file
    assert (mnt.path("Tom & Jerry") / cat).read_bytes() == b"Subject: cat/mouse\r\n\r\nchase\r\n"
    # a name with the right UID but the wrong text is not an alias
    with pytest.raises(FileNotFoundError):
        (mnt.path("Tom & Jerry") / "2000-01-01_0000 other #1.eml").stat()
    with pytest.raises(FileNotFoundError):
        (mnt.path("Tom & Jerry") / "nothing #999.eml").stat()


def test_folder_tree(server, mnt):
    c = server.client()
    try:
        listed = c.list('""', "Parent")[1]
    finally:
        c.logout()
    assert b"\\Noselect" in listed[0]  # the server holds no folder "Parent" itself
    root = sorted(os.listdir(mnt.mountpoint))
    for top in ["Archive", "Corpus", "Entwürfe", "INBOX", "Tom & Jerry", "日本語", "100% done", "Parent"]:
        assert top in root
    assert os.listdir(mnt.path("Archive", "2026")) == ["Q1"]
    assert os.listdir(mnt.path("日本語")) == ["子"]
    assert os.listdir(mnt.path("Parent")) == ["Child"]
    assert os.path.isdir(mnt.path("Archive", "2026", "Q1"))
    assert os.listdir(mnt.path("Archive", "2026", "Q1")) == []


def test_reading_never_sets_seen(server, mnt):
    for n in _files(mnt.path("Corpus")):
        mnt.path("Corpus", n).read_bytes()
    flags = server.flags("Corpus")
    assert flags and not any("\\Seen" in f for f in flags.values())


def test_grep_and_cp_r(mnt, tmp_path):
    out = subprocess.run(["grep", "-rl", "chase", str(mnt.path("Tom & Jerry"))], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    hits = [os.path.relpath(h, mnt.path("Tom & Jerry")) for h in out.stdout.splitlines()]
    assert len(hits) == 2 and hits[0].endswith(" #1.eml") and hits[1].startswith(".") \
        and hits[1].endswith(" #1.parts/1-body.txt"), hits
    subprocess.run(["cp", "-r", str(mnt.path("Entwürfe")), str(tmp_path / "copy")], check=True)
    (name,) = _files(tmp_path / "copy")
    assert (tmp_path / "copy" / name).read_bytes() == b"Subject: =?ISO-8859-1?Q?Gr=FC=DFe?=\r\n\r\nHallo\r\n"
    assert (tmp_path / "copy" / ("." + name[:-4] + ".parts") / "1-body.txt").read_bytes() == b"Hallo\r\n"


def test_statfs(mnt):
    st = os.statvfs(mnt.mountpoint)
    assert st.f_bsize > 0 and st.f_namemax == 255 and st.f_blocks >= st.f_bfree
    out = subprocess.run(["df", str(mnt.mountpoint)], capture_output=True, text=True)
    assert out.returncode == 0 and "imap://" in out.stdout


def test_names_and_inodes_stable_across_remount(server, tmp_path):
    def snapshot():
        (tmp_path / "m").mkdir(exist_ok=True)
        with mount_dovecot(server, tmp_path / "m") as m:
            return {n: os.stat(m.path("Corpus", n)).st_ino for n in _files(m.path("Corpus"))}

    first = snapshot()
    second = snapshot()
    assert first == second
    assert len(set(first.values())) == len(first)


def test_ls_l_costs_one_metadata_fetch(server, tmp_path):
    with Proxy(server.host, server.port) as proxy:
        url = f"imap://{server.user}@{server.host}:{proxy.port}/"
        from tests.support.mount import Mount
        (tmp_path / "m").mkdir()
        with Mount(url, tmp_path / "m", ["tls=off"], password=server.password) as m:
            proxy.clear()
            out = subprocess.run(["ls", "-l", str(m.path("Corpus"))], capture_output=True, text=True)
            assert out.returncode == 0
            # "total" line, then NAME.eml per message (.NAME.parts is a dot-name, issue 12)
            assert len(out.stdout.splitlines()) == len(corpus_messages()) + 1
            sent = proxy.client_bytes()
    fetches = [line for line in sent.split(b"\r\n") if b" FETCH " in line]
    assert len(fetches) == 1, fetches
    assert b"UID FETCH 1:*" in fetches[0]
