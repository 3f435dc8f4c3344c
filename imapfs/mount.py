"""``imapfs`` entry point: parse, get the password, log in, mount, serve, tear down.

Without ``-f`` the command forks; the child logs in and mounts and reports
over a pipe, so the parent exits 0 only once the mount is live and otherwise
prints the child's one-line reason and exits 32 (``mount(8)``'s "mount
failure", what fstab and systemd expect of a helper). Collaborators are built here, in dependency order
(pool → tree → operations), and torn down in reverse.
"""

from __future__ import annotations

import errno
import faulthandler
import gc
import getpass
import logging
import logging.handlers
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, MutableMapping
from typing import ClassVar

import pyfuse3
import trio

from . import cli
from .bulk import Bulk
from .credentials import CommandCredential, Credential, FileCredential, StaticCredential
from .disk import Disk
from .errors import ConfigError, ConnectError, ImapfsError, TLSError
from .fs import KernelNotifier, Operations
from .offline import Journal, Keeper
from .parts import Parts
from .records import Account
from .session import Pool
from .store import Store
from .tree import Tree
from .watch import Watcher

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EXIT_USAGE = 2  # the command line is wrong
EXIT_MOUNT_FAILED = 32  # mount(8)'s "mount failure": anything else that stops the mount


def get_credential(cfg: cli.Config, environ: dict[str, str] | None = None) -> Credential:
    """The credential source: password_command, password_file, $IMAPFS_PASSWORD, a prompt on a terminal.

    A command or file is read once here, so a broken one fails before the
    mount starts (with the terminal still there for a pinentry), and again
    for later connections as imapfs.credentials describes.
    """
    env = os.environ if environ is None else environ
    cred: Credential
    if cfg.password_command:
        cred = CommandCredential(cfg.password_command)
    elif cfg.password_file:
        cred = FileCredential(cfg.password_file)
    else:
        pw = env.get("IMAPFS_PASSWORD")
        if not pw and sys.stdin is not None and sys.stdin.isatty():
            pw = getpass.getpass(f"Password for {cfg.label}: ")
        if not pw:
            raise ConfigError("no password: set IMAPFS_PASSWORD, or use -o password_file=PATH "
                              "or -o password_command=CMD")
        cred = StaticCredential(pw)
    cred.prime()
    return cred


def scrub_environ(name: str) -> None:
    """Remove *name* from the environment, including the copy /proc/PID/environ shows.

    ``unsetenv`` only drops the pointer; the bytes stay in the initial
    environment block that /proc/PID/environ reads, so overwrite them first.
    Best effort: where libc cannot be reached the variable is still unset.
    """
    prefix = name.encode() + b"="
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        environ = ctypes.POINTER(ctypes.c_char_p).in_dll(libc, "environ")
        i = 0
        while environ[i] is not None:
            entry = environ[i]
            if entry.startswith(prefix):
                addr = ctypes.cast(environ, ctypes.POINTER(ctypes.c_void_p))[i]
                ctypes.memset(addr + len(prefix), ord("x"), len(entry) - len(prefix))
            i += 1
    except (OSError, AttributeError, ValueError) as e:
        log.debug("could not scrub %s from the environment block: %s", name, e)
    os.environ.pop(name, None)


class SystemdNotify:
    """sd_notify(3) without libsystemd: one datagram per state change to $NOTIFY_SOCKET.

    ``take_environ`` removes the variable (as sd_notify's unset_environment
    does), so password_command and other children never see it. An address
    starting with ``@`` is in the abstract namespace.
    """

    def __init__(self) -> None:
        self.address: str | None = None

    def take_environ(self, environ: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.pop("NOTIFY_SOCKET", None)
        if path and path[0] in "/@" and len(path) > 1:
            self.address = "\0" + path[1:] if path[0] == "@" else path

    def send(self, state: str) -> bool:
        """Send *state* (``READY=1``, ``STOPPING=1``, ``STATUS=...``); False when not under systemd."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(state.encode("utf-8", "replace"), self.address)
        except OSError as e:
            log.warning("cannot notify systemd (%s): %s", state.split("=", 1)[0], e)
            return False
        log.debug("told systemd %s", state.replace("\n", " "))
        return True


NOTIFY = SystemdNotify()  # set up by main() from $NOTIFY_SOCKET (Type=notify units)


def versions() -> str:
    """``-V``: imapfs, Python, pyfuse3 and the libfuse that pyfuse3 runs on."""
    import importlib.metadata
    import platform

    try:
        own = importlib.metadata.version("imapfs")
    except importlib.metadata.PackageNotFoundError:
        own = "unknown (not installed)"
    return (f"imapfs {own}\nPython {platform.python_version()}\n"
            f"pyfuse3 {getattr(pyfuse3, '__version__', 'unknown')}\nlibfuse {libfuse_version()}\n")


def libfuse_version() -> str:
    """The loaded libfuse3's own version (fuse_pkgversion); else what fusermount3 -V says."""
    try:
        import ctypes

        lib = ctypes.CDLL("libfuse3.so.3")  # the copy pyfuse3 already loaded
        lib.fuse_pkgversion.restype = ctypes.c_char_p
        return lib.fuse_pkgversion().decode("ascii", "replace")
    except (OSError, AttributeError):
        pass
    try:
        out = subprocess.run(["fusermount3", "-V"], capture_output=True, text=True, timeout=10).stdout
        return out.strip().rsplit(" ", 1)[-1] + " (fusermount3)" if out.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


MALLOC_ARENAS = 1  # glibc malloc arenas for all of the daemon's threads (issue 12, peak RSS)
_M_ARENA_MAX = -8  # mallopt parameter number, glibc's <malloc.h>


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas before any thread starts; False where that is not possible.

    Without a cap every pool thread gets its own arena (up to 8 per core),
    and memory freed into one (a message read by a pool thread, evicted by
    the trio thread) is not reused for another thread's allocations: the
    daemon's peak RSS after a cold grep, warm greps and a 50 MB read of the
    benchmark was 35-50 MB higher (docs/performance.md, issue 12). The
    threads allocate mostly with the GIL held, so one arena costs no
    measurable contention. ``MALLOC_ARENA_MAX`` in the environment wins.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # not glibc
        return False


# Python's cyclic GC, for a daemon whose long-lived objects (messages, names, parts
# listings) grow by tens of thousands at a time: (700, 10, 10) by default.
GC_THRESHOLDS = (10_000, 20, 100)


def tune_gc(thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> None:
    """Collect cyclic garbage less often than Python's defaults.

    With the defaults a cold ``grep -r`` of 10,000 messages ran 5 full collections,
    60-70 ms each, on the trio thread, where every FUSE request waits for them, and
    570 young ones; most of what they walk is the tree and the parts listings, which
    live as long as the mount. With these, one young collection per 10,000 new
    objects and no full one in that grep: 0.07 s of collection instead of 0.41 s
    (docs/performance.md, stop 18). Little of the daemon's garbage is cyclic
    (reference counting frees it), so memory does not wait on the collector.
    """
    gc.set_threshold(*thresholds)


def absolute_paths(cfg: cli.Config) -> None:
    """Make every path option absolute, so they mean the same after the daemon's chdir("/")."""
    cfg.mountpoint = os.path.abspath(cfg.mountpoint)
    for name in ("logfile", "cafile", "password_file"):
        value = getattr(cfg, name)
        if value:
            setattr(cfg, name, os.path.abspath(value))
    if cfg.cache_dir and cfg.cache_dir != "none":
        cfg.cache_dir = os.path.abspath(cfg.cache_dir)


def check_mountpoint(path: str) -> None:
    if not os.path.exists(path):
        raise ConfigError(f"mountpoint {path} does not exist")
    if not os.path.isdir(path):
        raise ConfigError(f"mountpoint {path} is not a directory")
    if os.path.ismount(path):
        try:
            with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
                real = os.path.realpath(path)
                for line in f:
                    fields = line.split()
                    if len(fields) > 2 and fields[1] == real and fields[2].startswith("fuse.imapfs"):
                        raise ConfigError(f"{path} is already an imapfs mount")
        except OSError:
            pass


def fuse_options(cfg: cli.Config) -> set[str]:
    opts = set(pyfuse3.default_options)
    opts.add("noatime")
    given = {o.split("=", 1)[0] for o in cfg.fuse_options}
    if "fsname" not in given:
        opts.add(f"fsname={cfg.source}")
    if "subtype" not in given:
        opts.add("subtype=imapfs")
    if cfg.read_only:
        opts.add("ro")
    if cfg.allow_other:
        opts.add("allow_other")
    if cfg.allow_root:
        opts.add("allow_root")
    if cfg.auto_unmount:
        opts.add("auto_unmount")  # libfuse then mounts through fusermount3, which unmounts when we die
    opts |= set(cfg.fuse_options)
    return opts


class _LateInvalidation(logging.Filter):
    """pyfuse3 logs ERROR with a traceback when a queued kernel invalidation reaches a
    filesystem that was unmounted meanwhile (something changed at the moment of an
    external ``fusermount -u``). Nothing is wrong then: the kernel has forgotten it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if (str(record.msg).startswith("Failed to submit invalidate") and isinstance(exc, OSError)
                and exc.errno in (errno.EINVAL, errno.ENOTCONN, errno.EBADF, errno.ENODEV)):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info = None
            record.exc_text = None
        return True


def secret_forms(secret: str) -> list[str]:
    """The spellings a secret could take in a message: as is, repr-escaped, UTF-8 bytes' repr."""
    if not secret:
        return []
    forms = {secret, repr(secret)[1:-1], repr(secret.encode("utf-8", "surrogatepass"))[2:-1],
             secret.encode("unicode_escape").decode("ascii")}
    return sorted(forms, key=len, reverse=True)


def redact(text: str, secret: str | Iterable[str]) -> str:
    """*text* with every spelling of *secret* (or of each of several) replaced by ``***``."""
    for one in [secret] if isinstance(secret, str) else secret:
        for form in secret_forms(one):
            text = text.replace(form, "***")
    return text


def _secrets(account: Account) -> list[str]:
    """The secrets the account's credential source has handed out (for redaction)."""
    source = getattr(account.secret, "secrets", None)
    return source() if source is not None else []


class _Redact(logging.Filter):
    """Last line of defence: no log record (message, arguments, traceback) shows a secret.

    No code path should log one in the first place (connection.login.Login._login
    builds its errors without it); this catches what a future bug would leak.
    *secret*: one string, or a callable giving the secrets handed out so far
    (a token source hands out a new one for each connection).
    """

    def __init__(self, secret: str | Callable[[], Iterable[str]]) -> None:
        super().__init__()
        self.secrets: Callable[[], Iterable[str]] = (lambda: [secret]) if isinstance(secret, str) else secret

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = list(self.secrets())
        msg = record.getMessage()
        clean = redact(msg, secrets)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info:
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(text, secrets)
        return True


def redact_logs(secret: str | Callable[[], Iterable[str]]) -> None:
    """Put the secret filter on every handler of the root logger (after setup_logging)."""
    for h in logging.getLogger().handlers:
        h.addFilter(_Redact(secret))


def default_logfile() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "imapfs", "imapfs.log")


class _JournalFormatter(logging.Formatter):
    """For stderr that is the systemd journal: no timestamp (journald adds its own) and the
    ``<N>`` syslog priority prefix journald turns into the entry's priority (sd-daemon(3))."""

    _PRIORITY: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prio = self._PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).splitlines())


def stderr_is_journal(environ: dict[str, str] | None = None) -> bool:
    """Is fd 2 the journal stream systemd gave us ($JOURNAL_STREAM is its ``dev:inode``)?"""
    env = os.environ if environ is None else environ
    try:
        dev, ino = (int(x) for x in env.get("JOURNAL_STREAM", "").split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def setup_logging(cfg: cli.Config, to_stderr: bool) -> None:
    """Log to -o logfile=, stderr (-f), syslog, or the default file; see docs/usage.md "Logging".

    Files are opened with WatchedFileHandler, which reopens the file when
    logrotate has moved it away.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if cfg.logfile:
        handler = logging.handlers.WatchedFileHandler(cfg.logfile)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    elif to_stderr:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JournalFormatter() if stderr_is_journal() else logging.Formatter(LOG_FORMAT))
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        handler.setFormatter(logging.Formatter("imapfs[%(process)d]: %(levelname)s %(name)s: %(message)s"))
    else:
        # No syslog (containers, minimal systems): a file, so errors are never lost.
        path = default_logfile()
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            handler = logging.handlers.WatchedFileHandler(path)
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
        except OSError:
            handler = logging.NullHandler()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if cfg.debug else logging.INFO)
    # pyfuse3 logs every request at DEBUG; keep it at INFO unless asked twice.
    logging.getLogger("pyfuse3").setLevel(logging.INFO)
    logging.getLogger("pyfuse3").addFilter(_LateInvalidation())


def default_cache_dir(cfg: cli.Config) -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    account = f"{cfg.user}@{cfg.host}:{cfg.port}".replace("/", "_")
    return os.path.join(base, "imapfs", account)


async def serve(cfg: cli.Config, account: Account, ready: Callable[[], None]) -> None:
    """Open the cache, log in, mount, serve until unmounted or signalled, then tear down in reverse."""
    disk: Disk | None = None
    kept: set[bytes] = set()  # server names of -o keep= folders: never evicted
    if cfg.cache_dir != "none":
        path = cfg.cache_dir or default_cache_dir(cfg)
        store = await trio.to_thread.run_sync(lambda: Store(path, cfg.cache_size, pinned=lambda n: n in kept))
        disk = Disk(store)
    try:
        await _serve(cfg, account, ready, disk, kept)
    finally:
        if disk is not None:
            with trio.CancelScope(shield=True):
                await disk.close()


async def _serve(cfg: cli.Config, account: Account, ready: Callable[[], None], disk: Disk | None,
                 kept: set[bytes]) -> None:
    pool = Pool(account, size=cfg.connections, backoff_max=cfg.backoff_max)
    if cfg.offline:
        pool.forced_offline = True
    else:
        try:
            await pool.start()
        except ConnectError as e:
            # Unreachable: serve what the cache has. A TLS failure is never a reason to go on.
            if isinstance(e, TLSError) or disk is None or await disk.call(disk.store.get_folders) is None:
                raise
            log.warning("%s; starting offline from the local cache", e)
            pool.mark_offline(str(e))
    try:
        notifier = KernelNotifier()
        tree = Tree(pool, revalidate=min(5.0, cfg.poll), mem_cache=cfg.mem_cache, notifier=notifier,
                    read_only=cfg.read_only, trash=cfg.trash, disk=disk, max_message=cfg.max_message)
        journal = Journal(tree, disk) if disk is not None else None
        loaded = await tree.load_from_disk()
        if not pool.online and not loaded:
            raise ImapfsError("offline mode needs a local cache, and there is none yet for this account")
        if pool.online:
            await tree.refresh_folders(force=True)
        if journal is not None:
            await journal.restore()
        bulk = Bulk(tree, disk) if disk is not None else None
        keeper = Keeper(tree, cfg.keep, cfg.poll, kept, bulk=bulk) if cfg.keep and bulk is not None else None
        parts = None if cfg.noparts else Parts(tree)
        file_mode, dir_mode = cfg.modes
        ops = Operations(tree, parts, read_only=cfg.read_only, uid=cfg.uid, gid=cfg.gid,
                         file_mode=file_mode, dir_mode=dir_mode, bulk=bulk)
        try:
            pyfuse3.init(ops, cfg.mountpoint, fuse_options(cfg))
        except RuntimeError as e:
            raise ImapfsError(f"cannot mount on {cfg.mountpoint}: {e}") from None
        notifier.active = True
        try:
            log.info("mounted %s on %s%s", cfg.label, cfg.mountpoint, "" if pool.online else " (offline)")
            async with trio.open_nursery() as nursery:
                await nursery.start(tree.run)  # read-ahead and the uploader
                nursery.start_soon(_watch_signals)
                nursery.start_soon(_announce_ready, cfg.mountpoint, ready, cfg.timeout)
                nursery.start_soon(Watcher(tree, account, poll=cfg.poll, hot_poll=min(2.0, cfg.poll)).run)
                if disk is not None:
                    nursery.start_soon(disk.writer)
                if bulk is not None:
                    nursery.start_soon(bulk.run)
                if keeper is not None:
                    nursery.start_soon(keeper.run)
                await pyfuse3.main()
                nursery.cancel_scope.cancel()
        finally:
            NOTIFY.send("STOPPING=1")
            notifier.active = False
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", cfg.mountpoint)
            # Files written just before the unmount still go to the server (or the
            # journal); a second Ctrl-C or SIGTERM must not cut that short.
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            with trio.CancelScope(shield=True):
                await tree.flush_all()
    finally:
        with trio.CancelScope(shield=True):
            await pool.close()


async def _announce_ready(mountpoint: str, ready: Callable[[], None],
                          timeout: float) -> None:  # noqa: ASYNC109 - a plain number from the config; the scope is inside
    """Call *ready* once the mount answers: a stat of its root, from a worker thread, has
    been served by pyfuse3.main() (running beside this task). So the background command's
    exit 0 and systemd's READY=1 both mean "usable now", not "about to be". After *timeout*
    seconds without an answer, ready is reported anyway (the kernel has the mount)."""
    with trio.move_on_after(timeout) as scope:
        try:
            await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
        except OSError as e:
            log.warning("the new mount did not answer a stat of %s: %s", mountpoint, e)
    if scope.cancelled_caught:
        log.warning("the new mount did not answer a stat of %s within %.0f s", mountpoint, timeout)
    ready()


async def _watch_signals() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for sig in signals:
            log.info("got signal %d, unmounting", sig)
            pyfuse3.terminate()
            return


def _account(cfg: cli.Config, credential: Credential) -> Account:
    return Account(host=cfg.host, port=cfg.port, user=cfg.user, secret=credential, tls=cfg.tls,
                   cafile=cfg.cafile, timeout=cfg.timeout, auth=cfg.auth)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "prefetch":
        from . import prefetch

        return prefetch.main(args[1:])
    try:
        cfg = cli.parse_args(args)
    except cli.HelpRequested:
        print(cli.USAGE, end="")
        return 0
    except cli.VersionRequested:
        print(versions(), end="")
        return 0
    except ConfigError as e:
        print(f"imapfs: {e}", file=sys.stderr)
        return EXIT_USAGE
    absolute_paths(cfg)
    NOTIFY.take_environ()  # before password_command runs: it must not inherit NOTIFY_SOCKET
    try:
        check_mountpoint(cfg.mountpoint)
        credential = get_credential(cfg)
    except ConfigError as e:
        print(f"imapfs: {e}", file=sys.stderr)
        return EXIT_MOUNT_FAILED
    scrub_environ("IMAPFS_PASSWORD")
    account = _account(cfg, credential)
    faulthandler.enable()
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1)
    if cfg.foreground:
        setup_logging(cfg, to_stderr=True)
        redact_logs(credential.secrets)
        def ready() -> None:
            NOTIFY.send(f"READY=1\nSTATUS=serving {cfg.label} on {cfg.mountpoint}")

        return _run(cfg, account, ready,
                    report=lambda msg: print(f"imapfs: {redact(msg, credential.secrets())}", file=sys.stderr))
    return _daemonize(cfg, account)


def _run(cfg: cli.Config, account: Account, ready: Callable[[], None], report: Callable[[str], None]) -> int:
    if not limit_malloc_arenas():
        log.debug("malloc arenas not limited (not glibc, or MALLOC_ARENA_MAX is set)")
    tune_gc()
    try:
        trio.run(serve, cfg, account, ready)
    except ImapfsError as e:
        log.debug("mount failed: %s", e)
        report(str(e))
        return EXIT_MOUNT_FAILED
    except KeyboardInterrupt:
        return 0
    except Exception as e:  # noqa: BLE001 - a bug: one line for the user, the traceback to the log
        log.exception("imapfs failed")
        report(f"internal error: {type(e).__name__}: {redact(str(e), _secrets(account))}")
        return EXIT_MOUNT_FAILED
    return 0


def _daemonize(cfg: cli.Config, account: Account) -> int:
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        chunks = []
        while True:
            b = os.read(r, 4096)
            if not b:
                break
            chunks.append(b)
        os.close(r)
        msg = b"".join(chunks).decode("utf-8", "replace")
        if msg.startswith("OK"):
            return 0
        _, status = os.waitpid(pid, 0)
        line = msg.strip() or f"daemon exited unexpectedly (status {status})"
        print(f"imapfs: {line}", file=sys.stderr)
        return EXIT_MOUNT_FAILED
    # child
    os.close(r)
    os.setsid()
    os.chdir("/")  # do not keep the start directory busy (paths were made absolute in main)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    setup_logging(cfg, to_stderr=False)
    redact_logs(lambda: _secrets(account))
    reported = False

    def ready() -> None:
        nonlocal reported
        os.write(w, b"OK\n")
        os.close(w)
        reported = True
        # A Type=notify unit should run imapfs with -f; without it, this process is not the
        # one systemd started, and MAINPID= is heeded only with NotifyAccess=all.
        NOTIFY.send(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving {cfg.label} on {cfg.mountpoint}")

    def report(msg: str) -> None:
        msg = redact(msg, _secrets(account))
        if not reported:
            os.write(w, msg.encode("utf-8", "replace") + b"\n")
        log.error("%s", msg)

    rc = EXIT_MOUNT_FAILED
    try:
        rc = _run(cfg, account, ready, report)
    except BaseException as e:  # noqa: BLE001 - the parent must hear something
        if not reported:
            report(f"internal error: {type(e).__name__}")
        log.exception("daemon failed")
    finally:
        if not reported:
            try:
                os.close(w)
            except OSError:
                pass
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
