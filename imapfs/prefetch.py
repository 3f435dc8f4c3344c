"""``imapfs prefetch PATH...``: make folders of a mount readable offline.

The daemon does the work (``imapfs.bulk``): it fetches the messages its disk
cache lacks in batches, straight into that cache. This command only asks it
to, through the mount itself, and shows the progress the daemon reads back
from its cache, so "done" means every message is on disk. The channel is
three unlisted xattrs, read with getxattr so that read-only mounts work too
(docs/offline.md, "Bulk prefetch"):

* ``user.imapfs.prefetch.start`` on a folder starts (or joins) the jobs of
  that folder and its sub-folders; on a ``.eml`` file, adds that message to
  its folder's job;
* ``user.imapfs.prefetch`` answers their progress as ``key value`` lines;
* ``user.imapfs.prefetch.stop`` stops them (Ctrl-C here).

So the command imports nothing of imapfs, it can be interrupted at any
moment, and running it again resumes where it stopped (what is on disk is
not fetched again). A job nobody asks about for a minute stops by itself.
Progress goes to stderr: one updating line on a terminal, a plain line every
few seconds otherwise. Exit status: 0 done, 1 some messages could not be
stored (each named), 2 bad arguments, 130 interrupted.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import TextIO

USAGE = "usage: imapfs prefetch PATH... (folders or messages inside an imapfs mount)\n"
PROGRESS = "user.imapfs.prefetch"
START = "user.imapfs.prefetch.start"
STOP = "user.imapfs.prefetch.stop"
POLL_TTY = 0.2  # seconds between progress questions on a terminal
POLL = 1.0  # otherwise
NUMBERS = ("folders", "finished", "counting", "messages", "cached", "total", "done", "bytes", "done_bytes",
           "failed")


class NotAMount(Exception):
    """A path the daemon does not answer for."""


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

    def set(self, done: int, done_bytes: int, total: int, total_bytes: int, force: bool = False) -> None:
        """The daemon's figures (absolute: they come from its cache)."""
        self.done, self.done_bytes, self.total, self.total_bytes = done, done_bytes, total, total_bytes
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


def parse(text: str) -> dict[str, object]:
    """A progress answer: numbers by key, ``state``, and the ``error``/``failure`` lines."""
    lines: list[str] = []
    out: dict[str, object] = {"state": "", "lines": lines}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key in NUMBERS:
            try:
                out[key] = int(value)
            except ValueError:
                pass
        elif key == "state":
            out["state"] = value.strip()
        elif key in ("error", "failure"):
            lines.append(value)
    return out


def _ask(path: str, name: str) -> str:
    try:
        return os.getxattr(path, name).decode("utf-8", "replace")
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise NotAMount(path) from None
        raise


def _targets(paths: list[str]) -> Iterator[str]:
    """Folders and .eml files, without those inside another folder given (counted once)."""
    dirs = [os.path.realpath(p) for p in paths if os.path.isdir(p)]
    seen = set()
    for p in paths:
        real = os.path.realpath(p)
        if any(real != d and real.startswith(d.rstrip("/") + "/") for d in dirs) or real in seen:
            continue
        seen.add(real)
        if os.path.isdir(p) or p.endswith(".eml"):
            yield p


def main(argv: list[str], out: TextIO = sys.stderr) -> int:
    started: list[str] = []
    # SIGTERM and SIGHUP stop the daemon's jobs like Ctrl-C does.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(sig, signal.default_int_handler)
        except (ValueError, OSError):
            pass
    try:
        return _main(argv, out, started)
    except KeyboardInterrupt:  # also while still starting
        _stop(started)
        out.write("\nprefetch: interrupted; run the same command again to continue\n")
        return 130


def _stop(started: list[str]) -> None:
    for p in started:
        try:
            _ask(p, STOP)
        except (OSError, NotAMount):
            pass


def _main(argv: list[str], out: TextIO, started: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        out.write(USAGE)
        return 0 if argv else 2
    for p in argv:
        if not os.path.exists(p):
            out.write(f"imapfs prefetch: {p} does not exist\n")
            return 2
    since = time.monotonic()
    watch: dict[str, str] = {}  # what to ask for progress: each folder, or one message of each folder
    for p in _targets(argv):
        try:
            _ask(p, START)
        except NotAMount:
            out.write(f"imapfs prefetch: {p} is not a folder or message of an imapfs mount "
                      "(or its daemon is too old to prefetch: remount)\n")
            _stop(started)
            return 2
        except OSError as e:
            out.write(f"imapfs prefetch: {p}: {e.strerror}\n")
            _stop(started)
            return 1
        started.append(p)
        watch.setdefault(os.path.realpath(p if os.path.isdir(p) else os.path.dirname(p)), p)
    if not watch:
        out.write("prefetch: no folders or .eml files among the paths given\n")
        return 0
    return _follow(list(watch.values()), out, started, since)


def _follow(targets: list[str], out: TextIO, started: list[str], since: float) -> int:
    tty = out.isatty()
    progress = Progress(0, 0, out, tty)
    progress.start = since  # the rate counts from the request: the daemon starts at once
    announced = False
    while True:
        answers = []
        for p in targets:
            try:
                answers.append(parse(_ask(p, PROGRESS)))
            except (OSError, NotAMount) as e:
                why = e.strerror if isinstance(e, OSError) else "no answer from the mount"
                progress.finish(f"{p}: {why}; the mount went away?")
                return 1
        if any(a["state"] == "nocache" for a in answers):
            out.write("imapfs prefetch: this mount keeps no local cache (cache_dir=none): "
                      "nothing to prefetch into\n")
            return 2
        # parse() files every NUMBERS key as an int, which its dict[str, object] cannot say.
        total = {k: sum(int(a.get(k, 0)) for a in answers) for k in NUMBERS}  # type: ignore[call-overload]
        running = any(a["state"] == "running" for a in answers)
        if not announced and (total["counting"] == 0 or not running):
            announced = True
            if total["cached"]:
                out.write(f"prefetch: {total['cached']} messages already cached\n")
        if announced:
            progress.set(total["done"], total["done_bytes"], total["total"], total["bytes"])
        if not running:
            break
        try:
            time.sleep(POLL_TTY if tty else POLL)
        except KeyboardInterrupt:
            _stop(started)
            progress.finish("interrupted; run the same command again to continue")
            return 130
    lines = [str(line) for a in answers for line in a["lines"]]  # type: ignore[attr-defined]  # a list, from parse()
    states = {a["state"] for a in answers}
    if states <= {"done", "idle"} and not lines and total["done"] == total["total"]:
        progress.finish("done")
        return 0
    for line in lines:
        out.write(f"prefetch: {line}\n")
    failed = total["failed"]
    if "stopped" in states:
        note = "stopped before the end; run the same command again to continue"
    elif failed:
        note = f"{failed} messages could not be stored; the others are on disk"
    else:
        note = "not finished; run the same command again to continue"
    progress.finish(note)
    return 1
