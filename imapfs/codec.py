"""Folder names: IMAP modified UTF-7 and folder name <-> path components.

Pure functions, no I/O.  The filesystem lists folders with their wire
(mUTF-7) names, decodes them for display, and maps each hierarchy level to
one directory name (``map_folders``).  Distinct server names always get
distinct directory names: a name that is not canonical mUTF-7 (``AT&T``
sent raw, UTF-8 from a broken server) is shown as it is, with `` #raw``
appended, so it cannot take the place of the canonical folder it would
otherwise decode to.  A name typed for a new folder (``new_level``) must be
exactly the name it will be shown under, so what the user typed is what
the server gets and what the listing shows afterwards.

See docs/naming.md for the rules with examples.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "EMPTY_LEVEL",
    "MAX_COMPONENT_BYTES",
    "RAW_SUFFIX",
    "FolderPath",
    "NameTooLong",
    "canonical_decode",
    "decode_mutf7",
    "encode_mutf7",
    "escape_level",
    "folder_path",
    "folder_to_path",
    "is_canonical",
    "is_inbox",
    "map_folders",
    "new_level",
    "offline_level_ok",
    "path_to_folder",
    "raw_level",
    "unescape_level",
]

#: Largest file name (in UTF-8 bytes) Linux file systems and FUSE accept.
MAX_COMPONENT_BYTES = 255

#: Directory name standing for an empty hierarchy level (``a..b`` with
#: delimiter ``.``).  No other level escapes to it: a literal ``%`` always
#: becomes ``%25``.
EMPTY_LEVEL = "%%"

#: Appended to the directory name of a level whose server name is not
#: canonical mUTF-7 (see ``raw_level``).  A canonical level ending in it has
#: its ``#`` escaped, so the two can never meet.
RAW_SUFFIX = " #raw"


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


def canonical_decode(wire: bytes) -> str | None:
    """The decoded name if *wire* is the canonical mUTF-7 spelling of it, else None.

    Canonical: ASCII, strictly valid, and ``encode_mutf7`` of the result gives
    *wire* back.  Only such names can be shown decoded without the risk that
    another server name decodes to the same text.
    """
    try:
        text = wire.decode("ascii")
        decoded = _decode_mutf7_strict(text)
        if encode_mutf7(decoded) != text:
            return None
    except (ValueError, UnicodeError):
        return None
    return decoded


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

# A level that would look like a message or parts entry ("... #12.eml"), or
# like the directory name of a non-canonical server name ("... #raw").
# [0-9] and \Z rather than \d and $: \d matches non-ASCII digits and $
# matches before a trailing newline.
_COLLIDING_HASH = re.compile(r"#(?=[0-9]+\.(?:eml|parts)\Z)|(?<= )#(?=raw\Z)")

_UNESCAPES = {"%25": "%", "%2F": "/", "%00": "\x00", "%23": "#", "%2E": "."}
_ESCAPE_RE = re.compile(r"%(?:25|2F|00|23|2E)")
# A "%" that unescape_level would read as the start of an escape: only those
# are escaped, so "100%" stays "100%" (what a user types is what is shown).
_AMBIGUOUS_PERCENT = re.compile(r"%(?=25|2F|00|23|2E)")


def _utf8(text: str) -> bytes:
    """UTF-8 bytes as the kernel will see them (surrogate escapes are bytes)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def escape_level(level: str) -> str:
    """Turn one folder level into a valid, unambiguous directory name.

    Most levels are their own name.  ``/``->``%2F``, NUL->``%00``;
    ``.``/``..`` -> ``%2E``/``%2E%2E``; empty -> ``%%`` (and the level
    ``%%`` itself -> ``%25%``); a ``%`` only where it would otherwise read as
    one of these escapes (``%25``, ``%2F``, ``%00``, ``%23``, ``%2E``) ->
    ``%25``; the ``#`` of a trailing ``#<digits>.eml``/``.parts`` or `` #raw``
    -> ``%23`` so it cannot shadow a message or a non-canonical folder.
    Raises NameTooLong if the result exceeds 255 bytes of UTF-8.
    """
    if level == "":
        comp = EMPTY_LEVEL
    elif level == ".":
        comp = "%2E"
    elif level == "..":
        comp = "%2E%2E"
    elif level == EMPTY_LEVEL:
        comp = "%25%"
    else:
        comp = _AMBIGUOUS_PERCENT.sub("%25", level).replace("/", "%2F").replace("\x00", "%00")
        comp = _COLLIDING_HASH.sub("%23", comp)
    if len(_utf8(comp)) > MAX_COMPONENT_BYTES:
        raise NameTooLong(level, comp)
    return comp


def unescape_level(comp: str) -> str:
    """Inverse of escape_level; unknown or malformed ``%`` sequences stay as is.

    Only the exact upper-case escapes escape_level produces are decoded, so
    ``unescape_level(escape_level(x)) == x`` for every str.  Other ``%``
    sequences (``50%``, ``%41``) are taken literally.  A name that
    escape_level never produces (``%25`` alone: that level shows as ``%``)
    is not canonical (see ``is_canonical``).
    """
    if comp == EMPTY_LEVEL:
        return ""
    return _ESCAPE_RE.sub(lambda m: _UNESCAPES[m.group(0)], comp)


def is_canonical(comp: str) -> bool:
    """Whether *comp* is the name escape_level gives some level (so typing it means that level)."""
    try:
        _check_component(comp)
        return escape_level(unescape_level(comp)) == comp
    except ValueError:
        return False


def is_inbox(level: str) -> bool:
    """A spelling of INBOX (ASCII case-insensitive, RFC 3501 5.1)."""
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
    if is_inbox(levels[0]):
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


# --------------------------------------------------------------------------
# Server names (bytes, as LIST gives them) -> directory paths
# --------------------------------------------------------------------------

# A delimiter that cannot occur inside a base64 segment: the wire name can be
# split at it before decoding.
_UNSAFE_DELIMITERS = _MB64_ALPHABET | {"&", "-"}


@dataclass(frozen=True)
class FolderPath:
    """Where a server folder shows: its directory path, and the server name of each level.

    ``wires[i]`` is the server name of ``path[: i + 1]`` (the last one is the
    folder's own name), so a new sub-folder of an implied parent is named
    after the server's spelling of that parent, not a re-encoding of its
    directory name.
    """

    path: tuple[str, ...]
    wires: tuple[bytes, ...]


def raw_level(wire_level: bytes) -> str:
    """Directory name of a level whose server name is not canonical mUTF-7.

    The bytes as UTF-8 text where they are valid UTF-8; every other byte,
    and ``%``, ``/`` and NUL, as ``%XX`` (upper-case hex); then `` #raw``.
    Injective, and never equal to the name of a canonical level (those have
    the ``#`` of a trailing `` #raw`` escaped).  Raises NameTooLong beyond
    255 bytes.
    """
    out: list[str] = []
    for ch in wire_level.decode("utf-8", "surrogateescape"):
        if "\udc80" <= ch <= "\udcff":
            out.append("%%%02X" % (ord(ch) - 0xDC00))
        elif ch in "%/\x00":
            out.append("%%%02X" % ord(ch))
        else:
            out.append(ch)
    comp = "".join(out) + RAW_SUFFIX
    if len(_utf8(comp)) > MAX_COMPONENT_BYTES:
        raise NameTooLong(comp[: -len(RAW_SUFFIX)], comp)
    return comp


def _split_wire(wire: bytes, delimiter: str | None) -> list[bytes]:
    return [wire] if delimiter is None else wire.split(delimiter.encode("utf-8"))


def _join_prefixes(levels: list[bytes], delimiter: str | None) -> tuple[bytes, ...]:
    sep = b"" if delimiter is None else delimiter.encode("utf-8")
    return tuple(sep.join(levels[: i + 1]) for i in range(len(levels)))


def _all_raw(wire: bytes, delimiter: str | None) -> FolderPath:
    levels = _split_wire(wire, delimiter)
    return FolderPath(tuple(raw_level(lv) for lv in levels), _join_prefixes(levels, delimiter))


def folder_path(wire: bytes, delimiter: str | None) -> FolderPath:
    """Directory path of one server folder name, decided from that name alone.

    A canonical mUTF-7 name shows decoded (``folder_to_path``).  Otherwise the
    name is split at the delimiter and each level that is canonical on its
    own shows decoded, every other one as ``raw_level``; at least one level is
    raw, so the path differs from that of every canonical name.  Raises
    ValueError (NameTooLong) if a level's directory name would exceed 255 bytes.
    """
    if delimiter == "":
        raise ValueError("empty hierarchy delimiter")
    decoded = canonical_decode(wire)
    if decoded is not None:
        path = folder_to_path(decoded, delimiter)
        if delimiter is None:
            return FolderPath(path, (wire,))
        names = decoded.split(delimiter)
        wires = tuple(encode_mutf7(delimiter.join(names[: i + 1])).encode("ascii")
                      for i in range(len(names)))
        return FolderPath(path, wires)
    if delimiter is not None and delimiter in _UNSAFE_DELIMITERS:
        return _all_raw(wire, delimiter)
    levels = _split_wire(wire, delimiter)
    comps: list[str] = []
    any_raw = False
    for i, lv in enumerate(levels):
        text = canonical_decode(lv)
        if text is None:
            comps.append(raw_level(lv))
            any_raw = True
        elif i == 0 and is_inbox(text):
            comps.append("INBOX")
        else:
            comps.append(escape_level(text))
    if not any_raw:  # only with an unusual delimiter; still never a canonical name's path
        return _all_raw(wire, delimiter)
    return FolderPath(tuple(comps), _join_prefixes(levels, delimiter))


def map_folders(names: Iterable[tuple[bytes, str | None]]) -> tuple[dict[bytes, FolderPath], dict[bytes, str]]:
    """Paths for a LIST answer: ``(server name, delimiter)`` -> FolderPath, and the names left out with why.

    Every server name gets its own path, whatever order LIST gave them in.
    ``folder_path`` already keeps canonical and non-canonical names apart;
    what can still meet is two spellings of INBOX's children (``INBOX/x``
    and ``Inbox/x``, for a server that keeps them apart).  Then the name that
    is exactly what the path encodes to keeps the path and the others show
    with every level raw.  A name whose directory name would be too long is
    left out (the reason is returned for the log).
    """
    mapped: dict[bytes, FolderPath] = {}
    delims: dict[bytes, str | None] = {}
    refused: dict[bytes, str] = {}
    for wire, delimiter in names:
        if wire in mapped or wire in refused:
            continue
        try:
            mapped[wire] = folder_path(wire, delimiter)
            delims[wire] = delimiter
        except ValueError as e:
            refused[wire] = str(e)
    by_path: dict[tuple[str, ...], list[bytes]] = {}
    for wire, fp in mapped.items():
        by_path.setdefault(fp.path, []).append(wire)
    for path, wires in by_path.items():
        if len(wires) < 2:
            continue
        keep = min(wires)
        for w in sorted(wires):
            if _canonical_wire(path, delims[w]) == w:
                keep = w
                break
        for w in wires:
            if w == keep:
                continue
            try:
                mapped[w] = _all_raw(w, delims[w])
            except ValueError as e:
                del mapped[w]
                refused[w] = str(e)
    return mapped, refused


def _canonical_wire(path: Sequence[str], delimiter: str | None) -> bytes | None:
    """The canonical server name a directory path stands for (None if none)."""
    try:
        return encode_mutf7(path_to_folder(path, delimiter)).encode("ascii")
    except (ValueError, UnicodeError):
        return None


def new_level(comp: str, delimiter: str | None) -> bytes:
    """The server name (mUTF-7) of one new level, typed by a user as *comp*.

    Refuses (ValueError) anything that would not show as *comp* afterwards,
    so a mkdir or rename never makes a folder the user cannot see under the
    name they typed: an invalid component, a name imapfs never shows (``%25``
    is the escape of ``%``; a folder literally named ``%25`` shows as
    ``%2525``), an empty level (``%%``), a level holding the delimiter, a name
    ending in `` #raw`` or like a message file.  UnicodeEncodeError for lone
    surrogates (a file name that is not UTF-8).
    """
    _check_component(comp)
    level = unescape_level(comp)
    if level == "":
        raise ValueError("an empty hierarchy level cannot be created")
    if delimiter is not None and delimiter in level:
        raise ValueError(f"the server uses {delimiter!r} to separate folder levels")
    shown = escape_level(level)
    if shown != comp:
        raise ValueError(f"a folder named like this would show as {shown!r}")
    return encode_mutf7(level).encode("ascii")


_OFFLINE_PUNCT = frozenset(" -_")


def offline_level_ok(comp: str) -> bool:
    """Whether a folder level may be created while the server is away.

    Servers differ on which names they refuse (Dovecot's Maildir++ layout
    refuses any ``.``, a leading ``~`` outside full filesystem access), and
    only the server can say.  A folder made offline is taken for real: files
    go into it and are journaled.  So offline, a name must be one every server
    keeps: letters, digits, and inner spaces, ``-`` and ``_``.  Other names
    wait for the server (docs/offline.md).
    """
    if not comp or not comp[0].isalnum() or not comp[-1].isalnum():
        return False
    return all(ch.isalnum() or ch in _OFFLINE_PUNCT for ch in comp)
