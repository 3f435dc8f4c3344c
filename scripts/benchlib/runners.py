"""The whole run, in order; its exit status."""
from __future__ import annotations

import contextlib
import subprocess
import time

from .baselines import Baselines
from .common import FOLDER, REPO, StepError, log, machine_info
from .floors import FLOOR_KEYS, Floors
from .imap import imap_connect
from .imapfs_steps import ImapfsSteps
from .proxy import LatencyProxy
from .report import Report


class Bench(Baselines, ImapfsSteps, Floors, Report):
    """One benchmark run (see scripts/bench.py for what it does, in order)."""

    def run(self) -> int:
        a, r = self.a, self.r
        info = machine_info()
        if a.imapfs_rev:
            info["imapfs_commit"] = subprocess.run(
                ["git", "-C", str(REPO), "rev-parse", "--short", a.imapfs_rev + "^{commit}"],
                capture_output=True, text=True).stdout.strip() + f" (--imapfs-rev {a.imapfs_rev})"
        self.info = info
        log(f"machine: {info.get('nproc')} cores, {info.get('cpu')}, kernel {info.get('kernel')}")
        if a.big:
            self.huge()
            return self.report()
        try:
            self.setup()
        except StepError as e:
            r.error("corpus", "corpus", str(e))
            return self.report()
        port = self.dv.port
        if a.rtt_only:
            for k in ("imaplib_meta", "imaplib_bodies", "imaplib_big", "mbsync", "maildir_grep", "ls",
                      "ls_warm", "grep_cold", "grep_cold_raw", "grep_warm", "cat_big", "rss", *FLOOR_KEYS):
                r.skip(k, f"{k} (loopback)", "--rtt-only")
        else:
            self.imaplib_figures(port, "", "")
            self.mbsync_figures(port, "", "")
            self.imapfs_ls(port, "", "")
            self.imapfs_grep(port, "", "")
            self.imapfs_grep_raw(port)
        if a.rtt_only:
            pass
        elif not a.no_count and not a.diag_rtt:
            self.imapfs_counts(port)
        elif not a.diag_rtt:
            for k, l in (("fuse_ls_cold", "FUSE requests, cold ls -l (instrumented mount)"),
                         ("fuse_ls_warm", "FUSE requests, warm ls -l (instrumented mount)"),
                         ("fuse_grep_cold", "FUSE requests, cold grep (instrumented mount)"),
                         ("fuse_grep_warm", "FUSE requests, warm grep (instrumented mount)")):
                r.skip(k, l, "--no-count")
        if not a.rtt_only:
            self.floors(port)
        rtt = f" @ {a.rtt:g} ms RTT"
        if a.skip_rtt:
            for k, l, t in (("imaplib_meta_rtt", "imaplib SELECT + UID FETCH 1:* metadata" + rtt, ""),
                            ("imaplib_bodies_rtt", "imaplib all bodies, batches of 500" + rtt, ""),
                            ("mbsync_rtt", f"mbsync pull of {FOLDER} into a fresh Maildir" + rtt, ""),
                            ("maildir_grep_rtt", "grep -rl NEEDLE on the pulled Maildir" + rtt, ""),
                            ("ls_rtt", f"imapfs ls -l {FOLDER} (cold, fresh mount)" + rtt, ""),
                            ("ls_warm_rtt", f"imapfs ls -l {FOLDER} (warm, same mount)" + rtt, ""),
                            ("grep_cold_rtt", "imapfs grep -rl NEEDLE (cold, fresh mount)" + rtt,
                             "<= 1.0 x mbsync pull"),
                            ("rss_rtt", "imapfs daemon peak RSS (VmHWM)" + rtt, "")):
                r.skip(k, l, "--skip-rtt", t)
        else:
            proxy = LatencyProxy("127.0.0.1", port, a.rtt)
            self.stack.callback(proxy.stop)
            with self.step("proxy", "latency proxy"):
                self.check_proxy(proxy)
            self.imaplib_figures(proxy.port, "_rtt", rtt)
            self.mbsync_figures(proxy.port, "_rtt", rtt)
            self.imapfs_ls(proxy.port, "_rtt", rtt)
            self.imapfs_grep(proxy.port, "_rtt", rtt)
            if a.diag_rtt and not a.no_count:
                self.imapfs_counts(proxy.port, rtt)
        if a.skip_big:
            r.skip("huge_ls", f"imapfs ls of {a.big_n} messages in one folder (fresh mount)", "--skip-big")
            r.skip("huge_mem", "imapfs memory per message after ls (VmRSS growth / N)", "--skip-big",
                   "<= 1536 B")
        else:
            self.dv.stop()  # free the CPU for the 100k run
            self.huge()
        return self.report()

    def check_proxy(self, proxy: LatencyProxy) -> None:
        """The proxy really adds the RTT: a NOOP takes >= rtt."""
        c = imap_connect("127.0.0.1", proxy.port, self.dv.user, self.dv.password, 30)
        try:
            t0 = time.perf_counter()
            for _ in range(5):
                c.noop()
            per = (time.perf_counter() - t0) / 5
        finally:
            with contextlib.suppress(Exception):
                c.logout()
        log(f"  latency proxy on port {proxy.port}: NOOP round trip {per * 1000:.1f} ms")
        if per * 1000 < self.a.rtt * 0.9:
            raise StepError(f"proxy adds only {per * 1000:.1f} ms, wanted {self.a.rtt} ms")
