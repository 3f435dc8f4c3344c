"""Raw imaplib: the physical limit every client is held against."""
from __future__ import annotations

import imaplib
import re

from .common import StepError


def imap_connect(host: str, port: int, user: str, password: str, timeout: float) -> imaplib.IMAP4:
    c = imaplib.IMAP4(host, port, timeout=timeout)
    c.login(user, password)
    return c


def imap_select(c: imaplib.IMAP4, folder: str) -> int:
    typ, dat = c.select(f'"{folder}"', readonly=True)
    if typ != "OK":
        raise StepError(f"SELECT {folder}: {typ} {dat!r}")
    return int(dat[0])


def uid_fetch(c: imaplib.IMAP4, uids: str, items: str) -> list:
    typ, dat = c.uid("FETCH", uids, items)
    if typ != "OK":
        raise StepError(f"UID FETCH {uids} {items}: {typ} {dat!r}")
    return dat


_UID = re.compile(rb"UID (\d+)")
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
_BENCH_ID = re.compile(rb"X-Bench-Id: (\w+)", re.IGNORECASE)


def index_folder(c: imaplib.IMAP4, folder: str) -> tuple[dict[int, int], dict[int, int]]:
    """First SELECT and a metadata FETCH: Dovecot builds its index and cache.

    Returns ({uid: bench id}, {uid: RFC822.SIZE}).
    """
    imap_select(c, folder)
    dat = uid_fetch(c, "1:*", "(UID RFC822.SIZE INTERNALDATE FLAGS "
                              "BODY.PEEK[HEADER.FIELDS (SUBJECT X-BENCH-ID)])")
    ids, sizes = {}, {}
    for item in dat:
        if not isinstance(item, tuple):
            continue
        head, lit = item
        u, s, b = _UID.search(head), _SIZE.search(head), _BENCH_ID.search(lit)
        if u and s:
            sizes[int(u.group(1))] = int(s.group(1))
            if b and b.group(1).isdigit():
                ids[int(u.group(1))] = int(b.group(1))
    return ids, sizes


def fetch_metadata(c: imaplib.IMAP4) -> int:
    dat = uid_fetch(c, "1:*", "(UID RFC822.SIZE INTERNALDATE FLAGS)")
    return sum(1 for d in dat if d)


def fetch_bodies(c: imaplib.IMAP4, uids: list[int], batch: int = 500) -> tuple[int, int]:
    count = nbytes = 0
    for k in range(0, len(uids), batch):
        part = uids[k:k + batch]
        dat = uid_fetch(c, f"{part[0]}:{part[-1]}", "(BODY.PEEK[])")
        for item in dat:
            if isinstance(item, tuple):
                count += 1
                nbytes += len(item[1])
    return count, nbytes
