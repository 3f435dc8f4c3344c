"""Tests for imapfs.mime: BODYSTRUCTURE → part tree → ``.parts`` listing.

The BODYSTRUCTURE strings marked "dovecot" are verbatim replies of Dovecot
2.3.19 to messages of the mail-gem corpus (or to the small hand-written
messages named "crafted:"), appended with CRLF line endings; the test needs
no server.  Those marked "hand" imitate other servers or broken ones.  A few
tests at the end decode entries of these real listings with
:func:`imapfs.transfer.decode_part`, because that is where the table lives;
the decoders' own tests are tests/test_transfer.py and tests/test_charset.py.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imapfs import imapproto
from imapfs.errors import ProtocolError
from imapfs.mime import (
    MAX_DEPTH,
    NAME_BUDGET,
    BodyPart,
    MimeError,
    PartEntry,
    list_entries,
    lookup,
    mime_type,
    parse_bodystructure,
    raw_name,
    split_sections,
)
from imapfs.transfer import DecodeError, decode_part

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def bs(text: bytes | list[Any]) -> Any:
    """A BODYSTRUCTURE as imapproto hands it over (list = imaplib chunks)."""
    chunks = text if isinstance(text, list) else [text]
    (value,) = imapproto.parse(chunks)
    return value


def flat(entries: list[PartEntry], depth: int = 0) -> list[str]:
    out = []
    for e in entries:
        out.append(f"{'  ' * depth}{e.name} | {e.section} | {e.kind} | {mime_type(e.part)}")
        out.extend(flat(e.children, depth + 1))
    return out


def walk(entries: list[PartEntry]) -> list[PartEntry]:
    out = []
    for e in entries:
        out.append(e)
        out.extend(walk(e.children))
    return out



# --------------------------------------------------------------------------
# Real BODYSTRUCTUREs → listing
# --------------------------------------------------------------------------

LISTINGS = [
    pytest.param(
        b'("text" "plain" ("charset" "US-ASCII" "format" "flowed") NIL NIL "7bit" 46 5 NIL NIL NIL NIL)',
        ["1-body.txt | 1 | text | text/plain"],
        id="dovecot:plain_emails/basic_email",
    ),
    pytest.param(
        b'("Text" "Plain" ("charset" "iso-8859-1") NIL NIL "quoted-printable" 9 1 NIL NIL NIL NIL)',
        ["1-body.txt | 1 | text | text/plain"],
        id="dovecot:plain_emails/mix_caps_content_type",
    ),
    pytest.param(
        b'("application" "x-gzip" ("NAME" "blah.gz") NIL "Attachment has identical content to above'
        b' foo.gz" "base64" 394 NIL ("attachment" ("filename" "blah.gz")) NIL NIL)',
        ["1-blah.gz | 1 | binary | application/x-gzip"],
        id="dovecot:attachment_emails/attachment_only_email",
    ),
    pytest.param(
        b'(("text" "plain" ("charset" "ISO-8859-1" "delsp" "yes" "format" "flowed") NIL NIL'
        b' "quoted-printable" 25 1 NIL NIL NIL NIL)("text" "x-ruby-script" ("name" "hello.rb"'
        b' "charset" "us-ascii") NIL NIL "7bit" 28 2 NIL ("attachment" ("filename" "api.rb")) NIL'
        b' NIL) "mixed" ("boundary" "Apple-Mail-13-196941151") NIL NIL NIL)',
        ["1-body.txt | 1 | text | text/plain", "2-api.rb | 2 | text | text/x-ruby-script"],
        id="dovecot:attachment_emails/attachment_content_disposition",
    ),
    pytest.param(
        b'(("text" "plain" ("charset" "ISO-8859-1" "delsp" "yes" "format" "flowed") NIL NIL'
        b' "quoted-printable" 25 1 NIL NIL NIL NIL)("image" "jpeg" NIL "<qbFGyPQAS8>" NIL "base64"'
        b' 312 NIL ("inline" NIL) NIL "Photo25.jpg") "mixed" ("boundary" "Apple-Mail-13-196941151")'
        b" NIL NIL NIL)",
        ["1-body.txt | 1 | text | text/plain", "2-part.jpg | 2 | binary | image/jpeg"],
        id="dovecot:attachment_emails/attachment_content_location",
    ),
    pytest.param(
        b'(("text" "plain" ("charset" "ISO-8859-1" "delsp" "yes" "format" "flowed") NIL NIL'
        b' "quoted-printable" 25 1 NIL NIL NIL NIL)("message" "rfc822" ("name" "ForwardedMessage.eml")'
        b' NIL NIL "7bit" 3781 ("Tue, 10 May 2005 11:26:39 -0600" "Another PDF" (("Test Tester" NIL'
        b' "xxxx" "xxxx.com")) (("Test Tester" NIL "xxxx" "xxxx.com")) (("Test Tester" NIL "xxxx"'
        b' "xxxx.com")) ((NIL NIL "xxxx" "xxxx.com")(NIL NIL "xxxx" "xxxx.com")) NIL NIL NIL'
        b' "<xxxx@xxxx.com>") (("text" "plain" ("charset" "ISO-8859-1") NIL NIL "quoted-printable"'
        b' 129 2 NIL ("inline" NIL) NIL NIL)("application" "pdf" ("name" "broken.pdf") NIL NIL'
        b' "base64" 1402 NIL ("attachment" ("filename" "broken.pdf")) NIL NIL) "mixed" ("boundary"'
        b' "----=_Part_2192_32400445.1115745999735") NIL NIL NIL) 69 NIL NIL NIL NIL) "mixed"'
        b' ("boundary" "Apple-Mail-13-196941151") NIL NIL NIL)',
        [
            "1-body.txt | 1 | text | text/plain",
            "2-Another PDF.eml | 2 | message | message/rfc822",
            "  2.1-body.txt | 2.1 | text | text/plain",
            "  2.2-broken.pdf | 2.2 | binary | application/pdf",
        ],
        id="dovecot:attachment_emails/attachment_message_rfc822",
    ),
    pytest.param(
        b'(((("text" "html" ("charset" "utf-8") NIL NIL "quoted-printable" 100 3 NIL NIL NIL NIL)'
        b' "alternative" ("boundary" "------=_MB41C5AACC-67CF-4DFC-A53A-865270BC750F") NIL NIL NIL)'
        b'("image" "png" ("name" "img.png") "<emedfeb92f-a786-4718-a446-98db8afb53fb@kronos>" NIL'
        b' "base64" 510 NIL ("inline" ("size" "370" "filename" "img.png")) NIL NIL) "related"'
        b' ("boundary" "------=_MB7DFCF053-5DBC-4ABA-BA34-0A2FA19EC02A") NIL NIL NIL)("message"'
        b' "rfc822" ("name" "Testmail.eml") NIL NIL "7bit" 1853 ("Tue, 10 May 2005 11:26:39 -0600"'
        b' "Another PDF" (("Test Tester" NIL "xxxx" "xxxx.com")) (("Test Tester" NIL "xxxx"'
        b' "xxxx.com")) (("Test Tester" NIL "xxxx" "xxxx.com")) ((NIL NIL "xxxx" "xxxx.com")(NIL NIL'
        b' "xxxx" "xxxx.com")) NIL NIL NIL "<xxxx@xxxx.com>") (("text" "plain" ("charset" "us-ascii")'
        b' NIL NIL "7bit" 0 0 NIL NIL NIL NIL) "mixed" ("boundary"'
        b' "----=_Part_2192_32400445.1115745999735") NIL NIL NIL) 37 NIL ("attachment" ("filename"'
        b' "Testmail.eml")) NIL NIL) "mixed" ("boundary"'
        b' "------=_MB7A4C516C-8688-4B63-8C13-CC0B5BA90B2B") NIL NIL NIL)',
        [
            "1.1.1-body.html | 1.1.1 | text | text/html",
            "1.2-img.png | 1.2 | binary | image/png",
            "2-Another PDF.eml | 2 | message | message/rfc822",
            "  2.1-body.txt | 2.1 | text | text/plain",
        ],
        id="dovecot:attachment_emails/attachment_message_rfc822_inline_image",
    ),
    pytest.param(
        # 8-bit file name: Dovecot sends it as a literal, raw UTF-8.
        [
            (b'(("text" "plain" ("charset" "ISO-8859-1" "delsp" "yes" "format" "flowed") NIL NIL'
             b' "quoted-printable" 25 1 NIL NIL NIL NIL)("text" "plain" ("name" {10}',
             b"ci\xc3\xable.txt"),
            (b' "charset" "us-ascii") NIL NIL "7bit" 11 1 NIL ("attachment" ("filename" {10}',
             b"ci\xc3\xable.txt"),
            b')) NIL NIL) "mixed" ("boundary" "Apple-Mail-13-196941151") NIL NIL NIL)',
        ],
        ["1-body.txt | 1 | text | text/plain", "2-ciële.txt | 2 | text | text/plain"],
        id="dovecot:attachment_emails/attachment_nonascii_filename",
    ),
    pytest.param(
        b'(("text" "plain" ("charset" "ISO-8859-1") NIL NIL "quoted-printable" 306 13 NIL ("inline"'
        b' NIL) NIL NIL)("application" "pdf" ("name" "=?utf-8?B?VGhpcyBpcyBhIHRlc3QucGRm?=") NIL NIL'
        b' "base64" 544 NIL ("attachment" ("filename" "=?utf-8?B?VGhpcyBpcyBhIHRlc3QucGRm?=")) NIL'
        b' NIL) "mixed" ("boundary" "----=_Part_5028_7368284.1115579351471") NIL NIL NIL)',
        ["1-body.txt | 1 | text | text/plain", "2-This is a test.pdf | 2 | binary | application/pdf"],
        id="dovecot:attachment_emails/attachment_with_base64_encoded_name",
    ),
    pytest.param(
        # RFC 2231 in iso-2022-jp that is not: the byte %8a falls back to windows-1252.
        b'(("text" "plain" ("charset" "ISO-8859-1") NIL NIL "quoted-printable" 313 13 NIL ("inline"'
        b' NIL) NIL NIL)("application" "octet-stream" ("name*"'
        b" \"iso-2022-jp'ja'01%20Quien%20Te%20Dij%8aat.%20Pitbull.mp3\") NIL NIL \"base64\" 544 NIL"
        b' ("attachment" NIL) NIL NIL) "mixed" ("boundary" "----=_Part_5028_7368284.1115579351471")'
        b" NIL NIL NIL)",
        [
            "1-body.txt | 1 | text | text/plain",
            "2-01 Quien Te Dij\u0160at. Pitbull.mp3 | 2 | binary | application/octet-stream",
        ],
        id="dovecot:attachment_emails/attachment_with_encoded_name",
    ),
    pytest.param(
        b'(("image" "jpeg" ("x-unix-mode" "0700" "name" "=?ISO-8859-1?Q?Eelanal=FC=FCsi_p=E4ring.jpg?=")'
        b' NIL NIL "base64" 2674 NIL ("inline" ("filename*"'
        b" \"ISO-8859-1''Eelanal%FC%FCsi%20p%E4ring.jpg\")) NIL NIL) \"mixed\" (\"boundary\""
        b' "Apple-Mail-6--218366681") NIL NIL NIL)',
        ["1-Eelanalüüsi päring.jpg | 1 | binary | image/jpeg"],
        id="dovecot:attachment_emails/attachment_with_quoted_filename",
    ),
    pytest.param(
        b'(("image" "jpg" NIL NIL NIL "base64" 1794 NIL ("" NIL) NIL "somefile.jpg") "related"'
        b' ("boundary" "_----------=_10117101281980") NIL NIL NIL)',
        ["1-part.jpg | 1 | binary | image/jpg"],
        id="dovecot:error_emails/missing_content_disposition",
    ),
    pytest.param(
        b'(("text" "plain" ("charset" "us-ascii" "format" "flowed") NIL NIL "7bit" 785 20 NIL NIL NIL'
        b' NIL)("application" "msword" ("name" "PGP_Cmts_on_12-14-01_Pkg.doc" "x-mac-type" "5738424E"'
        b' "x-mac-creator" "4D535744") "<p05100307b863befdfb67@[207.202.136.216].0.0>" NIL'
        b' "x-uuencode" 0 NIL ("attachment" ("filename" "PGP_Cmts_on_12-14-01_Pkg.doc"'
        b' "modification-date" "Thu, 10 Jan 2002 13:58:10 -0800")) NIL NIL) "mixed" ("boundary"'
        b' "============_-1201422494==_============") NIL NIL NIL)',
        [
            "1-body.txt | 1 | text | text/plain",
            "2-PGP_Cmts_on_12-14-01_Pkg.doc | 2 | binary | application/msword",
        ],
        id="dovecot:error_emails/content_transfer_encoding_x_uuencode",
    ),
    pytest.param(
        b'((("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 11 1 NIL ("inline" NIL) NIL "text.txt")'
        b' "mixed" ("boundary" "mimepart_427e4cb4cbd97_133ae40413c8217") NIL NIL NIL)("text" "plain"'
        b' ("charset" "us-ascii") NIL NIL "7bit" 318 8 NIL NIL NIL NIL)("text" "plain" ("charset"'
        b' "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL)("text" "plain" ("charset" "us-ascii") NIL'
        b' NIL "7bit" 0 0 NIL NIL NIL NIL) "mixed" ("boundary" "mimepart_427e4cb4ca329_133ae40413c81ef")'
        b" NIL NIL NIL)",
        [
            "1.1-body.txt | 1.1 | text | text/plain",
            "2-body.txt | 2 | text | text/plain",
            "3-body.txt | 3 | text | text/plain",
            "4-body.txt | 4 | text | text/plain",
        ],
        id="dovecot:mime_emails/raw_email4",
    ),
    pytest.param(
        b'((("text" "plain" ("charset" "ISO-8859-1" "delsp" "yes" "format" "flowed") NIL NIL'
        b' "quoted-printable" 25 1 NIL NIL NIL NIL)("text" "x-ruby-script" ("x-unix-mode" "0666" "name"'
        b' "test.rb" "charset" "us-ascii") NIL NIL "7bit" 25 1 NIL ("attachment" ("filename"'
        b' "test.rb")) NIL NIL)("application" "pdf" ("x-unix-mode" "0666" "name" "test.pdf") NIL NIL'
        b' "base64" 22 NIL ("inline" ("filename" "test.pdf")) NIL NIL)("text" "plain" ("charset"'
        b' "US-ASCII" "format" "flowed") NIL NIL "7bit" 2 1 NIL NIL NIL NIL) "mixed" ("boundary"'
        b' "Apple-Mail-12-196940926") NIL NIL NIL)("application" "pkcs7-signature" ("name"'
        b' "smime.p7s") NIL NIL "base64" 312 NIL ("attachment" ("filename" "smime.p7s")) NIL NIL)'
        b' "mixed" ("boundary" "Apple-Mail-13-196941151") NIL NIL NIL)',
        [
            "1.1-body.txt | 1.1 | text | text/plain",
            "1.2-test.rb | 1.2 | text | text/x-ruby-script",
            "1.3-test.pdf | 1.3 | binary | application/pdf",
            "1.4-body.txt | 1.4 | text | text/plain",
            "2-smime.p7s | 2 | binary | application/pkcs7-signature",
        ],
        id="dovecot:mime_emails/raw_email7",
    ),
    pytest.param(
        # multipart/report whose returned message has a single text body: 3.1
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 519 12 NIL NIL NIL NIL)("message"'
        b' "delivery-status" NIL NIL NIL "7bit" 322 NIL NIL NIL NIL)("message" "rfc822" NIL NIL NIL'
        b' "7bit" 1548 ("Wed, 18 Oct 2006 18:10:03 -0400" "Est-ce toi ?" (("=?ISO-8859-1?Q?RogE9?="'
        b' NIL "roor32" "gmail.com")) (("=?ISO-8859-1?Q?RogE9?=" NIL "roor32" "gmail.com"))'
        b' (("=?ISO-8859-1?Q?RogE9?=" NIL "roor32" "gmail.com")) ((NIL NIL "larose.julie"'
        b' "courrier.uqam.ca")) NIL NIL NIL'
        b' "<89d7557c0610181510r6fa5ebd8n66a7deec71ade118@mail.gmail.com>") ("text" "plain"'
        b' ("charset" "ISO-8859-1" "format" "flowed") NIL NIL "7bit" 143 5 NIL ("inline" NIL) NIL'
        b' NIL) 29 NIL NIL NIL NIL) "report" ("report-type" "delivery-status" "boundary"'
        b' "k9JMDbg4005560.1161332913/antivirus.uqam.ca") NIL NIL NIL)',
        [
            "1-body.txt | 1 | text | text/plain",
            "2-part.txt | 2 | binary | message/delivery-status",
            "3-Est-ce toi ?.eml | 3 | message | message/rfc822",
            "  3.1-body.txt | 3.1 | text | text/plain",
        ],
        id="dovecot:mime_emails/raw_email_with_mimepart_without_content_type",
    ),
    pytest.param(
        b'(("message" "delivery-status" NIL NIL NIL "7bit" 184 NIL NIL NIL NIL)("message"'
        b' "delivery-status" NIL NIL NIL "7bit" 262 NIL NIL NIL NIL)("message" "rfc822" NIL NIL NIL'
        b' "7bit" 2680 ("Tue, 29 Jun 2010 15:42:25 +0000" "Your Friend F M wants you to join HomeRun"'
        b' (("HomeRun" NIL "notification" "blah.com")) (("HomeRun" NIL "notification" "blah.com"))'
        b' (("HomeRun" NIL "notification+45b0d380" "blah.com")) ((NIL NIL "u" "ci.com")) NIL NIL NIL'
        b' "<4c2a146147ac8_61ff157c4ec1652df@s.h.c.mail>") (("text" "plain" ("charset" "UTF-8")'
        b' "<4c2a146145451_61ff157c4ec165040@s.h.c.mail>" NIL "base64" 172 4 NIL NIL NIL NIL)("text"'
        b' "html" ("charset" "UTF-8") "<4c2a1461468ae_61ff157c4ec165194@s.h.c.mail>" NIL "base64" 268'
        b' 6 NIL NIL NIL NIL) "alternative" ("boundary" "--==_mimepart_4c2a146141756_61ff157c4ec1649a8"'
        b' "charset" "UTF-8") NIL NIL NIL) 64 NIL NIL NIL NIL) "report" ("report-type"'
        b' "delivery-status" "Boundary" "===========================_ _= 6078796(15102)1277826164")'
        b" NIL NIL NIL)",
        [
            "1-part.txt | 1 | binary | message/delivery-status",
            "2-part.txt | 2 | binary | message/delivery-status",
            "3-Your Friend F M wants you to join HomeRun.eml | 3 | message | message/rfc822",
            "  3.1-body.txt | 3.1 | text | text/plain",
            "  3.2-body.html | 3.2 | text | text/html",
        ],
        id="dovecot:multipart_report_emails/multipart_report_multiple_status",
    ),
    pytest.param(
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 887 24 NIL NIL NIL NIL)("message"'
        b' "delivery-status" NIL NIL NIL "7bit" 337 NIL NIL NIL NIL)("text" "rfc822-headers"'
        b' ("charset" "us-ascii") NIL NIL "7bit" 686 13 NIL NIL NIL NIL) "report" ("report-type"'
        b' "delivery-status" "boundary" "m0GFZ1c3009410.1200501652/mail11.ttttt.com.au") NIL NIL NIL)',
        [
            "1-body.txt | 1 | text | text/plain",
            "2-part.txt | 2 | binary | message/delivery-status",
            "3-part.txt | 3 | text | text/rfc822-headers",
        ],
        id="dovecot:multipart_report_emails/report_422",
    ),
    pytest.param(
        b'(("text" "plain" ("x-unix-mode" "0644" "name"'
        b' "=?utf-8?B?44GL44GN44GP44GR44GT44GL44GN44GP44GR44GT44GL44GN44GP?='
        b' =?utf-8?B?44GR44GT44GL44GN44GP44GR44GT44GL44GN44GP44GR44GTLnR4?= =?utf-8?B?dA==?="'
        b' "charset" "us-ascii") NIL NIL "7bit" 18 1 NIL ("attachment" ("filename*"'
        b" \"utf-8''%E3%81%8B%E3%81%8D%E3%81%8F%E3%81%91%E3%81%93%E3%81%8B%E3%81%8D%E3%81%8F%E3%81%91"
        b"%E3%81%93%E3%81%8B%E3%81%8D%E3%81%8F%E3%81%91%E3%81%93%E3%81%8B%E3%81%8D%E3%81%8F%E3%81%91"
        b"%E3%81%93%E3%81%8B%E3%81%8D%E3%81%8F%E3%81%91%E3%81%93.txt\")) NIL NIL) \"mixed\""
        b' ("boundary" "Apple-Mail-6--589811753") NIL NIL NIL)',
        ["1-" + "かきくけこ" * 5 + ".txt | 1 | text | text/plain"],
        id="dovecot:multi_charset/japanese_attachment_long_name",
    ),
    pytest.param(
        b'(("text" "plain" ("charset" "UTF-8") NIL NIL "7bit" 70 5 NIL NIL NIL NIL)("text" "plain"'
        b' ("charset" "UTF-8" "name" "=?UTF-8?B?44Gm44GZ44GoLnR4dA==?=") NIL NIL "base64" 44 0 NIL'
        b' ("attachment" ("filename" "=?UTF-8?B?44Gm44GZ44GoLnR4dA==?=")) NIL NIL) "mixed" ("boundary"'
        b' "00032557395e3572cf04760cb060") NIL NIL NIL)',
        ["1-body.txt | 1 | text | text/plain", "2-てすと.txt | 2 | text | text/plain"],
        id="dovecot:multi_charset/japanese_attachment",
    ),
    pytest.param(
        b'(("text" "plain" ("charset" "US-ASCII") NIL NIL "quoted-printable" 99 2 NIL NIL NIL NIL)'
        b'("application" "pgp-signature" ("name" "signature.asc") NIL NIL "7bit" 197 NIL ("attachment"'
        b' ("filename" "signature.asc")) NIL NIL) "signed" ("boundary" "Sig_2GIY2xfzqSADMmu9sKGJqWm"'
        b' "protocol" "application/pgp-signature" "micalg" "PGP-SHA1") NIL NIL NIL)',
        ["1-body.txt | 1 | text | text/plain", "2-signature.asc | 2 | binary | application/pgp-signature"],
        id="dovecot:mime_emails/sig_only_email",
    ),
    pytest.param(
        b'(("text" "plain" ("charset" "US-ASCII" "format" "flowed") NIL NIL "7bit" 15 2 NIL NIL NIL'
        b' NIL)("text" "enriched" ("charset" "US-ASCII") NIL NIL "7bit" 32 4 NIL NIL NIL NIL)'
        b' "alternative" ("boundary" "Apple-Mail-5-1037861608") NIL NIL NIL)',
        ["1-body.txt | 1 | text | text/plain", "2-part.txt | 2 | text | text/enriched"],
        id="dovecot:mime_emails/raw_email11",
    ),
    pytest.param(
        b'((("text" "plain" ("charset" "utf-8") NIL NIL "8bit" 6 1 NIL NIL NIL NIL)("text" "html"'
        b' ("charset" "utf-8") NIL NIL "8bit" 244 6 NIL NIL NIL NIL) "alternative" ("boundary"'
        b' "----=_NextPart_476c4fde88e507bb8028170e8cf47c73_alt") NIL NIL NIL)("application"'
        b' "octetstream" NIL "<LOGO.png>" NIL "base64" 6 NIL ("attachment" ("filename" "LOGO.png"))'
        b' NIL NIL) "mixed" ("boundary" "----=_NextPart_476c4fde88e507bb8028170e8cf47c73") NIL NIL NIL)',
        [
            "1.1-body.txt | 1.1 | text | text/plain",
            "1.2-body.html | 1.2 | text | text/html",
            "2-LOGO.png | 2 | binary | application/octetstream",
        ],
        id="dovecot:mime_emails/email_with_similar_boundaries",
    ),
    pytest.param(
        b'(("image" "jpeg" ("name" "2013-08-13_19-08-28-1.jpg") NIL NIL "binary" 24 NIL NIL NIL'
        b' "2013-08-13_19-08-28-1.jpg")("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL'
        b' NIL NIL NIL) "alternative" ("boundary" "----") NIL NIL NIL)',
        ["1-2013-08-13_19-08-28-1.jpg | 1 | binary | image/jpeg", "2-body.txt | 2 | text | text/plain"],
        id="dovecot:mime_emails/raw_email_with_binary_encoded",
    ),
    pytest.param(
        b'(("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 6 0 NIL NIL NIL NIL)("text" "calendar"'
        b' ("charset" "utf-8" "method" "REQUEST") NIL NIL "base64" 24 0 NIL NIL NIL NIL)("application"'
        b' "ics" ("name" "invite.ics") NIL NIL "base64" 24 NIL ("attachment" ("filename" "invite.ics"))'
        b' NIL NIL) "alternative" ("boundary" "cal") NIL NIL NIL)',
        [
            "1-body.txt | 1 | text | text/plain",
            "2-part.ics | 2 | text | text/calendar",
            "3-invite.ics | 3 | binary | application/ics",
        ],
        id="dovecot:crafted:calendar",
    ),
    pytest.param(
        # message/global is sent as a basic part; an empty message/rfc822 has a NIL envelope.
        b'(("message" "global" NIL NIL NIL "7bit" 58 NIL NIL NIL NIL)("message" "rfc822" NIL NIL NIL'
        b' "7bit" 0 (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL) ("text" "plain" ("charset" "us-ascii")'
        b' NIL NIL "7bit" 0 0 NIL NIL NIL NIL) 0 NIL NIL NIL NIL) "mixed" ("boundary" "g") NIL NIL NIL)',
        [
            "1-part.eml | 1 | binary | message/global",
            "2-(no subject).eml | 2 | message | message/rfc822",
            "  2.1-body.txt | 2.1 | text | text/plain",
        ],
        id="dovecot:crafted:message_global",
    ),
    pytest.param(
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 13 0 NIL NIL NIL NIL)("message"'
        b' "rfc822" NIL NIL NIL "7bit" 199 (NIL "=?iso-8859-1?q?Gr=FC=DFe?= inner" ((NIL NIL "c"'
        b' "example.org")) ((NIL NIL "c" "example.org")) ((NIL NIL "c" "example.org")) NIL NIL NIL NIL'
        b' NIL) ("text" "plain" ("charset" "windows-1252") NIL NIL "quoted-printable" 21 0 NIL NIL NIL'
        b' NIL) 6 NIL NIL NIL NIL)("message" "rfc822" NIL NIL NIL "7bit" 369 (NIL "second / with'
        b' slash" ((NIL NIL "d" "example.org")) ((NIL NIL "d" "example.org")) ((NIL NIL "d"'
        b' "example.org")) NIL NIL NIL NIL NIL) (("text" "html" ("charset" "utf-8") NIL NIL "7bit" 9 0'
        b' NIL NIL NIL NIL)("message" "rfc822" NIL NIL NIL "7bit" 50 (NIL "deepest" ((NIL NIL "e"'
        b' "example.org")) ((NIL NIL "e" "example.org")) ((NIL NIL "e" "example.org")) NIL NIL NIL NIL'
        b' NIL) ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 9 0 NIL NIL NIL NIL) 3 NIL NIL'
        b' NIL NIL)("image" "jpeg" NIL NIL NIL "base64" 8 NIL NIL NIL NIL) "mixed" ("boundary"'
        b' "inner") NIL NIL NIL) 22 NIL NIL NIL NIL) "mixed" ("boundary" "outer") NIL NIL NIL)',
        [
            "1-body.txt | 1 | text | text/plain",
            "2-Grüße inner.eml | 2 | message | message/rfc822",
            "  2.1-body.txt | 2.1 | text | text/plain",
            "3-second \u2215 with slash.eml | 3 | message | message/rfc822",
            "  3.1-body.html | 3.1 | text | text/html",
            "  3.2-deepest.eml | 3.2 | message | message/rfc822",
            "    3.2.1-body.txt | 3.2.1 | text | text/plain",
            "  3.3-part.jpg | 3.3 | binary | image/jpeg",
        ],
        id="dovecot:crafted:nested_rfc822",
    ),
    pytest.param(
        # multipart/mixed without boundary: Dovecot reports one empty text part.
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL) "mixed" NIL NIL'
        b" NIL NIL)",
        ["1-body.txt | 1 | text | text/plain"],
        id="dovecot:crafted:no_boundary",
    ),
    pytest.param(
        # Dovecot joins RFC 2231 continuations (name*0*, name*1*, name*2) into one name*.
        b'(("text" "plain" ("charset" "iso-8859-1") NIL NIL "quoted-printable" 22 0 NIL NIL NIL NIL)'
        b"(\"application\" \"pdf\" (\"name*\" \"utf-8''Gr%C3%BC%C3%9Fe%20aus%20Z%C3%BCrich.pdf\") NIL"
        b" NIL \"base64\" 12 NIL (\"attachment\" (\"filename*\" \"iso-8859-1'de'Rechnung%20Nr."
        b' 42.pdf")) NIL NIL)("text" "plain" ("name" "=?utf-8?Q?K=C3=A4se?= =?utf-8?Q?_und_Brot.txt?="'
        b' "charset" "us-ascii") NIL NIL "8bit" 5 0 NIL ("attachment" NIL) NIL NIL) "mixed"'
        b' ("boundary" "BB") NIL NIL NIL)',
        [
            "1-body.txt | 1 | text | text/plain",
            "2-Rechnung Nr. 42.pdf | 2 | binary | application/pdf",
            "3-Käse und Brot.txt | 3 | text | text/plain",
        ],
        id="dovecot:crafted:rfc2231_continuations",
    ),
    pytest.param(
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0 NIL NIL NIL NIL)("application"'
        b' "octet-stream" ("name" "hi.txt") NIL NIL "x-uuencode" 43 NIL NIL NIL NIL) "mixed"'
        b' ("boundary" "uu") NIL NIL NIL)',
        ["1-body.txt | 1 | text | text/plain", "2-hi.txt | 2 | binary | application/octet-stream"],
        id="dovecot:crafted:uuencode",
    ),
    pytest.param(
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7vladi.Pimenovit" 820 22 NIL NIL NIL NIL)',
        ["1-body.txt | 1 | text | text/plain"],
        id="dovecot:error_emails/content_transfer_encoding_spam",
    ),
    # ---- hand-made: what other servers or broken ones send ------------------
    pytest.param(
        b'((("text" "plain" ("charset" "iso-8859-1") NIL NIL "quoted-printable" 10 1 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "utf-8") NIL NIL "7bit" 10 1 NIL NIL NIL NIL) "alternative"'
        b' ("boundary" "a") NIL NIL NIL)("application" "pdf" ("name" "Rechnung.pdf") NIL NIL "base64"'
        b' 10 NIL ("attachment" NIL) NIL NIL) "mixed" ("boundary" "m") NIL NIL NIL)',
        [
            "1.1-body.txt | 1.1 | text | text/plain",
            "1.2-body.html | 1.2 | text | text/html",
            "2-Rechnung.pdf | 2 | binary | application/pdf",
        ],
        id="hand:docs-alternative-with-attachment",
    ),
    pytest.param(
        # RFC 2231 continuations passed through unjoined (Cyrus, Exchange).
        b'("application" "pdf" ("name*0*" "utf-8\'\'Gr%C3%BC%C3%9Fe%20" "name*1*" "aus%20Z%C3%BCrich"'
        b' "name*2" ".pdf") NIL NIL "base64" 12 NIL ("attachment" NIL) NIL NIL)',
        ["1-Grüße aus Zürich.pdf | 1 | binary | application/pdf"],
        id="hand:rfc2231-unjoined",
    ),
    pytest.param(
        b'("mixed" ("boundary" "x") NIL NIL NIL)',
        [],
        id="hand:zero-part-multipart",
    ),
    pytest.param(
        b'(("text" "plain" NIL NIL NIL "7bit" 3 1)("foo" 42 NIL NIL NIL NIL NIL) NIL 7 "mixed")',
        ["1-body.txt | 1 | text | text/plain", "2-part.bin | 2 | binary | application/octet-stream"],
        id="hand:junk-fields",
    ),
    pytest.param(
        b'(("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 3 NIL "attachment" NIL NIL)'
        b'("application" "pdf" ("name" "C:\\\\Users\\\\x\\\\Report.pdf") NIL NIL "base64" 3 NIL'
        b' ("attachment" ("filename" "../../etc/passwd")) NIL NIL) "mixed")',
        ["1-body.txt | 1 | text | text/plain", "2-passwd | 2 | binary | application/pdf"],
        id="hand:paths-and-missing-lines",
    ),
    pytest.param(
        b'("message" "rfc822" NIL NIL NIL "7bit" 10 ("d" "inner" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' ("message" "rfc822" NIL NIL NIL "7bit" 5 (NIL "innermost" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' ("text" "plain" NIL NIL NIL "7bit" 1 1 NIL NIL NIL NIL) 1 NIL NIL NIL NIL) 3 NIL NIL NIL NIL)',
        [
            "1-inner.eml | 1 | message | message/rfc822",
            "  1.1-innermost.eml | 1.1 | message | message/rfc822",
            "    1.1.1-body.txt | 1.1.1 | text | text/plain",
        ],
        id="hand:message-in-message-at-top",
    ),
    pytest.param(
        b'(("message" "rfc822" ("name" "fwd.eml") NIL NIL "7bit" 10 NIL NIL 3)("message" "rfc822"'
        b' ("name" "Fwd.EML") NIL NIL "7bit" 10 (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL) ("text"'
        b' "plain" NIL NIL NIL "7bit" 1 1) 3) "mixed")',
        [
            "1-fwd.eml | 1 | binary | message/rfc822",
            "2-Fwd.eml | 2 | message | message/rfc822",
            "  2.1-body.txt | 2.1 | text | text/plain",
        ],
        id="hand:message-without-structure-and-subject",
    ),
]


CASE = {p.id: p.values[0] for p in LISTINGS}


@pytest.mark.parametrize("structure, expected", LISTINGS)
def test_listing(structure: bytes | list[Any], expected: list[str]) -> None:
    assert flat(list_entries(parse_bodystructure(bs(structure)))) == expected


PART_FIELDS = [
    pytest.param(
        b'("text" "plain" ("charset" "ISO-8859-1" "delsp" "yes" "format" "flowed") NIL NIL'
        b' "Quoted-printable" 25 1 NIL ("inline" NIL) NIL NIL)',
        "1",
        dict(maintype="text", subtype="plain", charset="ISO-8859-1", encoding="quoted-printable",
             size=25, disposition="inline", filename=None,
             params={"charset": "ISO-8859-1", "delsp": "yes", "format": "flowed"}),
        id="text-qp-inline",
    ),
    pytest.param(
        b'("application" "x-gzip" ("NAME" "blah.gz") NIL "x" "base64" 394 NIL ("ATTACHMENT"'
        b' ("filename" "blah.gz")) NIL NIL)',
        "1",
        dict(params={"name": "blah.gz"}, disposition="attachment", disp_params={"filename": "blah.gz"},
             filename="blah.gz", charset=None, encoding="base64", size=394),
        id="upper-case-keys",
    ),
    pytest.param(
        b'(("text" "plain" NIL NIL NIL "7bit" 1 1 NIL NIL NIL NIL)("image" "jpeg" ("name" "a.jpg")'
        b' NIL NIL "base64" 3 NIL ("inline" ("filename*" "utf-8\'\'b%C3%A4.jpg")) NIL NIL) "mixed"'
        b' ("boundary" "z" "charset" "x") ("inline" NIL) NIL NIL)',
        "",
        dict(maintype="multipart", subtype="mixed", params={"boundary": "z", "charset": "x"},
             disposition="inline"),
        id="multipart-extension-data",
    ),
    pytest.param(
        b'(("text" "plain" NIL NIL NIL "7bit" 1 1 NIL NIL NIL NIL)("image" "jpeg" ("name" "a.jpg")'
        b' NIL NIL "base64" 3 NIL ("inline" ("filename*" "utf-8\'\'b%C3%A4.jpg")) NIL NIL) "mixed")',
        "2",
        dict(filename="bä.jpg", params={"name": "a.jpg"}, disp_params={"filename": "bä.jpg"}),
        id="disposition-filename-wins",
    ),
    pytest.param(
        b'("text" "plain" ("charset" "\\"utf-8\\" ") NIL NIL NIL NIL 0 NIL NIL NIL NIL)',
        "1",
        dict(charset="utf-8", encoding="7bit", size=0),
        id="quoted-charset-default-cte",
    ),
    pytest.param(
        b'("application" "octet-stream" ("name" "a" "name" "b" "title*" "us-ascii\'en\'%41%4" 7 8 NIL'
        b' "x") NIL NIL "BASE64" "12" NIL "attachment" NIL NIL)',
        "1",
        dict(params={"name": "a", "title": "A%4", "7": "8"}, encoding="base64", size=0,
             disposition="attachment", filename="a"),
        id="odd-params",
    ),
]


def find(part: BodyPart, section: str) -> BodyPart:
    """The first node with *section*, in pre-order (a message before its body)."""
    todo = [part]
    while todo:
        node = todo.pop(0)
        if node.section == section:
            return node
        todo[:0] = node.children + ([node.message] if node.message else [])
    raise KeyError(section)


@pytest.mark.parametrize("structure, section, fields", PART_FIELDS)
def test_part_fields(structure: bytes, section: str, fields: dict[str, Any]) -> None:
    part = find(parse_bodystructure(bs(structure)), section)
    for name, value in fields.items():
        assert getattr(part, name) == value, name


def test_message_part_fields() -> None:
    root = parse_bodystructure(bs(CASE["dovecot:attachment_emails/attachment_message_rfc822"]))
    fwd = root.children[1]
    assert (fwd.section, fwd.subject, fwd.size, fwd.filename) == (
        "2", "Another PDF", 3781, "ForwardedMessage.eml")
    assert fwd.message is not None and fwd.message.is_multipart
    assert fwd.message.section == "2"
    assert [c.section for c in fwd.message.children] == ["2.1", "2.2"]


@pytest.mark.parametrize("value", [None, b"text", 5, []])
def test_not_a_structure(value: Any) -> None:
    with pytest.raises(MimeError):
        parse_bodystructure(value)


def test_empty_child_degrades() -> None:
    assert [e.name for e in list_entries(parse_bodystructure([[], b"mixed"]))] == ["1-part.bin"]


def test_mime_error_is_protocol_error() -> None:
    assert issubclass(DecodeError, MimeError)
    assert issubclass(MimeError, ProtocolError)


def test_absurd_depth_degrades() -> None:
    value: Any = [b"text", b"plain", None, None, None, b"7bit", 1, 1]
    for _ in range(500):
        value = [value, b"mixed"]
    entries = list_entries(parse_bodystructure(value))
    assert len(entries) == 1
    (e,) = entries
    assert e.kind == "binary" and mime_type(e.part) == "application/octet-stream"
    assert e.section == ".".join(["1"] * (MAX_DEPTH + 1))  # the first level past the limit
    assert e.name == "x1-part.bin"  # the section is too long to be a prefix


def test_absurd_message_nesting_degrades() -> None:
    value: Any = [b"text", b"plain", None, None, None, b"7bit", 1, 1]
    for _ in range(200):
        env = [None, b"fwd", None, None, None, None, None, None, None, None]
        value = [b"message", b"rfc822", None, None, None, b"7bit", 1, env, value, 1]
    entries = list_entries(parse_bodystructure(value))
    depth = 0
    while entries and entries[0].kind == "message":
        (entry,) = entries
        assert entry.name.endswith("-fwd.eml")
        entries, depth = entry.children, depth + 1
    (leaf,) = entries
    assert leaf.kind == "binary" and mime_type(leaf.part) == "application/octet-stream"
    assert depth == MAX_DEPTH + 1
    assert leaf.section == ".".join(["1"] * (depth + 1))
    _check_directory(list_entries(parse_bodystructure(value)))


def test_many_children_are_zero_padded_and_sort() -> None:
    leaf = [b"image", b"png", None, None, None, b"base64", 1, None, None, None, None]
    inner = [leaf, leaf, b"related"]
    value = [leaf] * 9 + [inner] + [leaf] * 2 + [b"mixed"]
    names = [e.name for e in list_entries(parse_bodystructure(value))]
    assert names[0] == "01-part.png"
    assert names[9:11] == ["10.1-part.png", "10.2-part.png"]
    assert names[-1] == "12-part.png"
    assert names == sorted(names)
    sections = [e.section for e in list_entries(parse_bodystructure(value))]
    assert sections[0] == "1" and sections[9] == "10.1"


# --------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------


def one(structure: bytes) -> PartEntry:
    (entry,) = list_entries(parse_bodystructure(bs(structure)))
    return entry


@pytest.mark.parametrize(
    "filename, expected",
    [
        ("report.pdf", "1-report.pdf"),
        (".bashrc", "1-bashrc"),
        ("...", "1-part.pdf"),
        ("a\x00b\nc.pdf", "1-a b c.pdf"),
        ("C:\\\\tmp\\\\x.pdf", "1-x.pdf"),
        ("x/", "1-part.pdf"),
        ("\u202eexe.pdf", "1-exe.pdf"),
        ("e\u0301t\u00e9.pdf", "1-\u00e9t\u00e9.pdf"),  # NFC
    ],
)
def test_filename_sanitized(filename: str, expected: str) -> None:
    quoted = filename.encode().replace(b'"', b'\\"')
    entry = one(b'("application" "pdf" ("name" "' + quoted + b'") NIL NIL "base64" 3 NIL NIL NIL NIL)')
    assert entry.name == expected


@pytest.mark.parametrize(
    "stem, ext",
    [("a" * 300, ".pdf"), ("ü" * 200, ".docx"), ("日本語" * 50, ".txt"), ("x" * 300, "")],
)
def test_long_filename_keeps_extension(stem: str, ext: str) -> None:
    entry = one(b'("application" "pdf" ("name" "' + (stem + ext).encode() + b'") NIL NIL "7bit" 3)')
    assert len(entry.name.encode()) <= NAME_BUDGET
    assert entry.name.endswith(ext) and entry.name.startswith("1-" + stem[:5])
    entry.name.encode("utf-8")
    assert len(raw_name(entry).encode()) <= 255


def test_long_subject_leaves_room_for_parts_dir() -> None:
    subject = ("Ü" * 300).encode()
    entry = one(b'("message" "rfc822" NIL NIL NIL "7bit" 9 (NIL "' + subject + b'" NIL NIL NIL NIL NIL'
                b' NIL NIL NIL) ("text" "plain" NIL NIL NIL "7bit" 1 1) 1)')
    assert entry.kind == "message" and entry.name.endswith(".eml")
    assert entry.dir_name == entry.name[:-4] + ".parts"
    assert len(entry.dir_name.encode()) <= 255 and len(raw_name(entry).encode()) <= 255


@pytest.mark.parametrize(
    "mtype, expected",
    [
        (b'"text" "html"', "1-body.html"),
        (b'"text" "calendar"', "1-part.ics"),
        (b'"text" "x-unknown-thing"', "1-part.txt"),
        (b'"image" "jpeg"', "1-part.jpg"),
        (b'"image" "png"', "1-part.png"),
        (b'"application" "pdf"', "1-part.pdf"),
        (b'"application" "pkcs7-signature"', "1-part.p7s"),
        (b'"application" "pgp-signature"', "1-part.asc"),
        (b'"application" "ms-tnef"', "1-part.dat"),
        (b'"application" "x-never-heard-of"', "1-part.bin"),
        (b'"message" "delivery-status"', "1-part.txt"),
        (b'"message" "disposition-notification"', "1-part.txt"),
        (b'NIL NIL', "1-part.bin"),
        (b'"a/b" "c"', "1-part.bin"),
    ],
)
def test_default_names(mtype: bytes, expected: str) -> None:
    assert one(b"(" + mtype + b' NIL NIL NIL "7bit" 3 1 NIL NIL NIL NIL)').name == expected


def test_mime_type_and_raw_name_and_lookup() -> None:
    structure = CASE["dovecot:attachment_emails/attachment_message_rfc822"]
    entries = list_entries(parse_bodystructure(bs(structure)))
    body, fwd = entries
    assert mime_type(body.part) == "text/plain"
    assert mime_type(fwd.part) == "message/rfc822"
    assert raw_name(body) == "1-body.txt.raw"
    assert body.dir_name is None and fwd.dir_name == "2-Another PDF.parts"
    assert lookup(entries, "1-body.txt") == (body, "file")
    assert lookup(entries, "1-body.txt.raw") == (body, "raw")
    assert lookup(entries, "2-Another PDF.parts") == (fwd, "dir")
    assert lookup(entries, "2-Another PDF.eml.raw") == (fwd, "raw")
    assert lookup(entries, "2.1-body.txt") is None  # lives in the .parts directory
    assert lookup(fwd.children, "2.1-body.txt") == (fwd.children[0], "file")


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------

_names = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from("./\\\x00\n .ü日"), max_size=20),
    st.text(min_size=200, max_size=400),
    st.sampled_from(["", ".", "..", "...", "/", "a/b", "=?utf-8?B?Lw==?=", "x.pdf"]),
).map(lambda s: s.encode("utf-8", "surrogatepass"))
_atoms = st.one_of(st.none(), st.integers(0, 10**6), st.binary(max_size=12), _names)
_keys = st.sampled_from([b"name", b"NAME", b"filename", b"charset", b"boundary", b"name*",
                         b"name*0*", b"name*1", b"name*1*", b"filename*", b"x"])
_params = st.one_of(st.none(), st.lists(st.tuples(_keys, _atoms), max_size=4).map(
    lambda kv: [x for pair in kv for x in pair]))
_disp = st.one_of(st.none(), st.builds(lambda d, p: [d, p], st.sampled_from(
    [b"attachment", b"inline", b"", b"ATTACHMENT"]), _params))
_types = st.sampled_from([
    (b"text", b"plain"), (b"text", b"html"), (b"image", b"jpeg"), (b"application", b"pdf"),
    (b"message", b"delivery-status"), (b"application", b"octet-stream"), (b"text", b"calendar"),
])
_cte = st.sampled_from([b"7bit", b"base64", b"quoted-printable", b"x-uuencode", b"bogus", None])


@st.composite
def _leaf(draw: st.DrawFn) -> list[Any]:
    t, s = draw(st.one_of(_types, st.tuples(_atoms, _atoms)))
    fields = [t, s, draw(_params), None, None, draw(_cte), draw(st.integers(0, 10**6))]
    if t == b"text":
        fields.append(draw(st.integers(0, 100)))
    return fields + [None, draw(_disp), None, None][: draw(st.integers(0, 4))]


def _multipart(children: list[Any], sub: bytes, params: Any) -> list[Any]:
    return children + [sub, params, None, None, None]


def _message(body: Any, subject: bytes | None, params: Any, disp: Any) -> list[Any]:
    env = [None, subject, None, None, None, None, None, None, None, None]
    return [b"message", b"rfc822", params, None, None, b"7bit", 10, env, body, 1, None, disp]


_trees = st.recursive(
    _leaf(),
    lambda inner: st.one_of(
        st.builds(_multipart, st.lists(inner, min_size=1, max_size=12),
                  st.sampled_from([b"mixed", b"alternative", b"related"]), _params),
        st.builds(_message, inner, st.one_of(st.none(), _names), _params, _disp),
    ),
    max_leaves=25,
)
_garbage = st.recursive(_atoms, lambda inner: st.lists(inner, max_size=8), max_leaves=30)


def _check_directory(entries: list[PartEntry]) -> None:
    names: list[str] = []
    for e in entries:
        names += [e.name, raw_name(e)] + ([e.dir_name] if e.dir_name else [])
    assert len(names) == len(set(names)), names
    for name in names:
        assert name not in ("", ".", "..")
        assert "/" not in name and "\x00" not in name
        assert len(name.encode("utf-8")) <= 255
    shown = [e.name for e in entries]
    if not any(n.startswith("x") for n in shown):
        assert [n.encode() for n in shown] == sorted(n.encode() for n in shown)
    for e in entries:
        prefix = e.name.split("-", 1)[0]
        if not prefix.startswith("x"):  # the name shows the section, zero-padded
            assert ".".join(str(int(c)) for c in prefix.split(".")) == e.section
    secs = [tuple(int(c) for c in e.section.split(".")) for e in entries]
    assert secs == sorted(secs) and len(set(secs)) == len(secs)
    for e in entries:
        assert e.kind in ("text", "binary", "message")
        assert (e.kind == "message") == bool(e.dir_name)
        _check_directory(e.children)


@FAST
@given(_trees)
def test_property_random_trees_give_valid_unique_names(tree: Any) -> None:
    _check_directory(list_entries(parse_bodystructure(tree)))


@FAST
@given(_garbage)
def test_property_garbage_structure_never_raises_else(value: Any) -> None:
    try:
        root = parse_bodystructure(value)
    except MimeError:
        return
    _check_directory(list_entries(root))


@FAST
@given(st.binary(max_size=200))
def test_property_garbage_reply_through_imapproto(data: bytes) -> None:
    try:
        values = imapproto.parse([data])
    except ProtocolError:
        return
    for v in values:
        try:
            _check_directory(list_entries(parse_bodystructure(v)))
        except MimeError:
            pass


# --------------------------------------------------------------------------
# decode_part (imapfs.transfer) on entries of the real listings above
# --------------------------------------------------------------------------


def test_decode_part_text_binary_message() -> None:
    entries = list_entries(parse_bodystructure(bs(CASE["dovecot:crafted:nested_rfc822"])))
    by_section = {e.section: e for e in walk(entries)}
    inner_text = by_section["2.1"]  # windows-1252, quoted-printable
    assert decode_part(inner_text, b"=93quoted=94 Z=FCrich") == "“quoted” Zürich".encode()
    assert decode_part(inner_text, b"\x93quoted\x94 Z\xfcrich", server_decoded=True) == (
        "“quoted” Zürich".encode())
    jpeg = by_section["3.3"]
    assert decode_part(jpeg, b"/9j/4AAQ") == b"\xff\xd8\xff\xe0\x00\x10"
    assert decode_part(jpeg, b"\xff\xd8", server_decoded=True) == b"\xff\xd8"
    msg = by_section["2"]
    eml = b"Subject: x\r\n\r\n=93not decoded=94\r\n"
    assert decode_part(msg, eml) == eml


def test_decode_part_refuses_unknown_encoding() -> None:
    structure = CASE["dovecot:error_emails/content_transfer_encoding_spam"]
    (entry,) = list_entries(parse_bodystructure(bs(structure)))
    with pytest.raises(DecodeError):
        decode_part(entry, b"x")
    assert raw_name(entry) == "1-body.txt.raw"


def test_grep_finds_zurich() -> None:
    """The point of the feature: an ISO-8859-1 QP body becomes greppable UTF-8."""
    root = parse_bodystructure(bs(CASE["dovecot:crafted:rfc2231_continuations"]))
    body = list_entries(root)[0]
    assert "Zürich".encode() in decode_part(body, b"Gr=FC=DFe aus Z=FCrich")


# -- cutting a message into its sections (split_sections) ------------------------------------

_NESTED = (b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n"
           b"preamble\r\n--outer\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
           b"--outer\r\nContent-Type: message/rfc822\r\n\r\n"
           b"Subject: inner\r\nContent-Type: multipart/alternative; boundary=in\r\n\r\n"
           b"--in\r\nContent-Type: text/plain\r\n\r\nplain\r\n--in\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n"
           b"--in--\r\n"
           b"\r\n--outer\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           b"JVBERi0=\r\n--outer--\r\nepilogue\r\n")


def _nested_tree() -> BodyPart:
    inner = BodyPart(section="2", maintype="multipart", subtype="alternative", params={"boundary": "in"},
                     children=[BodyPart(section="2.1", maintype="text", subtype="plain", size=5),
                               BodyPart(section="2.2", maintype="text", subtype="html", size=8)])
    msg = BodyPart(section="2", maintype="message", subtype="rfc822", size=len(
        b"Subject: inner\r\nContent-Type: multipart/alternative; boundary=in\r\n\r\n"
        b"--in\r\nContent-Type: text/plain\r\n\r\nplain\r\n--in\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n"
        b"--in--\r\n"))
    msg.message = inner
    return BodyPart(section="", maintype="multipart", subtype="mixed", params={"boundary": "outer"},
                    children=[BodyPart(section="1", maintype="text", subtype="plain", size=5), msg,
                              BodyPart(section="3", maintype="application", subtype="pdf", size=8,
                                       encoding="base64")])


@pytest.mark.parametrize("message, sections", [
    (_NESTED, {"1": b"hello", "2.1": b"plain", "2.2": b"<p>x</p>", "3": b"JVBERi0="}),
    # a part whose size is not BODYSTRUCTURE's is left to the server; the others are cut
    (_NESTED.replace(b"hello", b"hello!"), {"2.1": b"plain", "2.2": b"<p>x</p>", "3": b"JVBERi0="}),
    # a delimiter not at the start of a line is text; no closing delimiter: nothing is cut
    (_NESTED.replace(b"--outer--\r\n", b""), {}),
    (_NESTED.replace(b"\r\n--outer\r\nContent-Type: application/pdf", b" --outer\r\nContent-Type: application/pdf"),
     {}),
    (b"", {}),
    # one part more than BODYSTRUCTURE has, or many more: numbered differently, nothing cut
    (_NESTED.replace(b"--outer--\r\n", b"--outer\r\n\r\nextra\r\n--outer--\r\n"), {}),
    (_NESTED.replace(b"--outer--\r\n", b"--outer\r\n\r\nx\r\n" * 1000 + b"--outer--\r\n"), {}),
])
def test_split_sections_cuts_what_bodystructure_says(message: bytes, sections: dict[str, bytes]) -> None:
    cut = split_sections(message, _nested_tree())
    assert {k: v for k, v in cut.items() if k != "2"} == sections
    if "2.1" in sections:
        assert cut["2"].startswith(b"Subject: inner\r\n") and cut["2"].endswith(b"--in--\r\n")


def test_split_sections_slices_each_section_once() -> None:
    """A 3 MB attachment was copied at each level (message body, part, part body): three
    times its size in memory and most of the time of cutting it (issue 12, stop 18)."""
    payload = b"QUJD" * (3 * 1024 * 1024 // 4)
    message = _NESTED.replace(b"JVBERi0=", payload)
    root = _nested_tree()
    root.children[2].size = len(payload)
    tracemalloc.start()
    try:
        cut = split_sections(message, root)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert cut["3"] == payload
    assert peak < 1.3 * len(payload), f"cutting a {len(payload)} byte part peaked at {peak} bytes"
