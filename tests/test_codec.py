"""Tests for imapfs.codec: modified UTF-7 and folder name <-> path mapping."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imapfs.codec import (
    EMPTY_LEVEL,
    MAX_COMPONENT_BYTES,
    RAW_SUFFIX,
    FolderPath,
    NameTooLong,
    canonical_decode,
    decode_mutf7,
    encode_mutf7,
    escape_level,
    folder_path,
    folder_to_path,
    is_canonical,
    map_folders,
    new_level,
    offline_level_ok,
    path_to_folder,
    raw_level,
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
    ("100%", "100%"),  # a "%" is escaped only where it would read as an escape
    ("50% off", "50% off"),
    ("%2", "%2"),
    ("%2f", "%2f"),
    ("%41", "%41"),
    ("%25", "%2525"),
    ("%2F", "%252F"),
    ("%00", "%2500"),
    ("%23", "%2523"),
    ("%2E", "%252E"),
    ("%/", "%%2F"),
    ("%2/", "%2%2F"),
    ("a%%25", "a%%2525"),
    ("a/b", "a%2Fb"),
    ("a\x00b", "a%00b"),
    (".", "%2E"),
    ("..", "%2E%2E"),
    ("...", "..."),
    (".hidden", ".hidden"),
    ("", EMPTY_LEVEL),
    ("%", "%"),
    ("%%", "%25%"),  # not EMPTY_LEVEL
    ("%%%", "%%%"),
    ("x #raw", "x %23raw"),  # would look like a non-canonical server name
    ("x#raw", "x#raw"),
    ("#raw", "#raw"),
    ("x #raw ", "x #raw "),
    ("x #RAW", "x #RAW"),
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
    ("50%/#7.eml", "50%%2F%237.eml"),
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
    st.text(alphabet=st.sampled_from("/%.\x00#1eml2partsé%2F05E3 raw")),
    st.sampled_from(["", ".", "..", "#1.eml", "x #12.parts", "%", "%%", "%2E", "%00", "a #raw", "%%%"]),
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
    ["x" * 256, "ü" * 128, "%25" * 52, "/" * 86],
)
def test_escape_level_too_long(level: str) -> None:
    with pytest.raises(NameTooLong) as info:
        escape_level(level)
    assert info.value.level == level
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("level", ["x" * 255, "ü" * 127 + "x", "%25" * 51, "%" * 255])
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
    ("Budget 100%", "/", ("Budget 100%",)),
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



@given(level_text)
def test_escaped_levels_are_canonical(level: str) -> None:
    try:
        comp = escape_level(level)
    except NameTooLong:
        return
    assert is_canonical(comp)


@pytest.mark.parametrize(
    ("comp", "canonical"),
    [
        ("100%", True),
        ("%", True),
        ("%25", False),  # the escape of "%": the folder "%" shows as "%"
        ("%2525", True),
        ("a%2Fb", True),
        ("%%", True),
        ("%25%", True),
        ("%2E", True),
        ("a%2E", False),  # only a whole "." is escaped
        ("x %23raw", True),
        ("x #raw", False),
        ("AT&T #raw", False),
        ("x #3.eml", False),
        ("", False),
        (".", False),
        ("a/b", False),
    ],
)
def test_is_canonical(comp: str, canonical: bool) -> None:
    assert is_canonical(comp) is canonical


# --------------------------------------------------------------------------
# Names typed for new folders
# --------------------------------------------------------------------------

NEW_LEVELS = [
    ("100%", "/", b"100%"),
    ("%", "/", b"%"),
    ("*", "/", b"*"),
    ("AT&T", "/", b"AT&-T"),
    ("Café", "/", b"Caf&AOk-"),
    ("Cafe\u0301", "/", b"Cafe&AwE-"),  # NFD stays NFD: it shows as typed
    (" lead", "/", b" lead"),
    ("trail ", "/", b"trail "),
    ('q"uote', "/", b'q"uote'),
    ("a%2Fb", ".", b"a/b"),  # the escape of "/" where "/" is not the delimiter
    ("a%252Fb", "/", b"a%2Fb"),
    ("v1.2", "/", b"v1.2"),
    ("%25%", "/", b"%%"),
    ("inbox", "/", b"inbox"),  # the caller refuses a top-level INBOX in another case
    ("x" * 255, None, b"x" * 255),
]


@pytest.mark.parametrize(("comp", "delim", "wire"), NEW_LEVELS)
def test_new_level(comp: str, delim: str | None, wire: bytes) -> None:
    assert new_level(comp, delim) == wire
    # ... and it shows as typed once the server lists it
    assert folder_path(wire, delim).path == (comp,) or comp == "inbox"


@pytest.mark.parametrize(
    ("comp", "delim"),
    [
        ("%25", "/"),  # shows as "%"
        ("100%25", "/"),
        ("%%", "/"),  # empty level
        ("a%2Fb", "/"),  # the delimiter
        ("v1.2", "."),
        ("x #raw", "/"),
        ("AT&T #raw", "/"),
        ("x #12.eml", "/"),
        ("x #12.parts", "/"),
        ("", "/"),
        (".", "/"),
        ("..", "/"),
        ("a/b", "/"),
        ("a\x00b", "/"),
        ("a%2E", "/"),
    ],
)
def test_new_level_refuses(comp: str, delim: str | None) -> None:
    with pytest.raises(ValueError):
        new_level(comp, delim)


def test_new_level_refuses_a_non_utf8_name() -> None:
    with pytest.raises(UnicodeEncodeError):
        new_level("bad\udcff", "/")


# --------------------------------------------------------------------------
# Server names -> paths (what LIST gives -> what ls shows)
# --------------------------------------------------------------------------

RAW_LEVELS = [
    (b"AT&T", "AT&T #raw"),
    ("Café".encode(), "Café #raw"),
    (b"Caf\xe9", "Caf%E9 #raw"),
    (b"100%&", "100%25& #raw"),
    (b"a\x00b&", "a%00b& #raw"),
    (b"\xed\xa0\x80&", "%ED%A0%80& #raw"),  # UTF-8 of a surrogate: not valid UTF-8
    (b"&AGE-", "&AGE- #raw"),  # non-shortest
]


@pytest.mark.parametrize(("wire", "comp"), RAW_LEVELS)
def test_raw_level(wire: bytes, comp: str) -> None:
    assert raw_level(wire) == comp
    assert not is_canonical(comp)


@given(st.binary(max_size=40), st.binary(max_size=40))
def test_raw_level_is_injective(a: bytes, b: bytes) -> None:
    if a != b:
        assert raw_level(a) != raw_level(b)


FOLDER_WIRES = [
    # canonical names show decoded
    (b"AT&-T", "/", ("AT&T",), (b"AT&-T",)),
    (b"Caf&AOk-", "/", ("Café",), (b"Caf&AOk-",)),
    (b"100%", "/", ("100%",), (b"100%",)),
    (b"INBOX/Sub", "/", ("INBOX", "Sub"), (b"INBOX", b"INBOX/Sub")),
    (b"inbox.Sub", ".", ("INBOX", "Sub"), (b"inbox", b"inbox.Sub")),
    (b"&ZeVnLIqe-/&W1A-", "/", ("日本語", "子"), (b"&ZeVnLIqe-", b"&ZeVnLIqe-/&W1A-")),
    (b"x #raw", "/", ("x %23raw",), (b"x #raw",)),
    # non-canonical ones get " #raw" on the levels that are not canonical
    (b"AT&T", "/", ("AT&T #raw",), (b"AT&T",)),
    ("Café".encode(), "/", ("Café #raw",), ("Café".encode(),)),
    (b"AT&T/Bills", "/", ("AT&T #raw", "Bills"), (b"AT&T", b"AT&T/Bills")),
    (b"Work/AT&T", "/", ("Work", "AT&T #raw"), (b"Work", b"Work/AT&T")),
    (b"inbox/AT&T", "/", ("INBOX", "AT&T #raw"), (b"inbox", b"inbox/AT&T")),
    (b"Caf&AOkA-", "/", ("Caf&AOkA- #raw",), (b"Caf&AOkA-",)),
    (b"a&b", None, ("a&b #raw",), (b"a&b",)),
    # a delimiter that base64 uses: no splitting before decoding
    (b"a&b-c", "-", ("a&b #raw", "c #raw"), (b"a&b", b"a&b-c")),
]


@pytest.mark.parametrize(("wire", "delim", "path", "wires"), FOLDER_WIRES)
def test_folder_path(wire: bytes, delim: str | None, path: tuple[str, ...], wires: tuple[bytes, ...]) -> None:
    assert folder_path(wire, delim) == FolderPath(path, wires)


COLLISIONS = [
    pytest.param([b"AT&T", b"AT&-T"], {b"AT&-T": ("AT&T",), b"AT&T": ("AT&T #raw",)}, id="raw-ampersand"),
    pytest.param([b"Caf&AOk-", "Café".encode()], {b"Caf&AOk-": ("Café",), "Café".encode(): ("Café #raw",)},
                 id="utf8-and-mutf7"),
    pytest.param([b"INBOX", b"INBOX/x", b"Inbox/x"],
                 {b"INBOX": ("INBOX",), b"INBOX/x": ("INBOX", "x"), b"Inbox/x": ("Inbox #raw", "x #raw")},
                 id="inbox-spellings"),
    pytest.param([b"x #raw", b"x"], {b"x #raw": ("x %23raw",), b"x": ("x",)}, id="literal-raw-suffix"),
    pytest.param([b"AT&T #raw", b"AT&T"], {b"AT&T #raw": ("AT&T #raw #raw",), b"AT&T": ("AT&T #raw",)},
                 id="raw-with-suffix"),
]


@pytest.mark.parametrize(("wires", "paths"), COLLISIONS)
def test_map_folders_keeps_every_folder_apart_in_any_order(wires: list[bytes], paths: dict) -> None:
    for order in itertools.permutations(wires):
        mapped, refused = map_folders((w, "/") for w in order)
        assert not refused
        assert {w: fp.path for w, fp in mapped.items()} == paths


def test_map_folders_leaves_out_a_name_too_long_to_show() -> None:
    mapped, refused = map_folders([(b"x" * 256, "/"), (b"ok", "/")])
    assert list(mapped) == [b"ok"]
    assert list(refused) == [b"x" * 256]


wire_names = st.lists(
    st.one_of(
        st.builds(lambda t: encode_mutf7(t).encode(), st.text(alphabet=st.sampled_from("aé&/ .%#I"), max_size=6)),
        st.binary(max_size=6).map(lambda b: b.replace(b"\x00", b"")),
        st.sampled_from([b"INBOX", b"inbox", b"Inbox/a", b"INBOX/a", b"a #raw", b"a", b"AT&T", b"AT&-T"]),
    ),
    max_size=8,
)


@given(wire_names, st.sampled_from(["/", ".", None]))
def test_map_folders_gives_distinct_valid_paths(wires: list[bytes], delim: str | None) -> None:
    mapped, refused = map_folders((w, delim) for w in wires)
    assert set(mapped) | set(refused) == set(wires)
    paths = [fp.path for fp in mapped.values()]
    assert len(set(paths)) == len(paths)
    for w, fp in mapped.items():
        assert fp.wires[-1] == w and len(fp.wires) == len(fp.path)
        for comp in fp.path:
            _assert_valid_component(comp)
        text = canonical_decode(w)
        if text is not None:  # shows decoded, unless it lost a collision of INBOX spellings
            assert fp.path == folder_to_path(text, delim) or all(c.endswith(RAW_SUFFIX) for c in fp.path)
        else:  # never where a canonical name would show
            assert any(c.endswith(RAW_SUFFIX) and not is_canonical(c) for c in fp.path)
    # order does not matter
    again, _ = map_folders((w, delim) for w in reversed(wires))
    assert again == mapped


@pytest.mark.parametrize(("comp", "ok"), [
    ("NewDir", True), ("New Dir-2_x", True), ("Café", True), ("日本語", True), ("2024", True),
    ("a.b", False), ("~tilde", False), ("Invoice #12.eml", False), ("100%", False), ("a/b", False),
    (" lead", False), ("trail ", False), ("-x", False), ("", False), ("a&b", False), ("x\ty", False),
])
def test_offline_level_ok(comp: str, ok: bool) -> None:
    """Offline, only names every server keeps are taken (the server judges the rest)."""
    assert offline_level_ok(comp) is ok
