"""Folder names: IMAP modified UTF-7 and folder name <-> path components.

Pure functions, no I/O.  The filesystem lists folders with their wire
(mUTF-7) names, decodes them for display, and maps each hierarchy level to
one directory name.  Every mapping here is reversible so a path the kernel
hands back can be turned into the exact folder name again.

See docs/naming.md for the rules with examples.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence

__all__ = [
    "EMPTY_LEVEL",
    "MAX_COMPONENT_BYTES",
    "NameTooLong",
    "decode_mutf7",
    "encode_mutf7",
    "escape_level",
    "folder_to_path",
    "path_to_folder",
    "unescape_level",
]

#: Largest file name (in UTF-8 bytes) Linux file systems and FUSE accept.
MAX_COMPONENT_BYTES = 255

#: Directory name standing for an empty hierarchy level (``a..b`` with
#: delimiter ``.``).  No other level escapes to it: a literal ``%`` always
#: becomes ``%25``.
EMPTY_LEVEL = "%%"


class NameTooLong(ValueError):
    """A folder level's escaped name exceeds 255 bytes of UTF-8.

    A name cannot be shortened reversibly, so the caller decides (normally:
    log and leave the folder out of the listing).
    """

    def __init__(self, level: str, component: str) -> None:
        self.level = level
        self.component = component
        size = len(_utf8(component))
        super().__init__(
            f"folder level escapes to {size} bytes (> {MAX_COMPONENT_BYTES}): {level[:40]!r}..."
        )


# --------------------------------------------------------------------------
# Modified UTF-7 (RFC 3501 section 5.1.3)
# --------------------------------------------------------------------------

_MB64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")


def _is_direct(ch: str) -> bool:
    """Printable US-ASCII represents itself (``&`` is special-cased by callers)."""
    return "\x20" <= ch <= "\x7e"


def encode_mutf7(name: str) -> str:
    """Encode a Unicode folder name for the wire.

    Each maximal run of non-printable-ASCII characters becomes one base64
    segment, which is the shortest (and only canonical) form.  Raises
    ``UnicodeEncodeError`` for lone surrogates (e.g. a surrogate-escaped
    file name from the kernel): such a name has no UTF-16 form.
    """
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            raw = "".join(run).encode("utf-16-be")
            b64 = base64.b64encode(raw).rstrip(b"=").replace(b"/", b",")
            out.append("&" + b64.decode("ascii") + "-")
            run.clear()

    for ch in name:
        if _is_direct(ch):
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def _decode_segment(seg: str) -> str:
    """Decode one ``&...-`` body strictly; raise ValueError if malformed."""
    if not set(seg) <= _MB64_ALPHABET:
        raise ValueError("character outside modified base64")
    # 16-bit units: 3, 6 or 8 characters per 1, 2 or 3 units (mod 8).
    if len(seg) % 8 not in (0, 3, 6):
        raise ValueError("segment length is not a whole number of UTF-16 units")
    std = seg.replace(",", "/")
    raw = base64.b64decode(std + "=" * (-len(std) % 4), validate=True)
    # Non-zero padding bits make a second spelling of the same text.
    if base64.b64encode(raw).rstrip(b"=").decode("ascii") != std:
        raise ValueError("non-zero padding bits")
    text = raw.decode("utf-16-be")  # strict: unpaired surrogates raise
    if any(_is_direct(ch) for ch in text):
        raise ValueError("printable ASCII inside base64 (non-shortest)")
    return text


def _decode_mutf7_strict(name: str) -> str:
    out: list[str] = []
    i = 0
    prev_segment = False  # last token was a non-empty base64 segment
    while i < len(name):
        ch = name[i]
        if ch == "&":
            end = name.find("-", i + 1)
            if end < 0:
                raise ValueError("unterminated '&'")
            seg = name[i + 1 : end]
            if seg:
                if prev_segment:
                    raise ValueError("adjacent base64 segments (non-shortest)")
                out.append(_decode_segment(seg))
                prev_segment = True
            else:
                out.append("&")
                prev_segment = False
            i = end + 1
        elif _is_direct(ch):
            out.append(ch)
            prev_segment = False
            i += 1
        else:
            raise ValueError("character that must be base64-encoded")
    return "".join(out)


def decode_mutf7(name: str) -> str:
    """Decode a wire folder name; return it unchanged if it is not valid mUTF-7.

    Tolerant so a badly named folder (or a server sending raw UTF-8) still
    shows up.  Note that such a name does not survive ``encode_mutf7`` again:
    callers must keep the wire name they got from LIST to address it.
    """
    try:
        return _decode_mutf7_strict(name)
    except ValueError:  # includes binascii.Error and UnicodeDecodeError
        return name


# --------------------------------------------------------------------------
# Folder name <-> path components
# --------------------------------------------------------------------------

# A level that would look like a message or parts entry ("... #12.eml").
# [0-9] and \Z rather than \d and $: \d matches non-ASCII digits and $
# matches before a trailing newline.
_COLLIDING_HASH = re.compile(r"#(?=[0-9]+\.(?:eml|parts)\Z)")

_UNESCAPES = {"%25": "%", "%2F": "/", "%00": "\x00", "%23": "#", "%2E": "."}
_ESCAPE_RE = re.compile(r"%(?:25|2F|00|23|2E)")


def _utf8(text: str) -> bytes:
    """UTF-8 bytes as the kernel will see them (surrogate escapes are bytes)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def escape_level(level: str) -> str:
    """Turn one folder level into a valid, unambiguous directory name.

    ``%``->``%25``, ``/``->``%2F``, NUL->``%00``; ``.``/``..`` ->
    ``%2E``/``%2E%2E``; empty -> ``%%``; the ``#`` of a trailing
    ``#<digits>.eml``/``.parts`` -> ``%23`` so it cannot shadow a message.
    Raises NameTooLong if the result exceeds 255 bytes of UTF-8.
    """
    if level == "":
        comp = EMPTY_LEVEL
    elif level == ".":
        comp = "%2E"
    elif level == "..":
        comp = "%2E%2E"
    else:
        comp = level.replace("%", "%25").replace("/", "%2F").replace("\x00", "%00")
        comp = _COLLIDING_HASH.sub("%23", comp)
    if len(_utf8(comp)) > MAX_COMPONENT_BYTES:
        raise NameTooLong(level, comp)
    return comp


def unescape_level(comp: str) -> str:
    """Inverse of escape_level; unknown or malformed ``%`` sequences stay as is.

    Only the exact upper-case escapes escape_level produces are decoded, so
    ``unescape_level(escape_level(x)) == x`` for every str.  Other names
    (e.g. ``50%``) are taken literally; they are not canonical, i.e.
    ``escape_level(unescape_level(c)) != c``, which callers can check to
    refuse aliases on lookup.
    """
    if comp == EMPTY_LEVEL:
        return ""
    return _ESCAPE_RE.sub(lambda m: _UNESCAPES[m.group(0)], comp)


def _is_inbox(level: str) -> bool:
    # ASCII-only comparison: IMAP's case-insensitivity of INBOX is ASCII.
    return level.isascii() and level.upper() == "INBOX"


def folder_to_path(decoded_name: str, delimiter: str | None) -> tuple[str, ...]:
    """Split a decoded folder name into escaped directory names.

    With ``delimiter=None`` (flat namespace) the whole name is one level.
    A first level spelled ``inbox`` in any case becomes ``INBOX``: RFC 3501
    makes that name case-insensitive, so all spellings are one folder.
    Raises NameTooLong for a level longer than 255 bytes once escaped.
    """
    if delimiter == "":
        raise ValueError("empty hierarchy delimiter")
    levels = [decoded_name] if delimiter is None else decoded_name.split(delimiter)
    if _is_inbox(levels[0]):
        levels[0] = "INBOX"
    return tuple(escape_level(level) for level in levels)


def _check_component(comp: str) -> None:
    if comp in ("", ".", "..") or "/" in comp or "\x00" in comp:
        raise ValueError(f"not a valid path component: {comp!r}")


def path_to_folder(components: Sequence[str], delimiter: str | None) -> str:
    """Join directory names back into the decoded folder name.

    Raises ValueError for something that cannot name a folder: no
    components, several components in a flat namespace, an invalid
    component, or a level containing the delimiter (``mkdir a.b`` with
    delimiter ``.`` would silently create two levels).
    """
    if isinstance(components, str):
        raise TypeError("components must be a sequence of str, not a str")
    if not components:
        raise ValueError("the root is not a folder")
    if delimiter == "":
        raise ValueError("empty hierarchy delimiter")
    for comp in components:
        _check_component(comp)
    levels = [unescape_level(comp) for comp in components]
    if delimiter is None:
        if len(levels) != 1:
            raise ValueError("flat namespace: folders have no sub-folders")
        return levels[0]
    for level in levels:
        if delimiter in level:
            raise ValueError(f"folder level {level!r} contains the delimiter {delimiter!r}")
    return delimiter.join(levels)
