"""Command line → :class:`Config`, with no I/O, so every option is testable.

The syntax follows sshfs and the ``mount.fuse3`` helper convention:
``imapfs SOURCE MOUNTPOINT [-f] [-d] [-o OPT[,OPT...]]``, options may repeat
and come in any order, and the generic mount options that ``mount(8)`` and
fstab add (``rw``, ``nosuid``, ``_netdev``, ``x-systemd.*``...) are accepted.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field

from .errors import ConfigError

# Flags: (syntax, what it does). The help text, docs/usage.md and docs/imapfs.1 list the
# same flags and options (tests/test_cli.py::test_option_lists_agree).
FLAGS: list[tuple[str, str]] = [
    ("-f", "stay in the foreground and log to stderr; Ctrl-C, SIGTERM or SIGHUP unmount"),
    ("-d", "debug logging; implies -f (as in libfuse and sshfs)"),
    ("-o OPT[,OPT...]", "mount options, below (-oOPT works too)"),
    ("-V, --version", "print the versions of imapfs, Python, pyfuse3 and libfuse"),
    ("-h, --help", "print this help"),
    ("-s, -n, -v", "accepted and ignored (mount helpers pass them)"),
]
# Options: (syntax, default, what it does).
OPTIONS: list[tuple[str, str, str]] = [
    ("tls=on|off", "on", "off: plaintext, allowed only with imap://"),
    ("cafile=PATH", "none", "also trust this CA (PEM), on top of the system store"),
    ("auth=MECH", "auto", "auto, plain, login, xoauth2 or oauthbearer (OAuth2 token)"),
    ("password_command=CMD", "none", "run CMD with /bin/sh: its first line is the password or token"),
    ("password_file=PATH", "none", "its first line is the password or token (not for others' eyes)"),
    ("ro", "off", "read-only mount"),
    ("noparts", "off", "no .NAME.parts/ directories (decoded MIME parts)"),
    ("trash=FOLDER|auto", "none", "rm moves the message to this folder (auto: SPECIAL-USE \\Trash)"),
    ("poll=SECONDS", "60", "how often folders not in use are checked for changes"),
    ("timeout=SECONDS", "30", "network timeout"),
    ("connections=N", "4", "IMAP connections open at most"),
    ("mem_cache=SIZE", "64M", "message bytes kept in memory (memory_cache= is an alias)"),
    ("max_message=SIZE", "256M", "largest file that can be written into the mount"),
    ("cache_dir=PATH|none", "$XDG_CACHE_HOME/imapfs/USER@HOST:PORT", "disk cache and offline journal"),
    ("cache_size=SIZE", "2G", "message bytes kept on disk"),
    ("keep=FOLDER[:FOLDER...]", "none", "folders kept complete on disk for offline use"),
    ("offline", "off", "never connect; serve the disk cache, journal changes"),
    ("backoff_max=SECONDS", "30", "longest wait between reconnection attempts"),
    ("logfile=PATH", "syslog; stderr with -f", "append the log to this file"),
    ("uid=N", "your uid", "owner of every file and folder"),
    ("gid=N", "your gid", "group of every file and folder"),
    ("umask=MODE", "077", "messages get 0666 & ~MODE, folders 0777 & ~MODE"),
    ("file_mode=MODE", "0600", "mode of messages (wins over umask)"),
    ("dir_mode=MODE", "0700", "mode of folders (wins over umask)"),
    ("allow_other", "off", "let other users in (with user_allow_other in /etc/fuse.conf)"),
    ("allow_root", "off", "let root in"),
    ("auto_unmount", "off", "unmount when the daemon dies, however it dies"),
    ("reconnect", "always on", "accepted, as sshfs's: imapfs always reconnects"),
    ("default_permissions", "always on", "accepted: the kernel always checks the modes"),
    ("debug", "off", "same as -d"),
    ("foreground", "off", "same as -f"),
    ("fsname=NAME", "SOURCE", "source column of the mount table"),
    ("subtype=TYPE", "imapfs", "type column of the mount table (fuse.TYPE)"),
]


def _help() -> str:
    flags = "".join(f"  {syntax:<18} {what}\n" for syntax, what in FLAGS)
    opts = "".join(f"  {syntax:<24} {default:<10} {what}\n" if len(default) <= 10 else
                   f"  {syntax:<24} {'(below)':<10} {what}\n  {'':<24} {'':<10} default: {default}\n"
                   for syntax, default, what in OPTIONS)
    return f"""\
usage: imapfs SOURCE MOUNTPOINT [-f] [-d] [-o OPT[,OPT...]]
       imapfs prefetch PATH...
       imapfs -V | --version

SOURCE:
  imaps://USER@HOST[:PORT]/  TLS from the first byte (port 993)
  imap://USER@HOST[:PORT]/   STARTTLS, required unless -o tls=off (port 143)

Flags:
{flags}
Options (-o):
  {'OPTION':<24} {'DEFAULT':<10} MEANING
{opts}
The options mount(8), fstab and mount.fuse3 add (rw, nosuid, nodev, noexec, _netdev,
noauto, user, x-systemd.*, ...) are accepted and ignored.

The password or OAuth2 token comes from password_command, password_file,
$IMAPFS_PASSWORD or a prompt on a terminal, never from the command line.
Exit status: 0 mounted, 2 wrong command line, 32 the mount failed.
Manual: man imapfs (docs/imapfs.1), docs/usage.md.
"""


USAGE = _help()

# Options mount(8), fstab and mount.fuse3 may hand us; they mean nothing to us
# beyond what the kernel or the helper already did with them.
_IGNORED = {
    "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "atime", "noatime",
    "relatime", "norelatime", "strictatime", "diratime", "nodiratime", "auto", "noauto",
    "user", "nouser", "users", "owner", "group", "_netdev", "nofail", "defaults",
    "sync", "async", "dirsync", "lazytime", "nolazytime", "silent", "loud", "iversion",
    "noiversion", "mand", "nomand",
}
_IGNORED_PREFIXES = ("x-", "comment=", "context=", "fscontext=", "defcontext=", "rootcontext=")
# Options without a value → the Config field they set (None: accepted, always on anyway).
_FLAG_OPTS: dict[str, str | None] = {
    "ro": "read_only", "noparts": "noparts", "allow_other": "allow_other", "allow_root": "allow_root",
    "debug": "debug", "foreground": "foreground", "offline": "offline", "default_permissions": None,
    "auto_unmount": "auto_unmount", "reconnect": None,
}
# -o auth=: how to log in (connection.login.Login._mechanism); xoauth2/oauthbearer take a token.
AUTH_MECHANISMS = ("auto", "plain", "login", "xoauth2", "oauthbearer")
_SIZE = re.compile(r"^(\d+)([kKmMgG]?)[iI]?[bB]?$")


@dataclass
class Config:
    scheme: str
    user: str
    host: str
    port: int
    mountpoint: str
    source: str
    foreground: bool = False
    debug: bool = False
    tls: str = "implicit"  # implicit | starttls | off
    cafile: str | None = None
    password_file: str | None = None
    password_command: str | None = None
    auth: str = "auto"  # one of AUTH_MECHANISMS
    timeout: float = 30.0
    poll: float = 60.0
    connections: int = 4
    mem_cache: int = 64 * 1024 * 1024
    max_message: int = 256 * 1024 * 1024  # the largest file written into the mount (EFBIG beyond)
    noparts: bool = False
    read_only: bool = False
    allow_other: bool = False
    allow_root: bool = False
    logfile: str | None = None
    backoff_max: float = 30.0
    trash: str | None = None
    cache_dir: str | None = None  # None: the default under $XDG_CACHE_HOME; "none": no disk cache
    cache_size: int = 2 << 30
    keep: list[str] = field(default_factory=list)
    offline: bool = False
    auto_unmount: bool = False
    uid: int | None = None  # None: the mounting user's
    gid: int | None = None
    umask: int = 0o077  # private unless asked otherwise (issue 13)
    file_mode: int | None = None  # None: 0666 & ~umask
    dir_mode: int | None = None  # None: 0777 & ~umask
    fuse_options: set[str] = field(default_factory=set)

    @property
    def label(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def modes(self) -> tuple[int, int]:
        """(message mode, folder mode): file_mode/dir_mode, else 0666/0777 less the umask."""
        f = self.file_mode if self.file_mode is not None else 0o666 & ~self.umask
        d = self.dir_mode if self.dir_mode is not None else 0o777 & ~self.umask
        return f, d


class HelpRequested(Exception):
    """-h/--help: print USAGE and exit 0."""


class VersionRequested(Exception):
    """-V/--version: print the versions and exit 0."""


def parse_size(text: str) -> int:
    m = _SIZE.match(text.strip())
    if not m:
        raise ConfigError(f"bad size {text!r} (use e.g. 512M or 2G)")
    n = int(m.group(1))
    return n * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]


def _number(name: str, value: str, lo: float, hi: float) -> float:
    try:
        v = float(value)
    except ValueError:
        raise ConfigError(f"option {name} needs a number, not {value!r}") from None
    if not lo <= v <= hi:
        raise ConfigError(f"option {name}={value} is out of range ({lo:g} to {hi:g})")
    return v


def _mode(name: str, value: str) -> int:
    """An octal mode (``022``, ``0022``, ``0o22``) from 0 to 0777."""
    v = value.strip().lower().removeprefix("0o")
    if not v or any(c not in "01234567" for c in v) or int(v, 8) > 0o777:
        raise ConfigError(f"option {name} needs an octal mode from 0 to 0777, not {value!r}")
    return int(v, 8)


def _id(name: str, value: str) -> int:
    """A numeric user or group id."""
    if not value.strip().isdigit() or int(value) > 0xFFFFFFFE:
        raise ConfigError(f"option {name} needs a numeric id, not {value!r} (see: id -u NAME)")
    return int(value)


def _redact(source: str) -> str:
    """*source* with any ``user:password@`` password replaced by ``***`` (for messages)."""
    return re.sub(r"^([^/?#:]*://[^/?#:]*):[^/?#]*@", r"\1:***@", source)


def parse_source(source: str) -> tuple[str, str, str, int]:
    """``imaps://user@host:port/`` → (scheme, user, host, port)."""
    try:
        u = urllib.parse.urlsplit(source)
        port = u.port
    except ValueError as e:
        raise ConfigError(f"bad SOURCE {_redact(source)!r}: {e}") from None
    if u.scheme not in ("imap", "imaps"):
        raise ConfigError(f"SOURCE must start with imaps:// or imap://, not {_redact(source)!r}")
    if u.password is not None:
        raise ConfigError("SOURCE must not contain a password; use IMAPFS_PASSWORD, "
                          "-o password_file= or -o password_command=")
    if not u.username:
        raise ConfigError(f"SOURCE needs a user name: {u.scheme}://USER@{u.hostname or 'HOST'}/")
    if not u.hostname:
        raise ConfigError(f"SOURCE needs a host: {source!r}")
    if u.path not in ("", "/"):
        raise ConfigError(f"SOURCE must not name a folder ({u.path!r}); mount the account and cd into it")
    return u.scheme, urllib.parse.unquote(u.username), u.hostname, port or (993 if u.scheme == "imaps" else 143)


def _apply_option(cfg: Config, opt: str) -> None:
    name, eq, value = opt.partition("=")
    name = name.strip()
    if not name:
        return
    if name in _IGNORED or opt.startswith(_IGNORED_PREFIXES):
        return
    if name == "password":
        raise ConfigError("password= is not accepted on the command line (it would show in ps); "
                          "use IMAPFS_PASSWORD, -o password_file=PATH or -o password_command=CMD")
    if name in _FLAG_OPTS:
        if eq:
            raise ConfigError(f"option {name} takes no value")
        attr = _FLAG_OPTS[name]
        if attr is not None:
            setattr(cfg, attr, True)
        return
    if not eq:
        raise ConfigError(f"unknown option {name!r} (see docs/usage.md)")
    if name == "tls":
        v = value.lower()
        if v in ("off", "no", "false", "0"):
            cfg.tls = "off"
        elif v in ("on", "yes", "true", "1"):
            cfg.tls = "implicit" if cfg.scheme == "imaps" else "starttls"
        else:
            raise ConfigError(f"tls= takes on or off, not {value!r}")
    elif name == "cafile":
        cfg.cafile = value
    elif name == "password_file":
        cfg.password_file = value
    elif name == "password_command":
        cfg.password_command = value
    elif name == "auth":
        if value.lower() not in AUTH_MECHANISMS:
            raise ConfigError(f"auth= takes {', '.join(AUTH_MECHANISMS)}, not {value!r}")
        cfg.auth = value.lower()
    elif name == "timeout":
        cfg.timeout = _number(name, value, 1, 3600)
    elif name == "poll":
        cfg.poll = _number(name, value, 0, 86400)
    elif name == "connections":
        cfg.connections = int(_number(name, value, 1, 32))
    elif name in ("mem_cache", "memory_cache"):
        cfg.mem_cache = parse_size(value)
    elif name == "max_message":
        cfg.max_message = parse_size(value)
        if cfg.max_message < 1024:
            raise ConfigError(f"max_message={value} is too small (at least 1K)")
    elif name == "logfile":
        cfg.logfile = value
    elif name == "cache_dir":
        cfg.cache_dir = value
    elif name == "cache_size":
        cfg.cache_size = parse_size(value)
    elif name == "keep":
        cfg.keep.extend(k for k in value.split(":") if k)
    elif name == "trash":
        if not value:
            raise ConfigError("trash= needs a folder (e.g. trash=Trash) or auto")
        cfg.trash = value
    elif name == "backoff_max":
        cfg.backoff_max = _number(name, value, 1, 3600)
    elif name in ("uid", "gid"):
        setattr(cfg, name, _id(name, value))
    elif name in ("umask", "file_mode", "dir_mode"):
        setattr(cfg, name, _mode(name, value))
    elif name in ("fsname", "subtype"):
        cfg.fuse_options.add(f"{name}={value}")
    else:
        raise ConfigError(f"unknown option {name!r} (see docs/usage.md)")


def parse_args(argv: list[str]) -> Config:
    """Parse ``imapfs`` arguments (without the program name)."""
    positional: list[str] = []
    opts: list[str] = []
    foreground = debug = False
    it = iter(argv)
    for arg in it:
        if arg in ("-h", "--help"):
            raise HelpRequested()
        if arg in ("-V", "--version"):
            raise VersionRequested()
        if arg == "-f":
            foreground = True
        elif arg == "-d":
            debug = True
        elif arg == "-o":
            try:
                opts.append(next(it))
            except StopIteration:
                raise ConfigError("-o needs an argument") from None
        elif arg.startswith("-o") and len(arg) > 2:
            opts.append(arg[2:])
        elif arg in ("-s", "-n", "-v"):  # mount helpers may pass these (single-threaded, no mtab, verbose)
            continue
        elif arg.startswith("-") and arg != "-":
            raise ConfigError(f"unknown flag {arg!r}")
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise ConfigError("need SOURCE and MOUNTPOINT\n" + USAGE.splitlines()[0])
    source, mountpoint = positional
    scheme, user, host, port = parse_source(source)
    cfg = Config(scheme=scheme, user=user, host=host, port=port, mountpoint=mountpoint, source=source,
                 foreground=foreground, debug=debug, tls="implicit" if scheme == "imaps" else "starttls")
    for group in opts:
        last = ""
        for opt in _split_options(group):
            # keep=INBOX,Archive/2026: the folders after the first are bare words in the list
            if last == "keep" and "=" not in opt and opt not in _IGNORED and opt not in _FLAG_OPTS:
                cfg.keep.append(opt)
                continue
            _apply_option(cfg, opt)
            last = opt.partition("=")[0].strip()
    if cfg.tls == "off" and scheme == "imaps":
        raise ConfigError("tls=off contradicts imaps://; use imap://USER@HOST/ -o tls=off for plaintext")
    if cfg.password_file and cfg.password_command:
        raise ConfigError("give password_file= or password_command=, not both")
    if cfg.debug:  # -d and -o debug imply -f, as in libfuse and sshfs
        cfg.foreground = True
    return cfg


def _split_options(group: str) -> list[str]:
    """Split on commas, honouring backslash-escaped commas (``password_command=a\\,b``)."""
    out: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(group):
        c = group[i]
        if c == "\\" and i + 1 < len(group):
            cur.append(group[i + 1])
            i += 2
            continue
        if c == ",":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return [o for o in out if o]
