"""The IMAP session: blocking connections and the trio-side pool that runs them.

Why imaplib: measured on this machine it fetches 10k bodies in ~0.15 s where
imapclient 4.1 needs ~0.7 s and aioimaplib is ~40x slower (docs/architecture.md).
Its traps are handled here, in one place: certificates are verified only
because we pass an ``ssl.SSLContext``; STARTTLS is mandatory for ``imap://``
unless ``tls=off``; response codes and unsolicited data that imaplib piles up
in ``untagged_responses`` are taken after every command; NO/BAD are checked
by hand because most imaplib calls return them instead of raising.

A :class:`Connection` is used by one thread at a time. The :class:`Pool`
hands connections to ``trio.to_thread.run_sync`` under a ``CapacityLimiter``,
so no network call ever runs on the trio loop, and reconnects with
exponential backoff while the server is away.
"""

from __future__ import annotations

import imaplib
import json
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from . import imapproto
from .errors import (
    AuthError,
    CommandFailed,
    ConnectError,
    Exists,
    ImapfsError,
    NotEmpty,
    Unsupported,
    NotFound,
    ProtocolError,
    ServerUnavailable,
    StaleError,
    TLSError,
)
from .records import RawMeta  # defined there, so the store need not import this module

log = logging.getLogger(__name__)

# What one server reply may make us read (docs/reliability.md, "Limits"). Past
# any of them the connection is out of step with the server: it is closed and
# the command fails with ProtocolError (EIO), never the mount.
MAX_LINE = 8 * 1024 * 1024  # one response line (between literals); imaplib's own 1 MB is too
# small for a 10,000-part BODYSTRUCTURE (Dovecot's own part limit), 8 MiB is 5 times that.
MAX_LITERAL = 1024 * 1024 * 1024  # one literal: a whole decoded part of a big message comes as one
MIN_RATE = 64 * 1024  # bytes/s: a line or literal must arrive within timeout + size / MIN_RATE


class _Bounded:
    """imaplib's reads with limits: line length, literal size, and time.

    imaplib reads a line with ``file.readline(_MAXLINE)`` (its own check
    raises ``error``, which looks like a BAD answer) and a literal with
    ``file.read(size)``, which for ``{2^62}`` raises MemoryError and for
    ``{10^20}`` OverflowError, and which a server trickling one byte a second
    keeps busy forever despite the socket timeout. Here each read takes what
    is buffered or one ``recv`` at a time, so the limits are checked as bytes
    arrive; a violation raises ``abort`` (the connection is unusable).
    """

    file: Any
    sock: Any
    abort: type[Exception]
    limit_hit: str | None = None  # why a bound was violated (imaplib re-wraps our abort)

    def _violation(self, why: str) -> Exception:
        self.limit_hit = why
        return self.abort(why)

    def _deadline(self, size: int) -> float:
        timeout = self.sock.gettimeout() if self.sock is not None else None
        return time.monotonic() + (timeout or 30.0) + size / MIN_RATE

    def readline(self) -> bytes:
        f = self.file
        data = f.peek(1)
        i = data.find(b"\n")
        if 0 <= i < MAX_LINE:  # the whole line is buffered: the common case
            return f.read(i + 1)
        buf = bytearray()
        start = time.monotonic()
        deadline = self._deadline(0)
        while True:
            if not data:
                return bytes(buf)  # EOF: imaplib reports it
            i = data.find(b"\n")
            take = i + 1 if i >= 0 else len(data)
            buf += f.read(min(take, MAX_LINE + 1 - len(buf)))
            if len(buf) > MAX_LINE:
                raise self._violation(f"server sent a line longer than {MAX_LINE} bytes")
            if i >= 0:
                return bytes(buf)
            if time.monotonic() > deadline + len(buf) / MIN_RATE:
                raise self._violation(f"server line incomplete after {time.monotonic() - start:.0f} s "
                                      f"({len(buf)} bytes so far)")
            data = f.peek(1)

    def read(self, size: int) -> bytes:
        if size > MAX_LITERAL:
            raise self._violation(f"server announced a literal of {size} bytes (limit {MAX_LITERAL})")
        f = self.file
        deadline = self._deadline(size)
        parts: list[bytes] = []
        left = size
        while left > 0:
            data = f.read1(min(left, 1024 * 1024))
            if not data:
                break  # EOF: imaplib finds the short literal or the missing line
            parts.append(data)
            left -= len(data)
            if left and time.monotonic() > deadline:
                raise self._violation(f"literal of {size} bytes incomplete after its time limit "
                                      f"({size - left} bytes arrived)")
        return parts[0] if len(parts) == 1 else b"".join(parts)


class _IMAP4(_Bounded, imaplib.IMAP4):
    pass


class _IMAP4_SSL(_Bounded, imaplib.IMAP4_SSL):
    pass

T = TypeVar("T")

META_ITEMS = "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])"
_PASSING_ITEMS = {b"UID", b"FLAGS", b"MODSEQ"}  # what an unsolicited FETCH in passing carries
UNPARSED = b"\0UNPARSED"  # uid_fetch item: this message's FETCH response could not be parsed (why)


_OAUTH = ("OAUTHBEARER", "XOAUTH2")  # SASL mechanisms that take an OAuth2 access token


@dataclass
class Account:
    """Where and how to log in. ``tls`` is ``implicit``, ``starttls`` or ``off``.

    ``secret(kind, fresh)`` is the credential source (imapfs.credentials): it
    is asked at every login, for a ``"password"`` (PLAIN, LOGIN) or a
    ``"token"`` (XOAUTH2, OAUTHBEARER), and once more with ``fresh=True``
    after the server refused what it gave, so an expiring OAuth2 token never
    outlives the connection it was fetched for. ``auth``: ``-o auth=``
    (``auto``, ``plain``, ``login``, ``xoauth2``, ``oauthbearer``).
    """

    host: str
    port: int
    user: str
    secret: Callable[[str, bool], str] = field(repr=False)
    tls: str = "implicit"
    cafile: str | None = None
    timeout: float = 30.0
    auth: str = "auto"

    @property
    def label(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass
class SelectInfo:
    uidvalidity: int
    exists: int
    uidnext: int | None
    highestmodseq: int | None = None


@dataclass
class SyncResult:
    """What a folder looks like now, relative to what the caller knew."""

    info: SelectInfo
    reset: bool  # UIDVALIDITY changed or first sync: ``added`` is everything
    added: list[RawMeta]
    present: set[int] | None = None  # every UID now in the folder; None = not computed
    removed: set[int] = field(default_factory=set)  # UIDs known to be gone (QRESYNC VANISHED)
    flags: dict[int, tuple[str, ...]] = field(default_factory=dict)  # changed flags (CONDSTORE)


@dataclass
class Known:
    """What the caller knows of a folder, for an incremental sync."""

    uidvalidity: int
    count: int
    uidnext: int | None
    highestmodseq: int | None
    uids: frozenset[int] = frozenset()  # every UID the caller shows or deliberately skips


@dataclass
class Status:
    """STATUS of a folder (RFC 3501 6.3.10; HIGHESTMODSEQ from RFC 7162)."""

    messages: int | None = None
    uidnext: int | None = None
    uidvalidity: int | None = None
    highestmodseq: int | None = None


def make_ssl_context(cafile: str | None) -> ssl.SSLContext:
    """System trust store plus *cafile*; hostname checking on."""
    ctx = ssl.create_default_context()
    if cafile:
        try:
            ctx.load_verify_locations(cafile=cafile)
        except (OSError, ssl.SSLError) as e:
            raise TLSError(f"cannot load CA file {cafile}: {e}") from None
    return ctx


def _text(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        v = b" ".join(x if isinstance(x, bytes) else str(x).encode() for x in v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def _flag_str(f: Any) -> str:
    return f.decode("utf-8", "replace") if isinstance(f, bytes) else str(f)


def _saslname(user: str) -> str:
    """RFC 5801 saslname: ``,`` and ``=`` escaped, for the GS2 header's ``a=``."""
    return user.replace("=", "=3D").replace(",", "=2C")


def _oauth_response(mech: str, user: str, token: str, host: str, port: int) -> bytes:
    """The client's first message for XOAUTH2 (Google/Microsoft) or OAUTHBEARER (RFC 7628)."""
    if mech == "XOAUTH2":
        return f"user={user}\x01auth=Bearer {token}\x01\x01".encode("utf-8")
    return (f"n,a={_saslname(user)},\x01host={host}\x01port={port}\x01"
            f"auth=Bearer {token}\x01\x01").encode("utf-8")


def _oauth_error(challenge: bytes) -> str:
    """The ``status`` of a server's OAuth error challenge (JSON), short and printable."""
    try:
        obj = json.loads(challenge.decode("utf-8", "replace"))
        status = obj.get("status") if isinstance(obj, dict) else None
    except ValueError:
        status = None
    text = str(status) if status is not None else challenge.decode("utf-8", "replace")
    return "".join(c for c in text if c.isprintable())[:80]


class Connection:
    """One logged-in IMAP connection; not thread-safe (the pool serialises use)."""

    def __init__(self, account: Account) -> None:
        self.account = account
        self.imap: imaplib.IMAP4 | None = None
        self.capabilities: frozenset[str] = frozenset()
        self.selected: bytes | None = None
        self.select_info: SelectInfo | None = None
        self.greeting = ""
        self.broken = False
        self.qresync = False  # ENABLE QRESYNC done: SELECT can report what vanished
        self.vanished: set[int] = set()
        self.vanished_unreadable = False
        self.flag_changes: dict[int, tuple[str, ...]] = {}
        # Mailboxes for which the server told us, unasked, that something changed.
        self.changed: set[bytes] = set()

    # -- connecting -------------------------------------------------------

    def open(self) -> None:
        """Connect, secure and log in; raises ConnectError/TLSError/AuthError."""
        a = self.account
        ctx = make_ssl_context(a.cafile) if a.tls != "off" else None
        try:
            if a.tls == "implicit":
                imap: imaplib.IMAP4 = _IMAP4_SSL(a.host, a.port, ssl_context=ctx, timeout=a.timeout)
            else:
                imap = _IMAP4(a.host, a.port, timeout=a.timeout)
        except ssl.SSLCertVerificationError as e:
            raise TLSError(f"TLS certificate of {a.host}:{a.port} refused: {e.verify_message or e.reason}") from None
        except ssl.SSLError as e:
            raise TLSError(f"TLS handshake with {a.host}:{a.port} failed: {e.reason or e}") from None
        except (socket.timeout, TimeoutError):
            raise ConnectError(f"cannot connect to {a.host}:{a.port}: timed out") from None
        except socket.gaierror as e:
            raise ConnectError(f"cannot resolve {a.host}: {e.strerror or e}") from None
        except (OSError, imaplib.IMAP4.error, EOFError) as e:
            raise ConnectError(f"cannot connect to {a.host}:{a.port}: {getattr(e, 'strerror', None) or e}") from None
        except Exception as e:  # noqa: BLE001 - a greeting imaplib could not digest
            raise ConnectError(f"cannot connect to {a.host}:{a.port}: unusable greeting ({type(e).__name__})") from None
        self.imap = imap
        welcome = getattr(imap, "welcome", b"")
        self.greeting = welcome.decode("utf-8", "replace")[:200] if isinstance(welcome, bytes) else ""
        try:
            if a.tls == "starttls":
                self._starttls(ctx)
            self._login()
            self._refresh_capabilities()
            if "QRESYNC" in self.capabilities and "ENABLE" in self.capabilities:
                typ, dat = self._cmd("ENABLE", lambda i: i._simple_command("ENABLE", "QRESYNC"))
                self.qresync = typ == "OK"
        except BaseException:
            self.close()
            raise
        log.debug("connected to %s, capabilities: %s", a.label, " ".join(sorted(self.capabilities)))

    def _starttls(self, ctx: ssl.SSLContext | None) -> None:
        imap = self.imap
        assert imap is not None and ctx is not None
        a = self.account
        if imap.state != "NONAUTH":
            # PREAUTH on a connection that still had to be secured: a man in
            # the middle could be answering; never continue in plaintext.
            raise TLSError(f"{a.host}:{a.port} sent PREAUTH before STARTTLS; refusing the unsecured session")
        if "STARTTLS" not in imap.capabilities:
            raise TLSError(
                f"{a.host}:{a.port} does not offer STARTTLS; refusing to log in without TLS "
                "(use imaps:// or, on a trusted network, -o tls=off)"
            )
        try:
            # imaplib replaces its file object after the handshake, which drops
            # anything the server (or an attacker) sent before it, and asks
            # for CAPABILITY again.
            imap.starttls(ssl_context=ctx)
        except ssl.SSLCertVerificationError as e:
            raise TLSError(f"TLS certificate of {a.host}:{a.port} refused: {e.verify_message or e.reason}") from None
        except ssl.SSLError as e:
            raise TLSError(f"TLS handshake with {a.host}:{a.port} failed: {e.reason or e}") from None
        except (imaplib.IMAP4.error, OSError, EOFError) as e:
            raise TLSError(f"STARTTLS with {a.host}:{a.port} failed: {_text(e.args[0] if e.args else e)}") from None

    def _login(self) -> None:
        """Log in; raise AuthError/ConnectError whose text never holds the secret.

        The mechanism comes from ``-o auth=`` (see :meth:`_mechanism`); the
        secret from the account's credential source, asked afresh for this
        connection. When the server refuses it, the source is asked once more
        with ``fresh=True`` (a rotated password, a token that expired early)
        and, if that gives something new, the login is tried once more.

        AUTHENTICATE PLAIN carries UTF-8 (RFC 4616). Without it, LOGIN sends an
        ASCII password as a quoted string and any other as a UTF-8 literal
        (RFC 3501 literals are 8-bit; Dovecot accepts them). Whatever fails, the
        error is built outside the ``except`` block, so no traceback, chained
        exception or repr (UnicodeEncodeError's holds the whole argument) can
        carry the secret into a log or onto stderr.
        """
        imap = self.imap
        assert imap is not None
        a = self.account
        if imap.state == "AUTH":  # PREAUTH over TLS or with tls=off
            return
        mech = self._mechanism()
        kind = "token" if mech in _OAUTH else "password"
        secret = a.secret(kind, False)
        failure, refused = self._login_with(mech, secret)
        if refused:
            again = a.secret(kind, True)
            if again != secret:
                log.info("%s refused the %s from the credential source; trying once more with a fresh one",
                         a.label, kind)
                failure, refused = self._login_with(mech, again)
                if refused and failure is not None:
                    failure = AuthError(f"{failure} (a fresh {kind} was refused too)")
        if failure is not None:
            raise failure
        log.debug("logged in to %s as %s with %s", a.label, a.user, mech)

    def _mechanism(self) -> str:
        """The SASL mechanism (or ``LOGIN``) for ``-o auth=``; AuthError when it cannot be used.

        ``auto``: AUTHENTICATE PLAIN when offered (UTF-8 safe); OAUTHBEARER or
        XOAUTH2 only when they are all the server offers (a password is not
        sent as a token, nor a token as a password, by guesswork); else LOGIN.
        An explicit mechanism must be offered (``AUTH=...``); LOGIN must not be
        disabled.
        """
        imap = self.imap
        assert imap is not None
        a = self.account
        where = f"{a.host}:{a.port}"
        caps = {str(c).upper() for c in imap.capabilities}
        offered = {c[5:] for c in caps if c.startswith("AUTH=")}
        want = a.auth.upper()
        if want == "AUTO":
            if "PLAIN" in offered:
                return "PLAIN"
            if offered and offered <= set(_OAUTH):
                return "OAUTHBEARER" if "OAUTHBEARER" in offered else "XOAUTH2"
            want = "LOGIN"
        if want == "LOGIN":
            if "LOGINDISABLED" in caps:
                raise AuthError(f"{where} does not allow login on this connection (LOGINDISABLED)")
            return "LOGIN"
        if want not in offered:
            raise AuthError(f"{where} does not offer AUTH={want} (it offers: "
                            f"{' '.join(sorted(offered)) or 'no SASL mechanism'}); see -o auth= in docs/usage.md")
        return want

    def _login_with(self, mech: str, secret: str) -> tuple[ImapfsError | None, bool]:
        """One login attempt → (the error or None, whether the server refused the secret)."""
        imap = self.imap
        assert imap is not None
        a = self.account
        where = f"{a.host}:{a.port}"
        failure: ImapfsError | None = None
        challenges: list[bytes] = []
        refused = False
        try:
            if mech in _OAUTH:
                first = _oauth_response(mech, a.user, secret, a.host, a.port)

                def respond(challenge: bytes) -> bytes:
                    challenges.append(challenge)
                    # After a refusal the server sends an error challenge (JSON) and
                    # waits for the client's dummy answer before its NO (RFC 7628 3.2.3).
                    if len(challenges) == 1:
                        return first
                    return b"\x01" if mech == "OAUTHBEARER" else b""

                imap.authenticate(mech, respond)
            elif mech == "PLAIN":
                plain = f"\0{a.user}\0{secret}".encode("utf-8")
                imap.authenticate("PLAIN", lambda _challenge: plain)
            elif a.user.isascii() and secret.isascii():
                imap.login(a.user, secret)
            else:
                failure = self._login_literal(secret)
        except imaplib.IMAP4.abort as e:
            failure = ConnectError(f"connection to {where} lost during login: {self._scrub(e, secret)}")
        except imaplib.IMAP4.error as e:
            msg = self._scrub(e, secret).strip()
            if msg.startswith("[") and "]" in msg:
                msg = msg[msg.index("]") + 1 :].strip() or msg
            why = _oauth_error(challenges[1]) if len(challenges) > 1 else ""
            failure = AuthError(f"login as {a.user} on {where} failed: {msg}"
                                + (f" ({mech} token refused: {why})" if why else ""))
            refused = True
        except (OSError, EOFError) as e:
            failure = ConnectError(f"connection to {where} lost during login: "
                                   f"{getattr(e, 'strerror', None) or type(e).__name__}")
        except Exception as e:  # noqa: BLE001 - e.g. UnicodeEncodeError, whose repr holds the password
            failure = AuthError(f"login as {a.user} on {where} failed: {type(e).__name__} while sending the login")
        return failure, refused

    def _login_literal(self, secret: str) -> AuthError | None:
        """LOGIN with a non-ASCII user or password: each sent as a UTF-8 literal.

        imaplib sends one literal per command, after the last argument; a
        non-ASCII user name goes as a non-synchronizing literal (LITERAL+) inside
        the command line, which only servers offering LITERAL+ accept.
        """
        imap = self.imap
        assert imap is not None
        a = self.account
        if a.user.isascii():
            user: str | bytes = imap._quote(a.user)  # type: ignore[attr-defined]
        elif "LITERAL+" in imap.capabilities:
            u = a.user.encode("utf-8")
            user = b"{%d+}\r\n" % len(u) + u
        else:
            return AuthError(f"cannot log in as {a.user} on {a.host}:{a.port}: a non-ASCII user name "
                             "needs AUTH=PLAIN or LITERAL+, and the server offers neither")
        imap.literal = secret.encode("utf-8")  # type: ignore[attr-defined]
        typ, dat = imap._simple_command("LOGIN", user)  # type: ignore[attr-defined]
        if typ != "OK":
            raise imap.error(dat[-1] if dat else b"")
        imap.state = "AUTH"
        return None

    @staticmethod
    def _scrub(e: BaseException, secret: str) -> str:
        """An imaplib error's text with the secret (should a server echo it) blanked out."""
        text = _text(e.args[0] if e.args else e)
        return text.replace(secret, "***") if secret else text

    def _refresh_capabilities(self) -> None:
        typ, dat = self._cmd("CAPABILITY", lambda i: i.capability())
        caps = set()
        for line in dat if typ == "OK" else []:
            if isinstance(line, bytes):
                caps.update(line.decode("ascii", "replace").upper().split())
        if caps:
            self.capabilities = frozenset(caps)
        else:
            self.capabilities = frozenset(c.upper() for c in self.imap.capabilities)  # type: ignore[union-attr]

    def close(self) -> None:
        imap, self.imap = self.imap, None
        self.selected = None
        self.select_info = None
        if imap is None:
            return
        try:
            if not self.broken:
                imap.logout()
            else:
                imap.shutdown()
        except Exception:  # noqa: BLE001 - closing is best effort
            try:
                imap.shutdown()
            except Exception:  # noqa: BLE001
                pass

    # -- running commands -------------------------------------------------

    def _cmd(self, what: str, fn: Callable[[imaplib.IMAP4], tuple[str, list]]) -> tuple[str, list]:
        """Run one imaplib call; connection-level failures mark us broken.

        Anything else escaping imaplib (OverflowError, MemoryError, ValueError
        from a reply it could not digest) leaves the connection out of step
        with the server: it is marked broken, so the pool closes it and never
        hands it out again, and the command fails with ProtocolError.
        """
        if self.imap is None or self.broken:
            raise ServerUnavailable("not connected")
        try:
            typ, dat = fn(self.imap)
        except ImapfsError:
            raise  # raised on purpose by fn, after the reply was read
        except imaplib.IMAP4.abort as e:
            self.broken = True
            msg = _text(e.args[0] if e.args else e)
            if getattr(self.imap, "limit_hit", None):  # one of our bounds, not a lost connection
                msg = self.imap.limit_hit  # type: ignore[union-attr]
                log.warning("%s: %s: %s; closing that connection", self.account.label, what, msg)
                raise ProtocolError(f"{what}: unusable reply from {self.account.label}: {msg}") from None
            raise ServerUnavailable(f"{what}: connection to {self.account.label} lost: {msg}") from None
        except (OSError, EOFError, ssl.SSLError) as e:
            self.broken = True
            raise ServerUnavailable(f"{what}: connection to {self.account.label} lost: {e or type(e).__name__}") from None
        except imaplib.IMAP4.error as e:
            msg = _text(e.args[0] if e.args else e)
            if " command error: BAD " not in msg:  # not a BAD answer: imaplib lost its footing
                self.broken = True
            raise CommandFailed(f"{what}: server said {msg}") from None
        except Exception as e:  # noqa: BLE001 - a reply imaplib could not digest
            self.broken = True
            log.warning("%s: %s: unusable reply (%s: %.200s); closing that connection",
                        self.account.label, what, type(e).__name__, e)
            raise ProtocolError(f"{what}: unusable reply from {self.account.label} "
                                f"({type(e).__name__}); connection closed") from None
        self._take_unsolicited()
        return typ, dat

    def _take_unsolicited(self) -> None:
        """Drop data imaplib would otherwise pile up; remember that the folder changed."""
        ur = self.imap.untagged_responses  # type: ignore[union-attr]
        for key in ("EXISTS", "EXPUNGE", "RECENT", "VANISHED", "FETCH"):
            if ur.pop(key, None) is not None and self.selected is not None:
                self.changed.add(self.selected)
        for key in ("OK", "NO", "BAD", "BYE", "UIDVALIDITY", "UIDNEXT", "HIGHESTMODSEQ",
                    "UNSEEN", "PERMANENTFLAGS", "FLAGS", "READ-WRITE", "READ-ONLY",
                    "COPYUID", "APPENDUID", "CAPABILITY", "ENABLED", "NOMODSEQ", "STATUS"):
            ur.pop(key, None)

    def _check(self, what: str, typ: str, dat: list) -> None:
        if typ == "OK":
            return
        msg = _text(dat[0] if dat else b"")
        if "[NONEXISTENT]" in msg or "doesn't exist" in msg.lower() or "does not exist" in msg.lower():
            raise NotFound(f"{what}: {msg}")
        raise CommandFailed(f"{what}: {typ} {msg}")

    # -- folders ----------------------------------------------------------

    def list_folders(self) -> list[imapproto.ListEntry]:
        typ, dat = self._cmd("LIST", lambda i: i.list('""', "*"))
        self._check("LIST", typ, dat)
        return imapproto.parse_list(d for d in dat if d is not None)

    def select(self, name: bytes, qresync: tuple[int, int] | None = None) -> SelectInfo:
        """SELECT *name* (read-write: later writes share the connection).

        *qresync* = (uidvalidity, modseq) asks for ``VANISHED (EARLIER)`` and
        changed flags since then in the same round trip (RFC 7162 §3.2.5);
        they are left in ``self.vanished`` and ``self.flag_changes``.
        """
        self.selected = None
        self.select_info = None
        self.vanished: set[int] = set()
        self.vanished_unreadable = False
        self.flag_changes: dict[int, tuple[str, ...]] = {}
        args = [imapproto.quote(name)]
        if qresync is not None and self.qresync:
            args.append(f"(QRESYNC ({qresync[0]} {qresync[1]}))".encode())
        elif "CONDSTORE" in self.capabilities:
            args.append(b"(CONDSTORE)")

        def do(i: imaplib.IMAP4) -> tuple[str, list]:
            ur = i.untagged_responses
            ur.clear()
            typ, dat = i._simple_command("SELECT", *args)
            info = {k: list(ur.get(k, [])) for k in
                    ("UIDVALIDITY", "UIDNEXT", "EXISTS", "HIGHESTMODSEQ", "VANISHED", "FETCH")}
            if typ == "OK":
                i.state = "SELECTED"
            return typ, [dat, info]

        typ, (dat, info) = self._cmd(f"SELECT {name!r}", do)
        self._check(f"SELECT {name.decode('ascii', 'replace')}", typ, dat)

        def num(key: str) -> int | None:
            vals = info.get(key) or []
            for v in reversed(vals):
                try:
                    return int(v.split()[0]) if isinstance(v, bytes) else int(v)
                except (ValueError, IndexError):
                    continue
            return None

        uidvalidity = num("UIDVALIDITY")
        exists = num("EXISTS")
        if uidvalidity is None or exists is None:
            raise ProtocolError(f"SELECT {name!r} did not report UIDVALIDITY and EXISTS")
        si = SelectInfo(uidvalidity, exists, num("UIDNEXT"), num("HIGHESTMODSEQ"))
        self.vanished_unreadable = False
        for v in info.get("VANISHED") or []:
            if isinstance(v, bytes) and v.upper().startswith(b"(EARLIER)"):
                try:
                    self.vanished.update(imapproto.parse_uid_set(v.split()[-1]))
                except (ProtocolError, IndexError):
                    # Too large or malformed: the UID-set comparison decides instead.
                    log.warning("%s: unreadable VANISHED reply %r; comparing UID sets instead",
                                name.decode("ascii", "replace"), v[:80])
                    self.vanished_unreadable = True
        bad: list = []
        for _seq, it in imapproto.parse_fetch((d for d in info.get("FETCH") or [] if d is not None), bad):
            if isinstance(it.get(b"UID"), int) and isinstance(it.get(b"FLAGS"), list):
                self.flag_changes[it[b"UID"]] = tuple(_flag_str(f) for f in it[b"FLAGS"] if f is not None)
        if bad:
            # A flag change we cannot read: the sync compares everything instead
            # (UID set and every message's flags), so nothing stays stale.
            log.warning("%s: %d unreadable FETCH responses in the SELECT answer; re-reading all flags",
                        name.decode("ascii", "replace"), len(bad))
            self.vanished_unreadable = True
        self.selected = name
        self.select_info = si
        self.changed.discard(name)
        return si

    def ensure_selected(self, name: bytes, uidvalidity: int | None = None) -> SelectInfo:
        """Select *name* unless it already is; refuse a changed UIDVALIDITY."""
        if self.selected != name or self.select_info is None:
            self.select(name)
        assert self.select_info is not None
        if uidvalidity is not None and self.select_info.uidvalidity != uidvalidity:
            raise StaleError(
                f"UIDVALIDITY of {name.decode('ascii', 'replace')} is now {self.select_info.uidvalidity}, "
                f"not {uidvalidity}"
            )
        return self.select_info

    # -- fetching ---------------------------------------------------------

    def uid_fetch(self, uidset: str, items: str) -> list[tuple[int, dict[bytes, Any]]]:
        """``UID FETCH`` on the selected folder; returns (uid, items) pairs for responses with a UID.

        A response that cannot be parsed costs that message only: it is logged
        and, when its UID can still be read, returned as ``{UID: uid,
        UNPARSED: reason}`` (so a UID list still counts it as present); the
        others are returned as usual.
        """
        typ, dat = self._cmd(f"UID FETCH {items}", lambda i: i.uid("FETCH", uidset, items))
        if typ != "OK":
            self._check(f"UID FETCH {uidset} {items}", typ, dat)
        out = []
        bad: list[imapproto.FetchFailure] = []
        for seq, it in imapproto.parse_fetch((d for d in dat if d is not None), bad):
            uid = it.get(b"UID")
            if isinstance(uid, int):
                if 0 < uid <= imapproto.MAX_UID:
                    out.append((uid, it))
                else:
                    bad.append(imapproto.FetchFailure(seq, None, f"UID {uid} out of range"))
        for f in bad:
            log.warning("folder %r: unusable FETCH reply for %s: %s", self.selected,
                        f"UID {f.uid}" if f.uid is not None else f"message {f.seq}", f.error)
            if f.uid is not None:
                out.append((f.uid, {b"UID": f.uid, UNPARSED: f.error}))
        return out

    def fetch_uids(self, name: bytes, uidvalidity: int | None, uids: Sequence[int],
                   items: str) -> list[tuple[int, dict[bytes, Any]]]:
        """UID FETCH of these messages of *name*; one the answer leaves out is asked for
        again after a fresh SELECT (same UIDVALIDITY), because a mailbox selected on
        this connection can lag behind what another client just added (seen in CI).
        Only then is a message taken to be gone."""
        self.ensure_selected(name, uidvalidity)
        got = self.uid_fetch(imapproto.format_uid_set(uids), items)
        answered = {u for u, it in got if it.keys() - _PASSING_ITEMS}
        missing = [u for u in uids if u not in answered]
        if missing:
            info = self.select(name)
            if uidvalidity is not None and info.uidvalidity != uidvalidity:
                raise StaleError(f"UIDVALIDITY of {name.decode('ascii', 'replace')} changed")
            late = self.uid_fetch(imapproto.format_uid_set(missing), items)
            if any(it.keys() - _PASSING_ITEMS for _u, it in late):
                log.info("%s: UIDs %s answered only after a fresh SELECT",
                         name.decode("ascii", "replace"), imapproto.format_uid_set(missing))
            got += late
        unusable = {u: it[UNPARSED] for u, it in got if UNPARSED in it}
        if unusable:
            if uids and uids[0] in unusable and not any(u == uids[0] and UNPARSED not in it for u, it in got):
                # The message a reader waits for (the rest are read-ahead): its error, EIO.
                raise ProtocolError(f"{name.decode('ascii', 'replace')} UID {uids[0]}: "
                                    f"unusable reply: {unusable[uids[0]]}")
            got = [(u, it) for u, it in got if UNPARSED not in it]
        return got

    def uid_set(self) -> set[int]:
        """Every UID of the selected folder, by ``UID SEARCH`` (ESEARCH ranges where offered).

        This is the ground truth a sync compares against: counters (UIDNEXT,
        MESSAGES, HIGHESTMODSEQ) only say *whether* to look, never *what* is there.
        """
        if "ESEARCH" in self.capabilities:
            def do(i: imaplib.IMAP4) -> tuple[str, list]:
                i.untagged_responses.pop("ESEARCH", None)
                typ, dat = i._simple_command("UID", "SEARCH", "RETURN", "(ALL)", "ALL")
                return typ, [dat, i.untagged_responses.pop("ESEARCH", [])]

            typ, (dat, lines) = self._cmd("UID SEARCH RETURN (ALL)", do)
            if typ != "OK":
                self._check("UID SEARCH", typ, dat)
            out: set[int] = set()
            for line in lines:
                if not isinstance(line, bytes):
                    continue
                words = line.split()
                for k, w in enumerate(words[:-1]):
                    if w.upper() == b"ALL":
                        # The folder's own EXISTS sets the bound (the default cap is for
                        # sets a reply names in passing), within a hard 4 million.
                        exists = self.select_info.exists if self.select_info else 0
                        limit = min(max(imapproto.MAX_UID_SET, exists + 1024), 4_000_000)
                        out.update(imapproto.parse_uid_set(words[k + 1], limit))
            return out
        typ, dat = self._cmd("UID SEARCH ALL", lambda i: i.uid("SEARCH", "ALL"))
        if typ != "OK":
            self._check("UID SEARCH", typ, dat)
        found: set[int] = set()
        for d in dat:
            if isinstance(d, bytes):
                for x in d.split():
                    if not x.isdigit():
                        raise ProtocolError(f"bad SEARCH reply {d[:80]!r}")
                    found.add(int(x))
        return found

    def sync(self, name: bytes, known: Known | None, verify: bool = False) -> SyncResult:
        """Bring the caller's view of folder *name* up to date in one thread hop.

        Counters decide *whether* to look (one SELECT when nothing moved); what
        is there is decided by comparing UID sets: whenever UIDNEXT or EXISTS
        differ from what the caller knows, or *verify* asks for it, the
        folder's whole UID set is fetched (ESEARCH answers in ranges) and the
        metadata of every UID the caller lacks. So a missed push event, a lost
        APPENDUID or a stale local cache is repaired, never kept forever
        (GUIDE §5, issue 10). Flags come from QRESYNC/CONDSTORE's CHANGEDSINCE,
        and on *verify* without CONDSTORE from a full FLAGS fetch.
        """
        use_qresync = known is not None and known.highestmodseq and self.qresync
        info = self.select(name, (known.uidvalidity, known.highestmodseq) if use_qresync else None)
        if known is None or known.uidvalidity != info.uidvalidity:
            added = self.fetch_meta("1:*") if info.exists else []
            present = {m.uid for m in added}
            if info.exists != len(added):  # some metadata was unusable, or the folder moved meanwhile
                present = self.uid_set()
            return SyncResult(info, True, added, present)
        res = SyncResult(info, False, [])
        if use_qresync:
            res.removed = set(self.vanished)
            res.flags = dict(self.flag_changes)
            if self.vanished_unreadable:
                verify = True
        if verify or info.uidnext is None or info.uidnext != known.uidnext or info.exists != known.count:
            present = self.uid_set() if info.exists else set()
            res.present = present
            new = present - known.uids
            if new:
                res.added = self.fetch_meta(imapproto.format_uid_set(new))
        condstore = "CONDSTORE" in self.capabilities
        if (not use_qresync and condstore and known.highestmodseq and info.highestmodseq
                and info.highestmodseq != known.highestmodseq and info.exists):
            for uid, it in self.uid_fetch("1:*", f"(UID FLAGS) (CHANGEDSINCE {known.highestmodseq})"):
                fl = it.get(b"FLAGS")
                if isinstance(fl, list):
                    res.flags[uid] = tuple(_flag_str(f) for f in fl if f is not None)
        elif verify and (not condstore or self.vanished_unreadable) and info.exists:
            for uid, it in self.uid_fetch("1:*", "(UID FLAGS)"):
                fl = it.get(b"FLAGS")
                if isinstance(fl, list):
                    res.flags[uid] = tuple(_flag_str(f) for f in fl if f is not None)
        return res

    def status(self, name: bytes) -> Status:
        items = "MESSAGES UIDNEXT UIDVALIDITY" + (" HIGHESTMODSEQ" if "CONDSTORE" in self.capabilities else "")

        def do(i: imaplib.IMAP4) -> tuple[str, list]:
            i.untagged_responses.pop("STATUS", None)
            typ, dat = i._simple_command("STATUS", imapproto.quote(name), f"({items})")
            return typ, [dat, i.untagged_responses.pop("STATUS", [])]

        typ, (dat, lines) = self._cmd("STATUS", do)
        self._check(f"STATUS {name!r}", typ, dat)
        for st_name, st in parse_status(lines):
            if st_name == name:
                return st
        raise ProtocolError(f"no STATUS reply for {name!r}")

    def list_status(self) -> tuple[list[imapproto.ListEntry], dict[bytes, Status]]:
        """LIST with STATUS of every folder in one command (RFC 5819), or plain LIST."""
        if "LIST-STATUS" not in self.capabilities:
            return self.list_folders(), {}
        items = "MESSAGES UIDNEXT UIDVALIDITY" + (" HIGHESTMODSEQ" if "CONDSTORE" in self.capabilities else "")

        def do(i: imaplib.IMAP4) -> tuple[str, list]:
            for k in ("LIST", "STATUS"):
                i.untagged_responses.pop(k, None)
            special = " SPECIAL-USE" if "SPECIAL-USE" in self.capabilities else ""
            typ, dat = i._simple_command("LIST", '""', "*", "RETURN", f"(STATUS ({items}){special})")
            return typ, [dat, i.untagged_responses.pop("LIST", []), i.untagged_responses.pop("STATUS", [])]

        typ, (dat, lists, statuses) = self._cmd("LIST-STATUS", do)
        self._check("LIST RETURN (STATUS)", typ, dat)
        return imapproto.parse_list(d for d in lists if d is not None), dict(parse_status(statuses))

    def fetch_new_meta(self, name: bytes, uidvalidity: int, uid: int) -> list[RawMeta]:
        """Metadata of a message another connection just stored (APPENDUID, COPYUID).

        A connection that already has *name* selected may not see it yet (Dovecot
        shows a new message to a selected mailbox only once that session syncs), so
        if the answer leaves it out, select afresh and ask again.
        """
        self.ensure_selected(name, uidvalidity)
        metas = self.fetch_meta(str(uid))
        if any(m.uid == uid for m in metas):
            return metas
        info = self.select(name)
        if info.uidvalidity != uidvalidity:
            raise StaleError(f"UIDVALIDITY of {name.decode('ascii', 'replace')} changed")
        return self.fetch_meta(str(uid))

    def fetch_meta(self, uidset: str) -> list[RawMeta]:
        out: list[RawMeta] = []
        for uid, it in self.uid_fetch(uidset, META_ITEMS):
            try:
                if UNPARSED in it:
                    raise ProtocolError(it[UNPARSED])
                size = it[b"RFC822.SIZE"]
                if isinstance(size, bytes) and size.isdigit():  # beyond number64: an atom
                    raise ProtocolError(f"RFC822.SIZE {size[:40].decode()} is over the limit of "
                                        f"{imapproto.MAX_MESSAGE_SIZE}")
                if not isinstance(size, int):
                    raise ProtocolError("RFC822.SIZE is not a number")
                if size > imapproto.MAX_MESSAGE_SIZE:
                    raise ProtocolError(f"RFC822.SIZE {size} is over the limit of {imapproto.MAX_MESSAGE_SIZE}")
                date = imapproto.parse_internaldate(it[b"INTERNALDATE"])
                flags = it.get(b"FLAGS") or []
                subj = it.get(b"BODY[HEADER.FIELDS (SUBJECT)]")
                out.append(RawMeta(uid, size, date, tuple(_flag_str(f) for f in flags if f is not None),
                                   subj if isinstance(subj, bytes) else None))
            except (KeyError, ProtocolError) as e:
                # One bad message must not break its folder: skip it loudly.
                log.warning("folder %r: ignoring message UID %d with unusable metadata: %s",
                            self.selected, uid, e)
        return out

    def fetch_bodies(self, name: bytes, uidvalidity: int, uids: Sequence[int],
                     extra: str = "") -> dict[int, tuple[bytes, dict[bytes, Any]]]:
        """Whole ``BODY[]`` of several messages in one round trip, with *extra* items
        (e.g. BODYSTRUCTURE, so listing their ``.parts`` later costs no round trip)."""
        want = set(uids)
        out: dict[int, tuple[bytes, dict[bytes, Any]]] = {}
        items = f"(UID BODY.PEEK[]{' ' + extra if extra else ''})"
        for uid, it in self.fetch_uids(name, uidvalidity, uids, items):
            body = it.get(b"BODY[]")
            if uid in want and isinstance(body, bytes):
                out[uid] = (body, it)
        return out

    def fetch_range(self, name: bytes, uidvalidity: int, uid: int, offset: int, length: int) -> bytes:
        """``BODY.PEEK[]<offset.length>`` of one message."""
        for u, it in self.fetch_uids(name, uidvalidity, [uid], f"(UID BODY.PEEK[]<{offset}.{length}>)"):
            body = it.get(b"BODY[]")
            if u == uid and isinstance(body, bytes):
                return body
            if u == uid and body is None:
                return b""
        raise NotFound(f"message UID {uid} is gone from {name.decode('ascii', 'replace')}")

    # -- changing things (write-through: callers update the tree after these return) --

    def _run_with_code(self, what: str, code: str, fn: Callable[[imaplib.IMAP4], tuple[str, list]]
                       ) -> tuple[str, list, list[bytes]]:
        """Run a command and collect the response code *code* (COPYUID, APPENDUID) it produced."""

        def do(i: imaplib.IMAP4) -> tuple[str, list]:
            i.untagged_responses.pop(code, None)
            typ, dat = fn(i)
            return typ, [dat, [c for c in i.untagged_responses.pop(code, []) if isinstance(c, bytes)]]

        typ, (dat, codes) = self._cmd(what, do)
        return typ, dat, codes

    @staticmethod
    def _copyuid(codes: list[bytes], src_uid: int) -> tuple[int, int] | None:
        """(dest UIDVALIDITY, dest UID) for *src_uid* from COPYUID response codes."""
        for c in codes:
            parts = c.split()
            if len(parts) != 3:
                continue
            try:
                # Ranges, never expanded: 49 bytes of COPYUID could name millions of UIDs.
                dst_uid = imapproto.map_uid(parts[1], parts[2], src_uid)
                uidv = int(parts[0])
            except (ValueError, ProtocolError):
                continue
            if dst_uid is not None:
                return uidv, dst_uid
        return None

    def _uid_transfer(self, cmd: str, name: bytes, uidvalidity: int, uid: int, dest: bytes) -> tuple[int, int] | None:
        self.ensure_selected(name, uidvalidity)
        typ, dat, codes = self._run_with_code(
            f"UID {cmd}", "COPYUID", lambda i: i.uid(cmd, str(uid), imapproto.quote(dest)))
        if typ != "OK":
            self._check(f"UID {cmd} {uid} to {dest!r}", typ, dat)
        return self._copyuid(codes, uid)

    def uid_move(self, name: bytes, uidvalidity: int, uid: int, dest: bytes) -> tuple[int, int] | None:
        """``UID MOVE`` (RFC 6851); returns the copy's (UIDVALIDITY, UID) when the server says."""
        return self._uid_transfer("MOVE", name, uidvalidity, uid, dest)

    def uid_copy(self, name: bytes, uidvalidity: int, uid: int, dest: bytes) -> tuple[int, int] | None:
        """``UID COPY``; returns the copy's (UIDVALIDITY, UID) when the server says (COPYUID)."""
        return self._uid_transfer("COPY", name, uidvalidity, uid, dest)

    def uid_store(self, name: bytes, uidvalidity: int, uid: int, op: str, flags: Sequence[str]) -> None:
        """``UID STORE uid op (flags)``, e.g. op ``+FLAGS.SILENT``."""
        self.ensure_selected(name, uidvalidity)
        arg = "(" + " ".join(flags) + ")"
        typ, dat = self._cmd("UID STORE", lambda i: i.uid("STORE", str(uid), op, arg))
        if typ != "OK":
            self._check(f"UID STORE {uid} {op}", typ, dat)

    def uid_expunge(self, name: bytes, uidvalidity: int, uid: int) -> None:
        """``UID EXPUNGE`` of exactly *uid* (RFC 4315): never a bare EXPUNGE."""
        self.ensure_selected(name, uidvalidity)
        typ, dat = self._cmd("UID EXPUNGE", lambda i: i.uid("EXPUNGE", str(uid)))
        if typ != "OK":
            self._check(f"UID EXPUNGE {uid}", typ, dat)

    def move_message(self, src: bytes, uidvalidity: int, uid: int, dest: bytes) -> tuple[tuple[int, int] | None, bool]:
        """Move one message without ever losing it: ((dest UIDVALIDITY, UID) or None, moved?).

        UID MOVE where the server has MOVE; else UID COPY, and only once the
        copy is confirmed (COPYUID) STORE \\Deleted and UID EXPUNGE of exactly
        that UID. Without MOVE or UIDPLUS: Unsupported (a bare EXPUNGE could
        take other clients' \\Deleted mail). moved=False: the UID is gone.
        """
        caps = self.capabilities
        if "MOVE" in caps:
            if "UIDPLUS" not in caps and not self.uid_exists(src, uidvalidity, uid):
                return None, False  # without COPYUID a MOVE of nothing looks like success: look first
            res = self.uid_move(src, uidvalidity, uid, dest)
            if res is None and "UIDPLUS" in caps:
                return None, False  # the server moved nothing: the UID is gone
            return res, True
        if "UIDPLUS" not in caps:
            raise Unsupported("server lacks MOVE and UIDPLUS")
        res = self.uid_copy(src, uidvalidity, uid, dest)
        if res is None:
            return None, False  # nothing copied: the message is gone
        self.uid_store(src, uidvalidity, uid, "+FLAGS.SILENT", ["\\Deleted"])
        self.uid_expunge(src, uidvalidity, uid)
        return res, True

    def expunge_message(self, name: bytes, uidvalidity: int, uid: int) -> None:
        """\\Deleted + UID EXPUNGE of exactly *uid* (needs UIDPLUS; never a bare EXPUNGE)."""
        if "UIDPLUS" not in self.capabilities:
            raise Unsupported("server lacks UIDPLUS")
        self.uid_store(name, uidvalidity, uid, "+FLAGS.SILENT", ["\\Deleted"])
        self.uid_expunge(name, uidvalidity, uid)

    def search_header(self, name: bytes, field: str, value: str) -> list[int]:
        """UIDs in *name* whose header *field* contains *value* (finds an APPEND that may have landed)."""
        self.ensure_selected(name)
        typ, dat = self._cmd("UID SEARCH", lambda i: i.uid("SEARCH", "HEADER", field, imapproto.quote(value)))
        if typ != "OK":
            self._check("UID SEARCH", typ, dat)
        out: list[int] = []
        for d in dat:
            if isinstance(d, bytes):
                out.extend(int(x) for x in d.split() if x.isdigit())
        return out

    def uid_exists(self, name: bytes, uidvalidity: int, uid: int) -> bool:
        self.ensure_selected(name, uidvalidity)
        return any(u == uid for u, _ in self.uid_fetch(str(uid), "(UID)"))

    def append(self, dest: bytes, data: Any, flags: Sequence[str], date: int | None) -> tuple[int, int] | None:
        """APPEND; returns (UIDVALIDITY, UID) from APPENDUID when the server has UIDPLUS.

        *data* is bytes (imaplib turns every line end into CRLF), or a streamed
        literal: an object whose ``len()`` is the literal's size and whose
        ``chunks()`` yield exactly those bytes, already CRLF (``pending.WireLiteral``),
        so a big message never sits in memory. imaplib sends a literal with one
        ``self.send(literal)`` after the server's continuation; that one call is
        turned into a send per chunk.
        """
        fl = "(" + " ".join(flags) + ")" if flags else None
        when = imaplib.Time2Internaldate(date) if date is not None else None
        mailbox = imapproto.quote(dest).decode("ascii")
        if isinstance(data, (bytes, bytearray, memoryview)):
            def do(i: imaplib.IMAP4) -> tuple[str, list]:
                return i.append(mailbox, fl, when, bytes(data))
        else:
            def do(i: imaplib.IMAP4) -> tuple[str, list]:
                send = i.send
                utf8 = bool(getattr(i, "utf8_enabled", False))

                class Literal:  # what imaplib's _command sees: a size, then one send() of it
                    def __len__(self) -> int:
                        return len(data) + (len(b"UTF8 ()") if utf8 else 0)

                literal = Literal()

                def send_chunks(b: Any) -> None:
                    if b is not literal:
                        send(b)
                        return
                    if utf8:
                        send(b"UTF8 (")
                    for chunk in data.chunks():
                        send(chunk)
                    if utf8:
                        send(b")")

                i.send = send_chunks  # type: ignore[method-assign]
                try:
                    i.literal = literal
                    return i._simple_command("APPEND", mailbox, fl, when)
                finally:
                    i.literal = None
                    del i.send
        typ, dat, codes = self._run_with_code("APPEND", "APPENDUID", do)
        if typ != "OK":
            self._check(f"APPEND to {dest!r}", typ, dat)
        for c in codes:
            parts = c.split()
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                return int(parts[0]), int(parts[1])
        return None

    def noop(self) -> None:
        """A round trip that proves the connection (and the server) alive."""
        typ, dat = self._cmd("NOOP", lambda i: i.noop())
        self._check("NOOP", typ, dat)

    def deselect(self) -> None:
        """Leave the selected folder without expunging anything.

        Needed before DELETE/RENAME of it (Dovecot drops a connection whose
        selected folder vanished). Never CLOSE: it expunges \\Deleted mail.
        """
        if self.selected is None:
            return
        self.selected = None
        self.select_info = None
        if "UNSELECT" in self.capabilities:
            typ, dat = self._cmd("UNSELECT", lambda i: i._simple_command("UNSELECT"))
        else:
            typ, dat = self._cmd("EXAMINE INBOX", lambda i: i._simple_command("EXAMINE", "INBOX"))
        if self.imap is not None:
            self.imap.state = "AUTH" if typ == "OK" and "UNSELECT" in self.capabilities else self.imap.state

    def _mailbox_cmd(self, cmd: str, *names: bytes) -> None:
        args = [imapproto.quote(n) for n in names]
        if self.selected is not None and any(self.selected == n or self.selected.startswith(n + b"/")
                                             or self.selected.startswith(n + b".") for n in names):
            self.deselect()
        typ, dat = self._cmd(cmd, lambda i: i._simple_command(cmd, *args))
        if typ != "OK":
            msg = _text(dat[0] if dat else b"")
            if "[ALREADYEXISTS]" in msg:
                raise Exists(f"{cmd} {names[-1]!r}: {msg}")
            self._check(f"{cmd} {b' '.join(names)!r}", typ, dat)

    def create(self, name: bytes) -> None:
        self._mailbox_cmd("CREATE", name)

    def delete(self, name: bytes) -> None:
        self._mailbox_cmd("DELETE", name)

    def delete_if_empty(self, name: bytes) -> None:
        """DELETE *name* only if SELECT, just before on this connection, shows no message.

        IMAP has no "delete if empty"; checking on the same connection right
        before DELETE leaves one round trip for another client's delivery to
        slip in, instead of the time since the folder was last synced.
        """
        info = self.select(name)
        if info.exists:
            raise NotEmpty(f"{name.decode('ascii', 'replace')} holds {info.exists} messages")
        self.delete(name)

    def rename(self, old: bytes, new: bytes) -> None:
        self._mailbox_cmd("RENAME", old, new)

    def subscribe(self, name: bytes) -> None:
        self._mailbox_cmd("SUBSCRIBE", name)

    def unsubscribe(self, name: bytes) -> None:
        self._mailbox_cmd("UNSUBSCRIBE", name)

    def fetch_items(self, name: bytes, uidvalidity: int | None, uid: int, items: str) -> dict[bytes, Any]:
        """Arbitrary FETCH items of one message (FLAGS, BODYSTRUCTURE, ...)."""
        for u, it in self.fetch_uids(name, uidvalidity, [uid], items):
            if u == uid:
                return it
        raise NotFound(f"message UID {uid} is gone from {name.decode('ascii', 'replace')}")


def parse_status(lines: Iterable) -> Iterable[tuple[bytes, Status]]:
    """``* STATUS name (MESSAGES 3 UIDNEXT 9 ...)`` data → (name, Status); bad lines skipped."""
    chunks: list = []
    for d in lines:
        if d is None:
            continue
        chunks.append(d)
        if isinstance(d, tuple):
            continue  # a literal name: its tail follows
        try:
            vals = imapproto.parse(chunks)
        except ProtocolError:
            chunks = []
            continue
        chunks = []
        if len(vals) != 2 or not isinstance(vals[1], list):
            continue
        name = vals[0] if isinstance(vals[0], bytes) else str(vals[0]).encode()
        kv = vals[1]
        st = Status()
        for k, v in zip(kv[::2], kv[1::2]):
            if not isinstance(k, bytes) or not isinstance(v, int):
                continue
            key = k.upper()
            if key == b"MESSAGES":
                st.messages = v
            elif key == b"UIDNEXT":
                st.uidnext = v
            elif key == b"UIDVALIDITY":
                st.uidvalidity = v
            elif key == b"HIGHESTMODSEQ":
                st.highestmodseq = v
        yield name, st


class Pool:
    """A few IMAP connections shared by trio tasks, each used by one thread at a time.

    ``run(fn)`` calls ``fn(connection)`` in a worker thread. A connection that
    failed is discarded; new ones are opened on demand, but after a failure
    not before the backoff delay has passed (1 s doubling up to
    ``backoff_max``), so a vanished server costs one quick EIO per request,
    not a timeout each.
    """

    def __init__(self, account: Account, size: int = 4, backoff_max: float = 30.0,
                 connection_factory: Callable[[Account], Connection] = Connection) -> None:
        self.account = account
        self.size = max(1, size)
        self.backoff_max = backoff_max
        self._factory = connection_factory
        self._limiter = trio.CapacityLimiter(self.size)
        self._slots = trio.Semaphore(self.size)
        self._idle: list[Connection] = []
        self._delay = 0.0
        self._next_try = 0.0
        self._last_error: str | None = None
        self.capabilities: frozenset[str] = frozenset()
        self.online = False
        self.forced_offline = False  # -o offline: never connect
        self.greeting = ""  # the server's greeting (run_list tells Dovecot by it)

    def available(self) -> bool:
        """Would a request try the server now (online, or the backoff delay is over)?"""
        if self.forced_offline:
            return False
        return self.online or time.monotonic() >= self._next_try

    def mark_offline(self, why: str) -> None:
        """Start without the server (it was unreachable at mount time)."""
        self._failed(why)

    async def start(self) -> None:
        """Open the first connection; its errors (wrong password, bad TLS) reach the caller."""
        conn = self._factory(self.account)
        await trio.to_thread.run_sync(conn.open, limiter=self._limiter)
        self.capabilities = conn.capabilities
        self.greeting = conn.greeting
        self._idle.append(conn)
        self.online = True

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def _checkout(self, folder: bytes | None) -> Connection | None:
        if folder is not None:
            for i, c in enumerate(self._idle):
                if c.selected == folder:
                    return self._idle.pop(i)
        return self._idle.pop() if self._idle else None

    async def _connect(self) -> Connection:
        if self.forced_offline:
            raise ServerUnavailable("offline mode (-o offline)")
        now = time.monotonic()
        if now < self._next_try:
            raise ServerUnavailable(
                f"{self.account.label} unreachable ({self._last_error}); next attempt in {self._next_try - now:.0f} s"
            )
        conn = self._factory(self.account)
        try:
            await trio.to_thread.run_sync(conn.open, limiter=self._limiter)
        except ImapfsError as e:
            self._failed(str(e))
            raise ServerUnavailable(str(e)) from None
        if not self.online:
            log.info("reconnected to %s", self.account.label)
            self._last_error = None
        self.online = True
        self._delay = 0.0
        self.capabilities = conn.capabilities
        self.greeting = conn.greeting
        return conn

    def _failed(self, why: str) -> None:
        self._delay = min(self.backoff_max, max(1.0, self._delay * 2))
        self._next_try = time.monotonic() + self._delay
        if self.online or why != self._last_error:
            log.error("IMAP server %s unavailable: %s (retrying in %.0f s)", self.account.label, why, self._delay)
        self._last_error = why
        self.online = False

    async def run(self, fn: Callable[[Connection], T], folder: bytes | None = None,
                  retry: bool = True, new: bool = False) -> T:
        """Run ``fn(connection)`` in a worker thread.

        *retry*: when the connection turns out to be dead (server restart,
        idle timeout), run *fn* once more on a fresh connection. Only for
        commands that are safe to repeat; writes pass ``retry=False``.
        *new*: run it on a newly opened connection (it then replaces the
        oldest idle one); see ``run_list``.
        """
        async with self._slots:
            conn = None if new else self._checkout(folder)
            if conn is None and new and len(self._idle) >= self.size:
                old = self._idle.pop(0)
                await trio.to_thread.run_sync(old.close, limiter=self._limiter)
            fresh = conn is None
            if conn is None:
                conn = await self._connect()
            while True:
                try:
                    result = await trio.to_thread.run_sync(fn, conn, limiter=self._limiter)
                except BaseException as exc:
                    if not conn.broken:
                        self._idle.append(conn)
                        raise
                    await trio.to_thread.run_sync(conn.close, limiter=self._limiter)
                    if not retry or fresh or not isinstance(exc, ServerUnavailable):
                        raise  # an unusable reply (ProtocolError) would only come again
                    log.info("connection to %s was dead; retrying on a new one", self.account.label)
                    fresh = True
                    conn = await self._connect()
                    continue
                self._idle.append(conn)
                return result

    async def run_list(self, fn: Callable[[Connection], T]) -> T:
        """Run a LIST on a connection whose view of the folder list is current.

        Dovecot 2.3 (maildir, mailbox_list_index) keeps a per-process view of
        the folder list that a LIST in the same second as another client's
        CREATE/RENAME/DELETE can freeze: that connection's LIST then shows the
        old folders for as long as we measured (15 s+), while a new connection
        shows the truth. So against Dovecot every LIST runs on a new
        connection (one login; it then serves as a pooled one).
        """
        return await self.run(fn, new=self.fresh_lists)

    @property
    def fresh_lists(self) -> bool:
        return "dovecot" in self.greeting.lower()

    async def probe(self) -> bool:
        """Is the server there right now? A NOOP on a pooled connection (or a new one).

        Used when something outside the pool (the push connection's EOF) says
        the server may be gone, so ``user.imapfs.state`` does not lag behind
        reads that are already served from the cache (issue 10 item 9).
        """
        if self.forced_offline:
            return False
        if not self.available():
            return False
        try:
            await self.run(Connection.noop)
        except ImapfsError:
            return False
        return True

    async def deselect_everywhere(self, name: bytes) -> None:
        """Make every idle connection leave *name* (and folders under it) before DELETE/RENAME."""
        for c in list(self._idle):
            sel = c.selected
            if sel is not None and (sel == name or sel.startswith(name + b"/") or sel.startswith(name + b".")):
                self._idle.remove(c)
                try:
                    await trio.to_thread.run_sync(c.deselect, limiter=self._limiter)
                except ImapfsError:
                    pass
                if c.broken:
                    await trio.to_thread.run_sync(c.close, limiter=self._limiter)
                else:
                    self._idle.append(c)

    def forget_selected(self, prefix: bytes) -> None:
        """A folder was renamed or deleted: no idle connection may think it still has it selected."""
        for c in self._idle:
            if c.selected is not None and c.selected.startswith(prefix):
                c.selected = None
                c.select_info = None

    def changed_folders(self) -> set[bytes]:
        """Folders the server mentioned unasked since the last call (cheap hint)."""
        out: set[bytes] = set()
        for c in self._idle:
            out |= c.changed
            c.changed.clear()
        return out

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for c in idle:
            with trio.move_on_after(5) as scope:
                scope.shield = True
                await trio.to_thread.run_sync(c.close, limiter=self._limiter)
