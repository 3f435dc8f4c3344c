"""Logging in with a non-ASCII password (issue 10 item 7).

The password must work where the server allows it (AUTHENTICATE PLAIN with
UTF-8, RFC 4616; LOGIN with the password as a UTF-8 literal) and must never
be printed: not on stderr, not in the daemon's log, whatever fails.

Dovecot keeps accepting AUTHENTICATE PLAIN when it is not advertised (see
tests/support/dovecot.py), so "a server without AUTH=PLAIN" is Dovecot behind
a proxy that removes ``AUTH=PLAIN`` from what the client reads; the proxy's
record of the client's bytes then shows which command imapfs really used.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest

from tests.support.dovecot import Dovecot
from tests.support.mount import Mount, assert_not_mounted, run_imapfs
from tests.support.proxy import Proxy

PASSWORD = "Pässwörd€ 日本"  # Latin-1, a euro sign (not Latin-1) and CJK
USER = "bob"


def _traces(password: str) -> list[bytes]:
    """Ways the password could show up: as text, as UTF-8 bytes' repr, escaped, base64 of PLAIN."""
    enc = password.encode("utf-8")
    return [password.encode("utf-8"), repr(password).encode("utf-8")[1:-1],
            repr(enc)[2:-1].encode("ascii"), password.encode("unicode_escape"),
            base64.b64encode(f"\0{USER}\0{password}".encode()),
            # a prefix long enough to be the password, short enough to survive truncation
            password[:6].encode("utf-8")]


def _assert_secret_absent(password: str, *texts: str | bytes) -> None:
    for t in texts:
        b = t.encode("utf-8", "replace") if isinstance(t, str) else t
        for trace in _traces(password):
            assert trace not in b, f"password leaked as {trace!r}"


@pytest.fixture(scope="module")
def server():
    with Dovecot({USER: PASSWORD}) as d:
        d.append("INBOX", b"Subject: hello\r\n\r\nbody\r\n")
        yield d


def _hide_plain(b: bytes) -> bytes:
    return b.replace(b" AUTH=PLAIN", b"")


def _url(port: int) -> str:
    return f"imap://{USER}@127.0.0.1:{port}/"


def _check_mount(m: Mount) -> None:
    (name,) = [n for n in os.listdir(m.path("INBOX")) if n.endswith(".eml")]
    assert m.path("INBOX", name).read_bytes() == b"Subject: hello\r\n\r\nbody\r\n"


def test_non_ascii_password_with_auth_plain(server, tmp_mountpoint: Path):
    with Proxy(server.host, server.port) as proxy:
        with Mount(_url(proxy.port), tmp_mountpoint, ["tls=off"], password=PASSWORD) as m:
            _check_mount(m)
        sent = proxy.client_bytes()
    assert m.returncode == 0
    assert re.search(rb"AUTHENTICATE PLAIN", sent)
    _assert_secret_absent(PASSWORD, m.log())


def test_non_ascii_password_without_auth_plain_uses_a_login_literal(server, tmp_mountpoint: Path):
    with Proxy(server.host, server.port, rewrite_server=_hide_plain) as proxy:
        with Mount(_url(proxy.port), tmp_mountpoint, ["tls=off"], password=PASSWORD) as m:
            _check_mount(m)
        sent = proxy.client_bytes()
    assert m.returncode == 0
    assert b"AUTHENTICATE" not in sent
    n = len(PASSWORD.encode("utf-8"))
    assert re.search(rb'LOGIN "bob" \{%d\+?\}\r\n' % n, sent), sent[:300]
    _assert_secret_absent(PASSWORD, m.log())


@pytest.mark.parametrize("hide_plain", [False, True], ids=["auth-plain", "login"])
def test_wrong_non_ascii_password_fails_in_one_clean_line(server, tmp_mountpoint: Path, hide_plain: bool):
    wrong = "Wrøng€" + PASSWORD
    with Proxy(server.host, server.port, rewrite_server=_hide_plain if hide_plain else None) as proxy:
        res = run_imapfs([_url(proxy.port), tmp_mountpoint, "-o", "tls=off"], password=wrong)
    assert res.returncode == 32  # mount(8)'s "mount failure" (issue 13)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert re.fullmatch(r"imapfs: login as bob on 127\.0\.0\.1:\d+ failed: .*", lines[0]), lines[0]
    _assert_secret_absent(wrong, res.stderr, res.stdout)
    assert_not_mounted(tmp_mountpoint)


def test_wrong_non_ascii_password_in_foreground_logs_no_secret(server, tmp_mountpoint: Path, tmp_path: Path):
    wrong = "Wrøng€" + PASSWORD
    log = tmp_path / "imapfs.log"
    with Proxy(server.host, server.port, rewrite_server=_hide_plain) as proxy:
        res = run_imapfs([_url(proxy.port), tmp_mountpoint, "-f", "-d", "-o", f"tls=off,logfile={log}"],
                         password=wrong)
    assert res.returncode == 32  # mount(8)'s "mount failure" (issue 13)
    assert "Traceback" not in res.stderr
    _assert_secret_absent(wrong, res.stderr, res.stdout, log.read_bytes() if log.exists() else b"")
    assert_not_mounted(tmp_mountpoint)


def test_log_filter_blanks_every_spelling_of_the_password():
    """The last line of defence in imapfs.mount: a record that would show the password does not."""
    import io
    import logging

    from imapfs.mount import _Redact, redact

    assert redact(f"x {PASSWORD!r} {PASSWORD.encode()!r} {PASSWORD.encode('unicode_escape').decode()}", PASSWORD).count(
        "***") == 3
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.addFilter(_Redact("p\xe4ss\x07"))
    lg = logging.getLogger("test_auth.redact")
    lg.addHandler(handler)
    lg.propagate = False
    try:
        try:
            "p\xe4ss\x07".encode("ascii")
        except UnicodeEncodeError as e:
            lg.error("failed: %r", e, exc_info=True)
    finally:
        lg.removeHandler(handler)
    out = buf.getvalue()
    assert "failed: UnicodeEncodeError('ascii', '***'" in out
    assert "p\xe4ss" not in out and "p\\xe4ss" not in out
