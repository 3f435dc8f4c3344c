"""``imapfs prefetch PATH...``: make folders of a mount readable offline.

It works through the mounted filesystem itself: every ``.eml`` under the
given paths that the daemon does not hold yet (``user.imapfs.cached``) is
read once, which the daemon stores in its persistent cache. So it needs no
channel to the daemon, it can be interrupted at any moment, and running it
again resumes where it stopped (cached messages are skipped without a read).
Progress goes to stderr: one updating line on a terminal, a plain line every
few seconds otherwise.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from typing import TextIO

USAGE = "usage: imapfs prefetch PATH... (folders or messages inside an imapfs mount)\n"
CHUNK = 1024 * 1024


def _messages(paths: list[str]) -> Iterator[str]:
    for p in paths:
        if os.path.isfile(p):
            if p.endswith(".eml"):
                yield p
            continue
        for root, dirs, files in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.endswith(".parts"))  # parts are cut from the message
            for f in sorted(files):
                if f.endswith(".eml"):
                    yield os.path.join(root, f)


def _cached(path: str) -> bool:
    try:
        return os.getxattr(path, "user.imapfs.cached") == b"1"
    except OSError:
        return False


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """Count, bytes, rate and ETA; redrawn in place on a terminal, periodic lines otherwise."""

    def __init__(self, total: int, total_bytes: int, out: TextIO, tty: bool) -> None:
        self.total, self.total_bytes = total, total_bytes
        self.done = self.done_bytes = 0
        self.out, self.tty = out, tty
        self.start = time.monotonic()
        self._last = 0.0

    def line(self) -> str:
        elapsed = max(1e-6, time.monotonic() - self.start)
        rate = self.done_bytes / elapsed
        left = self.total_bytes - self.done_bytes
        eta = _fmt_time(left / rate) if rate > 0 and left > 0 else "--"
        return (f"prefetch: {self.done}/{self.total} messages, {_fmt_bytes(self.done_bytes)} of "
                f"{_fmt_bytes(self.total_bytes)}, {_fmt_bytes(rate)}/s, ETA {eta}")

    def update(self, messages: int, nbytes: int, force: bool = False) -> None:
        self.done += messages
        self.done_bytes += nbytes
        now = time.monotonic()
        if self.tty and (force or now - self._last >= 0.2):
            self.out.write("\r" + self.line().ljust(78))
            self.out.flush()
            self._last = now
        elif not self.tty and (force or now - self._last >= 5.0):
            self.out.write(self.line() + "\n")
            self.out.flush()
            self._last = now

    def finish(self, note: str) -> None:
        if self.tty:
            self.out.write("\r" + self.line().ljust(78) + "\n")
        else:
            self.out.write(self.line() + "\n")
        self.out.write(f"prefetch: {note}\n")
        self.out.flush()


def main(argv: list[str], out: TextIO = sys.stderr) -> int:
    try:
        return _main(argv, out)
    except KeyboardInterrupt:  # also while still looking for what to fetch
        out.write("\nprefetch: interrupted; run the same command again to continue\n")
        return 130


def _main(argv: list[str], out: TextIO) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        out.write(USAGE)
        return 0 if argv else 2
    for p in argv:
        if not os.path.exists(p):
            out.write(f"imapfs prefetch: {p} does not exist\n")
            return 2
    todo: list[tuple[str, int]] = []
    skipped = 0
    for path in _messages(argv):
        if _cached(path):
            skipped += 1
            continue
        try:
            todo.append((path, os.stat(path).st_size))
        except OSError:
            continue
    progress = Progress(len(todo), sum(s for _, s in todo), out, out.isatty())
    if skipped:
        out.write(f"prefetch: {skipped} messages already cached\n")
    failed = 0
    try:
        for path, _size in todo:
            try:
                with open(path, "rb") as f:
                    while True:
                        b = f.read(CHUNK)
                        if not b:
                            break
                        progress.update(0, len(b))
            except OSError as e:
                failed += 1
                if failed <= 10:
                    out.write(f"\nprefetch: {path}: {e.strerror}\n")
            progress.update(1, 0)
    except KeyboardInterrupt:
        progress.finish("interrupted; run the same command again to continue")
        return 130
    progress.finish(f"done, {failed} failed" if failed else "done")
    return 1 if failed else 0
