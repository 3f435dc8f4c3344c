"""MIME parts of a message: BODYSTRUCTURE → part tree → ``.parts`` listing.

Pure functions, no I/O.  The tree comes from the server's BODYSTRUCTURE and
never from parsing the message here, because the section numbers we fetch
with (``BODY.PEEK[2.1]``, ``BINARY.PEEK[2.1]``) must be the server's own.
Servers are buggy or hostile, so every shape is checked: a part that cannot
be understood becomes ``application/octet-stream`` rather than failing the
message, and nothing but :class:`MimeError` ever leaves this module.

The decoders (:func:`decode_transfer`, :func:`to_utf8`, :func:`decode_part`)
turn the fetched bytes into what the files show: attachments decoded, text
converted to UTF-8 so ``grep -r`` finds it.

See docs/parts.md for the naming rules with examples.
"""

from __future__ import annotations

import binascii
import codecs
import functools
import mimetypes
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from .errors import ProtocolError
from .naming import sanitize

__all__ = [
    "MAX_DEPTH",
    "NAME_BUDGET",
    "BodyPart",
    "DecodeError",
    "MimeError",
    "PartEntry",
    "decode_part",
    "decode_transfer",
    "decode_words",
    "list_entries",
    "lookup",
    "mime_type",
    "parse_bodystructure",
    "raw_name",
    "to_utf8",
]

#: Containers (multipart, message/rfc822) nested deeper than this become one
#: opaque ``application/octet-stream`` leaf: bounds recursion and name length.
MAX_DEPTH = 64
#: Every name :func:`list_entries` makes is at most this many UTF-8 bytes, so
#: the derived names (``+ ".raw"``, ``.eml`` → ``.parts``) still fit in 255.
NAME_BUDGET = 255 - len(".parts")
#: A section prefix longer than this (absurd nesting or child counts) is
#: replaced by ``x<ordinal>`` so the file name keeps room for its text.
_MAX_PREFIX = 128

RAW_SUFFIX = ".raw"
_EML = ".eml"
_PARTS = ".parts"


class MimeError(ProtocolError):
    """The server's BODYSTRUCTURE or a part's bytes make no sense."""


class DecodeError(MimeError):
    """A part's Content-Transfer-Encoding is unknown or its data is not in it."""


# --------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------


@dataclass
class BodyPart:
    """One node of the server's BODYSTRUCTURE, with decoded parameters.

    ``section`` is the IMAP part specifier.  Multipart containers carry the
    prefix their children extend ("" for the message's own top multipart);
    they are never fetched as files.
    """

    section: str
    maintype: str = "application"
    subtype: str = "octet-stream"
    params: dict[str, str] = field(default_factory=dict)
    disposition: str | None = None
    disp_params: dict[str, str] = field(default_factory=dict)
    encoding: str = "7bit"
    size: int = 0
    charset: str | None = None
    filename: str | None = None
    children: list[BodyPart] = field(default_factory=list)
    message: BodyPart | None = None
    subject: str | None = None

    @property
    def is_multipart(self) -> bool:
        return self.maintype == "multipart"


@dataclass
class PartEntry:
    """One name in a ``.parts`` directory.

    ``kind`` is ``"text"`` (text/* leaf, served decoded and as UTF-8),
    ``"binary"`` (other leaf, served decoded) or ``"message"`` (an attached
    message: ``name`` is its ``.eml`` file, ``dir_name`` the sibling
    directory whose listing is ``children``).
    """

    name: str
    section: str
    kind: str
    part: BodyPart
    children: list[PartEntry] = field(default_factory=list)

    @property
    def dir_name(self) -> str | None:
        """``<stem>.parts`` beside a message entry's ``<stem>.eml``; None otherwise."""
        if self.kind != "message":
            return None
        return self.name[: -len(_EML)] + _PARTS


def mime_type(part: BodyPart) -> str:
    """``maintype/subtype`` for the ``user.mime_type`` xattr.

    No charset parameter: a "text" file is always served as UTF-8.
    """
    return f"{part.maintype}/{part.subtype}"


def raw_name(entry: PartEntry) -> str:
    """Name under which a part that failed to decode is served undecoded."""
    return entry.name + RAW_SUFFIX


def lookup(entries: list[PartEntry], name: str) -> tuple[PartEntry, str] | None:
    """Resolve a name in a ``.parts`` listing.

    Returns ``(entry, form)`` with form ``"file"`` (decoded), ``"raw"``
    (:func:`raw_name`) or ``"dir"`` (a message's ``.parts``), else None.
    """
    for e in entries:
        if name == e.name:
            return e, "file"
        if name == e.name + RAW_SUFFIX:
            return e, "raw"
        if e.kind == "message" and name == e.dir_name:
            return e, "dir"
    return None


# --------------------------------------------------------------------------
# Text helpers: charsets, RFC 2047, RFC 2231
# --------------------------------------------------------------------------

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
    except Exception:  # LookupError, or odd names a search function rejects
        return ()
    if not getattr(info, "_is_text_encoding", True) or info.name in _REFUSED_CODECS:
        return ()
    return (info.name,)


#: Inputs are converted in pieces of this many bytes. The decoders run in a
#: worker thread (imapfs.parts), but a C call holds the GIL from start to end,
#: so one call over 20 MB would stall the trio loop anyway; pieces keep each
#: call to a few milliseconds. Every piecewise path gives what one call would.
STEP = 256 * 1024


def _pieces(data: bytes) -> list[bytes]:
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
        for piece in _pieces(data):
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
    if any(c.__name__ == "MultibyteIncrementalDecoder" for c in cls.__mro__):
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
        return b"".join(codecs.charmap_decode(p, "strict", _CP1252)[0].encode("utf-8") for p in _pieces(data))
    if len(data) <= STEP or not _piecewise(codec):
        return data.decode(codec).encode("utf-8")
    dec = codecs.getincrementaldecoder(codec)("strict")
    out = [dec.decode(p).encode("utf-8") for p in _pieces(data)]
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
    pieces = _pieces(data)
    for i, piece in enumerate(pieces):
        text = dec.decode(piece, i == len(pieces) - 1)
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
        except Exception:  # UnicodeError, or a codec's own surprises
            continue
    return _utf8_or_cp1252(data)


def _to_text(data: bytes, charset: str | None) -> str:
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
                out.append(_to_text(pending, pending_cs))
                pending, pending_cs = b"", None
            out.append(_cp1252_text(gap + m.group()))
        elif pending_cs is not None and not gap.strip(b" \t\r\n"):
            if cs == pending_cs:
                pending += data
            else:
                out.append(_to_text(pending, pending_cs))
                pending, pending_cs = data, cs
        else:
            if pending_cs is not None:
                out.append(_to_text(pending, pending_cs))
            out.append(_cp1252_text(gap))
            pending, pending_cs = data, cs
        pos = m.end()
    if pending_cs is not None:
        out.append(_to_text(pending, pending_cs))
    out.append(_cp1252_text(raw[pos:]))
    return "".join(out)


_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")
_PARAM_KEY = re.compile(r"([^*]+)\*(?:([0-9]{1,4})(\*?))?\Z")


def _as_bytes(value: Any) -> bytes | None:
    if isinstance(value, bytes):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode()
    return None


def _decode_params(value: Any) -> dict[str, str]:
    """A body-fld-param list → ``{lower-case key: decoded text}``.

    RFC 2231 (``name*``, continuations ``name*0*``/``name*1``, charset and
    percent-encoding) wins over a plain ``name`` of the same key; plain
    values get RFC 2047 decoding because real mailers put encoded words
    there.  Anything not a string pair is skipped.
    """
    if not isinstance(value, list):
        return {}
    plain: dict[str, bytes] = {}
    ext: dict[str, dict[int, tuple[bool, bytes]]] = {}
    for i in range(0, len(value) - 1, 2):
        k, v = _as_bytes(value[i]), _as_bytes(value[i + 1])
        if k is None or v is None:
            continue
        key = k.decode("latin-1").strip().lower()
        if not key:
            continue
        m = _PARAM_KEY.match(key)
        if m is None:
            plain.setdefault(key, v)
            continue
        base, idx, star = m.groups()
        segs = ext.setdefault(base, {})
        if idx is None:  # "name*": a single encoded value
            segs.setdefault(0, (True, v))
        else:
            segs.setdefault(int(idx), (star == "*", v))
    out = {k: decode_words(v).strip() for k, v in plain.items()}
    for base, segs in ext.items():
        charset: str | None = None
        data = b""
        for n, idx in enumerate(sorted(segs)):
            encoded, v = segs[idx]
            if encoded:
                if n == 0 and v.count(b"'") >= 2:
                    cs, _lang, v = v.split(b"'", 2)
                    charset = cs.decode("latin-1") or None
                v = _PERCENT.sub(lambda m: bytes([int(m.group(1), 16)]), v)
            data += v
        out[base] = _to_text(data, charset)
    return out


# --------------------------------------------------------------------------
# BODYSTRUCTURE
# --------------------------------------------------------------------------


def _lower(value: Any, default: str) -> str:
    b = _as_bytes(value)
    if b is None:
        return default
    text = b.decode("latin-1").strip().lower()
    return text or default


def _join(section: str, n: int) -> str:
    return f"{section}.{n}" if section else str(n)


def _disposition(value: Any) -> tuple[str | None, dict[str, str]]:
    """``("attachment" ("filename" "x"))``; a bare string or junk is tolerated."""
    if isinstance(value, list) and value:
        kind = _lower(value[0], "")
        params = _decode_params(value[1]) if len(value) > 1 else {}
        return kind or None, params
    b = _as_bytes(value)
    if b is not None:
        return _lower(b, "") or None, {}
    return None, {}


def _clean_filename(name: str | None) -> str | None:
    """Drop directory parts (Windows mailers send ``C:\\dir\\x.pdf``)."""
    if not name:
        return None
    name = re.split(r"[/\\]", name)[-1].strip()
    return name or None


def _opaque(section: str) -> BodyPart:
    """A part we cannot understand: served as its undecoded bytes."""
    return BodyPart(section=section, encoding="binary")


def _is_zero_part_multipart(value: list[Any]) -> bool:
    """``("mixed" ("boundary" "x") NIL NIL NIL)``: a multipart without parts.

    A single part has at least seven fields and a string subtype second.
    """
    return (len(value) <= 5 and _as_bytes(value[0]) is not None
            and (len(value) == 1 or value[1] is None or isinstance(value[1], list)))


def _looks_multipart(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and (
        isinstance(value[0], list) or _is_zero_part_multipart(value))


def _parse_body(value: Any, section: str, depth: int) -> BodyPart:
    """The body of a message whose own section is *section* ("" for the root).

    A multipart body shares the message's section (its children extend
    it); a single body is ``section.1`` (plain "1" for the root).
    """
    if depth <= MAX_DEPTH and _looks_multipart(value):
        return _parse(value, section, depth)
    return _parse(value, _join(section, 1), depth)


def _parse(value: Any, section: str, depth: int) -> BodyPart:
    """Parse one body; *section* is its own number (multipart: the prefix)."""
    if not isinstance(value, list) or not value or depth > MAX_DEPTH:
        return _opaque(section or "1")
    if isinstance(value[0], list):
        return _parse_multipart(value, section, depth)
    if _is_zero_part_multipart(value):
        return BodyPart(section=section, maintype="multipart", subtype=_lower(value[0], "mixed"),
                        params=_decode_params(value[1] if len(value) > 1 else None))
    return _parse_single(value, section or "1", depth)


def _parse_multipart(value: list[Any], section: str, depth: int) -> BodyPart:
    n = 0
    while n < len(value) and isinstance(value[n], list):
        n += 1
    rest = value[n:]
    part = BodyPart(section=section, maintype="multipart",
                    subtype=_lower(rest[0] if rest else None, "mixed"))
    part.params = _decode_params(rest[1] if len(rest) > 1 else None)
    part.disposition, part.disp_params = _disposition(rest[2] if len(rest) > 2 else None)
    part.children = [_parse(child, _join(section, i), depth + 1)
                     for i, child in enumerate(value[:n], 1)]
    return part


def _parse_single(value: list[Any], section: str, depth: int) -> BodyPart:
    f = value + [None] * max(0, 7 - len(value))
    maintype = _lower(f[0], "") if isinstance(f[0], bytes) else ""
    subtype = _lower(f[1], "") if isinstance(f[1], bytes) else ""
    if not maintype or not subtype or "/" in maintype + subtype:
        maintype, subtype = "application", "octet-stream"
    part = BodyPart(section=section, maintype=maintype, subtype=subtype)
    part.params = _decode_params(f[2])
    part.encoding = _lower(f[5], "7bit")
    part.size = f[6] if isinstance(f[6], int) and not isinstance(f[6], bool) else 0
    ext = 7  # where extension data starts for a basic part
    if (maintype == "message" and subtype in ("rfc822", "global")
            and len(value) > 8 and isinstance(value[7], list) and _is_body(value[8])):
        envelope = value[7]
        subject = _as_bytes(envelope[1]) if len(envelope) > 1 else None
        part.subject = decode_words(subject).strip() if subject is not None else None
        part.message = _parse_body(value[8], section, depth + 1)
        ext = 10  # envelope, body, lines
    elif maintype == "text" and len(value) > 7 and isinstance(value[7], int):
        ext = 8  # lines
    # extension data: md5, disposition, language, location
    part.disposition, part.disp_params = _disposition(
        value[ext + 1] if len(value) > ext + 1 else None)
    charset = part.params.get("charset", "").strip().strip("\"'").strip()
    part.charset = charset or None
    part.filename = (_clean_filename(part.disp_params.get("filename"))
                     or _clean_filename(part.params.get("name")))
    return part


def _is_body(value: Any) -> bool:
    return isinstance(value, list) and bool(value)


def parse_bodystructure(value: Any) -> BodyPart:
    """The BODYSTRUCTURE value (as :func:`imapfs.imapproto.parse` gives it) → tree.

    A single-part message is section "1"; a multipart message is a
    container with section "" whose children are "1", "2", …  A
    message/rfc822 part S holds its body in ``message``: a multipart body is
    a container with section S (children S.1, S.2, …), a single body is
    S.1.  Malformed parts degrade to ``application/octet-stream``; only a
    value that is not a non-empty list raises :class:`MimeError`.
    """
    if not isinstance(value, list) or not value:
        raise MimeError("BODYSTRUCTURE is not a list: %s" % repr(value)[:100])
    try:
        return _parse_body(value, "", 0)
    except MimeError:
        raise
    except Exception as exc:  # defensive: a shape nobody foresaw
        raise MimeError("cannot understand BODYSTRUCTURE: %s" % exc) from exc


# --------------------------------------------------------------------------
# .parts listing
# --------------------------------------------------------------------------

# Mail types whose extension mimetypes gets wrong, lacks, or varies on.
_EXTENSIONS = {
    "text/plain": ".txt",
    "text/html": ".html",
    "text/calendar": ".ics",
    "text/enriched": ".txt",
    "text/richtext": ".txt",
    "text/rfc822-headers": ".txt",
    "text/x-vcard": ".vcf",
    "text/vcard": ".vcf",
    "text/csv": ".csv",
    "text/x-diff": ".diff",
    "text/x-patch": ".patch",
    "message/rfc822": ".eml",
    "message/global": ".eml",
    "message/delivery-status": ".txt",
    "message/global-delivery-status": ".txt",
    "message/disposition-notification": ".txt",
    "message/global-disposition-notification": ".txt",
    "message/global-headers": ".txt",
    "message/feedback-report": ".txt",
    "application/pkcs7-signature": ".p7s",
    "application/x-pkcs7-signature": ".p7s",
    "application/pkcs7-mime": ".p7m",
    "application/x-pkcs7-mime": ".p7m",
    "application/pgp-signature": ".asc",
    "application/pgp-encrypted": ".asc",
    "application/pgp-keys": ".asc",
    "application/ics": ".ics",
    "application/ms-tnef": ".dat",
    "application/vnd.ms-tnef": ".dat",
    "application/octet-stream": ".bin",
    "application/x-zip-compressed": ".zip",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/pjpeg": ".jpg",
}


@functools.lru_cache(maxsize=1)
def _mimetypes() -> mimetypes.MimeTypes:
    """Python's built-in table only: a fresh MimeTypes ignores the entries of
    /etc/mime.types, so part names are the same on every machine."""
    return mimetypes.MimeTypes()


_EXT_RE = re.compile(r"\.[^.\s]{1,16}\Z")


def _extension(part: BodyPart) -> str:
    mt = mime_type(part)
    ext = _EXTENSIONS.get(mt)
    if ext is None:
        try:
            ext = _mimetypes().guess_extension(mt, strict=False)
        except Exception:
            ext = None
    if ext is None:
        ext = ".txt" if part.maintype == "text" else ".bin"
    return ext


def _default_name(part: BodyPart) -> str:
    if part.maintype == "text" and part.subtype == "plain":
        return "body.txt"
    if part.maintype == "text" and part.subtype == "html":
        return "body.html"
    return "part" + _extension(part)


def _fit(name: str, budget: int) -> str:
    """Sanitize *name* into *budget* bytes, keeping a short extension."""
    name = sanitize(name, 4096)
    if len(name.encode("utf-8")) <= budget:
        return name
    m = _EXT_RE.search(name)
    ext = m.group() if m and m.start() > 0 else ""
    stem_budget = budget - len(ext.encode("utf-8"))
    if ext and stem_budget >= 8:
        stem = sanitize(name[: -len(ext)], stem_budget)
        if stem:
            return stem + ext
    return sanitize(name, budget)


def _kind(part: BodyPart) -> str:
    if part.message is not None:
        return "message"
    return "text" if part.maintype == "text" else "binary"


def _leaf_name(part: BodyPart, kind: str, budget: int) -> str:
    if kind == "message":
        stem = part.subject or ""
        if not stem and part.filename:
            stem = re.sub(r"(?i)\.eml\Z", "", part.filename)
        stem = _fit(stem, budget - len(_EML)) or _fit("(no subject)", budget - len(_EML))
        return stem + _EML
    if part.filename:
        name = _fit(part.filename, budget)
        if name:
            return name
    return _default_name(part)


def _leaves(part: BodyPart, label: str, out: list[tuple[BodyPart, str]]) -> None:
    """Collect the files of a container: multipart children are flattened.

    *label* is the displayed section: each component is zero-padded to the
    width of its sibling count, so names sort in section order.
    """
    if part.is_multipart:
        width = len(str(len(part.children)))
        for i, child in enumerate(part.children, 1):
            num = str(i).zfill(width)
            _leaves(child, f"{label}.{num}" if label else num, out)
    else:
        out.append((part, label))


def _listing(body: BodyPart, label: str) -> list[PartEntry]:
    """The entries for a message whose body is *body* and displayed section *label*."""
    found: list[tuple[BodyPart, str]] = []
    if body.is_multipart:
        _leaves(body, label, found)
    else:
        found.append((body, f"{label}.1" if label else "1"))
    entries: list[PartEntry] = []
    for ordinal, (part, shown) in enumerate(found, 1):
        prefix = (shown if len(shown) <= _MAX_PREFIX else f"x{ordinal}") + "-"
        kind = _kind(part)
        name = prefix + _leaf_name(part, kind, NAME_BUDGET - len(prefix))
        entry = PartEntry(name=name, section=part.section, kind=kind, part=part)
        if part.message is not None:
            entry.children = _listing(part.message, shown)
        entries.append(entry)
    return entries


def list_entries(root: BodyPart) -> list[PartEntry]:
    """The listing of a message's ``.parts`` directory, in section order.

    One file per leaf, named ``<section>-<name>``; multipart containers are
    not files, their leaves carry full section numbers.  Names are unique
    (the section prefix), valid file names of at most :data:`NAME_BUDGET`
    bytes; see docs/parts.md for the rules.
    """
    return _listing(root, "")


# --------------------------------------------------------------------------
# Content-Transfer-Encoding
# --------------------------------------------------------------------------

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
    then decides. Equal to it wherever it answers (tests/test_mime.py)."""
    core = b"".join(p.translate(None, _B64_WS) for p in _pieces(data)).rstrip(b"=")
    n = len(core)
    if n % 4 == 1 or b"=" in core:
        return None
    whole = n - n % 4
    step = max(4, STEP - STEP % 4)  # whole groups per piece
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
    rest = b"".join(p.translate(None, _B64_CHARS) for p in _pieces(data))
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
    """*data* cut after line breaks into pieces of about :data:`STEP` bytes."""
    out, i, n = [], 0, len(data)
    while i < n:
        j = data.find(b"\n", i + STEP)
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
        return to_utf8(data, part.charset)
    return data



# --------------------------------------------------------------------------
# Cutting sections out of a whole message we already hold
# --------------------------------------------------------------------------


def _split_header(data: bytes) -> bytes:
    """The body after a MIME/RFC 5322 header (everything after the first empty line)."""
    if data.startswith(b"\r\n"):
        return data[2:]
    i = data.find(b"\r\n\r\n")
    return b"" if i < 0 else data[i + 4:]


def _split_multipart(body: bytes, boundary: str) -> list[bytes]:
    """The raw body parts (header + body) between delimiter lines (RFC 2046 §5.1.1).

    The CRLF before a delimiter belongs to the delimiter, not to the part.
    """
    delim = b"--" + boundary.encode("utf-8", "surrogateescape")
    # A delimiter starts a line: at the very start, or after CRLF.
    starts: list[tuple[int, int]] = []  # (start of CRLF or line, end of delimiter line)
    pos = 0
    while True:
        i = body.find(delim, pos)
        if i < 0:
            break
        at_line_start = i == 0 or body[i - 2:i] == b"\r\n"
        if at_line_start:
            eol = body.find(b"\r\n", i)
            end = len(body) if eol < 0 else eol + 2
            starts.append((i - 2 if i >= 2 else i, end, body[i + len(delim):i + len(delim) + 2] == b"--"))
        pos = i + len(delim)
    parts: list[bytes] = []
    for n, (_s, end, closing) in enumerate(starts):
        if closing:
            break
        nxt = starts[n + 1][0] if n + 1 < len(starts) else None
        if nxt is None:
            break  # no closing delimiter after the last part: leave it to the server
        parts.append(body[end:nxt])
    return parts


def _walk_sections(part: BodyPart, body: bytes, out: dict[str, bytes], depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        return
    if part.is_multipart:
        boundary = part.params.get("boundary")
        if not boundary:
            return
        chunks = _split_multipart(body, boundary)
        if len(chunks) != len(part.children):
            return  # we would number parts differently from the server
        for child, chunk in zip(part.children, chunks):
            _walk_sections(child, _split_header(chunk), out, depth + 1)
        return
    if len(body) != part.size:
        return  # not the server's idea of this part: fetch it instead
    out[part.section] = body
    if part.message is not None:
        _walk_sections(part.message, _split_header(body), out, depth + 1)


def split_sections(message: bytes, root: BodyPart) -> dict[str, bytes]:
    """``BODY[section]`` of the message's parts, cut from the whole message.

    Every part is checked against the size the server's BODYSTRUCTURE gives;
    a part that does not match (malformed MIME the server splits another
    way) is left out, and the caller fetches it from the server. So a small
    message costs no round trip per part, and nothing unverified is served.
    """
    out: dict[str, bytes] = {}
    try:
        _walk_sections(root, _split_header(message), out)
    except (ValueError, IndexError):  # pragma: no cover - defensive: never fail a listing here
        return {}
    return out
