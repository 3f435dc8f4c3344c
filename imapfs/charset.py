"""Text in any charset → UTF-8, and RFC 2047 encoded words → text.

Pure functions, no I/O, nothing of imapfs imported.  Mail declares charsets
wrongly or not at all, so nothing here ever fails: what a label cannot
explain is read as UTF-8 with a windows-1252 fallback per byte.  It is its
own module because two callers need it with nothing else of MIME: the part
tree (:mod:`imapfs.mime`: parameters and subjects in BODYSTRUCTURE) and the
decoders (:mod:`imapfs.transfer`: text parts served as UTF-8, so ``grep -r``
finds them).  :data:`STEP` and :func:`pieces` bound each C call for both.

See docs/parts.md for the conversion rules.
"""

from __future__ import annotations

import binascii
import codecs
import functools
import re
import sys

__all__ = [
    "STEP",
    "decode_words",
    "pieces",
    "to_text",
    "to_utf8",
]

# windows-1252 where defined, latin-1 for its five holes: every byte maps,
# and the quotes/euro of Windows clients do not turn into C1 controls.
_CP1252 = "".join(
    bytes([b]).decode("cp1252", "ignore") or chr(b) for b in range(256)
)
_WIN1252 = "x-imapfs-cp1252"  # pseudo codec name for the table above

# Labels real mail uses for something else, mapped to what to try (in order).
# An empty tuple means "the label says nothing": go straight to the fallback.
_CHARSET_ALIASES: dict[str, tuple[str, ...]] = {
    "utf8": ("utf-8",),
    "x-unknown": (),
    "unknown": (),
    "unknown-8bit": (),
    "x-user-defined": (),
    "default": (),
    "unicode-1-1-utf-7": ("utf-7",),
    "us-ascii": ("ascii",),
    "iso-8859-1": (_WIN1252,),
    "iso8859-1": (_WIN1252,),
    "iso_8859-1": (_WIN1252,),
    "latin1": (_WIN1252,),
    "latin-1": (_WIN1252,),
    "l1": (_WIN1252,),
    "windows-1252": (_WIN1252,),
    "cp1252": (_WIN1252,),
    "ks_c_5601-1987": ("cp949",),
    "ks_c_5601": ("cp949",),
    "euc-kr": ("cp949",),
    "gb2312": ("gb18030",),
    "gb_2312-80": ("gb18030",),
    "gbk": ("gb18030",),
    "x-gbk": ("gb18030",),
    "euc-cn": ("gb18030",),
    "cp936": ("gb18030",),
    "big5": ("cp950", "big5hkscs"),
    "shift_jis": ("cp932",),
    "shift-jis": ("cp932",),
    "sjis": ("cp932",),
    "x-sjis": ("cp932",),
    "windows-31j": ("cp932",),
    "iso-2022-jp": ("iso2022_jp", "iso2022_jp_ext", "iso2022_jp_2", "iso2022_jp_2004"),
    "tis-620": ("cp874",),
    "iso-8859-11": ("cp874",),
    "windows-874": ("cp874",),
    "iso-8859-8-i": ("iso8859-8",),
    "iso-8859-6-i": ("iso8859-6",),
    "x-mac-roman": ("mac-roman",),
}
# Text codecs that are no character set: "unicode_escape" would let a
# sender write any code point, "idna" is not for bodies.
_REFUSED_CODECS = frozenset(
    {"unicode-escape", "raw-unicode-escape", "undefined", "idna", "punycode", "mbcs", "oem"}
)
_CHARSET_NAME = re.compile(r"[A-Za-z0-9._:+-]{1,40}\Z")


def _codecs_for(charset: str | None) -> tuple[str, ...]:
    """Python codecs to try for a declared charset, in order (maybe none)."""
    if not charset:
        return ()
    name = charset.strip().strip("\"'").strip().lower()
    if name in _CHARSET_ALIASES:
        return _CHARSET_ALIASES[name]
    if not _CHARSET_NAME.match(name):
        return ()
    try:
        info = codecs.lookup(name)
    except Exception:  # noqa: BLE001 - LookupError, or odd names a search function rejects
        return ()
    if not getattr(info, "_is_text_encoding", True) or info.name in _REFUSED_CODECS:
        return ()
    return (info.name,)


#: Inputs are converted in pieces of this many bytes. The decoders run in a
#: worker thread (imapfs.parts), but a C call holds the GIL from start to end,
#: so one call over 20 MB would stall the trio loop anyway; pieces keep each
#: call to a few milliseconds. Every piecewise path gives what one call would.
#: :mod:`imapfs.transfer` reads it from here too: one knob for both.
STEP = 256 * 1024


def pieces(data: bytes) -> list[bytes]:
    """*data* cut into pieces of :data:`STEP` bytes (one empty piece for no data)."""
    return [data[i:i + STEP] for i in range(0, len(data), STEP)] or [b""]


def _is_utf8(data: bytes) -> bool:
    if len(data) <= STEP:
        try:
            data.decode("utf-8")
            return True
        except UnicodeDecodeError:
            return False
    dec = codecs.getincrementaldecoder("utf-8")()
    try:
        for piece in pieces(data):
            dec.decode(piece)
        dec.decode(b"", True)
        return True
    except UnicodeDecodeError:
        return False


@functools.lru_cache(maxsize=64)
def _piecewise(codec: str) -> bool:
    """Whether *codec*'s incremental decoder gives what one call gives: single-byte
    table codecs and the CJK ones do; UTF-16/32 (no BOM: one call assumes an order,
    the incremental decoder refuses) and UTF-7 (re-reads a shifted run) do not."""
    try:
        cls = codecs.lookup(codec).incrementaldecoder
    except LookupError:
        return False
    if cls is None:
        return False
    mro = getattr(cls, "__mro__", ())  # a class, which typeshed types as a factory
    if any(c.__name__ == "MultibyteIncrementalDecoder" for c in mro):
        return True
    return isinstance(getattr(sys.modules.get(cls.__module__), "decoding_table", None), str)


def _convert_strict(data: bytes, codec: str) -> bytes:
    """*data* in *codec* → UTF-8 bytes, or an exception.

    Lone surrogates (UTF-7, UTF-16) fail: they cannot be encoded as UTF-8.
    """
    if codec == "utf-8":
        if not _is_utf8(data):
            raise UnicodeError("not UTF-8")
        return data  # valid UTF-8 is its own conversion
    if codec == _WIN1252:
        return b"".join(codecs.charmap_decode(p, "strict", _CP1252)[0].encode("utf-8") for p in pieces(data))
    if len(data) <= STEP or not _piecewise(codec):
        return data.decode(codec).encode("utf-8")
    dec = codecs.getincrementaldecoder(codec)("strict")
    out = [dec.decode(p).encode("utf-8") for p in pieces(data)]
    out.append(dec.decode(b"", True).encode("utf-8"))
    return b"".join(out)


# surrogateescape turns each byte that is not part of valid UTF-8 into
# U+DC80..U+DCFF; this maps those to what the byte means in windows-1252.
_ESCAPED = {0xDC00 + b: _CP1252[b] for b in range(0x80, 0x100)}


def _utf8_or_cp1252(data: bytes) -> bytes:
    """Valid UTF-8 sequences as UTF-8, every other byte as windows-1252, as UTF-8 bytes.

    Never fails.  Per sequence rather than all-or-nothing because a UTF-8
    body with a windows-1252 footer (list servers) is common.  Linear: the
    C UTF-8 decoder finds the sequences (Python's notion of valid UTF-8 is
    the well-formed table of Unicode §3.9, byte for byte), and each byte it
    rejects is mapped alone.
    """
    if _is_utf8(data):
        return data
    dec = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    out = []
    chunks = pieces(data)
    for i, piece in enumerate(chunks):
        text = dec.decode(piece, i == len(chunks) - 1)
        try:
            out.append(text.encode("utf-8"))
        except UnicodeEncodeError:  # escaped bytes in this piece
            out.append(text.translate(_ESCAPED).encode("utf-8"))
    return b"".join(out)


# Labels that clients put on UTF-8 by default: valid UTF-8 under them is
# taken as UTF-8 (real latin-1 text is practically never valid UTF-8).
_UTF8_FIRST = frozenset({"ascii", _WIN1252, "iso8859-15"})


def to_utf8(data: bytes, charset: str | None) -> bytes:
    """Text in any declared (or mis-declared) charset → valid UTF-8.

    Order: the declared charset, strict, if Python knows it (after aliases
    for common mislabels: ``iso-8859-1`` read as windows-1252, ``gb2312`` as
    gb18030, ``ks_c_5601-1987`` as cp949, …; under ``us-ascii``,
    ``iso-8859-1``/``-15`` and ``windows-1252`` valid UTF-8 is tried first);
    if that fails or the label is unknown: UTF-8, sequence by sequence, with
    every byte that is not part of a valid UTF-8 sequence read as
    windows-1252 (latin-1 for the five bytes windows-1252 leaves undefined).
    Never fails; line endings stay as sent.  Linear in the input, and done
    in pieces of :data:`STEP` bytes (see there).
    """
    data = bytes(data)
    tried = _codecs_for(charset)
    if tried and tried[0] in _UTF8_FIRST:
        tried = ("utf-8",) + tried
    for codec in tried:
        try:
            return _convert_strict(data, codec)
        except Exception:  # noqa: BLE001 - UnicodeError, or a codec's own surprises
            continue
    return _utf8_or_cp1252(data)


def to_text(data: bytes, charset: str | None) -> str:
    """:func:`to_utf8` as text, for header values; never fails."""
    return to_utf8(data, charset).decode("utf-8")


def _cp1252_text(data: bytes) -> str:
    return _utf8_or_cp1252(data).decode("utf-8")


_ENCODED_WORD = re.compile(rb"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([QqBb])\?([^?\s]*)\?=")
_HEXPAIR = re.compile(rb"=([0-9A-Fa-f]{2})")


def _b64_word(payload: bytes) -> bytes | None:
    core = payload.rstrip(b"=")
    if len(core) % 4 == 1 or not re.fullmatch(rb"[A-Za-z0-9+/]*", core):
        return None
    return binascii.a2b_base64(core + b"=" * (-len(core) % 4))


def _q_word(payload: bytes) -> bytes:
    return _HEXPAIR.sub(lambda m: bytes([int(m.group(1), 16)]), payload.replace(b"_", b" "))


def decode_words(raw: bytes) -> str:
    """A header value (raw bytes) → text, decoding RFC 2047 encoded words.

    Raw 8-bit is read as UTF-8 (RFC 6532) with the windows-1252 fallback.
    Adjacent encoded words in one charset are joined as bytes before
    decoding (mailers split multi-byte characters across words), and the
    whitespace between encoded words is dropped.  Broken words stay literal.
    """
    out: list[str] = []
    pending = b""
    pending_cs: str | None = None
    pos = 0
    for m in _ENCODED_WORD.finditer(raw):
        charset, kind, payload = m.groups()
        data = _b64_word(payload) if kind in b"Bb" else _q_word(payload)
        gap = raw[pos : m.start()]
        cs = charset.decode("ascii", "replace").lower()
        if data is None:
            if pending_cs is not None:
                out.append(to_text(pending, pending_cs))
                pending, pending_cs = b"", None
            out.append(_cp1252_text(gap + m.group()))
        elif pending_cs is not None and not gap.strip(b" \t\r\n"):
            if cs == pending_cs:
                pending += data
            else:
                out.append(to_text(pending, pending_cs))
                pending, pending_cs = data, cs
        else:
            if pending_cs is not None:
                out.append(to_text(pending, pending_cs))
            out.append(_cp1252_text(gap))
            pending, pending_cs = data, cs
        pos = m.end()
    if pending_cs is not None:
        out.append(to_text(pending, pending_cs))
    out.append(_cp1252_text(raw[pos:]))
    return "".join(out)

