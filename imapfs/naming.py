"""Message file names: ``YYYY-MM-DD_HHMM Subject #UID.eml`` and ``.…#UID.parts``.

Pure functions, no I/O.  A name sorts by date in a file manager, reads like
the subject, is stable across remounts (INTERNALDATE and UID never change)
and ends in ``#UID`` so ``lookup`` can resolve it without listing the folder.

See docs/naming.md for the rules with examples.
"""

from __future__ import annotations

import base64
import codecs
import datetime
import re
import unicodedata

__all__ = [
    "ELLIPSIS",
    "EML_SUFFIX",
    "MAX_NAME_BYTES",
    "MAX_UID",
    "NO_SUBJECT",
    "PARTS_PREFIX",
    "PARTS_SUFFIX",
    "SLASH_REPLACEMENT",
    "decode_subject",
    "message_name",
    "message_stem",
    "parse_message_name",
    "parts_name",
    "parts_names",
    "sanitize",
]

MAX_NAME_BYTES = 255
MAX_UID = 2**32 - 1
EML_SUFFIX = ".eml"
PARTS_SUFFIX = ".parts"
#: A folder lists a message's parts as a dot-name, so ``ls -l`` (5 getxattr per
#: message with them, 2 without) and backups skip them (docs/performance.md, issue 12).
PARTS_PREFIX = "."
NO_SUBJECT = "(no subject)"
#: ``/`` cannot appear in a file name; DIVISION SLASH looks the same.
SLASH_REPLACEMENT = "\u2215"
ELLIPSIS = "\u2026"

_MESSAGE_NAME = re.compile(r"#([1-9][0-9]{0,9})\.(eml|parts)\Z")

# --------------------------------------------------------------------------
# sanitize
# --------------------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# Bidi embeddings/overrides/isolates can make "gpj.exe" display as "exe.jpg".
_BIDI_CONTROL = re.compile("[\u202a-\u202e\u2066-\u2069]")


def _char_bytes(ch: str) -> int:
    o = ord(ch)
    return 1 if o < 0x80 else 2 if o < 0x800 else 3 if o < 0x10000 else 4


def _utf8_len(text: str) -> int:
    """UTF-8 length, lone surrogates counted as 3 bytes (as _char_bytes does), at C speed."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _is_regional_indicator(ch: str) -> bool:
    return "\U0001f1e6" <= ch <= "\U0001f1ff"


def _continues_cluster(text: str, i: int) -> bool:
    """Whether text[i] belongs to the same user-perceived character as text[i-1].

    An approximation of extended grapheme clusters (UAX #29) good enough to
    avoid cutting off accents, emoji modifiers, ZWJ sequences and flags.
    """
    ch, prev = text[i], text[i - 1]
    if unicodedata.category(ch) in ("Mn", "Mc", "Me"):  # incl. variation selectors
        return True
    if ch == "\u200d" or prev == "\u200d":  # zero width joiner
        return True
    if "\U0001f3fb" <= ch <= "\U0001f3ff" or "\U000e0020" <= ch <= "\U000e007f":
        return True  # emoji skin tone modifiers, emoji tag sequences
    if _is_regional_indicator(ch) and _is_regional_indicator(prev):
        run = 0
        j = i - 1
        while j >= 0 and _is_regional_indicator(text[j]):
            run += 1
            j -= 1
        return run % 2 == 1  # flags are pairs: ch completes an odd run
    return False


def _cut(text: str, max_bytes: int) -> str:
    """Longest prefix within max_bytes that does not split a character cluster."""
    total = 0
    for i, ch in enumerate(text):  # noqa: B007 - i is used after the loop
        total += _char_bytes(ch)
        if total > max_bytes:
            break
    else:
        return text
    j = i
    while j > 0 and _continues_cluster(text, j):
        j -= 1
    # One cluster larger than the budget: fall back to a code point boundary.
    return text[: j or i]


def _clean(text: str) -> str:
    ascii_ = text.isascii()  # no surrogate or bidi control, and already NFC: skip those steps
    if not ascii_:
        text = _SURROGATE.sub("\ufffd", text)
        text = unicodedata.normalize("NFC", text)
    text = text.replace("/", SLASH_REPLACEMENT)
    if not ascii_:
        text = _BIDI_CONTROL.sub("", text)
    text = _CONTROL.sub(" ", text)
    text = " ".join(text.split())
    return text.lstrip(". ")


def sanitize(text: str, max_bytes: int) -> str:
    """Make text usable inside a file name of at most max_bytes UTF-8 bytes.

    NFC; ``/`` -> ``∕`` (U+2215, keeps the look); C0/DEL/C1 controls ->
    space; bidi override/isolate controls dropped (spoofing); whitespace runs
    -> one space; leading dots and spaces stripped (no hidden files, never
    ``.``/``..``); lone surrogates -> U+FFFD (always encodable); truncated
    on a character-cluster boundary.  May return "" - callers substitute.
    """
    if max_bytes < 0:
        raise ValueError("max_bytes must be >= 0")
    return _cut(_clean(text), max_bytes).rstrip(" ")


# --------------------------------------------------------------------------
# Message names
# --------------------------------------------------------------------------


def _check_uid(uid: int) -> None:
    if isinstance(uid, bool) or not isinstance(uid, int) or not 1 <= uid <= MAX_UID:
        raise ValueError(f"not an IMAP UID (1..2**32-1): {uid!r}")


def _utc(when: datetime.datetime) -> datetime.datetime:
    """INTERNALDATE in UTC so the name does not depend on the local zone.

    A naive datetime is taken to be UTC already.
    """
    # Naive, already UTC (the tree's dates: checked first, it is the cheap test), or no offset.
    if when.tzinfo is None or when.tzinfo is datetime.timezone.utc or when.utcoffset() is None:
        return when
    try:
        return when.astimezone(datetime.timezone.utc)
    except OverflowError:  # year 1 / 9999 at the edge: keep the wall clock
        return when.replace(tzinfo=None)


def message_stem(uid: int, internaldate: datetime.datetime, subject: str) -> str:
    """``YYYY-MM-DD_HHMM <subject> #<uid>`` (UTC), sized so ``.<stem>.parts`` fits 255 bytes.

    A too long subject is cut on a character-cluster boundary and ends with
    ``…``; an empty one becomes ``(no subject)``.
    """
    _check_uid(uid)
    t = _utc(internaldate)
    prefix = "%04d-%02d-%02d_%02d%02d " % (t.year, t.month, t.day, t.hour, t.minute)  # faster than an f-string
    suffix = f" #{uid}"
    budget = MAX_NAME_BYTES - len(PARTS_PREFIX) - len(PARTS_SUFFIX) - len(prefix) - len(suffix)  # all ASCII
    text = _clean(subject or "")
    if _utf8_len(text) > budget:
        text = _cut(text, budget - len(ELLIPSIS.encode())).rstrip(" ") + ELLIPSIS
    return prefix + (text or NO_SUBJECT) + suffix


def message_name(uid: int, internaldate: datetime.datetime, subject: str) -> str:
    """File name of the message itself: stem + ``.eml``."""
    return message_stem(uid, internaldate, subject) + EML_SUFFIX


def parts_name(uid: int, internaldate: datetime.datetime, subject: str) -> str:
    """Directory beside the message holding its MIME parts: ``.`` + stem + ``.parts``.

    Listed under this dot-name; stem + ``.parts`` resolves to it too (unlisted).
    """
    return PARTS_PREFIX + message_stem(uid, internaldate, subject) + PARTS_SUFFIX


def parts_names(stem: str) -> tuple[str, str]:
    """(listed, unlisted) names of a message's parts directory: ``.STEM.parts``, ``STEM.parts``."""
    return PARTS_PREFIX + stem + PARTS_SUFFIX, stem + PARTS_SUFFIX


def parse_message_name(name: str) -> tuple[int, str] | None:
    """(uid, "eml"|"parts") from a name ending in ``#<uid>.eml``/``.parts``, else None.

    Only the suffix is read so lookup works without listing; the caller should
    still compare the whole name with the canonical one to refuse aliases.
    Leading zeros and UIDs outside 1..2**32-1 are rejected: one UID, one name.
    """
    m = _MESSAGE_NAME.search(name)
    if m is None:
        return None
    uid = int(m.group(1))
    if uid > MAX_UID:
        return None
    return uid, m.group(2)


# --------------------------------------------------------------------------
# Subject decoding
# --------------------------------------------------------------------------

# Servers return the field as sent, so allow obsolete WSP before the colon.
_SUBJECT_FIELD = re.compile(rb"^subject[ \t]*:", re.IGNORECASE | re.MULTILINE)
_LINE_BREAK = re.compile(rb"\r?\n")

# RFC 2047 encoded word, with an optional RFC 2231 language (=?utf-8*en?Q?..?=).
# Empty encoded text is tolerated (seen in the wild: =?UTF-8?B??=).
_ENCODED_WORD = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([QqBb])\?([^?\s]*)\?=")
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_HEX = frozenset(b"0123456789ABCDEFabcdef")

# Labels that real mail uses for a superset encoding (as browsers do).
_CHARSET_ALIASES = {
    "us-ascii": "cp1252",
    "ascii": "cp1252",
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "windows-1252": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "tis-620": "cp874",
}
# Text codecs that are not character sets; "unicode_escape" would let a
# sender inject any code point.
_REFUSED_CODECS = frozenset(
    {"unicode-escape", "raw-unicode-escape", "undefined", "idna", "punycode", "mbcs", "oem"}
)


def _cp1252_table() -> tuple[str, ...]:
    table = []
    for b in range(256):
        try:
            table.append(bytes([b]).decode("cp1252"))
        except UnicodeDecodeError:  # 0x81 0x8D 0x8F 0x90 0x9D: latin-1
            table.append(chr(b))
    return tuple(table)


_CP1252 = _cp1252_table()
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def _decode_utf8_or_cp1252(data: bytes) -> str:
    """UTF-8 where valid, each other byte as windows-1252 (else latin-1).

    windows-1252 rather than plain latin-1 because raw 8-bit headers mostly
    come from Windows clients, whose quotes and euro sign would otherwise
    turn into C1 controls.
    """
    if data.isascii():  # the common case: nothing to fall back on
        return data.decode("ascii")
    text = data.decode("utf-8", "surrogateescape")
    return _ESCAPED_BYTE.sub(lambda m: _CP1252[ord(m.group()) - 0xDC00], text)


def _lookup_charset(charset: str) -> str | None:
    name = charset.strip().lower()
    name = _CHARSET_ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except Exception:  # noqa: BLE001 - LookupError, or odd names the search functions reject
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _REFUSED_CODECS:
        return None
    return info.name


def _decode_charset(data: bytes, codec: str) -> str:
    if codec == "utf-8":
        return _decode_utf8_or_cp1252(data)
    if codec == "cp1252":
        return "".join(_CP1252[b] for b in data)
    return data.decode(codec, "replace")


def _q_decode(text: str) -> bytes | None:
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        return None
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == 0x5F:  # "_"
            out.append(0x20)
        elif c == 0x3D and i + 2 < len(raw) and raw[i + 1] in _HEX and raw[i + 2] in _HEX:
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
            continue
        else:
            out.append(c)  # a stray "=" is kept literally
        i += 1
    return bytes(out)


def _b_decode(text: str) -> bytes | None:
    if not _BASE64_TEXT.fullmatch(text):
        return None
    core = text.rstrip("=")
    if len(core) % 4 == 1:
        return None
    # Missing or short padding is common and harmless; accept it.
    return base64.b64decode(core + "=" * (-len(core) % 4))


def _decode_encoded_words(text: str) -> str:
    """Replace RFC 2047 encoded words; broken ones stay as literal text.

    Whitespace between two encoded words is dropped (RFC 2047 section 6.2),
    and the bytes of adjacent words in one charset are joined before
    decoding so a character split across words survives.
    """
    if "=?" not in text:  # no encoded word can start: most subjects (cheap, issue 12)
        return text
    out: list[str] = []
    pending: list[bytes] = []  # bytes of adjacent decodable words...
    pending_codec: str | None = None  # ...all in this codec
    pos = 0

    def flush() -> None:
        nonlocal pending_codec
        if pending_codec is not None:
            out.append(_decode_charset(b"".join(pending), pending_codec))
            pending.clear()
            pending_codec = None

    for m in _ENCODED_WORD.finditer(text):
        charset, encoding, payload = m.groups()
        codec = _lookup_charset(charset)
        data = None
        if codec is not None:
            data = _b_decode(payload) if encoding in "Bb" else _q_decode(payload)
        gap = text[pos : m.start()]
        if data is None:  # broken word: literal text
            flush()
            out.append(gap + m.group(0))
        else:
            if pending_codec is None or gap.strip(" \t") != "":
                flush()
                out.append(gap)
            elif codec != pending_codec:
                flush()  # the gap between two words is dropped either way
            pending.append(data)
            pending_codec = codec
        pos = m.end()
    flush()
    out.append(text[pos:])
    return "".join(out)


def _subject_value(raw: bytes) -> bytes | None:
    """The unfolded value of the first Subject field, or None."""
    m = _SUBJECT_FIELD.search(raw)
    if m is None:
        return None
    start = m.end()
    end = raw.find(b"\n", start)
    if end < 0:
        return raw[start:]
    if raw[end + 1 : end + 2] not in (b" ", b"\t"):  # not folded: the common case, without a split
        return raw[start : end - 1] if end > start and raw[end - 1] == 0x0D else raw[start:end]
    lines = _LINE_BREAK.split(raw[start:])
    value = [lines[0]]
    for line in lines[1:]:
        if not line.startswith((b" ", b"\t")):
            break
        value.append(line)  # unfolding removes the line break, keeps the WSP
    return b"".join(value)


def decode_subject(raw: bytes | None) -> str:
    """The subject from a ``BODY.PEEK[HEADER.FIELDS (SUBJECT)]`` response.

    Takes the first Subject field, unfolds it, reads raw 8-bit as UTF-8
    (RFC 6532) falling back per byte, and decodes RFC 2047 words.  Never
    raises: a header this cannot make sense of is shown as literally as
    possible, because one odd message must not break a folder listing.
    Returns "" when there is no subject; the result is not yet sanitized.
    """
    if not raw:
        return ""
    try:
        value = _subject_value(bytes(raw))
        if value is None:
            return ""
        text = _decode_encoded_words(_decode_utf8_or_cp1252(value))
    except Exception:  # noqa: BLE001 - defensive: codecs are many and varied
        try:
            text = _decode_utf8_or_cp1252(bytes(raw))
        except Exception:  # noqa: BLE001 - a subject that cannot be read is shown empty
            return ""
    # Some codecs (utf-7, utf-16 with "replace") can yield lone surrogates.
    if not text.isascii():
        text = _SURROGATE.sub("\ufffd", text)
    return text.strip(" \t\r\n")
