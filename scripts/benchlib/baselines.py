"""What a user would do instead, and the physical limit: raw imaplib, mbsync
pulling the folder, grep on the pulled Maildir."""
from __future__ import annotations

import contextlib
import shutil
import time

from .base import BenchBase
from .common import BIG_FOLDER, FOLDER, MB, NEEDLE, StepError, fmt_s, run_cmd
from .imap import fetch_bodies, fetch_metadata, imap_connect, imap_select, uid_fetch
from .verify import check_ids, grep_lines, ids_from_files


class Baselines(BenchBase):
    """raw imaplib and mbsync, on loopback or through the latency proxy."""

    def imaplib_figures(self, port: int, sfx: str, label_sfx: str) -> None:
        with self.step(f"imaplib_meta{sfx}", f"imaplib SELECT + UID FETCH 1:* metadata{label_sfx}"):
            c = imap_connect("127.0.0.1", port, self.dv.user, self.dv.password, self.timeout)
            try:
                t0 = time.perf_counter()
                imap_select(c, FOLDER)
                n = fetch_metadata(c)
                dt = time.perf_counter() - t0
            finally:
                with contextlib.suppress(Exception):
                    c.logout()
            if n != self.a.n:
                raise StepError(f"metadata for {n} messages, expected {self.a.n}")
            self.r.add(f"imaplib_meta{sfx}", f"imaplib SELECT + UID FETCH 1:* metadata{label_sfx}", dt)
        key, label = f"imaplib_bodies{sfx}", f"imaplib all bodies, batches of 500{label_sfx}"
        with self.step(key, label):
            times = []
            for _ in range(self.a.repeat):
                self.drop()
                c = imap_connect("127.0.0.1", port, self.dv.user, self.dv.password, self.timeout)
                try:
                    t0 = time.perf_counter()
                    imap_select(c, FOLDER)
                    n, nbytes = fetch_bodies(c, self.uids)
                    times.append(time.perf_counter() - t0)
                finally:
                    with contextlib.suppress(Exception):
                        c.logout()
                if n != self.a.n or nbytes != self.corpus.total:
                    raise StepError(f"got {n} bodies / {nbytes} bytes, expected {self.a.n} / {self.corpus.total}")
            dt = min(times)
            self.r.add(key, label, dt, note=f"{nbytes / MB / dt:.0f} MB/s" + self.runs_note(times))
        if self.a.big_mb > 0 and not sfx:
            with self.step("imaplib_big", f"imaplib fetch of the {self.a.big_mb:g} MB message"):
                self.drop()
                c = imap_connect("127.0.0.1", port, self.dv.user, self.dv.password, self.timeout)
                try:
                    imap_select(c, BIG_FOLDER)
                    t0 = time.perf_counter()
                    dat = uid_fetch(c, str(self.big_uid), "(BODY.PEEK[])")
                    dt = time.perf_counter() - t0
                finally:
                    with contextlib.suppress(Exception):
                        c.logout()
                got = sum(len(d[1]) for d in dat if isinstance(d, tuple))
                if got != self.corpus.big_size:
                    raise StepError(f"got {got} bytes, expected {self.corpus.big_size}")
                self.r.add("imaplib_big", f"imaplib fetch of the {self.a.big_mb:g} MB message", got / dt,
                           "MB/s", note=fmt_s(dt))

    def mbsync_figures(self, port: int, sfx: str, label_sfx: str) -> None:
        key = f"mbsync{sfx}"
        label = f"mbsync pull of {FOLDER} into a fresh Maildir{label_sfx}"
        target = None
        with self.step(key, label):
            if not shutil.which("mbsync"):
                raise StepError("mbsync not installed (scripts/setup installs isync)")
            times = []
            for rep in range(self.a.repeat):
                d = self.work / f"mbsync{sfx or '-lo'}-{rep}"
                (d / "mail").mkdir(parents=True)
                pwfile = d / "pass"
                pwfile.write_text(self.dv.password + "\n")
                pwfile.chmod(0o600)
                rc = d / "mbsyncrc"
                # isync 1.4.x keywords (1.5 renamed SSLType to TLSType).  Defaults
                # otherwise, as a user would run it (FSync yes, unlimited pipeline).
                rc.write_text(f"""\
IMAPAccount bench
Host 127.0.0.1
Port {port}
User {self.dv.user}
PassCmd "cat {pwfile}"
SSLType None
AuthMechs LOGIN
Timeout 600

IMAPStore bench-far
Account bench

MaildirStore bench-near
Path {d}/mail/
Inbox {d}/mail/INBOX
SubFolders Verbatim

Channel bench
Far :bench-far:{FOLDER}
Near :bench-near:{FOLDER}
Sync Pull
Create Near
SyncState *
""")
                self.drop()
                dt, cp = run_cmd(["mbsync", "-c", str(rc), "-q", "bench"], self.timeout)
                if cp.returncode != 0:
                    raise StepError(f"mbsync exited {cp.returncode}: "
                                    f"{(cp.stderr or b'').decode(errors='replace').strip()[:300]}")
                target = d / "mail" / FOLDER
                files = [p for sub in ("cur", "new") for p in (target / sub).iterdir()]
                if len(files) != self.a.n:
                    raise StepError(f"mbsync left {len(files)} files, expected {self.a.n}")
                times.append(dt)
            self.r.add(key, label, min(times), note=self.runs_note(times).lstrip("; "))
        gkey, glabel = f"maildir_grep{sfx}", f"grep -rl NEEDLE on the pulled Maildir{label_sfx}"
        if self.r.by_key[key]["status"] == "ERROR" or target is None:
            self.r.skip(gkey, glabel, "mbsync failed")
            return
        with self.step(gkey, glabel):
            dt, cp = run_cmd(["grep", "-rl", NEEDLE, str(target)], self.timeout)
            check_ids(ids_from_files(grep_lines(cp, glabel)), self.corpus.needles, "pulled Maildir")
            # best of 3: the warm baseline the mount's warm grep is held against
            for _ in range(2):
                dt2, cp = run_cmd(["grep", "-rl", NEEDLE, str(target)], self.timeout)
                dt = min(dt, dt2)
            self.r.add(gkey, glabel, dt, note="warm, best of 3")
