"""Content-Transfer-Encoding: the fetched bytes of a part → what its file shows.

Pure functions, no I/O.  base64 and quoted-printable each have a fast path
(the C decoder, in pieces of :data:`imapfs.charset.STEP` bytes, so no call
holds the GIL for long) and a tolerant reference decoder it falls back to on
input it would read otherwise; both give the same bytes wherever the fast
path answers (tests/test_transfer.py).  uuencode and the identity encodings
have one path each.  A text part is then converted to UTF-8 by
:mod:`imapfs.charset`, so ``grep -r`` finds it.

Apart from the part tree (:mod:`imapfs.mime`) because this is the half that
works on a part's bytes, often megabytes and in a worker thread, while the
tree only names parts: this module imports the tree's types, the tree never
imports it.  Nothing but :class:`DecodeError` (a
:class:`~imapfs.mime.MimeError`) leaves this module.
"""

from __future__ import annotations

import binascii
import re
import sys

from . import charset
from .mime import MimeError, PartEntry

__all__ = [
    "DecodeError",
    "decode_part",
    "decode_transfer",
    "decoded_size",
]


class DecodeError(MimeError):
    """A part's Content-Transfer-Encoding is unknown or its data is not in it."""


_IDENTITY = frozenset(
    {"7bit", "8bit", "binary", "7-bit", "8-bit", "7bits", "8bits", "plain", "none", "text", ""}
)
_UUENCODE = frozenset({"x-uuencode", "uuencode", "x-uue", "uue"})
_QP = frozenset({"quoted-printable", "quoted_printable", "x-quoted-printable"})
_B64_ALPHABET = re.compile(rb"[A-Za-z0-9+/]+")
_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/=\s]")
_B64_SPACE = re.compile(rb"\s")
_B64_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_WS = b" \t\n\r\x0b\x0c"  # what \s matches in a bytes pattern


def _decode_base64(data: bytes) -> bytes:
    """RFC 2045 base64, tolerant the way real decoders are.

    Skipped: every character outside the alphabet (line breaks, spaces,
    stray punctuation; RFC 2045 §6.8).  Repaired: missing padding at the end.
    Continued: data after ``=`` padding (concatenated encodings).  Refused
    (DecodeError): a group of one lone character, which holds no byte, and
    input where non-alphabet characters outnumber alphabet ones (not base64
    at all).  Clean input takes :func:`_base64_fast`; this is the reference.
    """
    return b"".join(binascii.a2b_base64(core + b"=" * (-len(core) % 4)) for core in _base64_cores(data))


def _base64_fast(data: bytes) -> bytes | None:
    """Clean base64 (alphabet and whitespace, ``=`` only at the very end) with the
    C decoder, in pieces; None for anything else, which :func:`_decode_base64`
    then decides. Equal to it wherever it answers (tests/test_transfer.py)."""
    if sys.version_info < (3, 11):  # no strict_mode yet: the reference decoder answers
        return None
    core = b"".join(p.translate(None, _B64_WS) for p in charset.pieces(data)).rstrip(b"=")
    n = len(core)
    if n % 4 == 1 or b"=" in core:
        return None
    whole = n - n % 4
    step = max(4, charset.STEP - charset.STEP % 4)  # whole groups per piece
    try:
        out = [binascii.a2b_base64(core[i:min(i + step, whole)], strict_mode=True) for i in range(0, whole, step)]
        if whole < n:
            out.append(binascii.a2b_base64(core[whole:] + b"=" * (-n % 4), strict_mode=True))
    except binascii.Error:  # a character outside the alphabet
        return None
    return b"".join(out)


def _base64_cores(data: bytes) -> list[bytes]:
    """The alphabet-only runs _decode_base64 decodes (checks included), shared with
    decoded_size so that a size computed without decoding is the decoder's."""
    junk = len(_B64_JUNK.findall(data))
    if junk and junk > len(data) - junk - len(_B64_SPACE.findall(data)):
        raise DecodeError("not base64: mostly characters outside the alphabet")
    cores = []
    for run in re.split(rb"=+", data):
        core = b"".join(_B64_ALPHABET.findall(run))
        if not core:
            continue
        if len(core) % 4 == 1:
            raise DecodeError("base64 data ends in a lone character")
        cores.append(core)
    return cores


def _base64_size(data: bytes) -> int:
    """``len(_decode_base64(data))`` without decoding: one C pass that drops the
    alphabet, then work on what is left (line breaks, padding: a few percent)."""
    rest = b"".join(p.translate(None, _B64_CHARS) for p in charset.pieces(data))
    eq = data.find(b"=")
    if eq >= 0 and len(data[eq:].translate(None, _B64_CHARS)) != len(data) - eq:
        return sum(len(c) * 3 // 4 for c in _base64_cores(data))  # several streams
    blank = len(rest) - len(rest.translate(None, _B64_WS))
    junk = len(rest) - blank - rest.count(b"=")
    if junk and junk > len(data) - junk - blank:
        raise DecodeError("not base64: mostly characters outside the alphabet")
    n = len(data) - len(rest)
    if n % 4 == 1:
        raise DecodeError("base64 data ends in a lone character")
    return n * 3 // 4


def decoded_size(entry: PartEntry, raw: bytes) -> int | None:
    """The length ``decode_part(entry, raw)`` returns, where it can be known without
    decoding (binary parts in identity or base64 encoding); None otherwise.

    Lets a ``.parts`` listing give exact sizes of attachments it does not decode
    until someone reads them. Raises DecodeError exactly when decode_part would.
    Cheaper than decoding: it counts the alphabet, with one C pass.
    """
    if entry.kind != "binary":
        return None
    enc = entry.part.encoding.lower()
    if enc in _IDENTITY:
        return len(raw)
    if enc == "base64":
        return _base64_size(bytes(raw))
    return None


# Blanks before a line break: the lookbehind makes a long run of blanks that is
# not followed by a break cost one try, not one per blank (quadratic before).
_QP_TRAILING_WS = re.compile(rb"(?<![ \t])[ \t]++(?=\r\n|\n|\Z)")
_QP_TOKEN = re.compile(rb"=(?:([0-9A-Fa-f]{2})|\r\n|\n|\Z)")
_HEX_BYTES = {b"%02X" % i: bytes([i]) for i in range(256)}


def _qp_sub(m: re.Match[bytes]) -> bytes:
    h = m.group(1)
    return _HEX_BYTES[h.upper()] if h is not None else b""


def _decode_qp(data: bytes) -> bytes:
    """RFC 2045 quoted-printable.

    Trailing blanks before a line break are transport padding and dropped;
    ``=`` before a line break (or at the end) is a soft break; hex may be
    lower case; a stray ``=`` not followed by two hex digits stays as is.
    Line breaks are CRLF or LF; a bare CR is data.  Most input takes
    :func:`_qp_fast`; this is the reference.
    """
    return _QP_TOKEN.sub(_qp_sub, _QP_TRAILING_WS.sub(b"", data))


def _line_pieces(data: bytes) -> list[bytes]:
    """*data* cut after line breaks into pieces of about :data:`imapfs.charset.STEP` bytes."""
    out, i, n = [], 0, len(data)
    while i < n:
        j = data.find(b"\n", i + charset.STEP)
        j = n if j < 0 else j + 1
        out.append(data[i:j])
        i = j
    return out


def _qp_fast(data: bytes) -> bytes | None:
    """Quoted-printable with the C decoder (``binascii.a2b_qp``), in pieces cut after
    line breaks (every check too: a scan of 20 MB would hold the GIL for tens of
    ms); None where a2b_qp reads the input otherwise than :func:`_decode_qp`
    (``==``, and ``=`` before a CR that is not a CRLF)."""
    out = []
    for p in _line_pieces(data):
        if (b" \n" in p or b"\t\n" in p or b" \r\n" in p or b"\t\r\n" in p
                or p.endswith((b" ", b"\t"))):  # transport padding: strip it (only then)
            p = _QP_TRAILING_WS.sub(b"", p)
        if b"==" in p or p.count(b"=\r") != p.count(b"=\r\n"):
            return None
        out.append(binascii.a2b_qp(p))
    return b"".join(out)


_UU_BEGIN = re.compile(rb"^begin[ \t]+[0-7]{1,6}[ \t]", re.M)


def _decode_uu(data: bytes) -> bytes:
    """uuencode: lines between ``begin <mode> <name>`` and ``end``.

    Without a begin line the whole input is taken as encoded lines.  Each
    line holds its length in its first character; characters past that
    (padding, checksums some encoders add) are ignored.
    """
    m = _UU_BEGIN.search(data)
    if m is not None:
        nl = data.find(b"\n", m.start())
        data = data[nl + 1 :] if nl >= 0 else b""
    out = []
    for line in data.splitlines():
        line = line.rstrip(b" \t\r")
        if line == b"end":
            break
        if not line:
            continue
        n = (line[0] - 32) & 0o77
        if n == 0:
            continue
        need = 1 + (n + 2) // 3 * 4
        chunk = line[:need].ljust(need, b" ")
        try:
            out.append(binascii.a2b_uu(chunk)[:n])
        except (binascii.Error, ValueError) as exc:
            raise DecodeError("bad uuencoded line: %s" % exc) from exc
    return b"".join(out)


def decode_transfer(encoding: str, data: bytes) -> bytes:
    """Undo a Content-Transfer-Encoding.

    Identity for 7bit/8bit/binary (and the misspellings ``7-bit``,
    ``8bits``, ``plain`` seen in real mail); base64, quoted-printable and
    uuencode as their helpers document.  An unknown encoding, or data that
    cannot be in the declared one, raises :class:`DecodeError` so the caller
    can serve the raw bytes instead.
    """
    enc = (encoding or "").split(";")[0].strip().strip("\"'").strip().lower()
    data = bytes(data)
    try:
        if enc in _IDENTITY:
            return data
        if enc == "base64":
            fast = _base64_fast(data)
            return fast if fast is not None else _decode_base64(data)
        if enc in _QP:
            fast = _qp_fast(data)
            return fast if fast is not None else _decode_qp(data)
        if enc in _UUENCODE:
            return _decode_uu(data)
    except DecodeError:
        raise
    except Exception as exc:  # binascii.Error and anything unforeseen
        raise DecodeError("cannot decode %s data: %s" % (enc, exc)) from exc
    raise DecodeError("unknown Content-Transfer-Encoding %r" % encoding)


def decode_part(entry: PartEntry, raw: bytes, *, server_decoded: bool = False) -> bytes:
    """The bytes a part's file shows, from what ``BODY.PEEK[section]`` returned.

    With ``server_decoded`` the input came from ``BINARY.PEEK[section]``
    (RFC 3516) and only the charset conversion of "text" entries is left.
    A "message" entry is BODY[section] as is (decoded only if someone sent
    it base64 or quoted-printable, which RFC 2046 forbids but happens).
    Raises :class:`DecodeError` when the transfer encoding cannot be undone.

    Fetch "message" entries with BODY.PEEK, never BINARY: Dovecot's BINARY
    of a message/rfc822 part also decodes the parts inside it.
    """
    part = entry.part
    data = bytes(raw) if server_decoded else decode_transfer(part.encoding, raw)
    if entry.kind == "text":
        return charset.to_utf8(data, part.charset)
    return data

