"""Pure parsing of IMAP response data as :mod:`imaplib` hands it over.

imaplib gives untagged data as a list whose items are either ``bytes`` (a line
or the tail of one) or ``(head, literal)`` tuples where *head* ends with
``{N}`` (or ``~{N}`` for BINARY's literal8) and *literal* holds the N bytes.
This module turns that into Python values: parenthesised lists become
``list``, NIL becomes ``None``, numbers become ``int``, atoms and strings
become ``bytes``. It never trusts the server: malformed input raises
:class:`~imapfs.errors.ProtocolError`, never anything else.

The tokenizer is one compiled regex because a metadata FETCH of a large
folder yields tens of thousands of lines and a per-character loop was the cost.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Union

from .errors import ProtocolError

Data = list[Union[bytes, tuple[bytes, bytes]]]
Value = Any  # bytes | int | None | list[Value]

# One token per match. Groups: 1 '(' 2 ')' 3 quoted string 4 literal size at
# end of chunk 5 atom (which may carry a [section] with spaces and parens and
# a <partial> suffix, as in BODY[HEADER.FIELDS (SUBJECT)]<0>).
_TOKEN = re.compile(
    rb"""[ \t\r\n]*(?:
        (\()
      | (\))
      | "((?:[^"\\]|\\.)*)"
      | ~?\{(\d+)\+?\}[ \t\r\n]*\Z
      | ([^ \t\r\n()"{\[\]]*\[[^\]]*\](?:<[0-9.]+>)?|[^ \t\r\n()"{]+)
    )""",
    re.X | re.S,
)
_SPACE = re.compile(rb"[ \t\r\n]*\Z")
_DIGITS = re.compile(rb"\d+\Z")
_UNQUOTE = re.compile(rb"\\(.)", re.S)
_END = object()
_MAX_DEPTH = 200  # deeper lists raise ProtocolError instead of RecursionError (Dovecot sends up to 102)


class _Parser:
    """Walks imaplib's chunk list and yields one top-level value at a time."""

    def __init__(self, data: Iterable[Union[bytes, tuple[bytes, bytes]]], convert_atoms: bool = True) -> None:
        self._convert_atoms = convert_atoms  # False: numbers and NIL stay bytes (LIST names)
        self._chunks = iter(data)
        self._text = b""
        self._pos = 0
        self._literal: bytes | None = None

    def _next_chunk(self) -> bool:
        if self._literal is not None:
            raise ProtocolError("literal delivered but not announced")
        for chunk in self._chunks:
            if isinstance(chunk, tuple):
                if len(chunk) != 2 or not all(isinstance(c, (bytes, bytearray)) for c in chunk):
                    raise ProtocolError("malformed literal chunk from imaplib")
                self._text, self._literal = bytes(chunk[0]), bytes(chunk[1])
            elif isinstance(chunk, (bytes, bytearray)):
                self._text, self._literal = bytes(chunk), None
            elif chunk is None:
                continue
            else:
                raise ProtocolError("unexpected response chunk %r" % type(chunk))
            self._pos = 0
            return True
        return False

    def token(self) -> Any:
        """Return the next token: '(' ')' or a value; _END when data runs out."""
        while True:
            if self._pos >= len(self._text) or _SPACE.match(self._text, self._pos):
                if not self._next_chunk():
                    return _END
                continue
            m = _TOKEN.match(self._text, self._pos)
            if m is None:
                raise ProtocolError(
                    "cannot parse server reply near %r" % self._text[self._pos:self._pos + 40]
                )
            self._pos = m.end()
            if m.group(1) is not None:
                return "("
            if m.group(2) is not None:
                return ")"
            if m.group(3) is not None:
                s = m.group(3)
                return _UNQUOTE.sub(rb"\1", s) if b"\\" in s else s
            if m.group(4) is not None:
                lit = self._literal
                if lit is None or len(m.group(4)) > 20 or len(lit) != int(m.group(4)):
                    raise ProtocolError("literal announced but not delivered")
                self._literal = None
                self._pos = len(self._text)
                return lit
            atom = m.group(5)
            if not self._convert_atoms:
                return atom
            if _DIGITS.match(atom):
                if len(atom) > 20:  # beyond number64; int() refuses > 4300 digits
                    raise ProtocolError("number too long in server reply")
                return int(atom)
            if atom.upper() == b"NIL":
                return None
            return atom

    def value(self, tok: Any = _END, depth: int = 0) -> Value:
        if tok is _END:
            tok = self.token()
        if tok is _END:
            raise ProtocolError("reply ended early")
        if tok == ")":
            raise ProtocolError("unbalanced ')' in reply")
        if tok != "(":
            return tok
        if depth >= _MAX_DEPTH:
            raise ProtocolError("reply nests lists deeper than %d" % _MAX_DEPTH)
        out: list[Value] = []
        while True:
            t = self.token()
            if t == ")":
                return out
            if t is _END:
                raise ProtocolError("reply ended inside a list")
            out.append(self.value(t, depth + 1))

    def values(self) -> Iterator[Value]:
        while True:
            t = self.token()
            if t is _END:
                return
            yield self.value(t)


def parse(data: Iterable[Union[bytes, tuple[bytes, bytes]]]) -> list[Value]:
    """Parse every value in *data* (an imaplib untagged list) into a flat list."""
    return list(_Parser(data).values())


def parse_fetch(data: Iterable[Union[bytes, tuple[bytes, bytes]]]) -> Iterator[tuple[int, dict[bytes, Value]]]:
    """Yield ``(seq, {ITEM: value})`` for each ``* seq FETCH (...)`` in *data*.

    Item names are upper-cased bytes (``b"UID"``, ``b"BODY[]"``,
    ``b"BINARY.SIZE[2]"``); a partial fetch's origin ``<0>`` is dropped from
    the key. Responses we did not ask for (e.g. unsolicited FLAGS of another
    message) come through too: the caller filters on UID.
    """
    p = _Parser(data)
    while True:
        seq = p.token()
        if seq is _END:
            return
        if not isinstance(seq, int):
            raise ProtocolError("FETCH reply without a sequence number: %r" % (seq,))
        items = p.value()
        if not isinstance(items, list) or len(items) % 2:
            raise ProtocolError("FETCH reply for %d is not a list of pairs" % seq)
        out: dict[bytes, Value] = {}
        for i in range(0, len(items), 2):
            key = items[i]
            if not isinstance(key, bytes):
                raise ProtocolError("FETCH item name %r is not an atom" % (key,))
            key = key.upper()
            if key.endswith(b">") and b"<" in key:
                key = key[: key.rindex(b"<")]
            out[key] = items[i + 1]
        yield seq, out


@dataclass(frozen=True)
class ListEntry:
    """One LIST reply: flags are lower-cased (``b"\\\\noselect"``)."""

    flags: frozenset[bytes]
    delimiter: str | None
    name: bytes  # the server's (modified UTF-7) name, exactly as sent


def parse_list(data: Iterable[Union[bytes, tuple[bytes, bytes]]]) -> list[ListEntry]:
    """Parse LIST (or LSUB) untagged data; malformed entries are skipped."""
    out: list[ListEntry] = []
    for chunk in data:
        if chunk is None:
            continue
        try:
            # Names such as 007 or NIL arrive as atoms: keep their text.
            vals = list(_Parser([chunk], convert_atoms=False).values())
        except ProtocolError:
            continue
        if len(vals) < 3 or not isinstance(vals[0], list):
            continue
        flags = frozenset(f.lower() for f in vals[0] if isinstance(f, bytes))
        delim = vals[1]
        if isinstance(delim, bytes):
            delim_s: str | None = delim.decode("ascii", "replace")
            if len(delim_s) != 1:
                delim_s = None
        else:
            delim_s = None
        name = vals[2]
        if not isinstance(name, bytes) or not name:
            continue
        out.append(ListEntry(flags, delim_s, name))
    return out


_MONTHS = {m.encode(): i for i, m in enumerate(
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], 1)}
_IDATE = re.compile(rb" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\Z")


def parse_internaldate(value: Value) -> int:
    """INTERNALDATE ``"17-Jul-1996 02:44:25 -0700"`` → seconds since the epoch (UTC)."""
    if not isinstance(value, bytes):
        raise ProtocolError("INTERNALDATE is not a string: %r" % (value,))
    m = _IDATE.match(value)
    if not m or m.group(2).capitalize() not in _MONTHS:
        raise ProtocolError("bad INTERNALDATE %r" % value)
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    try:
        t = calendar.timegm((int(year), _MONTHS[mon.capitalize()], int(day), int(hh), int(mm), int(ss)))
    except ValueError:  # year 0000
        raise ProtocolError("bad INTERNALDATE %r" % value) from None
    off = (int(zh) * 60 + int(zm)) * 60
    return t - off if sign == b"+" else t + off


_CODE = re.compile(rb"\[([A-Z0-9.-]+)(?: ([^\]]*))?\]", re.I)


def response_code(line: bytes | None) -> tuple[bytes, bytes] | None:
    """``b"[COPYUID 5 1:3 7:9] Done"`` → ``(b"COPYUID", b"5 1:3 7:9")``."""
    if not line:
        return None
    m = _CODE.search(line)
    if not m:
        return None
    return m.group(1).upper(), (m.group(2) or b"")


_UID = re.compile(rb"\d{1,10}\Z")


def _uid(text: bytes) -> int:
    t = text.strip()
    if not _UID.match(t):
        raise ProtocolError("bad uid %r in uid set" % text[:40])
    return int(t)


def parse_uid_set(text: bytes) -> list[int]:
    """Expand a uid-set such as ``b"3:5,9"`` in order; ``*`` is refused."""
    out: list[int] = []
    for part in text.split(b","):
        if b":" in part:
            a, b = part.split(b":", 1)
            lo, hi = _uid(a), _uid(b)
            step = 1 if hi >= lo else -1
            if abs(hi - lo) > 10_000_000:
                raise ProtocolError("uid range too large: %r" % part)
            out.extend(range(lo, hi + step, step))
        else:
            out.append(_uid(part))
    return out


def format_uid_set(uids: Iterable[int]) -> str:
    """Compress UIDs into ranges: ``[1, 2, 3, 7]`` → ``"1:3,7"``."""
    s = sorted(set(uids))
    if not s:
        raise ValueError("empty uid set")
    parts: list[str] = []
    start = prev = s[0]
    for u in s[1:]:
        if u == prev + 1:
            prev = u
            continue
        parts.append(f"{start}:{prev}" if prev != start else str(start))
        start = prev = u
    parts.append(f"{start}:{prev}" if prev != start else str(start))
    return ",".join(parts)


def quote(s: str | bytes) -> bytes:
    """Quote a string for a command argument (no literal needed for our names)."""
    b = s.encode("utf-8") if isinstance(s, str) else s
    if b"\r" in b or b"\n" in b or b"\0" in b:
        raise ValueError("cannot quote CR, LF or NUL")
    return b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
