"""Fuzzing the pure modules (issue 11, "Fuzzing in CI"): imapproto, mime, transfer, charset, codec, naming.

Every property asserts, for every input hypothesis makes up:

* no exception leaves the function but the ones its module documents
  (``ProtocolError`` from imapproto, ``MimeError`` from mime, ``DecodeError`` from transfer,
  ``ValueError``/``UnicodeEncodeError`` where codec and naming say so);
* a time bound: no input under 1 MB takes over PER_INPUT_SECONDS (1 s) of
  CPU time (``time.thread_time``, so a loaded machine does not make it
  flaky; an input over it once is run again, and fails if it is over it
  again, since a virtual machine's stolen CPU time is charged too). The code is linear; typical inputs take well under 10 ms, so the
  bound is generous and only catches the quadratic (or worse) cases like the
  old FETCH tokenizer;
* a memory bound: what the call allocates at its peak (tracemalloc, on one
  input in TRACE_EVERY, as tracing slows allocation down 10-25 times) stays
  under MEM_BASE (64 MB) + MEM_FACTOR (64) x the input size, which catches
  amplification such as 49 bytes of uid-set that expand to 5 million integers;
* and, where there is one, the round trip or differential property (a FETCH
  reply built from known values parses back to them; a MIME message built
  together with its BODYSTRUCTURE is listed, cut and decoded back to the
  bytes put in it; names map back to what they came from).

Inputs are small, plus "amplified" ones: a random fragment repeated up to
AMPLIFY_BYTES (256 KiB here, 1 MiB - 1 under ``scripts/fuzz``), which is where
superlinear behaviour shows.

Profiles: ``fuzz-ci`` (this file in the normal suite: about a minute or
less) and ``fuzz-long`` (``scripts/fuzz --minutes N``: the same properties in
rounds until the time is up; it prints inputs tried, time and crashes). The
long profile is chosen with IMAPFS_FUZZ=long in the environment.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import functools
import os
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imapfs import codec, imapproto, mime, naming, transfer
from imapfs.charset import decode_words, to_utf8
from imapfs.errors import ProtocolError

LONG = os.environ.get("IMAPFS_FUZZ") == "long"
PER_INPUT_SECONDS = 1.0
MAX_INPUT = 1024 * 1024  # the time bound holds for every input under 1 MB
AMPLIFY_BYTES = MAX_INPUT - 1 if LONG else 256 * 1024
# What one input may cost whatever its size: a uid-set may name MAX_UID_SET UIDs
# (a list of a million ints is about 40 MB), a BODYSTRUCTURE is cut into parts, ...
MEM_BASE = 64 * 1024 * 1024
MEM_FACTOR = 64
TRACE_EVERY = 4

settings.register_profile(
    "fuzz-ci", max_examples=int(os.environ.get("IMAPFS_FUZZ_EXAMPLES", "800")), deadline=None,
    suppress_health_check=list(HealthCheck), print_blob=True)
settings.register_profile(
    "fuzz-long", max_examples=200, deadline=None, suppress_health_check=list(HealthCheck),
    print_blob=True, database=None)
PROFILE = "fuzz-long" if LONG else "fuzz-ci"


class Stats:
    inputs = 0
    slowest = 0.0
    slowest_where = ""
    peak = 0
    peak_where = ""


@contextmanager
def bounded(size: int, what: str) -> Iterator[None]:
    """Time and memory bounds for one input of *size* bytes (see the module docstring).

    tracemalloc makes allocation-heavy code 10-25 times slower, so one input
    in TRACE_EVERY is traced for its memory and the others are timed.
    """
    Stats.inputs += 1
    traced = Stats.inputs % TRACE_EVERY == 0 and not tracemalloc.is_tracing()
    if traced:
        tracemalloc.start()
    t = time.thread_time()
    try:
        yield
    finally:
        took = time.thread_time() - t
        peak = 0
        if traced:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    if traced:
        if peak > Stats.peak:
            Stats.peak, Stats.peak_where = peak, f"{what} ({size} bytes)"
        assert peak < MEM_BASE + MEM_FACTOR * size, f"{what}: {peak >> 20} MB at peak for {size} bytes"
        return
    if took > Stats.slowest:
        Stats.slowest, Stats.slowest_where = took, f"{what} ({size} bytes)"
    if size < MAX_INPUT and took >= PER_INPUT_SECONDS:
        raise _TooSlow(f"{what}: {took:.2f} s of CPU for {size} bytes")


class _TooSlow(AssertionError):
    """Over the time bound once: the property runs again, and fails if it is over it again.

    CPU time is robust against other processes, but not against a hypervisor
    stealing the virtual CPU: a superlinear cost is slow every time, steal is not.
    """


PROPERTIES: list[tuple[str, Callable[..., None], tuple[Any, ...]]] = []


def fuzz(*strategies: Any) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a property (for scripts/fuzz) and return it as a test under the active profile."""
    def deco(body: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(body)
        def run(*args: Any, **kwargs: Any) -> None:
            try:
                body(*args, **kwargs)
            except _TooSlow:
                body(*args, **kwargs)  # the same input (all of it pure): too slow again fails
        PROPERTIES.append((body.__name__, run, strategies))
        return settings(settings.get_profile(PROFILE))(given(*strategies)(run))
    return deco


def _amplified(fragment: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A fragment, or the fragment repeated up to AMPLIFY_BYTES (where quadratic costs show)."""
    def grow(f: bytes, n: int) -> bytes:
        return (f * max(1, n // max(1, len(f))))[:AMPLIFY_BYTES] if f else f
    # Mostly small inputs (they find most bugs, fast); one in four grown.
    return st.one_of(fragment, fragment, fragment, st.builds(grow, fragment, st.integers(1, AMPLIFY_BYTES)))


def _size(data: Any) -> int:
    if isinstance(data, (bytes, bytearray, str)):
        return len(data)
    if isinstance(data, (list, tuple)):
        return sum(_size(d) for d in data) + len(data)
    return 8


# ================================================================= imapproto

_IMAP_TOKENS = st.sampled_from([
    b"(", b")", b" ", b"\r\n", b'"', b"\\", b"{", b"}", b"~", b"+", b"[", b"]", b"<", b">", b".", b"%", b"*",
    b"1", b"0", b"42", b"4294967296", b"18446744073709551616", b"9" * 30, b"NIL", b"UID", b"FLAGS",
    b"RFC822.SIZE", b"BODY[]", b"BODY[HEADER.FIELDS (SUBJECT)]", b"BODY[HEADER.FIELDS", b"<0>", b"{3}",
    b"~{3}", b"{0}", b"{3+}", b"\\Seen", b"foo[bar", b"a[ ", b"\x00", b"\xff", b"\xc3\xa9", b"a", b"()",
    b'"a\\"b"', b"BODYSTRUCTURE", b'("text" "plain" NIL NIL NIL "7bit" 3 1)',
])
_IMAP_BYTES = st.one_of(st.lists(_IMAP_TOKENS, max_size=24).map(b"".join), st.binary(max_size=48))
_IMAP_BIG = _amplified(_IMAP_BYTES)


@st.composite
def _chunks(draw: st.DrawFn) -> list[Any]:
    """imaplib-shaped untagged data: lines, (head, literal) tuples, and a few things imaplib never gives."""
    out: list[Any] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 9))
        if kind <= 4:
            out.append(draw(_IMAP_BIG if kind == 0 else _IMAP_BYTES))
        elif kind <= 7:
            lit = draw(st.binary(max_size=16))
            head = draw(_IMAP_BYTES)
            if draw(st.booleans()):
                n = len(lit) if draw(st.booleans()) else draw(st.integers(0, 20))
                head += b"%s{%d}" % (draw(st.sampled_from([b"", b"~"])), n)
            out.append((head, lit))
        elif kind == 8:
            out.append(b")")
        else:
            out.append(draw(st.sampled_from([None, b"", "str", 5, (b"{1}",), (b"{1}", "x"), bytearray(b"1 (UID 1)")])))
    return out


# Well-formed values only, so a long repetition is parsed to its end rather than
# stopping at the first error (the old tokenizer's quadratic case: "a[ " x 16,000).
_VALID_TOKENS = st.sampled_from([b"a[", b"x]", b"foo[bar", b"[", b"\\Seen", b"$Label1", b"NIL", b"0", b"42",
                                 b"18446744073709551616", b'"a b"', b'"a[ b"', b'""', b"()", b"(a [)", b"~",
                                 b"BODY[", b"BODY[HEADER.FIELDS", b"\xc3\xa9", b"a%b"])
_VALID_BIG = _amplified(st.lists(_VALID_TOKENS, min_size=1, max_size=8).map(lambda t: b" ".join(t) + b" "))


@fuzz(st.one_of(_chunks(), _VALID_BIG.map(lambda v: [b"1 (UID 1 X (" + v + b") FLAGS (" + v + b"))"])))
def test_fuzz_imapproto_parse(data: list[Any]) -> None:
    with bounded(_size(data), "imapproto.parse"):
        try:
            values = imapproto.parse(data)
            assert isinstance(values, list)
        except ProtocolError:
            pass


@fuzz(_chunks())
def test_fuzz_imapproto_parse_fetch(data: list[Any]) -> None:
    with bounded(_size(data), "imapproto.parse_fetch"):
        bad: list[imapproto.FetchFailure] = []
        got = list(imapproto.parse_fetch(data, bad))  # never raises with a list for failures
        for seq, items in got:
            assert isinstance(seq, int) and all(isinstance(k, bytes) and k == k.upper() for k in items)
        for f in bad:
            assert f.uid is None or 0 < f.uid <= imapproto.MAX_UID
        try:
            strict = list(imapproto.parse_fetch(data))
            assert strict == got and not bad
        except ProtocolError:
            assert bad
        assert isinstance(imapproto.parse_list(data), list)


# RFC 3501 atom-chars (anything but atom-specials "(){ %*\"\\]" and CTLs), plus the
# 8-bit bytes broken servers send: every keyword another client can set.
_ATOM_BYTES = bytes(b for b in range(256) if b > 0x20 and b != 0x7F and b not in b'(){%*"\\]')
_KEYWORD = st.one_of(
    st.binary(min_size=1, max_size=24).map(lambda b: bytes(_ATOM_BYTES[c % len(_ATOM_BYTES)] for c in b)),
    st.sampled_from([b"\\Seen", b"\\Flagged", b"\\Answered", b"\\Deleted", b"\\Draft", b"\\Recent", b"$Forwarded",
                     b"foo[bar", b"[", b"007", b"NIL", b"nil", b"9" * 40, b"a~b", b"$Label1"]),
)


@st.composite
def _meta_response(draw: st.DrawFn, seq: int) -> tuple[list[Any], dict[bytes, Any]]:
    """One metadata FETCH response as Dovecot shapes it, and what it must parse to."""
    uid = draw(st.integers(1, 2**32 - 1))
    flags = draw(st.lists(_KEYWORD, max_size=8))
    size = draw(st.integers(0, 2**63 - 1))
    subject = draw(st.binary(max_size=40))
    date = b"05-Mar-2024 08:07:02 +0000"
    head = (b"%d (UID %d FLAGS (%s) INTERNALDATE \"%s\" RFC822.SIZE %d BODY[HEADER.FIELDS (SUBJECT)] {%d}"
            % (seq, uid, b" ".join(flags), date, size, len(subject)))
    want = {b"UID": uid, b"FLAGS": flags, b"INTERNALDATE": date, b"RFC822.SIZE": size,
            b"BODY[HEADER.FIELDS (SUBJECT)]": subject}
    return [(head, subject), b")"], want


@st.composite
def _fetch_reply(draw: st.DrawFn) -> tuple[list[Any], list[tuple[int, dict[bytes, Any]]], int]:
    """Good metadata responses with broken ones mixed in: (data, the good ones, how many broken)."""
    data: list[Any] = []
    want: list[tuple[int, dict[bytes, Any]]] = []
    broken = 0
    for seq in range(1, draw(st.integers(1, 6)) + 1):
        if draw(st.integers(0, 3)) == 0:
            # Never closed: broken (a ')' could end it early, a brace at the end start a literal).
            junk = draw(_IMAP_BYTES).replace(b")", b"").replace(b"{", b"")
            data.append(b"%d (UID %d X " % (seq, seq) + junk + b" (")  # never closed: broken
            broken += 1
            continue
        chunks, items = draw(_meta_response(seq))
        data += chunks
        want.append((seq, items))
    return data, want, broken


@fuzz(_fetch_reply())
def test_fuzz_fetch_keywords_and_isolation(case: tuple[list[Any], list[Any], int]) -> None:
    data, want, broken = case
    with bounded(_size(data), "parse_fetch of metadata"):
        bad: list[imapproto.FetchFailure] = []
        assert list(imapproto.parse_fetch(data, bad)) == want
        assert len(bad) == broken
        assert all(f.seq is not None and f.uid == f.seq for f in bad)


_VALUE = st.recursive(
    st.one_of(st.none(), st.integers(0, 2**64 - 1), st.binary(max_size=12)),
    lambda kids: st.lists(kids, max_size=5), max_leaves=30)


def _serialise(v: Any, literal: Callable[[bytes], bool], chunks: list[Any], text: list[bytes]) -> None:
    if v is None:
        text[0] += b"NIL"
    elif isinstance(v, int):
        text[0] += b"%d" % v
    elif isinstance(v, bytes):
        if literal(v) or any(c in v for c in b"\r\n\0"):
            chunks.append((text[0] + b"{%d}" % len(v), v))
            text[0] = b""
        else:
            text[0] += imapproto.quote(v)
    else:
        text[0] += b"("
        for i, x in enumerate(v):
            if i:
                text[0] += b" "
            _serialise(x, literal, chunks, text)
        text[0] += b")"


@fuzz(st.lists(_VALUE, max_size=4), st.randoms(use_true_random=False))
def test_fuzz_imapproto_round_trip(values: list[Any], rnd: Any) -> None:
    chunks: list[Any] = []
    text = [b""]
    for i, v in enumerate(values):
        if i:
            text[0] += b" "
        _serialise(v, lambda _b: rnd.random() < 0.3, chunks, text)
    chunks.append(text[0])
    with bounded(_size(chunks), "parse round trip"):
        assert imapproto.parse(chunks) == values


@fuzz(_amplified(st.binary(max_size=40).filter(lambda b: not any(c in b for c in b"\r\n\0"))))
def test_fuzz_quote_round_trip(b: bytes) -> None:
    q = imapproto.quote(b)
    with bounded(len(q), "quote"):
        assert imapproto.parse([q]) == [b]
    assert imapproto.parse([b"(" + q + b" " + q + b")"]) == [[b, b]]


_UID_SET_TEXT = st.one_of(
    st.lists(st.tuples(st.integers(0, 2**32 + 5), st.integers(0, 2**32 + 5), st.booleans()), min_size=1, max_size=12)
    .map(lambda parts: b",".join(b"%d:%d" % (a, b) if r else b"%d" % a for a, b, r in parts)),
    _amplified(st.lists(st.sampled_from([b"1", b"9", b":", b",", b"*", b" ", b"4294967295", b"0", b"x"]),
                        max_size=20).map(b"".join)),
)


@fuzz(_UID_SET_TEXT, st.integers(1, 2**32 - 1))
def test_fuzz_uid_sets(text: bytes, uid: int) -> None:
    uids: list[int] = []
    with bounded(len(text), "uid sets"):
        try:
            uids = imapproto.parse_uid_set(text)
            assert len(uids) <= imapproto.MAX_UID_SET
            ranges = imapproto.parse_uid_ranges(text)
        except ProtocolError:
            pass
        try:
            imapproto.map_uid(text, b"1:4294967295", uid)  # ranges only: never expanded
            if uids:
                assert imapproto.map_uid(text, text, uids[0]) == uids[0]
        except ProtocolError:
            pass
    if uids:
        assert imapproto.uid_set_size(ranges) == len(uids)
        assert imapproto.parse_uid_set(imapproto.format_uid_set(uids).encode()) == sorted(set(uids))


@fuzz(st.one_of(st.binary(max_size=40), st.from_regex(rb"\A ?\d{1,2}-[A-Za-z]{3}-\d{4} \d\d:\d\d:\d\d [+-]\d{4}\Z")),
      _amplified(st.binary(max_size=40)))
def test_fuzz_internaldate_and_response_codes(date: bytes, line: bytes) -> None:
    with bounded(len(date) + len(line), "INTERNALDATE, response codes"):
        try:
            assert isinstance(imapproto.parse_internaldate(date), int)
        except ProtocolError:
            pass
        code = imapproto.response_code(line)
        assert code is None or isinstance(code[0], bytes)


# ===================================================================== mime

# Boundaries of one length (a uuid): none is a prefix of another, as RFC 2046 requires.
_BOUNDARY = st.uuids().map(lambda u: "==" + u.hex)
_ENCODINGS = ["7bit", "8bit", "binary", "base64", "quoted-printable"]
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


def _encode(data: bytes, encoding: str) -> bytes:
    if encoding == "base64":
        return base64.encodebytes(data).replace(b"\n", b"\r\n")
    if encoding == "quoted-printable":  # istext=False: every CR and LF of the data is =0D/=0A
        return binascii.b2a_qp(data, quotetabs=True, istext=False).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return data


Leaves = dict[str, tuple[bytes, bytes, str]]  # relative section -> (payload, encoded body, kind)


class _Part:
    """A generated MIME part: header, body, BODYSTRUCTURE, and what each part the server numbers holds."""

    def __init__(self, header: bytes, body: bytes, structure: list[Any], leaves: Leaves, multipart: bool) -> None:
        self.header, self.body, self.structure, self.leaves, self.multipart = header, body, structure, leaves, multipart


def _prefix(n: int, leaves: Leaves) -> Leaves:
    return {(f"{n}.{k}" if k else str(n)): v for k, v in leaves.items()}


def _body_sections(part: _Part) -> Leaves:
    """Sections of a message whose body is *part* (RFC 3501 6.4.5): a single part is "1"."""
    return part.leaves if part.multipart else _prefix(1, part.leaves)


@st.composite
def _leaf(draw: st.DrawFn) -> _Part:
    maintype, subtype = draw(st.sampled_from([(b"text", b"plain"), (b"text", b"html"), (b"application", b"pdf"),
                                              (b"image", b"png"), (b"application", b"octet-stream")]))
    encoding = draw(st.sampled_from(_ENCODINGS))
    if maintype == b"text" and draw(st.booleans()):
        payload, charset, kind = draw(_TEXT).encode("utf-8"), b"utf-8", "text-utf8"
    else:
        big = draw(st.integers(0, 4)) == 0
        payload = draw(_amplified(st.binary(max_size=60)) if big else st.binary(max_size=60))
        charset, kind = b"us-ascii", "text" if maintype == b"text" else "binary"
    body = _encode(payload, encoding)
    header = b"Content-Type: %s/%s; charset=%s\r\nContent-Transfer-Encoding: %s\r\n" % (
        maintype, subtype, charset, encoding.encode())
    filename = draw(st.one_of(st.none(), st.text(max_size=30)))
    disp = None
    if filename is not None:
        disp = [b"attachment", [b"filename", filename.encode("utf-8", "surrogatepass")]]
        header += b"Content-Disposition: attachment\r\n"
    structure: list[Any] = [maintype, subtype, [b"charset", charset], None, None, encoding.encode(), len(body)]
    if maintype == b"text":
        structure.append(body.count(b"\n"))
    structure += [None, disp, None, None]
    return _Part(header, body, structure, {"": (payload, body, kind)}, False)


def _multipart(children: list[_Part], boundary: str, subtype: bytes) -> _Part:
    b = boundary.encode()
    body = b"".join(b"--" + b + b"\r\n" + c.header + b"\r\n" + c.body + b"\r\n" for c in children) + b"--" + b + b"--\r\n"
    header = b'Content-Type: multipart/%s; boundary="%s"\r\n' % (subtype, b)
    structure = [c.structure for c in children] + [subtype, [b"boundary", b], None, None, None]
    leaves: Leaves = {}
    for i, c in enumerate(children, 1):
        leaves.update(_prefix(i, c.leaves))
    return _Part(header, body, structure, leaves, True)


def _message(inner: _Part, subject: bytes) -> _Part:
    body = b"Subject: " + subject + b"\r\n" + inner.header + b"\r\n" + inner.body
    envelope = [None, subject] + [None] * 8
    structure = [b"message", b"rfc822", None, None, None, b"7bit", len(body), envelope, inner.structure,
                 body.count(b"\n"), None, None, None, None]
    return _Part(b"Content-Type: message/rfc822\r\n", body, structure,
                 {"": (body, body, "message"), **_body_sections(inner)}, False)


def _tree(depth: int = 0) -> st.SearchStrategy[_Part]:
    if depth >= 3:
        return _leaf()
    return st.one_of(
        _leaf(),
        st.builds(_multipart, st.lists(st.deferred(lambda: _tree(depth + 1)), min_size=1, max_size=3), _BOUNDARY,
                  st.sampled_from([b"mixed", b"alternative", b"related"])),
        st.builds(_message, st.deferred(lambda: _tree(depth + 1)),
                  st.text("abcdefghij xyz", min_size=1, max_size=12).map(str.encode)),
    )


def _bs_reply(structure: list[Any]) -> list[Any]:
    chunks: list[Any] = []
    text = [b"1 (UID 1 BODYSTRUCTURE "]
    _serialise(structure, lambda v: len(v) > 50, chunks, text)
    chunks.append(text[0] + b")")
    return chunks


def _all_entries(entries: list[mime.PartEntry]) -> Iterator[mime.PartEntry]:
    for e in entries:
        yield e
        yield from _all_entries(e.children)


@fuzz(_tree())
def test_fuzz_mime_bodystructure_listing_cut_decode(root: _Part) -> None:
    # A message built together with its BODYSTRUCTURE: the BODYSTRUCTURE goes
    # through imapproto as a server would send it, and every part is listed
    # under a valid unique name, cut from the message, and decoded back to
    # exactly what was put in.
    message = b"MIME-Version: 1.0\r\n" + root.header + b"\r\n" + root.body
    want = _body_sections(root)
    with bounded(len(message), "BODYSTRUCTURE -> listing -> cut -> decode"):
        ((_, items),) = list(imapproto.parse_fetch(_bs_reply(root.structure)))
        tree = mime.parse_bodystructure(items[b"BODYSTRUCTURE"])
        entries = mime.list_entries(tree)
        for level in [entries] + [e.children for e in _all_entries(entries) if e.children]:
            names = [e.name for e in level]
            assert len(set(names)) == len(names)
            for e in level:
                raw = e.name.encode("utf-8", "surrogateescape")
                assert 0 < len(raw) <= mime.NAME_BUDGET and "/" not in e.name and "\0" not in e.name
                assert mime.lookup(level, e.name)[0] is e
        cut = mime.split_sections(message, tree)
        listed = {e.section for e in _all_entries(entries)}
        assert {k for k, v in want.items() if v[2] != "message" or k in listed} <= listed
        for e in _all_entries(entries):
            payload, body, kind = want[e.section]
            assert cut.get(e.section) == body, e.section
            decoded = transfer.decode_part(e, body)
            if kind != "text":  # us-ascii text of random bytes is converted, not kept
                assert decoded == payload, (e.section, kind)
            size = transfer.decoded_size(e, body)
            assert size is None or size == len(decoded)


_GARBAGE_STRUCTURE = st.recursive(
    st.one_of(st.none(), st.integers(-5, 2**64), st.binary(max_size=20), st.sampled_from(
        [b"text", b"plain", b"multipart", b"mixed", b"message", b"rfc822", b"base64", b"boundary", b"charset",
         b"attachment", b"filename", b"quoted-printable", b"x-uuencode"])),
    lambda kids: st.lists(kids, max_size=8), max_leaves=60)


@fuzz(st.one_of(_GARBAGE_STRUCTURE, _chunks().map(lambda c: next(iter(_safe_parse(c)), None))),
      _amplified(st.binary(max_size=80)))
def test_fuzz_mime_garbage(structure: Any, message: bytes) -> None:
    with bounded(_size(structure) + len(message), "mime of garbage"):
        try:
            tree = mime.parse_bodystructure(structure)
        except mime.MimeError:
            return
        entries = mime.list_entries(tree)
        cut = mime.split_sections(message, tree)
        for e in _all_entries(entries):
            raw = cut.get(e.section, message)
            try:
                out = transfer.decode_part(e, raw)
                size = transfer.decoded_size(e, raw)
                assert size is None or size == len(out)
            except mime.MimeError:  # DecodeError is one
                pass


def _safe_parse(chunks: list[Any]) -> list[Any]:
    try:
        return imapproto.parse(chunks)
    except ProtocolError:
        return []


_CHARSETS = st.one_of(st.none(), st.sampled_from(
    ["utf-8", "us-ascii", "iso-8859-1", "windows-1252", "utf-16", "utf-7", "gb2312", "shift_jis", "koi8-r",
     "unicode-escape", "x-unknown", "", "utf-8'", "hz-gb-2312", "iso-2022-jp"]), st.text(max_size=12))


@fuzz(st.one_of(st.sampled_from(["base64", "quoted-printable", "x-uuencode", "7bit", "bogus", ""]), st.text(max_size=10)),
      _amplified(st.binary(max_size=80)), _CHARSETS)
def test_fuzz_mime_decoders(encoding: str, data: bytes, charset: str | None) -> None:
    with bounded(len(data), f"decode {encoding!r} / {charset!r}"):
        try:
            assert isinstance(transfer.decode_transfer(encoding, data), bytes)
        except transfer.DecodeError:
            pass
        out = to_utf8(data, charset)
        out.decode("utf-8")  # always valid UTF-8
        assert isinstance(decode_words(data), str)


# ==================================================================== codec

_FOLDER_TEXT = st.one_of(st.text(max_size=40), _amplified(st.text(max_size=20).map(lambda s: s.encode("utf-8", "surrogatepass")))
                         .map(lambda b: b[:4000].decode("utf-8", "replace")))


@fuzz(_FOLDER_TEXT)
def test_fuzz_mutf7_round_trip(name: str) -> None:
    with bounded(len(name), "modified UTF-7"):
        try:
            wire = codec.encode_mutf7(name)
        except UnicodeEncodeError:
            assert any("\ud800" <= c <= "\udfff" for c in name)
            return
        assert wire.isascii()
        assert codec.decode_mutf7(wire) == name
        assert codec.canonical_decode(wire.encode("ascii")) == name


@fuzz(_amplified(st.binary(max_size=40)), st.text(max_size=40))
def test_fuzz_mutf7_decoding_garbage(wire: bytes, text: str) -> None:
    with bounded(len(wire) + len(text), "modified UTF-7 of garbage"):
        decoded = codec.canonical_decode(wire)
        if decoded is not None:
            assert codec.encode_mutf7(decoded).encode("ascii") == wire
        assert isinstance(codec.decode_mutf7(text), str)


_DELIMITERS = st.sampled_from([None, "/", ".", "\\", "&", "-", "A", "é"])


@fuzz(_FOLDER_TEXT, _DELIMITERS)
def test_fuzz_folder_path_round_trip(name: str, delimiter: str | None) -> None:
    with bounded(len(name), "folder <-> path"):
        try:
            path = codec.folder_to_path(name, delimiter)
        except ValueError:  # NameTooLong
            return
        for comp in path:
            assert comp not in ("", ".", "..") and "/" not in comp and "\0" not in comp
            assert len(comp.encode("utf-8", "surrogatepass")) <= codec.MAX_COMPONENT_BYTES
        back = codec.path_to_folder(path, delimiter)
        first = name if delimiter is None else name.split(delimiter)[0]
        if codec.is_inbox(first):  # every spelling of INBOX is INBOX
            assert back == "INBOX" + name[len(first):]
        else:
            assert back == name


@fuzz(st.lists(st.tuples(_amplified(st.binary(max_size=30)).map(lambda b: b[:2000]), _DELIMITERS), max_size=8))
def test_fuzz_map_folders_gives_distinct_paths(names: list[tuple[bytes, str | None]]) -> None:
    with bounded(_size(names), "map_folders"):
        mapped, refused = codec.map_folders(names)
        wires = {w for w, _ in names}
        assert set(mapped) | set(refused) == wires and not set(mapped) & set(refused)
        paths = [fp.path for fp in mapped.values()]
        assert len(set(paths)) == len(paths), "two server folders share a directory"


# =================================================================== naming

_DATES = st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30),
                      timezones=st.one_of(st.none(), st.timezones()))


@fuzz(st.integers(1, 2**32 - 1), _DATES, _FOLDER_TEXT)
def test_fuzz_message_names(uid: int, when: dt.datetime, subject: str) -> None:
    with bounded(len(subject), "message names"):
        name = naming.message_name(uid, when, subject)
        raw = name.encode("utf-8")
        assert len(raw) <= naming.MAX_NAME_BYTES - len(".parts") + len(".eml")
        assert "/" not in name and "\0" not in name and not name.startswith(".")
        assert naming.parse_message_name(name) == (uid, "eml")
        parts = naming.parts_name(uid, when, subject)
        assert len(parts.encode("utf-8")) <= naming.MAX_NAME_BYTES
        assert naming.parse_message_name(parts) == (uid, "parts")


_SUBJECT_BYTES = st.one_of(
    st.binary(max_size=80),
    st.lists(st.sampled_from([b"Subject: ", b"subject :", b"=?utf-8?q?", b"=?UTF-8?B?", b"?=", b"=C3=A9", b"w6k=",
                              b"=?iso-8859-1?q?caf=E9?=", b"\r\n ", b"\r\n", b"\t", b"\xc3", b"\xa9", b"=?", b"?",
                              b"=?x-unknown?q?a?=", b"=?utf-7?b?K2FPaw==?=", b"a"]),
             max_size=30).map(b"".join),
)


@fuzz(_amplified(_SUBJECT_BYTES), st.integers(0, 300))
def test_fuzz_subjects(raw: bytes, budget: int) -> None:
    with bounded(len(raw), "RFC 2047 subjects"):
        text = naming.decode_subject(raw)
        assert isinstance(text, str) and not any("\ud800" <= c <= "\udfff" for c in text)
        clean = naming.sanitize(text, budget)
        assert len(clean.encode("utf-8")) <= budget
        assert "/" not in clean and not clean.startswith((".", " "))


# ============================================================= scripts/fuzz

def main(argv: list[str] | None = None) -> int:
    """Run every property in rounds until the time is up (``scripts/fuzz --minutes N``)."""
    ap = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="how long to fuzz (default 5)")
    ap.add_argument("--only", default="", help="run only the properties whose name contains this")
    args = ap.parse_args(argv)
    if not LONG:
        print("scripts/fuzz: set IMAPFS_FUZZ=long (scripts/fuzz does)", file=sys.stderr)
        return 2
    props = [p for p in PROPERTIES if args.only in p[0]]
    deadline = time.monotonic() + args.minutes * 60
    started = time.monotonic()
    crashes: dict[str, str] = {}
    per: dict[str, int] = {name: 0 for name, _b, _s in props}
    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1
        turn = (rounds - 1) % len(props)
        for name, body, strategies in props[turn:] + props[:turn]:  # each round starts one further
            if time.monotonic() >= deadline:
                break
            if name in crashes:
                continue
            before = Stats.inputs
            test = settings(settings.get_profile("fuzz-long"))(given(*strategies)(body))
            try:
                test()
            except Exception as e:  # noqa: BLE001 - a crash: report it and go on with the others
                crashes[name] = f"{type(e).__name__}: {e}"[:2000]
                print(f"CRASH in {name}:\n{crashes[name]}\n", flush=True)
            per[name] += Stats.inputs - before
        print(f"round {rounds}: {Stats.inputs} inputs, {time.monotonic() - started:.0f} s, "
              f"{len(crashes)} crashes", flush=True)
    took = time.monotonic() - started
    print()
    for name, n in per.items():
        print(f"  {name:50} {n:8} inputs{'  CRASHED' if name in crashes else ''}")
    print(f"\ninputs tried: {Stats.inputs}\ntime: {took:.0f} s\ncrashes: {len(crashes)}\n"
          f"slowest input: {Stats.slowest:.3f} s CPU ({Stats.slowest_where})\n"
          f"largest allocation peak: {Stats.peak / 1e6:.1f} MB ({Stats.peak_where})")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
