"""Tests for imapfs.codec: modified UTF-7 and folder name <-> path mapping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imapfs.codec import (
    EMPTY_LEVEL,
    MAX_COMPONENT_BYTES,
    NameTooLong,
    decode_mutf7,
    encode_mutf7,
    escape_level,
    folder_to_path,
    path_to_folder,
    unescape_level,
)

# --------------------------------------------------------------------------
# Modified UTF-7
# --------------------------------------------------------------------------

MUTF7_VECTORS = [
    ("", ""),
    ("INBOX", "INBOX"),
    ("&-", "&"),
    ("Tom &- Jerry", "Tom & Jerry"),
    ("&-&-", "&&"),
    ("Entw&APw-rfe", "Entwürfe"),
    ("~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/台北/日本語"),
    ("&AMk-t&AOk-", "Été"),
    ("&AMk-&-", "É&"),
    ("&2D3eAA-", "😀"),  # non-BMP: one surrogate pair
    ("Fotos &2D3c+Ng93Pg-", "Fotos 📸📸"),
    ("&2D3c+Ng93Pg-", "📸📸"),
    ("&2D3eAA- &2D3eAA-", "😀 😀"),
    ("&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-", "Отправленные"),
    ("[Gmail]/&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-", "[Gmail]/Отправленные"),
    ("&AAk-", "\t"),  # controls are base64-encoded, not sent raw
    ("&AH8-", "\x7f"),
    ("a&AAA-b", "a\x00b"),
    ("+ ~ \\ %", "+ ~ \\ %"),
]


@pytest.mark.parametrize(("wire", "text"), MUTF7_VECTORS)
def test_decode_mutf7_vectors(wire: str, text: str) -> None:
    assert decode_mutf7(wire) == text


@pytest.mark.parametrize(("wire", "text"), MUTF7_VECTORS)
def test_encode_mutf7_vectors(wire: str, text: str) -> None:
    assert encode_mutf7(text) == wire


MALFORMED_MUTF7 = [
    pytest.param("&", id="lone-ampersand"),
    pytest.param("a&b", id="ampersand-without-dash"),
    pytest.param("&U,BTFw", id="unterminated-segment"),
    pytest.param("&U,BTFw-&", id="trailing-ampersand"),
    pytest.param("&Jjo!-", id="bad-base64-char"),
    pytest.param("&U/BTFw-", id="plain-base64-slash"),
    pytest.param("&U,BTFw=-", id="base64-padding"),
    pytest.param("&A-", id="one-char"),
    pytest.param("&AM-", id="one-byte"),
    pytest.param("&AMkA-", id="three-bytes"),
    pytest.param("&AMl-", id="nonzero-pad-bits"),
    pytest.param("&AGE-", id="encoded-ascii-a"),
    pytest.param("&ACY-", id="encoded-ampersand"),
    pytest.param("&ACA-", id="encoded-space"),
    pytest.param("&AMk-&AOk-", id="adjacent-segments"),
    pytest.param("&2D0-", id="lone-high-surrogate"),
    pytest.param("&3gA-", id="lone-low-surrogate"),
    pytest.param("&3gDYPQ-", id="reversed-surrogates"),
    pytest.param("Entwürfe", id="raw-8bit-utf8"),
    pytest.param("a\tb", id="raw-control"),
    pytest.param("a\x7fb", id="raw-del"),
]


@pytest.mark.parametrize("wire", MALFORMED_MUTF7)
def test_decode_mutf7_malformed_is_returned_unchanged(wire: str) -> None:
    assert decode_mutf7(wire) == wire


def test_encode_mutf7_rejects_lone_surrogate() -> None:
    # e.g. a surrogate-escaped non-UTF-8 file name from mkdir
    with pytest.raises(UnicodeEncodeError):
        encode_mutf7("bad\udcff")


@given(st.text())
def test_mutf7_round_trip(text: str) -> None:
    wire = encode_mutf7(text)
    assert all("\x20" <= ch <= "\x7e" for ch in wire)
    assert decode_mutf7(wire) == text


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_mutf7_printable_ascii_is_itself(text: str) -> None:
    assert encode_mutf7(text) == text.replace("&", "&-")


@given(st.text(alphabet=st.sampled_from("&-ABCDEFGHabcdefgh+,/019 \x00é")))
def test_decode_mutf7_never_raises_and_canonical_inputs_survive(wire: str) -> None:
    text = decode_mutf7(wire)
    assert isinstance(text, str)
    # Whatever decodes to something else must be the canonical spelling.
    if text != wire:
        assert encode_mutf7(text) == wire


# --------------------------------------------------------------------------
# Level escapes
# --------------------------------------------------------------------------

LEVEL_ESCAPES = [
    ("Work", "Work"),
    ("Entwürfe", "Entwürfe"),
    ("100%", "100%25"),
    ("%25", "%2525"),
    ("a/b", "a%2Fb"),
    ("a\x00b", "a%00b"),
    (".", "%2E"),
    ("..", "%2E%2E"),
    ("...", "..."),
    (".hidden", ".hidden"),
    ("", EMPTY_LEVEL),
    ("%", "%25"),
    ("%%", "%25%25"),
    ("#1.eml", "%231.eml"),
    ("#1234.parts", "%231234.parts"),
    ("Notes #0.eml", "Notes %230.eml"),
    ("a#1#2.eml", "a#1%232.eml"),
    ("#1.eml.bak", "#1.eml.bak"),
    ("#1.EML", "#1.EML"),
    ("#.eml", "#.eml"),
    ("#x1.eml", "#x1.eml"),
    ("#1.eml\n", "#1.eml\n"),
    ("#١.eml", "#١.eml"),  # Arabic-Indic digit: not a UID
    ("50%/#7.eml", "50%25%2F%237.eml"),
    (" ", " "),
    ("INBOX", "INBOX"),
]


@pytest.mark.parametrize(("level", "comp"), LEVEL_ESCAPES)
def test_escape_level(level: str, comp: str) -> None:
    assert escape_level(level) == comp


@pytest.mark.parametrize(("level", "comp"), LEVEL_ESCAPES)
def test_unescape_level(level: str, comp: str) -> None:
    assert unescape_level(comp) == level


@pytest.mark.parametrize(
    "comp",
    ["50%", "%", "%2f", "%41", "%2", "a%zz", "%%a", "a%%", "%E"],
)
def test_unescape_level_leaves_unknown_escapes(comp: str) -> None:
    assert unescape_level(comp) == comp


def _assert_valid_component(comp: str) -> None:
    assert comp
    assert comp not in (".", "..")
    assert "/" not in comp and "\x00" not in comp
    assert len(comp.encode("utf-8", "surrogatepass")) <= MAX_COMPONENT_BYTES


level_text = st.one_of(
    st.text(),
    st.text(alphabet=st.sampled_from("/%.\x00#1eml2partsé%2F")),
    st.sampled_from(["", ".", "..", "#1.eml", "x #12.parts", "%", "%%", "%2E", "%00"]),
)


@given(level_text)
def test_escape_level_round_trip(level: str) -> None:
    try:
        comp = escape_level(level)
    except NameTooLong:
        assert len(level.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES // 3
        return
    _assert_valid_component(comp)
    assert unescape_level(comp) == level


@pytest.mark.parametrize(
    "level",
    ["x" * 256, "ü" * 128, "%" * 86, "/" * 86],
)
def test_escape_level_too_long(level: str) -> None:
    with pytest.raises(NameTooLong) as info:
        escape_level(level)
    assert info.value.level == level
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("level", ["x" * 255, "ü" * 127 + "x", "%" * 85])
def test_escape_level_at_limit(level: str) -> None:
    comp = escape_level(level)
    assert len(comp.encode()) <= 255
    assert unescape_level(comp) == level


# --------------------------------------------------------------------------
# Folder name <-> path
# --------------------------------------------------------------------------

FOLDER_PATHS = [
    ("INBOX", "/", ("INBOX",)),
    ("INBOX/Work", "/", ("INBOX", "Work")),
    ("INBOX.Work", ".", ("INBOX", "Work")),
    ("INBOX.Work", "/", ("INBOX.Work",)),
    ("INBOX.Work", None, ("INBOX.Work",)),
    ("a/b", None, ("a%2Fb",)),
    ("a/b", ".", ("a%2Fb",)),
    ("INBOX.a/b.c", ".", ("INBOX", "a%2Fb", "c")),
    ("a..b", ".", ("a", EMPTY_LEVEL, "b")),
    ("a.", ".", ("a", EMPTY_LEVEL)),
    ("/a", "/", (EMPTY_LEVEL, "a")),
    ("", "/", (EMPTY_LEVEL,)),
    ("", None, (EMPTY_LEVEL,)),
    ("./..", "/", ("%2E", "%2E%2E")),
    ("Archive/2024 #3.eml", "/", ("Archive", "2024 %233.eml")),
    ("~peter/mail/台北/日本語", "/", ("~peter", "mail", "台北", "日本語")),
    ("[Gmail]/Отправленные", "/", ("[Gmail]", "Отправленные")),
    ("Budget 100%", "/", ("Budget 100%25",)),
    ("a\\b", "\\", ("a", "b")),
]


@pytest.mark.parametrize(("name", "delim", "path"), FOLDER_PATHS)
def test_folder_to_path(name: str, delim: str | None, path: tuple[str, ...]) -> None:
    assert folder_to_path(name, delim) == path


@pytest.mark.parametrize(("name", "delim", "path"), FOLDER_PATHS)
def test_path_to_folder(name: str, delim: str | None, path: tuple[str, ...]) -> None:
    assert path_to_folder(path, delim) == name


INBOX_SPELLINGS = [
    ("inbox", "/", ("INBOX",)),
    ("Inbox", None, ("INBOX",)),
    ("iNbOx/Sub", "/", ("INBOX", "Sub")),
    ("inbox.Sub.inbox", ".", ("INBOX", "Sub", "inbox")),  # only the first level
    ("Sub/inbox", "/", ("Sub", "inbox")),
    ("ınbox", "/", ("ınbox",)),  # dotless i: not ASCII, not INBOX
    ("inboxes", "/", ("inboxes",)),
]


@pytest.mark.parametrize(("name", "delim", "path"), INBOX_SPELLINGS)
def test_inbox_is_case_insensitive(name: str, delim: str | None, path: tuple[str, ...]) -> None:
    assert folder_to_path(name, delim) == path


@pytest.mark.parametrize(
    ("components", "delim"),
    [
        ((), "/"),
        ((), None),
        (("a", "b"), None),
        (("a.b",), "."),
        (("a", "x.y"), "."),
        (("",), "/"),
        ((".",), "/"),
        (("..",), "/"),
        (("a/b",), "."),
        (("a\x00b",), "/"),
        (("a",), ""),
    ],
)
def test_path_to_folder_rejects(components: tuple[str, ...], delim: str | None) -> None:
    with pytest.raises(ValueError):
        path_to_folder(components, delim)


def test_path_to_folder_rejects_bare_string() -> None:
    with pytest.raises(TypeError):
        path_to_folder("INBOX", "/")


def test_path_to_folder_accepts_list() -> None:
    assert path_to_folder(["INBOX", "a%2Fb"], ".") == "INBOX.a/b"


def _canonical_inbox(name: str, delim: str | None) -> str:
    first, sep, rest = (name, "", "") if delim is None else name.partition(delim)
    if first.isascii() and first.upper() == "INBOX":
        first = "INBOX"
    return first + sep + rest


@given(
    st.lists(level_text, min_size=1, max_size=5),
    st.sampled_from(["/", ".", None]),
)
def test_folder_path_round_trip(levels: list[str], delim: str | None) -> None:
    if delim is None:
        name = "".join(levels)
    else:
        levels = [lvl.replace(delim, "") for lvl in levels]
        name = delim.join(levels)
    try:
        path = folder_to_path(name, delim)
    except NameTooLong:
        return
    for comp in path:
        _assert_valid_component(comp)
    assert path_to_folder(path, delim) == _canonical_inbox(name, delim)


@given(st.text(), st.sampled_from(["/", ".", None]))
def test_folder_path_round_trip_through_wire(name: str, delim: str | None) -> None:
    """mUTF-7 wire name -> decode -> path -> folder -> encode gives the wire name."""
    wire = encode_mutf7(name)
    try:
        path = folder_to_path(decode_mutf7(wire), delim)
    except NameTooLong:
        return
    assert encode_mutf7(path_to_folder(path, delim)) == encode_mutf7(_canonical_inbox(name, delim))
