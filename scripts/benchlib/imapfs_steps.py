"""imapfs itself: cold and warm ls -l and grep on fresh mounts, the big message,
peak RSS, FUSE request counts (instrumented mounts, py-spy), the 100k listing."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .base import BenchBase
from .common import BIG_FOLDER, FOLDER, HUGE_FOLDER, MB, NEEDLE, StepError, fmt_s, log, proc_cpu
from .corpus import chown_tree, generate_small, maildir_folder
from .imap import index_folder
from .mounts import MountRun
from .report import summarize_profile
from .verify import check_ids, grep_lines, ids_from_mount_paths


class ImapfsSteps(BenchBase):
    """The imapfs figures; each "cold" one is on a fresh mount with its own cache directory."""

    def imapfs_ls(self, port: int, sfx: str, label_sfx: str) -> None:
        key, label = f"ls{sfx}", f"imapfs ls -l {FOLDER} (cold, fresh mount){label_sfx}"
        target = "<= 1.0 s" if not sfx else ""
        mounts = []
        with self.step(key, label, target):
            times = []
            for _ in range(self.a.repeat):
                self.drop()
                m = self.new_mount(port)
                mounts.append(m)
                with m:
                    dt, cp = m.run(["ls", "-l", str(m.path(FOLDER))])
                    if cp.returncode != 0:
                        raise StepError(f"ls exited {cp.returncode}: {cp.stderr.decode(errors='replace')[:300]}")
                    n = sum(1 for l in cp.stdout.splitlines() if l.endswith(b".eml"))
                    if n != self.a.n:
                        raise StepError(f"ls -l showed {n} .eml files, expected {self.a.n}")
                    dt2, _ = m.run(["ls", "-l", str(m.path(FOLDER))])
                    if not sfx and self.listing is None:  # for the floors; after the timed steps
                        try:
                            self.capture_listing(m)
                        except StepError as e:
                            log(f"  could not copy the listing for the floors: {e}")
                times.append(dt)
            dt = min(times)
            ok = dt <= 1.0 if not sfx else None
            self.r.add(key, label, dt, target=target, ok=ok, note=self.runs_note(times).lstrip("; "))
            self.r.add(f"ls_warm{sfx}", f"imapfs ls -l {FOLDER} (warm, same mount){label_sfx}", dt2)
        for m in mounts:
            self.note_mount(m, key)

    def imapfs_grep(self, port: int, sfx: str, label_sfx: str) -> None:
        a, r = self.a, self.r
        key, label = f"grep_cold{sfx}", f"imapfs grep -rl NEEDLE (cold, fresh mount){label_sfx}"
        mbs = r.value(f"mbsync{sfx}")
        factor = 0.6 if not sfx else 1.0
        target = f"<= {factor} x mbsync pull" + (f" = {fmt_s(factor * mbs)}" if mbs else "")
        mounts = []
        with self.step(key, label, target):
            times = []
            for rep in range(a.repeat):
                last = rep == a.repeat - 1
                self.drop()
                m = self.new_mount(port)
                mounts.append(m)
                with m:
                    # --line-buffered: if it times out, what it printed tells how far it got
                    cmd_grep = ["grep", "-rl", "--line-buffered", "--include=*.eml", NEEDLE,
                                str(m.path(FOLDER))]
                    try:
                        dt, cp = m.run(cmd_grep)
                    except StepError as e:
                        raise StepError(str(e) + self.grep_progress(e, m)) from None
                    hits_note = check_ids(ids_from_mount_paths(grep_lines(cp, label), self.corpus.uid_to_id,
                                                               m.path(FOLDER)),
                                          self.corpus.needles, "mount (cold)")
                    times.append(dt)
                    if not last:
                        continue
                    dt = min(times)
                    r.add(key, label, dt, target=target, ok=(dt <= factor * mbs) if mbs else None,
                          note="; ".join(x for x in (self.runs_note(times).lstrip("; "), hits_note) if x))
                    if not sfx:
                        self.imapfs_after_grep(m, cmd_grep)
                    rss = m.status("VmHWM")
                    if sfx:
                        r.add(f"rss{sfx}", f"imapfs daemon peak RSS (VmHWM){label_sfx}", rss, "MB")
                    else:
                        r.add("rss", "imapfs daemon peak RSS (VmHWM)", rss, "MB", target="<= 250 MB",
                              ok=(rss <= 250 * MB) if rss else None,
                              note="after cold grep, warm grep and the big cat")
        for m in mounts:
            self.note_mount(m, key)

    def imapfs_grep_raw(self, port: int) -> None:
        """The cold grep of the messages alone (``--exclude-dir='*.parts'``): what the same
        mount costs when grep is told to skip the decoded parts. Shown beside the target,
        not judged: the target is the grep that enters them."""
        r = self.r
        key, label = "grep_cold_raw", "imapfs grep -rl NEEDLE --exclude-dir='*.parts' (cold, fresh mount)"
        mbs = r.value("mbsync")
        with self.step(key, label):
            self.drop()
            m = self.new_mount(port)
            with m:
                cmd = ["grep", "-rl", "--line-buffered", "--include=*.eml", "--exclude-dir=*.parts", NEEDLE,
                       str(m.path(FOLDER))]
                dt, cp = m.run(cmd)
                check_ids(ids_from_mount_paths(grep_lines(cp, label), self.corpus.uid_to_id, m.path(FOLDER)),
                          self.corpus.needles, "mount (cold, parts excluded)")
            r.add(key, label, dt, note=(f"{dt / mbs:.2f} x mbsync pull; " if mbs else "")
                  + "the parts' decoded text is not searched")
            self.note_mount(m, key)

    def grep_progress(self, e: StepError, m: MountRun) -> str:
        """How far a timed-out grep got: the needle hits it printed are spread evenly by UID."""
        out = getattr(e, "partial_stdout", b"") or b""
        lines = [l for l in out.decode("utf-8", "surrogateescape").split("\n")[:-1] if l]  # whole lines
        try:
            hits = ids_from_mount_paths(lines, self.corpus.uid_to_id, m.path(FOLDER)).ids
        except StepError:
            return ""
        if not hits:
            return "; no needle hit printed yet"
        # The needle messages are a random 1 %, so the share of them printed is
        # the share of the folder read, whatever order grep walks it in (GNU
        # grep's fts sorts a directory of more than 10,000 entries by inode).
        frac = len(hits) / len(self.corpus.needles)
        t = getattr(e, "timeout", 0)
        return (f"; had printed {len(hits)} of {len(self.corpus.needles)} hits: about "
                f"{100 * frac:.0f}% through, so roughly {t / frac:.0f} s for the whole folder")

    def imapfs_after_grep(self, m: MountRun, cmd_grep: list[str]) -> None:
        """Warm grep and the big message's cat, on the mount that just did the cold grep."""
        a, r = self.a, self.r
        wkey, wlabel = "grep_warm", "imapfs grep -rl NEEDLE (warm, same mount)"
        mg = r.value("maildir_grep")
        wtarget = "<= 4 x Maildir grep" + (f" = {fmt_s(4 * mg)}" if mg else "")
        with self.step(wkey, wlabel, wtarget):
            times = []
            for _ in range(3):
                dt, cp = m.run(cmd_grep)
                check_ids(ids_from_mount_paths(grep_lines(cp, wlabel), self.corpus.uid_to_id, m.path(FOLDER)),
                          self.corpus.needles, "mount (warm)")
                times.append(dt)
            dt = min(times)
            r.add(wkey, wlabel, dt, target=wtarget, ok=(dt <= 4 * mg) if mg else None,
                  note="best of 3: " + ", ".join(f"{t:.2f}" for t in times))
        if a.big_mb <= 0:
            return
        bkey, blabel = "cat_big", f"imapfs cat of the {a.big_mb:g} MB message"
        rate0 = r.value("imaplib_big")
        btarget = ">= 50% of imaplib rate" + (f" = {rate0 / 2 / MB:.0f} MB/s" if rate0 else "")
        with self.step(bkey, blabel, btarget):
            _, cp = m.run(["find", str(m.path(BIG_FOLDER)), "-maxdepth", "1", "-name", "*.eml"])
            names = [n for n in cp.stdout.decode("utf-8", "surrogateescape").split("\n") if n]
            if len(names) != 1:
                raise StepError(f"{BIG_FOLDER} lists {len(names)} messages, expected 1")
            self.drop()
            dt, cp = m.run(["cat", names[0]], capture=False)
            if cp.returncode != 0:
                raise StepError(f"cat exited {cp.returncode}: {cp.stderr.decode(errors='replace')[:300]}")
            _, cp = m.run(["stat", "-c", "%s", names[0]])
            if int(cp.stdout) != self.corpus.big_size:
                raise StepError(f"size {cp.stdout!r} != {self.corpus.big_size}")
            rate = self.corpus.big_size / dt
            r.add(bkey, blabel, rate, "MB/s", target=btarget,
                  ok=(rate >= rate0 / 2) if rate0 else None, note=fmt_s(dt))

    def measured(self, m: MountRun, argv: list[str]) -> tuple[float, subprocess.CompletedProcess, dict]:
        """Run argv on the mount; also FUSE request counts and CPU seconds of everyone."""
        before = m.counts() or {}
        d0, dv0 = proc_cpu(m.pid), self.dovecot_cpu()
        c0 = os.times()
        dt, cp = m.run(argv)
        c1 = os.times()
        d1, dv1 = proc_cpu(m.pid), self.dovecot_cpu()
        after = m.counts() or {}
        info = {
            "wall_s": dt,
            "requests": {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)},
            "cpu_s": {"daemon_user": d1[0] - d0[0], "daemon_sys": d1[1] - d0[1],
                      "client": (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system),
                      "dovecot": dv1 - dv0},
        }
        return dt, cp, info

    def dovecot_cpu(self) -> float:
        """CPU seconds of every process in Dovecot's session (imap, auth, master...)."""
        sid = self.dv.proc.pid if self.dv and self.dv.proc else None
        if sid is None:
            return 0.0
        total = 0.0
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[3]) == sid:  # fields[3] = session id (field 6)
                    total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                continue
        return total

    def imapfs_counts(self, port: int, where: str = "") -> None:
        """Instrumented mounts: FUSE requests and CPU per ls/grep; py-spy on the cold grep."""
        a, r = self.a, self.r
        n = a.n

        def show(key, label, info, extra=""):
            label += where
            ops = {k: v for k, v in info["requests"].items() if k != "read_bytes"}
            total = sum(ops.values())
            parts = ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1]))
            cpu = info["cpu_s"]
            r.add(key, label, total, "", shown=f"{total} ({total / n:.1f}/msg)",
                  note=f"{parts}; wall {fmt_s(info['wall_s'])}{extra}; CPU s: daemon "
                       f"{cpu['daemon_user']:.2f} user + {cpu['daemon_sys']:.2f} sys, "
                       f"client {cpu['client']:.2f}, dovecot {cpu['dovecot']:.2f}")
            self.counts[key] = info

        mounts = []
        with self.step("fuse_ls_cold", "FUSE requests, cold ls -l (instrumented mount)"):
            self.drop()
            m = self.new_mount(port, counting=True)
            mounts.append(m)
            with m:
                argv = ["ls", "-l", str(m.path(FOLDER))]
                _, _, cold = self.measured(m, argv)
                _, _, warm = self.measured(m, argv)
            show("fuse_ls_cold", "FUSE requests, cold ls -l (instrumented mount)", cold)
            show("fuse_ls_warm", "FUSE requests, warm ls -l (instrumented mount)", warm)
        with self.step("fuse_grep_cold", "FUSE requests, cold grep (instrumented mount)"):
            self.drop()
            m = self.new_mount(port, counting=True)
            mounts.append(m)
            with m:
                argv = ["grep", "-rl", "--include=*.eml", NEEDLE, str(m.path(FOLDER))]
                spy = self.start_pyspy(m.pid) if a.profile else None
                try:
                    _, cp, cold = self.measured(m, argv)
                finally:
                    if spy is not None:
                        self.stop_pyspy(spy)
                grep_lines(cp, "instrumented cold grep")
                _, cp, warm = self.measured(m, argv)
            show("fuse_grep_cold", "FUSE requests, cold grep (instrumented mount)", cold,
                 " under py-spy" if spy is not None else "")
            show("fuse_grep_warm", "FUSE requests, warm grep (instrumented mount)", warm)
        for m in mounts:
            self.note_mount(m, "fuse_grep_cold")

    def start_pyspy(self, pid: int):
        exe = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
        if not exe:
            log("  py-spy not found (pip install py-spy into .venv): no profile")
            return None
        out = Path(self.a.profile)
        out.mkdir(parents=True, exist_ok=True)
        self.profile_raw = out / "cold-grep.folded"
        argv = [exe, "record", "-p", str(pid), "--format", "raw", "-o", str(self.profile_raw),
                "--rate", "200", "--threads", "--nonblocking"]
        if self.a.profile_idle:
            argv.append("--idle")
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        time.sleep(1.0)  # let it attach
        return p

    def stop_pyspy(self, p) -> None:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if getattr(self, "profile_raw", None) and self.profile_raw.exists():
            self.profile_summary = summarize_profile(self.profile_raw)
            (self.profile_raw.parent / "cold-grep-summary.txt").write_text(self.profile_summary)
        else:
            self.profile_summary = ("py-spy wrote no profile: "
                                    + (p.stderr.read() or b"").decode(errors="replace")[-500:])

    # -- the 100k listing
    def huge(self) -> None:
        from tests.support.dovecot import Dovecot
        a, r = self.a, self.r
        n = a.big_n
        key, label = "huge_ls", f"imapfs ls of {n} messages in one folder (fresh mount)"
        with self.step(key, label):
            dv = Dovecot(ssl=False, start_timeout=30)
            try:
                md = dv.maildir()
                md.mkdir(parents=True, exist_ok=True)
                maildir_folder(md, "INBOX")
                t0 = time.perf_counter()
                total = generate_small(md, n, a.seed)
                chown_tree(dv.home())
                log(f"  wrote {n} small messages ({total / MB:.0f} MB) in {time.perf_counter() - t0:.1f} s")
                dv.start()
                t0 = time.perf_counter()
                cl = dv.client(timeout=max(600, self.timeout))
                try:
                    ids, _ = index_folder(cl, HUGE_FOLDER)
                finally:
                    with contextlib.suppress(Exception):
                        cl.logout()
                log(f"  Dovecot indexed in {time.perf_counter() - t0:.1f} s")
                if len(ids) != n:
                    raise StepError(f"Dovecot shows {len(ids)} messages, expected {n}")
                old_dv, self.dv = self.dv, dv
                try:
                    m = self.new_mount(dv.port)
                finally:
                    self.dv = old_dv
                with m:
                    # the mount is up and has LISTed folders; nothing of Huge is known yet
                    _, cp = m.run(["ls", str(m.path())])
                    rss0 = m.status("VmRSS")
                    dt, cp = m.run(["sh", "-c", 'ls "$1" | grep -c "[.]eml$"', "sh", str(m.path(HUGE_FOLDER))],
                                   timeout=max(600, self.timeout))
                    count = int(cp.stdout.strip() or 0)
                    rss1 = m.status("VmRSS")
                    dt2, cp = m.run(["sh", "-c", 'ls -l "$1" | grep -c "[.]eml$"', "sh", str(m.path(HUGE_FOLDER))],
                                    timeout=max(600, self.timeout))
                    rss2 = m.status("VmRSS")
                    hwm = m.status("VmHWM")
                count2 = int(cp.stdout.strip() or 0)
                if count != n or count2 != n:
                    raise StepError(f"ls listed {count} and ls -l {count2} .eml names, expected {n}")
                r.add(key, label, dt, note=f"ls -l {fmt_s(dt2)}")
                per = (rss1 - rss0) / n if rss0 and rss1 else None
                per2 = (rss2 - rss0) / n if rss0 and rss2 else None
                r.add("huge_mem", "imapfs memory per message after ls (VmRSS growth / N)", per, "B",
                      shown=f"{per:.0f} B" if per is not None else "-", target="<= 1536 B",
                      ok=(per <= 1536) if per is not None else None,
                      note=(f"after ls -l {per2:.0f} B; " if per2 is not None else "")
                      + f"RSS {rss0 / MB:.0f} -> {rss1 / MB:.0f} MB, peak {hwm / MB:.0f} MB")
                self.note_mount(m, key)
            finally:
                dv.cleanup()

