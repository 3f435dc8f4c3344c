"""errno_for: the one table that turns domain errors into FUSE errnos."""
from __future__ import annotations

import errno
import inspect
import ssl

import pytest

from imapfs import errors
from imapfs.errors import (
    AuthError,
    CommandFailed,
    ConfigError,
    ConnectError,
    Exists,
    FolderStalled,
    ImapfsError,
    InvalidArgument,
    NotEmpty,
    NotFound,
    Offline,
    ProtocolError,
    ReadOnly,
    ServerUnavailable,
    StaleError,
    TimedOut,
    TLSError,
    TooLarge,
    Unsupported,
    errno_for,
)

# Every exception class defined in imapfs/errors.py and the errno it maps to.
EXPECTED = {
    ImapfsError: errno.EIO,
    ConfigError: errno.EIO,
    ConnectError: errno.EIO,
    TLSError: errno.EIO,
    AuthError: errno.EACCES,
    ServerUnavailable: errno.EIO,
    TimedOut: errno.EIO,
    Offline: errno.EIO,
    FolderStalled: errno.EIO,  # the folder is served as offline meanwhile
    ProtocolError: errno.EIO,
    CommandFailed: errno.EIO,
    NotFound: errno.ENOENT,
    StaleError: errno.ESTALE,
    Unsupported: errno.EPERM,
    ReadOnly: errno.EROFS,
    NotEmpty: errno.ENOTEMPTY,
    Exists: errno.EEXIST,
    InvalidArgument: errno.EINVAL,
    TooLarge: errno.EFBIG,
}


def _module_exceptions() -> set[type]:
    return {obj for _, obj in inspect.getmembers(errors, inspect.isclass)
            if issubclass(obj, BaseException) and obj.__module__ == errors.__name__}


def test_table_covers_every_exception_class_in_errors_py():
    assert _module_exceptions() == set(EXPECTED)


@pytest.mark.parametrize("cls, code", sorted(EXPECTED.items(), key=lambda kv: kv[0].__name__),
                         ids=lambda v: v.__name__ if isinstance(v, type) else errno.errorcode[v])
def test_errno_for_each_class(cls, code):
    assert errno_for(cls("message")) == code
    assert errno_for(cls()) == code


@pytest.mark.parametrize("exc", [
    Exception("boom"),
    ValueError("x"),
    KeyError("k"),
    RuntimeError(),
    AssertionError(),
    ZeroDivisionError(),
    KeyboardInterrupt(),  # a BaseException that is not an Exception
], ids=lambda e: type(e).__name__)
def test_unknown_exceptions_are_eio(exc):
    assert errno_for(exc) == errno.EIO


@pytest.mark.parametrize("exc", [
    TimeoutError(),
    OSError(errno.ECONNRESET, "reset"),
    ConnectionResetError(),
    BrokenPipeError(),
    TimeoutError(),
    ssl.SSLError(),
    # Even an OSError that carries a meaningful errno maps to EIO: the mount
    # must not claim "no such file" because the *connection* said ENOENT.
    FileNotFoundError(errno.ENOENT, "x"),
    PermissionError(errno.EACCES, "x"),
], ids=lambda e: type(e).__name__)
def test_os_and_network_errors_are_eio(exc):
    assert errno_for(exc) == errno.EIO


@pytest.mark.parametrize("parent, code", sorted(EXPECTED.items(), key=lambda kv: kv[0].__name__),
                         ids=lambda v: v.__name__ if isinstance(v, type) else errno.errorcode[v])
def test_subclasses_map_like_their_parent(parent, code):
    sub = type("Sub" + parent.__name__, (parent,), {})
    subsub = type("SubSub" + parent.__name__, (sub,), {})
    assert errno_for(sub("x")) == code
    assert errno_for(subsub("x")) == code


def test_tlserror_is_a_connecterror():
    assert issubclass(TLSError, ConnectError)
    assert errno_for(TLSError("unknown CA")) == errno_for(ConnectError("refused"))


@pytest.mark.parametrize("cls", sorted(EXPECTED, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_every_domain_error_is_an_imapfs_error(cls):
    assert issubclass(cls, ImapfsError)


def test_mixin_with_oserror_keeps_the_specific_errno():
    # A class that is both a domain error and an OSError: the specific entry,
    # which comes first in the table, wins over the OSError catch-all.
    class NotFoundOS(NotFound, OSError):
        pass

    assert errno_for(NotFoundOS("gone")) == errno.ENOENT
