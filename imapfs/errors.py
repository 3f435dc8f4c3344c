"""Domain exceptions and their errno mapping.

The IMAP session and the tree raise these; only the FUSE layer turns them into
``FUSEError`` (through :func:`errno_for`), so the lower layers stay free of
FUSE and the mapping lives in one table that is tested on its own.
"""

from __future__ import annotations

import errno


class ImapfsError(Exception):
    """Root of every error imapfs raises on purpose."""


class ConfigError(ImapfsError):
    """The command line or an option is wrong; the message is for the user."""


class ConnectError(ImapfsError):
    """The server could not be reached or the connection could not be secured."""


class TLSError(ConnectError):
    """TLS failed: unknown CA, name mismatch, or STARTTLS missing or refused."""


class AuthError(ImapfsError):
    """The server refused our credentials."""


class ServerUnavailable(ImapfsError):
    """The connection dropped or we are waiting before the next reconnect."""


class TimedOut(ServerUnavailable):
    """No answer to a command within ``timeout=``; its connection is closed.

    ``fresh``: the connection had been opened for this command (set by the pool), so it
    was not a pooled one that died unnoticed: the server itself did not answer.
    """

    fresh = False


class Offline(ServerUnavailable):
    """The server is away and the answer is not in the local cache (logged once per folder)."""


class FolderStalled(Offline):
    """The server answers, but not for this folder: a command on it timed out, so it is
    backed off (``Pool.run``; e.g. Dovecot waiting minutes on a stale Maildir lock).

    ``sent``: False when the pool refused to try it (its back-off runs): nothing reached
    the server. The pool logs the stall once; callers answer from the cache.
    """

    def __init__(self, message: str = "", folder: bytes = b"", sent: bool = True) -> None:
        super().__init__(message)
        self.folder = folder
        self.sent = sent


class ProtocolError(ImapfsError):
    """The server's reply could not be understood or contradicts itself."""


class CommandFailed(ImapfsError):
    """The server answered NO or BAD to a command."""


class NotFound(ImapfsError):
    """The folder or message does not exist (any more)."""


class StaleError(ImapfsError):
    """The object belongs to a UIDVALIDITY that no longer holds."""


class Unsupported(ImapfsError):
    """The operation needs a server extension we do not have and cannot emulate safely."""


class ReadOnly(ImapfsError):
    """A write was asked of a read-only mount."""


class NotEmpty(ImapfsError):
    """A folder that still holds messages or children cannot be removed."""


class Exists(ImapfsError):
    """The target name is already taken."""


class InvalidArgument(ImapfsError):
    """The request makes no sense for this object (e.g. a bad flag value)."""


class TooLarge(ImapfsError):
    """A file would grow past the largest message the mount stores (max_message=, APPENDLIMIT)."""


_ERRNO: list[tuple[type[BaseException], int]] = [
    (NotFound, errno.ENOENT),
    (StaleError, errno.ESTALE),
    (ReadOnly, errno.EROFS),
    (NotEmpty, errno.ENOTEMPTY),
    (Exists, errno.EEXIST),
    (InvalidArgument, errno.EINVAL),
    (TooLarge, errno.EFBIG),
    (Unsupported, errno.EPERM),
    (AuthError, errno.EACCES),
    (ServerUnavailable, errno.EIO),
    (ConnectError, errno.EIO),
    (ProtocolError, errno.EIO),
    (CommandFailed, errno.EIO),
    (TimeoutError, errno.EIO),
    (OSError, errno.EIO),
]


def errno_for(exc: BaseException) -> int:
    """Return the errno a FUSE request that failed with *exc* answers with.

    Anything we did not foresee is EIO: the request fails, the mount lives.
    """
    for cls, code in _ERRNO:
        if isinstance(exc, cls):
            return code
    return errno.EIO
