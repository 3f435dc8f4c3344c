"""systemd: Type=notify (READY=1 on $NOTIFY_SOCKET) and the shipped units (issue 13, systemd).

The machine running the tests has no systemd as PID 1, so the notify test
plays systemd's part: it binds the unix datagram socket, starts the real
``imapfs -f`` with NOTIFY_SOCKET pointing at it, and reads what arrives.
The units in docs/systemd/ are checked with ``systemd-analyze verify``
(skipped when it is not installed; scripts/setup installs it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.support.dovecot import Dovecot
from tests.support.mount import _child_env, assert_not_mounted, imapfs_command, is_mounted

UNITS = Path(__file__).resolve().parents[1] / "docs" / "systemd"
ANALYZE = shutil.which("systemd-analyze")


@pytest.fixture(scope="module")
def server():
    with Dovecot() as d:
        for i in range(3):
            d.append("INBOX", f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode())
        yield d


def _recv(sock: socket.socket, timeout: float = 30.0) -> str:
    sock.settimeout(timeout)  # generous: a mount takes well under a second here
    return sock.recv(4096).decode()


@pytest.mark.parametrize("abstract", [True, False], ids=["abstract", "path"])
def test_ready_arrives_once_the_mount_answers(server, tmp_path, abstract):
    mp = tmp_path / "mnt"
    mp.mkdir()
    env_seen = tmp_path / "env"
    cmd = tmp_path / "pw"
    cmd.write_text(f"#!/bin/sh\nenv > {env_seen}\necho '{server.password}'\n")
    cmd.chmod(0o700)
    name = f"@imapfs-test-{uuid.uuid4().hex}" if abstract else str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name[1:] if abstract else name)
        env = _child_env(None, {"NOTIFY_SOCKET": name})
        proc = subprocess.Popen([*imapfs_command(), server.url("imap"), str(mp), "-f", "-o",
                                 f"tls=off,password_command={cmd}"], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            ready = _recv(sock)
            # The moment READY=1 arrives the mount is there and answers.
            assert is_mounted(mp)
            assert len(list((mp / "INBOX").glob("*.eml"))) == 3
            lines = ready.split("\n")
            assert "READY=1" in lines, ready
            assert f"STATUS=serving alice@127.0.0.1:{server.port} on {mp}" in lines, ready
            assert proc.poll() is None
            subprocess.run(["fusermount3", "-u", str(mp)], check=True, timeout=30)
            assert _recv(sock) == "STOPPING=1"
            assert proc.wait(30) == 0, proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert_not_mounted(mp)
    # password_command ran, and did not inherit the socket (sd_notify's unset_environment).
    assert "NOTIFY_SOCKET" not in env_seen.read_text()


def test_a_notify_socket_nobody_listens_on_costs_a_warning_not_the_mount(server, tmp_path):
    """A NOTIFY_SOCKET that nobody listens on costs a warning, not the mount."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    env = _child_env(server.password, {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    proc = subprocess.Popen([*imapfs_command(), server.url("imap"), str(mp), "-f", "-o", "tls=off"], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (is_mounted(mp) and list((mp / "INBOX").glob("*.eml"))):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        subprocess.run(["fusermount3", "-u", str(mp)], check=True, timeout=30)
        assert proc.wait(30) == 0
        err = proc.stderr.read()
        assert "WARNING imapfs.mount: cannot notify systemd (READY)" in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert_not_mounted(mp)


def _verify(tmp_path: Path, files: dict[str, str], user: bool) -> subprocess.CompletedProcess:
    """systemd-analyze verify *files* (name -> text), written to a fresh directory."""
    d = tmp_path / uuid.uuid4().hex
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    runtime = d / "runtime"  # a user manager needs XDG_RUNTIME_DIR, even for verify
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), SYSTEMD_LOG_COLOR="0")
    cmd = [ANALYZE, *(["--user"] if user else []), "--man=no", "verify", *(str(d / n) for n in files)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)


def _unit(name: str) -> str:
    # verify checks that ExecStart's program exists: use the one under test.
    return (UNITS / name).read_text().replace("/usr/local/bin/imapfs", imapfs_command()[0])


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (apt install systemd)")
def test_shipped_units_verify(tmp_path):
    assert os.path.isabs(imapfs_command()[0])
    service = _unit("imapfs@.service")
    assert "Type=notify" in service and " -f " in service
    for files, user in (({"imapfs@.service": service, "imapfs@gmail.service": service}, True),
                        ({n: _unit(n) for n in ("home-alice-Mail.mount", "home-alice-Mail.automount")}, False)):
        res = _verify(tmp_path, files, user)
        complaints = [line for line in res.stderr.splitlines() if any(n in line for n in files)]
        assert res.returncode == 0 and not complaints, res.stderr
    # verify finds mistakes at all (it exits 0 on unknown keys: hence the check of its output)
    res = _verify(tmp_path, {"imapfs@x.service": service.replace("Type=notify", "Typ=notify")}, True)
    assert "Unknown key" in res.stderr and "imapfs@x.service" in res.stderr
