"""Real-world test messages from the shared corpus (read-only).

The corpus lives beside the repository in ``shared/corpus`` (``<repo>/../shared/corpus``)
or wherever ``$IMAPFS_CORPUS`` points.  Messages are returned with CRLF line
endings, the way an IMAP server stores and returns them.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NOT_MAIL = {"README", "README.md", "LICENSE", "LICENSE.txt", "COPYING"}
_HEADER = re.compile(rb"^[!-9;-~]+:")  # RFC 5322 field name, then a colon


def corpus_dir() -> Path:
    env = os.environ.get("IMAPFS_CORPUS")
    if env:
        return Path(env)
    return REPO.parent / "shared" / "corpus"


def to_crlf(data: bytes) -> bytes:
    """Bare LF → CRLF; existing CRLF (and bare CR) kept."""
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


def _is_mail(path: Path, data: bytes) -> bool:
    if path.name in NOT_MAIL or not data.strip():
        return False
    # Some fixtures start with an mbox "From " line or blank lines; any
    # header field within the first few lines makes it mail.
    lines = data.lstrip(b"\r\n").splitlines()[:5]
    return any(_HEADER.match(l) or l.startswith(b"From ") for l in lines)


@functools.cache
def _load(root: str, sub: str) -> tuple[tuple[str, bytes], ...]:
    base = Path(root) / sub
    if not base.is_dir():
        raise FileNotFoundError(
            f"test corpus not found at {base} (set IMAPFS_CORPUS to the corpus directory)")
    out = []
    for p in sorted(base.rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        if _is_mail(p, data):
            out.append((p.relative_to(base).as_posix(), to_crlf(data)))
    return tuple(out)


def corpus_messages(sub: str = "mail-gem") -> list[tuple[str, bytes]]:
    """``[(relative name, CRLF bytes)]`` of every message under ``corpus/<sub>``, sorted by name."""
    return list(_load(str(corpus_dir()), sub))


def corpus_message(name: str, sub: str = "mail-gem") -> bytes:
    """One message by its relative name, e.g. ``"plain_emails/basic_email.eml"``."""
    for n, data in corpus_messages(sub):
        if n == name:
            return data
    raise KeyError(name)
