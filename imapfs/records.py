"""Record types shared by the IMAP session, the tree and the on-disk store.

They live here, apart from ``session`` and ``store``, so that the store can
describe what it keeps without importing the IMAP client, and the client can
describe what it fetched without importing the store. No imports, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RawMeta:
    """Metadata of one message as fetched, before naming."""

    uid: int
    size: int
    internaldate: int
    flags: tuple[str, ...]
    subject: bytes | None


@dataclass
class FolderRecord:
    """What the store knows of one folder; ``messages`` are sorted by UID."""

    name: bytes
    uidvalidity: int
    uidnext: int | None
    highestmodseq: int | None
    messages: list[RawMeta]
