"""``NAME.parts/``: decoded attachments, UTF-8 text, nested messages, exact sizes.

Runs against Dovecot with BINARY and with BINARY hidden, through a counting
proxy so that "one attachment of a big message costs that attachment" is
checked from the server's side of the wire.
"""

from __future__ import annotations

import email.policy
import errno
import os
import subprocess
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imapfs import imapproto
from tests.support import dovecot as dv
from tests.support.corpus import corpus_messages
from tests.support.dovecot import Dovecot
from tests.support.mount import Mount
from tests.support.proxy import Proxy
from tests.test_write import eventually

PROFILES = {"binary": dv.FULL, "no-binary": dv.NO_BINARY}
PNG = bytes(range(256)) * 40


def crlf(b: bytes) -> bytes:
    return b.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def build(subject: str, text: str, attachments=(), charset="utf-8", attached_msg: bytes | None = None) -> bytes:
    m = EmailMessage(policy=email.policy.SMTP)
    m["Subject"] = subject
    m["From"] = "a@example.org"
    m.set_content(text, charset=charset, cte="quoted-printable")
    for name, data, maintype, subtype in attachments:
        m.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    if attached_msg is not None:
        m.add_attachment(email.message_from_bytes(attached_msg, policy=email.policy.SMTP))
    return crlf(m.as_bytes())


class Env:
    def __init__(self, d, proxy, m, profile):
        self.d, self.proxy, self.m, self.profile = d, proxy, m, profile

    def parts_dir(self, folder: str, contains: str) -> Path:
        (p,) = [q for q in self.m.path(folder).iterdir() if q.name.endswith(".parts") and contains in q.name]
        return p


@pytest.fixture(scope="module", params=list(PROFILES))
def env(request, tmp_path_factory):
    with Dovecot(capabilities=PROFILES[request.param]) as d:
        inner = build("Inner note", "I am attached", [("inner.bin", b"\x00\x01inner", "application", "octet-stream")])
        d.append("INBOX", build("Grüße", "Grüße aus Zürich\n", charset="iso-8859-1"))
        d.append("INBOX", build("With attachments", "see files", [
            ("picture.png", PNG, "image", "png"),
            ("Übersicht 2026.pdf", b"%PDF-1.4 fake", "application", "pdf"),
        ]))
        d.append("INBOX", build("Forward", "forwarding", attached_msg=inner))
        d.append("INBOX", b"Subject: broken\r\nMIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
                          b"Content-Transfer-Encoding: x-bogus\r\n\r\nnot decodable\r\n")
        big = build("Big one", "small text", [
            ("huge.bin", os.urandom(21 * 1024 * 1024), "application", "octet-stream"),
            ("small.txt", b"tiny attachment\n", "application", "octet-stream"),
        ])
        d.append("Big", big)
        for _name, data in corpus_messages():
            d.append("Corpus", data)
        with Proxy(d.host, d.port) as proxy:
            mp = tmp_path_factory.mktemp("mnt")
            with Mount(f"imap://{d.user}@127.0.0.1:{proxy.port}/", mp, ["tls=off"], password=d.password,
                       allowed_errors=[r"not what BODYSTRUCTURE says", r"has no part"]) as m:
                yield Env(d, proxy, m, request.param)


def test_text_is_decoded_to_utf8_and_greppable(env):
    p = env.parts_dir("INBOX", "Grüße")
    assert sorted(os.listdir(p)) == ["1-body.txt"]
    assert (p / "1-body.txt").read_bytes().replace(b"\r\n", b"\n") == "Grüße aus Zürich\n".encode()
    out = subprocess.run(["grep", "-rl", "Zürich", str(env.m.path("INBOX"))], capture_output=True, text=True)
    assert str(p / "1-body.txt") in out.stdout.splitlines()
    assert os.getxattr(p / "1-body.txt", "user.mime_type") == b"text/plain"
    assert os.getxattr(p / "1-body.txt", "user.imap.section") == b"1"


def test_folder_lists_parts_under_a_dot_name_and_the_plain_name_still_resolves(env):
    """Issue 12: a folder lists each message's parts as ``.STEM.parts``, so ``ls -l``, which
    asks 2-3 getxattr of every entry it shows, shows (and asks about) only the messages;
    ``STEM.parts``, the name before, still resolves to the same directory, unlisted."""
    inbox = env.m.path("INBOX")
    names = os.listdir(inbox)
    emls = sorted(n for n in names if n.endswith(".eml"))
    assert len(emls) == 4
    assert sorted(n for n in names if n not in emls) == sorted("." + n[:-4] + ".parts" for n in emls)
    ls = subprocess.run(["ls", "-l", "--quoting-style=literal", str(inbox)], capture_output=True, text=True)
    assert ls.returncode == 0, ls.stderr
    assert sorted(line.split(maxsplit=8)[8] for line in ls.stdout.splitlines()[1:]) == emls
    (stem,) = [n[:-4] for n in emls if "Grüße" in n]
    dotted, plain = inbox / f".{stem}.parts", inbox / f"{stem}.parts"
    cat = subprocess.run(["cat", str(plain / "1-body.txt")], capture_output=True)
    assert cat.returncode == 0 and cat.stdout.replace(b"\r\n", b"\n") == "Grüße aus Zürich\n".encode()
    assert os.listdir(plain) == os.listdir(dotted) == ["1-body.txt"]
    assert os.stat(plain).st_ino == os.stat(dotted).st_ino
    assert f"{stem}.parts" not in os.listdir(inbox)
    with pytest.raises(FileNotFoundError):
        os.stat(inbox / f"..{stem}.parts")


def test_attachments_are_decoded_under_their_names(env):
    p = env.parts_dir("INBOX", "With attachments")
    names = sorted(os.listdir(p))
    assert names == ["1-body.txt", "2-picture.png", "3-Übersicht 2026.pdf"]
    assert (p / "2-picture.png").read_bytes() == PNG
    assert os.stat(p / "2-picture.png").st_size == len(PNG)
    assert (p / "3-Übersicht 2026.pdf").read_bytes() == b"%PDF-1.4 fake"
    assert os.getxattr(p / "2-picture.png", "user.mime_type") == b"image/png"
    assert os.getxattr(p / "3-Übersicht 2026.pdf", "user.imap.section") == b"3"


def test_attached_message_is_exact_and_has_its_own_parts(env):
    p = env.parts_dir("INBOX", "Forward")
    names = sorted(os.listdir(p))
    assert names == ["1-body.txt", "2-Inner note.eml", "2-Inner note.parts"]
    c = env.d.client()
    c.select("INBOX")
    typ, dat = c.uid("FETCH", "3", "(BODY.PEEK[2])")
    c.logout()
    (_, it), = imapproto.parse_fetch(dat)
    assert (p / "2-Inner note.eml").read_bytes() == it[b"BODY[2]"]
    inner = p / "2-Inner note.parts"
    assert sorted(os.listdir(inner)) == ["2.1-body.txt", "2.2-inner.bin"]
    assert (inner / "2.2-inner.bin").read_bytes() == b"\x00\x01inner"


def test_undecodable_part_is_served_raw(env):
    p = env.parts_dir("INBOX", "broken")
    assert os.listdir(p) == ["1-part.bin.raw"]
    assert (p / "1-part.bin.raw").read_bytes() == b"not decodable\r\n"
    assert "cannot be decoded" in env.m.log()


def test_every_corpus_part_reads_with_exact_size(env):
    count = 0
    for parts in sorted(env.m.path("Corpus").glob("*.parts")):
        for root, _dirs, files in os.walk(parts):
            for f in files:
                path = Path(root) / f
                data = path.read_bytes()  # never EIO for merely malformed mail
                assert len(data) == os.stat(path).st_size, path
                count += 1
    assert count >= len(corpus_messages())


def test_one_small_attachment_of_a_big_message_costs_only_that(env):
    p = env.parts_dir("Big", "Big one")
    before = env.proxy.bytes_server_to_client
    assert (p / "3-small.txt").read_bytes() == b"tiny attachment\n"
    assert os.listdir(p) == ["1-body.txt", "2-huge.bin", "3-small.txt"]
    moved = env.proxy.bytes_server_to_client - before
    assert moved < 1024 * 1024, f"{moved} bytes came over the wire for a 16-byte attachment"
    big = p / "2-huge.bin"
    assert os.stat(big).st_size == 21 * 1024 * 1024
    with open(big, "rb") as f:
        f.seek(10 * 1024 * 1024)
        assert len(f.read(1000)) == 1000


def test_parts_are_read_only(env):
    p = env.parts_dir("INBOX", "With attachments")
    for action in (lambda: (p / "2-picture.png").unlink(), lambda: (p / "new").write_bytes(b"x"),
                   lambda: open(p / "2-picture.png", "r+b")):
        with pytest.raises(OSError) as e:
            action()
        assert e.value.errno in (errno.EROFS, errno.EACCES)


def test_noparts_hides_parts(tmp_path):
    with Dovecot() as d:
        d.append("INBOX", build("plain", "text"))
        mp = tmp_path / "m"
        mp.mkdir()
        with Mount(d.url("imap"), mp, ["tls=off", "noparts"], password=d.password) as m:
            names = os.listdir(m.path("INBOX"))
            assert len(names) == 1 and names[0].endswith(".eml")
            for parts in (names[0][:-4] + ".parts", "." + names[0][:-4] + ".parts"):
                with pytest.raises(FileNotFoundError):
                    os.listdir(m.path("INBOX", parts))


def test_bodystructure_that_lies_gives_eio_for_that_file_only(tmp_path):
    """A server whose BODYSTRUCTURE names a part that does not exist."""
    fake = b' ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 1 NIL NIL NIL NIL) "mixed"'

    def lie(data: bytes) -> bytes:
        return data.replace(b' "mixed"', fake, 1) if b"BODYSTRUCTURE" in data else data

    with Dovecot() as d:
        d.append("INBOX", build("liar", "real text", [("real.bin", b"real data", "application", "octet-stream")]))
        with Proxy(d.host, d.port, rewrite_server=lie) as proxy:
            mp = tmp_path / "m"
            mp.mkdir()
            with Mount(f"imap://{d.user}@127.0.0.1:{proxy.port}/", mp, ["tls=off"], password=d.password,
                       allowed_errors=[r"not what BODYSTRUCTURE says", r"has no part", r"read failed"]) as m:
                (p,) = [q for q in m.path("INBOX").iterdir() if q.name.endswith(".parts")]
                names = sorted(os.listdir(p))
                assert len(names) == 3
                assert (p / "2-real.bin").read_bytes() == b"real data"
                with pytest.raises(OSError) as e:
                    (p / names[2]).read_bytes()
                assert e.value.errno == errno.EIO
                assert "BODYSTRUCTURE" in m.log()


# -- generated MIME trees -------------------------------------------------------------

_payload = st.binary(min_size=0, max_size=3000)
_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=200)
_charset = st.sampled_from(["utf-8", "iso-8859-1", "iso-8859-15", "koi8-r", "shift_jis", "windows-1252"])
_fname = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\"'"),
                 min_size=1, max_size=40)


@st.composite
def mime_trees(draw):
    charset = draw(_charset)
    text = draw(_text)
    try:
        text.encode(charset)
    except UnicodeEncodeError:
        charset = "utf-8"
    atts = draw(st.lists(st.tuples(_fname, _payload), max_size=4))
    return text, charset, atts


@pytest.fixture(scope="module")
def gen_env(tmp_path_factory):
    with Dovecot() as d:
        d.create("Gen")
        mp = tmp_path_factory.mktemp("gen")
        with Mount(d.url("imap"), mp, ["tls=off", "poll=0"], password=d.password) as m:
            yield d, m


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=mime_trees())
def test_generated_trees_roundtrip(gen_env, tree):
    d, m = gen_env
    text, charset, atts = tree
    data = build("gen", text + "\n", [(n, b, "application", "octet-stream") for n, b in atts], charset=charset)
    uid = d.append("Gen", data)
    p = eventually(lambda: [q for q in m.path("Gen").iterdir() if q.name.endswith(f"#{uid}.parts")])[0]
    names = os.listdir(p)
    assert len(names) == len(set(names)) == 1 + len(atts)
    for name in names:
        assert len(os.fsencode(name)) <= 255 and "/" not in name
    by_section = {os.getxattr(p / n, "user.imap.section").decode(): p / n for n in names}
    body = by_section["1"].read_bytes()
    assert body.replace(b"\r\n", b"\n").rstrip(b"\n") == (text + "\n").replace("\r\n", "\n").replace(
        "\r", "\n").encode().rstrip(b"\n") or b"\r" in text.encode()
    for i, (_n, payload) in enumerate(atts, 2):
        f = by_section[str(i)]
        assert f.read_bytes() == payload
        assert os.stat(f).st_size == len(payload)


# -- big decoded parts: decoded once, served from the spool (issue 11) ----------------


def test_big_decoded_part_is_fetched_once_with_a_small_memory_cache(tmp_path):
    """A decoded part larger than ``mem_cache`` used to be fetched and decoded again
    on every 128 KiB read (16 MiB: 128 fetches). Now it is decoded once into a spool
    file and every read is served from there: the wire shows one FETCH per part."""
    binary = os.urandom(17 * 1024 * 1024)
    text = "".join(f"Zeile {i}: Grüße aus Zürich\n" for i in range(200_000))  # 5.6 MB
    data = build("Spooled", "small body", [("big.bin", binary, "application", "octet-stream"),
                                           ("notes.txt", text.encode("utf-8"), "text", "plain")])
    # No BINARY: the server cannot decode the attachment for us, imapfs decodes it.
    with Dovecot(capabilities=dv.NO_BINARY) as d:
        d.append("INBOX", data)
        with Proxy(d.host, d.port) as proxy:
            mp = tmp_path / "m"
            mp.mkdir()
            with Mount(f"imap://{d.user}@127.0.0.1:{proxy.port}/", mp, ["tls=off", "mem_cache=1M"],
                       password=d.password) as m:
                (p,) = [q for q in m.path("INBOX").iterdir() if q.name.endswith(".parts")]
                assert sorted(os.listdir(p)) == ["1-body.txt", "2-big.bin", "3-notes.txt"]
                with open(p / "2-big.bin", "rb") as f:  # read() in 128 KiB requests, as cat does
                    got = b"".join(iter(lambda: f.read(128 * 1024), b""))
                assert got == binary
                assert (p / "3-notes.txt").read_bytes() == text.encode("utf-8")
                # again, and out of order: still no new fetch
                with open(p / "2-big.bin", "rb") as f:
                    f.seek(9 * 1024 * 1024)
                    assert f.read(4096) == binary[9 * 1024 * 1024:9 * 1024 * 1024 + 4096]
                sent = proxy.client_bytes()
                assert sent.count(b"BODY.PEEK[2]") == 1, sent.count(b"BODY.PEEK[2]")
                assert sent.count(b"BODY.PEEK[3]") == 1, sent.count(b"BODY.PEEK[3]")
