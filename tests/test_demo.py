"""scripts/demo, as a newcomer runs it: it mounts, the commands it suggests work, it cleans up.

``scripts/demo --check`` starts its own Dovecot, mounts with imapfs over
STARTTLS, runs the suggested commands (ls, cat, .parts, grep, getfattr,
setfattr, mv, mkdir, cp, rm) verifying each against the server, unmounts
and exits 0 only if all of them worked.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.mount import force_unmount, is_mounted

REPO = Path(__file__).resolve().parents[1]


def test_demo_check_mounts_works_and_cleans_up(tmp_path):
    mp = tmp_path / "demo-mnt"
    try:
        res = subprocess.run([str(REPO / "scripts" / "demo"), "--check", str(mp)], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=120)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out
        assert "demo: check passed" in res.stdout, out
        assert "FAIL" not in res.stdout, out
        assert not is_mounted(mp)
        assert not mp.exists()  # the demo made it, so the demo removed it
    finally:
        force_unmount(mp)


def test_demo_keeps_a_mountpoint_it_did_not_make(tmp_path):
    mp = tmp_path / "mine"
    mp.mkdir()
    try:
        res = subprocess.run([str(REPO / "scripts" / "demo"), "--check", str(mp)], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        assert not is_mounted(mp)
        assert mp.is_dir() and not any(mp.iterdir())
    finally:
        force_unmount(mp)
