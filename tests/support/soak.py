"""Randomized differential soak test (issue 10): the mount must converge to the server
and never lose mail.

One real Dovecot, one real imapfs mount (default disk cache in its own
``cache_dir``, ``poll=2``) reached through the fault-injecting proxy, and a
seeded random walk of

* operations through the mount: ``cp`` in (corpus and generated mail, names
  like an earlier ``rsync`` of a mount), rsync-style temp file + rename, a real
  ``rsync -a`` restore of a folder's backup, ``mv``, ``rm``, edits (truncating
  and in place), a write racing its own ``fsync``, ``setfattr user.imap.flags``
  (odd keywords), ``mkdir``, ``rmdir``, folder renames;
* a second IMAP client on the same user (imaplib, straight to Dovecot): APPEND,
  UID MOVE, UID STORE (keywords with ``[``, long digit runs, ``\\Deleted``
  without expunge), UID EXPUNGE, CREATE/DELETE/RENAME of folders named with
  ``&``, quotes, spaces, ``%``, UTF-8;
* faults: ``doveadm kick``, Dovecot killed and restarted, the proxy cutting
  connections now or when a command is sent, a partition (the proxy refuses the
  mount while the other client goes on), an outage (Dovecot down for a few
  operations), ``kill -9`` of imapfs and a remount on the same cache, a clean
  remount.

The oracle is independent of imapfs: every message carries a fixed-width
``X-Soak-Id`` as its first header, the model only knows which ids must exist,
and the server is read with imaplib.  Each *quiet point* (every
``quiet_every`` operations and at the end) stops operating, waits for the mount
to settle (online, nothing pending, mount == server; at most
``settle_seconds``), then checks, and re-checks 2 s later so that only what
persists is reported:

* the mount shows exactly the server: the same folder set (server names mapped
  to directories as docs/naming.md says, \\Noselect parents included), the same
  UIDs per folder, every name canonical (``YYYY-MM-DD_HHMM ... #UID.eml`` with
  the INTERNALDATE in UTC), bytes of a sample equal to ``BODY.PEEK[]``,
  ``user.imap.flags`` of a sample equal to the server's FLAGS, and
  ``user.imapfs.state`` online with 0 pending and no file waiting;
* no message lost: every id that was stored and not deliberately removed is
  on the server (duplicates are allowed).  An operation that failed may or may
  not have taken effect (Jepsen style): a failed ``cp`` may be missing, a failed
  ``rm`` may have removed, a failed edit leaves the old or the new version.
  Bytes closed but neither fsynced nor seen on the server when imapfs is
  killed with -9 may be missing (as on any file system).

Reproducible: the operation *kinds* come from ``random.Random(seed)`` alone,
one draw per operation from the whole table (an operation that cannot run now,
say the other client during an outage, is logged and skipped); each
operation's choices come from its own ``Random(f"{seed}-{index}")``, so what one
operation observes never shifts the later ones, and ``skip_ops`` can leave
operations out to reduce a finding (``scripts/soak --skip``).  Timing still
differs between runs.  Everything is logged to ``oplog.txt`` in the work
directory, beside imapfs's log; a quiet point that finds something also saves
what the mount sent to the server, and a hung call the kernel stacks of both
processes.  ``Soak(cfg).run()`` returns a :class:`SoakResult`;
tests/test_soak.py runs a bounded walk, ``scripts/soak --minutes N`` a long one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import errno
import imaplib
import itertools
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from . import dovecot as dv
from .corpus import corpus_messages
from .dovecot import Dovecot, mutf7_decode, mutf7_encode, quote
from .mount import Mount, force_unmount, is_mounted
from .proxy import Proxy

# Capability profiles a run may get (chosen from the seed): full (NOTIFY,
# QRESYNC), IDLE + polling without CONDSTORE, and the COPY/STORE/EXPUNGE move.
PROFILE_CHOICES = ["FULL", "FULL", "IDLE_ONLY", "NO_MOVE", "NO_NOTIFY"]

SID_HEADER = "X-Soak-Id"
SID_RE = re.compile(rb"^X-Soak-Id: (\S+)\r?\n")
SID_ANY_RE = re.compile(rb"X-Soak-Id:\s*(\S+)", re.I)
PARTS_DIR = re.compile(r"#\d+\.parts$")
CANONICAL = re.compile(r"^(\d{4}-\d{2}-\d{2}_\d{4}) .+ #([1-9]\d*)\.eml$")
UID_NAME = re.compile(r"#([1-9]\d*)\.eml$")
MONTHS = {m: i for i, m in enumerate(
    "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), 1)}

# Odd input.  Dovecot 2.3 refuses ']' , '%', '*', '\\' and any 8-bit byte in a
# keyword (NO/BAD), so the other client sends only what it accepts; the mount
# is also offered the refused ones and must answer EINVAL, not journal them.
SERVER_KEYWORDS = ["$Label1", "$Forwarded", "foo[bar", "[x", "12345678901234567890",
                   "Junk", "NonJunk", "a[b[c", "x.y-z_1"]
SYSTEM_FLAGS = ["\\Seen", "\\Flagged", "\\Answered", "\\Draft"]
MOUNT_ONLY_BAD = ["a]b", "caf\u00e9", "x%y"]
PLAIN_KEYWORDS = set(SYSTEM_FLAGS) | {"$Label1", "$Forwarded", "Junk", "NonJunk", "x.y-z_1", "\\Deleted"}
FOLDER_BASES = ["Archive", "Work", "AT&T", "R&D", "Caf&AOk-", "Caf\u00e9", "\u00c9t\u00e9",
                'say "hi"', "sp ace", "100%", "a.b", "Invoice #12.eml", "\u65e5\u672c\u8a9e",
                "x&-y", "~tilde", "na\u00efve r\u00e9sum\u00e9", "Projects", "Notes #raw", "%25", "50% off"]
SUBJECTS = ["hello", "Re: 2024/25 budget", "=?utf-8?q?Gr=C3=BC=C3=9Fe?=", "Invoice #12.eml",
            "", "   leading spaces", "\u00fcml\u00e4ut raw 8-bit", "a" * 300, "tab\there",
            "=?iso-8859-1?b?b2zp?= mixed", "..hidden", "x #3.parts", "emoji \U0001f600"]
CUT_TRIGGERS = [b"APPEND", b"UID MOVE", b"UID COPY", b"UID STORE", b"UID EXPUNGE",
                b"UID FETCH", b"SELECT", b"IDLE", b"NOTIFY", b"CREATE", b"DELETE", b"RENAME",
                b"LIST", b"STATUS"]
SERVER_CUT_TRIGGERS = [b"[APPENDUID", b"[COPYUID", b"VANISHED", b"FETCH"]
RETRYABLE_ERRNOS = {errno.EIO, errno.ENOTCONN, errno.ETIMEDOUT, errno.ECONNABORTED}

# Operation weights: mount side, other client, faults.
MOUNT_OPS = {"m_cp": 12, "m_rsync_one": 6, "m_restore": 1, "m_mv": 8, "m_rm": 5, "m_edit": 4,
             "m_fsync_race": 1, "m_flags": 7, "m_read": 3, "m_mkdir": 3, "m_rmdir": 2,
             "m_rename_dir": 2}
DIRECT_OPS = {"d_append": 8, "d_move": 4, "d_store": 6, "d_expunge": 4, "d_create": 2,
              "d_delete": 1, "d_rename": 1}
FAULT_OPS = {"f_kick": 2, "f_restart": 1, "f_cut_now": 1, "f_cut_when": 3, "f_partition": 1,
             "f_outage": 1, "f_kill9": 1, "f_remount": 1}
ALL_OP_NAMES = sorted({**MOUNT_OPS, **DIRECT_OPS, **FAULT_OPS})
ALL_OP_CUM = list(itertools.accumulate(
    {**MOUNT_OPS, **DIRECT_OPS, **FAULT_OPS}[n] for n in ALL_OP_NAMES))
MAX_FOLDERS = 24
TRAFFIC_KEEP = 4_000_000   # bytes of client->server traffic kept for a finding's report


@dataclasses.dataclass
class SoakConfig:
    """One walk: its seed and bounds (operations and seconds), and what it may do."""

    seed: int = 1
    max_ops: int = 300
    max_seconds: float = 60.0          # for the walk; the last quiet point comes on top
    quiet_every: int = 50
    poll: int = 2
    settle_seconds: float | None = None  # default: 3 * poll + 14 (backoff after faults)
    profile: str | None = None         # a dovecot.PROFILES name; None: from the seed
    faults: bool = True
    workdir: Path | None = None        # default: a temp dir (kept if something was found)
    stop_on_divergence: bool = False   # stop at the first quiet point that finds something
    debug: bool = False                # imapfs -d
    sample: int = 12                   # messages whose bytes and flags each check compares
    odd_keywords: bool = True          # False: plain keywords only (to look past items 2 and 4)
    command: list[str] | None = None   # imapfs argv prefix (default: tests.support.mount's)
    op_timeout: float = 60.0           # a file-system call slower than this is a hang (timeout=10)
    skip_ops: frozenset[int] = frozenset()  # indexes not run (still drawn): to reduce a finding
    out: Callable[[str], None] = print


@dataclasses.dataclass
class Divergence:
    """Something the mount showed (or did) that the server contradicts, confirmed twice."""

    kind: str
    key: str
    detail: str
    ops: int = 0          # operations done when first seen
    quiet: int = 0        # quiet point number

    def __str__(self) -> str:
        return f"[{self.kind}] {self.detail} (first at quiet point {self.quiet}, after {self.ops} ops)"


@dataclasses.dataclass
class SoakResult:
    """What a walk did and found; ``ok`` means no divergence and no lost message."""

    seed: int
    profile: str
    ops: int = 0
    op_counts: Counter = dataclasses.field(default_factory=Counter)
    errors: Counter = dataclasses.field(default_factory=Counter)
    faults: Counter = dataclasses.field(default_factory=Counter)
    cuts_fired: int = 0
    quiet_points: int = 0
    divergences: list[Divergence] = dataclasses.field(default_factory=list)
    lost: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    op_log: list[str] = dataclasses.field(default_factory=list)
    harness_errors: list[str] = dataclasses.field(default_factory=list)
    interrupted: bool = False
    stored: int = 0
    duplicates: int = 0
    elapsed: float = 0.0
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return not self.divergences and not self.lost

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.op_log[-n:])

    def summary(self) -> str:
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.op_counts.items()))
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        errs = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"
        lines = [
            f"soak seed={self.seed} profile={self.profile}: {self.ops} operations in "
            f"{self.elapsed:.0f} s, {self.quiet_points} quiet points",
            f"  operations: {ops}",
            f"  operation errors (allowed, modelled as 'either'): {errs}",
            f"  faults injected: {sum(self.faults.values())} ({faults}; armed cuts fired: "
            f"{self.cuts_fired})",
            f"  messages stored: {self.stored}, ids on the server more than once: {self.duplicates}",
            f"  divergences found: {len(self.divergences)}",
            f"  lost messages: {len(self.lost)}",
        ]
        lines += [f"    {d}" for d in self.divergences[:30]]
        if len(self.divergences) > 30:
            lines.append(f"    ... {len(self.divergences) - 30} more")
        lines += [f"    LOST {x}" for x in self.lost[:30]]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  HARNESS ERROR (not an imapfs finding): {h}" for h in self.harness_errors[:10]]
        if self.interrupted:
            lines.append("  interrupted before the end")
        if self.workdir:
            lines.append(f"  workdir: {self.workdir}")
        return "\n".join(lines)


class OpHang(Exception):
    thread: threading.Thread | None = None


class Skip(Exception):
    pass


# ----------------------------------------------------------------- naming oracle

def escape_level(level: str) -> str:
    """docs/naming.md: one folder level as a directory name (written again here on purpose)."""
    if level == "":
        return "%%"
    if level in (".", ".."):
        return "%2E" * len(level)
    if level == "%%":
        return "%25%"
    s = re.sub(r"%(?=25|2F|00|23|2E)", "%25", level)   # only where it would read as an escape
    s = s.replace("/", "%2F").replace("\0", "%00")
    m = re.search(r"#(?:[0-9]+\.(?:eml|parts)|raw)$", s)
    if m and (m.group(0) != "#raw" or s[:m.start()].endswith(" ")):
        s = s[:m.start()] + "%23" + s[m.start() + 1:]
    return s


def unescape_level(comp: str) -> str:
    """The level a typed directory name means (docs/naming.md: only exact escapes decode)."""
    if comp == "%%":
        return ""
    return re.sub(r"%(25|2F|00|2E|23)", lambda m: {"25": "%", "2F": "/", "00": "\0", "2E": ".",
                                                      "23": "#"}[m.group(1)], comp)


def folder_path(name: str, sep: str = "/") -> tuple[str, ...]:
    levels = name.split(sep) if sep else [name]
    comps = [escape_level(level) for level in levels]
    if levels[0].isascii() and levels[0].upper() == "INBOX":
        comps[0] = "INBOX"
    return tuple(comps)


def internaldate_prefix(text: str) -> str:
    """``14-Nov-2023 22:13:05 +0100`` -> ``2023-11-14_2113`` (UTC, as in file names)."""
    m = re.match(r"\s*(\d{1,2})-(\w{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)", text)
    if not m:
        return "?"
    day, mon, year, hh, mm, ss, sign, oh, om = m.groups()
    t = _dt.datetime(int(year), MONTHS[mon], int(day), int(hh), int(mm), int(ss))
    off = _dt.timedelta(hours=int(oh), minutes=int(om))
    t = t - off if sign == "+" else t + off
    return t.strftime("%Y-%m-%d_%H%M")


# ------------------------------------------------------------------ server oracle

@dataclasses.dataclass
class MsgInfo:
    flags: frozenset
    date: str   # file-name prefix of the INTERNALDATE
    sid: str | None


@dataclasses.dataclass
class FolderInfo:
    wire: bytes
    flags: frozenset
    msgs: dict[int, MsgInfo] | None   # None: not selectable

    @property
    def selectable(self) -> bool:
        return self.msgs is not None


def _list(c: imaplib.IMAP4) -> dict[str, tuple[bytes, frozenset]]:
    typ, data = c.list('""', "*")
    if typ != "OK":
        raise imaplib.IMAP4.error(f"LIST: {typ} {data!r}")
    out = {}
    for item in data:
        if item is None:
            continue
        if isinstance(item, tuple):   # name sent as a literal
            head, wire = item
            m = re.match(rb"\(([^)]*)\)", head)
        else:
            m = re.match(rb'\(([^)]*)\) (?:"(?:[^"\\]|\\.)*"|NIL) (.*)$', item)
            wire = m.group(2)
            if wire.startswith(b'"'):
                wire = re.sub(rb"\\(.)", rb"\1", wire[1:-1])
        flags = frozenset(f.lower() for f in m.group(1).decode().split())
        out[mutf7_decode(wire)] = (bytes(wire), flags)
    return out


def _sel(wire: bytes) -> str:
    return quote(wire.decode("ascii"))


def _fetch_meta(c: imaplib.IMAP4, wire: bytes) -> dict[int, MsgInfo]:
    typ, data = c.select(_sel(wire), readonly=True)
    if typ != "OK":
        raise imaplib.IMAP4.error(f"SELECT {wire!r}: {typ} {data!r}")
    if data and data[0] == b"0":
        return {}
    typ, data = c.uid("FETCH", "1:*",
                      f"(UID FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS ({SID_HEADER.upper()})])")
    if typ != "OK":
        raise imaplib.IMAP4.error(f"FETCH in {wire!r}: {typ} {data!r}")
    out: dict[int, MsgInfo] = {}
    i = 0
    while i < len(data):
        item = data[i]
        if isinstance(item, tuple):
            head, lit = item
            tail = data[i + 1] if i + 1 < len(data) and isinstance(data[i + 1], bytes) else b""
            text = head + b" " + tail
            mu = re.search(rb"UID (\d+)", text)
            mf = re.search(rb"FLAGS \(([^)]*)\)", text)
            md = re.search(rb'INTERNALDATE "([^"]+)"', text)
            ms = SID_ANY_RE.search(lit or b"")
            if mu:
                flags = frozenset(mf.group(1).decode(errors="replace").split()) - {"\\Recent"} \
                    if mf else frozenset()
                out[int(mu.group(1))] = MsgInfo(
                    flags, internaldate_prefix(md.group(1).decode()) if md else "?",
                    ms.group(1).decode() if ms else None)
        i += 1
    return out


def fetch_body(c: imaplib.IMAP4, wire: bytes, uid: int) -> bytes | None:
    typ, _ = c.select(_sel(wire), readonly=True)
    if typ != "OK":
        return None
    typ, data = c.uid("FETCH", str(uid), "(UID BODY.PEEK[])")
    for item in data or []:
        if isinstance(item, tuple) and re.search(rb"UID %d\b" % uid, item[0] + b" "):
            return item[1]
        if isinstance(item, tuple):
            return item[1]
    return None


def server_snapshot(c: imaplib.IMAP4) -> dict[str, FolderInfo]:
    out = {}
    for name, (wire, flags) in _list(c).items():
        if "\\noselect" in flags or "\\nonexistent" in flags:
            out[name] = FolderInfo(wire, flags, None)
            continue
        try:
            msgs = _fetch_meta(c, wire)
        except imaplib.IMAP4.error:
            msgs = None   # deleted between LIST and SELECT: treated as not selectable
        out[name] = FolderInfo(wire, flags, msgs)
    return out


# ------------------------------------------------------------------- mount view

@dataclasses.dataclass
class MountView:
    folders: dict[tuple[str, ...], dict[str, list[str]]]   # path -> {"uids": names..}
    uids: dict[tuple[str, ...], dict[int, list[str]]]
    other: dict[tuple[str, ...], list[str]]                # names without #UID.eml
    errors: dict[tuple[str, ...], str]


def mount_view(root: Path) -> MountView:
    view = MountView({}, {}, {}, {})

    def walk(path: Path, rel: tuple[str, ...]) -> None:
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as e:
            view.errors[rel] = f"{errno.errorcode.get(e.errno, e.errno)} listing it"
            return
        if rel:
            view.uids[rel] = {}
            view.other[rel] = []
        for e in entries:
            try:
                is_dir = e.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if is_dir:
                if PARTS_DIR.search(e.name):
                    continue
                walk(Path(e.path), rel + (e.name,))
            elif rel:
                m = UID_NAME.search(e.name)
                if m:
                    view.uids[rel].setdefault(int(m.group(1)), []).append(e.name)
                else:
                    view.other[rel].append(e.name)
            else:
                view.other.setdefault((), []).append(e.name)

    walk(root, ())
    return view


def mount_state(root: Path) -> str:
    return os.getxattr(root, "user.imapfs.state").decode(errors="replace")


def state_settled(text: str) -> bool:
    return ("state: online" in text and re.search(r"pending changes: 0\b", text) is not None
            and "files waiting to be stored" not in text)


# ------------------------------------------------------------------------ engine

def _errname(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno:
        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__


def _in_thread(fn: Callable[[], object], timeout: float, what: str = "") -> object:
    """Run a file-system call where a hang cannot stall the walk (daemon thread)."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["v"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["e"] = e

    t = threading.Thread(target=run, daemon=True, name="soak-op")
    t.start()
    t.join(timeout)
    if t.is_alive():
        e = OpHang(f"{what or 'the call'}: no answer within {timeout:.0f} s")
        e.thread = t
        raise e
    if "e" in box:
        raise box["e"]  # type: ignore[misc]
    return box.get("v")


class Direct:
    """The other client: one imaplib connection straight to Dovecot, reopened after a fault."""

    def __init__(self, d: Dovecot) -> None:
        self.d = d
        self.c: imaplib.IMAP4 | None = None

    def conn(self) -> imaplib.IMAP4:
        if self.c is None:
            self.c = self.d.client(timeout=10)
        return self.c

    def drop(self) -> None:
        if self.c is not None:
            with contextlib.suppress(Exception):
                self.c.shutdown()
            self.c = None

    def run(self, fn: Callable[[imaplib.IMAP4], object]) -> object:
        try:
            return fn(self.conn())
        except (imaplib.IMAP4.abort, OSError, EOFError):
            self.drop()
            raise


class Soak:
    def __init__(self, cfg: SoakConfig) -> None:
        self.cfg = cfg
        self.seed = cfg.seed
        self.kinds = random.Random(cfg.seed)
        self.profile = cfg.profile or random.Random(f"{cfg.seed}-profile").choice(PROFILE_CHOICES)
        self.settle = cfg.settle_seconds if cfg.settle_seconds is not None else 3 * cfg.poll + 14
        self.res = SoakResult(cfg.seed, self.profile)
        self.out = cfg.out
        self.t0 = time.monotonic()
        # model
        self.n_sid = 0
        self.must: set[str] = set()
        self.alts: list[frozenset[str]] = []
        # written through the mount, not yet durable: sid -> (the sid it replaces, folder)
        self.unconfirmed: dict[str, tuple[str | None, str]] = {}
        self.history: dict[str, list[str]] = {}
        self.seen_keys: set[str] = set()
        self.folders: dict[str, FolderInfo] = {}      # last server LIST (+ contents when known)
        self.outage_left = 0        # ops until Dovecot comes back
        self.partition_left = 0     # ops until the proxy lets the mount through again
        self.ops_done = 0
        self.quiet_no = 0
        self.armed: list = []     # cut triggers armed since the last quiet point
        self.traffic_tail = b""   # recent client->server traffic, trimmed out of the proxy
        self.traffic_lock = threading.Lock()
        self.stopping = threading.Event()
        self.corpus = [(n, b) for n, b in corpus_messages() if len(b) < 300_000]
        self.d: Dovecot | None = None
        self.proxy: Proxy | None = None
        self.m: Mount | None = None
        self.direct: Direct | None = None
        self._own_workdir = cfg.workdir is None
        self.work = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="imapfs-soak-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.mp = self.work / "mnt"
        self.cache = self.work / "cache"
        self.xdg = self.work / "xdg"         # XDG_CACHE_HOME of imapfs: its unsent/ folder
        self.last_seen: dict[str, str] = {}
        self.staging = self.work / "staging"
        self.oplog_file = open(self.work / "oplog.txt", "a", encoding="utf-8")

    # ------------------------------------------------------------- lifecycle
    def run(self) -> SoakResult:
        cfg = self.cfg
        self.out(f"soak: seed={self.seed} profile={self.profile} max_ops={cfg.max_ops} "
                 f"max_seconds={cfg.max_seconds:.0f} quiet_every={cfg.quiet_every} "
                 f"workdir={self.work}")
        try:
            self._start()
            last_quiet = 0
            while self.ops_done < cfg.max_ops and time.monotonic() - self.t0 < cfg.max_seconds:
                self._step()
                if self.ops_done % cfg.quiet_every == 0:
                    last_quiet = self.ops_done
                    if self.quiet_point() and cfg.stop_on_divergence:
                        break
            else:
                if last_quiet != self.ops_done:
                    self.quiet_point(final=True)
        except KeyboardInterrupt:
            self.res.interrupted = True
            self.out("soak: interrupted; cleaning up")
        finally:
            self._stop()
        return self.res

    def _start(self) -> None:
        self.mp.mkdir(exist_ok=True)
        for attempt in range(3):   # free_port() may hand out one port twice: pick again
            self.d = Dovecot(capabilities=dv.PROFILES[self.profile])
            try:
                self.d.start()
                break
            except dv.DovecotError:
                self.d.cleanup()
                if attempt == 2:
                    raise
        self.proxy = Proxy(self.d.host, self.d.port, max_connections=10**7,
                           lifetime=10**7).start()
        self.direct = Direct(self.d)
        threading.Thread(target=self._trimmer, daemon=True, name="soak-trim").start()
        self._seed_mailbox()
        self._mount()
        self._refresh_folders()

    def _stop(self) -> None:
        prev = None
        with contextlib.suppress(ValueError):   # not in the main thread
            prev = signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.stopping.set()
        try:
            self.res.ops = self.ops_done
            self.res.elapsed = time.monotonic() - self.t0
            self.res.stored = self.n_sid
            if self.d is not None and self.proxy is not None:
                with contextlib.suppress(Exception):
                    self._heal()   # so that the unmount can store what is still pending
            if self.m is not None and self.m.proc is not None:
                with contextlib.suppress(Exception):
                    self.m.unmount(check=False)
                self._scan_imapfs_log()
            if is_mounted(self.mp):
                force_unmount(self.mp)
            if self.direct:
                self.direct.drop()
            if self.proxy:
                self.proxy.stop()
            if self.d is not None:
                crashes = [l for l in self.d.log().splitlines()
                           if re.search(r"signal 11|Panic|Fatal", l)]
                if crashes:
                    self.res.notes.append(f"Dovecot logged {len(crashes)} crash lines, e.g. "
                                          f"{crashes[0][-200:]}")
                self.d.cleanup()
            self.oplog_file.close()
            if self._own_workdir and self.res.ok:
                shutil.rmtree(self.work, ignore_errors=True)
            else:
                self.res.workdir = str(self.work)
        finally:
            if prev is not None:
                signal.signal(signal.SIGINT, prev)

    def _scan_imapfs_log(self) -> None:
        try:
            text = (self.work / "imapfs.log").read_text(errors="replace")
        except OSError:
            return
        tbs = text.count("Traceback (most recent call last)")
        if tbs:
            last = [l for l in text.splitlines() if re.match(r"\w+(\.\w+)*(Error|Exception):", l)]
            self.res.notes.append(f"imapfs logged {tbs} tracebacks"
                                  + (f", e.g. {last[0][:200]}" if last else ""))

    def _mount(self) -> None:
        opts = ["tls=off", f"poll={self.cfg.poll}", "backoff_max=2", "timeout=10",
                f"cache_dir={self.cache}"]
        self.m = Mount(f"imap://{self.d.user}@127.0.0.1:{self.proxy.port}/", self.mp, opts,
                       password=self.d.password, debug=self.cfg.debug,
                       env_extra={"XDG_CACHE_HOME": str(self.xdg)},
                       log_path=self.work / "imapfs.log", timeout=30,
                       command=self.cfg.command).start()

    def _seed_mailbox(self) -> None:
        rng = random.Random(f"{self.seed}-seed")
        for name in ["Archive", "AT&T", "Caf\u00e9", "sp ace"]:
            self.d.create(name)
        for folder in ["INBOX", "INBOX", "Archive", "AT&T", "Caf\u00e9"]:
            for _ in range(3):
                sid, data = self._new_message(rng)
                flags = rng.choice(["", "\\Seen", "$Label1 foo[bar"])
                if not self.cfg.odd_keywords:
                    flags = flags.replace("foo[bar", "")
                self.d.append(folder, data, flags=flags)
                self._require(sid, f"seed APPEND to {folder}")

    # ----------------------------------------------------------------- model
    def _next_sid(self) -> str:
        self.n_sid += 1
        return f"{self.seed % 10**8:08d}-{self.n_sid:06d}"

    def _new_message(self, rng: random.Random, size: int | None = None) -> tuple[str, bytes]:
        sid = self._next_sid()
        head = f"{SID_HEADER}: {sid}\r\n".encode()
        if size is None and self.corpus and rng.random() < 0.35:
            _, data = rng.choice(self.corpus)
            return sid, head + data
        subj = rng.choice(SUBJECTS)
        if size is None:
            size = rng.choice([100, 500, 2000, 8000]) if rng.random() < 0.9 else rng.randint(20_000, 200_000)
        words = ["lorem", "ipsum", "mail", "soak", "imap", "\u00e9t\u00e9", "line"]
        body = []
        n = 0
        while n < size:
            line = " ".join(rng.choice(words) for _ in range(12))
            body.append(line)
            n += len(line) + 2
        when = _dt.datetime(2020, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(
            seconds=rng.randint(0, 6 * 365 * 86400))
        hdr = (f"Message-ID: <{sid}@soak.test>\r\nFrom: Soak <soak@example.org>\r\n"
               f"To: alice@example.org\r\nSubject: {subj}\r\n"
               f"Date: {when.strftime('%a, %d %b %Y %H:%M:%S +0000')}\r\n")
        return sid, head + hdr.encode() + b"\r\n" + "\r\n".join(body).encode() + b"\r\n"

    def _note(self, sid: str, what: str) -> None:
        h = self.history.setdefault(sid, [])
        if len(h) < 20:
            h.append(f"#{self.ops_done} {what}")

    def _require(self, sid: str, what: str, durable: bool = True, replaces: str | None = None,
                 folder: str = "") -> None:
        self.must.add(sid)
        self._note(sid, what)
        if not durable:
            self.unconfirmed[sid] = (replaces, folder)

    def _drop(self, sid: str | None, what: str) -> None:
        if sid is None:
            return
        self.must.discard(sid)
        self.alts = [g for g in self.alts if sid not in g]
        self.unconfirmed.pop(sid, None)
        self._note(sid, what)

    def _either(self, sid: str, what: str) -> None:
        """A write that failed: it may or may not exist."""
        self._note(sid, what + " (failed: may be missing)")

    def _was_required(self, sid: str | None) -> bool:
        return sid is not None and (sid in self.must or any(sid in g for g in self.alts))

    # ---------------------------------------------------------------- helpers
    def _log(self, actor: str, op: str, args: str, outcome: str, index: int | None = None) -> None:
        tag = f"{index:5d}" if index is not None else "    -"
        line = (f"{tag} {time.monotonic() - self.t0:7.2f}s {actor:6s} {op:13s} "
                f"{args} -> {outcome}")
        self.res.op_log.append(line)
        if len(self.res.op_log) > 5000:
            del self.res.op_log[:1000]
        self.oplog_file.write(line + "\n")
        self.oplog_file.flush()

    def _refresh_folders(self) -> None:
        if self.outage_left:
            return
        try:
            lst = self.direct.run(_list)
        except Exception:  # noqa: BLE001 - the last known folder list stays
            return
        self.folders = {n: FolderInfo(w, f, None if ("\\noselect" in f or "\\nonexistent" in f) else {})
                        for n, (w, f) in lst.items()}

    def _selectable(self) -> list[str]:
        return sorted(n for n, f in self.folders.items() if f.selectable)

    def mpath(self, name: str) -> Path:
        return self.m.mountpoint.joinpath(*folder_path(name))

    def _mount_msgs(self, folder: str) -> list[str]:
        names = _in_thread(lambda: sorted(os.listdir(self.mpath(folder))), self.cfg.op_timeout,
                           f"ls {folder!r}")
        return [n for n in names if UID_NAME.search(n)]

    def _read_sid(self, p: Path) -> str | None:
        def head() -> bytes:
            with open(p, "rb") as f:
                return f.read(64)
        try:
            m = SID_RE.match(_in_thread(head, self.cfg.op_timeout, f"read {p.name!r}"))
        except OSError:
            return None
        return m.group(1).decode() if m else None

    def _folder_name(self, rng: random.Random) -> str:
        base = rng.choice(FOLDER_BASES)
        return base if rng.random() < 0.4 else f"{base} {rng.randint(1, 99)}"

    def _flags(self, rng: random.Random, mount: bool) -> list[str]:
        pool = SYSTEM_FLAGS + SERVER_KEYWORDS
        flags = rng.sample(pool, rng.randint(0, 4))
        odd = rng.random() < 0.08
        if not self.cfg.odd_keywords:
            flags = [f for f in flags if f in PLAIN_KEYWORDS]
        elif mount and odd:
            flags.append(rng.choice(MOUNT_ONLY_BAD))
        if rng.random() < 0.05:
            flags.append("\\Deleted")
        return flags

    # ------------------------------------------------------------------ walk
    def _step(self) -> None:
        i = self.ops_done
        rng = random.Random(f"{self.seed}-{i}")
        # Always drawn from the whole table (one draw per operation), so skipping or
        # refusing one never shifts the kinds of the later ones.
        op = self.kinds.choices(ALL_OP_NAMES, cum_weights=ALL_OP_CUM)[0]
        if (op.startswith("d_") and self.outage_left) or (op.startswith("f_") and (
                not self.cfg.faults or self.outage_left or self.partition_left)):
            self._log("-", op, "", "not now (server down or a fault in progress)", index=i)
            self.ops_done += 1
            self._tick_faults()
            return
        if i in self.cfg.skip_ops:
            self._log("-", op, "", "not run (skip_ops)", index=i)
            self.ops_done += 1
            self._tick_faults()
            return
        self.res.op_counts[op] += 1
        actor = {"m": "mount", "d": "other", "f": "FAULT"}[op[0]]
        try:
            outcome, args = "ok", ""
            args = getattr(self, op)(rng) or ""
        except Skip as e:
            outcome = f"skip ({e})"
            args = ""
        except OpHang as e:
            outcome = f"HANG {e}"
            self._found("hang", f"hang-{op}-{i}", f"op #{i} {op} did not return: {e} "
                        f"(imapfs thread stacks dumped to its log by SIGABRT)")
            self._dump_kernel_stacks(f"hang-op-{i}-kernel-stacks.txt")
            poke = self._poke()
            if e.thread is not None:
                e.thread.join(2)
                poke += ("; the hung call then returned" if not e.thread.is_alive()
                         else "; the hung call is still waiting")
            self._log("CHECK", "hang-poke", "", poke)
            self._crash_recover("a hung operation", dump=True)
        except _OpFailed as e:
            outcome = f"error {e.errname}"
            args = e.args_text
            self.res.errors[f"{op}:{e.errname}"] += 1
        except (imaplib.IMAP4.error, OSError, EOFError) as e:
            outcome = f"error {_errname(e)}: {str(e)[:120]}"
            self.res.errors[f"{op}:{_errname(e)}"] += 1
            if op.startswith("d_"):
                self.direct.drop()
        except Exception as e:  # noqa: BLE001 - a bug of this harness: visible, but the walk goes on
            outcome = f"HARNESS ERROR {type(e).__name__}: {e}"
            self.res.harness_errors.append(f"op #{i} {op}: {type(e).__name__}: {e}")
            self.direct.drop()
        self._log(actor, op, args, outcome, index=i)
        self.ops_done += 1
        if self.m.proc is not None and self.m.proc.poll() is not None:
            self._found("mount-died", f"died-{i}",
                        f"imapfs exited with {self.m.proc.returncode} after op #{i} {op}: "
                        f"{self.m.log_tail(8)}")
            self._crash_recover("imapfs died")
        self._tick_faults()

    def _tick_faults(self) -> None:
        if self.outage_left:
            self.outage_left -= 1
            if not self.outage_left:
                self.d.start()
                self._log("FAULT", "outage-end", "", "Dovecot started")
        if self.partition_left:
            self.partition_left -= 1
            if not self.partition_left:
                self.proxy.refuse = False
                self._log("FAULT", "partition-end", "", "proxy lets the mount through")

    def _heal(self) -> None:
        if self.outage_left:
            self.outage_left = 0
            self.d.start()
            self._log("FAULT", "outage-end", "", "Dovecot started (quiet point)")
        if self.partition_left:
            self.partition_left = 0
            self.proxy.refuse = False
            self._log("FAULT", "partition-end", "", "proxy open (quiet point)")
        if self.armed:
            self.res.cuts_fired += self._cuts_fired()
            self.proxy.clear_triggers()
            self.armed = []

    def _cuts_fired(self) -> int:
        """How many armed cuts happened (Proxy.cut_when returns the trigger in newer versions)."""
        if all(t is not None for t in self.armed):
            return sum(1 for t in self.armed if getattr(t, "fired", 0))
        with self.proxy._lock:
            pending = len(self.proxy._client_triggers) + len(self.proxy._server_triggers)
        return len(self.armed) - pending

    # ------------------------------------------------------- mount operations
    def _pick_msg(self, rng: random.Random, folder: str | None = None) -> tuple[str, Path]:
        folders = self._selectable()
        if not folders:
            raise Skip("no folder")
        f = folder or rng.choice(folders)
        try:
            msgs = self._mount_msgs(f)
        except OSError as e:
            raise _OpFailed(e, f"ls {f!r}")
        if not msgs:
            raise Skip(f"{f!r} shows no message")
        return f, self.mpath(f) / rng.choice(msgs)

    def _write_new(self, path: Path, data: bytes, *, fsync: bool = False,
                   mtime: float | None = None, flags: list[str] | None = None) -> None:
        def do() -> None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                for off in range(0, len(data), 1 << 16):
                    os.write(fd, data[off:off + (1 << 16)])
                if flags is not None:
                    os.setxattr(path, "user.imap.flags", " ".join(flags).encode())
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if mtime is not None:
                os.utime(path, (mtime, mtime))
        _in_thread(do, self.cfg.op_timeout)

    def _new_name(self, rng: random.Random, sid: str) -> str:
        r = rng.random()
        if r < 0.4:   # as an earlier rsync of a mount names files (issue 10 item 1)
            when = _dt.datetime(2023, 11, 14, 22, 13) + _dt.timedelta(minutes=rng.randint(0, 9999))
            return f"{when:%Y-%m-%d_%H%M} {rng.choice(['Subject', 'Re: hi', 'x'])} #{rng.randint(1, 80)}.eml"
        if r < 0.5:
            return f"caf\u00e9 {sid}.eml"
        return f"new-{sid}.eml"

    def m_cp(self, rng: random.Random) -> str:
        f = rng.choice(self._selectable() or ["INBOX"])
        sid, data = self._new_message(rng)
        name = self._new_name(rng, sid)
        if _in_thread(lambda: os.path.lexists(self.mpath(f) / name), self.cfg.op_timeout, "lookup"):
            name = f"new-{sid}.eml"   # not an edit of an existing message
        fsync = rng.random() < 0.2
        mtime = time.time() - rng.randint(0, 10**8) if rng.random() < 0.5 else None
        flags = self._flags(rng, True) if rng.random() < 0.3 else None
        args = f"cp {sid} ({len(data)} B) to {f!r}/{name!r} fsync={fsync} flags={flags}"
        try:
            self._write_new(self.mpath(f) / name, data, fsync=fsync, mtime=mtime, flags=flags)
        except OSError as e:
            self._either(sid, f"cp to {f!r}")
            raise _OpFailed(e, args)
        self._require(sid, f"cp to {f!r} as {name!r}", durable=fsync, folder=f)
        return args

    def m_rsync_one(self, rng: random.Random) -> str:
        """rsync's way: .NAME.XXXXXX, write, close, utimens, setxattr, rename to NAME."""
        f = rng.choice(self._selectable() or ["INBOX"])
        sid, data = self._new_message(rng)
        name = self._new_name(rng, sid)
        tmp = f".{name}.{rng.randint(100000, 999999)}"
        replace = None
        d = self.mpath(f)
        if rng.random() < 0.1:   # over an existing message: a replacement
            try:
                _, target = self._pick_msg(rng, f)
                replace = self._read_sid(target)
                if replace is not None:   # else unknown: the model could not follow
                    name = target.name
            except (Skip, _OpFailed):
                pass
        if replace is None and _in_thread(lambda: os.path.lexists(d / name), self.cfg.op_timeout,
                                          "lookup"):
            name = f"new-{sid}.eml"
        args = f"rsync {sid} to {f!r}/{name!r} via {tmp!r}" + (f" replacing {replace}" if replace else "")
        try:
            self._write_new(d / tmp, data, mtime=time.time() - rng.randint(0, 10**8),
                            flags=self._flags(rng, False) if rng.random() < 0.5 else None)
            _in_thread(lambda: os.rename(d / tmp, d / name), self.cfg.op_timeout)
        except OSError as e:
            self._either(sid, f"rsync to {f!r}")
            if replace and self._was_required(replace):
                self.alts.append(frozenset({replace, sid}))
                self.must.discard(replace)
            raise _OpFailed(e, args)
        old_req = self._was_required(replace) and replace not in self.unconfirmed
        if replace:
            self._drop(replace, f"replaced by {sid} (rsync rename)")
        self._require(sid, f"rsync to {f!r} as {name!r}", durable=False,
                      replaces=replace if old_req else None, folder=f)
        return args

    def m_restore(self, rng: random.Random) -> str:
        """A backup of a folder (names as the mount shows them) rsync -a'ed into a new folder."""
        src = rng.choice(self._selectable() or ["INBOX"])
        try:
            names = self._mount_msgs(src)[:rng.randint(5, 40)]
        except OSError as e:
            raise _OpFailed(e, f"ls {src!r}")
        if not names:
            raise Skip(f"{src!r} shows no message")
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir()
        sids = []
        for n in names:
            p = self.mpath(src) / n
            try:
                data = _in_thread(p.read_bytes, self.cfg.op_timeout)
                st = os.stat(p)
            except OSError:
                continue
            sid = self._next_sid()
            m = SID_RE.match(data)
            data = (f"{SID_HEADER}: {sid}\r\n".encode() + (data[m.end():] if m else data))
            (self.staging / n).write_bytes(data)
            os.utime(self.staging / n, (st.st_mtime, st.st_mtime))
            sids.append(sid)
        # Into a new folder, as in issue 10 item 1 (into an existing one rsync's quick check
        # would skip same-size, same-mtime files, and same names would replace messages).
        dest = self._folder_name(rng)
        while dest in self.folders or dest.upper() == "INBOX":
            dest += " r"
        target = self.m.mountpoint / escape_level(dest)
        args = f"rsync -a backup of {len(sids)} from {src!r} into {target.name!r} ({sids[0]}..)" \
            if sids else f"rsync -a of nothing from {src!r}"
        try:
            r = subprocess.run(["rsync", "-a", "--exclude=*.parts", f"{self.staging}/", f"{target}/"],
                               capture_output=True, text=True, timeout=self.cfg.op_timeout * 2)
        except subprocess.TimeoutExpired:
            raise OpHang("rsync -a did not finish")
        if r.returncode != 0:
            for s in sids:
                self._either(s, f"restore into {target.name!r}")
            raise _OpFailed(OSError(errno.EIO, r.stderr.strip()[-200:]), args + f" rc={r.returncode}")
        for s in sids:
            self._require(s, f"restore into {target.name!r}", durable=False, folder=dest)
        self._refresh_folders()
        return args

    def m_mv(self, rng: random.Random) -> str:
        f, p = self._pick_msg(rng)
        dests = [g for g in self._selectable() if g != f]
        if not dests:
            raise Skip("one folder")
        g = rng.choice(dests)
        target = self.mpath(g) / p.name
        # rename(2) onto an existing name replaces that message (docs/writes.md)
        replaced = None
        if _in_thread(lambda: os.path.lexists(target), self.cfg.op_timeout, "lookup"):
            replaced = self._read_sid(target)
            if replaced is None:
                raise Skip(f"{g!r} has {p.name!r} and it cannot be read")
        moved = self._read_sid(p) if self.unconfirmed else None
        args = f"mv {f!r}/{p.name!r} to {g!r}" + (f" replacing {replaced}" if replaced else "")
        try:
            _in_thread(lambda: os.rename(p, target), self.cfg.op_timeout, "rename")
        except OSError as e:
            self._drop(replaced, "mv onto it failed (may be replaced)")
            raise _OpFailed(e, args)
        self._drop(replaced, f"replaced by a mv from {f!r}")
        if moved in self.unconfirmed:
            self.unconfirmed[moved] = (self.unconfirmed[moved][0], g)
        return args

    def m_rm(self, rng: random.Random) -> str:
        f, p = self._pick_msg(rng)
        sid = self._read_sid(p)
        if sid is None:
            raise Skip(f"cannot read {p.name!r}")
        args = f"rm {f!r}/{p.name!r} ({sid})"
        try:
            _in_thread(lambda: os.unlink(p), self.cfg.op_timeout, f"unlink {p.name!r}")
        except OSError as e:
            self._drop(sid, "rm (failed: may be gone)")
            raise _OpFailed(e, args)
        self._drop(sid, f"rm in {f!r}")
        return args

    def m_edit(self, rng: random.Random) -> str:
        f, p = self._pick_msg(rng)
        old = self._read_sid(p)
        if old is None:
            raise Skip(f"cannot read {p.name!r}")
        in_place = rng.random() < 0.4
        new, data = self._new_message(rng)
        args = f"edit {f!r}/{p.name!r} {old} -> {new} ({'in place' if in_place else 'O_TRUNC'})"

        def do() -> None:
            if in_place:   # same-length id at the same offset, without O_TRUNC
                fd = os.open(p, os.O_RDWR)
                try:
                    os.pwrite(fd, new.encode(), len(SID_HEADER) + 2)
                finally:
                    os.close(fd)
            else:
                fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
        old_req = self._was_required(old)
        old_durable = old_req and old not in self.unconfirmed
        try:
            _in_thread(do, self.cfg.op_timeout)
        except OSError as e:
            self._either(new, "edit")
            if old_req:
                self.must.discard(old)
                self.alts.append(frozenset({old, new}))
            raise _OpFailed(e, args)
        self._drop(old, f"edited into {new}")
        self._require(new, f"edit of {old} in {f!r}", durable=False,
                      replaces=old if old_durable else None, folder=f)
        return args

    def m_fsync_race(self, rng: random.Random) -> str:
        """Bytes written while fsync's APPEND runs must be stored too (issue 10 item 3)."""
        f = rng.choice(self._selectable() or ["INBOX"])
        placeholder, data = self._new_message(rng, size=rng.choice([300_000, 1_500_000]))
        sid = self._next_sid()
        path = self.mpath(f) / f"race-{sid}.eml"
        delay = rng.uniform(0.0, 0.3)
        args = f"write {placeholder} ({len(data)} B) to {f!r}, fsync, pwrite id {sid} after {delay:.2f} s"

        def do() -> None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                err: list[BaseException] = []
                t = threading.Thread(target=lambda: _catch(err, os.fsync, fd), daemon=True)
                t.start()
                time.sleep(delay)
                os.pwrite(fd, sid.encode(), len(SID_HEADER) + 2)
                t.join(self.cfg.op_timeout)
            finally:
                os.close(fd)
        try:
            _in_thread(do, self.cfg.op_timeout)
        except OSError as e:
            self._either(sid, "fsync race")
            raise _OpFailed(e, args)
        self._note(placeholder, "fsync race placeholder (may exist)")
        self._require(sid, f"fsync race in {f!r}", durable=False, folder=f)
        return args

    def m_flags(self, rng: random.Random) -> str:
        f, p = self._pick_msg(rng)
        flags = self._flags(rng, True)
        args = f"setfattr user.imap.flags={' '.join(flags)!r} {f!r}/{p.name!r}"
        try:
            _in_thread(lambda: os.setxattr(p, "user.imap.flags", " ".join(flags).encode()),
                       self.cfg.op_timeout, "setxattr")
        except OSError as e:
            raise _OpFailed(e, args)
        return args

    def m_read(self, rng: random.Random) -> str:
        f, p = self._pick_msg(rng)
        args = f"cat {f!r}/{p.name!r}"
        try:
            _in_thread(p.read_bytes, self.cfg.op_timeout)
        except OSError as e:
            raise _OpFailed(e, args)
        return args

    def _typed_dir_name(self, rng: random.Random) -> str:
        name = self._folder_name(rng)
        return escape_level(name) if rng.random() < 0.7 else name

    def m_mkdir(self, rng: random.Random) -> str:
        if len(self.folders) >= MAX_FOLDERS:
            raise Skip("enough folders")
        parents = [()] + [folder_path(n) for n in sorted(self.folders) if n.upper() != "INBOX"]
        parent = rng.choice(parents) if rng.random() < 0.3 else ()
        typed = self._typed_dir_name(rng)
        path = self.m.mountpoint.joinpath(*parent, typed)
        args = f"mkdir {'/'.join(parent + (typed,))!r}"
        before = self._fresh_folders()
        try:
            _in_thread(lambda: os.mkdir(path), self.cfg.op_timeout)
        except OSError as e:
            self._refused_changed_nothing(e, before, args, made=parent + (typed,))
            raise _OpFailed(e, args)
        finally:
            self._refresh_folders()
        return args

    def m_rmdir(self, rng: random.Random) -> str:
        cands = [n for n in sorted(self.folders) if n.upper() != "INBOX"]
        if not cands:
            raise Skip("no folder")
        f = rng.choice(cands)
        path = self.mpath(f)
        try:
            entries = _in_thread(lambda: os.listdir(path), self.cfg.op_timeout)
        except OSError as e:
            raise _OpFailed(e, f"ls {f!r}")
        if entries and rng.random() < 0.8:
            raise Skip(f"{f!r} not empty")
        args = f"rmdir {f!r} ({len(entries)} entries shown)"
        before = self._fresh_folders()
        try:
            _in_thread(lambda: os.rmdir(path), self.cfg.op_timeout)
        except OSError as e:
            self._refused_changed_nothing(e, before, args, removed=f)
            raise _OpFailed(e, args)
        finally:
            self._refresh_folders()
        return args

    def m_rename_dir(self, rng: random.Random) -> str:
        cands = [n for n in sorted(self.folders) if n.upper() != "INBOX"]
        if not cands:
            raise Skip("no folder")
        f = rng.choice(cands)
        parents = [()] + [folder_path(n) for n in sorted(self.folders)
                          if n.upper() != "INBOX" and not (n == f or n.startswith(f + "/"))]
        parent = rng.choice(parents) if rng.random() < 0.3 else folder_path(f)[:-1]
        typed = self._typed_dir_name(rng)
        dst = self.m.mountpoint.joinpath(*parent, typed)
        args = f"mv {f!r} to {'/'.join(parent + (typed,))!r}"
        before = self._fresh_folders()
        try:
            _in_thread(lambda: os.rename(self.mpath(f), dst), self.cfg.op_timeout)
        except OSError as e:
            self._refused_changed_nothing(e, before, args, made=parent + (typed,), removed=f)
            raise _OpFailed(e, args)
        finally:
            self._refresh_folders()
        return args

    def _fresh_folders(self) -> set[str] | None:
        if self.outage_left:
            return None
        self._refresh_folders()
        return set(self.folders)

    def _refused_changed_nothing(self, e: OSError, before: set[str] | None, args: str,
                                 made: tuple[str, ...] = (), removed: str | None = None) -> None:
        """A folder operation the mount refused outright must not have changed the server
        (issue 10 item 8): the folder it would have made must not exist, the one it would
        have removed must still be there."""
        if e.errno in RETRYABLE_ERRNOS or before is None or self.partition_left:
            return
        after = self._fresh_folders()
        if after is None:
            return
        changed = []
        if made:
            typed = made[-1]
            levels = {typed, unescape_level(typed)}
            for n in sorted(after - before):
                p = folder_path(n)
                if p[:-1] == made[:-1] and (p[-1] in levels or n.split("/")[-1] in levels):
                    changed.append(f"new folder {n!r}")
        if removed is not None and removed in before and removed not in after:
            changed.append(f"folder {removed!r} gone")
        if changed:
            self._found("refused-but-changed", f"refused-{args}",
                        f"{args} failed with {_errname(e)}, yet the server changed: {', '.join(changed)}")

    # ------------------------------------------------------ the other client
    def _d_pick(self, rng: random.Random, c: imaplib.IMAP4) -> tuple[str, int]:
        folders = self._selectable()
        if not folders:
            raise Skip("no folder")
        f = rng.choice(folders)
        typ, _ = c.select(_sel(self.folders[f].wire))
        if typ != "OK":
            raise Skip(f"SELECT {f!r} {typ}")
        typ, data = c.uid("SEARCH", "ALL")
        uids = [int(x) for x in (data[0] or b"").split()] if typ == "OK" else []
        if not uids:
            raise Skip(f"{f!r} is empty")
        return f, rng.choice(uids)

    def d_append(self, rng: random.Random) -> str:
        f = rng.choice(self._selectable() or ["INBOX"])
        sid, data = self._new_message(rng)
        flags = self._flags(rng, False)
        date = time.time() - rng.randint(0, 10**8)
        args = f"APPEND {sid} to {f!r} flags={flags}"
        wire = self.folders[f].wire if f in self.folders else b"INBOX"

        def do(c: imaplib.IMAP4) -> None:
            c.literal = data
            typ, resp = c._simple_command("APPEND", _sel(wire),
                                          "(" + " ".join(flags) + ")" if flags else None,
                                          imaplib.Time2Internaldate(date))
            if typ != "OK":
                raise imaplib.IMAP4.error(f"APPEND: {typ} {resp!r}")
        try:
            self.direct.run(do)
        except Exception:
            self._either(sid, f"APPEND to {f!r}")
            raise
        self._require(sid, f"APPEND to {f!r}")
        return args

    def d_move(self, rng: random.Random) -> str:
        def do(c: imaplib.IMAP4) -> str:
            f, uid = self._d_pick(rng, c)
            dests = [g for g in self._selectable() if g != f]
            if not dests:
                raise Skip("one folder")
            g = rng.choice(dests)
            typ, data = c.uid("MOVE", str(uid), _sel(self.folders[g].wire))
            return f"UID MOVE {f!r} {uid} to {g!r}: {typ}"
        return self.direct.run(do)

    def d_store(self, rng: random.Random) -> str:
        def do(c: imaplib.IMAP4) -> str:
            f, uid = self._d_pick(rng, c)
            how = rng.choice(["+FLAGS", "-FLAGS", "FLAGS"])
            flags = self._flags(rng, False)
            if how != "FLAGS" and not flags:
                flags = [rng.choice(SERVER_KEYWORDS)]
            typ, data = c.uid("STORE", str(uid), how, "(" + " ".join(flags) + ")")
            return f"UID STORE {f!r} {uid} {how} ({' '.join(flags)}): {typ}"
        return self.direct.run(do)

    def d_expunge(self, rng: random.Random) -> str:
        def do(c: imaplib.IMAP4) -> str:
            f, uid = self._d_pick(rng, c)
            typ, data = c.uid("FETCH", str(uid), f"(BODY.PEEK[HEADER.FIELDS ({SID_HEADER})])")
            sid = None
            for item in data or []:
                if isinstance(item, tuple):
                    m = SID_ANY_RE.search(item[1] or b"")
                    sid = m.group(1).decode() if m else None
            self._drop(sid, f"UID EXPUNGE in {f!r} (by the other client)")
            c.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)")
            typ, _ = c.uid("EXPUNGE", str(uid))
            return f"UID EXPUNGE {f!r} {uid} ({sid}): {typ}"
        return self.direct.run(do)

    def d_create(self, rng: random.Random) -> str:
        if len(self.folders) >= MAX_FOLDERS:
            raise Skip("enough folders")
        name = self._folder_name(rng)
        if rng.random() < 0.3 and self.folders:
            parent = rng.choice([n for n in sorted(self.folders) if n.upper() != "INBOX"] or ["Archive"])
            name = f"{parent}/{name}"
        typ = self.direct.run(lambda c: c._simple_command("CREATE", quote(mutf7_encode(name)))[0])
        self._refresh_folders()
        return f"CREATE {name!r}: {typ}"

    def _children(self, name: str) -> list[str]:
        return [n for n in self.folders if n.startswith(name + "/")]

    def _forget_unconfirmed_in(self, name: str) -> None:
        """Mount writes into a folder another client deletes or renames may never land."""
        for sid, (_, folder) in list(self.unconfirmed.items()):
            if folder == name or folder.startswith(name + "/"):
                self._drop(sid, f"its folder {name!r} was deleted/renamed by the other client")

    def _uploads_first(self, rng: random.Random) -> None:
        """Usually let the mount's uploads finish before another client deletes or renames a
        folder: a file written into it meanwhile can only be retried, then saved aside."""
        if rng.random() < 0.2:
            return
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and "files waiting to be stored" in self._state():
            time.sleep(0.1)

    def d_delete(self, rng: random.Random) -> str:
        cands = [n for n in sorted(self.folders) if n.upper() != "INBOX" and not self._children(n)]
        if not cands:
            raise Skip("no folder")
        f = rng.choice(cands)
        self._uploads_first(rng)

        def do(c: imaplib.IMAP4) -> str:
            fi = self.folders[f]
            if fi.selectable:
                typ, data = c.select(_sel(fi.wire), readonly=True)
                if typ == "OK" and data and data[0] != b"0":
                    raise Skip(f"{f!r} not empty on the server")
                c.unselect() if typ == "OK" else None
            self._forget_unconfirmed_in(f)
            typ, _ = c._simple_command("DELETE", _sel(fi.wire))
            return f"DELETE {f!r}: {typ}"
        out = self.direct.run(do)
        self._refresh_folders()
        return out

    def d_rename(self, rng: random.Random) -> str:
        cands = [n for n in sorted(self.folders) if n.upper() != "INBOX"]
        if not cands:
            raise Skip("no folder")
        f = rng.choice(cands)
        new = self._folder_name(rng)
        if "/" in f and rng.random() < 0.5:
            new = f.rsplit("/", 1)[0] + "/" + new
        self._uploads_first(rng)
        self._forget_unconfirmed_in(f)
        typ = self.direct.run(lambda c: c._simple_command(
            "RENAME", _sel(self.folders[f].wire), quote(mutf7_encode(new)))[0])
        self._refresh_folders()
        return f"RENAME {f!r} to {new!r}: {typ}"

    # ----------------------------------------------------------------- faults
    def f_kick(self, rng: random.Random) -> str:
        self.res.faults["kick"] += 1
        r = subprocess.run(["doveadm", "-c", str(self.d.conf_path), "kick", self.d.user],
                           capture_output=True, text=True, timeout=30)
        self.direct.drop()
        return f"doveadm kick {self.d.user}: rc={r.returncode}"

    def f_restart(self, rng: random.Random) -> str:
        self.res.faults["restart"] += 1
        self.d.stop()
        pause = rng.uniform(0, 1.5)
        time.sleep(pause)
        self.d.start()
        self.direct.drop()
        return f"Dovecot killed, restarted after {pause:.1f} s"

    def f_cut_now(self, rng: random.Random) -> str:
        self.res.faults["cut"] += 1
        return f"proxy cut {self.proxy.cut()} connections"

    def f_cut_when(self, rng: random.Random) -> str:
        self.res.faults["cut_when"] += 1
        if rng.random() < 0.75:
            trig = rng.choice(CUT_TRIGGERS)
            fwd = rng.random() < 0.5
            self.armed.append(self.proxy.cut_when(trig, forward=fwd))
            return f"cut when the mount sends {trig.decode()} (forward={fwd})"
        trig = rng.choice(SERVER_CUT_TRIGGERS)
        self.armed.append(self.proxy.cut_when_server(trig))
        return f"cut when the server sends {trig.decode()}"

    def f_partition(self, rng: random.Random) -> str:
        self.res.faults["partition"] += 1
        self.partition_left = rng.randint(2, 8)
        self.proxy.refuse = True
        self.proxy.cut()
        return f"mount cut off from the server for {self.partition_left} ops"

    def f_outage(self, rng: random.Random) -> str:
        self.res.faults["outage"] += 1
        self.outage_left = rng.randint(2, 6)
        self.d.stop()
        self.direct.drop()
        return f"Dovecot down for {self.outage_left} ops"

    def f_kill9(self, rng: random.Random) -> str:
        self.res.faults["kill9"] += 1
        pid = self.m.proc.pid
        os.kill(pid, signal.SIGKILL)
        self._lose_unconfirmed("imapfs killed with -9")
        self._remount()
        return f"kill -9 imapfs (pid {pid}), remounted on the same cache"

    def f_remount(self, rng: random.Random) -> str:
        self.res.faults["remount"] += 1
        self._remount(graceful=True)
        return "unmount, mount again on the same cache"

    def _lose_unconfirmed(self, why: str) -> None:
        """Bytes closed but not yet fsynced or seen on the server may die with the daemon."""
        gone = set(self.unconfirmed)
        for sid, (old, _) in list(self.unconfirmed.items()):
            self.must.discard(sid)
            self._note(sid, f"{why} before it was seen on the server (may be missing)")
            if old is not None and old not in gone:
                self.alts.append(frozenset({old, sid}))   # an edit: the old version or the new
        self.alts = [g for g in self.alts if not g & gone]
        self.unconfirmed.clear()

    def _remount(self, graceful: bool = False) -> None:
        m = self.m
        if graceful:
            with contextlib.suppress(Exception):
                m.unmount(check=False)
        else:
            with contextlib.suppress(Exception):
                m.proc.wait(10)
            force_unmount(self.mp)
            with contextlib.suppress(Exception):
                m.unmount(check=False)
        if is_mounted(self.mp):
            force_unmount(self.mp)
        self._mount()

    def _poke(self) -> str:
        """After a hang: does the daemon still answer a new request (stat, ls of the root)?"""
        try:
            _in_thread(lambda: os.listdir(self.m.mountpoint), 10, "poke")
            return "the daemon still answers new requests (ls of the root)"
        except OpHang:
            return "the daemon answers no new request either"
        except OSError as e:
            return f"a new request fails: {_errname(e)}"

    def _dump_kernel_stacks(self, fname: str) -> None:
        """Where this process's and imapfs's threads wait in the kernel (root only)."""
        out = []
        for pid in (os.getpid(), self.m.proc.pid if self.m.proc else None):
            if pid is None:
                continue
            with contextlib.suppress(OSError):
                for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
                    base = f"/proc/{pid}/task/{tid}"
                    try:
                        comm = Path(base, "comm").read_text().strip()
                        stack = Path(base, "stack").read_text()
                    except OSError as e:
                        comm, stack = "?", f"({e})"
                    out.append(f"pid {pid} tid {tid} {comm}\n{stack}")
        with contextlib.suppress(OSError):
            (self.work / fname).write_text("\n".join(out))

    def _crash_recover(self, why: str, dump: bool = False) -> None:
        if self.m.proc is not None and self.m.proc.poll() is None:
            if dump and os.environ.get("IMAPFS_SOAK_SIGUSR2"):   # a debugging launcher's dump
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.m.proc.pid, signal.SIGUSR2)
                time.sleep(1)
            if dump:   # faulthandler (PYTHONFAULTHANDLER=1) writes every thread's stack
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.m.proc.pid, signal.SIGABRT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.m.proc.wait(3)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.m.proc.pid, signal.SIGKILL)
        self._lose_unconfirmed(why)
        try:
            self._remount()
        except AssertionError:   # e.g. no cache yet while the server is away: heal, retry
            self._heal()
            self._remount()

    # ------------------------------------------------------------ quiet point
    def _found(self, kind: str, key: str, detail: str) -> bool:
        k = f"{kind}:{key}"
        if k in self.seen_keys:
            return False
        self.seen_keys.add(k)
        self.res.divergences.append(Divergence(kind, key, detail, self.ops_done, self.quiet_no))
        self.out(f"soak: DIVERGENCE [{kind}] {detail}")
        return True

    def _server(self) -> dict[str, FolderInfo]:
        for attempt in range(5):
            try:
                c = self.d.client(timeout=30)
            except (OSError, imaplib.IMAP4.error, EOFError):
                if attempt == 4:
                    raise
                if not self.d.running:   # Dovecot died on its own: note it, start it again
                    self.res.notes.append(f"Dovecot was found dead at quiet point {self.quiet_no}")
                    self.d.start()
                time.sleep(1)
                continue
            try:
                return server_snapshot(c)
            except (imaplib.IMAP4.abort, OSError, EOFError):
                if attempt == 4:
                    raise
                time.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    c.logout()
        raise AssertionError("unreachable")

    def _compare(self, srv: dict[str, FolderInfo], view: MountView) -> dict[str, str]:
        """Structural differences, keyed so that a re-check can confirm each one."""
        diffs: dict[str, str] = {}
        expected: dict[tuple[str, ...], str] = {}
        for name in srv:
            p = folder_path(name)
            if p in expected:
                diffs[f"collision:{p}"] = (f"server folders {expected[p]!r} and {name!r} both map to "
                                           f"{'/'.join(p)!r}")
            expected[p] = name
            for k in range(1, len(p)):
                expected.setdefault(p[:k], "/".join(name.split("/")[:k]))
        shown = set(view.uids) | set(view.errors)
        for p in sorted(set(expected) - shown):
            diffs[f"folder-missing:{p}"] = f"server folder {expected[p]!r} not shown at {'/'.join(p)!r}"
        for p in sorted(shown - set(expected)):
            diffs[f"folder-extra:{p}"] = f"mount shows folder {'/'.join(p)!r} the server does not have"
        for p, err in view.errors.items():
            diffs[f"unlistable:{p}"] = f"ls {'/'.join(p)!r} fails: {err}"
        for n in view.other.get((), []):
            diffs[f"root-file:{n}"] = f"file {n!r} at the mount's root"
        for p in sorted(set(expected) & set(view.uids)):
            name = expected[p]
            fi = srv.get(name)
            smsgs = fi.msgs if fi is not None and fi.msgs is not None else {}
            muids = view.uids[p]
            for n in view.other.get(p, []):
                diffs[f"odd-name:{p}:{n}"] = f"{'/'.join(p)!r} shows {n!r}, not a message name"
            missing = sorted(set(smsgs) - set(muids))
            extra = sorted(set(muids) - set(smsgs))
            if missing:
                diffs[f"uids-missing:{p}"] = (f"{name!r}: {len(missing)} of {len(smsgs)} server UIDs not "
                                             f"shown, e.g. {missing[:8]}")
            if extra:
                diffs[f"uids-extra:{p}"] = (f"{name!r}: mount shows {len(extra)} UIDs the server does "
                                           f"not have, e.g. {extra[:8]} ({muids[extra[0]][0]!r})")
            for uid in sorted(set(smsgs) & set(muids)):
                names = muids[uid]
                if len(names) > 1:
                    diffs[f"dup-name:{p}:{uid}"] = f"{name!r} UID {uid} under {len(names)} names {names[:3]}"
                m = CANONICAL.match(names[0])
                if not m:
                    diffs[f"odd-name:{p}:{uid}"] = f"{name!r} UID {uid} named {names[0]!r}"
                elif m.group(1) != smsgs[uid].date and smsgs[uid].date != "?":
                    diffs[f"date:{p}:{uid}"] = (f"{name!r} UID {uid} named {names[0]!r}, server "
                                               f"INTERNALDATE gives {smsgs[uid].date}")
        return diffs

    def _samples(self, srv: dict[str, FolderInfo], view: MountView, rng: random.Random) -> dict[str, str]:
        diffs: dict[str, str] = {}
        pool = []
        for name, fi in sorted(srv.items()):
            p = folder_path(name)
            if fi.msgs and p in view.uids:
                pool += [(name, p, uid) for uid in sorted(set(fi.msgs) & set(view.uids[p]))]
        if not pool:
            return diffs
        c = self.d.client(timeout=30)
        try:
            for name, p, uid in rng.sample(pool, min(self.cfg.sample, len(pool))):
                path = self.m.mountpoint.joinpath(*p, view.uids[p][uid][0])
                want = fetch_body(c, srv[name].wire, uid)
                if want is None:
                    continue
                try:
                    got = _in_thread(path.read_bytes, self.cfg.op_timeout)
                except OpHang as e:   # one is enough: do not wait for every sample
                    diffs[f"read-hang:{p}:{uid}"] = f"reading {name!r} UID {uid} hangs: {e}"
                    break
                except OSError as e:
                    diffs[f"read:{p}:{uid}"] = f"reading {name!r} UID {uid} fails: {_errname(e)}"
                    continue
                if got != want:
                    diffs[f"bytes:{p}:{uid}"] = (f"{name!r} UID {uid}: mount gives {len(got)} bytes "
                                                f"({got[:40]!r}), server {len(want)} ({want[:40]!r})")
                try:
                    fl = _in_thread(lambda: os.getxattr(path, "user.imap.flags"),  # noqa: B023 - run before the turn ends
                                    self.cfg.op_timeout)
                    mflags = frozenset(fl.decode(errors="replace").split())
                except (OSError, OpHang) as e:
                    diffs[f"xattr:{p}:{uid}"] = f"user.imap.flags of {name!r} UID {uid}: {_errname(e)}"
                    if isinstance(e, OpHang):
                        break
                    continue
                sflags = srv[name].msgs[uid].flags
                if mflags != sflags:
                    diffs[f"flags:{p}:{uid}"] = (f"{name!r} UID {uid}: user.imap.flags "
                                                f"{sorted(mflags)} vs server {sorted(sflags)}")
        finally:
            with contextlib.suppress(Exception):
                c.logout()
        return diffs

    def _losses(self, srv: dict[str, FolderInfo]) -> tuple[dict[str, str], Counter]:
        """Required ids not on the server, each with its history and where it was last seen."""
        present: Counter = Counter()
        for name, fi in srv.items():
            for uid, mi in (fi.msgs or {}).items():
                if mi.sid:
                    present[mi.sid] += 1
                    self.last_seen[mi.sid] = f"last seen at quiet point {self.quiet_no}: {name!r} UID {uid}"
        aside = self._saved_aside() if any(not present[s] for s in self.must) or any(
            not any(present[s] for s in g) for g in self.alts) else {}

        def why(sid: str, n: int) -> str:
            parts = self.history.get(sid, [])[-n:]
            if sid in self.last_seen:
                parts.append(self.last_seen[sid])
            if sid in aside:
                parts.append(f"NOT on the server but saved aside in {aside[sid]}")
            return "; ".join(parts)

        lost = {}
        for sid in sorted(self.must):
            if not present[sid]:
                lost[sid] = why(sid, 6)
        for g in self.alts:
            if not any(present[s] for s in g):
                lost["|".join(sorted(g))] = "none of " + ", ".join(f"{s} ({why(s, 3)})" for s in sorted(g))
        return lost, present

    def _saved_aside(self) -> dict[str, str]:
        """Ids in the files imapfs saves instead of storing them (unsent/, journal-kept/)."""
        out: dict[str, str] = {}
        for d in (self.xdg / "imapfs" / "unsent", self.cache / "journal-kept"):
            if not d.is_dir():
                continue
            for p in d.rglob("*"):
                with contextlib.suppress(OSError):
                    with open(p, "rb") as f:
                        m = SID_ANY_RE.search(f.read(4096))
                    if m:
                        out[m.group(1).decode()] = str(p.relative_to(self.work))
        return out

    def _state(self) -> str:
        try:
            return _in_thread(lambda: mount_state(self.m.mountpoint), self.cfg.op_timeout)
        except (OSError, OpHang) as e:
            return f"(state unreadable: {_errname(e)})"

    def _view(self) -> MountView:
        """The mount's tree, walked where a hung call cannot stall the quiet point."""
        try:
            return _in_thread(lambda: mount_view(self.m.mountpoint), 2 * self.cfg.op_timeout,
                              "walking the mount")
        except OpHang as e:
            self._found("hang", f"hang-walk-{self.quiet_no}", f"quiet point {self.quiet_no}: {e}")
            self._dump_kernel_stacks(f"hang-quiet-{self.quiet_no}-kernel-stacks.txt")
            self._crash_recover("a hung walk of the mount", dump=True)
            return _in_thread(lambda: mount_view(self.m.mountpoint), 2 * self.cfg.op_timeout,
                              "walking the mount after a remount")

    def _trim_proxy(self) -> None:
        """The proxy records all traffic: keep the last few MB, drop closed connections."""
        p = self.proxy
        with p._lock:
            size = sum(len(c.client_data) + len(c.server_data) for c in p.connections)
            p.connections = [c for c in p.connections if not c.closed.is_set()]
        if size > TRAFFIC_KEEP * 4:
            with self.traffic_lock:
                self.traffic_tail = (self.traffic_tail + p.client_bytes())[-TRAFFIC_KEEP:]
                p.clear()

    def _trimmer(self) -> None:
        """Bounds the proxy's records even while a call hangs (a daemon thread)."""
        while not self.stopping.wait(1.0):
            with contextlib.suppress(Exception):
                self._trim_proxy()

    def quiet_point(self, final: bool = False) -> bool:
        """Settle, then check mount == server and nothing lost; True if something new was found."""
        self.quiet_no += 1
        self._heal()
        t = time.monotonic()
        deadline = t + self.settle
        before = len(self.res.divergences) + len(self.res.lost)
        settled = False
        while True:
            st = self._state()
            if state_settled(st):
                try:
                    diffs = self._compare(self._server(), self._view())
                except (imaplib.IMAP4.error, OSError, EOFError):
                    diffs = {"server": "unreadable"}
                if not diffs:
                    settled = True
                    break
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        waited = time.monotonic() - t
        srv = self._server()
        view = self._view()
        qrng = random.Random(f"{self.seed}-quiet-{self.quiet_no}")
        first = self._compare(srv, view)
        first.update(self._samples(srv, view, qrng))
        st = self._state()
        if not state_settled(st):
            first["state"] = "user.imapfs.state at a quiet point: " + " | ".join(st.strip().splitlines())
        lost, present = self._losses(srv)
        if first or lost:
            time.sleep(2.0)   # only what persists counts
            srv = self._server()
            view = self._view()
            again = self._compare(srv, view)
            again.update(self._samples(srv, view, random.Random(f"{self.seed}-quiet-{self.quiet_no}")))
            st = self._state()
            if not state_settled(st):
                again["state"] = "user.imapfs.state at a quiet point: " + " | ".join(st.strip().splitlines())
            lost2, present = self._losses(srv)
            for k in sorted(set(first) & set(again)):
                self._found(k.split(":", 1)[0], k, again[k])
            for sid in sorted(set(lost) & set(lost2)):
                if sid not in self.res.lost and not any(x.startswith(sid + " ") for x in self.res.lost):
                    self.res.lost.append(f"{sid} ({lost2[sid]})")
                    self.out(f"soak: LOST {sid}: {lost2[sid]}")
                    for s in sid.split("|"):
                        self.must.discard(s)
                    self.alts = [g for g in self.alts if "|".join(sorted(g)) != sid]
        if len(self.res.divergences) + len(self.res.lost) > before and self.proxy is not None:
            with self.traffic_lock:
                traffic = (self.traffic_tail + self.proxy.client_bytes())[-TRAFFIC_KEEP:]
            (self.work / f"traffic-to-server-before-quiet-{self.quiet_no}.txt").write_bytes(traffic)
        self.res.duplicates = sum(1 for v in present.values() if v > 1)
        self.unconfirmed.clear()   # everything written is now on the server or reported
        self.res.quiet_points += 1
        if self.proxy is not None:
            with self.traffic_lock:
                self.proxy.clear()
                self.traffic_tail = b""
        found = len(self.res.divergences) + len(self.res.lost) - before
        n_msgs = sum(len(fi.msgs or {}) for fi in srv.values())
        self.out(f"soak: quiet point {self.quiet_no}{' (final)' if final else ''} after "
                 f"{self.ops_done} ops: {len(srv)} folders, {n_msgs} messages, "
                 f"{'settled' if settled else 'NOT settled'} in {waited:.1f} s, "
                 f"{found} new findings")
        if found:
            self._log("CHECK", "quiet-point", f"#{self.quiet_no}", f"{found} findings")
        self._refresh_folders()
        return found > 0


class _OpFailed(Exception):
    def __init__(self, e: OSError, args_text: str) -> None:
        super().__init__(f"{args_text}: {e}")
        self.err = e
        self.errname = _errname(e)
        self.args_text = args_text


def _catch(box: list, fn: Callable, *a: object) -> None:
    try:
        fn(*a)
    except BaseException as e:  # noqa: BLE001 - handed to the caller
        box.append(e)


def run_soak(cfg: SoakConfig) -> SoakResult:
    return Soak(cfg).run()


# ---------------------------------------------------------------- scripts/soak

def main(argv: list[str] | None = None) -> int:
    """``scripts/soak --minutes N [--seed S]``: segments of a fresh Dovecot + mount each.

    Exit 0: no divergence and no lost message; 1: some; 2: the harness itself failed;
    130: interrupted (after cleaning up).
    """
    import argparse
    import sys
    import traceback

    ap = argparse.ArgumentParser(prog="scripts/soak", description=(
        "Differential soak test of imapfs against a real Dovecot (issue 10): random "
        "operations through the mount and by another IMAP client, faults, and quiet "
        "points that check the mount shows exactly the server and no mail was lost."))
    ap.add_argument("--minutes", type=float, required=True, help="total running time")
    ap.add_argument("--seed", type=int, default=None,
                    help="seed of the first segment (segment k uses SEED+k); default: random")
    ap.add_argument("--segment-minutes", type=float, default=10.0,
                    help="each segment gets a fresh Dovecot and mount (default 10)")
    ap.add_argument("--quiet-every", type=int, default=50, help="operations between quiet points")
    ap.add_argument("--profile", choices=sorted(dv.PROFILES), default=None,
                    help="Dovecot capability profile (default: chosen from each segment's seed)")
    ap.add_argument("--stop-on-divergence", action="store_true",
                    help="stop at the first quiet point that finds something")
    ap.add_argument("--plain-keywords", action="store_true",
                    help="no odd keywords ('[', digit runs, non-ASCII): to look past issue 10 items 2, 4")
    ap.add_argument("--no-faults", action="store_true", help="operations only, no fault injection")
    ap.add_argument("--debug", action="store_true", help="run imapfs with -d")
    ap.add_argument("--max-ops", type=int, default=None,
                    help="operations per segment (default: 20 a second of it)")
    ap.add_argument("--skip", default="",
                    help="operation indexes not to run in the first segment, e.g. 3,10-40 "
                         "(to reduce a finding: the others keep their kinds and choices)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep every segment's logs here (default: temp dirs, kept on findings)")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big") % 10**6
    skip: set[int] = set()
    for part in filter(None, args.skip.split(",")):
        lo, _, hi = part.partition("-")
        skip.update(range(int(lo), int(hi or lo) + 1))
    total = args.minutes * 60
    print(f"soak: {args.minutes:g} minutes from seed {seed} "
          f"(reproduce a segment: scripts/soak --minutes M --seed S)", flush=True)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    t0 = time.monotonic()
    results: list[SoakResult] = []
    harness_failed = False
    k = 0
    while True:
        left = total - (time.monotonic() - t0)
        if results and left < 60:
            break
        seconds = max(20.0, min(args.segment_minutes * 60, left - 30))
        cfg = SoakConfig(seed=seed + k, max_ops=args.max_ops or int(seconds * 20), max_seconds=seconds,
                         skip_ops=frozenset(skip if k == 0 else ()),
                         quiet_every=args.quiet_every, profile=args.profile,
                         faults=not args.no_faults, stop_on_divergence=args.stop_on_divergence,
                         odd_keywords=not args.plain_keywords, debug=args.debug,
                         workdir=(args.workdir / f"segment-{k}-seed-{seed + k}") if args.workdir else None,
                         out=lambda s: print(s, flush=True))
        try:
            r = run_soak(cfg)
        except KeyboardInterrupt:
            print("soak: interrupted", flush=True)
            break
        except Exception:  # noqa: BLE001 - printed, and the run ends as a harness failure
            traceback.print_exc()
            harness_failed = True
            break
        results.append(r)
        print(r.summary(), flush=True)
        if not r.ok:
            print("--- operation log tail ---\n" + r.log_tail(30), flush=True)
        k += 1
        if r.interrupted or (args.stop_on_divergence and not r.ok):
            break
    ops = sum(r.ops for r in results)
    faults = sum(sum(r.faults.values()) for r in results)
    div = sum(len(r.divergences) for r in results)
    lost = sum(len(r.lost) for r in results)
    herr = sum(len(r.harness_errors) for r in results)
    print(f"soak: {len(results)} segments (seeds {seed}..{seed + max(0, len(results) - 1)}), "
          f"{(time.monotonic() - t0) / 60:.1f} minutes")
    print(f"operations done: {ops}")
    print(f"faults injected: {faults}")
    print(f"divergences found: {div}")
    print(f"lost messages: {lost}")
    if herr:
        print(f"harness errors: {herr}")
    sys.stdout.flush()
    if div or lost:
        return 1
    if harness_failed or herr:
        return 2
    if any(r.interrupted for r in results) or not results:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
