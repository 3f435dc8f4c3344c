"""The ratios the issues ask for, the final report (text, JSON, Markdown) and the
py-spy profile summary."""
from __future__ import annotations

import collections
import json
import os
import re
from pathlib import Path

from .base import BenchBase
from .common import MB, fmt_s


def summarize_profile(path: Path, top: int = 25) -> str:
    """Self and inclusive time per function from py-spy's collapsed stacks."""
    self_t: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        n = int(n)
        frames = stack.split(";")
        if frames and frames[0].startswith(("thread ", "process ")):
            threads[frames[0]] += n
            frames = frames[1:]
        frames = [re.sub(r":\d+\)$", ")", f) for f in frames]
        total += n
        if frames:
            self_t[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        return "profile: no samples"
    lines = [f"py-spy profile of the daemon during the cold grep ({total} samples, all threads):",
             "  by thread:"]
    for t, n in threads.most_common(8):
        lines.append(f"    {100 * n / total:5.1f}%  {t}")
    lines.append("  self time (top):")
    for f, n in self_t.most_common(top):
        lines.append(f"    {100 * n / total:5.1f}%  {f}")
    lines.append("  inclusive time, imapfs functions (top):")
    for f, n in [(f, n) for f, n in incl.most_common() if "(imapfs/" in f][:top]:
        lines.append(f"    {100 * n / total:5.1f}%  {f}")
    lines.append("  inclusive time, all (top):")
    for f, n in incl.most_common(top):
        lines.append(f"    {100 * n / total:5.1f}%  {f}")
    return "\n".join(lines)


class Report(BenchBase):
    """The ratios and the final report."""

    def ratios(self) -> list[tuple[str, float | None, str]]:
        v = self.r.value
        out = []

        def ratio(name, num, den, target=""):
            a_, b_ = v(num), v(den)
            out.append((name, (a_ / b_) if a_ and b_ else None, target))

        ratio("cold grep / mbsync pull", "grep_cold", "mbsync", "<= 0.6")
        ratio("cold grep --exclude-dir='*.parts' / mbsync pull", "grep_cold_raw", "mbsync")
        ratio("warm grep / Maildir grep", "grep_warm", "maildir_grep", "<= 4")
        ratio(f"{self.a.big_mb:g} MB read rate / imaplib rate", "cat_big", "imaplib_big", ">= 0.5")
        ratio("cold grep / imaplib all bodies", "grep_cold", "imaplib_bodies")
        ratio("cold ls -l / imaplib metadata", "ls", "imaplib_meta")
        ratio(f"cold grep / mbsync pull @ {self.a.rtt:g} ms", "grep_cold_rtt", "mbsync_rtt", "<= 1.0")
        ratio(f"cold grep @ {self.a.rtt:g} ms / imaplib all bodies @ {self.a.rtt:g} ms",
              "grep_cold_rtt", "imaplib_bodies_rtt")
        return out

    def targets(self) -> list[dict]:
        """Issue 12's targets table: each figure (mostly a ratio) beside its floor."""
        v, a = self.r.value, self.a

        def div(num, den):
            x, y = (v(num) if isinstance(num, str) else num), (v(den) if isinstance(den, str) else den)
            return x / y if x and y else None

        def f2(x, unit=""):
            return "-" if x is None else (fmt_s(x) if unit == "s" else f"{x:.2f}")

        def judge(x, op, lim):
            return "" if x is None else ("PASS" if (x <= lim if op == "<=" else x >= lim) else "FAIL")

        def floors(num, den, unit=""):
            got = [(name, div(f"floor_{k}_{num}", den) if den else v(f"floor_{k}_{num}"))
                   for k, name in (("py", "pyfuse3"), ("c", "C"))]
            if all(x is None for _, x in got):
                return "-"
            return ", ".join(f"{name} {f2(x, unit)}" for name, x in got)

        rows = []

        def row(figure, now, floor, target, result):
            rows.append({"figure": figure, "now": now, "floor": floor, "target": target, "result": result})

        x = div("grep_cold", "mbsync")
        row(f"cold grep -r of {a.n} / mbsync pull", f2(x), floors("grep_cold", "mbsync"), "<= 0.6",
            judge(x, "<=", 0.6))
        x = div("grep_cold_rtt", "mbsync_rtt")
        row(f"  the same at {a.rtt:g} ms RTT", f2(x), "-", "<= 1.0", judge(x, "<=", 1.0))
        x = div("grep_warm", "maildir_grep")
        row("warm grep -r / Maildir grep", f2(x), floors("grep_warm", "maildir_grep"), "<= 4",
            judge(x, "<=", 4))
        ls, fl = v("ls"), v("floor_py_ls")
        ratio = div(ls, fl)
        now = "-" if ls is None else fmt_s(ls) + (f" ({ratio:.2f}x pyfuse3)" if ratio else "")
        ok = judge(ls, "<=", 1.0)
        if ok and ratio is not None:
            ok = "PASS" if ok == "PASS" and ratio <= 1.5 else "FAIL"
        row(f"cold ls -l of {a.n}", now, floors("ls", None, "s"), "<= 1 s and <= 1.5x pyfuse3", ok)
        x = div("rsync_ax", "rsync_a")
        ra = v("rsync_a")
        row(f"no-change rsync -aX / rsync -a ({min(a.rsync_n, a.n)} .eml)", f2(x),
            "-" if ra is None else f"rsync -a {fmt_s(ra)}", "<= 2", judge(x, "<=", 2))
        x = div("cat_big", "imaplib_big")
        row(f"{a.big_mb:g} MB read / imaplib rate", f2(x), "-", ">= 0.5", judge(x, ">=", 0.5))
        rss, per = v("rss"), v("huge_mem")
        now = ("-" if rss is None else f"{rss / MB:.0f} MB") + " / " + ("-" if per is None else f"{per:.0f} B")
        res = (judge(rss, "<=", 250 * MB), judge(per, "<=", 1536))
        row(f"peak RSS / memory per message at {a.big_n}", now, "-", "<= 250 MB / <= 1536 B",
            "FAIL" if "FAIL" in res else ("PASS" if res == ("PASS", "PASS") else ""))
        x = div("prefetch", "mbsync")
        pf = self.r.by_key.get("prefetch")
        if pf is not None and "INCOMPLETE" in pf["note"]:  # fast because it left messages out
            row(f"imapfs prefetch of {a.n} / mbsync pull", f2(x) + " (incomplete)", "-", "<= 1", "FAIL")
        else:
            row(f"imapfs prefetch of {a.n} / mbsync pull", f2(x), "-", "<= 1", judge(x, "<=", 1.0))
        return rows

    def report(self) -> int:
        a, r = self.a, self.r
        info = self.info
        info["loadavg_end"] = os.getloadavg()[0]
        ratios = [] if a.big else self.ratios()
        targets = [] if a.big else self.targets()
        print()
        if a.big:
            print(f"imapfs benchmark, --big: {a.big_n} messages in one folder, seed={a.seed}")
        else:
            store = "dropped from the page cache before cold steps" if a.cold_server else "in the page cache"
            print(f"imapfs benchmark: N={a.n}, seed={a.seed}, rtt={'skipped' if a.skip_rtt else f'{a.rtt:g} ms'}, "
                  f"server store {store}")
        print(f"machine: nproc {info.get('nproc')}, {info.get('cpu')}, kernel {info.get('kernel')}, "
              f"{info.get('dovecot') and 'Dovecot ' + info.get('dovecot').split()[0]}, {info.get('mbsync')}, "
              f"imapfs {info.get('imapfs_commit')}, load average {info['loadavg_start']:.2f} at start, "
              f"{info['loadavg_end']:.2f} at end")
        print()
        print(r.table())
        if ratios:
            print()
            print("ratios:")
            for name, val, target in ratios:
                shown = f"{val:.2f}" if val is not None else "-"
                ok = ""
                if val is not None and target:
                    lim = float(target.split()[-1])
                    ok = "PASS" if (val <= lim if target.startswith("<=") else val >= lim) else "FAIL"
                print(f"  {name:<52} {shown:>8}  {target:<7} {ok}")
        if targets:
            print()
            print("targets of issue 12, each figure beside its floor (trivial filesystems serving imapfs's "
                  ".eml names and sizes):")
            w = [max(len(t[k]) for t in targets) for k in ("figure", "now", "floor", "target")]
            for t in [{"figure": "figure", "now": "now", "floor": "floor", "target": "target", "result": "result"},
                      *targets]:
                print(f"  {t['figure']:<{w[0]}}  {t['now']:>{w[1]}}  {t['floor']:<{w[2]}}  "
                      f"{t['target']:<{w[3]}}  {t['result']}".rstrip())
        if self.profile_summary:
            print()
            print(self.profile_summary)
        if a.json:
            Path(a.json).write_text(json.dumps({
                "args": vars(a), "machine": info, "rows": r.rows,
                "ratios": [{"name": n, "value": v, "target": t} for n, v, t in ratios],
                "targets": targets,
                "fuse_requests": self.counts, "corpus_kinds": self.corpus.kinds if self.corpus else None,
                "profile": self.profile_summary, "markdown": r.markdown(),
            }, indent=2, default=str))
        if a.markdown:
            Path(a.markdown).write_text(r.markdown() + "\n")
        if r.errors:
            print(f"\n{len(r.errors)} step(s) failed:", *r.errors, sep="\n  ")
            return 2
        missed = r.missed()
        if missed:
            print(f"\n{len(missed)} target(s) missed:", *(m["label"] for m in missed), sep="\n  ")
            return 0 if a.no_targets else 1
        return 0
