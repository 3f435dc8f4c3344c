"""Options and ``main`` of ``scripts/bench``."""
from __future__ import annotations

import argparse
import os
import signal
import sys

from .common import SEED
from .proxy import proxy_main
from .runners import Bench

DESCRIPTION = "imapfs benchmark: imapfs against raw imaplib and mbsync, side by side (issue 5)."


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="scripts/bench", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=10_000, help="messages in the benchmark folder (default 10000)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--big-mb", type=float, default=50, help="size of the big message in MB (0: none)")
    p.add_argument("--rtt", type=float, default=20, help="round trip added by the latency proxy, ms (default 20)")
    p.add_argument("--skip-rtt", action="store_true", help="skip the run through the latency proxy")
    p.add_argument("--rtt-only", action="store_true",
                   help="only the figures through the latency proxy (e.g. with a long --timeout)")
    p.add_argument("--big", action="store_true", help="only the 100,000-message listing check")
    p.add_argument("--big-n", type=int, default=100_000, help="messages for the listing check")
    p.add_argument("--skip-big", action="store_true", help="skip the 100,000-message listing check")
    p.add_argument("--skip-floors", action="store_true",
                   help="skip the trivial pyfuse3 and C filesystems (the floors of issue 12)")
    p.add_argument("--skip-prefetch", action="store_true", help="skip imapfs prefetch of the folder")
    p.add_argument("--rsync-n", type=int, default=2000,
                   help="messages in the no-change rsync -a / rsync -aX pair (default 2000)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run each cold measurement this many times and keep the best (default 1)")
    p.add_argument("--no-targets", action="store_true", help="exit 0 even if targets are missed")
    p.add_argument("--no-count", action="store_true", help="skip the instrumented FUSE request-count mount")
    p.add_argument("--profile", metavar="DIR", help="py-spy the daemon during a cold grep (needs py-spy)")
    p.add_argument("--diag-rtt", action="store_true",
                   help="run the instrumented mounts (request counts, py-spy) through the latency proxy")
    p.add_argument("--profile-idle", action="store_true", help="py-spy --idle (include waiting threads)")
    p.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write the table as Markdown")
    p.add_argument("--timeout", type=float, default=0, help="deadline per step, s (default max(120, 0.12 N))")
    p.add_argument("--cold-server", action="store_true",
                   help="drop the page cache before every cold step, so Dovecot reads its store from "
                        "disk (default: the store stays cached; every client starts cold anyway)")
    p.add_argument("--imapfs-rev", metavar="REV",
                   help="benchmark the imapfs package of this git revision (default: the working tree)")
    p.add_argument("--keep-logs", metavar="DIR", help="copy the logs of mounts that had problems here")
    p.add_argument("--no-setup", action="store_true", help=argparse.SUPPRESS)  # handled by scripts/bench
    a = p.parse_args(argv)
    if a.n < 100:
        p.error("-n must be at least 100 (the needle set is 1%)")
    return a


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_proxy"]:
        proxy_main(argv[1], int(argv[2]), float(argv[3]))
        return 0
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("scripts/bench: must run as root (Dovecot's mail user, dropping the page cache)", file=sys.stderr)
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    bench = Bench(args)
    try:
        with bench.stack:
            return bench.run()
    except KeyboardInterrupt:
        print("\ninterrupted: cleaned up", file=sys.stderr)
        return 130
