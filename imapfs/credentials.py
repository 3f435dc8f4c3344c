"""Where the secret for each login comes from: a password or an OAuth2 access token.

A :class:`Credential` is what :class:`records.Account` holds instead of a
password string: every new connection calls it, so an access token that
expires during a long mount is replaced by a fresh one at the next
(re)connection, and a refused login asks once more with ``fresh=True``.

What a call returns depends on the *kind* of secret the chosen login
mechanism needs:

* ``password`` (PLAIN, LOGIN): a command's output is kept for the mount and
  read again only after the server refused it (``fresh=True``).
* ``token`` (XOAUTH2, OAUTHBEARER): a command runs for every connection.
  Only when it states a lifetime (the token endpoint's JSON,
  ``{"access_token": ..., "expires_in": N}``) is the token reused, and only
  while more than :data:`REUSE_MARGIN` seconds of that lifetime remain.

A password file is read at every call (cheap, and an external refresher may
rewrite it). No secret is ever part of an exception's text; every value
handed out is remembered (a bounded number) so the log filter in
``mount.py`` can blank them out.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable

from .errors import ConfigError

log = logging.getLogger(__name__)

PASSWORD = "password"
TOKEN = "token"
REUSE_MARGIN = 60.0  # seconds of a stated lifetime that must remain for a token to be reused
COMMAND_TIMEOUT = 120.0
MAX_OUTPUT = 64 * 1024  # bytes of a command's output that are looked at (a JWT is a few KB)
_REMEMBERED = 32  # secrets kept for log redaction (older tokens have long expired)


class Credential:
    """``credential(kind, fresh=False) -> str``: the secret for one login attempt.

    Subclasses implement :meth:`_get`. ``refreshable`` says whether asking
    again can give something new (a command or a file can, a prompt cannot).
    Thread-safe: connections open in several worker threads at once.
    """

    refreshable = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: collections.deque[str] = collections.deque(maxlen=_REMEMBERED)

    def __call__(self, kind: str = PASSWORD, fresh: bool = False) -> str:
        with self._lock:
            secret = self._get(kind, fresh)
            if secret not in self._seen:
                self._seen.append(secret)
            return secret

    def _get(self, kind: str, fresh: bool) -> str:
        raise NotImplementedError

    def secrets(self) -> list[str]:
        """Every secret handed out lately (for log redaction)."""
        return list(self._seen)

    def prime(self) -> None:
        """Read the secret once now, so a broken source fails before the mount starts."""

    def __repr__(self) -> str:  # never the secret
        return f"<{type(self).__name__}>"


class StaticCredential(Credential):
    """A secret read once: $IMAPFS_PASSWORD or the terminal prompt."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self._secret = secret
        self._seen.append(secret)

    def _get(self, kind: str, fresh: bool) -> str:
        return self._secret


class FileCredential(Credential):
    """The first line of ``password_file``, read at every call."""

    refreshable = True

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def _get(self, kind: str, fresh: bool) -> str:
        try:
            with open(self.path, encoding="utf-8") as f:
                mode = os.fstat(f.fileno()).st_mode
                if mode & 0o007:
                    # As s3fs does: a secret other users can read is no secret; refuse
                    # rather than mount with it (the group may read: see docs/usage.md).
                    raise ConfigError(f"password_file {self.path} is accessible by other users "
                                      f"(mode {mode & 0o777:04o}); run: chmod o= {self.path}")
                secret = f.readline(MAX_OUTPUT).rstrip("\r\n")
        except OSError as e:
            raise ConfigError(f"cannot read password_file {self.path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"password_file {self.path} is not UTF-8") from None
        if not secret:
            raise ConfigError(f"password_file {self.path} is empty")
        return secret

    def prime(self) -> None:
        self(PASSWORD)


def parse_command_output(out: bytes, now: float) -> tuple[str, float | None]:
    """A command's output → (secret, expiry on ``time.time()`` or None when it states none).

    A JSON object with ``access_token`` is a token endpoint's answer (what
    ``oauth2l fetch --output_format json`` and ``mutt_oauth2.py``-style
    scripts can print); its ``expires_in`` (seconds) or ``expires_at`` (epoch
    seconds) is the lifetime. Anything else: the first line is the secret.
    Errors never quote the output (it may be the secret).
    """
    try:
        text = out[:MAX_OUTPUT].decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("password_command printed something that is not UTF-8") from None
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except ValueError:
            raise ConfigError("password_command printed JSON that does not parse") from None
        token = obj.get("access_token") if isinstance(obj, dict) else None
        if not isinstance(token, str) or not token:
            raise ConfigError("password_command printed JSON without an access_token")
        expiry: float | None = None
        exp_in, exp_at = obj.get("expires_in"), obj.get("expires_at")
        if isinstance(exp_in, (int, float)) and not isinstance(exp_in, bool):
            expiry = now + float(exp_in)
        elif isinstance(exp_at, (int, float)) and not isinstance(exp_at, bool):
            expiry = float(exp_at)
        return token, expiry
    secret = text.split("\n", 1)[0].rstrip("\r")
    if not secret:
        raise ConfigError("password_command printed no password")
    return secret, None


class CommandCredential(Credential):
    """The output of ``password_command`` (run with /bin/sh, stdin from /dev/null).

    The command runs in the user's home directory (``/`` without one), in the
    foreground as in the daemon, so a relative path in it means the same at
    mount time and at a reconnect hours later.
    """

    refreshable = True

    def __init__(self, command: str, runner: Callable[[str], bytes] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.command = command
        self._run = runner or self._shell
        self._clock = clock
        self._primed: str | None = None  # read by prime(), used by the next call whatever its kind
        self._cached: str | None = None
        self._expiry: float | None = None  # of _cached, when the command stated one
        self._kind: str | None = None  # what _cached was handed out as

    @staticmethod
    def _shell(command: str) -> bytes:
        cwd = os.environ.get("HOME") or "/"
        if not os.path.isdir(cwd):
            cwd = "/"
        try:
            res = subprocess.run(command, shell=True, stdin=subprocess.DEVNULL, capture_output=True,
                                 timeout=COMMAND_TIMEOUT, cwd=cwd)
        except subprocess.TimeoutExpired:
            raise ConfigError(f"password_command timed out after {COMMAND_TIMEOUT:.0f} s") from None
        except OSError as e:
            raise ConfigError(f"password_command could not run: {e.strerror}") from None
        if res.returncode != 0:
            raise ConfigError(f"password_command failed with exit code {res.returncode}")
        return res.stdout

    def _fetch(self) -> str:
        secret, expiry = parse_command_output(self._run(self.command), self._clock())
        self._cached, self._expiry = secret, expiry
        return secret

    def prime(self) -> None:
        self._primed = self(PASSWORD)
        self._kind = None  # not yet used for a login

    def _get(self, kind: str, fresh: bool) -> str:
        if fresh:
            self._primed = None
            return self._remember(kind, self._fetch())
        if self._primed is not None:  # read just before this first connection attempt
            secret, self._primed = self._primed, None
            return self._remember(kind, secret)
        if self._cached is not None and self._reusable(kind):
            return self._cached
        return self._remember(kind, self._fetch())

    def _remember(self, kind: str, secret: str) -> str:
        self._kind = kind
        return secret

    def _reusable(self, kind: str) -> bool:
        if self._expiry is not None:  # the command said how long: believe it, with a margin
            return self._clock() < self._expiry - REUSE_MARGIN
        # No stated lifetime: a password holds until refused; a bare token is used once.
        return kind == PASSWORD and self._kind == PASSWORD


def redaction_source(credential: Credential | str) -> Callable[[], list[str]]:
    """What the log filter should blank out: a credential's secrets, or one fixed string."""
    if isinstance(credential, Credential):
        return credential.secrets
    fixed = [credential] if credential else []
    return lambda: fixed
