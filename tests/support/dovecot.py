"""A real, throwaway Dovecot IMAP server for tests.

Each :class:`Dovecot` lives in its own temporary directory (config, runtime
sockets, state, logs, mail homes), listens on 127.0.0.1 on two free ports
(plain IMAP with optional STARTTLS, and implicit-TLS IMAPS), and runs
``dovecot -F`` as a child process of the test session.  The system Dovecot
is never used.

    with Dovecot() as d:
        uid = d.append("INBOX", b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
        assert d.fetch_all("INBOX") == {uid: b"Subject: hi\\r\\n\\r\\nbody\\r\\n"}

Facts about Dovecot 2.3.19 that the tests depend on (checked here, see
tests/test_harness.py):

* Mail cannot run as root: mail processes run as the ``mail`` user, home
  directories are owned by it and every parent of the base directory must be
  traversable by it.
* Start-up: ``start()`` returns (listener accepts and greets) in 25–30 ms
  on the idle 2-core machine (60–110 ms while other tests load it); the
  first server of a process also makes the TLS material (~0.2 s).
  ``stop()`` is a SIGKILL of the process group (3 ms; a graceful SIGTERM
  takes 1–6 s), so ``reset()`` (stop, wipe, start) costs about a start.
* A killed server's locks: ``dotlock_use_excl = no`` (see the config) so
  a folder a SIGKILL left locked is usable again after about 2.5 s, not
  after the 2-minute stale timeout of an empty ``dovecot-uidlist.lock``.
* Failed logins: answered after 0.5 s (auth_failure_delay's timer; the
  per-IP penalty that grows to 15 s is switched off).
* Dovecot stores bare LF as it came and serves CRLF: an APPEND of
  ``a\nb`` comes back as ``a\r\nb``; a bare CR is kept.  Append CRLF
  data (corpus.py converts) when comparing bytes.
* ``imap_capability`` (the *profiles* below) only changes what is
  *advertised*, before and after login.  Dovecot still *accepts* the hidden
  commands: ``MOVE``, ``UID EXPUNGE``, ``BINARY[]`` fetches, ``ENABLE
  QRESYNC`` / ``CONDSTORE`` and ``NOTIFY`` all keep working when hidden, and
  ``APPEND`` / ``COPY`` still answer ``APPENDUID`` / ``COPYUID`` without
  UIDPLUS.  A test that wants to prove the client *does not use* a missing
  extension must therefore look at the client's traffic (tests/support/proxy.py),
  not expect the server to refuse.
"""
from __future__ import annotations

import atexit
import base64
import contextlib
import datetime as _dt
import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from . import die_with_parent, tlsca

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
HOST = "127.0.0.1"
DEFAULT_USER = "alice"
DEFAULT_PASSWORD = "Pa55word!"
MAIL_USER = "mail"
INTERNAL_USER = "dovecot"

# Dovecot 2.3.19's own post-login CAPABILITY with this configuration (read
# from the live server; test_harness checks it has not drifted).
DOVECOT_CAPABILITIES = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY "
    "THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL "
    "CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 "
    "CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS "
    "BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE "
    "LITERAL+ NOTIFY SPECIAL-USE"
).split()


def capabilities_without(*names: str) -> str:
    """Dovecot's capability string minus ``names`` (for ``capabilities=``)."""
    drop = {n.upper() for n in names}
    unknown = drop - set(DOVECOT_CAPABILITIES)
    if unknown:
        raise ValueError(f"not a Dovecot capability: {sorted(unknown)}")
    return " ".join(c for c in DOVECOT_CAPABILITIES if c not in drop)


# Capability profiles: the value of ``Dovecot(capabilities=...)``.  Only the
# advertisement changes; see the module docstring.
FULL = None
NO_MOVE = capabilities_without("MOVE")
NO_UIDPLUS = capabilities_without("UIDPLUS")
NO_BINARY = capabilities_without("BINARY")
NO_NOTIFY = capabilities_without("NOTIFY")
NO_QRESYNC = capabilities_without("QRESYNC")
IDLE_ONLY = capabilities_without("NOTIFY", "CONDSTORE", "QRESYNC")
# What Gmail lacks of the extensions imapfs cares about.
GMAIL_LIKE = capabilities_without("QRESYNC", "BINARY", "NOTIFY")
# A bare RFC 3501 server.
MINIMAL = "IMAP4rev1"

PROFILES = {
    "FULL": FULL, "NO_MOVE": NO_MOVE, "NO_UIDPLUS": NO_UIDPLUS, "NO_BINARY": NO_BINARY,
    "NO_NOTIFY": NO_NOTIFY, "NO_QRESYNC": NO_QRESYNC, "IDLE_ONLY": IDLE_ONLY,
    "GMAIL_LIKE": GMAIL_LIKE, "MINIMAL": MINIMAL,
}


# --------------------------------------------------------------------------
# Small IMAP helpers (independent of imapfs on purpose: they are the oracle).

def mutf7_encode(name: str) -> str:
    """Encode a folder name in IMAP's modified UTF-7 (RFC 3501 5.1.3)."""
    out, buf = [], []

    def flush():
        if buf:
            b = base64.b64encode("".join(buf).encode("utf-16-be")).decode().rstrip("=")
            out.append("&" + b.replace("/", ",") + "-")
            buf.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            buf.append(ch)
    flush()
    return "".join(out)


def mutf7_decode(name: str | bytes) -> str:
    if isinstance(name, bytes):
        name = name.decode("ascii")

    def dec(m: re.Match) -> str:
        s = m.group(1)
        if not s:
            return "&"
        s = s.replace(",", "/")
        return base64.b64decode(s + "=" * (-len(s) % 4)).decode("utf-16-be")

    return re.sub(r"&([^-]*)-", dec, name)


def quote(s: str) -> str:
    """An IMAP quoted string."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _mailbox_arg(folder: str) -> str:
    return quote(mutf7_encode(folder))


def _check(typ: str, data, what: str):
    if typ != "OK":
        raise imaplib.IMAP4.error(f"{what}: {typ} {data!r}")
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _make_traversable(path: Path) -> None:
    """chmod o+x every parent of ``path`` that is not (mkdtemp makes 0700)."""
    for p in [path, *path.parents]:
        st = p.stat()
        if not st.st_mode & 0o001:
            p.chmod(st.st_mode | 0o055)


class DovecotError(RuntimeError):
    pass


_live: weakref.WeakSet[Dovecot] = weakref.WeakSet()


@atexit.register
def _cleanup_leftovers() -> None:
    # Servers a test forgot to clean up (they would also get SIGKILL when
    # this process dies, see die_with_parent); remove their temp dirs too.
    for d in list(_live):
        d.cleanup()


def _group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process of process group ``pgid`` exists."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields: state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


class Dovecot:
    """A throwaway Dovecot, started by :meth:`start` or ``with``.

    ``users``: user names (all with ``password``) or a mapping name → password;
    the first is the default user.  ``separator``: hierarchy separator of the
    inbox namespace.  ``capabilities``: ``None`` for Dovecot's own list or a
    profile string (see ``NO_MOVE`` …).  ``ssl``: offer STARTTLS and IMAPS
    with ``ssl_cert``/``ssl_key`` (default: the session's certificate for
    127.0.0.1/localhost signed by the session CA, ``ca_file``); ``ssl=False``
    runs a server with no TLS at all.  ``ca_file``: what ``self.ca_file``
    reports (default: the session CA).  ``special_use``: Drafts/Junk/Sent/Trash
    get their SPECIAL-USE attributes (when created) and SPECIAL-USE is
    advertised.  ``auth_failure_delay``: seconds (Dovecot's default is 2).
    ``max_connections``: per user and IP (Dovecot's default is 10).
    ``extra_config``: text appended to the configuration.  ``auth_mechanisms``:
    Dovecot's list (default ``plain login``); with more (e.g. ``xoauth2
    oauthbearer`` and an oauth2 passdb in ``extra_config``, see
    tests/support/oauth.py) the passwd-file passdb keeps to ``plain login``.
    ``base``: directory to use (default: a fresh temp dir, removed by :meth:`cleanup`).

    The server gets SIGKILL when the thread that started it exits (so no
    orphan survives a killed pytest): start servers from the main thread.
    """

    def __init__(self, users: Sequence[str] | Mapping[str, str] | None = None,
                 password: str = DEFAULT_PASSWORD, *, separator: str = "/",
                 capabilities: str | None = FULL, ssl: bool = True,
                 ssl_cert: Path | str | None = None, ssl_key: Path | str | None = None,
                 ca_file: Path | str | None = None,
                 special_use: bool = True, auth_failure_delay: int = 0,
                 max_connections: int = 100,
                 extra_config: str = "", auth_mechanisms: str = "plain login",
                 base: Path | str | None = None,
                 start_timeout: float = 10.0):
        if os.geteuid() != 0:
            raise DovecotError("tests/support/dovecot.py runs Dovecot as root "
                               "(mail as the 'mail' user); run the tests as root")
        if users is None:
            users = [DEFAULT_USER]
        if isinstance(users, Mapping):
            self.users = dict(users)
        else:
            self.users = dict.fromkeys(users, password)
        if not self.users:
            raise ValueError("need at least one user")
        for u, pw in self.users.items():
            if not re.fullmatch(r"[A-Za-z0-9._@+-]+", u):
                raise ValueError(f"unsupported user name {u!r}")
            if any(c in pw for c in ":\r\n\0"):
                raise ValueError(f"password for {u!r} cannot hold ':' or line breaks")
        self.user = next(iter(self.users))
        self.password = self.users[self.user]
        self.separator = separator
        self.capabilities = capabilities
        self.ssl = ssl
        self.special_use = special_use
        self.max_connections = max_connections
        self.auth_failure_delay = int(auth_failure_delay)
        self.extra_config = extra_config
        self.auth_mechanisms = auth_mechanisms
        self.start_timeout = start_timeout
        self.host = HOST
        self.port = free_port()
        self.ssl_port = free_port() if ssl else None

        self._own_base = base is None
        self.base = Path(base) if base is not None else Path(tempfile.mkdtemp(prefix="imapfs-dovecot-"))
        self.base.mkdir(parents=True, exist_ok=True)
        _make_traversable(self.base)
        self.conf_path = self.base / "dovecot.conf"
        self.log_path = self.base / "dovecot.log"
        self.run_dir = self.base / "run"
        self.state_dir = self.base / "state"
        self.home_root = self.base / "home"
        self.passwd_path = self.base / "passwd"

        if ssl and (ssl_cert is None) != (ssl_key is None):
            raise ValueError("give both ssl_cert and ssl_key, or neither")
        if ssl and ssl_cert is None:
            tls = tlsca.session_tls()
            ssl_cert, ssl_key = tls.cert, tls.key
        self.ca_file = (Path(ca_file) if ca_file else tlsca.session_tls().ca_file) if ssl else None
        self.ssl_cert = Path(ssl_cert) if ssl_cert else None
        self.ssl_key = Path(ssl_key) if ssl_key else None

        self.proc: subprocess.Popen | None = None
        self._log_fh = None
        self._started_once = False
        self._write_config()
        _live.add(self)

    # ---------------------------------------------------------------- config
    def _write_config(self) -> None:
        mail = pwd.getpwnam(MAIL_USER)
        for d in (self.run_dir, self.state_dir, self.home_root):
            d.mkdir(exist_ok=True)
            d.chmod(0o755)
        self.passwd_path.write_text(
            "".join(f"{u}:{pw}::::::\n" for u, pw in self.users.items()), encoding="utf-8")
        # The auth process runs as the ``dovecot`` user (default_internal_user).
        os.chown(self.passwd_path, 0, pwd.getpwnam(INTERNAL_USER).pw_gid)
        self.passwd_path.chmod(0o640)
        for u in self.users:
            self._make_home(u)

        ssl_lines = (
            f"ssl = yes\nssl_cert = <{self.ssl_cert}\nssl_key = <{self.ssl_key}\n"
            if self.ssl else "ssl = no\n")
        imaps = (f"  inet_listener imaps {{\n    port = {self.ssl_port}\n    ssl = yes\n  }}\n"
                 if self.ssl else "")
        special = ("".join(f"  mailbox {name} {{\n    special_use = \\{name}\n  }}\n"
                           for name in ("Drafts", "Junk", "Sent", "Trash"))
                   if self.special_use else "")
        passdb_mechs = ("  mechanisms = plain login\n"
                        if self.auth_mechanisms.split() != ["plain", "login"] else "")
        cap = (f"  imap_capability = {self.capabilities}\n"
               if self.capabilities is not None else "")
        conf = f"""\
# Generated by tests/support/dovecot.py: a throwaway test server.
base_dir = {self.run_dir}
state_dir = {self.state_dir}
instance_name = imapfs-test-{self.port}
log_path = {self.log_path}
info_log_path = {self.log_path}
debug_log_path = {self.log_path}
listen = {HOST}
protocols = imap
shutdown_clients = yes
{ssl_lines}disable_plaintext_auth = no
auth_mechanisms = {self.auth_mechanisms}
# Dovecot answers a failed login after auth_failure_delay (2 s; with 0 it
# is 0.5 s, its timer's period), and anvil adds a penalty growing to 15 s
# per IP after repeated failures.  Tests need no tarpit: mode 0 on anvil's
# penalty socket switches the penalty off.
auth_failure_delay = {self.auth_failure_delay} secs
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
passdb {{
  driver = passwd-file
{passdb_mechs}  args = scheme=PLAIN username_format=%u {self.passwd_path}
}}
userdb {{
  driver = static
  args = uid={mail.pw_uid} gid={mail.pw_gid} home={self.home_root}/%u
}}
mail_uid = {mail.pw_uid}
mail_gid = {mail.pw_gid}
first_valid_uid = {mail.pw_uid}
first_valid_gid = {mail.pw_gid}
mail_location = maildir:~/Maildir
# stop() is a SIGKILL.  With the default dotlock_use_excl = yes a process
# killed between creating dovecot-uidlist.lock (O_EXCL) and writing its
# pid into it leaves an empty lock, and every SELECT of that folder waits
# for the lock's 2-minute stale timeout (seen once in CI's soak).  Without
# O_EXCL the lock is written whole and then linked into place, so a dead
# holder's lock always names its pid and is broken after about 2.5 s.
dotlock_use_excl = no
mailbox_list_index = yes
mail_plugins =
namespace inbox {{
  inbox = yes
  separator = {self.separator}
{special}}}
service imap-login {{
  inet_listener imap {{
    port = {self.port}
  }}
{imaps}}}
protocol imap {{
  # Default 10 per user and IP; a test may well hold more connections.
  mail_max_userip_connections = {self.max_connections}
{cap}}}
{self.extra_config}
"""
        self.conf_path.write_text(conf)

    def _make_home(self, user: str) -> Path:
        mail = pwd.getpwnam(MAIL_USER)
        home = self.home_root / user
        home.mkdir(exist_ok=True)
        os.chown(home, mail.pw_uid, mail.pw_gid)
        home.chmod(0o700)
        return home

    # ------------------------------------------------------------- lifecycle
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Dovecot:
        if self.running:
            return self
        for attempt in range(3):
            self._log_fh = open(self.base / "dovecot.stderr", "ab")
            self.proc = subprocess.Popen(
                die_with_parent([DOVECOT, "-F", "-c", str(self.conf_path)], "KILL"),
                stdin=subprocess.DEVNULL, stdout=self._log_fh, stderr=subprocess.STDOUT,
                start_new_session=True)
            try:
                self._wait_ready()
                self._started_once = True
                return self
            except DovecotError as e:
                self.stop()
                # Another process took a port between free_port() and bind:
                # pick new ones, unless they must stay (restart/reset).
                if "Address already in use" not in str(e) or self._started_once \
                        or attempt == 2:
                    raise
                self.port = free_port()
                self.ssl_port = free_port() if self.ssl else None
                self._write_config()
        raise AssertionError("unreachable")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        ports = [self.port] + ([self.ssl_port] if self.ssl else [])
        pending = list(ports)
        while pending:
            if self.proc.poll() is not None:
                raise DovecotError(
                    f"dovecot exited with {self.proc.returncode} during start-up:\n"
                    + self.log_tail())
            if time.monotonic() > deadline:
                self.stop()
                raise DovecotError(f"dovecot did not listen on {pending} within "
                                   f"{self.start_timeout} s:\n" + self.log_tail())
            port = pending[0]
            try:
                with socket.create_connection((HOST, port), timeout=0.5) as s:
                    if port == self.port:
                        s.settimeout(max(0.1, deadline - time.monotonic()))
                        greeting = s.recv(4096)
                        if not greeting.startswith(b"* OK"):
                            raise DovecotError(f"unexpected greeting {greeting!r}")
                pending.pop(0)
            except OSError:  # not listening yet (refused), slow greeting, reset
                time.sleep(0.01)

    def stop(self, graceful: bool = False, timeout: float = 10.0) -> None:
        """Stop the server; a no-op if it is not running.

        Default: SIGKILL to Dovecot's whole process group.  That is instant
        and safe for the mail (every APPEND/STORE/EXPUNGE that was answered
        is on disk in the Maildir; indexes are rebuilt as needed), whereas a
        graceful SIGTERM takes 1–6 s here (the master waits for its
        children; imap-login even waits 5 s for the dead stats process).
        ``graceful=True`` sends SIGTERM first and waits up to ``timeout``.
        """
        proc, self.proc = self.proc, None
        if proc is not None:
            if graceful and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            # Also takes down any imap/login child that outlived the master.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait(timeout)
            # SIGKILL is asynchronous: children still hold the listening
            # sockets for a moment, and a restart on the same ports would
            # fail.  Wait until the whole process group is gone.
            deadline = time.monotonic() + timeout
            while _group_alive(proc.pid):
                if time.monotonic() > deadline:
                    raise DovecotError(f"dovecot processes of group {proc.pid} survive SIGKILL")
                time.sleep(0.002)
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def restart(self) -> Dovecot:
        """Stop and start again on the same ports, with the same mail."""
        self.stop()
        return self.start()

    def reset(self) -> None:
        """Back to an empty INBOX for every user, server running, same ports.

        Stop, wipe the home directories, start: about 30 ms here, faster than
        deleting over IMAP once there are a few folders, and complete
        (subscriptions, indexes, ``dovecot-uidlist``, UIDVALIDITY all go).
        It also drops every open IMAP connection.
        """
        self.stop()
        for u in self.users:
            shutil.rmtree(self.home_root / u, ignore_errors=True)
            self._make_home(u)
        self.start()

    def cleanup(self) -> None:
        """Stop and remove the temporary directory (if this object made it)."""
        self.stop()
        if self._own_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<Dovecot {self.host}:{self.port} base={self.base}>"

    # ------------------------------------------------------------------ logs
    def log(self) -> str:
        parts = []
        for p in (self.base / "dovecot.stderr", self.log_path):
            if p.exists():
                parts.append(p.read_text(errors="replace"))
        return "".join(parts)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def log_errors(self) -> list[str]:
        """Lines Dovecot logged at error level or worse (Error/Fatal/Panic)."""
        return [l for l in self.log().splitlines()
                if re.search(r"\b(Error|Fatal|Panic)(\(\w+\))?:", l)]

    # ----------------------------------------------------------------- paths
    def url(self, scheme: str = "imap", user: str | None = None) -> str:
        if scheme not in ("imap", "imaps"):
            raise ValueError(scheme)
        if scheme == "imaps" and not self.ssl:
            raise ValueError("this server has ssl=False")
        port = self.ssl_port if scheme == "imaps" else self.port
        return f"{scheme}://{user or self.user}@{self.host}:{port}/"

    def home(self, user: str | None = None) -> Path:
        return self.home_root / (user or self.user)

    def maildir(self, user: str | None = None) -> Path:
        return self.home(user) / "Maildir"

    # ------------------------------------------------------------ IMAP access
    def client(self, user: str | None = None, timeout: float = 10.0) -> imaplib.IMAP4:
        """A fresh plaintext connection, logged in; the caller logs out."""
        user = user or self.user
        c = imaplib.IMAP4(self.host, self.port, timeout=timeout)
        try:
            pw = self.users[user]
            if pw.isascii():
                c.login(user, pw)
            else:  # imaplib's LOGIN sends ASCII only; SASL PLAIN is UTF-8 (RFC 4616)
                c.authenticate("PLAIN", lambda _: f"\0{user}\0{pw}".encode())
        except BaseException:
            c.shutdown()
            raise
        return c

    @contextlib.contextmanager
    def _session(self, user: str | None):
        c = self.client(user)
        try:
            yield c
        finally:
            try:
                c.logout()
            except (imaplib.IMAP4.error, OSError):
                with contextlib.suppress(OSError):
                    c.shutdown()

    def create(self, folder: str, user: str | None = None) -> None:
        """CREATE ``folder`` (no error if it exists)."""
        with self._session(user) as c:
            _create(c, folder)

    def append(self, folder: str, data: bytes, flags: str | Iterable[str] = "",
               date=None, user: str | None = None) -> int:
        """APPEND ``data`` byte for byte; returns the new UID.

        ``folder`` is created if missing.  ``flags``: ``"\\\\Seen \\\\Flagged"``
        or an iterable of flags.  ``date``: datetime, epoch seconds or an
        INTERNALDATE string.
        """
        return self.append_many(folder, [data], flags, date, user)[0]

    def append_many(self, folder: str, messages: Iterable[bytes],
                    flags: str | Iterable[str] = "", date=None,
                    user: str | None = None) -> list[int]:
        """APPEND several messages over one connection; returns their UIDs."""
        with self._session(user) as c:
            return [_append(c, folder, m, flags, date) for m in messages]

    def fetch_all(self, folder: str = "INBOX", user: str | None = None) -> dict[int, bytes]:
        """``{uid: exact BODY[] bytes}`` of every message (BODY.PEEK: no \\Seen)."""
        with self._session(user) as c:
            _check(*c.select(_mailbox_arg(folder), readonly=True), f"SELECT {folder}")
            typ, data = c.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
            _check(typ, data, "UID FETCH")
            return _parse_fetch_bodies(data)

    def flags(self, folder: str = "INBOX", user: str | None = None) -> dict[int, set[str]]:
        """``{uid: {flags}}`` of every message (without the session flag ``\\Recent``)."""
        with self._session(user) as c:
            _check(*c.select(_mailbox_arg(folder), readonly=True), f"SELECT {folder}")
            typ, data = c.uid("FETCH", "1:*", "(UID FLAGS)")
            _check(typ, data, "UID FETCH")
            out = {}
            for item in data:
                if isinstance(item, tuple):
                    item = item[0]
                if not item:
                    continue
                m = re.search(rb"UID (\d+)", item)
                f = re.search(rb"FLAGS \(([^)]*)\)", item)
                if m and f:
                    out[int(m.group(1))] = set(f.group(1).decode().split()) - {"\\Recent"}
            return out

    def folders(self, user: str | None = None) -> list[str]:
        """Every folder name (decoded), sorted."""
        with self._session(user) as c:
            typ, data = c.list('""', "*")
            _check(typ, data, "LIST")
            names = []
            for line in data:
                if line is None:
                    continue
                if isinstance(line, tuple):  # name sent as a literal
                    names.append(mutf7_decode(line[1]))
                    continue
                m = re.match(rb'\(([^)]*)\) (?:"(?:[^"\\]|\\.)*"|NIL) (.*)$', line)
                name = m.group(2)
                if name.startswith(b'"'):
                    name = re.sub(rb'\\(.)', rb'\1', name[1:-1])
                names.append(mutf7_decode(name))
            return sorted(names)

    def capability(self, user: str | None = None) -> list[str]:
        """The post-login CAPABILITY list."""
        with self._session(user) as c:
            typ, data = c.capability()
            _check(typ, data, "CAPABILITY")
            return data[0].decode().split()


# ------------------------------------------------------------- imaplib glue

def _create(c: imaplib.IMAP4, folder: str) -> None:
    typ, data = c.create(_mailbox_arg(folder))
    if typ != "OK" and b"[ALREADYEXISTS]" not in b" ".join(d or b"" for d in data):
        raise imaplib.IMAP4.error(f"CREATE {folder}: {typ} {data!r}")


def _flags_arg(flags) -> str | None:
    if isinstance(flags, str):
        flags = flags.strip()
        if flags.startswith("("):
            return flags
        flags = flags.split()
    flags = list(flags)
    return "(" + " ".join(flags) + ")" if flags else None


def _date_arg(date) -> str | None:
    if date is None:
        return None
    if isinstance(date, str) and date.startswith('"'):
        return date
    if isinstance(date, _dt.datetime) and date.tzinfo is None:
        date = date.astimezone()
    return imaplib.Time2Internaldate(date)


def _append(c: imaplib.IMAP4, folder: str, data: bytes, flags, date) -> int:
    mbox = _mailbox_arg(folder)
    for attempt in (1, 2):
        # imaplib.IMAP4.append() rewrites bare CR/LF to CRLF; send the bytes
        # exactly as given instead (same code path, without the rewrite).
        c.literal = bytes(data)
        typ, resp = c._simple_command("APPEND", mbox, _flags_arg(flags), _date_arg(date))
        if typ == "OK":
            break
        text = b" ".join(r or b"" for r in resp)
        if attempt == 1 and b"[TRYCREATE]" in text:
            _create(c, folder)
            continue
        raise imaplib.IMAP4.error(f"APPEND {folder}: {typ} {resp!r}")
    m = re.search(rb"\[APPENDUID \d+ (\d+)\]", b" ".join(r or b"" for r in resp))
    if m:
        return int(m.group(1))
    # No UIDPLUS answer: the highest UID is ours (nobody else appends here).
    _check(*c.select(mbox, readonly=True), f"SELECT {folder}")
    typ, res = c.uid("SEARCH", "ALL")
    _check(typ, res, "UID SEARCH")
    return max(int(x) for x in res[0].split())


def _parse_fetch_bodies(data) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pending_uid = None
    for item in data:
        if isinstance(item, tuple):
            head, body = item
            m = re.search(rb"UID (\d+)", head)
            if m:
                out[int(m.group(1))] = body
            else:  # UID came after the literal
                pending_uid = body
        elif item and pending_uid is not None:
            m = re.search(rb"UID (\d+)", item)
            if m:
                out[int(m.group(1))] = pending_uid
            pending_uid = None
    return out
