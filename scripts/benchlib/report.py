"""The ratios the issues ask for, the final report (text, JSON, Markdown) and the
py-spy profile summary."""
from __future__ import annotations

import collections
import json
import os
import re
from pathlib import Path

from .base import BenchBase


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
        ratio("warm grep / Maildir grep", "grep_warm", "maildir_grep", "<= 4")
        ratio(f"{self.a.big_mb:g} MB read rate / imaplib rate", "cat_big", "imaplib_big", ">= 0.5")
        ratio("cold grep / imaplib all bodies", "grep_cold", "imaplib_bodies")
        ratio("cold ls -l / imaplib metadata", "ls", "imaplib_meta")
        ratio(f"cold grep / mbsync pull @ {self.a.rtt:g} ms", "grep_cold_rtt", "mbsync_rtt", "<= 1.0")
        ratio(f"cold grep @ {self.a.rtt:g} ms / imaplib all bodies @ {self.a.rtt:g} ms",
              "grep_cold_rtt", "imaplib_bodies_rtt")
        return out

    def report(self) -> int:
        a, r = self.a, self.r
        info = self.info
        info["loadavg_end"] = os.getloadavg()[0]
        ratios = [] if a.big else self.ratios()
        print()
        if a.big:
            print(f"imapfs benchmark, --big: {a.big_n} messages in one folder, seed={a.seed}")
        else:
            print(f"imapfs benchmark: N={a.n}, seed={a.seed}, rtt={'skipped' if a.skip_rtt else f'{a.rtt:g} ms'}, "
              f"server store {'dropped from the page cache before cold steps' if a.cold_server else 'in the page cache'}")
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
        if self.profile_summary:
            print()
            print(self.profile_summary)
        if a.json:
            Path(a.json).write_text(json.dumps({
                "args": vars(a), "machine": info, "rows": r.rows,
                "ratios": [{"name": n, "value": v, "target": t} for n, v, t in ratios],
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
