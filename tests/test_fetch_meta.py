"""Reads.fetch_meta: a metadata FETCH reply (imaplib's shapes) → RawMeta, one bad message at a time.

No server: ``_cmd`` hands back the reply data as imaplib would. The same
reply goes through the fast FETCH path and the general parser alone
(``imapproto.parse_fetch(fast=False)``), and both must give the same RawMeta
(issue 12, cold ``ls -l`` CPU).
"""
from __future__ import annotations

import imaplib
import socket
from typing import Any

import pytest

from imapfs import imapproto
from imapfs.connection import wire
from imapfs.connection.reads import Reads
from imapfs.records import Account, RawMeta

SUBJ = b"BODY[HEADER.FIELDS (SUBJECT)]"
DATE = b'"05-Mar-2024 08:07:02 +0000"'
EPOCH = 1709626022


def _resp(seq: int, flags: bytes = b"(\\Seen)", size: bytes = b"60", subject: bytes = b"Subject: hi\r\n\r\n",
          date: bytes = DATE) -> list[Any]:
    head = b"%d (UID %d FLAGS %s INTERNALDATE %s RFC822.SIZE %s %s {%d}" % (
        seq, seq, flags, date, size, SUBJ, len(subject))
    return [(head, subject), b")"]


class _Reply(Reads):
    """Reads whose only command answers with *data*."""

    def __init__(self, data: list[Any]) -> None:
        super().__init__(Account("localhost", 143, "u", lambda kind, fresh: "p", tls="off"))
        self.data = data
        self.selected = b"INBOX"

    def _cmd(self, what: str, fn: Any) -> tuple[str, list[Any]]:
        return "OK", list(self.data)


def _meta(uid: int, flags: tuple[str, ...] = ("\\Seen",), size: int = 60,
          subject: bytes | None = b"Subject: hi\r\n\r\n") -> RawMeta:
    return RawMeta(uid, size, EPOCH, flags, subject)


# name: (reply data, the RawMeta fetch_meta gives: the unusable messages are left out)
CASES = {
    "plain": (_resp(1) + _resp(2, b"()") + _resp(3, b"(\\Seen $Label1 007 NIL)"),
              [_meta(1), _meta(2, ()), _meta(3, ("\\Seen", "$Label1", "007", "NIL"))]),
    "8-bit keyword": (_resp(1, b"(caf\xc3\xa9 \xff)"), [_meta(1, ("café", "\ufffd"))]),
    "NIL subject": ([b"1 (UID 1 FLAGS () INTERNALDATE " + DATE + b" RFC822.SIZE 5 " + SUBJ + b" NIL)"],
                    [_meta(1, (), 5, None)]),
    "no subject item": ([b"1 (UID 1 FLAGS () INTERNALDATE " + DATE + b" RFC822.SIZE 5)"], [_meta(1, (), 5, None)]),
    "no FLAGS item": ([b"1 (UID 1 INTERNALDATE " + DATE + b" RFC822.SIZE 5)"], [_meta(1, (), 5, None)]),
    "FLAGS not a list (was a TypeError that failed the folder)": (
        [b"1 (UID 1 FLAGS 5 INTERNALDATE " + DATE + b" RFC822.SIZE 5)"] + _resp(2), [_meta(2)]),
    "FLAGS an atom": ([b"1 (UID 1 FLAGS abc INTERNALDATE " + DATE + b" RFC822.SIZE 5)"] + _resp(2), [_meta(2)]),
    "size over the limit": (_resp(1, size=b"%d" % (2**40 + 1)) + _resp(2), [_meta(2)]),
    "size of 21 digits": (_resp(1, size=b"1" * 21) + _resp(2), [_meta(2)]),
    "size not a number": (_resp(1, size=b"x") + _resp(2), [_meta(2)]),
    "bad date": (_resp(1, date=b'"yesterday"') + _resp(2), [_meta(2)]),
    "no date": ([b"1 (UID 1 FLAGS () RFC822.SIZE 5)"] + _resp(2), [_meta(2)]),
    "unparsable response": ([b"1 (UID 1 FLAGS (\\Seen"] + _resp(2), [_meta(2)]),
    "literal shorter than announced": ([(b"1 (UID 1 " + SUBJ + b" {5}", b"abc"), b")"] + _resp(2), [_meta(2)]),
}


@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "general parser"])
@pytest.mark.parametrize("data, want", list(CASES.values()), ids=list(CASES))
def test_fetch_meta(monkeypatch, data, want, fast):
    if not fast:
        general = imapproto.parse_fetch
        monkeypatch.setattr(imapproto, "parse_fetch", lambda d, bad=None: general(d, bad, fast=False))
    assert _Reply(data).fetch_meta("1:*") == want


def test_messages_with_the_same_flags_share_one_tuple():
    # Memory per message (issue 12): the tree keeps RawMeta.flags as Msg.flags.
    got = _Reply(_resp(1) + _resp(2) + _resp(3, b"()") + _resp(4, b"()")).fetch_meta("1:*")
    assert got[0].flags == ("\\Seen",) and got[0].flags is got[1].flags
    assert got[2].flags == () and got[2].flags is got[3].flags


def test_lines_are_read_without_imaplib_debug_log():
    # imaplib's _get_line formats every line into its debug log ('< %r'), which nothing
    # here prints: a sixth of imaplib's time in a metadata FETCH. The checks stay.
    a, b = socket.socketpair()
    a.settimeout(5)
    with a, b:
        r = wire.BoundedIMAP4.__new__(wire.BoundedIMAP4)
        r.sock, r.file = a, a.makefile("rb")
        r.debug, r._cmd_log, r._cmd_log_idx, r._cmd_log_len = 0, {}, 0, 10
        b.sendall(b"* 1 FETCH (UID 1)\r\n* 2 FETCH (UID 2)\r\nno end")
        b.shutdown(socket.SHUT_WR)
        assert r._get_line() == b"* 1 FETCH (UID 1)"
        assert r._get_line() == b"* 2 FETCH (UID 2)"
        assert r._cmd_log == {}
        with pytest.raises(imaplib.IMAP4.abort, match="unterminated line"):
            r._get_line()
        with pytest.raises(imaplib.IMAP4.abort, match="EOF"):
            r._get_line()
