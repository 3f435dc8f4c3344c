#!/usr/bin/env python3
"""Does imapfs's NOTIFY use make Dovecot 2.3.19's imap process crash?

Issue 10 item 1: during a bulk restore (2,000 APPENDs into a new folder) the
imap process serving imapfs's NOTIFY connection died with signal 11 after
"Failed to map view for dovecot.list.index".  This script replays imapfs's
traffic without imapfs, against a throwaway Dovecot (tests/support/dovecot.py):

* connection A (the push listener): LOGIN, ``ENABLE QRESYNC`` (imapfs's
  Connection.open does it on every connection), ``NOTIFY <spec>``, then
  reads; optionally it reads slowly (``--reader-lag``) or does ``NOOP`` now
  and then;
* writers (imapfs's pool): ``CREATE NewFolder``, then APPENDs of small
  messages spread over ``--writers`` connections;
* optionally a syncer (imapfs's Tree.sync after each push event: SELECT with
  QRESYNC, ``UID FETCH n:*``, STATUS) and a lister (imapfs's full round:
  ``LIST "" * RETURN (STATUS (...))``).

After each run it reports whether A got EOF/BYE, the Dovecot log lines that
matter (signal 11, "Failed to map view", Panic, Fatal), when
``dovecot.list.index.log`` was rotated, and when A received events.  A keeps
listening ``--settle`` seconds (35) after the last APPEND: Dovecot's NOTIFY
process stops hearing of changes once that log is rotated, looks again only
at its 30 s timer (mailbox_idle_check_interval), and crashes then if the log
was rotated three times meanwhile.  ``--probes N`` appends single messages to
another folder after the bulk and reports how long A took to hear of each.

``--through-mount`` does it all through a real mount (``rsync -a`` of the
files into MNT/NewFolder/).  To try an older imapfs, extract it and point
``IMAPFS_COMMAND`` at it (``-P``: the current directory must not come first
on sys.path)::

    git archive OLDCOMMIT imapfs | tar -x -C /tmp/old
    IMAPFS_COMMAND="env PYTHONPATH=/tmp/old $PWD/.venv/bin/python -P -c \
      'import sys; from imapfs.mount import main; sys.exit(main())'" \
      .venv/bin/python scripts/repro_notify_crash.py --through-mount --runs 3

Examples::

    .venv/bin/python scripts/repro_notify_crash.py --runs 3
    .venv/bin/python scripts/repro_notify_crash.py --runs 3 --writers 4 --sync --list-status 1
    .venv/bin/python scripts/repro_notify_crash.py --noop-every 0.5 --runs 3
    .venv/bin/python scripts/repro_notify_crash.py --messages 700 --probes 5 --settle 20
    .venv/bin/python scripts/repro_notify_crash.py --notify 'SET (selected (MessageNew))'
    .venv/bin/python scripts/repro_notify_crash.py --matrix --runs 2 [--only NOOP]

A run takes about 40 s (mostly the settle time); a few CPU seconds.  Exit
status: 1 if any run crashed the NOTIFY process, else 0.  Every server is
stopped and removed at the end of its run.  Findings: docs/change-tracking.md,
"Dovecot NOTIFY crash".
"""
from __future__ import annotations

import argparse
import imaplib
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.dovecot import Dovecot  # noqa: E402

IMAPFS_NOTIFY = "SET (personal (MessageNew MessageExpunge FlagChange MailboxName))"
FOLDER = "NewFolder"
PROBE = "Other"  # a folder another client appends single messages to after the bulk
PROBE_EVERY = 3.0
BAD = re.compile(r"signal 11|Failed to map view|Panic|Fatal|killed with signal")


@dataclass
class Variant:
    name: str
    notify: str | None = IMAPFS_NOTIFY  # None: no NOTIFY connection at all
    writers: int = 1
    messages: int = 2000
    sync: bool = False  # a syncer like imapfs's Tree.sync on each push event
    list_status: float = 0.0  # seconds between LIST-STATUS rounds (0: none)
    qresync: bool = True  # ENABLE QRESYNC on A before NOTIFY, as imapfs does
    create: bool = True  # CREATE the folder just before the appends
    reader_lag: float = 0.0  # A sleeps this long after each response it reads
    noop_every: float = 0.0  # A sends NOOP this often (0: never)
    extra_config: str = ""  # appended to the Dovecot configuration
    settle: float = 35.0  # seconds A keeps listening after the appends
    reset_every: float = 0.0  # A sends its NOTIFY SET again this often (0: never)
    reset_on_event: bool = False  # A sends its NOTIFY SET again after each burst of events
    writer_select: bool = False  # writers SELECT the folder before appending to it
    probes: int = 0  # after the appends: this many single APPENDs to PROBE, one every 3 s


DEFAULTS = Variant("defaults")


@dataclass
class Result:
    crashed: bool = False
    eof: str = ""
    bad_lines: list[str] = field(default_factory=list)
    rotations: int = 0
    events: int = 0
    timeline: str = ""
    refused: str = ""  # the server's answer when it refused the NOTIFY
    probe_delays: list[float | None] = field(default_factory=list)
    appended: int = 0
    seconds: float = 0.0
    server_count: int = -1


def message(i: int) -> bytes:
    return (f"From: restore@example.org\r\nTo: alice@example.org\r\n"
            f"Subject: Subject #{i}\r\nDate: Tue, 14 Nov 2023 22:13:00 +0000\r\n"
            f"Message-ID: <restore-{i}@example.org>\r\n\r\nbody {i}\r\n").encode()


class Listener(threading.Thread):
    """Connection A: NOTIFY, then read until EOF or stop."""

    def __init__(self, d: Dovecot, v: Variant) -> None:
        super().__init__(daemon=True, name="notify")
        self.d, self.v = d, v
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.eof = ""
        self.events = 0
        self.times: list[float] = []  # monotonic time of each untagged response
        self.lines: list[tuple[float, bytes]] = []
        self.error = ""

    def run(self) -> None:
        v = self.v
        try:
            c = self.d.client()
            if v.qresync:
                c._simple_command("ENABLE", "QRESYNC")
            sock = c.sock
            buf = b""
            tag = 0

            def send(cmd: bytes) -> None:
                nonlocal tag
                tag += 1
                sock.sendall(b"N%d %s\r\n" % (tag, cmd))

            send(b"NOTIFY " + v.notify.encode())
            last_noop = last_reset = time.monotonic()
            sock.settimeout(0.1)
            while not self.stop.is_set():
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    data = None
                if data == b"":
                    self.eof = "EOF"
                    return
                got_event = False
                if data:
                    buf += data
                    *lines, buf = buf.split(b"\r\n")
                    for line in lines:
                        if re.match(rb"N\d+ ", line):
                            if not re.match(rb"N\d+ OK", line):
                                self.error = line.decode(errors="replace")
                                return
                            self.ready.set()
                        elif line.startswith(b"* BYE"):
                            self.eof = line.decode(errors="replace")
                            return
                        elif line.startswith(b"* "):
                            self.events += 1
                            self.times.append(time.monotonic())
                            self.lines.append((self.times[-1], line))
                            got_event = True
                        if v.reader_lag:
                            time.sleep(v.reader_lag)
                now = time.monotonic()
                if v.noop_every and now - last_noop > v.noop_every:
                    send(b"NOOP")
                    last_noop = now
                if (v.reset_every and now - last_reset > v.reset_every) or \
                        (v.reset_on_event and got_event):
                    send(b"NOTIFY " + v.notify.encode())
                    last_reset = now
        except OSError as e:
            self.eof = f"{type(e).__name__}: {e}"
        finally:
            self.ready.set()


def _writer(d: Dovecot, msgs: list[int], done: list[int], errors: list[str],
            select: bool = False) -> None:
    c = d.client(timeout=30)
    try:
        if select:
            c.select(FOLDER)
        for i in msgs:
            typ, dat = c.append(FOLDER, None, None, message(i))
            if typ != "OK":
                errors.append(f"APPEND {i}: {typ} {dat!r}")
                return
            done.append(i)
    except (OSError, imaplib.IMAP4.error) as e:
        errors.append(f"writer: {e}")
    finally:
        try:
            c.logout()
        except (OSError, imaplib.IMAP4.error):
            pass


def _syncer(d: Dovecot, stop: threading.Event, errors: list[str]) -> None:
    """imapfs's Tree.sync after push events: SELECT (QRESYNC), UID FETCH new, STATUS."""
    c = d.client(timeout=30)
    try:
        c._simple_command("ENABLE", "QRESYNC")
        nxt = 1
        while not stop.is_set():
            c._simple_command("STATUS", FOLDER, "(MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)")
            typ, _ = c._simple_command("SELECT", FOLDER)
            if typ == "OK":
                c.state = "SELECTED"  # _simple_command does not track it
                typ, dat = c.uid("FETCH", f"{nxt}:*",
                                 "(UID FLAGS INTERNALDATE RFC822.SIZE "
                                 "BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                for item in dat or []:
                    head = item[0] if isinstance(item, tuple) else item
                    m = re.search(rb"UID (\d+)", head or b"")
                    if m:
                        nxt = max(nxt, int(m.group(1)) + 1)
            stop.wait(0.1)
    except (OSError, imaplib.IMAP4.error) as e:
        errors.append(f"syncer: {e}")
    finally:
        try:
            c.logout()
        except (OSError, imaplib.IMAP4.error):
            pass


def _lister(d: Dovecot, every: float, stop: threading.Event, errors: list[str]) -> None:
    c = d.client(timeout=30)
    try:
        while not stop.is_set():
            c._simple_command("LIST", '""', "*", "RETURN",
                              "(STATUS (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ) SPECIAL-USE)")
            stop.wait(every)
    except (OSError, imaplib.IMAP4.error) as e:
        errors.append(f"lister: {e}")
    finally:
        try:
            c.logout()
        except (OSError, imaplib.IMAP4.error):
            pass


def _rotation_watch(path: Path, stop: threading.Event, out: list[tuple[float, int]]) -> None:
    """Note each inode change of dovecot.list.index.log (a rotation): (time, size before)."""
    last = None
    size = 0
    while not stop.is_set():
        try:
            st = path.stat()
        except OSError:
            st = None
        if st is not None:
            if last is not None and st.st_ino != last:
                out.append((time.monotonic(), size))
            last, size = st.st_ino, st.st_size
        stop.wait(0.02)


def run_once(v: Variant, verbose: bool = False) -> Result:
    res = Result()
    d = Dovecot(extra_config=v.extra_config)
    d.start()
    try:
        if not v.create:
            d.create(FOLDER)
        if v.probes:
            d.create(PROBE)
        listener = None
        if v.notify is not None:
            listener = Listener(d, v)
            listener.start()
            listener.ready.wait(10)
            if listener.error:
                res.refused = listener.error
                return res
        errors: list[str] = []
        stop = threading.Event()
        rot: list[tuple[float, int]] = []
        helpers = [threading.Thread(target=_rotation_watch, daemon=True,
                                    args=(d.maildir() / "dovecot.list.index.log", stop, rot))]
        if v.sync:
            helpers.append(threading.Thread(target=_syncer, args=(d, stop, errors), daemon=True))
        if v.list_status:
            helpers.append(threading.Thread(target=_lister, args=(d, v.list_status, stop, errors),
                                            daemon=True))
        if v.create:
            d.create(FOLDER)
        for t in helpers:
            t.start()
        done: list[int] = []
        t0 = time.monotonic()
        writers = [threading.Thread(target=_writer, daemon=True,
                                    args=(d, list(range(w, v.messages, v.writers)), done, errors,
                                          v.writer_select))
                   for w in range(v.writers)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        res.seconds = time.monotonic() - t0
        # Probes: does a single change by another client still get pushed?
        probe_times = []
        for k in range(v.probes):
            time.sleep(PROBE_EVERY)
            probe_times.append(time.monotonic())
            d.append(PROBE, message(10_000 + k))
        # Keep listening: Dovecot's NOTIFY process also looks at the list
        # index on a timer (mailbox_idle_check_interval, 30 s by default).
        if listener is not None:
            listener.join(v.settle)
        else:
            time.sleep(1.0)
        t_end = time.monotonic()
        if listener is not None:
            for pt in probe_times:
                seen = [t for t, line in listener.lines if t >= pt and PROBE.encode() in line]
                res.probe_delays.append(seen[0] - pt if seen else None)
        stop.set()
        for t in helpers:
            t.join(10)
        res.appended = len(done)
        res.rotations = len(rot)
        marks = [(t, f"R({size // 1024}k)") for t, size in rot] + [(t, "P") for t in probe_times]
        if listener is not None:
            listener.stop.set()
            listener.join(5)
            res.eof = listener.eof
            res.events = listener.events
            marks += [(t, "e") for t in listener.times]
            if listener.eof:
                marks.append((t_end, "EOF"))
        # What happened when, in seconds from the first APPEND: e = an
        # untagged response on A, R(size) = a list index log rotation,
        # P = a probe APPEND.
        marks.sort()
        res.timeline = " ".join(f"{t - t0:.1f}{m}" for t, m in marks[:60])
        with d._session(None) as c:
            typ, dat = c.status(FOLDER, "(MESSAGES)")
            m = re.search(rb"MESSAGES (\d+)", dat[0] or b"")
            res.server_count = int(m.group(1)) if m else -1
        res.bad_lines = [l for l in d.log().splitlines() if BAD.search(l)]
        res.crashed = bool(res.eof) or any("signal" in l for l in res.bad_lines)
        if errors and verbose:
            print("   errors:", errors[:3])
    finally:
        d.cleanup()
    return res


def run_mount(messages: int, settle: float, observer: bool = False) -> Result:
    """The whole thing through imapfs: ``rsync -a`` of ``messages`` .eml files
    into MNT/NewFolder/, then ``settle`` seconds of an idle mount.  A crash
    is seen in Dovecot's log only (imapfs reconnects its push)."""
    import shutil
    import subprocess
    import tempfile

    from tests.support.mount import Mount

    res = Result()
    d = Dovecot()
    d.start()
    work = Path(tempfile.mkdtemp(prefix="imapfs-notify-repro-"))
    try:
        backup = work / "backup"
        backup.mkdir()
        for i in range(messages):
            (backup / f"2023-11-14_2213 Subject #{i}.eml").write_bytes(message(i))
        mnt = work / "mnt"
        mnt.mkdir()
        with Mount(d.url(), mnt, ["tls=off"], password=d.password, debug=True,
                   allowed_errors=[".*"]) as m:
            listener = None
            if observer:  # a NOTIFY connection of our own beside imapfs's, as in run_once
                listener = Listener(d, Variant("observer", settle=settle))
                listener.start()
                listener.ready.wait(10)
            deadline = time.monotonic() + 15
            while "watching every folder with NOTIFY" not in m.log():
                if time.monotonic() > deadline:
                    raise SystemExit("imapfs did not start its NOTIFY session:\n" + m.log_tail())
                time.sleep(0.1)
            os.mkdir(m.path(FOLDER))
            rot: list[tuple[float, int]] = []
            stop = threading.Event()
            watch = threading.Thread(target=_rotation_watch, daemon=True,
                                     args=(d.maildir() / "dovecot.list.index.log", stop, rot))
            watch.start()
            t0 = time.monotonic()
            subprocess.run(["rsync", "-a", "--exclude=*.parts", f"{backup}/", f"{m.path(FOLDER)}/"],
                           check=True)
            res.seconds = time.monotonic() - t0
            time.sleep(settle)
            stop.set()
            watch.join()
            res.rotations = len(rot)
            res.appended = sum(n.endswith(".eml") for n in os.listdir(m.path(FOLDER)))
            res.eof = "; ".join(l.strip()[:160] for l in m.log().splitlines()
                                if "push connection" in l)[:600]
            if listener is not None:
                listener.stop.set()
                listener.join(5)
                res.events = listener.events
                res.timeline = f"observer A: eof={listener.eof or '-'}, {listener.events} events"
        with d._session(None) as c:
            typ, dat = c.status(FOLDER, "(MESSAGES)")
            mm = re.search(rb"MESSAGES (\d+)", dat[0] or b"")
            res.server_count = int(mm.group(1)) if mm else -1
        res.bad_lines = [l for l in d.log().splitlines() if BAD.search(l)]
        res.crashed = any("signal" in l for l in res.bad_lines)
    finally:
        d.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    return res


def matrix(messages: int, settle: float) -> list[Variant]:
    """The variants of issue 10 item 1's bisection."""
    base = dict(messages=messages, settle=settle)
    return [
        Variant("imapfs NOTIFY, 1 writer", **base),
        Variant("imapfs NOTIFY, 4 writers + sync + LIST-STATUS 1s", writers=4, sync=True,
                list_status=1.0, **base),
        Variant("no NOTIFY connection, 4 writers", notify=None, writers=4, **base),
        Variant("imapfs NOTIFY, reader lags 5 ms/response", reader_lag=0.005, **base),
        Variant("without MailboxName",
                notify="SET (personal (MessageNew MessageExpunge FlagChange))", **base),
        Variant("without FlagChange",
                notify="SET (personal (MessageNew MessageExpunge MailboxName))", **base),
        Variant("only MailboxName", notify="SET (personal (MailboxName))", **base),
        Variant("STATUS indicator",
                notify="SET STATUS (personal (MessageNew MessageExpunge FlagChange MailboxName))",
                **base),
        Variant("subscribed", notify="SET (subscribed (MessageNew MessageExpunge FlagChange "
                                     "MailboxName))", **base),
        Variant("inboxes", notify="SET (inboxes (MessageNew MessageExpunge FlagChange))", **base),
        Variant("selected only", notify="SET (selected (MessageNew MessageExpunge FlagChange))",
                **base),
        Variant("imapfs NOTIFY, no ENABLE QRESYNC", qresync=False, **base),
        Variant("imapfs NOTIFY, folder created before NOTIFY", create=False, **base),
        Variant("imapfs NOTIFY, mailbox_list_index = no",
                extra_config="mailbox_list_index = no\n", **base),
        Variant("imapfs NOTIFY + NOOP every 0.5 s (imapfs's fix)", noop_every=0.5, **base),
        Variant("imapfs NOTIFY + NOOP every 0.5 s, 4 writers + sync + LIST-STATUS 1s",
                noop_every=0.5, writers=4, sync=True, list_status=1.0, **base),
        Variant("imapfs NOTIFY + NOOP every 1 s", noop_every=1.0, **base),
        Variant("imapfs NOTIFY + NOOP every 1 s, 4 writers + sync + LIST-STATUS 1s",
                noop_every=1.0, writers=4, sync=True, list_status=1.0, **base),
        Variant("imapfs NOTIFY + NOTIFY SET again every 1 s", reset_every=1.0, **base),
        Variant("imapfs NOTIFY + NOTIFY SET again after each event", reset_on_event=True,
                **base),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--writers", type=int, default=1)
    p.add_argument("--notify", default=IMAPFS_NOTIFY,
                   help="what follows 'NOTIFY ' ('none': no NOTIFY connection)")
    p.add_argument("--sync", action="store_true", help="a syncer like imapfs's Tree.sync")
    p.add_argument("--list-status", type=float, default=0.0, metavar="SECONDS",
                   help="LIST-STATUS rounds this often")
    p.add_argument("--no-qresync", action="store_true")
    p.add_argument("--precreate", action="store_true",
                   help="CREATE the folder before the NOTIFY connection starts")
    p.add_argument("--reader-lag", type=float, default=0.0, metavar="SECONDS")
    p.add_argument("--noop-every", type=float, default=0.0, metavar="SECONDS")
    p.add_argument("--reset-every", type=float, default=0.0, metavar="SECONDS",
                   help="send the NOTIFY SET again this often")
    p.add_argument("--reset-on-event", action="store_true",
                   help="send the NOTIFY SET again after each burst of events")
    p.add_argument("--settle", type=float, default=35.0, metavar="SECONDS",
                   help="how long A keeps listening after the last APPEND (default 35: "
                        "Dovecot's mailbox_idle_check_interval is 30 s)")
    p.add_argument("--config", default="", help="extra Dovecot configuration lines (\\n-separated)")
    p.add_argument("--writer-select", action="store_true",
                   help="writers SELECT the folder before their APPENDs")
    p.add_argument("--probes", type=int, default=0,
                   help=f"after the appends, this many single APPENDs to {PROBE!r} (one every "
                        f"{PROBE_EVERY:.0f} s): how long until A hears of each?")
    p.add_argument("--through-mount", action="store_true",
                   help="mount imapfs ($IMAPFS_COMMAND or the venv's) and rsync the messages "
                        "into MNT/NewFolder/ instead of replaying its traffic")
    p.add_argument("--observer", action="store_true",
                   help="with --through-mount: also keep a NOTIFY connection of our own")
    p.add_argument("--matrix", action="store_true", help="run the predefined variants")
    p.add_argument("--only", default="", help="with --matrix: variants whose name contains this")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("run as root (tests/support/dovecot.py runs Dovecot as root)")
    if a.through_mount:
        crashes = 0
        for i in range(a.runs):
            r = run_mount(a.messages, a.settle, a.observer)
            crashes += r.crashed
            print(f"  run {i + 1}: {'CRASH' if r.crashed else 'ok   '} mount shows {r.appended}, "
                  f"server has {r.server_count}; rsync {r.seconds:.1f}s, list-log rotations="
                  f"{r.rotations}; imapfs push log: {r.eof or '-'}", flush=True)
            if r.timeline:
                print("    ", r.timeline)
            for line in r.bad_lines[:6]:
                print("     |", line[:300])
        return 1 if crashes else 0
    if a.matrix:
        variants = [v for v in matrix(a.messages, a.settle) if a.only.lower() in v.name.lower()]
    else:
        variants = [Variant(
            "command line", notify=None if a.notify == "none" else a.notify,
            writers=a.writers, messages=a.messages, sync=a.sync, list_status=a.list_status,
            qresync=not a.no_qresync, create=not a.precreate, reader_lag=a.reader_lag,
            noop_every=a.noop_every, extra_config=a.config.replace("\\n", "\n"),
            settle=a.settle, reset_every=a.reset_every, reset_on_event=a.reset_on_event,
            probes=a.probes, writer_select=a.writer_select)]
    any_crash = False
    summary = []
    for v in variants:
        crashes = 0
        changed = {f: getattr(v, f) for f in Variant.__dataclass_fields__
                   if f not in ("name", "notify") and getattr(v, f) != getattr(DEFAULTS, f)}
        print(f"== {v.name}: NOTIFY {v.notify}; {changed or 'defaults'}", flush=True)
        for i in range(a.runs):
            r = run_once(v, verbose=True)
            if r.refused:
                print(f"  run {i + 1}: NOTIFY refused: {r.refused}", flush=True)
                break
            crashes += r.crashed
            print(f"  run {i + 1}: {'CRASH' if r.crashed else 'ok   '} "
                  f"appended={r.appended} server={r.server_count} in {r.seconds:.1f}s "
                  f"list-log rotations={r.rotations} A events={r.events} "
                  f"A eof={r.eof or '-'}", flush=True)
            print(f"     timeline: appends {r.seconds:.1f}s; {r.timeline}")
            if r.probe_delays:
                print("     probe push delays: " + ", ".join(
                    "none" if x is None else f"{x:.1f}s" for x in r.probe_delays))
            for line in r.bad_lines[:6]:
                print("     |", line[:300])
        summary.append((v.name, crashes, a.runs))
        any_crash |= crashes > 0
    if len(summary) > 1:
        print("\nsummary:")
        for name, c, n in summary:
            print(f"  {c}/{n} crashed  {name}")
    return 1 if any_crash else 0


if __name__ == "__main__":
    sys.exit(main())
