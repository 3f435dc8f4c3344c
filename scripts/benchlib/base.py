"""What every step shares: the work directory, Dovecot with the corpus, fresh
mounts, the results table, a step's error handling."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .common import BIG_FOLDER, FOLDER, MB, NEEDLE, REPO, StepError, drop_caches, log, run_cmd
from .corpus import Corpus, chown_tree, generate, warm_files
from .imap import index_folder
from .mounts import MountRun
from .results import Results
from .verify import check_ids, grep_lines, ids_from_files


class BenchBase:
    """State and helpers of a run; the steps are in the subclasses."""

    def __init__(self, args):
        self.a = args
        self.r = Results(args.no_targets)
        self.stack = contextlib.ExitStack()
        self.work = Path(tempfile.mkdtemp(prefix="imapfs-bench-"))
        self.stack.callback(shutil.rmtree, self.work, True)
        os.chmod(self.work, 0o755)
        self.dv = None
        self.corpus: Corpus | None = None
        self.mount_no = 0
        self.counts: dict[str, dict] = {}
        self.profile_summary: str | None = None
        self.listing: list[tuple[bytes, int]] | None = None  # imapfs's .eml names and sizes in FOLDER
        self.timeout = args.timeout or max(120.0, 0.12 * args.n)
        self.src = None
        if args.imapfs_rev:
            self.src = self.work / "imapfs-src"
            self.src.mkdir()
            arch = subprocess.run(["git", "-C", str(REPO), "archive", args.imapfs_rev, "imapfs"],
                                  capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(self.src)], input=arch, check=True)

    # -- helpers
    def step(self, key: str, label: str, target: str = ""):
        """Context manager: a StepError (or any failure) becomes an ERROR row."""
        bench = self

        class _S:
            def __enter__(s):
                log(label)
                return s

            def __exit__(s, et, e, tb):
                if et is None:
                    return False
                if issubclass(et, (KeyboardInterrupt, SystemExit)):
                    return False
                why = str(e) if isinstance(e, StepError) else f"{et.__name__}: {e}"
                log(f"  FAILED: {why}")
                bench.r.error(key, label, why.splitlines()[0][:300], target)
                return True

        return _S()

    def new_mount(self, host_port: int, counting: bool = False) -> MountRun:
        self.mount_no += 1
        mp = self.work / f"mnt{self.mount_no}"
        url = f"imap://{self.dv.user}@127.0.0.1:{host_port}/"
        cf = self.work / f"counts{self.mount_no}.json" if counting else None
        m = MountRun(url, mp, self.dv.password, self.work / f"imapfs-{self.mount_no}.log",
                     self.timeout, counting=cf, src=self.src)
        self.last_log = m.mount.log_path
        return m

    def note_mount(self, m: MountRun, key: str) -> None:
        if m.notes:
            row = self.r.by_key.get(key)
            msg = "; ".join(m.notes)
            log(f"  mount notes: {msg}")
            if row is not None:
                row["note"] = (row["note"] + "; " if row["note"] else "") + msg
            if self.a.keep_logs:
                self.keep_log(m)

    def keep_log(self, m: MountRun) -> None:
        dst = Path(self.a.keep_logs)
        dst.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copy(m.mount.log_path, dst / m.mount.log_path.name)

    def drop(self) -> None:
        """--cold-server: drop the page cache before a cold step (else a no-op)."""
        if not self.a.cold_server:
            return
        if not drop_caches(True) and not getattr(self, "_warned_drop", False):
            self._warned_drop = True
            log("  (could not drop the page cache: not root?)")

    # -- setup
    def setup(self) -> None:
        from tests.support.dovecot import Dovecot
        a = self.a
        self.dv = Dovecot(ssl=False, max_connections=200, start_timeout=30)
        self.stack.callback(self.dv.cleanup)
        md = self.dv.maildir()
        md.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        log(f"generating {a.n} messages (seed {a.seed}) and a {a.big_mb:g} MB message into {md}")
        self.corpus = generate(md, a.n, a.big_mb, a.seed)
        chown_tree(self.dv.home())
        gen_s = time.perf_counter() - t0
        c = self.corpus
        self.r.add("corpus", f"corpus: {a.n} messages in {FOLDER}", c.total, "MB",
                   shown=f"{c.total / MB:.1f} MB",
                   note=f"{len(c.needles)} with NEEDLE; " + ", ".join(f"{k} {v}" for k, v in sorted(c.kinds.items()))
                   + f"; written in {gen_s:.1f} s")
        self.dv.start()
        t0 = time.perf_counter()
        cl = self.dv.client(timeout=self.timeout)
        try:
            ids, sizes = index_folder(cl, FOLDER)
            if a.big_mb > 0:
                big_ids, big_sizes = index_folder(cl, BIG_FOLDER)
                self.big_uid = next(iter(big_sizes))
        finally:
            with contextlib.suppress(Exception):
                cl.logout()
        log(f"  Dovecot indexed in {time.perf_counter() - t0:.1f} s")
        if len(ids) != a.n or set(ids.values()) != set(c.sizes):
            raise StepError(f"Dovecot shows {len(ids)} messages, {a.n} were written")
        for uid, bid in ids.items():
            if sizes[uid] != c.sizes[bid]:
                raise StepError(f"UID {uid}: RFC822.SIZE {sizes[uid]} != {c.sizes[bid]} bytes written")
        c.uid_to_id = ids
        self.uids = sorted(ids)
        if not self.a.cold_server:
            warm_files(self.dv.maildir())
        # The store itself: grep on Dovecot's Maildir must find exactly the needle set.
        d = self.dv.maildir() / ("." + FOLDER)
        dt, cp = run_cmd(["grep", "-rl", NEEDLE, str(d / "cur")], self.timeout)
        check_ids(ids_from_files(grep_lines(cp, "grep on the server's Maildir")), c.needles,
                  "server Maildir")

    # -- what imapfs lists (the floors serve the same names and sizes)
    def capture_listing(self, m: MountRun) -> None:
        """The .eml names and sizes of FOLDER on a live mount (not timed)."""
        _, cp = m.run(["find", str(m.path(FOLDER)), "-mindepth", "1", "-maxdepth", "1", "-name", "*.eml",
                       "-printf", "%f\\0%s\\0"])
        if cp.returncode != 0:
            raise StepError(f"find exited {cp.returncode}: {cp.stderr.decode(errors='replace')[:300]}")
        f = cp.stdout.split(b"\0")
        self.listing = [(name, int(size)) for name, size in zip(f[0:-1:2], f[1::2])]

    def runs_note(self, times: list[float]) -> str:
        if len(times) < 2:
            return ""
        return "; best of " + ", ".join(f"{t:.2f}" for t in times)

