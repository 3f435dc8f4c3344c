#!/usr/bin/env python3
"""imapfs benchmark: imapfs against raw imaplib and mbsync, side by side (issue 5).

    scripts/bench                      # full run: N=10,000, loopback and --rtt 20, 100k listing
    scripts/bench -n 2000 --skip-rtt   # quicker
    scripts/bench --big                # only the 100,000-message listing check
    scripts/bench --profile DIR        # also py-spy the daemon during a cold grep

What it does, in order (docs/performance.md has the method and the latest table):

1. Generates N messages (fixed seed) straight into the Maildir of a throwaway
   Dovecot (tests/support/dovecot.py), folder ``Bench``, plus one 50 MB
   message in folder ``Big``; lets Dovecot index them.  A known NEEDLE is in
   a known ~1 % of the messages; every grep result is checked against it.
2. Loopback figures: raw imaplib (metadata FETCH, all bodies in batches of
   500, the 50 MB message), mbsync pulling ``Bench`` into a fresh Maildir and
   grep there, imapfs freshly mounted (cold ``ls -l``; on a second fresh mount
   cold ``grep -rl``, warm ``grep -rl``, ``cat`` of the 50 MB message, the
   daemon's peak RSS), and FUSE request counts from a third, instrumented
   mount (optionally under py-spy).
3. The same client-side figures with a latency proxy between every client
   and Dovecot (``--rtt MS``, default 20; ``--skip-rtt`` skips it).
4. ``--big``-style check: 100,000 small messages in one folder, ``ls`` through
   a fresh mount, daemon memory per message (part of the default run;
   ``--skip-big`` skips it).

Exit status: 0 all targets met; 1 a target was missed (not with
``--no-targets``); 2 a step failed, hung or gave a wrong result.
Everything started here (Dovecot, mounts, proxies, tools) is stopped on exit
and on Ctrl-C; all traffic goes to 127.0.0.1.
"""
from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import datetime
import email.header
import email.utils
import imaplib
import json
import os
import platform
import pwd
import quopri
import random
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

NEEDLE = "imapfs-bench-needle-Zq7"   # '-' never occurs in base64, so no chance hits
FOLDER = "Bench"
BIG_FOLDER = "Big"
HUGE_FOLDER = "Huge"
SEED = 20240601
MB = 1024 * 1024

# --------------------------------------------------------------------------
# Small utilities


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fmt_s(v: float) -> str:
    return f"{v:.3f} s" if v < 10 else f"{v:.1f} s"


def drop_caches(enabled: bool) -> bool:
    """Write back and drop the page cache (root only; failure tolerated)."""
    if not enabled:
        return False
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def machine_info() -> dict:
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_start": os.getloadavg()[0]}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        info["nproc"] = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout)
        info["free_h"] = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.rstrip()
    except (OSError, ValueError):
        pass
    for tool, args in (("dovecot", ["--version"]), ("mbsync", ["--version"])):
        try:
            info[tool] = subprocess.run([tool, *args], capture_output=True, text=True,
                                        timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            info[tool] = None
    try:
        info["imapfs_commit"] = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
            text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "imapfs"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if dirty:
            info["imapfs_commit"] += " (imapfs/ modified)"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


class StepError(Exception):
    """A benchmark step failed, hung or produced a wrong result."""


# --------------------------------------------------------------------------
# Running commands with a deadline (a hung FUSE mount must not hang us)


def run_cmd(argv, timeout: float, on_timeout=None, stdin=subprocess.DEVNULL,
            capture: bool = True, env=None) -> tuple[float, subprocess.CompletedProcess]:
    """Run argv; return (seconds, result).  On timeout: on_timeout(), kill, StepError."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        if on_timeout is not None:
            with contextlib.suppress(Exception):
                on_timeout()
        partial = _kill_group(proc)
        e = StepError(f"{' '.join(map(str, argv[:3]))}... timed out after {timeout:g} s")
        e.partial_stdout = partial
        e.timeout = timeout
        raise e from None
    except BaseException:
        _kill_group(proc)
        raise
    dt = time.perf_counter() - t0
    return dt, subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen) -> bytes:
    """Kill the command's process group; return what it had printed."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        out, _ = proc.communicate(timeout=10)
        return out or b""
    except (subprocess.TimeoutExpired, ValueError, OSError):
        return b""


# --------------------------------------------------------------------------
# The corpus

WORDS = """the of and to in is you that it he was for on are as with his they at be this
from have or by one had not but what all were when we there can an your which their said if
do will each about how up out them then she many some so these would other into has more her
two like him see time could no make than first been its who now people my made over did down
only way find use may water long little very after words called just where most know get
through back much go good new write our me man too any day same right look think also around
another came come work three word must because does part even place well such here take why
help put different away again off went old number great tell men say small every found still
between name should home big give air line set own under read last never us left end along
while might next sound below saw something thought both few those always looked show large
often together asked house world going want school important until form food keep children
feet land side without boy once animals life enough took sometimes four head above kind began
almost live page got earth need far hand high year mother light parts country father let night
following picture being study second eyes soon times story boys since white days ever paper
hard near sentence better best across during today others however sure means knew its try
told young miles sun ways thing whole hear example heard several change answer room sea
against top turned learn point city play toward five using himself usually meeting budget
invoice server release deadline report quarterly review contract draft schedule project""".split()

NONASCII_SUBJECTS = [
    "Grüße aus München", "Réunion de l'équipe à 15h", "Ñandú y pingüino", "Привет, как дела?",
    "会議の議事録", "Ελληνικά νέα", "Zürich – Straße", "Crème brûlée recipe", "Čeština je hezká",
    "Año nuevo 🎉", "Smörgåsbord", "Kraków spotkanie", "دعوة للاجتماع", "日本語のテスト 📎",
]
LATIN1_WORDS = ["café", "garçon", "über", "naïve", "Größe", "déjà", "señor", "façade", "für", "Ärger"]
NAMES = ["Alice Martin", "Bob Müller", "Chloé Dubois", "Dmitri Ivanov", "Eve Smith", "Fatima Zahra",
         "Gregor Novak", "Hana Sato", "Ivan Petrov", "José García", "Kai Lund", "Lena Berg"]
ATTACH_TYPES = [("application/pdf", "pdf"), ("image/jpeg", "jpg"), ("application/zip", "zip"),
                ("image/png", "png"),
                ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "docx")]


class Gen:
    """Deterministic realistic messages (CRLF bytes)."""

    def __init__(self, seed: int, needle_fraction: float = 0.01):
        self.rng = random.Random(seed)
        self.seed = seed
        self.needle_fraction = needle_fraction
        self.base_time = datetime.datetime(2022, 6, 1, tzinfo=datetime.timezone.utc)
        self.kinds = collections.Counter()

    # -- pieces
    def words(self, n: int) -> str:
        return " ".join(self.rng.choices(WORDS, k=n))

    def paragraph_text(self, nbytes: int, latin1: bool = False) -> str:
        lines, size = [], 0
        while size < nbytes:
            n = self.rng.randint(6, 12)
            w = self.rng.choices(WORDS, k=n)
            if latin1 and self.rng.random() < 0.5:
                w[self.rng.randrange(n)] = self.rng.choice(LATIN1_WORDS)
            line = " ".join(w).capitalize() + "."
            lines.append(line)
            size += len(line) + 2
            if self.rng.random() < 0.15:
                lines.append("")
        return "\r\n".join(lines) + "\r\n"

    def addr(self) -> str:
        name = self.rng.choice(NAMES)
        local = name.split()[0].lower().encode("ascii", "ignore").decode() or "user"
        dom = self.rng.choice(["example.org", "example.com", "example.net", "mail.example.de"])
        return email.utils.formataddr((name, f"{local}@{dom}"), charset="utf-8")

    def subject(self, i: int) -> str:
        r = self.rng.random()
        if r < 0.22:
            text = self.rng.choice(NONASCII_SUBJECTS) + " " + self.words(self.rng.randint(1, 4))
            if self.rng.random() < 0.3 and all(ord(c) < 256 for c in text):
                return email.header.Header(text, "iso-8859-1").encode(linesep="\r\n")
            return email.header.Header(text, "utf-8").encode(linesep="\r\n")
        prefix = self.rng.choice(["", "", "Re: ", "Fwd: ", "RE: "])
        return prefix + self.words(self.rng.randint(2, 9)).capitalize()

    def headers(self, i: int, when: datetime.datetime, subject: str, extra: list[str]) -> str:
        h = [
            f"Return-Path: <bounce-{i}@example.org>",
            f"Received: from mx{i % 7}.example.net (mx{i % 7}.example.net [192.0.2.{i % 250 + 1}])\r\n"
            f"\tby mail.example.org with ESMTPS id {self.rng.getrandbits(48):012x};\r\n"
            f"\t{email.utils.format_datetime(when)}",
            f"Date: {email.utils.format_datetime(when)}",
            f"From: {self.addr()}",
            f"To: {self.addr()}",
        ]
        if self.rng.random() < 0.3:
            h.append(f"Cc: {self.addr()}, {self.addr()}")
        h += [
            f"Subject: {subject}",
            f"Message-ID: <bench.{i}.{self.seed}@example.org>",
            "MIME-Version: 1.0",
            f"X-Bench-Id: {i}",
        ]
        return "\r\n".join(h + extra) + "\r\n"

    def text_body(self, i: int, needle: bool, nbytes: int, latin1: bool = False) -> str:
        body = f"Hello,\r\n\r\nToken: BENCHTOK-{self.seed}-{i:07d}\r\n\r\n"
        body += self.paragraph_text(nbytes, latin1)
        if needle:
            # own line: never split by quoted-printable soft line breaks
            body += f"\r\n{NEEDLE}\r\n\r\n" + self.paragraph_text(200, latin1)
        return body + "\r\n-- \r\nSent by the imapfs benchmark\r\n"

    def b64(self, nbytes: int) -> bytes:
        raw = self.rng.randbytes(nbytes)
        return base64.encodebytes(raw).replace(b"\n", b"\r\n")

    def attachment_size(self) -> int:
        # encoded size 30 KB .. 3 MB, skewed towards small (mean ~220 KB)
        enc = 30_000 * 100 ** (self.rng.random() ** 4)
        return int(enc * 3 / 4)

    def boundary(self) -> str:
        return f"=_bench_{self.rng.getrandbits(64):016x}"

    # -- whole messages
    def message(self, i: int, when: datetime.datetime, needle: bool) -> bytes:
        r = self.rng.random()
        subj = self.subject(i)
        tsize = int(600 * 12 ** self.rng.random())   # 0.6 .. 7 KB of text
        if r < 0.54:
            kind = "plain"
            hdr = self.headers(i, when, subj, ["Content-Type: text/plain; charset=us-ascii",
                                               "Content-Transfer-Encoding: 7bit"])
            out = hdr + "\r\n" + self.text_body(i, needle, tsize)
            data = out.encode("ascii")
        elif r < 0.60:
            kind = "latin1-qp"
            hdr = self.headers(i, when, subj, ["Content-Type: text/plain; charset=iso-8859-1",
                                               "Content-Transfer-Encoding: quoted-printable"])
            body = self.qp(self.text_body(i, needle, tsize, latin1=True).encode("iso-8859-1"))
            data = hdr.encode("ascii") + b"\r\n" + body
        elif r < 0.92:
            kind = "alternative"
            b = self.boundary()
            hdr = self.headers(i, when, subj, [f'Content-Type: multipart/alternative; boundary="{b}"'])
            text = self.text_body(i, needle, tsize)
            html = "<html><body>" + "".join(
                f"<p>{p}</p>\r\n" for p in self.paragraph_text(tsize).split("\r\n") if p) + "</body></html>\r\n"
            data = (hdr + "\r\nThis is a multi-part message in MIME format.\r\n\r\n"
                    f"--{b}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                    + text + f"\r\n--{b}\r\nContent-Type: text/html; charset=utf-8\r\n"
                    "Content-Transfer-Encoding: quoted-printable\r\n\r\n").encode("utf-8")
            data += self.qp(html.encode("utf-8")) + f"\r\n--{b}--\r\n".encode()
        elif r < 0.98:
            kind = "attachment"
            data = self.with_attachments(i, when, subj, needle, tsize, self.rng.choice([1, 1, 1, 1, 2, 2, 3]))
        else:
            kind = "nested-rfc822"
            data = self.nested(i, when, subj, needle, tsize)
        self.kinds[kind] += 1
        return data

    def qp(self, data: bytes) -> bytes:
        enc = quopri.encodestring(data.replace(b"\r\n", b"\n"))
        return enc.replace(b"\n", b"\r\n")

    def with_attachments(self, i, when, subj, needle, tsize, count) -> bytes:
        b = self.boundary()
        hdr = self.headers(i, when, subj, [f'Content-Type: multipart/mixed; boundary="{b}"'])
        out = [(hdr + f"\r\n--{b}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: 8bit\r\n\r\n" + self.text_body(i, needle, tsize)).encode("utf-8")]
        for k in range(count):
            ctype, ext = self.rng.choice(ATTACH_TYPES)
            name = f"{self.rng.choice(WORDS)}-{i}-{k}.{ext}"
            if self.rng.random() < 0.2:
                name = f"Übersicht-{i}-{k}.{ext}"
                disp = f"attachment; filename*=UTF-8''{_pct(name)}"
            else:
                disp = f'attachment; filename="{name}"'
            out.append((f"\r\n--{b}\r\nContent-Type: {ctype}; name=\"{name.encode('ascii', 'replace').decode()}\"\r\n"
                        f"Content-Disposition: {disp}\r\nContent-Transfer-Encoding: base64\r\n\r\n").encode())
            out.append(self.b64(self.attachment_size()))
        out.append(f"\r\n--{b}--\r\n".encode())
        return b"".join(out)

    def nested(self, i, when, subj, needle, tsize) -> bytes:
        b = self.boundary()
        inner_when = when - datetime.timedelta(days=self.rng.randint(1, 30))
        inner_b = self.boundary()
        inner = (f"Date: {email.utils.format_datetime(inner_when)}\r\nFrom: {self.addr()}\r\n"
                 f"To: {self.addr()}\r\nSubject: {self.words(4)}\r\n"
                 f"Message-ID: <inner.{i}.{self.seed}@example.com>\r\nMIME-Version: 1.0\r\n"
                 f'Content-Type: multipart/mixed; boundary="{inner_b}"\r\n\r\n'
                 f"--{inner_b}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
                 + self.paragraph_text(tsize)
                 + (f"\r\n{NEEDLE}\r\n" if needle else "")
                 + f"\r\n--{inner_b}\r\nContent-Type: application/pdf; name=\"inner-{i}.pdf\"\r\n"
                 "Content-Transfer-Encoding: base64\r\n\r\n").encode()
        inner += self.b64(self.rng.randint(20_000, 60_000)) + f"\r\n--{inner_b}--\r\n".encode()
        hdr = self.headers(i, when, "Fwd: " + subj if not subj.startswith("=?") else subj,
                           [f'Content-Type: multipart/mixed; boundary="{b}"'])
        return ((hdr + f"\r\n--{b}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
                 f"Forwarding this one.\r\nToken: BENCHTOK-{self.seed}-{i:07d}\r\n"
                 f"\r\n--{b}\r\nContent-Type: message/rfc822\r\n"
                 "Content-Disposition: inline\r\n\r\n").encode() + inner + f"\r\n--{b}--\r\n".encode())

    def small(self, i: int, when: datetime.datetime) -> bytes:
        """A ~1-2 KB plain message (the 100k listing check)."""
        hdr = self.headers(i, when, self.subject(i), ["Content-Type: text/plain; charset=us-ascii"])
        return (hdr + "\r\n" + f"Token: BENCHTOK-{self.seed}-{i:07d}\r\n" + self.paragraph_text(
            self.rng.randint(200, 900))).encode("ascii")

    def big(self, nbytes: int, when: datetime.datetime) -> bytes:
        b = self.boundary()
        hdr = (f"Date: {email.utils.format_datetime(when)}\r\nFrom: {self.addr()}\r\nTo: {self.addr()}\r\n"
               f"Subject: The big one\r\nMessage-ID: <big.{self.seed}@example.org>\r\nMIME-Version: 1.0\r\n"
               f"X-Bench-Id: big\r\nContent-Type: multipart/mixed; boundary=\"{b}\"\r\n\r\n"
               f"--{b}\r\nContent-Type: text/plain\r\n\r\nThe video.\r\n\r\n--{b}\r\n"
               "Content-Type: video/mp4; name=\"video.mp4\"\r\nContent-Transfer-Encoding: base64\r\n\r\n").encode()
        tail = f"\r\n--{b}--\r\n".encode()
        enc_len = nbytes - len(hdr) - len(tail)
        raw = max(1, enc_len * 57 // 78)  # 76 chars + CRLF per 57 raw bytes
        return hdr + self.b64(raw) + tail


def _pct(s: str) -> str:
    import urllib.parse
    return urllib.parse.quote(s, safe="")


class Corpus:
    """What was written: {bench id: size}, the needle set, the totals."""

    def __init__(self):
        self.sizes: dict[int, int] = {}
        self.needles: set[int] = set()
        self.total = 0
        self.big_size = 0
        self.kinds: dict[str, int] = {}
        self.uid_to_id: dict[int, int] = {}


def maildir_folder(maildir: Path, folder: str) -> Path:
    """Dovecot's Maildir++ directory for ``folder`` (created, owned by mail)."""
    d = maildir / ("." + folder) if folder != "INBOX" else maildir
    for sub in ("cur", "new", "tmp"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    if folder != "INBOX":
        (d / "maildirfolder").touch()
    return d


def write_maildir_message(d: Path, seq: int, when: float, data: bytes, flags: str) -> None:
    """One file in ``cur/`` named the Maildir way, mtime = INTERNALDATE."""
    t = int(when)
    name = f"{t}.M{seq:07d}P{os.getpid()}.bench,S={len(data)},W={len(data)}:2,{flags}"
    p = d / "cur" / name
    with open(p, "wb") as f:
        f.write(data)
    os.utime(p, (t, t))


def warm_files(path: Path) -> None:
    """Read every file under path once, so it sits in the page cache."""
    for root, _dirs, files in os.walk(path):
        for n in files:
            with contextlib.suppress(OSError), open(os.path.join(root, n), "rb") as f:
                while f.read(1 << 20):
                    pass


def chown_tree(path: Path, user: str = "mail") -> None:
    pw = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for n in files:
            os.chown(os.path.join(root, n), pw.pw_uid, pw.pw_gid)


def generate(maildir: Path, n: int, big_mb: float, seed: int) -> Corpus:
    g = Gen(seed)
    c = Corpus()
    d = maildir_folder(maildir, FOLDER)
    maildir_folder(maildir, "INBOX")
    needle_count = max(1, round(n * 0.01))
    c.needles = set(g.rng.sample(range(1, n + 1), needle_count))
    start = g.base_time.timestamp()
    span = 2 * 365 * 86400
    for i in range(1, n + 1):
        when = start + span * (i - 1) / max(1, n) + g.rng.randint(0, 3000)
        dt = datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
        data = g.message(i, dt, i in c.needles)
        c.sizes[i] = len(data)
        c.total += len(data)
        flags = g.rng.choice(["S", "S", "S", "RS", "FS", ""])
        write_maildir_message(d, i, when, data, flags)
    if big_mb > 0:
        bd = maildir_folder(maildir, BIG_FOLDER)
        data = g.big(int(big_mb * MB), datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc))
        c.big_size = len(data)
        write_maildir_message(bd, 1, datetime.datetime(2024, 5, 1).timestamp(), data, "S")
    c.kinds = dict(g.kinds)
    return c


def generate_small(maildir: Path, n: int, seed: int) -> int:
    g = Gen(seed + 1)
    d = maildir_folder(maildir, HUGE_FOLDER)
    start = g.base_time.timestamp()
    total = 0
    for i in range(1, n + 1):
        when = start + 600 * i
        data = g.small(i, datetime.datetime.fromtimestamp(when, datetime.timezone.utc))
        total += len(data)
        write_maildir_message(d, i, when, data, "S")
    return total


# --------------------------------------------------------------------------
# IMAP helpers (raw imaplib: the physical limit)


def imap_connect(host: str, port: int, user: str, password: str, timeout: float) -> imaplib.IMAP4:
    c = imaplib.IMAP4(host, port, timeout=timeout)
    c.login(user, password)
    return c


def imap_select(c: imaplib.IMAP4, folder: str) -> int:
    typ, dat = c.select(f'"{folder}"', readonly=True)
    if typ != "OK":
        raise StepError(f"SELECT {folder}: {typ} {dat!r}")
    return int(dat[0])


def uid_fetch(c: imaplib.IMAP4, uids: str, items: str) -> list:
    typ, dat = c.uid("FETCH", uids, items)
    if typ != "OK":
        raise StepError(f"UID FETCH {uids} {items}: {typ} {dat!r}")
    return dat


_UID = re.compile(rb"UID (\d+)")
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
_BENCH_ID = re.compile(rb"X-Bench-Id: (\w+)", re.IGNORECASE)


def index_folder(c: imaplib.IMAP4, folder: str) -> tuple[dict[int, int], dict[int, int]]:
    """First SELECT and a metadata FETCH: Dovecot builds its index and cache.

    Returns ({uid: bench id}, {uid: RFC822.SIZE}).
    """
    imap_select(c, folder)
    dat = uid_fetch(c, "1:*", "(UID RFC822.SIZE INTERNALDATE FLAGS "
                              "BODY.PEEK[HEADER.FIELDS (SUBJECT X-BENCH-ID)])")
    ids, sizes = {}, {}
    for item in dat:
        if not isinstance(item, tuple):
            continue
        head, lit = item
        u, s, b = _UID.search(head), _SIZE.search(head), _BENCH_ID.search(lit)
        if u and s:
            sizes[int(u.group(1))] = int(s.group(1))
            if b and b.group(1).isdigit():
                ids[int(u.group(1))] = int(b.group(1))
    return ids, sizes


def fetch_metadata(c: imaplib.IMAP4) -> int:
    dat = uid_fetch(c, "1:*", "(UID RFC822.SIZE INTERNALDATE FLAGS)")
    return sum(1 for d in dat if d)


def fetch_bodies(c: imaplib.IMAP4, uids: list[int], batch: int = 500) -> tuple[int, int]:
    count = nbytes = 0
    for k in range(0, len(uids), batch):
        part = uids[k:k + batch]
        dat = uid_fetch(c, f"{part[0]}:{part[-1]}", "(BODY.PEEK[])")
        for item in dat:
            if isinstance(item, tuple):
                count += 1
                nbytes += len(item[1])
    return count, nbytes


# --------------------------------------------------------------------------
# The latency proxy (own process; see LatencyProxy)

PROXY_MAX_QUEUE = 64 * MB


def proxy_main(up_host: str, up_port: int, delay_ms: float) -> None:
    """Serve one listener: every chunk goes on ``delay_ms`` after it arrived, in order.

    Single-threaded (selectors): per direction a FIFO of (due, bytes); a
    reader stops reading while its FIFO holds more than 64 MB (so a slow
    client back-pressures the server instead of filling memory).  Exits
    when its parent dies or on SIGTERM.
    """
    delay = delay_ms / 1000.0
    parent = os.getppid()
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    lsock.setblocking(False)
    sys.stdout.write(f"PORT {lsock.getsockname()[1]}\n")
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    EOF = None

    class Pipe:
        __slots__ = ("src", "dst", "q", "qbytes", "read_eof", "done", "blocked", "conn")

        def __init__(self, src, dst, conn):
            self.src, self.dst, self.conn = src, dst, conn
            self.q = collections.deque()
            self.qbytes = 0
            self.read_eof = False
            self.done = False
            self.blocked = False

    class Conn:
        def __init__(self, client, up):
            self.socks = (client, up)
            self.c2s = Pipe(client, up, self)
            self.s2c = Pipe(up, client, self)
            self.closed = False
            self.mask = {client: 0, up: 0}

    conns: list[Conn] = []
    by_sock: dict = {}

    def update(conn: Conn) -> None:
        for s in conn.socks:
            inp = conn.c2s if conn.c2s.src is s else conn.s2c
            out = conn.s2c if conn.s2c.dst is s else conn.c2s
            m = 0
            if not inp.read_eof and inp.qbytes < PROXY_MAX_QUEUE:
                m |= selectors.EVENT_READ
            if out.blocked:
                m |= selectors.EVENT_WRITE
            old = conn.mask[s]
            if m != old:
                if old == 0:
                    sel.register(s, m, conn)
                elif m == 0:
                    sel.unregister(s)
                else:
                    sel.modify(s, m, conn)
                conn.mask[s] = m

    def close(conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        for s in conn.socks:
            if conn.mask[s]:
                sel.unregister(s)
            by_sock.pop(s, None)
            with contextlib.suppress(OSError):
                s.close()
        conns.remove(conn)

    def flush(p: Pipe, now: float) -> None:
        while p.q and p.q[0][0] <= now:
            due, data = p.q[0]
            if data is EOF:
                p.q.popleft()
                with contextlib.suppress(OSError):
                    p.dst.shutdown(socket.SHUT_WR)
                p.done = True
                return
            try:
                n = p.dst.send(data)
            except BlockingIOError:
                p.blocked = True
                return
            except OSError:
                close(p.conn)
                return
            p.qbytes -= n
            if n < len(data):
                p.q[0] = (due, data[n:])
                p.blocked = True
                return
            p.q.popleft()
        p.blocked = False

    while True:
        if os.getppid() != parent:
            return
        now = time.monotonic()
        timeout = 0.5
        for conn in list(conns):
            for p in (conn.c2s, conn.s2c):
                if conn.closed:
                    break
                if p.q and not p.blocked:
                    if p.q[0][0] <= now:
                        flush(p, now)
                    if p.q and not p.blocked:
                        timeout = min(timeout, max(0.0, p.q[0][0] - now))
            if not conn.closed:
                if conn.c2s.done and conn.s2c.done:
                    close(conn)
                else:
                    update(conn)
        for key, ev in sel.select(timeout):
            if key.data is None:
                try:
                    cs, _ = lsock.accept()
                    up = socket.create_connection((up_host, up_port), timeout=10)
                except OSError:
                    continue
                for s in (cs, up):
                    s.setblocking(False)
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = Conn(cs, up)
                conns.append(conn)
                update(conn)
                continue
            conn = key.data
            if conn.closed:
                continue
            s = key.fileobj
            now = time.monotonic()
            if ev & selectors.EVENT_WRITE:
                p = conn.s2c if conn.s2c.dst is s else conn.c2s
                p.blocked = False
                flush(p, now)
                if conn.closed:
                    continue
            if ev & selectors.EVENT_READ:
                p = conn.c2s if conn.c2s.src is s else conn.s2c
                try:
                    data = s.recv(1 << 20)
                except BlockingIOError:
                    data = b"?"
                    continue
                except OSError:
                    data = b""
                if data:
                    p.q.append((now + delay, data))
                    p.qbytes += len(data)
                else:
                    p.read_eof = True
                    p.q.append((now + delay, EOF))
            if not conn.closed:
                update(conn)


class LatencyProxy:
    """Runs :func:`proxy_main` in a child process (no GIL shared with the measurements)."""

    def __init__(self, up_host: str, up_port: int, rtt_ms: float):
        self.rtt_ms = rtt_ms
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--_proxy", up_host, str(up_port), str(rtt_ms / 2)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"PORT (\d+)", line)
        if not m:
            self.stop()
            raise StepError(f"latency proxy did not start: {line!r}")
        self.port = int(m.group(1))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# --------------------------------------------------------------------------
# imapfs mounts

# Instrumented daemon for the request-count pass: counts every FUSE handler
# call (plus read bytes) and dumps the counts as JSON to $BENCH_COUNT_FILE on
# SIGUSR2 and at exit.  The headline figures never use this wrapper.
COUNTING_DAEMON = r"""
import atexit, collections, functools, inspect, json, os, signal, sys
if os.environ.get("BENCH_IMAPFS_SRC"):
    sys.path.insert(0, os.environ["BENCH_IMAPFS_SRC"])
import pyfuse3
import imapfs.fs as F
counts = collections.Counter()
seq = [0]
def dump(*_):
    seq[0] += 1
    path = os.environ["BENCH_COUNT_FILE"]
    with open(path + ".tmp", "w") as f:
        json.dump({"seq": seq[0], "counts": counts}, f)
    os.replace(path + ".tmp", path)
def wrap(name, fn):
    if name == "read":
        @functools.wraps(fn)
        async def w(self, *a, **k):
            counts[name] += 1
            r = await fn(self, *a, **k)
            counts["read_bytes"] += len(r)
            return r
    else:
        @functools.wraps(fn)
        async def w(self, *a, **k):
            counts[name] += 1
            return await fn(self, *a, **k)
    return w
for name, fn in inspect.getmembers(F.Operations, inspect.iscoroutinefunction):
    if not name.startswith("_"):
        setattr(F.Operations, name, wrap(name, fn))
signal.signal(signal.SIGUSR2, dump)
atexit.register(dump)
from imapfs.mount import main
sys.argv[0] = "imapfs"
sys.exit(main())
"""


class MountRun:
    """One fresh imapfs mount, with deadlines on everything."""

    def __init__(self, url: str, mountpoint: Path, password: str, log_path: Path,
                 timeout: float, counting: Path | None = None, options: tuple[str, ...] = (),
                 src: Path | None = None):
        from tests.support.mount import Mount, imapfs_command
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.mountpoint = mountpoint
        self.timeout = timeout
        self.count_file = counting
        # A fresh cache directory per mount: a persistent offline cache (issue 7)
        # must not turn the next "fresh" mount into a warm one.
        env = {"XDG_CACHE_HOME": str(mountpoint.parent / f"{mountpoint.name}.cache")}
        if src is not None:  # --imapfs-rev: the daemon imports that revision's package
            env["PYTHONPATH"] = str(src)
            env["BENCH_IMAPFS_SRC"] = str(src)
        cmd = imapfs_command()
        if counting is not None:
            cmd = [sys.executable, "-c", COUNTING_DAEMON]
            env["BENCH_COUNT_FILE"] = str(counting)
        self.mount = Mount(url, mountpoint, ["tls=off", *options], password=password, debug=False,
                           log_path=log_path, timeout=min(60.0, timeout), exit_timeout=15.0,
                           env_extra=env, command=cmd)
        self.notes: list[str] = []

    def __enter__(self) -> "MountRun":
        self.mount.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self.mount.pid

    def path(self, *parts: str) -> Path:
        return self.mountpoint.joinpath(*parts)

    def abort(self) -> None:
        """A hung mount: kill the daemon, abort the FUSE connection, lazy-unmount."""
        from tests.support.mount import force_unmount
        self.notes.append("aborted after a time-out")
        fuse_abort(self.mountpoint)
        pid = self.pid
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        force_unmount(self.mountpoint)

    def status(self, field: str) -> int | None:
        """A /proc/PID/status field in bytes (VmHWM, VmRSS), or None."""
        pid = self.pid
        if not pid:
            return None
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def counts(self) -> dict[str, int] | None:
        """Dump and read the instrumented daemon's request counters."""
        if self.count_file is None or not self.pid:
            return None
        old = -1
        with contextlib.suppress(OSError, ValueError):
            old = json.loads(self.count_file.read_text())["seq"]
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError):
                d = json.loads(self.count_file.read_text())
                if d["seq"] != old:
                    return d["counts"]
            time.sleep(0.02)
        return None

    def run(self, argv, timeout: float | None = None, **kw):
        return run_cmd(argv, timeout or self.timeout, on_timeout=self.abort, **kw)

    def close(self) -> None:
        try:
            self.mount.unmount(check=False)
        except Exception as e:  # noqa: BLE001
            self.notes.append(f"unmount: {e}")
        if self.mount.forced:
            self.notes.append(f"daemon did not exit after unmount ({self.mount.forced})")
        if self.mount.returncode not in (0, None):
            self.notes.append(f"daemon exited with {self.mount.returncode}")
        bad = self.mount.bad_log_lines()
        if bad:
            self.notes.append(f"daemon log has {len(bad)} error line(s), first: {bad[0][:200]}")


def proc_cpu(pid: int | None) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, (0, 0) if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tck = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tck, int(fields[12]) / tck
    except (OSError, IndexError, ValueError, TypeError):
        return 0.0, 0.0


def fuse_abort(mountpoint: Path) -> None:
    """Abort the FUSE connection of ``mountpoint`` via /sys/fs/fuse/connections (never blocks)."""
    mp = os.path.abspath(mountpoint)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4] == mp:
                    minor = fields[2].split(":")[1]
                    with open(f"/sys/fs/fuse/connections/{minor}/abort", "w") as a:
                        a.write("1")
    except OSError:
        pass


# --------------------------------------------------------------------------
# Results


class Results:
    def __init__(self, no_targets: bool):
        self.rows: list[dict] = []
        self.by_key: dict[str, dict] = {}
        self.no_targets = no_targets
        self.errors: list[str] = []

    def add(self, key: str, label: str, value=None, unit: str = "s", shown: str | None = None,
            target: str = "", ok: bool | None = None, note: str = "") -> dict:
        if shown is None:
            if value is None:
                shown = "-"
            elif unit == "s":
                shown = fmt_s(value)
            elif unit == "MB":
                shown = f"{value / MB:.1f} MB"
            elif unit == "MB/s":
                shown = f"{value / MB:.0f} MB/s"
            elif unit == "x":
                shown = f"{value:.2f}x"
            else:
                shown = f"{value:g} {unit}".strip()
        status = "" if ok is None else ("PASS" if ok else "FAIL")
        row = {"key": key, "label": label, "value": value, "unit": unit, "shown": shown,
               "target": target, "status": status, "note": note}
        if key in self.by_key:
            self.rows[self.rows.index(self.by_key[key])] = row
        else:
            self.rows.append(row)
        self.by_key[key] = row
        return row

    def error(self, key: str, label: str, why: str, target: str = "") -> None:
        self.errors.append(f"{label}: {why}")
        self.add(key, label, None, shown="ERROR", target=target, note=why)
        self.by_key[key]["status"] = "ERROR"

    def skip(self, key: str, label: str, why: str, target: str = "") -> None:
        self.add(key, label, None, shown="skipped", target=target, note=why)
        self.by_key[key]["status"] = "skip"

    def value(self, key: str):
        r = self.by_key.get(key)
        return None if r is None else r["value"]

    def missed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "FAIL"]

    def table(self) -> str:
        w1 = max(len(r["label"]) for r in self.rows)
        w2 = max(8, max(len(r["shown"]) for r in self.rows))
        w3 = max(6, max(len(r["target"]) for r in self.rows))
        lines = [f"{'figure':<{w1}}  {'value':>{w2}}  {'target':<{w3}}  result",
                 f"{'-' * w1}  {'-' * w2}  {'-' * w3}  ------"]
        for r in self.rows:
            line = f"{r['label']:<{w1}}  {r['shown']:>{w2}}  {r['target']:<{w3}}  {r['status']}"
            if r["note"]:
                line += f"  ({r['note']})"
            lines.append(line.rstrip())
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = ["| figure | value | target | result |", "|---|---:|---|---|"]
        for r in self.rows:
            note = f" ({r['note']})" if r["note"] else ""
            lines.append(f"| {r['label']} | {r['shown']} | {r['target']} | {r['status']}{note} |")
        return "\n".join(lines)


# --------------------------------------------------------------------------
# Grep verification

_EML_UID = re.compile(r"#(\d+)\.eml$")
_PARTS_UID = re.compile(r"#(\d+)\.parts$")


class MountHits:
    """grep -rl output on the mount: top-level messages and hits inside NAME.parts/."""

    def __init__(self, ids: list[int], part_ids: list[int]):
        self.ids = ids
        self.part_ids = part_ids


def ids_from_mount_paths(paths: list[str], uid_to_id: dict[int, int], folder: Path) -> MountHits:
    ids, parts = [], []
    for p in paths:
        rel = Path(p).relative_to(folder).parts
        m = _EML_UID.search(rel[0]) if len(rel) == 1 else _PARTS_UID.search(rel[0])
        if not m or int(m.group(1)) not in uid_to_id:
            raise StepError(f"grep printed a path that is no message or part: {p!r}")
        (ids if len(rel) == 1 else parts).append(uid_to_id[int(m.group(1))])
    return MountHits(ids, parts)


def ids_from_files(paths: list[str]) -> list[int]:
    out = []
    for p in paths:
        with open(p, "rb") as f:
            head = f.read(65536)
        m = _BENCH_ID.search(head)
        if not m or not m.group(1).isdigit():
            raise StepError(f"grep printed a file without X-Bench-Id: {p!r}")
        out.append(int(m.group(1)))
    return out


def check_ids(found, expected: set[int], where: str) -> str:
    """found: bench ids (or MountHits); raises StepError unless exactly ``expected``."""
    note = ""
    if isinstance(found, MountHits):
        stray = set(found.part_ids) - expected
        if stray:
            raise StepError(f"{where}: grep matched inside the parts of messages without the "
                            f"needle: {sorted(stray)[:5]}")
        if found.part_ids:
            note = f"{len(found.part_ids)} more hits inside .parts/ (nested messages)"
        found = found.ids
    if len(found) != len(set(found)):
        raise StepError(f"{where}: grep listed a message twice")
    got = set(found)
    if got != expected:
        missing, extra = sorted(expected - got), sorted(got - expected)
        raise StepError(f"{where}: grep found {len(got)} messages, expected {len(expected)} "
                        f"(missing {missing[:5]}, unexpected {extra[:5]})")
    return note


def grep_lines(cp: subprocess.CompletedProcess, what: str) -> list[str]:
    if cp.returncode not in (0, 1):
        raise StepError(f"{what}: grep exited {cp.returncode}: {cp.stderr.decode(errors='replace')[:300]}")
    return [l for l in cp.stdout.decode("utf-8", "surrogateescape").splitlines() if l]


# --------------------------------------------------------------------------
# The benchmark


class Bench:
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

    # -- raw imaplib
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

    def runs_note(self, times: list[float]) -> str:
        if len(times) < 2:
            return ""
        return "; best of " + ", ".join(f"{t:.2f}" for t in times)

    # -- mbsync
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

    # -- imapfs
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
            self.profile_summary = "py-spy wrote no profile: " + (p.stderr.read() or b"").decode(errors="replace")[-500:]

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

    # -- the whole run
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
                      "ls_warm", "grep_cold", "grep_warm", "cat_big", "rss"):
                r.skip(k, f"{k} (loopback)", "--rtt-only")
        else:
            self.imaplib_figures(port, "", "")
            self.mbsync_figures(port, "", "")
            self.imapfs_ls(port, "", "")
            self.imapfs_grep(port, "", "")
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=10_000, help="messages in the benchmark folder (default 10000)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--big-mb", type=float, default=50, help="size of the big message in MB (0: none)")
    p.add_argument("--rtt", type=float, default=20, help="round trip added by the latency proxy, ms (default 20)")
    p.add_argument("--skip-rtt", action="store_true", help="skip the run through the latency proxy")
    p.add_argument("--rtt-only", action="store_true",
                   help="only the figures through the latency proxy (e.g. with a long --timeout)")
    p.add_argument("--big", action="store_true", help="only the 100,000-message listing check")
    p.add_argument("--big-n", type=int, default=100_000, help="messages for the listing check")
    p.add_argument("--skip-big", action="store_true", help="skip the 100,000-message listing check")
    p.add_argument("--repeat", type=int, default=1,
                   help="run each cold measurement this many times and keep the best (default 1)")
    p.add_argument("--no-targets", action="store_true", help="exit 0 even if targets are missed")
    p.add_argument("--no-count", action="store_true", help="skip the instrumented FUSE request-count mount")
    p.add_argument("--profile", metavar="DIR", help="py-spy the daemon during a cold grep (needs py-spy)")
    p.add_argument("--diag-rtt", action="store_true",
                   help="run the instrumented mounts (request counts, py-spy) through the latency proxy")
    p.add_argument("--profile-idle", action="store_true", help="py-spy --idle (include waiting threads)")
    p.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write the table as Markdown")
    p.add_argument("--timeout", type=float, default=0, help="deadline per step, s (default max(120, 0.12 N))")
    p.add_argument("--cold-server", action="store_true",
                   help="drop the page cache before every cold step, so Dovecot reads its store from "
                        "disk (default: the store stays cached; every client starts cold anyway)")
    p.add_argument("--imapfs-rev", metavar="REV",
                   help="benchmark the imapfs package of this git revision (default: the working tree)")
    p.add_argument("--keep-logs", metavar="DIR", help="copy the logs of mounts that had problems here")
    p.add_argument("--no-setup", action="store_true", help=argparse.SUPPRESS)  # handled by scripts/bench
    a = p.parse_args(argv)
    if a.n < 100:
        p.error("-n must be at least 100 (the needle set is 1%)")
    return a


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_proxy"]:
        proxy_main(argv[1], int(argv[2]), float(argv[3]))
        return 0
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("scripts/bench: must run as root (Dovecot's mail user, dropping the page cache)", file=sys.stderr)
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    bench = Bench(args)
    try:
        with bench.stack:
            return bench.run()
    except KeyboardInterrupt:
        print("\ninterrupted: cleaned up", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
