"""Mounting as users do: background mode, mount(8), failures, TLS, reconnects.

Failing mounts run without ``-f``: the command must exit non-zero with one
clear line on stderr, leave nothing mounted and never echo the password.
"""

from __future__ import annotations

import errno
import importlib.metadata
import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support import tlsca
from tests.support.dovecot import Dovecot
from tests.support.mount import (
    Mount,
    _child_env,
    assert_not_mounted,
    imapfs_command,
    is_mounted,
    mount_dovecot,
    run_imapfs,
)
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
    assert res.returncode == 32, (res.returncode, res.stderr)  # mount(8)'s "mount failure"
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


# -- mount conventions (issue 13) ---------------------------------------------------

def _modes(m: Mount) -> list[tuple[int, int, int]]:
    """(mode, uid, gid) of the root, INBOX, a message, its .parts directory and a part."""
    msg = _eml(m)[0]
    parts = msg.with_name(msg.stem + ".parts")
    part = sorted(parts.iterdir())[0]
    out = []
    for p in (m.mountpoint, m.path("INBOX"), msg, parts, part):
        st = os.stat(p)
        out.append((st.st_mode & 0o7777, st.st_uid, st.st_gid))
    return out


@pytest.mark.parametrize("opts, expected", [
    ([], [0o700, 0o700, 0o600, 0o500, 0o400]),  # private by default
    (["umask=022"], [0o755, 0o755, 0o644, 0o555, 0o444]),
    (["uid=1234", "gid=5678", "umask=027"], [0o750, 0o750, 0o640, 0o550, 0o440]),
    (["file_mode=0640", "dir_mode=0750", "ro"], [0o550, 0o550, 0o440, 0o550, 0o440]),
], ids=["default", "umask", "owner", "modes-ro"])
def test_ownership_and_modes(server, mp, opts, expected):
    with mount_dovecot(server, mp, options=opts) as m:
        got = _modes(m)
    uid = next((int(o[4:]) for o in opts if o.startswith("uid=")), os.getuid())
    gid = next((int(o[4:]) for o in opts if o.startswith("gid=")), os.getgid())
    assert got == [(mode, uid, gid) for mode in expected]


def test_other_users_cannot_read_the_mail_by_default(server):
    """With allow_other, another local user still cannot read: the modes are private (0600/0700)."""
    base = Path(tempfile.mkdtemp(prefix="imapfs-other-"))
    base.chmod(0o755)
    try:
        for opts, readable in ((["allow_other"], False), (["allow_other", "umask=022"], True)):
            mpath = base / "mnt"
            mpath.mkdir(exist_ok=True)
            with mount_dovecot(server, mpath, options=opts) as m:
                msg = _eml(m)[0]
                res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                      "cat", str(msg)], capture_output=True, timeout=30)
                if readable:
                    assert res.returncode == 0 and res.stdout == msg.read_bytes(), res.stderr
                else:
                    assert res.returncode != 0 and b"Permission denied" in res.stderr, res
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_version():
    res = run_imapfs(["-V"])
    assert res.returncode == 0 and res.stderr == ""
    libfuse = subprocess.run(["pkg-config", "--modversion", "fuse3"], capture_output=True, text=True).stdout.strip()
    assert res.stdout.splitlines() == [
        f"imapfs {importlib.metadata.version('imapfs')}", f"Python {platform.python_version()}",
        f"pyfuse3 {importlib.metadata.version('pyfuse3')}", f"libfuse {libfuse}"]
    assert run_imapfs(["--version"]).stdout == res.stdout


def test_help_lists_every_option_with_its_default():
    from imapfs.cli import OPTIONS

    res = run_imapfs(["--help"])
    assert res.returncode == 0
    for syntax, default, _ in OPTIONS:
        line = next(line for line in res.stdout.splitlines() if line.startswith(f"  {syntax} "))
        assert default in line or f"default: {default}" in res.stdout, syntax


def test_debug_implies_foreground(server, mp):
    """-d without -f stays in the foreground (as libfuse and sshfs): the command itself serves."""
    env = _child_env(server.password, None)
    proc = subprocess.Popen([*imapfs_command(), server.url("imap"), str(mp), "-d", "-o", "tls=off"],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not is_mounted(mp):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "not mounted within 15 s"
            time.sleep(0.05)
        assert len(list((mp / "INBOX").glob("*.eml"))) == 3
        assert proc.poll() is None  # still running: it is the daemon
        subprocess.run(["fusermount3", "-u", str(mp)], check=True)
        assert proc.wait(15) == 0
        assert "DEBUG" in proc.stderr.read()  # the debug log went to stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert_not_mounted(mp)


def test_daemon_leaves_its_start_directory(server, tmp_path):
    """The background daemon chdir("/")s, so it does not keep the directory it was started in busy;
    relative paths given on the command line still work."""
    start = tmp_path / "start"
    (start / "mnt").mkdir(parents=True)
    (start / "pw").write_text(server.password + "\n")
    (start / "pw").chmod(0o600)
    res = subprocess.run([*imapfs_command(), server.url("imap"), "mnt", "-o", "tls=off,password_file=pw,logfile=log"],
                         cwd=start, env=_child_env(None, None), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    mpath = start / "mnt"
    try:
        pids = subprocess.run(["pgrep", "-f", f"imapfs {server.url('imap')} mnt "], capture_output=True,
                              text=True).stdout.split()
        assert len(pids) == 1, pids
        daemon = int(pids[0])
        assert os.readlink(f"/proc/{daemon}/cwd") == "/"
        assert len(list((mpath / "INBOX").glob("*.eml"))) == 3
        assert "mounted" in (start / "log").read_text()
    finally:
        subprocess.run(["fusermount3", "-u", str(mpath)], check=True)
    _wait_gone(daemon)


def test_auto_unmount_cleans_up_after_a_killed_daemon(server, mp):
    m = mount_dovecot(server, mp, options=["auto_unmount"])
    m.start()
    try:
        assert len(_eml(m)) == 3
        os.kill(m.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while is_mounted(mp):
            assert time.monotonic() < deadline, "still mounted 15 s after the daemon was killed"
            time.sleep(0.05)
    finally:
        m.unmount(check=False)
    assert m.returncode == -signal.SIGKILL


def test_logfile_is_reopened_after_logrotate_moves_it(server, mp, tmp_path):
    log = tmp_path / "imapfs.log"
    with mount_dovecot(server, mp, options=[f"logfile={log}"]) as m:
        assert len(_eml(m)) == 3
        log.rename(tmp_path / "imapfs.log.1")  # what logrotate does (without copytruncate)
    assert "mounted" in (tmp_path / "imapfs.log.1").read_text()
    assert "unmounted" in log.read_text()  # written after the rotation: a new file


def test_no_timestamps_when_stderr_is_the_journal(server, mp, tmp_path):
    """Under systemd, stderr is the journal ($JOURNAL_STREAM=dev:inode): it stamps lines itself."""
    out = tmp_path / "journal"
    out.touch()
    st = os.stat(out)
    with mount_dovecot(server, mp, log_path=out, env_extra={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}) as m:
        assert len(_eml(m)) == 3
    lines = [line for line in out.read_text().splitlines() if "imapfs.mount:" in line]
    assert lines and all(re.match(r"<[67]>(INFO|DEBUG) imapfs\.mount: ", line) for line in lines), lines
    with mount_dovecot(server, mp) as m:  # a plain stderr: timestamps as usual
        assert len(_eml(m)) == 3
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO imapfs\.mount: mounted", m.log(), re.M)
