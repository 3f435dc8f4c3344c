"""Tests of the test harness itself, against a real Dovecot."""
from __future__ import annotations

import contextlib
import datetime as dt
import imaplib
import re
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from tests.support import dovecot as dv
from tests.support.corpus import corpus_dir, to_crlf
from tests.support.dovecot import Dovecot, DovecotError, mutf7_decode, mutf7_encode
from tests.support.mount import (
    MOUNT_TIMEOUT,
    Mount,
    MountError,
    assert_not_mounted,
    imapfs_command,
    is_bad_line,
    is_mounted,
)

# Time bounds in these tests are generous on purpose: the suite runs on 2 shared
# cores, where a thread can stall for a second.  Each bound only catches a helper
# that waits for a time-out or restarts something it should not; the figures
# themselves are in the comments, not asserted.
SLOW = 5.0  # seconds


def _until(fn, timeout: float = 10.0) -> bool:
    """Poll *fn* until it is true (or the deadline passes); returns its last value."""
    deadline = time.monotonic() + timeout
    while not fn() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(fn())


def _ctx(cafile) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cafile))


def _caps(data) -> set[str]:
    return set(data[-1].decode().upper().split())


# ---------------------------------------------------------------- Dovecot


def test_login_and_capabilities_match_dovecot(dovecot):
    c = dovecot.client()
    try:
        typ, data = c.capability()
        assert typ == "OK"
        # The profile constants are built from this list: catch any drift.
        assert data[-1].decode().split() == dv.DOVECOT_CAPABILITIES
    finally:
        c.logout()
    with pytest.raises(imaplib.IMAP4.error):
        imaplib.IMAP4(dovecot.host, dovecot.port).login(dovecot.user, "wrong")


def test_url_and_paths(dovecot):
    assert dovecot.url() == f"imap://alice@127.0.0.1:{dovecot.port}/"
    assert dovecot.url("imaps") == f"imaps://alice@127.0.0.1:{dovecot.ssl_port}/"
    assert dovecot.password == "Pa55word!"
    assert dovecot.maildir() == dovecot.base / "home" / "alice" / "Maildir"


def test_corpus_round_trip_is_byte_exact(clean_dovecot, corpus):
    assert len(corpus) > 100
    names = [n for n, _ in corpus]
    assert names == sorted(names)
    assert not any(n.split("/")[-1] in ("LICENSE", "README.md") for n in names)
    for _, data in corpus:
        assert re.search(rb"(?<!\r)\n", data) is None  # CRLF only
    uids = clean_dovecot.append_many("INBOX", [d for _, d in corpus])
    assert uids == list(range(1, len(corpus) + 1))
    got = clean_dovecot.fetch_all("INBOX")
    assert got == {uid: data for uid, (_, data) in zip(uids, corpus)}
    # BODY.PEEK did not set \Seen; the Maildir files are there.
    assert all("\\Seen" not in f for f in clean_dovecot.flags().values())
    assert len(list((clean_dovecot.maildir() / "new").iterdir())) + \
        len(list((clean_dovecot.maildir() / "cur").iterdir())) == len(corpus)


def test_to_crlf():
    assert to_crlf(b"a\nb\r\nc\rd\n") == b"a\r\nb\r\nc\rd\r\n"
    assert corpus_dir().is_dir()


def test_append_flags_date_and_nested_unicode_folder(clean_dovecot):
    d = clean_dovecot
    folder = "Projects/Ünïcode & co/2024"
    when = dt.datetime(2021, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc)
    uid = d.append(folder, b"Subject: x\r\n\r\nhi\r\n", flags="\\Seen \\Flagged", date=when)
    uid2 = d.append(folder, b"Subject: y\r\n\r\nho\r\n", flags=["$Custom"])
    assert (uid, uid2) == (1, 2)
    assert d.folders() == sorted(["INBOX", "Projects", "Projects/Ünïcode & co",
                                  "Projects/Ünïcode & co/2024"])
    assert d.flags(folder) == {1: {"\\Seen", "\\Flagged"}, 2: {"$Custom"}}
    c = d.client()
    try:
        c.select(dv._mailbox_arg(folder), readonly=True)
        typ, data = c.uid("FETCH", "1", "(INTERNALDATE)")
        assert b'"04-Mar-2021 05:06:07 +0000"' in data[0]
    finally:
        c.logout()
    d.create("Empty")
    assert d.fetch_all("Empty") == {}
    assert "Empty" in d.folders()


def test_mutf7():
    # RFC 3501 5.1.3 example, and the ampersand.
    assert mutf7_encode("~peter/mail/台北/日本語") == "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert mutf7_encode("A&B") == "A&-B"
    for s in ["~peter/mail/台北/日本語", "A&B", "Ünï😀", "&&", ""]:
        assert mutf7_decode(mutf7_encode(s)) == s


def test_reset_restart_and_stop(make_dovecot):
    d = make_dovecot()
    port, ssl_port = d.port, d.ssl_port
    d.append("Other", b"Subject: a\r\n\r\na\r\n")
    d.restart()
    assert (d.port, d.ssl_port) == (port, ssl_port)
    assert list(d.fetch_all("Other")) == [1]
    t = time.monotonic()
    d.reset()
    assert time.monotonic() - t < SLOW  # about 50 ms: it empties the Maildir, no restart
    assert d.folders() == ["INBOX"] and d.fetch_all("INBOX") == {}
    d.stop()
    d.stop()  # idempotent
    assert not d.running
    with pytest.raises(OSError):
        socket.create_connection((d.host, port), timeout=1).close()
    d.start()
    assert d.folders() == ["INBOX"]


def test_a_killed_servers_folder_locks_name_their_holder(dovecot):
    """stop() is a SIGKILL: a lock it leaves behind must be breakable at once.

    Dovecot's default O_EXCL dotlock can be left empty by a kill, and an empty
    ``dovecot-uidlist.lock`` stalls every SELECT of its folder for 2 minutes
    (CI's soak hit it).  The harness turns O_EXCL off so locks are written
    whole, with the holder's pid, before they appear.
    """
    out = subprocess.run(["doveconf", "-c", str(dovecot.conf_path), "-h", "dotlock_use_excl"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "no"


def test_start_up_time(make_dovecot):
    """Tests start many servers: a start must not wait for a time-out (0.04-0.2 s here)."""
    t = time.monotonic()
    make_dovecot()
    assert time.monotonic() - t < SLOW


def test_start_failure_shows_log():
    d = Dovecot(extra_config="no_such_setting = 1\n")
    try:
        with pytest.raises(DovecotError, match="no_such_setting"):
            d.start()
        assert not d.running
    finally:
        d.cleanup()


def test_users_and_dot_separator(make_dovecot):
    d = make_dovecot(users={"alice": "Pa55word!", "bob": "B0b's pw"}, separator=".")
    assert d.user == "alice"
    d.append("a.b", b"Subject: for alice\r\n\r\n.\r\n")
    d.append("INBOX", b"Subject: for bob\r\n\r\n.\r\n", user="bob")
    assert d.folders() == ["INBOX", "a", "a.b"]
    assert d.folders(user="bob") == ["INBOX"]
    assert list(d.fetch_all("INBOX", user="bob").values()) == [b"Subject: for bob\r\n\r\n.\r\n"]
    assert d.maildir("bob").is_dir()
    c = d.client("bob")
    c.logout()


@pytest.mark.parametrize("name", sorted(dv.PROFILES))
def test_capability_profiles_are_advertised(make_dovecot, name):
    profile = dv.PROFILES[name]
    d = make_dovecot(capabilities=profile)
    expected = set(dv.DOVECOT_CAPABILITIES if profile is None else profile.split())
    c = imaplib.IMAP4(d.host, d.port)
    try:
        pre = set(c.capabilities)
        assert "STARTTLS" in pre
        typ, _ = c.login(d.user, d.password)
        assert typ == "OK"
        assert _caps(c.capability()[1]) == {x.upper() for x in expected}
    finally:
        c.logout()


def test_hidden_capabilities_are_still_accepted(make_dovecot):
    """Dovecot only stops *advertising*: it still runs MOVE, UID EXPUNGE,
    BINARY, ENABLE QRESYNC, NOTIFY and answers APPENDUID.  Tests that a
    client avoids an extension must look at its traffic (proxy)."""
    d = make_dovecot(capabilities=dv.capabilities_without(
        "MOVE", "UIDPLUS", "BINARY", "QRESYNC", "CONDSTORE", "NOTIFY"))
    c = d.client()
    try:
        caps = _caps(c.capability()[1])
        assert not caps & {"MOVE", "UIDPLUS", "BINARY", "QRESYNC", "CONDSTORE", "NOTIFY"}
        typ, data = c.append("INBOX", None, None, b"Subject: a\r\n\r\nabc\r\n")
        assert typ == "OK" and b"[APPENDUID " in data[0]
        assert c.xatom("ENABLE", "QRESYNC")[0] == "OK"
        c.create("Other")
        c.select("INBOX")
        typ, data = c.uid("FETCH", "1", "(BINARY.SIZE[1])")
        assert typ == "OK" and b"BINARY.SIZE[1] 5" in data[0]
        assert c.uid("MOVE", "1", "Other")[0] == "OK"
        assert c.xatom("NOTIFY", "SET", "(selected (MessageNew MessageExpunge))")[0] == "OK"
        c.append("INBOX", None, None, b"Subject: b\r\n\r\nabc\r\n")
        c.uid("STORE", "2", "+FLAGS.SILENT", "(\\Deleted)")
        assert c.uid("EXPUNGE", "2")[0] == "OK"
    finally:
        c.logout()
    assert list(d.fetch_all("Other")) == [1]
    assert d.fetch_all("INBOX") == {}


def test_ssl_false_offers_no_starttls(make_dovecot):
    d = make_dovecot(ssl=False)
    assert d.ssl_port is None and d.ca_file is None
    c = imaplib.IMAP4(d.host, d.port)
    try:
        assert "STARTTLS" not in c.capabilities
        with pytest.raises(imaplib.IMAP4.error):
            c.starttls(ssl.create_default_context())
        assert c.login(d.user, d.password)[0] == "OK"
    finally:
        c.logout()
    with pytest.raises(ValueError):
        d.url("imaps")


def test_starttls_and_imaps_verify_with_the_throwaway_ca(dovecot, tls):
    assert dovecot.ca_file == tls.ca_file
    for host in ("127.0.0.1", "localhost"):
        c = imaplib.IMAP4(host, dovecot.port)
        assert "STARTTLS" in c.capabilities
        c.starttls(_ctx(dovecot.ca_file))
        assert c.login(dovecot.user, dovecot.password)[0] == "OK"
        c.logout()
    c = imaplib.IMAP4_SSL(dovecot.host, dovecot.ssl_port, ssl_context=_ctx(dovecot.ca_file))
    assert c.login(dovecot.user, dovecot.password)[0] == "OK"
    c.logout()
    # Without the CA (system trust store) and with an unrelated CA: refused.
    for ctx in (ssl.create_default_context(), _ctx(tls.other_ca.ca_cert)):
        c = imaplib.IMAP4(dovecot.host, dovecot.port)
        with pytest.raises(ssl.SSLCertVerificationError):
            c.starttls(ctx)
        with contextlib.suppress(OSError):  # the failed handshake closed it
            c.shutdown()
        with pytest.raises(ssl.SSLCertVerificationError):
            imaplib.IMAP4_SSL(dovecot.host, dovecot.ssl_port, ssl_context=ctx)


def test_wrong_name_and_unknown_issuer_are_refused(make_dovecot, tls):
    wrong = make_dovecot(ssl_cert=tls.wrong_name_cert, ssl_key=tls.wrong_name_key)
    with pytest.raises(ssl.SSLCertVerificationError, match=r"mismatch|match"):
        imaplib.IMAP4_SSL(wrong.host, wrong.ssl_port, ssl_context=_ctx(tls.ca_file))
    other = make_dovecot(ssl_cert=tls.other_cert, ssl_key=tls.other_key)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        imaplib.IMAP4_SSL(other.host, other.ssl_port, ssl_context=_ctx(tls.ca_file))
    c = imaplib.IMAP4_SSL(other.host, other.ssl_port, ssl_context=_ctx(tls.other_ca.ca_cert))
    c.logout()


# ------------------------------------------------------------------ Proxy


def _login(port, d) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    c.login(d.user, d.password)
    return c


def test_proxy_forwards_records_and_counts(clean_dovecot, make_proxy):
    d = clean_dovecot
    big = b"Subject: big\r\n\r\n" + b"0123456789abcde\r\n" * 120_000  # ~2 MB
    d.append("INBOX", big)
    p = make_proxy(d.host, d.port)
    c = _login(p.port, d)
    c.select("INBOX")
    typ, data = c.uid("FETCH", "1", "(BODY.PEEK[]<0.1000>)")
    assert data[0][1] == big[:1000]
    c.logout()
    assert _until(lambda: p.open_connections() == 0)  # the proxy sees the close a moment later
    assert p.accepted == 1
    sent = p.client_bytes()
    assert b"LOGIN alice" in sent and b"UID FETCH 1 (BODY.PEEK[]<0.1000>)" in sent
    assert b"* OK" in p.server_bytes()
    assert p.bytes_server_to_client == len(p.server_bytes())
    assert 1000 < p.bytes_server_to_client < 10_000  # the 2 MB never crossed
    assert p.bytes_client_to_server == len(sent)
    p.clear()
    assert p.client_bytes() == b"" and p.bytes_server_to_client == 0


def test_proxy_mitm_strips_starttls(dovecot, make_proxy):
    p = make_proxy(dovecot.host, dovecot.port,
                   rewrite_server=lambda b: b.replace(b" STARTTLS", b""))
    c = imaplib.IMAP4("127.0.0.1", p.port)
    assert "STARTTLS" not in c.capabilities and "IMAP4REV1" in c.capabilities
    c.logout()
    assert b"STARTTLS" in p.server_bytes()  # it was there, upstream
    # TLS passes through a rewriting proxy (partial lines are flushed).
    p.rewrite_server = lambda b: b.replace(b"no such text", b"")
    c = imaplib.IMAP4("localhost", p.port)
    c.starttls(_ctx(dovecot.ca_file))
    assert c.login(dovecot.user, dovecot.password)[0] == "OK"
    c.logout()
    assert b"Pa55word" not in p.client_bytes()  # the password went encrypted


def test_proxy_cut_drops_every_connection(dovecot, make_proxy):
    p = make_proxy(dovecot.host, dovecot.port)
    clients = [_login(p.port, dovecot) for _ in range(3)]
    assert p.open_connections() == 3
    assert p.cut() == 3
    for c in clients:
        with pytest.raises((imaplib.IMAP4.abort, OSError)):
            c.noop()
    assert p.open_connections() == 0
    c = _login(p.port, dovecot)  # the proxy itself keeps accepting
    c.logout()


def test_proxy_cut_when_before_and_after_forwarding(clean_dovecot, make_proxy):
    d = clean_dovecot
    d.append("INBOX", b"Subject: m\r\n\r\nm\r\n")
    d.create("Other")
    p = make_proxy(d.host, d.port)

    # Before: the server never sees the MOVE.
    before = p.cut_when(b"UID MOVE")
    c = _login(p.port, d)
    c.select("INBOX")
    with pytest.raises(imaplib.IMAP4.abort):
        c.uid("MOVE", "1", "Other")
    assert before.fired == 1
    assert list(d.fetch_all("INBOX")) == [1] and d.fetch_all("Other") == {}

    # After: the server moved the message, the client never heard.
    after = p.cut_when(b"UID MOVE", forward=True)
    c = _login(p.port, d)
    c.select("INBOX")
    with pytest.raises(imaplib.IMAP4.abort):
        c.uid("MOVE", "1", "Other")
    assert after.fired == 1
    _until(lambda: not d.fetch_all("INBOX"))
    assert d.fetch_all("INBOX") == {} and list(d.fetch_all("Other")) == [1]

    # Server side: APPEND stored, APPENDUID never reaches the client.
    server = p.cut_when_server(b"[APPENDUID")
    c = _login(p.port, d)
    with pytest.raises(imaplib.IMAP4.abort):
        c.append("INBOX", None, None, b"Subject: n\r\n\r\nn\r\n")
    assert server.fired == 1
    assert list(d.fetch_all("INBOX").values()) == [b"Subject: n\r\n\r\nn\r\n"]
    # Triggers fire once: the next connection is left alone.
    c = _login(p.port, d)
    c.select("Other")
    assert c.uid("MOVE", "1", "INBOX")[0] == "OK"
    c.logout()
    assert (before.fired, after.fired, server.fired) == (1, 1, 1)


def test_proxy_cut_when_predicate(dovecot, make_proxy):
    p = make_proxy(dovecot.host, dovecot.port)
    cut = p.cut_when(lambda sent: sent.count(b"NOOP") >= 2)
    c = _login(p.port, dovecot)
    assert c.noop()[0] == "OK"
    assert cut.fired == 0
    with pytest.raises(imaplib.IMAP4.abort):
        c.noop()
    assert cut.fired == 1


def test_proxy_refuse_and_hang(dovecot, make_proxy):
    p = make_proxy(dovecot.host, dovecot.port, refuse=True)
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        imaplib.IMAP4("127.0.0.1", p.port, timeout=5)
    p.refuse = False
    p.hang = True
    with pytest.raises((socket.timeout, TimeoutError)):
        imaplib.IMAP4("127.0.0.1", p.port, timeout=0.3)
    assert p.cut() == 1
    p.hang = False
    _login(p.port, dovecot).logout()


def test_proxy_delay_adds_latency_in_order(dovecot, make_proxy):
    p = make_proxy(dovecot.host, dovecot.port, delay_ms=40)
    c = _login(p.port, dovecot)
    t = time.monotonic()
    assert c.noop()[0] == "OK"
    rtt = time.monotonic() - t
    # At least 40 ms each way by construction; typically 80-90 ms.  The upper
    # bound only catches a delay added per chunk or twice, not a slow moment.
    assert 0.08 <= rtt < SLOW
    # Pipelined commands come back in order and intact.
    c.select("INBOX")
    tags = [c._command("NOOP") for _ in range(20)]
    for tag in tags:
        assert c._command_complete("NOOP", tag)[0] == "OK"
    c.logout()


def test_proxy_stops_itself(dovecot):
    from tests.support.proxy import Proxy

    p = Proxy(dovecot.host, dovecot.port, lifetime=0.2).start()
    c = _login(p.port, dovecot)
    # it stops itself 0.2 s after start: wait for that rather than guess how long it takes
    assert _until(lambda: p._stop.is_set() and p.open_connections() == 0)
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        c.noop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p.port), timeout=1).close()
    p.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("proxy-")]


def test_proxy_unrecorded_and_bounded(make_proxy):
    """scripts/bench's mode: no copy of the traffic, at most max_queued bytes waiting
    per direction while the client does not read, then every byte in order."""
    payload = bytes(range(256)) * (8 * 4096)  # 8 MiB
    srv = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=lambda: srv.accept()[0].sendall(payload), daemon=True).start()
    p = make_proxy("127.0.0.1", srv.getsockname()[1], record=False, max_queued=1 << 20)
    with pytest.raises(ValueError):
        p.cut_when(b"x")
    c = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    assert _until(lambda: p.connections and p.connections[0].s2c.queued > 0)
    time.sleep(0.3)  # the server has sent what it can; the client has read nothing
    assert p.connections[0].s2c.queued <= (1 << 20) + 65536
    got = bytearray()
    while len(got) < len(payload):
        chunk = c.recv(1 << 20)
        assert chunk
        got += chunk
    assert got == payload
    # The proxy counts a piece after its sendall returns: the client may have it first.
    assert _until(lambda: p.bytes_server_to_client == len(payload)), p.bytes_server_to_client
    assert p.server_bytes() == b""
    c.close()
    srv.close()


# ------------------------------------------------------------------ Mount


def test_mount_helpers(tmp_mountpoint):
    assert is_mounted("/proc") and not is_mounted(tmp_mountpoint)
    assert_not_mounted(tmp_mountpoint)
    assert imapfs_command()[0].endswith(("imapfs", "python", "python3")) or \
        "imapfs" in " ".join(imapfs_command())


def test_mount_log_levels():
    assert is_bad_line("2026-01-01 10:00:00,000 ERROR imapfs.fs: boom")
    assert is_bad_line("CRITICAL:imapfs:boom")
    assert is_bad_line("Traceback (most recent call last):")
    assert not is_bad_line("2026-01-01 10:00:00,000 DEBUG imapfs.fs: lookup ERROR reports")
    assert not is_bad_line("2026-01-01 10:00:00,000 INFO imapfs.mount: mounted")


def test_mount_that_dies_fails_fast_with_its_log(tmp_mountpoint):
    fake = [sys.executable, "-c",
            "import sys, os; print('imapfs: no way', os.environ.get('IMAPFS_PASSWORD'),"
            " file=sys.stderr); sys.exit(2)"]
    t = time.monotonic()
    with pytest.raises(MountError, match=r"exited with 2(.|\n)*imapfs: no way s3cret"):
        Mount("imap://alice@127.0.0.1:1/", tmp_mountpoint, ["tls=off"], password="s3cret",
              command=fake).start()
    assert time.monotonic() - t < MOUNT_TIMEOUT / 2  # did not wait for the mount time-out
    assert_not_mounted(tmp_mountpoint)

