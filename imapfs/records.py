"""Record types shared by the IMAP connection, the pool, the tree and the on-disk store.

They live here, apart from ``connection``, ``session`` and ``store``, so that
the store can describe what it keeps without importing the IMAP client, the
client can describe what it fetched without importing the store, and the
tree and a fake connection can speak of a sync (``Known``, ``SyncResult``)
without importing either. No imapfs imports, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


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


@dataclass
class Account:
    """Where and how to log in. ``tls`` is ``implicit``, ``starttls`` or ``off``.

    ``secret(kind, fresh)`` is the credential source (imapfs.credentials): it
    is asked at every login, for a ``"password"`` (PLAIN, LOGIN) or a
    ``"token"`` (XOAUTH2, OAUTHBEARER), and once more with ``fresh=True``
    after the server refused what it gave, so an expiring OAuth2 token never
    outlives the connection it was fetched for. ``auth``: ``-o auth=``
    (``auto``, ``plain``, ``login``, ``xoauth2``, ``oauthbearer``).
    """

    host: str
    port: int
    user: str
    secret: Callable[[str, bool], str] = field(repr=False)
    tls: str = "implicit"
    cafile: str | None = None
    timeout: float = 30.0
    auth: str = "auto"

    @property
    def label(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass
class SelectInfo:
    uidvalidity: int
    exists: int
    uidnext: int | None
    highestmodseq: int | None = None


@dataclass
class SyncResult:
    """What a folder looks like now, relative to what the caller knew."""

    info: SelectInfo
    reset: bool  # UIDVALIDITY changed or first sync: ``added`` is everything
    added: list[RawMeta]
    present: set[int] | None = None  # every UID now in the folder; None = not computed
    removed: set[int] = field(default_factory=set)  # UIDs known to be gone (QRESYNC VANISHED)
    flags: dict[int, tuple[str, ...]] = field(default_factory=dict)  # changed flags (CONDSTORE)


@dataclass
class Known:
    """What the caller knows of a folder, for an incremental sync."""

    uidvalidity: int
    count: int
    uidnext: int | None
    highestmodseq: int | None
    uids: frozenset[int] = frozenset()  # every UID the caller shows or deliberately skips


@dataclass
class Status:
    """STATUS of a folder (RFC 3501 6.3.10; HIGHESTMODSEQ from RFC 7162)."""

    messages: int | None = None
    uidnext: int | None = None
    uidvalidity: int | None = None
    highestmodseq: int | None = None
