"""The imapfs benchmark (``scripts/bench``), split by role (issue 14).

* ``common``: constants, logging, commands with a deadline, machine facts.
* ``corpus``: the generated mailbox written into a throwaway Dovecot's Maildir.
* ``imap``: raw imaplib, the physical limit.
* ``proxy``: the latency proxy (``tests/support/proxy.py`` in a child process).
* ``mounts``: fresh imapfs mounts with deadlines, the instrumented daemon.
* ``verify``: every grep's result checked against the needle set.
* ``base``, ``baselines``, ``imapfs_steps``, ``runners``: the steps and their order.
* ``report``: the table, the ratios, JSON and Markdown.
* ``cli``: options and ``main``; ``scripts/bench.py`` only calls it.

See docs/performance.md for the method.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # tests.support.{dovecot,mount,proxy}
    sys.path.insert(0, str(REPO))
