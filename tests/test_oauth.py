"""OAuth2 logins (XOAUTH2, OAUTHBEARER) and the credential source (issue 13, OAuth2).

Against a real Dovecot whose ``oauth2`` passdb asks a local RFC 7662
introspection endpoint (tests/support/oauth.py) about each token; the
``password_command`` is a script that asks that server's token endpoint for
a new token each time it runs, like ``oama`` or ``mutt_oauth2.py`` would.
The credential source's caching rules are tested on their own first (no I/O
beyond a fake command).
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from imapfs.credentials import (
    PASSWORD,
    TOKEN,
    CommandCredential,
    FileCredential,
    StaticCredential,
    parse_command_output,
)
from imapfs.errors import ConfigError
from tests.support.dovecot import Dovecot
from tests.support.mount import Mount, assert_not_mounted, run_imapfs
from tests.support.oauth import OAuthServer
from tests.support.proxy import Proxy

BODIES = [b"Subject: one\r\n\r\nfirst body\r\n", b"Subject: two\r\n\r\nsecond body\r\n",
          b"Subject: three\r\n\r\nthird body\r\n"]


# -------------------------------------------------- the credential source

class FakeCommand:
    """A password_command stand-in: prints the next of *outputs* (the last one repeats)."""

    def __init__(self, *outputs: bytes) -> None:
        self.outputs = list(outputs)
        self.runs = 0

    def __call__(self, command: str) -> bytes:
        self.runs += 1
        return self.outputs[min(self.runs, len(self.outputs)) - 1]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("out, secret, expiry", [
    (b"hunter2\n", "hunter2", None),
    (b"hunter2\r\nsecond line ignored\n", "hunter2", None),
    (b"P\xc3\xa4ss \xe2\x82\xac", "Päss €", None),
    (b'{"access_token": "ya29.x", "expires_in": 3599, "token_type": "Bearer"}\n', "ya29.x", 1_000_000.0 + 3599),
    (b'  {"access_token": "t", "expires_at": 1000100}', "t", 1_000_100.0),
    (b'{"access_token": "t"}', "t", None),
    (b'{"access_token": "t", "expires_in": true}', "t", None),  # not a number: no stated lifetime
], ids=range(7))
def test_parse_command_output(out, secret, expiry):
    assert parse_command_output(out, 1_000_000.0) == (secret, expiry)


@pytest.mark.parametrize("out, needle", [
    (b"", "printed no password"),
    (b"\nhunter2\n", "printed no password"),
    (b"\xff\xfe", "not UTF-8"),
    (b'{"access_token": "hunter2"', "does not parse"),
    (b'{"token": "hunter2"}', "without an access_token"),
    (b'{"access_token": ""}', "without an access_token"),
], ids=range(6))
def test_parse_command_output_refuses_without_echoing(out, needle):
    with pytest.raises(ConfigError) as ei:
        parse_command_output(out, 0.0)
    assert needle in str(ei.value) and "hunter2" not in str(ei.value)


def test_bare_token_is_fetched_for_every_connection():
    cmd = FakeCommand(b"tok-1\n", b"tok-2\n", b"tok-3\n")
    cred = CommandCredential("x", runner=cmd)
    cred.prime()  # at mount time, before the first connection
    assert cred(TOKEN) == "tok-1"  # the primed one serves exactly one connection attempt
    assert cred(TOKEN) == "tok-2"
    assert cred(TOKEN) == "tok-3"
    assert cmd.runs == 3
    assert set(cred.secrets()) == {"tok-1", "tok-2", "tok-3"}


def test_token_with_a_stated_lifetime_is_reused_until_a_minute_before_it_ends():
    clock = Clock()
    cmd = FakeCommand(b'{"access_token": "a", "expires_in": 600}', b'{"access_token": "b", "expires_in": 600}')
    cred = CommandCredential("x", runner=cmd, clock=clock)
    assert cred(TOKEN) == "a"
    clock.now += 539
    assert cred(TOKEN) == "a" and cmd.runs == 1
    clock.now += 1  # 60 s left: no longer reused
    assert cred(TOKEN) == "b" and cmd.runs == 2


def test_short_lived_token_is_never_reused():
    cmd = FakeCommand(b'{"access_token": "a", "expires_in": 60}', b'{"access_token": "b", "expires_in": 60}')
    cred = CommandCredential("x", runner=cmd, clock=Clock())
    assert (cred(TOKEN), cred(TOKEN)) == ("a", "b")


def test_password_from_a_command_is_kept_until_refused():
    cmd = FakeCommand(b"old\n", b"new\n")
    cred = CommandCredential("x", runner=cmd)
    cred.prime()
    assert [cred(PASSWORD) for _ in range(3)] == ["old"] * 3 and cmd.runs == 1
    assert cred(PASSWORD, True) == "new" and cmd.runs == 2  # after the server refused "old"
    assert cred(PASSWORD) == "new" and cmd.runs == 2


def test_fresh_reruns_even_a_reusable_token():
    cmd = FakeCommand(b'{"access_token": "a", "expires_in": 3600}', b'{"access_token": "b", "expires_in": 3600}')
    cred = CommandCredential("x", runner=cmd, clock=Clock())
    assert cred(TOKEN) == "a"
    assert cred(TOKEN, True) == "b"
    assert cred(TOKEN) == "b" and cmd.runs == 2


def test_command_failure_is_a_clear_error(tmp_path):
    cred = CommandCredential("echo hunter2; exit 3")
    with pytest.raises(ConfigError, match=r"^password_command failed with exit code 3$"):
        cred.prime()


def test_command_runs_in_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "pw").write_text("from-home\n")
    assert CommandCredential("cat pw")(PASSWORD) == "from-home"


def test_password_file_is_reread_and_must_not_be_world_readable(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("one\n")
    pw.chmod(0o640)  # the group may read (a service's group, a user private group)
    cred = FileCredential(str(pw))
    assert cred(PASSWORD) == "one"
    pw.write_text("two\n")
    assert cred(PASSWORD) == "two"
    pw.chmod(0o644)
    with pytest.raises(ConfigError) as ei:
        cred(PASSWORD)
    assert str(ei.value) == f"password_file {pw} is accessible by other users (mode 0644); run: chmod o= {pw}"


def test_static_secret_is_what_it_is():
    cred = StaticCredential("s3cret")
    assert cred(TOKEN) == cred(PASSWORD, True) == "s3cret"
    assert "s3cret" not in repr(cred)


# -------------------------------------------------- against Dovecot

@pytest.fixture(scope="module")
def auth():
    with OAuthServer(ttl=3600) as a:
        yield a


@pytest.fixture(scope="module")
def server(auth, tmp_path_factory):
    conf_dir = tmp_path_factory.mktemp("oauth")
    os.chmod(conf_dir, 0o755)
    with Dovecot(**auth.dovecot_options(conf_dir)) as d:
        for body in BODIES:
            d.append("INBOX", body)
        yield d


@pytest.fixture
def token_cmd(auth, tmp_path):
    return auth.token_command(tmp_path / "get-token")


def _bodies(m: Mount) -> list[bytes]:
    """Every INBOX message's bytes, in the order of BODIES."""
    return sorted((p.read_bytes() for p in m.path("INBOX").glob("*.eml")), key=BODIES.index)


def _file(m: Mount, subject: str) -> Path:
    (path,) = m.path("INBOX").glob(f"* {subject} *.eml")
    return path


def _mechanisms_used(sent: bytes) -> list[str]:
    """``AUTHENTICATE MECH`` or ``LOGIN`` for every login the client started."""
    return re.findall(r"^\S+ (AUTHENTICATE \S+|LOGIN)\b", sent.decode("utf-8", "replace"), re.M)


@pytest.mark.parametrize("auth_opt, used", [
    ("xoauth2", "AUTHENTICATE XOAUTH2"),
    ("oauthbearer", "AUTHENTICATE OAUTHBEARER"),
    ("plain", "AUTHENTICATE PLAIN"),
    ("login", "LOGIN"),
    ("auto", "AUTHENTICATE PLAIN"),  # the server offers PLAIN: a password, not a token
])
def test_login_with_each_mechanism(server, auth, token_cmd, tmp_mountpoint, auth_opt, used):
    oauth = auth_opt in ("xoauth2", "oauthbearer")
    opts = ["tls=off", f"auth={auth_opt}"] + ([f"password_command={token_cmd}"] if oauth else [])
    with Proxy(server.host, server.port) as proxy:
        with Mount(f"imap://alice@127.0.0.1:{proxy.port}/", tmp_mountpoint, opts,
                   password=None if oauth else server.password) as m:
            assert _bodies(m) == BODIES
        sent = proxy.client_bytes()
    assert set(_mechanisms_used(sent)) == {used}
    if oauth:
        new = auth.tokens_of(token_cmd)  # the first connection's, and perhaps the push connection's
        assert (new[0], True) in auth.introspected
        assert not any((tok, False) in auth.introspected for tok in new)
        assert not any(tok.encode() in m.log().encode() for tok in new)


def test_auto_uses_oauth_when_it_is_all_the_server_offers(server, auth, token_cmd, tmp_mountpoint):
    def only_oauth(data: bytes) -> bytes:
        return data.replace(b" AUTH=PLAIN", b"").replace(b" AUTH=LOGIN", b"") \
            .replace(b" IMAP4rev1", b" IMAP4rev1 LOGINDISABLED", 1) if b"AUTH=" in data else data

    with Proxy(server.host, server.port, rewrite_server=only_oauth) as proxy:
        with Mount(f"imap://alice@127.0.0.1:{proxy.port}/", tmp_mountpoint,
                   ["tls=off", f"password_command={token_cmd}"]) as m:
            assert _bodies(m) == BODIES
        sent = proxy.client_bytes()
    assert set(_mechanisms_used(sent)) == {"AUTHENTICATE OAUTHBEARER"}


def test_wrong_token_is_refused_in_one_line(server, tmp_mountpoint, tmp_path):
    """A refused token costs one re-run of password_command, then a one-line error and exit 32."""
    runs = tmp_path / "runs"
    script = tmp_path / "bad-token"
    script.write_text(f"#!/bin/sh\necho run >> {runs}\necho not-a-valid-token-$$\n")
    script.chmod(0o755)
    res = run_imapfs([server.url("imap"), tmp_mountpoint, "-o", f"tls=off,auth=xoauth2,password_command={script}"])
    assert res.returncode == 32, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert re.fullmatch(r"imapfs: login as alice on 127\.0\.0\.1:\d+ failed: Authentication failed\. "
                        r"\(XOAUTH2 token refused: 401\) \(a fresh token was refused too\)", lines[0]), lines[0]
    assert "not-a-valid-token" not in res.stderr + res.stdout
    assert runs.read_text().count("run") == 2  # at mount, and once more after the refusal
    assert_not_mounted(tmp_mountpoint)


def test_expired_first_token_is_replaced_by_one_rerun(server, auth, tmp_mountpoint, tmp_path):
    """The first token the command prints has expired by the time imapfs logs in: one re-run, a mount."""
    stale = auth.issue(ttl=-1)
    fresh_cmd = auth.token_command(tmp_path / "get-token")
    script = tmp_path / "first-stale"
    script.write_text(f"#!/bin/sh\nif [ -e {tmp_path}/ran ]; then exec {fresh_cmd}; fi\n"
                      f"touch {tmp_path}/ran\necho {stale}\n")
    script.chmod(0o755)
    with Mount(server.url("imap"), tmp_mountpoint, ["tls=off", "auth=oauthbearer", f"password_command={script}"]) as m:
        assert _bodies(m) == BODIES
    assert (stale, False) in auth.introspected


def test_mount_outlives_its_first_token_across_a_forced_reconnect(server, auth, tmp_mountpoint, tmp_path):
    """Tokens live 2 s here; the mount keeps working after they expire and Dovecot drops every connection."""
    cmd = auth.token_command(tmp_path / "get-token", ttl=2)
    k0 = len(auth.introspected)
    with Mount(server.url("imap"), tmp_mountpoint,
               ["tls=off", "auth=xoauth2", f"password_command={cmd}", "backoff_max=1", "cache_dir=none"],
               allowed_errors=[r"unavailable", r"lost"]) as m:
        assert _file(m, "one").read_bytes() == BODIES[0]
        before = auth.tokens_of(cmd)
        assert before
        deadline = time.monotonic() + 30  # generous: the tokens live 2 s
        while any(auth.active(t) for t in before):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        kicked = subprocess.run(["doveadm", "-c", str(server.conf_path), "kick", "alice"],
                                capture_output=True, text=True, timeout=30)
        assert kicked.returncode == 0, kicked.stderr
        # Not cached anywhere (cache_dir=none, never read): needs a new connection and a new token.
        assert _file(m, "three").read_bytes() == BODIES[2]
        assert _file(m, "two").read_bytes() == BODIES[1]
    after = auth.tokens_of(cmd)[len(before):]
    assert any((tok, True) in auth.introspected for tok in after), "no new token was used"
    # Every new connection asked for its own token: an expired one was never sent.
    mine = set(auth.tokens_of(cmd))
    assert all(ok for tok, ok in auth.introspected[k0:] if tok in mine)


def test_token_with_a_stated_lifetime_is_reused_across_a_reconnect(server, auth, tmp_mountpoint, tmp_path):
    cmd = auth.token_command(tmp_path / "get-token-json", json_output=True)  # expires_in: 3600
    with Mount(server.url("imap"), tmp_mountpoint,
               ["tls=off", "auth=xoauth2", f"password_command={cmd}", "cache_dir=none"],
               allowed_errors=[r"unavailable", r"lost"]) as m:
        assert _file(m, "one").read_bytes() == BODIES[0]
        subprocess.run(["doveadm", "-c", str(server.conf_path), "kick", "alice"], check=True,
                       capture_output=True, timeout=30)
        assert _file(m, "three").read_bytes() == BODIES[2]
    assert len(auth.tokens_of(cmd)) == 1  # one token, stated to last an hour, served every connection


def test_oauth_strings_on_the_wire(server, auth, token_cmd, tmp_mountpoint):
    """The SASL messages are the documented ones (Google's XOAUTH2, RFC 7628 OAUTHBEARER)."""
    from imapfs.connection.login import _oauth_response

    assert _oauth_response("XOAUTH2", "alice", "T", "h", 993) == b"user=alice\x01auth=Bearer T\x01\x01"
    assert _oauth_response("OAUTHBEARER", "a,b=c", "T", "h", 993) == \
        b"n,a=a=2Cb=3Dc,\x01host=h\x01port=993\x01auth=Bearer T\x01\x01"
    with Proxy(server.host, server.port) as proxy:
        with Mount(f"imap://alice@127.0.0.1:{proxy.port}/", tmp_mountpoint,
                   ["tls=off", "auth=xoauth2", f"password_command={token_cmd}"]) as m:
            assert _bodies(m)[:1] == BODIES[:1]
        sent = proxy.client_bytes().decode()
    tokens = {base64.b64decode(b).decode() for b in re.findall(r"^([A-Za-z0-9+/=]{20,})\r$", sent, re.M)}
    assert tokens and all(re.fullmatch(r"user=alice\x01auth=Bearer tok-[\w-]+\x01\x01", t) for t in tokens)
