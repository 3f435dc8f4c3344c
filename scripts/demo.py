"""imapfs demo: a throwaway Dovecot with sample mail, mounted, ready to browse.

    scripts/demo [MOUNTPOINT]          # default /tmp/imapfs-demo; Ctrl-C ends it
    scripts/demo --check [MOUNTPOINT]  # mount, try the suggested commands, unmount

It starts a Dovecot of its own on 127.0.0.1 (tests/support/dovecot.py: free
ports, a temporary directory, a throwaway TLS CA), fills it with the shared
corpus and a small everyday mailbox, and runs ``imapfs -f`` over STARTTLS as
a child process. Ctrl-C, SIGTERM or SIGHUP unmount, stop the server and
remove every temporary file. Without a terminal on stdin (CI, pipes) it
runs the check instead of waiting for a Ctrl-C that never comes.
Must run as root: Dovecot delivers mail as the ``mail`` user.
"""

from __future__ import annotations

import argparse
import datetime as dt
import email.policy
import email.utils
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from email.message import EmailMessage
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support import die_with_parent  # noqa: E402
from tests.support.corpus import corpus_messages  # noqa: E402
from tests.support.dovecot import Dovecot, DovecotError  # noqa: E402
from tests.support.mount import force_unmount, is_bad_line, is_mounted  # noqa: E402

DEFAULT_MOUNTPOINT = "/tmp/imapfs-demo"
MOUNT_TIMEOUT = 30.0
EXIT_TIMEOUT = 30.0
POLICY = email.policy.SMTP  # CRLF, as IMAP stores mail
TZ = dt.timezone(dt.timedelta(hours=1))


def say(msg: str = "") -> None:
    print(msg, flush=True)


def warn(msg: str) -> None:
    print(f"demo: {msg}", file=sys.stderr, flush=True)


# -- sample mail -----------------------------------------------------------------

def png(width: int = 48, height: int = 32) -> bytes:
    """A small RGB gradient as a valid PNG (no imaging library needed)."""
    rows = b"".join(b"\0" + bytes(c for x in range(width) for c in (x * 5, y * 8, 160))
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def pdf() -> bytes:
    """A one-page PDF-ish blob (valid enough for `file` and most viewers)."""
    text = b"BT /F1 18 Tf 72 720 Td (Q3 report: revenue up 12%) Tj ET"
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(text) + text + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for i, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + o + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return out


ALICE = "Alice Example <alice@example.org>"
BOB = "Bob Builder <bob@example.org>"
CAROL = "Carol Chen <carol@example.net>"
OPS = "Ops Team <ops@example.com>"


def mail(n: int, when: dt.datetime, frm: str, subject: str, body: str, to: str = ALICE,
         html: str | None = None, **headers: str) -> EmailMessage:
    m = EmailMessage(policy=POLICY)
    m["From"] = frm
    m["To"] = to
    m["Subject"] = subject
    m["Date"] = email.utils.format_datetime(when)
    m["Message-ID"] = f"<demo-{n}@imapfs.example>"
    for k, v in headers.items():
        m[k.replace("_", "-")] = v
    m.set_content(body)
    if html is not None:
        m.add_alternative(html, subtype="html")
        m.set_boundary(f"alt-{n}")
    return m


def _bytes(m: EmailMessage, boundary: str | None = None) -> bytes:
    if boundary is not None and m.is_multipart():
        m.set_boundary(boundary)
    return m.as_bytes(policy=POLICY)


ZURICH = (
    b"From: =?ISO-8859-1?Q?J=FCrg_M=FCller?= <juerg@example.ch>\r\n"
    b"To: Alice Example <alice@example.org>\r\n"
    b"Subject: =?ISO-8859-1?Q?Gr=FC=DFe_aus_Z=FCrich?=\r\n"
    b"Date: Wed, 05 Nov 2025 08:12:00 +0100\r\n"
    b"Message-ID: <demo-3@imapfs.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=ISO-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Liebe Alice,\r\n"
    b"\r\n"
    b"herzliche Gr=FC=DFe aus Z=FCrich! Der See ist ruhig, die Berge sind sch=F6n\r\n"
    b"verschneit, und das Fondue war gro=DFartig.\r\n"
    b"\r\n"
    b"Bis bald,\r\n"
    b"J=FCrg\r\n"
)


def sample_mailbox() -> dict[str, list[tuple[bytes, str, dt.datetime]]]:
    """Folder → [(message bytes, flags, internal date)], in arrival order."""
    d = lambda day, h, m=0: dt.datetime(2025, 11, day, h, m, tzinfo=TZ)  # noqa: E731
    inbox: list[tuple[bytes, str, dt.datetime]] = []

    def add(m: EmailMessage | bytes, flags: str, when: dt.datetime, boundary: str | None = None) -> None:
        inbox.append((m if isinstance(m, bytes) else _bytes(m, boundary), flags, when))

    w = d(3, 9, 15)
    add(mail(1, w, BOB, "Welcome to the team", "Hi Alice,\n\nwelcome aboard! Your desk is by the window.\n\nBob\n"),
        "\\Seen", w)
    w = d(4, 11, 30)
    add(mail(2, w, CAROL, "Lunch on Friday?", "Thai place at 12:30? Reply by Thursday.\n\nCarol\n"),
        "\\Seen \\Flagged", w)
    add(ZURICH, "", d(5, 8, 12))

    w = d(6, 14, 0)
    m = mail(4, w, BOB, "Q3 report (PDF attached)", "The Q3 report is attached. Numbers look good.\n")
    m.add_attachment(pdf(), maintype="application", subtype="pdf", filename="Q3-report.pdf")
    add(m, "\\Seen $Label1", w, "mixed-4")

    w = d(8, 18, 45)
    m = mail(5, w, CAROL, "Photo from the hike", "The view from the top. More next week!\n")
    m.add_attachment(png(), maintype="image", subtype="png", filename="summit.png")
    add(m, "\\Flagged", w, "mixed-5")

    w = d(10, 16, 5)
    m = mail(6, w, BOB, "Meeting notes", "Notes from today's planning meeting attached.\n")
    m.add_attachment("1. Ship the demo\n2. Write the docs\n3. Celebrate\n",
                     filename="notes.txt")
    add(m, "\\Seen \\Answered", w, "mixed-6")

    w = d(11, 7, 50)
    inner = mail(70, d(10, 22, 0), OPS, "Server maintenance tonight",
                 "The mail server will be down from 23:00 to 23:30 UTC.\n", to="all@example.com")
    m = mail(7, w, BOB, "Fwd: Server maintenance tonight", "FYI, see the forwarded message.\n")
    m.add_attachment(inner)
    add(m, "", w, "mixed-7")

    w = d(12, 6, 0)
    add(mail(8, w, "Example News <news@example.com>", "Newsletter: November",
             "This month: winter tyres, a new cafe, and the book club.\n",
             html="<html><body><h1>November</h1><p>Winter tyres, a new cafe, and the book club.</p>"
                  "</body></html>\n"), "", w)
    w = d(13, 12, 1)
    add(mail(9, w, ALICE, "Re: Lunch on Friday?", "Thai at 12:30 works for me.\n\nAlice\n", to=CAROL,
             In_Reply_To="<demo-2@imapfs.example>"), "\\Seen", w)
    w = d(14, 9, 0)
    add(mail(10, w, "Billing <billing@example.com>", "Invoice #4711",
             "Invoice #4711 for November: 49.00 EUR, due 1 December.\n"), "", w)
    w = d(15, 20, 30)
    add(mail(11, w, "Kenji <kenji@example.jp>", "日本語のテスト",
             "こんにちは、Alice さん。UTF-8 の件名とファイル名のテストです。\n"), "", w)
    w = d(17, 3, 14)
    add(mail(12, w, "CI <ci@example.com>", "Build failed: main #123",
             "Job 'test' failed on main (commit 1a2b3c4).\n"), "$Label1", w)

    def one(n: int, day: int, frm: str, subject: str, body: str, flags: str = "\\Seen"):
        w = d(day, 10)
        return (_bytes(mail(n, w, frm, subject, body)), flags, w)

    return {
        "INBOX": inbox,
        "Archive/2025": [one(20, 1, BOB, "Kick-off agenda", "Agenda for the kick-off.\n"),
                         one(21, 2, CAROL, "Holiday plans", "Booked the cabin for December.\n")],
        "Entwürfe": [one(30, 16, ALICE, "Entwurf: Antwort an Jürg", "Lieber Jürg, danke für die Grüße …\n",
                         "\\Draft")],
        "Tom & Jerry": [one(40, 9, "Tom <tom@example.org>", "Where is the cheese?", "Asking for a friend.\n"),
                        one(41, 10, "Jerry <jerry@example.org>", "Re: Where is the cheese?", "No idea.\n",
                            "")],
        "Trash": [one(50, 1, "Spam <win@example.biz>", "You have won!", "Not really.\n")],
    }


NEW_MESSAGE = (
    b"From: Alice Example <alice@example.org>\r\n"
    b"To: Bob Builder <bob@example.org>\r\n"
    b"Subject: Copied in with cp\r\n"
    b"Date: Mon, 24 Nov 2025 10:00:00 +0100\r\n"
    b"Message-ID: <demo-cp@imapfs.example>\r\n"
    b"\r\n"
    b"This message was a file; cp made it an IMAP APPEND.\r\n"
)


def fill(server: Dovecot) -> dict[str, list[int]]:
    """Fill the server; return folder → UIDs in arrival order."""
    uids: dict[str, list[int]] = {}
    for folder, msgs in sample_mailbox().items():
        uids[folder] = [server.append(folder, data, flags=flags, date=when) for data, flags, when in msgs]
    try:
        corpus = corpus_messages()
    except FileNotFoundError as e:
        warn(f"no Corpus folder: {e}")
        corpus = []
    if corpus:
        base = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.timezone.utc)
        for i, (_name, data) in enumerate(corpus):
            uids.setdefault("Corpus", []).append(server.append("Corpus", data, date=base + dt.timedelta(hours=i)))
    return uids


# -- the mount -------------------------------------------------------------------

class Stop(Exception):
    pass


_signalled: list[int] = []


def _on_signal(signum, frame) -> None:
    _signalled.append(signum)


def imapfs_binary() -> str:
    for cand in (REPO / ".venv" / "bin" / "imapfs", Path(sys.executable).parent / "imapfs"):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("imapfs")
    if found:
        return found
    raise SystemExit("demo: imapfs is not installed (run scripts/setup)")


class Demo:
    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self.made_mountpoint = False
        self.tmp = Path(tempfile.mkdtemp(prefix="imapfs-demo-"))
        self.log_path = self.tmp / "imapfs.log"
        self.server: Dovecot | None = None
        self.proc: subprocess.Popen | None = None
        self.uids: dict[str, list[int]] = {}
        self.new_file = self.tmp / "new-message.eml"
        self.new_file.write_bytes(NEW_MESSAGE)
        self.final_log = ""
        self.bad_log_lines: list[str] = []

    # -- start ---------------------------------------------------------------
    def start(self) -> None:
        mp = self.mountpoint
        if is_mounted(mp):
            raise Stop(f"{mp} is already mounted (a demo left over?); unmount it with: fusermount3 -u {mp}")
        if not mp.exists():
            mp.mkdir(parents=True)
            self.made_mountpoint = True
        elif not mp.is_dir():
            raise Stop(f"{mp} is not a directory")
        say("demo: starting a throwaway Dovecot on 127.0.0.1 …")
        self.server = Dovecot()
        self.server.start()
        self.uids = fill(self.server)
        n = sum(len(v) for v in self.uids.values())
        say(f"demo: {n} messages in {len(self.uids)} folders; mounting with imapfs (STARTTLS) …")
        self.source = self.server.url("imap")  # imap://alice@127.0.0.1:PORT/, STARTTLS required
        self.options = f"cafile={self.server.ca_file},trash=auto"
        argv = [imapfs_binary(), self.source, str(mp), "-f", "-o", self.options]
        env = dict(os.environ)
        env["IMAPFS_PASSWORD"] = self.server.password  # the child's environment only
        with open(self.log_path, "ab") as log:
            # A session of its own: the terminal's Ctrl-C reaches only this
            # script, which then unmounts in order. If this script dies, the
            # daemon gets SIGTERM and unmounts itself.
            self.proc = subprocess.Popen(die_with_parent(argv, "TERM"), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        self._wait_mounted()

    def _wait_mounted(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not (is_mounted(self.mountpoint) and os.path.isdir(self.mountpoint / "INBOX")):
            if self.proc.poll() is not None:
                raise Stop(f"imapfs exited with {self.proc.returncode} before mounting:\n{self.log_tail()}")
            if _signalled:
                raise Stop("interrupted")
            if time.monotonic() > deadline:
                raise Stop(f"{self.mountpoint} not mounted after {MOUNT_TIMEOUT:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join("    " + l for l in text.splitlines()[-lines:])

    # -- names ---------------------------------------------------------------
    def eml(self, folder: str, index: int) -> Path:
        """The mounted file of the index-th sample message of folder (found by its UID)."""
        uid = self.uids[folder][index]
        d = self.mountpoint / folder
        for name in os.listdir(d):
            if name.endswith(f" #{uid}.eml"):
                return d / name
        raise Stop(f"no message with UID {uid} in {d}")

    # -- the banner ----------------------------------------------------------
    def commands(self) -> list[tuple[str, str]]:
        """(command, what it shows), relative to the mount point."""
        q = shlex.quote

        def rel(p: Path) -> str:
            return q(str(p.relative_to(self.mountpoint)))

        lunch, photo, welcome = self.eml("INBOX", 1), self.eml("INBOX", 4), self.eml("INBOX", 0)
        return [
            ("ls", "folders are directories"),
            ("ls -l INBOX", "messages are NAME.eml files, dated by arrival"),
            (f"cat {rel(lunch)}", "the server's exact bytes"),
            (f"ls -l {rel(photo.with_name('.' + photo.stem + '.parts'))}", "MIME parts, decoded (ls -a lists them)"),
            ("grep -rl Zürich .", "finds an ISO-8859-1 mail in its .NAME.parts"),
            (f"getfattr -d {rel(lunch)}", "flags as xattrs"),
            (f"setfattr -n user.imap.flags -v '\\Seen \\Flagged' {rel(welcome)}", "UID STORE FLAGS"),
            (f"mv {rel(welcome)} Archive/2025/", "UID MOVE"),
            ("mkdir Projects", "CREATE"),
            (f"cp {q(str(self.new_file))} INBOX/", "APPEND"),
            ("rm INBOX/*Newsletter*.eml", "moves it to Trash (-o trash=auto)"),
        ]

    def banner(self) -> None:
        assert self.server is not None
        cmds = self.commands()
        width = min(max(len(c) for c, _ in cmds), 50)
        say()
        say(f"imapfs demo: {self.source} is mounted on {self.mountpoint}")
        say(f"  imapfs log: {self.log_path}")
        say()
        say("Try, in another terminal:")
        say(f"  cd {shlex.quote(str(self.mountpoint))}")
        for c, why in cmds:
            say(f"  {c.ljust(width)}  # {why}")
        say()
        say("Mount the same account yourself (IMAPS this time) on any empty directory:")
        say(f"  IMAPFS_PASSWORD={shlex.quote(self.server.password)} {imapfs_binary()} "
            f"imaps://{self.server.user}@127.0.0.1:{self.server.ssl_port}/ DIR -o cafile={self.server.ca_file}")
        say()
        say("Ctrl-C to unmount and clean up.")

    # -- wait ----------------------------------------------------------------
    def wait(self) -> None:
        assert self.proc is not None
        while not _signalled:
            if self.proc.poll() is not None:
                warn(f"imapfs exited ({self.proc.returncode}); {self.mountpoint} was unmounted")
                return
            time.sleep(0.2)
        say("\ndemo: unmounting and cleaning up …")

    # -- check ---------------------------------------------------------------
    def check(self) -> bool:
        """Run the suggested commands; verify each against the mount and the server."""
        assert self.server is not None
        srv = self.server
        mp = self.mountpoint
        ok = True

        def run(argv: list[str], why: str, verify=None) -> str | None:
            nonlocal ok
            shown = shlex.join(argv)
            try:
                res = subprocess.run(argv, capture_output=True, timeout=60)
            except subprocess.TimeoutExpired:
                say(f"FAIL {shown}: timed out")
                ok = False
                return None
            out = res.stdout.decode("utf-8", "replace")
            problem = None
            if res.returncode != 0:
                problem = f"exit {res.returncode}: {res.stderr.decode('utf-8', 'replace').strip()}"
            elif verify is not None:
                try:
                    problem = verify(out, res.stdout)
                except Exception as e:  # noqa: BLE001 - report, go on with the others
                    problem = f"{type(e).__name__}: {e}"
            if problem:
                say(f"FAIL {shown}  ({why}): {problem}")
                ok = False
                return None
            say(f"ok   {shown}  ({why})")
            return out

        inbox_data = [data for data, _f, _w in sample_mailbox()["INBOX"]]
        lunch, photo, welcome = self.eml("INBOX", 1), self.eml("INBOX", 4), self.eml("INBOX", 0)

        want_top = ({"INBOX", "Archive", "Entwürfe", "Tom & Jerry", "Trash"}
                    | ({"Corpus"} if "Corpus" in self.uids else set()))
        run(["ls", str(mp)], "folders are directories",
            lambda out, _b: (None if want_top <= set(out.splitlines())
                             else f"missing {want_top - set(out.splitlines())}"))
        run(["ls", "-l", str(mp / "INBOX")], "messages are files",
            lambda out, _b: None if sum(l.endswith(".eml") for l in out.splitlines()) >= len(inbox_data)
            else "too few .eml files")
        run(["cat", str(lunch)], "exact bytes",
            lambda _o, raw: None if raw == inbox_data[1] else "bytes differ from what was stored")

        parts = photo.with_name("." + photo.stem + ".parts")  # a dot-name since issue 12
        if parts.is_dir():
            run(["ls", "-l", str(parts)], "MIME parts",
                lambda out, _b: None if "summit.png" in out else "no summit.png")
            png_file = next((p for p in parts.iterdir() if p.name.endswith("summit.png")), None)
            if png_file is not None and png_file.read_bytes() != png():
                say(f"FAIL {png_file}: decoded bytes differ from the attached PNG")
                ok = False
            zurich = self.eml("INBOX", 2)
            run(["grep", "-rl", "Zürich", str(mp)], "decoded text is greppable",
                lambda out, _b: None if any(l.startswith(f"{zurich.parent}/.{zurich.stem}.parts/")
                                            for l in out.splitlines())
                else f".{zurich.stem}.parts not among the hits")
        else:
            say(f"skip ls {parts.name} and grep -rl Zürich: this build shows no .parts directories yet")

        run(["getfattr", "-d", str(lunch)], "flags as xattrs",
            lambda out, _b: None if re.search(r'^user\.imap\.flags=".*Flagged', out, re.M)
            else f"no Flagged in user.imap.flags: {out!r}")

        welcome_uid = self.uids["INBOX"][0]

        def flags_on_server(_o, _b):
            got = srv.flags("INBOX").get(welcome_uid, set())
            return None if {"\\Seen", "\\Flagged"} <= got else f"server has {sorted(got)}"

        run(["setfattr", "-n", "user.imap.flags", "-v", "\\Seen \\Flagged", str(welcome)], "UID STORE FLAGS",
            flags_on_server)

        def moved(_o, _b):
            if welcome_uid in srv.fetch_all("INBOX"):
                return "still in INBOX on the server"
            if inbox_data[0] not in srv.fetch_all("Archive/2025").values():
                return "not in Archive/2025 on the server"
            if welcome.exists() or not any("Welcome to the team" in p.name for p in (mp / "Archive/2025").iterdir()):
                return "the mount does not show the move"
            return None

        run(["mv", str(welcome), str(mp / "Archive/2025") + "/"], "UID MOVE", moved)
        run(["mkdir", str(mp / "Projects")], "CREATE",
            lambda _o, _b: None if "Projects" in srv.folders() else "no folder Projects on the server")

        def appended(_o, _b):
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:  # APPEND follows the close after a short quiet time
                if NEW_MESSAGE in srv.fetch_all("INBOX").values():
                    return None
                time.sleep(0.1)
            return "not on the server after 15 s"

        run(["cp", str(self.new_file), str(mp / "INBOX") + "/"], "APPEND", appended)

        news = self.eml("INBOX", 7)

        def trashed(_o, _b):
            if inbox_data[7] in srv.fetch_all("INBOX").values():
                return "still in INBOX on the server"
            if inbox_data[7] not in srv.fetch_all("Trash").values():
                return "not in Trash on the server"
            return None

        run(["rm", str(news)], "moves it to Trash", trashed)
        return ok

    # -- stop ----------------------------------------------------------------
    def stop(self) -> int | None:
        """Unmount, wait for imapfs, stop Dovecot, remove temporary files; imapfs's exit code."""
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, _on_signal)  # a second Ctrl-C must not cut the clean-up short
        rc = None
        try:
            if self.proc is not None:
                if is_mounted(self.mountpoint):
                    r = subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True, text=True)
                    if r.returncode != 0 and is_mounted(self.mountpoint):
                        # Busy (a shell cd'd into it): detach it now; the daemon
                        # would wait for the last user, so tell it to stop.
                        warn(f"{r.stderr.strip()}: detaching it (fusermount3 -u -z)")
                        subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
                        self.proc.terminate()
                try:
                    rc = self.proc.wait(EXIT_TIMEOUT)
                except subprocess.TimeoutExpired:
                    warn("imapfs did not exit after the unmount: SIGTERM")
                    self.proc.terminate()
                    try:
                        rc = self.proc.wait(10)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
                        rc = self.proc.wait()
                force_unmount(self.mountpoint)
        finally:
            self.final_log = self.log_tail()
            try:
                self.bad_log_lines = [l for l in self.log_path.read_text(errors="replace").splitlines()
                                      if is_bad_line(l)]
            except FileNotFoundError:
                self.bad_log_lines = []
            if self.server is not None:
                self.server.cleanup()
            shutil.rmtree(self.tmp, ignore_errors=True)
            if self.made_mountpoint:
                try:
                    self.mountpoint.rmdir()
                except OSError:
                    pass
        return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/demo", description="Mount a throwaway IMAP server with sample mail.")
    ap.add_argument("mountpoint", nargs="?", default=DEFAULT_MOUNTPOINT, help=f"default {DEFAULT_MOUNTPOINT}")
    ap.add_argument("--check", action="store_true",
                    help="mount, run the suggested commands, verify them, unmount; exit 0 or 1")
    args = ap.parse_args(argv)
    check = args.check or not sys.stdin.isatty()
    if os.geteuid() != 0:
        warn("run as root: the throwaway Dovecot delivers mail as the 'mail' user")
        return 1
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)
    demo = Demo(Path(os.path.abspath(args.mountpoint)))
    ok = True
    try:
        demo.start()
        if check:
            if not args.check:
                say("demo: stdin is not a terminal: checking the demo instead of waiting for Ctrl-C")
            ok = demo.check()
        else:
            demo.banner()
            demo.wait()
    except Stop as e:
        warn(str(e))
        ok = False
    except DovecotError as e:
        warn(f"Dovecot did not start: {e}")
        ok = False
    finally:
        rc = demo.stop()
    if is_mounted(demo.mountpoint):
        warn(f"{demo.mountpoint} is still mounted")
        ok = False
    if check:
        if rc not in (0, None):
            warn(f"imapfs exited with {rc}:\n{demo.final_log}")
            ok = False
        if demo.bad_log_lines:
            warn("imapfs logged errors:\n" + "\n".join("    " + l for l in demo.bad_log_lines[:20]))
            ok = False
        say("demo: check passed" if ok else "demo: check FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
