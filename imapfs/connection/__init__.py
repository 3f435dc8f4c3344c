"""One blocking IMAP connection (imaplib), used by one thread at a time.

Why imaplib: measured on this machine it fetches 10k bodies in ~0.15 s where
imapclient 4.1 needs ~0.7 s and aioimaplib is ~40x slower (docs/architecture.md).
Its traps are handled here, in one place: certificates are verified only
because we pass an ``ssl.SSLContext``; STARTTLS is mandatory for ``imap://``
unless ``tls=off``; response codes and unsolicited data that imaplib piles up
in ``untagged_responses`` are taken after every command; NO/BAD are checked
by hand because most imaplib calls return them instead of raising.

The class is split by role: ``base`` (state, running a command, SELECT),
``login`` (connect, TLS, login), ``reads`` (LIST, STATUS, FETCH, sync) and
``writes`` (APPEND, MOVE, STORE, EXPUNGE, folders); ``wire`` holds the
bounded imaplib classes, the TLS context and STATUS parsing. ``session.Pool``
runs connections in worker threads.
"""

from __future__ import annotations

from .login import Login
from .writes import Writes

__all__ = ["Connection"]


class Connection(Login, Writes):
    """One logged-in IMAP connection; not thread-safe (the pool serialises use)."""
