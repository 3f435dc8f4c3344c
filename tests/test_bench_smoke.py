"""A small run of scripts/bench (N=200), so the benchmark cannot rot.

It runs the real thing end to end (generation into a throwaway Dovecot's
Maildir, raw imaplib, mbsync, fresh imapfs mounts, the latency proxy, the
instrumented request-count mount, and the floors of issue 12: the trivial
pyfuse3 and C libfuse filesystems built in the same run, the no-change rsync
pair, imapfs prefetch) and checks that every figure is printed and that no
step failed.  Performance targets are not judged here (--no-targets):
N=200 says nothing about them.  The full benchmark is not part of the test
suite; see docs/performance.md.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Every figure row the benchmark prints (scripts/bench.py, Results keys).
FIGURES = [
    "corpus", "imaplib_meta", "imaplib_bodies", "imaplib_big", "mbsync", "maildir_grep",
    "ls", "ls_warm", "grep_cold", "grep_cold_raw", "grep_warm", "cat_big", "rss",
    "fuse_ls_cold", "fuse_ls_warm", "fuse_grep_cold", "fuse_grep_warm",
    "floor_py_ls", "floor_py_ls_warm", "floor_py_grep_cold", "floor_py_grep_warm",
    "floor_c_ls", "floor_c_ls_warm", "floor_c_grep_cold", "floor_c_grep_warm",
    "rsync_a", "rsync_ax", "prefetch",
    "imaplib_meta_rtt", "imaplib_bodies_rtt", "mbsync_rtt", "maildir_grep_rtt",
    "ls_rtt", "ls_warm_rtt", "grep_cold_rtt", "rss_rtt",
    "huge_ls", "huge_mem",
]
SKIPPED = {"huge_ls", "huge_mem"}  # the 100k listing: minutes, not for the suite


def test_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [str(REPO / "scripts" / "bench"), "--no-setup", "-n", "200", "--big-mb", "5",
           "--rtt", "10", "--skip-big", "--no-targets", "--timeout", "40", "--json", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO,
                         stdin=subprocess.DEVNULL)
    report = f"exit {res.returncode}\n--- stdout\n{res.stdout[-6000:]}\n--- stderr\n{res.stderr[-4000:]}"
    assert res.returncode == 0, report
    data = json.loads(out.read_text())
    rows = {r["key"]: r for r in data["rows"]}
    for key in FIGURES:
        assert key in rows, f"figure {key} missing\n{report}"
        row = rows[key]
        assert row["label"] in res.stdout, f"row {row['label']!r} not printed\n{report}"
        if key in SKIPPED:
            assert row["status"] == "skip", report
        else:
            assert row["status"] != "ERROR", f"{key}: {row['note']}\n{report}"
            assert row["value"] is not None, f"{key} has no value\n{report}"
    # the greps were checked against the needle set inside the benchmark; the
    # ratios the issue asks for are printed
    for ratio in ("cold grep / mbsync pull", "warm grep / Maildir grep", "read rate / imaplib rate",
                  "cold grep / mbsync pull @ 10 ms"):
        assert ratio in res.stdout, f"ratio {ratio!r} not printed\n{report}"
    # issue 12's targets table: every figure beside its floor, with the floors measured
    targets = {t["figure"]: t for t in data["targets"]}
    assert "targets of issue 12" in res.stdout, report
    for t in data["targets"]:
        assert t["figure"] in res.stdout, f"target {t['figure']!r} not printed\n{report}"
    for fig in ("cold grep -r of 200 / mbsync pull", "warm grep -r / Maildir grep", "cold ls -l of 200"):
        assert "pyfuse3 " in targets[fig]["floor"] and ", C " in targets[fig]["floor"], targets[fig]
    for fig in ("no-change rsync -aX / rsync -a (200 .eml)", "imapfs prefetch of 200 / mbsync pull"):
        assert targets[fig]["now"] != "-" and targets[fig]["result"] in ("PASS", "FAIL"), targets[fig]


def test_bench_help():
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--help"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0
    for opt in ("--rtt", "--skip-rtt", "--big", "--no-targets", "--json", "--profile", "--skip-floors",
                "--skip-prefetch", "--rsync-n"):
        assert opt in res.stdout
