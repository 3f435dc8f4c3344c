#!/usr/bin/env python3
"""imapfs benchmark: imapfs against raw imaplib and mbsync, side by side (issue 5).

    scripts/bench                      # full run: N=10,000, loopback and --rtt 20, 100k listing
    scripts/bench -n 2000 --skip-rtt   # quicker
    scripts/bench --big                # only the 100,000-message listing check
    scripts/bench --profile DIR        # also py-spy the daemon during a cold grep

What it does, in order (docs/performance.md has the method and the latest table):

1. Generates N messages (fixed seed) straight into the Maildir of a throwaway
   Dovecot (tests/support/dovecot.py), folder ``Bench``, plus one 50 MB
   message in folder ``Big``; lets Dovecot index them.  A known NEEDLE is in
   a known ~1 % of the messages; every grep result is checked against it.
2. Loopback figures: raw imaplib (metadata FETCH, all bodies in batches of
   500, the 50 MB message), mbsync pulling ``Bench`` into a fresh Maildir and
   grep there, imapfs freshly mounted (cold ``ls -l``; on a second fresh mount
   cold ``grep -rl``, warm ``grep -rl``, ``cat`` of the 50 MB message, the
   daemon's peak RSS), and FUSE request counts from a third, instrumented
   mount (optionally under py-spy).
3. The same client-side figures with a latency proxy between every client
   and Dovecot (``--rtt MS``, default 20; ``--skip-rtt`` skips it).
4. ``--big``-style check: 100,000 small messages in one folder, ``ls`` through
   a fresh mount, daemon memory per message (part of the default run;
   ``--skip-big`` skips it).

Exit status: 0 all targets met; 1 a target was missed (not with
``--no-targets``); 2 a step failed, hung or gave a wrong result.
Everything started here (Dovecot, mounts, proxies, tools) is stopped on exit
and on Ctrl-C; all traffic goes to 127.0.0.1.  The code is in scripts/benchlib/.
"""
from __future__ import annotations

import sys

from benchlib.cli import main  # scripts/ is sys.path[0] when run as a script

if __name__ == "__main__":
    sys.exit(main())
