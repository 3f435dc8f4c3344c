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
from typing import Any

from .errors import ProtocolError

Data = list[bytes | tuple[bytes, bytes]]
Value = Any  # bytes | int | None | list[Value]

# Limits on what one server reply may make us build (docs/reliability.md, "Limits").
# Past any of them the reply is a ProtocolError: of that message where the
# response can be told apart (parse_fetch's *bad*), else of the whole reply.
MAX_DEPTH = 200  # nested lists; Dovecot 2.3 sends up to 102 (BODYSTRUCTURE of 100 nested multiparts)
MAX_VALUES = 1_000_000  # values (atoms, strings, numbers, lists) in one response
MAX_UID_SET = 1_000_000  # UIDs one uid-set may expand to (49 bytes could say 5 million)
MAX_MESSAGE_SIZE = 2**40  # RFC822.SIZE above this (1 TiB) is taken as a lie about that message
MAX_UID = 2**32 - 1  # RFC 3501 nz-number; tree inode numbers rely on it
_MAX_NUMBER_DIGITS = 20  # number64 has at most 20 digits; a longer digit run stays an atom

# One token per match; every byte of a chunk is matched by some alternative
# (leading whitespace is folded into the next token), so the token loop is
# one C-level scan that never backtracks far: linear in the chunk, whatever
# the bytes (the old match-per-token regex was quadratic on ``a[ `` repeated).
# Groups: 1 '(' or ')'; 2-4 a quoted string's opening quote, body and closing
# quote (empty: unterminated);
# 5 literal size (``{N}``, ``~{N}`` for literal8, ``{N+}``) at the end of the
# chunk; 6 an atom; 7 a brace that starts no literal (an error); none: the
# end (so trailing whitespace is one match, not a rescan from every byte).
# Atoms are lenient (RFC 3501 atom-chars plus ``[ ] % * \\`` and 8-bit bytes a
# broken server may send), so any flag another client can set reads back;
# FETCH item names with a section (``BODY[HEADER.FIELDS (SUBJECT)]``) are
# reassembled from their tokens by parse_fetch, where only item names can be.
# The quoted string's repeats are possessive (*+): a plain * keeps backtracking
# state for every escape (122 MB for a 1.2 MB string of \" found by fuzzing).
_TOKEN = re.compile(
    rb"""[ \t\r\n]*(?:
        ([()])
      | (")([^"\\]*+(?:\\.[^"\\]*+)*+)("?)
      | ~?\{(\d+)\+?\}[ \t\r\n]*\Z
      | ([^ \t\r\n()"{]+)
      | (\{)
      | \Z
    )""",
    re.X | re.S,
)
_SMALL_CHUNK = 16384  # tokenised eagerly (findall, fastest); larger chunks lazily (finditer, bounded memory)


def _unescape(body: bytes) -> bytes:
    """A quoted string's body without its escapes (``\\\\`` and ``\\"``; any other ``\\x`` is x).

    Split at escaped backslashes (left to right, as escapes are read), drop
    the backslash of each remaining escape: C speed, and no piece per escape
    (re.sub made one, several times slower and larger).
    """
    return b"\\".join([part.replace(b"\\", b"") for part in body.split(b"\\\\")])


_OPEN = "("
_CLOSE = ")"
_END = object()
_MAX_DEPTH = MAX_DEPTH  # old name
_RAW_ITEMS = frozenset({b"FLAGS", b"X-GM-LABELS"})  # keywords such as 007 or NIL stay as sent
_groups = re.Match.groups


class _Parser:
    """Walks imaplib's chunk list and yields one top-level value at a time."""

    def __init__(self, data: Iterable[bytes | tuple[bytes, bytes]], convert_atoms: bool = True) -> None:
        self._convert_atoms = convert_atoms  # False: numbers and NIL stay bytes (LIST names)
        self._chunks = iter(data)
        self._toks: Iterator[tuple[bytes, ...]] = iter(())
        self._literal: bytes | None = None
        self.values_left = MAX_VALUES

    def _next_chunk(self) -> bool:
        if self._literal is not None:
            raise ProtocolError("literal delivered but not announced")
        for chunk in self._chunks:
            if isinstance(chunk, tuple):
                if len(chunk) != 2 or not all(isinstance(c, (bytes, bytearray)) for c in chunk):
                    raise ProtocolError("malformed literal chunk from imaplib")
                text, self._literal = bytes(chunk[0]), bytes(chunk[1])
            elif isinstance(chunk, (bytes, bytearray)):
                text, self._literal = bytes(chunk), None
            elif chunk is None:
                continue
            else:
                raise ProtocolError("unexpected response chunk %r" % type(chunk))
            if len(text) <= _SMALL_CHUNK:
                self._toks = iter(_TOKEN.findall(text))
            else:
                self._toks = map(_groups, _TOKEN.finditer(text))
            return True
        return False

    def token(self, convert: bool | None = None) -> Any:
        """Return the next token: _OPEN, _CLOSE or a value; _END when data runs out."""
        while True:
            tok = next(self._toks, None)
            if tok is None:
                if not self._next_chunk():
                    return _END
                continue
            paren, q_open, q_body, q_close, lit, atom, brace = tok
            if atom:
                if not (self._convert_atoms if convert is None else convert):
                    return atom
                if atom.isdigit() and len(atom) <= _MAX_NUMBER_DIGITS:
                    return int(atom)
                if len(atom) == 3 and atom.upper() == b"NIL":
                    return None
                return atom
            if paren:
                return _OPEN if paren == b"(" else _CLOSE
            if q_open:
                if not q_close:
                    raise ProtocolError("unterminated quoted string in server reply")
                return _unescape(q_body) if b"\\" in q_body else q_body
            if lit:
                literal = self._literal
                if literal is None or len(lit) > 20 or len(literal) != int(lit):
                    raise ProtocolError("literal announced but not delivered")
                self._literal = None
                return literal
            if brace:
                raise ProtocolError("'{' that starts no literal in server reply")

    def value(self, tok: Any = _END, convert: bool | None = None, depth: int = 0) -> Value:
        """The value that starts with *tok* (read if not given); lists are built without recursion."""
        if tok is _END:
            tok = self.token(convert)
        if tok is _END:
            raise ProtocolError("reply ended early")
        if tok is _CLOSE:
            raise ProtocolError("unbalanced ')' in reply")
        self.values_left -= 1
        if tok is not _OPEN:
            return tok
        stack: list[list[Value]] = []
        cur: list[Value] = []
        while True:
            t = self.token(convert)
            if t is _CLOSE:
                if not stack:
                    return cur
                cur = stack.pop()
                continue
            if t is _END:
                raise ProtocolError("reply ended inside a list")
            self.values_left -= 1
            if self.values_left < 0:
                raise ProtocolError("reply holds more than %d values" % MAX_VALUES)
            if t is _OPEN:
                if depth + len(stack) + 1 >= MAX_DEPTH:
                    raise ProtocolError("reply nests lists deeper than %d" % MAX_DEPTH)
                new: list[Value] = []
                cur.append(new)
                stack.append(cur)
                cur = new
            else:
                cur.append(t)

    def values(self) -> Iterator[Value]:
        while True:
            t = self.token()
            if t is _END:
                return
            yield self.value(t)
            if self.values_left < 0:
                raise ProtocolError("reply holds more than %d values" % MAX_VALUES)

    def _section(self, key: bytes) -> bytes:
        """The rest of an item name whose section holds spaces (``BODY[HEADER.FIELDS (SUBJECT FROM)]``).

        It comes as several tokens; they are put back together in the
        canonical spacing (what we asked for, and what servers echo).
        """
        parts = [key]
        prev: Any = key
        while True:
            t = self.token(False)
            self.values_left -= 1
            if t is _END or self.values_left < 0 or len(parts) > 1000:
                raise ProtocolError("FETCH item section not closed: %r" % b"".join(parts)[:60])
            if t is _OPEN:
                parts.append(b"(" if prev is _OPEN else b" (")
            elif t is _CLOSE:
                parts.append(b")")
            elif t.startswith(b"]"):
                parts.append(t)
                return b"".join(parts)
            else:
                parts.append(t if prev is _OPEN else b" " + t)
            prev = t

    def fetch_items(self) -> dict[bytes, Value]:
        """The ``(NAME value NAME value ...)`` list of one FETCH response.

        Item names are upper-cased, a partial fetch's ``<origin>`` dropped.
        """
        if self.token() is not _OPEN:
            raise ProtocolError("FETCH reply is not a list of pairs")
        self.values_left = MAX_VALUES
        out: dict[bytes, Value] = {}
        token = self.token
        while True:
            key = token(False)
            if key is _CLOSE:
                return out
            if type(key) is not bytes or key.isdigit() or (len(key) == 3 and key.upper() == b"NIL"):
                if key is _END:
                    raise ProtocolError("reply ended inside a FETCH list")
                raise ProtocolError("FETCH item name %r is not an atom" % ("(" if key is _OPEN else key,))
            if b"[" in key:
                if b"]" not in key[key.index(b"["):]:
                    key = self._section(key)
                if key.endswith(b">") and b"<" in key:
                    key = key[: key.rindex(b"<")]
            key = key.upper()
            convert = key not in _RAW_ITEMS
            tok = token(convert)
            self.values_left -= 1
            if tok is _OPEN:
                out[key] = self.value(tok, convert, 1)
            elif tok is _CLOSE or tok is _END:
                raise ProtocolError("FETCH reply is not a list of pairs")
            else:
                out[key] = tok
                self.values_left -= 1
            if self.values_left < 0:
                raise ProtocolError("reply holds more than %d values" % MAX_VALUES)


def parse(data: Iterable[bytes | tuple[bytes, bytes]]) -> list[Value]:
    """Parse every value in *data* (an imaplib untagged list) into a flat list."""
    return list(_Parser(data).values())


@dataclass(frozen=True)
class FetchFailure:
    """A FETCH response that could not be parsed: what could still be read of it."""

    seq: int | None
    uid: int | None
    error: str


_SALVAGE_SEQ = re.compile(rb"[ \t]*(\d{1,10}) ")
_SALVAGE_UID = re.compile(rb"[ (]UID (\d{1,10})[ )]", re.I)


def _salvage(group: list[Any], error: ProtocolError) -> FetchFailure:
    """Sequence number and UID of a response that failed to parse, if its head shows them."""
    head = group[0][0] if isinstance(group[0], tuple) else group[0]
    seq = uid = None
    if isinstance(head, (bytes, bytearray)):
        head = bytes(head[:4096])
        m = _SALVAGE_SEQ.match(head)
        if m:
            seq = int(m.group(1))
            u = _SALVAGE_UID.search(head)
            if u and 0 < int(u.group(1)) <= MAX_UID:
                uid = int(u.group(1))
    return FetchFailure(seq, uid, str(error))


def _responses(data: Iterable[Any]) -> Iterator[list[Any]]:
    """Split imaplib's flat list into responses: literals (tuples) then the line that ends it.

    imaplib appends a response's text up to each literal as ``(text, literal)``
    and the rest of the line after the last literal as bytes, so a bytes item
    (or anything else) closes a response.
    """
    group: list[Any] = []
    for chunk in data:
        if chunk is None:
            continue
        group.append(chunk)
        if not isinstance(chunk, tuple):
            yield group
            group = []
    if group:
        yield group


# The fast path of parse_fetch: the items a metadata or flags FETCH asks for, in the plain
# shape servers send them (single spaces, atoms, quoted strings without escapes, at most one
# literal, ending the head). One ``findall`` per chunk; it is used only when its matches
# tile the items text exactly (every byte matched), else the general parser reads that
# response. So it accepts a strict subset of what the general parser accepts, and gives
# the same values (tests/test_imapproto.py compares the two): whatever it does not take
# costs what it cost before, limits and errors included (issue 12: a third of the CPU of
# the general parser for a metadata FETCH).
# Groups: 1 the whole item with its separator ('(' for the first, ' ' after); 2-3 UID or
# RFC822.SIZE and its number; 4-5 FLAGS and its text (atoms and single spaces, checked in
# _fast_items); 6-7 INTERNALDATE and its string; 8-9 MODSEQ and its number; 10 the
# subject section; 11-12 a quoted string (the quote, its body); 13 NIL; 14 a literal's
# size (only at the end of the head).
_FAST_ITEM = re.compile(
    rb"""([( ](?:
        (UID|RFC822\.SIZE)\ (\d{1,20})
      | (FLAGS)\ \(([^\t\r\n()"{]*)\)
      | (INTERNALDATE)\ "([^"\\]*)"
      | (MODSEQ)\ \((\d{1,20})\)
      | (BODY\[HEADER\.FIELDS\ \(SUBJECT\)\])\ (?:(")([^"\\]*)"|(NIL)|\{(\d{1,20})\}\Z)
    ))""",
    re.X,
)
_FAST_SEQ = re.compile(rb"\d{1,20}(?= \()")
# The answer to connection.reads.META_ITEMS in the order asked (Dovecot's, and most
# servers'): one fullmatch instead of the item loop, the same values (issue 12).
_FAST_META = re.compile(
    rb'(\d{1,20}) \(UID (\d{1,20}) FLAGS \(([^\t\r\n()"{]*)\) INTERNALDATE "([^"\\]*)" '
    rb"RFC822\.SIZE (\d{1,20}) BODY\[HEADER\.FIELDS \(SUBJECT\)\] \{(\d{1,20})\}")
_SUBJECT_ITEM = b"BODY[HEADER.FIELDS (SUBJECT)]"


def _keywords(text: bytes) -> list[bytes] | None:
    """A FLAGS list's text as its keywords, if it is atoms and single spaces; else None.

    Checked here, not in the regex: a repeated group there keeps backtracking
    state per keyword (500 MB for 6 MB of them). Many keywords go to the general
    parser, which counts them against MAX_VALUES.
    """
    if not text:
        return []
    if text[0] == 0x20 or text[-1] == 0x20 or b"  " in text or text.count(b" ") >= MAX_VALUES // 100:
        return None
    return text.split(b" ")


def _fast_items(text: bytes, start: int, end: int, out: dict[bytes, Value], literal: bytes | None) -> int:
    """Items of *text*[start:end] into *out*; the literal used (1), none (0), or -1 for "not this path"."""
    found = _FAST_ITEM.findall(text, start, end)
    used = 0
    covered = 0
    for whole, num_key, num, fl_key, fl, date_key, date, ms_key, ms, subj_key, quote, qbody, nil, lit in found:
        # The first item follows the '(' that opens the list, each other one a single space.
        if (whole[0] == 0x28) != (covered == 0 and text[start] == 0x28):
            return -1
        covered += len(whole)
        if num_key:
            out[num_key] = int(num)
        elif fl_key:
            keywords = _keywords(fl)
            if keywords is None:
                return -1
            out[b"FLAGS"] = keywords
        elif date_key:
            out[b"INTERNALDATE"] = date
        elif ms_key:
            out[b"MODSEQ"] = [int(ms)]
        elif subj_key:
            if quote:
                out[subj_key] = qbody
            elif nil:
                out[subj_key] = None
            else:
                if literal is None or used or len(literal) != int(lit):
                    return -1
                out[subj_key] = literal
                used = 1
        else:  # pragma: no cover - the regex has no other alternative
            return -1
    if covered != end - start:
        return -1  # some byte was not matched: not this path
    return used


def _fast_fetch(group: list[Any]) -> tuple[int, dict[bytes, Value]] | None:
    """One FETCH response by the fast path, or None when it is not in the shape it reads."""
    if len(group) == 1:
        line = group[0]
        if type(line) is not bytes or not line.endswith(b")"):
            return None
        m = _FAST_SEQ.match(line)
        if m is None:
            return None
        out: dict[bytes, Value] = {}
        start = m.end() + 1
        if start == len(line) - 1:
            return None  # "()": the general parser says what an empty list is
        if _fast_items(line, start, len(line) - 1, out, None) != 0:
            return None
        return int(m.group()), out
    if len(group) != 2:
        return None
    first, tail = group
    if type(first) is not tuple or len(first) != 2 or type(tail) is not bytes or not tail.endswith(b")"):
        return None
    head, literal = first
    if type(head) is not bytes or type(literal) is not bytes:
        return None
    mm = _FAST_META.fullmatch(head)
    if mm is not None and len(tail) == 1:
        seq, uid, fl, date, size, lit = mm.groups()
        keywords = _keywords(fl)
        if len(literal) == int(lit) and keywords is not None:
            return int(seq), {b"UID": int(uid), b"FLAGS": keywords, b"INTERNALDATE": date,
                              b"RFC822.SIZE": int(size), _SUBJECT_ITEM: literal}
    m = _FAST_SEQ.match(head)
    if m is None:
        return None
    out = {}
    if _fast_items(head, m.end() + 1, len(head), out, literal) != 1:
        return None
    if len(tail) > 1 and (tail[0] != 0x20 or _fast_items(tail, 0, len(tail) - 1, out, None) != 0):
        return None
    return int(m.group()), out


def parse_fetch(data: Iterable[bytes | tuple[bytes, bytes]],
                bad: list[FetchFailure] | None = None, *,
                fast: bool = True) -> Iterator[tuple[int, dict[bytes, Value]]]:
    """Yield ``(seq, {ITEM: value})`` for each ``* seq FETCH (...)`` in *data*.

    Item names are upper-cased bytes (``b"UID"``, ``b"BODY[]"``,
    ``b"BINARY.SIZE[2]"``); a partial fetch's origin ``<0>`` is dropped from
    the key. FLAGS (and X-GM-LABELS) keep every keyword as sent (``b"007"``,
    ``b"NIL"``, ``b"foo[bar"``). Responses we did not ask for (e.g. unsolicited
    FLAGS of another message) come through too: the caller filters on UID.

    A response that cannot be parsed raises ProtocolError, unless *bad* is
    given: then it is recorded there (with the sequence number and UID its
    head shows, if any) and the next response is parsed, so one bad message
    costs that message, not the whole reply.

    *fast* (the default) reads the common shapes by ``_fast_fetch`` first;
    ``fast=False`` is the general parser alone (tests compare the two).
    """
    for group in _responses(data):
        if fast:
            got = _fast_fetch(group)
            if got is not None:
                yield got
                continue
        p = _Parser(group)
        done = 0
        try:
            while True:
                seq = p.token()
                if seq is _END:
                    break
                if not isinstance(seq, int):
                    raise ProtocolError("FETCH reply without a sequence number: %r" % (seq,))
                yield seq, p.fetch_items()
                done += 1
        except ProtocolError as e:
            if bad is None:
                raise
            # A second response on the same line (never from imaplib) has no head of its own.
            bad.append(_salvage(group, e) if not done else FetchFailure(None, None, str(e)))


@dataclass(frozen=True)
class ListEntry:
    """One LIST reply: flags are lower-cased (``b"\\\\noselect"``)."""

    flags: frozenset[bytes]
    delimiter: str | None
    name: bytes  # the server's (modified UTF-7) name, exactly as sent


def parse_list(data: Iterable[bytes | tuple[bytes, bytes]]) -> list[ListEntry]:
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
            text = delim.decode("ascii", "replace")
            delim_s: str | None = text if len(text) == 1 else None
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
    if not _UID.match(t) or not 0 < int(t) <= MAX_UID:  # nz-number
        raise ProtocolError("bad uid %r in uid set" % text[:40])
    return int(t)


def parse_uid_ranges(text: bytes) -> list[tuple[int, int]]:
    """A uid-set as ``(first, last)`` pairs in order (``b"5:3,9"`` → ``[(5, 3), (9, 9)]``).

    Its size follows the text, not the UIDs it names, so a caller that only
    tests membership or maps one UID (COPYUID) never expands a huge range.
    """
    out: list[tuple[int, int]] = []
    for part in text.split(b","):
        if b":" in part:
            a, b = part.split(b":", 1)
            out.append((_uid(a), _uid(b)))
        else:
            u = _uid(part)
            out.append((u, u))
    return out


def uid_set_size(ranges: Iterable[tuple[int, int]]) -> int:
    """How many UIDs *ranges* names (duplicates counted)."""
    return sum(abs(b - a) + 1 for a, b in ranges)


def parse_uid_set(text: bytes, limit: int = MAX_UID_SET) -> list[int]:
    """Expand a uid-set such as ``b"3:5,9"`` in order; ``*`` is refused.

    More than *limit* UIDs in all is a ProtocolError: the text is small, the
    list it names need not be (``1:4294967295``).
    """
    ranges = parse_uid_ranges(text)
    if uid_set_size(ranges) > limit:
        raise ProtocolError("uid set too large: %r names more than %d UIDs" % (text[:40], limit))
    out: list[int] = []
    for lo, hi in ranges:
        out.extend(range(lo, hi + 1) if hi >= lo else range(lo, hi - 1, -1))
    return out


def map_uid(src: bytes, dst: bytes, uid: int) -> int | None:
    """COPYUID's answer for one UID: where *uid* of the source set *src* went in *dst*.

    Walks the ranges in step without expanding them; None if *uid* is not in
    *src* or the sets differ in size (ProtocolError if either is malformed).
    """
    s, d = parse_uid_ranges(src), parse_uid_ranges(dst)
    if uid_set_size(s) != uid_set_size(d):
        return None
    index = 0
    for lo, hi in s:
        step = 1 if hi >= lo else -1
        if min(lo, hi) <= uid <= max(lo, hi):
            index += (uid - lo) * step
            break
        index += abs(hi - lo) + 1
    else:
        return None
    for lo, hi in d:
        n = abs(hi - lo) + 1
        if index < n:
            return lo + index if hi >= lo else lo - index
        index -= n
    return None


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
