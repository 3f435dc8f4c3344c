#!/usr/bin/env python3
"""Time the local store's operations on one folder of N messages (no server, no mount).

    .venv/bin/python scripts/store_bench.py [N] [--sweep]

Prints the figures ``docs/offline.md`` ("Tuning and numbers") quotes; with
``--sweep``, also the time to open a store holding 100,000 bodies (the sweep
of ``bodies/`` at mount). ``tests/test_store.py::test_timing_100k`` runs
:func:`bench` and prints its figures without asserting them.

Measured on the development machine (2 cores, ext4 on virtio, Python 3.11,
sqlite 3.40), one folder of 100,000 messages:

=================================================  ===========
``put_folder(..., replace=True)``, new folder       0.23-0.25 s
``put_folder(..., replace=True)`` over itself       0.25-0.27 s
``get_folder`` (100,000 ``RawMeta``)                0.23-0.26 s
``add_messages`` of 1,000 into it                   2-3 ms
``put_body`` 25 KB, fsync on / off                  0.95 ms / 0.2 ms
``get_body`` 25 KB (verified)                       0.09 ms
opening a store holding 100,000 bodies (sweep)      0.65-0.85 s
``cache.db`` size per message (short subjects)      ~50 bytes
=================================================  ===========
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imapfs.records import RawMeta  # noqa: E402 (after the path above)
from imapfs.store import Store  # noqa: E402


def bench(root: str | Path, n: int = 100_000, out: Callable[[str], None] = print) -> dict[str, float]:
    """Time the operations the module docstring quotes; *root* must be an empty directory."""
    metas = [RawMeta(uid, 20_000 + uid % 5000, 1_700_000_000 + uid, ("\\Seen",) if uid % 3 else (),
                     b"Subject number %d" % uid) for uid in range(1, n + 1)]
    res: dict[str, float] = {}

    def timed(label: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        r = fn()
        res[label] = time.perf_counter() - t
        out(f"{label:<44} {res[label] * 1000:9.1f} ms")
        return r

    with Store(root, 1 << 40) as st:
        timed(f"put_folder {n} (new)", lambda: st.put_folder(b"INBOX", 1, n + 1, 5, metas, replace=True))
        timed(f"put_folder {n} (replace same)", lambda: st.put_folder(b"INBOX", 1, n + 1, 6, metas, replace=True))
        rec = timed(f"get_folder {n}", lambda: st.get_folder(b"INBOX"))
        assert rec is not None and len(rec.messages) == n
        more = [RawMeta(n + i, 100, 0, (), None) for i in range(1, 1001)]
        timed("add_messages 1000", lambda: st.add_messages(b"INBOX", 1, more))
        body = os.urandom(25_000)
        k = 300
        timed(f"put_body 25KB x{k} (fsync)", lambda: [st.put_body(b"INBOX", 1, u, body) for u in range(1, k + 1)])
        timed(f"put_body 25KB x{k} (no fsync)",
              lambda: [st.put_body(b"INBOX", 1, u, body, fsync=False) for u in range(k + 1, 2 * k + 1)])
        timed(f"get_body 25KB x{2 * k}", lambda: [st.get_body(b"INBOX", 1, u) for u in range(1, 2 * k + 1)])
    db = Path(root) / "cache.db"
    out(f"cache.db: {db.stat().st_size / (n + 1000):.0f} bytes per message")
    return res


def sweep(root: str | Path, n: int = 100_000, out: Callable[[str], None] = print) -> float:
    """Time opening a store that holds *n* small bodies (the crash sweep of ``bodies/``)."""
    with Store(root, 1 << 40) as st:
        st.put_folder(b"F", 1, None, None, [], replace=True)
        for u in range(1, n + 1):
            st.put_body(b"F", 1, u, b"x" * 100, fsync=False)
    t = time.perf_counter()
    Store(root, 1 << 40).close()
    took = time.perf_counter() - t
    out(f"{f'open with {n} bodies (sweep)':<44} {took * 1000:9.1f} ms")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", nargs="?", type=int, default=100_000, help="messages in the folder (default 100000)")
    ap.add_argument("--sweep", action="store_true", help="also time opening a store of 100,000 bodies")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        bench(Path(d) / "store", args.n)
        if args.sweep:
            sweep(Path(d) / "s2")


if __name__ == "__main__":
    main()
