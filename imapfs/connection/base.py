"""The core of one IMAP connection: its state, running a command, SELECT.

Every imaplib trap of a single command is handled here (docs/architecture.md,
"Why imaplib"): ``_cmd`` maps connection errors, BAD and undigestible replies
to domain errors and marks the connection broken; ``_take_unsolicited``
empties what imaplib piles up; ``_check`` turns NO into NotFound or
CommandFailed. The login (``login``), reads (``reads``) and writes
(``writes``) build on this class; ``Connection`` joins them.
"""

from __future__ import annotations

import imaplib
import logging
import ssl
from collections.abc import Callable
from typing import Any

from .. import imapproto
from ..errors import (
    CommandFailed,
    ImapfsError,
    NotFound,
    ProtocolError,
    ServerUnavailable,
    StaleError,
    TimedOut,
)
from ..records import Account, SelectInfo
from .wire import Reply, flag_str, reply_text

log = logging.getLogger(__name__)


class ConnectionBase:
    """State of one IMAP connection, and the command runner every role uses."""

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

    def _cmd(self, what: str, fn: Callable[[imaplib.IMAP4], Reply]) -> Reply:
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
            msg = reply_text(e.args[0] if e.args else e)
            if getattr(self.imap, "limit_hit", None):  # one of our bounds, not a lost connection
                msg = self.imap.limit_hit
                log.warning("%s: %s: %s; closing that connection", self.account.label, what, msg)
                raise ProtocolError(f"{what}: unusable reply from {self.account.label}: {msg}") from None
            raise ServerUnavailable(f"{what}: connection to {self.account.label} lost: {msg}") from None
        except TimeoutError:
            # Told apart from a lost connection: the pool backs off a folder whose
            # commands time out while the server answers (Pool.run), and does not retry.
            self.broken = True
            raise TimedOut(f"{what}: no answer from {self.account.label} "
                           f"within {self.account.timeout:g} s") from None
        except (OSError, EOFError, ssl.SSLError) as e:
            self.broken = True
            raise ServerUnavailable(
                f"{what}: connection to {self.account.label} lost: {e or type(e).__name__}") from None
        except imaplib.IMAP4.error as e:
            msg = reply_text(e.args[0] if e.args else e)
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
        assert self.imap is not None  # a command just ran on it
        ur = self.imap.untagged_responses
        for key in ("EXISTS", "EXPUNGE", "RECENT", "VANISHED", "FETCH"):
            if ur.pop(key, None) is not None and self.selected is not None:
                self.changed.add(self.selected)
        for key in ("OK", "NO", "BAD", "BYE", "UIDVALIDITY", "UIDNEXT", "HIGHESTMODSEQ",
                    "UNSEEN", "PERMANENTFLAGS", "FLAGS", "READ-WRITE", "READ-ONLY",
                    "COPYUID", "APPENDUID", "CAPABILITY", "ENABLED", "NOMODSEQ", "STATUS"):
            ur.pop(key, None)

    def _check(self, what: str, typ: str, dat: list[Any]) -> None:
        if typ == "OK":
            return
        msg = reply_text(dat[0] if dat else b"")
        if "[NONEXISTENT]" in msg or "doesn't exist" in msg.lower() or "does not exist" in msg.lower():
            raise NotFound(f"{what}: {msg}")
        raise CommandFailed(f"{what}: {typ} {msg}")

    # -- the selected folder ---------------------------------------------

    def select(self, name: bytes, qresync: tuple[int, int] | None = None) -> SelectInfo:
        """SELECT *name* (read-write: later writes share the connection).

        *qresync* = (uidvalidity, modseq) asks for ``VANISHED (EARLIER)`` and
        changed flags since then in the same round trip (RFC 7162 §3.2.5);
        they are left in ``self.vanished`` and ``self.flag_changes``.
        """
        self.selected = None
        self.select_info = None
        self.vanished = set()
        self.vanished_unreadable = False
        self.flag_changes = {}
        args = [imapproto.quote(name)]
        if qresync is not None and self.qresync:
            args.append(f"(QRESYNC ({qresync[0]} {qresync[1]}))".encode())
        elif "CONDSTORE" in self.capabilities:
            args.append(b"(CONDSTORE)")

        def do(i: imaplib.IMAP4) -> Reply:
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
        bad: list[imapproto.FetchFailure] = []
        for _seq, it in imapproto.parse_fetch((d for d in info.get("FETCH") or [] if d is not None), bad):
            if isinstance(it.get(b"UID"), int) and isinstance(it.get(b"FLAGS"), list):
                self.flag_changes[it[b"UID"]] = tuple(flag_str(f) for f in it[b"FLAGS"] if f is not None)
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
            typ, _ = self._cmd("UNSELECT", lambda i: i._simple_command("UNSELECT"))
        else:
            typ, _ = self._cmd("EXAMINE INBOX", lambda i: i._simple_command("EXAMINE", "INBOX"))
        if self.imap is not None:
            self.imap.state = "AUTH" if typ == "OK" and "UNSELECT" in self.capabilities else self.imap.state

