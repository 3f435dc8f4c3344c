"""Mounting as users do: background mode, mount(8), failures, TLS, reconnects.

Failing mounts run without ``-f``: the command must exit non-zero with one
clear line on stderr, leave nothing mounted and never echo the password.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import tlsca
from tests.support.dovecot import Dovecot
from tests.support.mount import Mount, assert_not_mounted, imapfs_command, is_mounted, mount_dovecot, run_imapfs
from tests.support.proxy import Proxy

SECRET = "Pa55word!"


@pytest.fixture(scope="module")
def server():
    with Dovecot() as d:
        d.append("INBOX", b"Subject: one\r\n\r\nfirst body\r\n")
        d.append("INBOX", b"Subject: two\r\n\r\nsecond body\r\n")
        d.append("INBOX", b"Subject: three\r\n\r\nthird body\r\n")
        yield d


@pytest.fixture
def mp(tmp_path) -> Path:
    p = tmp_path / "mnt"
    p.mkdir()
    return p


def _fails_cleanly(res: subprocess.CompletedProcess, mp: Path, pattern: str) -> None:
    assert res.returncode != 0
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, res.stderr
    assert re.search(pattern, lines[0], re.I), lines[0]
    assert lines[0].startswith("imapfs: ")
    assert SECRET not in res.stderr + res.stdout
    assert_not_mounted(mp)


def _eml(m: Mount, folder: str = "INBOX") -> list[Path]:
    return sorted(m.path(folder).glob("*.eml"))


# -- mounting -----------------------------------------------------------------

def test_background_mount_returns_when_live_and_umount_ends_daemon(server, mp):
    res = run_imapfs([server.url("imap"), mp, "-o", "tls=off"], password=server.password)
    assert res.returncode == 0, res.stderr
    try:
        assert is_mounted(mp)  # live at the moment the command returned
        assert len(list((mp / "INBOX").glob("*.eml"))) == 3
        daemon = _daemon_pid(mp)
        cmdline = Path(f"/proc/{daemon}/cmdline").read_bytes()
        assert SECRET.encode() not in cmdline
        assert SECRET.encode() not in Path(f"/proc/{daemon}/environ").read_bytes()
    finally:
        subprocess.run(["umount", str(mp)], check=True)
    _wait_gone(daemon)
    assert_not_mounted(mp)


def test_mount_t_fuse_imapfs_with_fstab_options(server, mp, tmp_path):
    pwfile = tmp_path / "pw"
    pwfile.write_text(server.password + "\n")
    pwfile.chmod(0o600)
    env = dict(os.environ)
    env.pop("IMAPFS_PASSWORD", None)
    opts = f"rw,nosuid,nodev,noatime,_netdev,x-systemd.automount,tls=off,password_file={pwfile}"
    # mount(8) runs helpers with root's default PATH, where a venv's imapfs is
    # not; mount.fuse3's PROGRAM#SOURCE form names the program by its path and
    # is otherwise the same call as -t fuse.imapfs (docs/usage.md).
    prog = imapfs_command()[0]
    assert os.path.isabs(prog)
    res = subprocess.run(["mount", "-t", "fuse", f"{prog}#{server.url('imap')}", str(mp), "-o", opts],
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    try:
        assert is_mounted(mp)
        mounts = Path("/proc/self/mounts").read_text()
        assert "fuse.imapfs" in mounts
        first = sorted((mp / "INBOX").glob("*.eml"))[0]
        assert first.read_bytes() == b"Subject: one\r\n\r\nfirst body\r\n"
        daemon = _daemon_pid(mp)
    finally:
        subprocess.run(["umount", str(mp)], check=True)
    _wait_gone(daemon)


def test_foreground_daemon_exits_0_on_fusermount_u(server, mp):
    m = mount_dovecot(server, mp)
    with m:
        assert len(_eml(m)) == 3
    assert m.returncode == 0


def test_password_command_and_file(server, mp, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(server.password + "\nsecond line is ignored\n")
    pw.chmod(0o600)
    with mount_dovecot(server, mp, password=None, options=[f"password_command=cat {pw}"]) as m:
        assert len(_eml(m)) == 3
    with mount_dovecot(server, mp, password=None, options=[f"password_file={pw}"]) as m:
        assert len(_eml(m)) == 3


# -- refusing -----------------------------------------------------------------

def test_wrong_password(server, mp):
    res = run_imapfs([server.url("imap"), mp, "-o", "tls=off"], password="wrong-" + SECRET)
    _fails_cleanly(res, mp, r"login as alice .* failed")
    assert "wrong-" not in res.stderr


def test_unreachable_host(mp):
    with Proxy("127.0.0.1", 9) as p:  # a port where nothing answers the proxy's upstream
        port = p.port
    res = run_imapfs([f"imap://alice@127.0.0.1:{port}/", mp, "-o", "tls=off"], password=SECRET)
    _fails_cleanly(res, mp, r"cannot connect to 127\.0\.0\.1:\d+")


def test_unresolvable_host(mp):
    res = run_imapfs(["imaps://alice@no-such-host.invalid/", mp], password=SECRET)
    _fails_cleanly(res, mp, r"cannot (resolve|connect)")


def test_missing_mountpoint(server, tmp_path):
    res = run_imapfs([server.url("imap"), tmp_path / "nope", "-o", "tls=off"], password=SECRET)
    _fails_cleanly(res, tmp_path, r"mountpoint .*nope does not exist")


def test_password_on_command_line_refused(server, mp):
    res = run_imapfs([server.url("imap"), mp, "-o", f"tls=off,password={SECRET}"])
    assert res.returncode != 0
    assert SECRET not in res.stderr and "IMAPFS_PASSWORD" in res.stderr
    assert_not_mounted(mp)


def test_no_password_at_all(server, mp):
    res = run_imapfs([server.url("imap"), mp, "-o", "tls=off"], password=None)
    _fails_cleanly(res, mp, r"no password")


def test_plaintext_without_tls_off_is_refused_before_credentials():
    with Dovecot(ssl=False) as plain:
        with Proxy(plain.host, plain.port) as proxy:
            mpath = Path(plain.base) / "mnt"
            mpath.mkdir()
            res = run_imapfs([f"imap://alice@127.0.0.1:{proxy.port}/", mpath], password=SECRET)
            _fails_cleanly(res, mpath, r"does not offer STARTTLS")
            sent = proxy.client_bytes()
    assert b"LOGIN" not in sent.upper() and b"AUTHENTICATE" not in sent.upper()
    assert SECRET.encode() not in sent


def test_stripped_starttls_man_in_the_middle_is_refused(server, mp):
    def strip(data: bytes) -> bytes:
        return data.replace(b" STARTTLS", b"")

    with Proxy(server.host, server.port, rewrite_server=strip) as proxy:
        res = run_imapfs([f"imap://alice@127.0.0.1:{proxy.port}/", mp, "-o", f"cafile={server.ca_file}"],
                         password=SECRET)
        sent = proxy.client_bytes()
    _fails_cleanly(res, mp, r"does not offer STARTTLS")
    assert b"LOGIN" not in sent.upper() and b"AUTHENTICATE" not in sent.upper()


# -- TLS ------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["imaps", "starttls"])
def test_tls_with_cafile(server, mp, scheme):
    with mount_dovecot(server, mp, tls=scheme) as m:
        assert _eml(m)[0].read_bytes() == b"Subject: one\r\n\r\nfirst body\r\n"


@pytest.mark.parametrize("scheme", ["imaps", "imap"])
def test_unknown_ca_refused(server, mp, scheme):
    res = run_imapfs([server.url(scheme), mp], password=SECRET)  # no cafile: system store only
    _fails_cleanly(res, mp, r"certificate .* refused|certificate verify failed")


@pytest.mark.parametrize("scheme", ["imaps", "imap"])
def test_certificate_name_mismatch_refused(mp, scheme):
    tls = tlsca.session_tls()
    with Dovecot(ssl_cert=tls.wrong_name_cert, ssl_key=tls.wrong_name_key) as d:
        res = run_imapfs([d.url(scheme), mp, "-o", f"cafile={d.ca_file}"], password=SECRET)
    _fails_cleanly(res, mp, r"certificate .* refused|hostname mismatch|doesn't match")


# -- the server goes away -------------------------------------------------------

def test_server_restart_gives_eio_then_recovers(mp):
    with Dovecot() as d:
        for i in range(4):
            d.append("INBOX", f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode())
        with mount_dovecot(d, mp, options=["backoff_max=1", "timeout=5"],
                           allowed_errors=[r"unavailable", r"read failed", r"lost"]) as m:
            files = _eml(m)
            assert files[0].read_bytes() == b"Subject: m0\r\n\r\nbody 0\r\n"
            d.stop()
            with pytest.raises(OSError) as e:
                files[2].read_bytes()  # not cached: needs the server
            assert e.value.errno == errno.EIO
            assert files[0].read_bytes() == b"Subject: m0\r\n\r\nbody 0\r\n"  # cached bytes still serve
            d.start()
            deadline = time.monotonic() + 15
            while True:
                try:
                    data = files[2].read_bytes()
                    break
                except OSError as err:
                    assert err.errno == errno.EIO
                    assert time.monotonic() < deadline, "no reconnect within 15 s"
                    time.sleep(0.3)
            assert data == b"Subject: m2\r\n\r\nbody 2\r\n"
            assert "unavailable" in m.log()


# -- helpers --------------------------------------------------------------------

def _daemon_pid(mp: Path) -> int:
    out = subprocess.run(["pgrep", "-f", f"imapfs .* {mp}"], capture_output=True, text=True).stdout.split()
    assert out, "daemon not found"
    return int(out[0])


def _wait_gone(pid: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    raise AssertionError(f"daemon {pid} still running after unmount")


def test_fsname_and_subtype_options_override_defaults(server, mp):
    with mount_dovecot(server, mp, options=["fsname=mymail", "subtype=mailfs"]) as m:
        assert len(_eml(m)) == 3
        line = [l for l in Path("/proc/self/mounts").read_text().splitlines() if f" {mp} " in f" {l} "]
        assert line and line[0].split()[0] == "mymail" and line[0].split()[2] == "fuse.mailfs"


def test_password_file_readable_by_others_is_refused(server, mp, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(server.password + "\n")
    pw.chmod(0o644)
    res = run_imapfs([server.url("imap"), mp, "-o", f"tls=off,password_file={pw}"])
    assert res.returncode == 32
    _fails_cleanly(res, mp, rf"^imapfs: password_file {re.escape(str(pw))} is accessible by other users "
                            rf"\(mode 0644\); run: chmod o= {re.escape(str(pw))}$")
