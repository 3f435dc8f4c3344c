"""The generated mailbox: deterministic, realistic messages written straight into
a throwaway Dovecot's Maildir (APPEND would take minutes)."""
from __future__ import annotations

import base64
import collections
import contextlib
import datetime
import email.header
import email.utils
import os
import pwd
import quopri
import random
from pathlib import Path

from .common import BIG_FOLDER, FOLDER, HUGE_FOLDER, MB, NEEDLE

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
    for root, _dirs, files in os.walk(path):
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
