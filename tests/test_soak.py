"""The differential soak test of issue 10, bounded to about a minute.

A seeded random walk of operations through a real imapfs mount (cp, rsync-style
renames, an ``rsync -a`` restore, mv, rm, edits, a write racing its fsync, flag
xattrs, mkdir/rmdir/rename) and by a second IMAP client (APPEND, UID MOVE/STORE/
EXPUNGE, CREATE/DELETE/RENAME with odd names and keywords), with faults (doveadm
kick, Dovecot restarts and outages, proxy cuts and partitions, kill -9 of imapfs
and remounts). At every quiet point the mount must show exactly the server
(folders, UIDs, names, sampled bytes and flags, ``user.imapfs.state``) and no
message may be lost. The engine and its model are in tests/support/soak.py;
docs/reliability.md says what is checked. ``scripts/soak --minutes N`` runs it long.

IMAPFS_SOAK_SEED picks another walk; IMAPFS_SOAK_OPS and IMAPFS_SOAK_SECONDS
change its bounds.
"""
from __future__ import annotations

import os

from tests.support.soak import SoakConfig, run_soak

SEED = int(os.environ.get("IMAPFS_SOAK_SEED", "1"))
OPS = int(os.environ.get("IMAPFS_SOAK_OPS", "900"))
SECONDS = float(os.environ.get("IMAPFS_SOAK_SECONDS", "60"))


def test_soak_mount_converges_to_the_server_and_loses_no_mail(tmp_path):
    print(f"soak seed {SEED} (IMAPFS_SOAK_SEED=... to change)")
    r = run_soak(SoakConfig(seed=SEED, max_ops=OPS, max_seconds=SECONDS, quiet_every=70,
                            op_timeout=30.0, stop_on_divergence=True, workdir=tmp_path / "soak",
                            debug=bool(os.environ.get("IMAPFS_SOAK_DEBUG")),
                            out=lambda s: print(s, flush=True)))
    print(r.summary())
    how = (f"\n--- operation log tail (seed {SEED}; rerun with IMAPFS_SOAK_SEED={SEED}) ---\n"
           f"{r.log_tail(40)}\n--- logs: {r.workdir} (oplog.txt, imapfs.log) ---")
    assert r.ok, r.summary() + how
    assert not r.harness_errors, r.summary() + how
    # The walk really ran: enough operations, faults and checks to mean something.
    assert r.ops >= 100 and r.quiet_points >= 2, r.summary()
    assert sum(r.faults.values()) >= 3, r.summary()
