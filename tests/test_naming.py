"""Tests for imapfs.naming: subjects, sanitizing and message file names."""

from __future__ import annotations

import datetime
import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imapfs.naming import (
    MAX_UID,
    NO_SUBJECT,
    decode_subject,
    message_name,
    message_stem,
    parse_message_name,
    parts_name,
    parts_names,
    sanitize,
)

UTC = datetime.timezone.utc


def tz(hours: int, minutes: int = 0) -> datetime.timezone:
    sign = -1 if hours < 0 else 1
    return datetime.timezone(sign * datetime.timedelta(hours=abs(hours), minutes=minutes))


def nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


# --------------------------------------------------------------------------
# decode_subject
# --------------------------------------------------------------------------

SUBJECTS = [
    # plain and structural
    pytest.param(b"Subject: Meeting notes\r\n\r\n", "Meeting notes", id="plain"),
    pytest.param(b"Subject: hi", "hi", id="no-crlf"),
    pytest.param(b"Subject:hi\r\n", "hi", id="no-space"),
    pytest.param(b"subject: lower\r\n", "lower", id="lowercase-name"),
    pytest.param(b"SUBJECT: upper\r\n", "upper", id="uppercase-name"),
    pytest.param(b"Subject  : obsolete\r\n", "obsolete", id="wsp-before-colon"),
    pytest.param(b"Subject: This is a\r\n very long\r\n\tsubject\r\n\r\n", "This is a very long\tsubject", id="folded"),
    pytest.param(b"Subject: a\n b\n\n", "a b", id="folded-lf-only"),
    pytest.param(b"Subject: first\r\nSubject: second\r\n\r\n", "first", id="two-fields"),
    pytest.param(b"X-Subject: no\r\nSubject: yes\r\n", "yes", id="x-subject-ignored"),
    pytest.param(b"To: a,\r\n Subject: fake\r\nSubject: real\r\n", "real", id="folded-lookalike"),
    pytest.param(b"From: a@b\r\nSubject: found\r\nTo: c@d\r\n", "found", id="among-fields"),
    pytest.param(b"\r\n", "", id="no-field"),
    pytest.param(b"", "", id="empty-bytes"),
    pytest.param(None, "", id="none"),
    pytest.param(b"Subject: \r\n\r\n", "", id="empty-value"),
    pytest.param(b"Subject:    \t  \r\n\r\n", "", id="whitespace-only"),
    pytest.param(b"Subject: \r\n \r\n\r\n", "", id="folded-whitespace-only"),
    # RFC 2047 Q and B in many charsets
    pytest.param(b"Subject: =?ISO-8859-1?Q?Z=FCrich?=\r\n\r\n", "Zürich", id="q-latin1"),
    pytest.param(b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=\r\n", "Grüße aus Köln", id="q-utf8"),
    pytest.param(b"Subject: =?utf-8?q?caf=c3=a9?=\r\n", "café", id="q-lowercase"),
    pytest.param(b"Subject: =?utf-8?B?R3LDtsOfZQ==?=\r\n", "Größe", id="b-utf8"),
    pytest.param(b"Subject: =?utf-8?b?4pyTIERvbmU=?=\r\n", "✓ Done", id="b-lowercase"),
    pytest.param(b"Subject: =?UTF-8?B?8J+OiSBQYXJ0eQ==?=\r\n", "🎉 Party", id="b-utf8-emoji"),
    pytest.param(
        b"Subject: =?windows-1252?B?Uul1bmlvbiBkkulxdWlwZQ==?=\r\n", "Réunion d’équipe", id="b-cp1252"
    ),
    pytest.param(
        b"Subject: =?windows-1252?Q?=93Quoted=94_=80_price?=\r\n", "“Quoted” € price", id="q-cp1252"
    ),
    pytest.param(
        b"Subject: =?iso-8859-1?Q?=93smart=94?=\r\n", "“smart”", id="latin1-label-read-as-cp1252"
    ),
    pytest.param(b"Subject: =?koi8-r?B?8NLJ18XULCDNydI=?=\r\n", "Привет, мир", id="b-koi8r"),
    pytest.param(b"Subject: =?KOI8-R?Q?=F0=D2=C9=D7=C5=D4?=\r\n", "Привет", id="q-koi8r"),
    pytest.param(b"Subject: =?shift_jis?B?ie+LY4LMi2OOlphe?=\r\n", "会議の議事録", id="b-shift-jis"),
    pytest.param(b"Subject: =?Shift_JIS?B?ie+LY4LMi2OOlphe?=\r\n", "会議の議事録", id="b-shift-jis-case"),
    pytest.param(
        b"Subject: =?iso-2022-jp?B?GyRCJUYlOSVIQXc/LhsoQg==?=\r\n", "テスト送信", id="b-iso-2022-jp"
    ),
    pytest.param(b"Subject: =?iso-8859-7?B?xevr5+3p6tw=?=\r\n", "Ελληνικά", id="b-greek"),
    pytest.param(b"Subject: =?gb2312?B?1tDOxNPKvP4=?=\r\n", "中文邮件", id="b-gb2312"),
    pytest.param(
        b"Subject: =?EUC-KR?Q?NOTE:_=C7=D1=B1=B9=B8=BB=B7=CE_=C7=CF=B4=C2_=B0=CD?=\r\n",
        "NOTE: 한국말로 하는 것",
        id="q-euc-kr",
    ),
    pytest.param(b"Subject: =?UTF-8*en?Q?Hello?=\r\n", "Hello", id="rfc2231-language"),
    # adjacent encoded words (RFC 2047 section 6.2)
    pytest.param(b"Subject: =?UTF-8?Q?a?= =?UTF-8?Q?b?=\r\n", "ab", id="adjacent-space"),
    pytest.param(b"Subject: =?UTF-8?Q?a?=\r\n =?UTF-8?Q?b?=\r\n", "ab", id="adjacent-folded"),
    pytest.param(b"Subject: =?UTF-8?Q?a?=\r\n\t =?UTF-8?Q?b?=\r\n", "ab", id="adjacent-folded-tab"),
    pytest.param(b"Subject: =?UTF-8?Q?a?==?UTF-8?Q?b?=\r\n", "ab", id="adjacent-no-space"),
    pytest.param(b"Subject: =?UTF-8?Q?a_?= =?UTF-8?Q?b?=\r\n", "a b", id="adjacent-encoded-space"),
    pytest.param(b"Subject: =?UTF-8?Q?a?= b\r\n", "a b", id="word-then-text"),
    pytest.param(b"Subject: a =?UTF-8?Q?b?=\r\n", "a b", id="text-then-word"),
    pytest.param(b"Subject: =?UTF-8?Q?=C3?= =?UTF-8?Q?=BC?=\r\n", "ü", id="char-split-across-words"),
    pytest.param(
        b"Subject: =?ISO-8859-1?Q?=E9?= =?UTF-8?Q?=C3=A9?=\r\n", "éé", id="adjacent-mixed-charsets"
    ),
    pytest.param(
        b"Subject: Re: Test: =?UTF-8?B?Iua8ouWtlyI=?= mid =?UTF-8?B?Iua8ouWtlyI=?= tail\r\n",
        'Re: Test: "漢字" mid "漢字" tail',
        id="partially-encoded",
    ),
    pytest.param(b"Subject: Re:=?UTF-8?Q?x?=\r\n", "Re:x", id="glued-to-text"),
    pytest.param(b"Subject: =?UTF-8?B??=\r\n", "", id="empty-encoded-word"),
    pytest.param(b"Subject: =?UTF-8?Q?a=2Fb?=\r\n", "a/b", id="encoded-slash"),
    pytest.param(b"Subject: =?UTF-8?Q?a=0D=0Ab?=\r\n", "a\r\nb", id="encoded-crlf"),
    # raw 8-bit (RFC 6532) and invalid bytes
    pytest.param(b"Subject: Gr\xc3\xbc\xc3\x9fe\r\n", "Grüße", id="raw-utf8"),
    pytest.param(b"Subject: Caf\xe9 \x93ok\x94\r\n", "Café “ok”", id="raw-cp1252"),
    pytest.param(b"Subject: \xc3\xa9 and \xe9\r\n", "é and é", id="raw-mixed"),
    pytest.param(b"Subject: \x81\x8d\r\n", "\x81\x8d", id="raw-undefined-in-cp1252"),
    pytest.param(b"Subject: \xff\xfe\r\n", "ÿþ", id="raw-bom-bytes"),
    # broken encoded words stay literal
    pytest.param(b"Subject: =?UTF-8?B?####?=\r\n", "=?UTF-8?B?####?=", id="bad-base64-chars"),
    pytest.param(b"Subject: =?UTF-8?B?QUJDR?=\r\n", "=?UTF-8?B?QUJDR?=", id="bad-base64-length"),
    pytest.param(b"Subject: =?UTF-8?B?QQ?=\r\n", "A", id="missing-padding-accepted"),
    pytest.param(b"Subject: =?x-unknown?Q?abc?=\r\n", "=?x-unknown?Q?abc?=", id="unknown-charset"),
    pytest.param(b"Subject: =?NONE?B?VEVTVA=?=\r\n", "=?NONE?B?VEVTVA=?=", id="charset-none"),
    pytest.param(
        b"Subject: =?unicode_escape?Q?=5Cu0041?=\r\n", "=?unicode_escape?Q?=5Cu0041?=", id="refused-codec"
    ),
    pytest.param(b"Subject: =?zlib?B?eJwDAAAAAAE=?=\r\n", "=?zlib?B?eJwDAAAAAAE=?=", id="bytes-codec"),
    pytest.param(b"Subject: =?UTF-8?X?abc?=\r\n", "=?UTF-8?X?abc?=", id="unknown-encoding"),
    pytest.param(
        b"Subject: =?x-unknown?Q?a?= =?UTF-8?Q?b?=\r\n", "=?x-unknown?Q?a?= b", id="broken-then-good"
    ),
    pytest.param(b"Subject: =?UTF-8?Q?50=?=\r\n", "50=", id="q-stray-equals"),
    pytest.param(b"Subject: =?UTF-8?Q?=FF?=\r\n", "ÿ", id="q-invalid-utf8-falls-back"),
    pytest.param(b"Subject: =?UTF-8?Q?unterminated\r\n", "=?UTF-8?Q?unterminated", id="unterminated"),
    pytest.param(b"Subject: =?utf-7?Q?+2D0-?=\r\n", "\ufffd", id="utf7-lone-surrogate"),
]


@pytest.mark.parametrize(("raw", "expected"), SUBJECTS)
def test_decode_subject(raw: bytes | None, expected: str) -> None:
    assert decode_subject(raw) == expected


@given(st.binary())
def test_decode_subject_never_raises(raw: bytes) -> None:
    text = decode_subject(raw)
    assert isinstance(text, str)
    text.encode("utf-8")  # no lone surrogates


@given(st.binary())
def test_decode_subject_never_raises_with_field(raw: bytes) -> None:
    text = decode_subject(b"Subject: " + raw)
    assert isinstance(text, str)
    text.encode("utf-8")


_CHARSETS = ["utf-8", "iso-8859-1", "koi8-r", "shift_jis", "iso-2022-jp", "utf-16", "utf-7", "x-bogus", ""]
encoded_word = st.builds(
    lambda cs, enc, payload: f"=?{cs}?{enc}?{payload}?=".encode(),
    st.sampled_from(_CHARSETS),
    st.sampled_from("QBqbX"),
    st.text(alphabet=st.sampled_from("=_?+/ABCDEFabc0189 \t"), max_size=20),
)


@given(st.lists(st.one_of(encoded_word, st.binary(max_size=8), st.sampled_from([b" ", b"\r\n ", b"\t"]))))
def test_decode_subject_never_raises_on_encoded_words(pieces: list[bytes]) -> None:
    text = decode_subject(b"Subject: " + b"".join(pieces) + b"\r\n\r\n")
    text.encode("utf-8")
    name = message_name(1, datetime.datetime(2026, 1, 1, tzinfo=UTC), text)
    assert "/" not in name and "\x00" not in name


# --------------------------------------------------------------------------
# sanitize
# --------------------------------------------------------------------------

SANITIZE = [
    pytest.param("Meeting notes", 255, "Meeting notes", id="plain"),
    pytest.param("a/b", 255, "a∕b", id="slash"),
    pytest.param("/home/svn/public", 255, "∕home∕svn∕public", id="leading-slash"),
    pytest.param("a\tb\nc\r\nd", 255, "a b c d", id="tabs-newlines"),
    pytest.param("  lots   of \t space  ", 255, "lots of space", id="collapse"),
    pytest.param("a\x00b", 255, "a b", id="nul"),
    pytest.param("a\x7fb\x85c\x9fd", 255, "a b c d", id="del-c1"),
    pytest.param("a\u00a0\u3000b", 255, "a b", id="unicode-spaces"),
    pytest.param("a\u2028b", 255, "a b", id="line-separator"),
    pytest.param("...hidden", 255, "hidden", id="leading-dots"),
    pytest.param(". . .x", 255, "x", id="dots-and-spaces"),
    pytest.param(".", 255, "", id="dot"),
    pytest.param("..", 255, "", id="dotdot"),
    pytest.param("end.", 255, "end.", id="trailing-dot-kept"),
    pytest.param("   ", 255, "", id="only-spaces"),
    pytest.param("\t\r\n", 255, "", id="only-controls"),
    pytest.param("e\u0301", 255, "é", id="nfc"),
    pytest.param("invoice\u202egpj.exe", 255, "invoicegpj.exe", id="bidi-override"),
    pytest.param("a\udcffb", 255, "a\ufffdb", id="lone-surrogate"),
    pytest.param("hello world", 6, "hello", id="cut-at-space"),
    pytest.param("hello world", 0, "", id="zero"),
    pytest.param("ééé", 5, "éé", id="cut-2-byte"),
    pytest.param("日本語", 8, "日本", id="cut-3-byte"),
    pytest.param("😀😀", 7, "😀", id="cut-4-byte"),
    pytest.param("aé\u0302", 4, "a", id="keep-combining-mark"),
    pytest.param("🇩🇪🇫🇷", 12, "🇩🇪", id="keep-flag-pair"),
    pytest.param("x🇩🇪🇫🇷", 13, "x🇩🇪", id="keep-flag-pair-offset"),
    pytest.param("x👍🏽", 6, "x", id="keep-skin-tone"),
    pytest.param("ok 👨\u200d👩\u200d👧", 10, "ok", id="keep-zwj-sequence"),
    pytest.param("e" + "\u0301" * 200, 10, "é" + "\u0301" * 4, id="huge-cluster-falls-back"),
]


@pytest.mark.parametrize(("text", "max_bytes", "expected"), SANITIZE)
def test_sanitize(text: str, max_bytes: int, expected: str) -> None:
    assert sanitize(text, max_bytes) == expected


def test_sanitize_rejects_negative_budget() -> None:
    with pytest.raises(ValueError):
        sanitize("x", -1)


@given(st.text(), st.integers(min_value=0, max_value=300))
def test_sanitize_properties(text: str, max_bytes: int) -> None:
    out = sanitize(text, max_bytes)
    assert "/" not in out and "\x00" not in out
    assert nbytes(out) <= max_bytes
    assert out == out.strip(" ")
    assert not out.startswith(".")
    assert not any(unicodedata.category(ch) == "Cc" for ch in out)
    assert sanitize(out, max_bytes) == out


# --------------------------------------------------------------------------
# message names
# --------------------------------------------------------------------------

STEMS = [
    pytest.param(1234, datetime.datetime(2026, 11, 26, 3, 20, tzinfo=UTC), "Meeting notes",
                 "2026-11-26_0320 Meeting notes #1234", id="example"),
    pytest.param(7, datetime.datetime(2026, 11, 26, 3, 20, 59, tzinfo=UTC), "x",
                 "2026-11-26_0320 x #7", id="seconds-dropped"),
    pytest.param(7, datetime.datetime(2026, 1, 1, 0, 30, tzinfo=tz(1)), "New year",
                 "2025-12-31_2330 New year #7", id="cet-after-midnight-is-utc-yesterday"),
    pytest.param(7, datetime.datetime(2026, 11, 25, 23, 30, tzinfo=tz(-5)), "x",
                 "2026-11-26_0430 x #7", id="est-before-midnight-is-utc-tomorrow"),
    pytest.param(7, datetime.datetime(2026, 3, 1, 5, 44, tzinfo=tz(5, 45)), "x",
                 "2026-02-28_2359 x #7", id="nepal-quarter-hour"),
    pytest.param(7, datetime.datetime(2027, 1, 1, 13, 59, tzinfo=tz(14)), "x",
                 "2026-12-31_2359 x #7", id="kiribati-plus-14"),
    pytest.param(7, datetime.datetime(2024, 2, 29, 23, 0, tzinfo=tz(-12)), "x",
                 "2024-03-01_1100 x #7", id="leap-day-minus-12"),
    pytest.param(7, datetime.datetime(2026, 6, 1, 12, 0), "x",
                 "2026-06-01_1200 x #7", id="naive-is-utc"),
    pytest.param(7, datetime.datetime(999, 6, 1, 12, 0, tzinfo=UTC), "x",
                 "0999-06-01_1200 x #7", id="year-padded"),
    pytest.param(1, datetime.datetime(2026, 1, 1, tzinfo=UTC), "",
                 f"2026-01-01_0000 {NO_SUBJECT} #1", id="empty-subject"),
    pytest.param(1, datetime.datetime(2026, 1, 1, tzinfo=UTC), " \t\r\n ",
                 f"2026-01-01_0000 {NO_SUBJECT} #1", id="whitespace-subject"),
    pytest.param(1, datetime.datetime(2026, 1, 1, tzinfo=UTC), "...",
                 f"2026-01-01_0000 {NO_SUBJECT} #1", id="dots-subject"),
    pytest.param(MAX_UID, datetime.datetime(2026, 1, 1, tzinfo=UTC), "Re: a/b\tc",
                 "2026-01-01_0000 Re: a∕b c #4294967295", id="slash-tab-max-uid"),
    pytest.param(5, datetime.datetime(2026, 1, 1, tzinfo=UTC), "Invoice #12.eml",
                 "2026-01-01_0000 Invoice #12.eml #5", id="subject-looks-like-a-name"),
]


@pytest.mark.parametrize(("uid", "when", "subject", "stem"), STEMS)
def test_message_stem(uid: int, when: datetime.datetime, subject: str, stem: str) -> None:
    assert message_stem(uid, when, subject) == stem
    assert message_name(uid, when, subject) == stem + ".eml"
    assert parts_name(uid, when, subject) == "." + stem + ".parts"  # listed as a dot-name (issue 12)
    assert parse_message_name(stem + ".eml") == (uid, "eml")
    assert parse_message_name(stem + ".parts") == (uid, "parts")


WHEN = datetime.datetime(2026, 11, 26, 3, 20, tzinfo=UTC)

LONG_SUBJECTS = [
    pytest.param("x" * 300, id="ascii"),
    pytest.param("é" * 200, id="2-byte"),
    pytest.param("日本語のとても長い件名" * 30, id="3-byte"),
    pytest.param("😀" * 100, id="4-byte"),
    pytest.param("a" + "😀" * 100, id="4-byte-offset-1"),
    pytest.param("ab" + "😀" * 100, id="4-byte-offset-2"),
    pytest.param("abc" + "😀" * 100, id="4-byte-offset-3"),
    pytest.param("e\u0301\u0302" * 100, id="combining"),
    pytest.param("👍🏽" * 60, id="skin-tones"),
    pytest.param("🇩🇪" * 60, id="flags"),
    pytest.param("word " * 100, id="cut-near-space"),
]


@pytest.mark.parametrize("subject", LONG_SUBJECTS)
@pytest.mark.parametrize("uid", [1, 1234, MAX_UID])
def test_long_subject_is_truncated(subject: str, uid: int) -> None:
    stem = message_stem(uid, WHEN, subject)
    parts = parts_name(uid, WHEN, subject)
    assert nbytes(parts) <= 255
    assert nbytes(parts) > 255 - 4 * 2 - 3  # the budget is used, not wasted
    assert stem.endswith(f"… #{uid}")
    assert "  " not in stem and " …" not in stem
    kept = stem[len("2026-11-26_0320 ") : -len(f"… #{uid}")]
    assert unicodedata.normalize("NFC", subject).startswith(kept)
    assert parse_message_name(parts) == (uid, "parts")
    assert parse_message_name(message_name(uid, WHEN, subject)) == (uid, "eml")


def test_long_subject_keeps_clusters_whole() -> None:
    stem = message_stem(1, WHEN, "🇩🇪" * 60)
    flags = stem[len("2026-11-26_0320 ") : -len("… #1")]
    assert len(flags) % 2 == 0
    stem = message_stem(1, WHEN, "👍🏽" * 60)
    assert stem[-len("… #1") - 1] == "🏽"


def test_parts_names_are_the_listed_dot_name_then_the_plain_one() -> None:
    assert parts_names("2026-11-26_0320 Hi #7") == (".2026-11-26_0320 Hi #7.parts", "2026-11-26_0320 Hi #7.parts")
    assert parts_names(message_stem(7, WHEN, "Hi"))[0] == parts_name(7, WHEN, "Hi")


def test_subject_that_fits_exactly_is_not_truncated() -> None:
    budget = 255 - len("." + ".parts") - len("2026-11-26_0320 ") - len(" #1")
    assert parts_name(1, WHEN, "x" * budget).count("x") == budget
    assert "…" in parts_name(1, WHEN, "x" * (budget + 1))


@pytest.mark.parametrize("uid", [0, -1, MAX_UID + 1, True])
def test_message_stem_rejects_bad_uid(uid: int) -> None:
    with pytest.raises(ValueError):
        message_stem(uid, WHEN, "x")


def test_names_sort_in_date_order() -> None:
    msgs = [
        (30, datetime.datetime(2026, 1, 1, 0, 30, tzinfo=tz(1)), "zzz"),  # 2025-12-31 23:30Z
        (10, datetime.datetime(2025, 12, 31, 23, 45, tzinfo=UTC), "aaa"),
        (20, datetime.datetime(2025, 12, 31, 20, 0, tzinfo=tz(-5)), "mmm"),  # 2026-01-01 01:00Z
        (5, datetime.datetime(999, 1, 1, tzinfo=UTC), "old"),
    ]
    names = sorted(message_name(*m) for m in msgs)
    assert [parse_message_name(n)[0] for n in names] == [5, 30, 10, 20]


PARSE = [
    pytest.param("2026-11-26_0320 Meeting notes #1234.eml", (1234, "eml"), id="eml"),
    pytest.param("2026-11-26_0320 Meeting notes #1234.parts", (1234, "parts"), id="parts"),
    pytest.param("#1.eml", (1, "eml"), id="bare"),
    pytest.param("x#5.parts", (5, "parts"), id="no-space"),
    pytest.param("a #1 #2.eml", (2, "eml"), id="last-hash-wins"),
    pytest.param("x #4294967295.eml", (MAX_UID, "eml"), id="max-uid"),
    pytest.param("x #4294967296.eml", None, id="uid-too-big"),
    pytest.param("x #12345678901.eml", None, id="eleven-digits"),
    pytest.param("x #0.eml", None, id="uid-zero"),
    pytest.param("x #01.eml", None, id="leading-zero"),
    pytest.param("x #1.EML", None, id="upper-suffix"),
    pytest.param("x #1.eml ", None, id="trailing-space"),
    pytest.param("x #1.eml\n", None, id="trailing-newline"),
    pytest.param("x #1.eml.parts", None, id="double-suffix"),
    pytest.param("x #1.txt", None, id="other-suffix"),
    pytest.param("x 1.eml", None, id="no-hash"),
    pytest.param("x #.eml", None, id="no-digits"),
    pytest.param("x # 1.eml", None, id="space-in-uid"),
    pytest.param("x #-1.eml", None, id="negative"),
    pytest.param("x #١.eml", None, id="arabic-indic-digit"),
    pytest.param("x %231.eml", None, id="escaped-folder"),
    pytest.param("", None, id="empty"),
    pytest.param("INBOX", None, id="folder"),
]


@pytest.mark.parametrize(("name", "expected"), PARSE)
def test_parse_message_name(name: str, expected: tuple[int, str] | None) -> None:
    assert parse_message_name(name) == expected


offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda m: datetime.timezone(datetime.timedelta(minutes=m))
)
dates = st.datetimes(
    min_value=datetime.datetime(1970, 1, 2),
    max_value=datetime.datetime(9999, 12, 30),
    timezones=offsets,
)
uids = st.integers(min_value=1, max_value=MAX_UID)


@given(uids, dates, st.text())
def test_message_name_properties(uid: int, when: datetime.datetime, subject: str) -> None:
    eml = message_name(uid, when, subject)
    parts = parts_name(uid, when, subject)
    assert nbytes(parts) <= 255
    for name in (eml, parts):
        assert "/" not in name and "\x00" not in name
        assert not any(unicodedata.category(ch) == "Cc" for ch in name)
    assert parse_message_name(eml) == (uid, "eml")
    assert parse_message_name(parts) == (uid, "parts")
    utc = when.astimezone(UTC)
    assert eml.startswith(utc.strftime("%Y-%m-%d_%H%M ").rjust(16, "0"))
    assert message_name(uid, when, subject) == eml  # stable


@given(uids, uids, dates, st.text())
def test_names_unique_per_uid(uid1: int, uid2: int, when: datetime.datetime, subject: str) -> None:
    if uid1 != uid2:
        assert message_name(uid1, when, subject) != message_name(uid2, when, subject)


# --------------------------------------------------------------------------
# real headers (mail gem test corpus, read-only)
# --------------------------------------------------------------------------

CORPUS = Path("/work/shared/corpus/mail-gem")
CORPUS_FILES = sorted(CORPUS.rglob("*.eml")) if CORPUS.is_dir() else []


def _header_block(path: Path) -> bytes:
    return re.split(rb"\r?\n\r?\n", path.read_bytes(), maxsplit=1)[0] + b"\r\n\r\n"


def _subject_fields(header: bytes) -> bytes:
    """What a server returns for BODY.PEEK[HEADER.FIELDS (SUBJECT)]."""
    fields = re.findall(rb"(?im)^subject[ \t]*:.*(?:\r?\n[ \t].*)*", header)
    return b"".join(f.rstrip(b"\r") + b"\r\n" for f in fields) + b"\r\n"


@pytest.mark.skipif(not CORPUS_FILES, reason="mail corpus not available")
@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: str(p.relative_to(CORPUS)))
def test_corpus_subjects(path: Path) -> None:
    header = _header_block(path)
    for raw in (header, _subject_fields(header)):
        subject = decode_subject(raw)
        assert isinstance(subject, str)
        name = message_name(42, WHEN, subject)
        assert "/" not in name and "\x00" not in name
        assert nbytes(parts_name(42, WHEN, subject)) <= 255
        assert parse_message_name(name) == (42, "eml")


CORPUS_EXPECTED = [
    ("attachment_emails/attachment_with_quoted_filename.eml", "Eelanalüüsi päring"),
    ("attachment_emails/attachment_pdf.eml", "Another PDF with 🎉 Unicode chars in it 🍿"),
    ("error_emails/bad_subject.eml", "MySurvey.com:  You have a survey waiting!  91123105"),
    ("error_emails/bad_encoded_subject.eml", "=?NONE?B?VEVTVA=?="),
    ("error_emails/invalid_subject_characters.eml",
     "Formação FrenetikPolis: Mega Campanha Final Verão | Cursos de Setembro"),
    ("error_emails/weird_to_header.eml", ""),
    ("mime_emails/raw_email_encoded_stack_level_too_deep.eml",
     "Nicolas Fouché has accepted your invitation to Gmail"),
    ("multi_charset/japanese.eml", "まみむめも"),
    ("multi_charset/japanese_attachment_long_name.eml", "まみむめも" * 10),
    ("plain_emails/raw_email.eml", "NOTE: 한국말로 하는 것"),
    ("plain_emails/raw_email_multiple_from.eml", "/home/svn/public/minebox revision 214"),
    ("plain_emails/raw_email_with_partially_quoted_subject.eml", 'Re: Test: "漢字" mid "漢字" tail'),
    ("rfc2822/example13.eml", "Saying Hello"),
    ("rfc2822/example14.eml", "Re: TEST \tテストテスト"),
    ("rfc6532/utf8_headers.eml", "Säying Hello"),
]


@pytest.mark.skipif(not CORPUS_FILES, reason="mail corpus not available")
@pytest.mark.parametrize(("rel", "expected"), CORPUS_EXPECTED)
def test_corpus_expected_subjects(rel: str, expected: str) -> None:
    header = _header_block(CORPUS / rel)
    assert decode_subject(header) == expected
    assert decode_subject(_subject_fields(header)) == expected


def test_corpus_slash_subject_name() -> None:
    path = CORPUS / "plain_emails/raw_email_multiple_from.eml"
    if not path.exists():
        pytest.skip("mail corpus not available")
    name = message_name(214, WHEN, decode_subject(_header_block(path)))
    assert name == "2026-11-26_0320 ∕home∕svn∕public∕minebox revision 214 #214.eml"


# --------------------------------------------------------------------------
# The shortcuts of the cold listing (issue 12): the same results as the long way
# --------------------------------------------------------------------------

_TEXT = st.text(st.characters(blacklist_categories=()), max_size=40) | st.text(
    st.sampled_from("ab /.\t\x01\x7f\u202e\u2066e\u0301\ud800\U0001f600=?"), max_size=40)


def _clean_the_long_way(text: str) -> str:
    text = re.sub("[\ud800-\udfff]", "\ufffd", text)
    text = unicodedata.normalize("NFC", text).replace("/", "\u2215")
    text = re.sub("[\u202a-\u202e\u2066-\u2069]", "", text)
    text = " ".join(re.sub("[\x00-\x1f\x7f-\x9f]", " ", text).split())
    return text.lstrip(". ")


@given(_TEXT)
def test_shortcuts_agree_with_the_long_way(text: str) -> None:
    from imapfs import naming

    assert naming._utf8_len(text) == sum(naming._char_bytes(c) for c in text)
    assert naming._clean(text) == _clean_the_long_way(text)
    data = text.encode("utf-8", "surrogatepass")
    for raw in (data, data + b"\xe9\x80"):
        assert naming._decode_utf8_or_cp1252(raw) == re.sub(
            "[\udc80-\udcff]", lambda m: naming._CP1252[ord(m.group()) - 0xDC00],
            raw.decode("utf-8", "surrogateescape"))


@pytest.mark.parametrize(("subject", "want"), [("plain ascii", "plain ascii"), ("no =? here", "no =? here"),
                                             ("=?utf-8?q?caf=C3=A9?=", "café"), ("a=?b", "a=?b"), ("", ""),
                                             ("x =?x-nosuch?q?y?= z", "x =?x-nosuch?q?y?= z")])
def test_encoded_word_shortcut(subject: str, want: str) -> None:
    from imapfs import naming

    assert naming._decode_encoded_words(subject) == want
    assert decode_subject(b"Subject: " + subject.encode() + b"\r\n") == want


@pytest.mark.parametrize("when", [datetime.datetime(2024, 3, 5, 8, 7, tzinfo=UTC),
                                  datetime.datetime(2024, 3, 5, 8, 7),
                                  datetime.datetime(2024, 3, 5, 9, 7, tzinfo=tz(1))])
def test_stem_of_a_utc_date_is_the_stem_of_the_same_instant(when: datetime.datetime) -> None:
    assert message_stem(7, when, "x") == "2024-03-05_0807 x #7"


def _subject_value_the_long_way(raw: bytes) -> bytes | None:
    m = re.search(rb"^subject[ \t]*:", raw, re.IGNORECASE | re.MULTILINE)
    if m is None:
        return None
    lines = re.split(rb"\r?\n", raw[m.end():])
    value = [lines[0]]
    for line in lines[1:]:
        if not line.startswith((b" ", b"\t")):
            break
        value.append(line)
    return b"".join(value)


@given(st.lists(st.sampled_from([b"Subject:", b"subject :", b"X: y", b" ", b"\t", b"\r", b"\n", b"\r\n", b"a",
                                 b"=?utf-8?q?x?=", b"\xc3\xa9", b":"]), max_size=16))
def test_subject_value_agrees_with_the_long_way(parts: list[bytes]) -> None:
    from imapfs import naming

    raw = b"".join(parts)
    assert naming._subject_value(raw) == _subject_value_the_long_way(raw)


@pytest.mark.parametrize(("raw", "want"), [(b"Subject: a\r\n\r\n", b" a"), (b"Subject: a\r\n b\r\n", b" a b"),
                                           (b"Subject:\r\n\r\n", b""), (b"Subject: a\r\r\n", b" a\r"),
                                           (b"Subject: a", b" a"), (b"Subject: a\n\tb", b" a\tb"),
                                           (b"X: 1\r\nsubject\t: z\r\n", b" z")])
def test_subject_value(raw: bytes, want: bytes) -> None:
    from imapfs import naming

    assert naming._subject_value(raw) == want == _subject_value_the_long_way(raw)
