"""Opening a connection: connect, STARTTLS, log in, read the capabilities.

The secret never reaches a log or an exception's text (``_login``). SASL
PLAIN carries UTF-8; XOAUTH2 and OAUTHBEARER take an OAuth2 token.
"""

from __future__ import annotations

import imaplib
import json
import logging
import socket
import ssl

from ..errors import AuthError, ConnectError, ImapfsError, TLSError
from .base import ConnectionBase
from .wire import BoundedIMAP4, BoundedIMAP4_SSL, make_ssl_context, reply_text

log = logging.getLogger(__name__)

_OAUTH = ("OAUTHBEARER", "XOAUTH2")  # SASL mechanisms that take an OAuth2 access token


def _saslname(user: str) -> str:
    """RFC 5801 saslname: ``,`` and ``=`` escaped, for the GS2 header's ``a=``."""
    return user.replace("=", "=3D").replace(",", "=2C")


def _oauth_response(mech: str, user: str, token: str, host: str, port: int) -> bytes:
    """The client's first message for XOAUTH2 (Google/Microsoft) or OAUTHBEARER (RFC 7628)."""
    if mech == "XOAUTH2":
        return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
    return (f"n,a={_saslname(user)},\x01host={host}\x01port={port}\x01"
            f"auth=Bearer {token}\x01\x01").encode()


def _oauth_error(challenge: bytes) -> str:
    """The ``status`` of a server's OAuth error challenge (JSON), short and printable."""
    try:
        obj = json.loads(challenge.decode("utf-8", "replace"))
        status = obj.get("status") if isinstance(obj, dict) else None
    except ValueError:
        status = None
    text = str(status) if status is not None else challenge.decode("utf-8", "replace")
    return "".join(c for c in text if c.isprintable())[:80]


class Login(ConnectionBase):
    """``open``: connect, secure and log in (and ``ENABLE QRESYNC`` where offered)."""

    def open(self) -> None:
        """Connect, secure and log in; raises ConnectError/TLSError/AuthError."""
        a = self.account
        ctx = make_ssl_context(a.cafile) if a.tls != "off" else None
        try:
            if a.tls == "implicit":
                imap: imaplib.IMAP4 = BoundedIMAP4_SSL(a.host, a.port, ssl_context=ctx, timeout=a.timeout)
            else:
                imap = BoundedIMAP4(a.host, a.port, timeout=a.timeout)
        except ssl.SSLCertVerificationError as e:
            raise TLSError(f"TLS certificate of {a.host}:{a.port} refused: {e.verify_message or e.reason}") from None
        except ssl.SSLError as e:
            raise TLSError(f"TLS handshake with {a.host}:{a.port} failed: {e.reason or e}") from None
        except TimeoutError:
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
                typ, _ = self._cmd("ENABLE", lambda i: i._simple_command("ENABLE", "QRESYNC"))
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
            raise TLSError(
                f"STARTTLS with {a.host}:{a.port} failed: {reply_text(e.args[0] if e.args else e)}") from None

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
                plain = f"\0{a.user}\0{secret}".encode()
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
            user: str | bytes = imap._quote(a.user)
        elif "LITERAL+" in imap.capabilities:
            u = a.user.encode("utf-8")
            user = b"{%d+}\r\n" % len(u) + u
        else:
            return AuthError(f"cannot log in as {a.user} on {a.host}:{a.port}: a non-ASCII user name "
                             "needs AUTH=PLAIN or LITERAL+, and the server offers neither")
        # typeshed says str | None; imaplib sends bytes, as its own append() sets them.
        imap.literal = secret.encode("utf-8")  # type: ignore[assignment]
        typ, dat = imap._simple_command("LOGIN", user)
        if typ != "OK":
            raise imap.error(dat[-1] if dat else b"")
        imap.state = "AUTH"
        return None

    @staticmethod
    def _scrub(e: BaseException, secret: str) -> str:
        """An imaplib error's text with the secret (should a server echo it) blanked out."""
        text = reply_text(e.args[0] if e.args else e)
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
            assert self.imap is not None  # CAPABILITY just ran on it
            self.capabilities = frozenset(c.upper() for c in self.imap.capabilities)
