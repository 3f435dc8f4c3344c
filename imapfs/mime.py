"""MIME parts of a message: BODYSTRUCTURE → part tree → ``.parts`` listing.

Pure functions, no I/O.  The tree comes from the server's BODYSTRUCTURE and
never from parsing the message here, because the section numbers we fetch
with (``BODY.PEEK[2.1]``, ``BINARY.PEEK[2.1]``) must be the server's own.
Servers are buggy or hostile, so every shape is checked: a part that cannot
be understood becomes ``application/octet-stream`` rather than failing the
message, and nothing but :class:`MimeError` ever leaves this module.

This module is the part tree only: its types, the listing and its names,
lookup, and cutting a message we already hold into its sections.  Turning a
part's bytes into what its file shows is :mod:`imapfs.transfer` (which
imports this module), and charsets and RFC 2047 words are
:mod:`imapfs.charset` (which this module imports for parameters and
subjects).

See docs/parts.md for the naming rules with examples.
"""

from __future__ import annotations

import functools
import mimetypes
import re
from dataclasses import dataclass, field
from typing import Any

from .charset import decode_words, to_text
from .errors import ProtocolError
from .naming import sanitize

__all__ = [
    "MAX_DEPTH",
    "NAME_BUDGET",
    "RAW_SUFFIX",
    "BodyPart",
    "MimeError",
    "PartEntry",
    "list_entries",
    "lookup",
    "mime_type",
    "parse_bodystructure",
    "raw_name",
    "split_sections",
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
# BODYSTRUCTURE parameters: RFC 2231 (and RFC 2047 in plain values)
# --------------------------------------------------------------------------

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
        out[base] = to_text(data, charset)
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
        except Exception:  # noqa: BLE001 - a type the mimetypes tables choke on gets the generic one
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
# Cutting sections out of a whole message we already hold
# --------------------------------------------------------------------------


def _split_header(data: bytes, start: int, end: int) -> int:
    """Where the body starts after a MIME/RFC 5322 header in ``data[start:end]`` (after
    the first empty line); *end* if there is none."""
    if data.startswith(b"\r\n", start, end):
        return start + 2
    i = data.find(b"\r\n\r\n", start, end)
    return end if i < 0 else i + 4


def _split_multipart(body: bytes, start: int, end: int, boundary: str, most: int) -> list[tuple[int, int]]:
    """The raw body parts (header + body) between delimiter lines of ``body[start:end]``
    (RFC 2046 §5.1.1), as (start, end) offsets into *body*; at most *most* + 1 of them.

    The CRLF before a delimiter belongs to the delimiter, not to the part. Offsets, not
    slices: each level of a 3 MB message copied it once more (issue 12, stop 18). The
    caller wants exactly *most* parts (BODYSTRUCTURE's count), so delimiter lines past
    *most* + 2 change nothing it uses: a hostile body of 40,000 of them took 37 ms per
    256 KiB, now cut on the loop (``parts.SMALL_SCAN``).
    """
    delim = b"--" + boundary.encode("utf-8", "surrogateescape")
    # A delimiter starts a line: at the very start, or after CRLF.
    starts: list[tuple[int, int, bool]] = []  # (start of CRLF or line, end of delimiter line, closing)
    pos = start
    while True:
        i = body.find(delim, pos, end)
        if i < 0:
            break
        at_line_start = i == start or (i >= start + 2 and body.startswith(b"\r\n", i - 2))
        if at_line_start:
            eol = body.find(b"\r\n", i, end)
            line_end = end if eol < 0 else eol + 2
            after = i + len(delim)
            closing = after + 2 <= end and body.startswith(b"--", after)
            starts.append((i - 2 if i >= start + 2 else i, line_end, closing))
            if len(starts) >= most + 2:
                break  # enough to tell whether there are exactly *most* parts
        pos = i + len(delim)
    parts: list[tuple[int, int]] = []
    for n, (_s, line_end, closing) in enumerate(starts):
        if closing:
            break
        nxt = starts[n + 1][0] if n + 1 < len(starts) else None
        if nxt is None:
            break  # no closing delimiter after the last part: leave it to the server
        parts.append((line_end, max(line_end, nxt)))
    return parts


def _walk_sections(part: BodyPart, data: bytes, start: int, end: int, out: dict[str, bytes],
                   depth: int = 0) -> None:
    """Cut *part*, whose body is ``data[start:end]``, into *out*; each section is sliced once."""
    if depth > MAX_DEPTH:
        return
    if part.is_multipart:
        boundary = part.params.get("boundary")
        if not boundary:
            return
        chunks = _split_multipart(data, start, end, boundary, len(part.children))
        if len(chunks) != len(part.children):
            return  # we would number parts differently from the server
        for child, (cs, ce) in zip(part.children, chunks):
            _walk_sections(child, data, _split_header(data, cs, ce), ce, out, depth + 1)
        return
    if end - start != part.size:
        return  # not the server's idea of this part: fetch it instead
    out[part.section] = data[start:end]
    if part.message is not None:
        _walk_sections(part.message, data, _split_header(data, start, end), end, out, depth + 1)


def split_sections(message: bytes, root: BodyPart) -> dict[str, bytes]:
    """``BODY[section]`` of the message's parts, cut from the whole message.

    Every part is checked against the size the server's BODYSTRUCTURE gives;
    a part that does not match (malformed MIME the server splits another
    way) is left out, and the caller fetches it from the server. So a small
    message costs no round trip per part, and nothing unverified is served.
    """
    out: dict[str, bytes] = {}
    try:
        _walk_sections(root, message, _split_header(message, 0, len(message)), len(message), out)
    except (ValueError, IndexError):  # pragma: no cover - defensive: never fail a listing here
        return {}
    return out
