"""Run the real ``imapfs`` command and mount it, the way a user does.

    with Mount(dovecot.url(), tmp_mountpoint, ["tls=off"], password=dovecot.password) as m:
        os.listdir(m.mountpoint)
    # unmounted here; the daemon exited 0 and logged no error or traceback

    with mount_dovecot(dovecot, tmp_mountpoint) as m: ...     # same, shorter

``Mount`` starts ``imapfs SOURCE MOUNTPOINT -f [-d] [-o OPTS]`` as a child
process with stdout+stderr going to a log file (by default beside the
mount point, so pytest's tmp_path keeps it), waits until the mount is live,
and on the way out unmounts with ``fusermount3 -u`` (``-u -z`` if busy),
waits for the daemon, then terminates and kills it if it hangs.  Leaving the
``with`` block normally asserts that the daemon exited 0 and that its log
has no ``Traceback`` and no ``ERROR``/``CRITICAL`` line, except lines
matching one of ``allowed_errors``.  If the block raised, the mount is still
cleaned up and the daemon's log tail is attached to the exception as a note.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from . import die_with_parent

MOUNT_TIMEOUT = 15.0
EXIT_TIMEOUT = 15.0
TRACEBACK = "Traceback (most recent call last)"
# The first level name on a line is its level ("... DEBUG imapfs.fs: folder ERROR
# reports" is a debug line).
LEVEL = re.compile(r"(?<![\w-])(DEBUG|INFO|WARNING|ERROR|CRITICAL|FATAL)(?![\w-])")


def is_bad_line(line: str) -> bool:
    """A traceback, or a log line whose level is ERROR/CRITICAL/FATAL."""
    if TRACEBACK in line:
        return True
    m = LEVEL.search(line)
    return bool(m) and m.group(1) in ("ERROR", "CRITICAL", "FATAL")
FUSERMOUNT = shutil.which("fusermount3") or "fusermount3"


def imapfs_command() -> list[str]:
    """argv prefix that runs the imapfs entry point of the running venv.

    ``$IMAPFS_COMMAND`` (shell words) overrides it.
    """
    env = os.environ.get("IMAPFS_COMMAND")
    if env:
        return shlex.split(env)
    for cand in (Path(sys.prefix) / "bin" / "imapfs", Path(sys.executable).parent / "imapfs"):
        if cand.is_file() and os.access(cand, os.X_OK):
            return [str(cand)]
    # Not installed as a script (e.g. run from a source tree): same entry point.
    return [sys.executable, "-c",
            "import sys; from imapfs.mount import main; sys.exit(main())"]


# ----------------------------------------------------------------- mount table

def _unescape_mountinfo(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mounted_paths() -> list[str]:
    """Mount points of this mount namespace (never blocks on a hung FUSE daemon)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4:
                out.append(_unescape_mountinfo(fields[4]))
    return out


def is_mounted(path: str | os.PathLike) -> bool:
    """True if ``path`` is a mount point, including a dead FUSE mount
    ("Transport endpoint is not connected", which ``os.path.ismount`` misses)."""
    p = os.path.abspath(os.fspath(path))
    try:
        p = os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))
    except OSError:
        pass
    return p in mounted_paths()


def _fusermount(path: str | os.PathLike, lazy: bool = False,
                timeout: float = 10.0) -> subprocess.CompletedProcess:
    args = [FUSERMOUNT, "-u"] + (["-z"] if lazy else []) + [os.fspath(path)]
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(args, -1, "", f"timed out: {e}")


def force_unmount(path: str | os.PathLike) -> None:
    """Unmount ``path`` if it is mounted: ``fusermount3 -u``, then ``-u -z``."""
    if is_mounted(path):
        if _fusermount(path).returncode != 0 and is_mounted(path):
            _fusermount(path, lazy=True)


def assert_not_mounted(path: str | os.PathLike) -> None:
    """Fail if ``path`` is mounted (unmounting it first, so nothing leaks)."""
    if is_mounted(path):
        force_unmount(path)
        raise AssertionError(f"{path} was mounted (now unmounted)")


def _ismount_with_timeout(path: str, timeout: float) -> bool | None:
    """os.path.ismount in a thread: None if it did not answer in time."""
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(os.path.ismount(path)), daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else None


def _child_env(password: str | None, env_extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("IMAPFS_PASSWORD", None)
    if password is not None:
        env["IMAPFS_PASSWORD"] = password
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONFAULTHANDLER", "1")
    # Every mount opens (and locks) a persistent cache per account: give each
    # run its own, so tests never share one or leave mail in ~/.cache.
    env["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="imapfs-cache-")
    if env_extra:
        env.update(env_extra)
    return env


def run_imapfs(args: Sequence[str], env: Mapping[str, str] | None = None,
               timeout: float = 30.0, password: str | None = None,
               command: Sequence[str] | None = None) -> subprocess.CompletedProcess:
    """Run ``imapfs ARGS`` to completion (text output captured).

    For mounts that must fail: call without ``-f`` and check ``returncode`` and
    ``stderr``, then ``assert_not_mounted(mountpoint)``.  ``env``: extra
    variables; ``password``: sets ``IMAPFS_PASSWORD`` (else it is unset).
    """
    cmd = list(command or imapfs_command()) + [os.fspath(a) for a in args]
    return subprocess.run(cmd, env=_child_env(password, env), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class MountError(AssertionError):
    pass


class Mount:
    """A live ``imapfs`` mount (see module docstring).

    ``options``: ``-o`` options, e.g. ``["tls=off", "cafile=/x/ca.crt"]``.
    ``password``: goes into ``IMAPFS_PASSWORD`` (``None``: variable unset).
    ``foreground=False`` runs without ``-f``: the command must return 0 once
    the mount is live; the daemon's exit code is then unknowable, only that
    it exits after the unmount.  ``allowed_errors``: regexes for log lines
    that may show ERROR/CRITICAL/Traceback.  ``command``: argv prefix
    instead of the venv's ``imapfs`` (for testing this class).
    """

    def __init__(self, source: str, mountpoint: str | os.PathLike,
                 options: Iterable[str] = (), password: str | None = None,
                 env_extra: Mapping[str, str] | None = None, foreground: bool = True,
                 debug: bool = True, allowed_errors: Iterable[str] = (),
                 log_path: str | os.PathLike | None = None,
                 timeout: float = MOUNT_TIMEOUT, exit_timeout: float = EXIT_TIMEOUT,
                 extra_args: Iterable[str] = (), command: Sequence[str] | None = None):
        self.source = source
        self.mountpoint = Path(mountpoint).absolute()
        self.options = list(options)
        self.password = password
        self.env_extra = dict(env_extra or {})
        self.foreground = foreground
        self.debug = debug
        self.allowed_errors = [re.compile(r) for r in allowed_errors]
        self.log_path = Path(log_path) if log_path else \
            self.mountpoint.parent / f"{self.mountpoint.name}.imapfs.log"
        self.timeout = timeout
        self.exit_timeout = exit_timeout
        self.extra_args = list(extra_args)
        self.command = list(command) if command else imapfs_command()
        self.proc: subprocess.Popen | None = None
        self.daemon_pids: list[int] = []
        self.returncode: int | None = None
        self.forced: str | None = None   # "terminated"/"killed" if the daemon did not exit
        self._log_fh = None
        self._log_start = 0

    # --------------------------------------------------------------- helpers
    @property
    def argv(self) -> list[str]:
        a = self.command + [self.source, str(self.mountpoint)]
        if self.foreground:
            a.append("-f")
        if self.debug and self.foreground:  # -d implies -f (issue 13), as in libfuse
            a.append("-d")
        if self.options:
            a += ["-o", ",".join(self.options)]
        return a + self.extra_args

    @property
    def pid(self) -> int | None:
        if self.foreground:
            return self.proc.pid if self.proc else None
        return self.daemon_pids[0] if self.daemon_pids else None

    def log(self) -> str:
        """This run's log (the file may also hold earlier runs on the same mount point)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def allow_errors(self, *regexes: str) -> None:
        self.allowed_errors += [re.compile(r) for r in regexes]

    def bad_log_lines(self) -> list[str]:
        """Log lines with a traceback or an ERROR/CRITICAL level, less the allowed ones."""
        return [l for l in self.log().splitlines()
                if is_bad_line(l) and not any(r.search(l) for r in self.allowed_errors)]

    def path(self, *parts: str) -> Path:
        return self.mountpoint.joinpath(*parts)

    # ------------------------------------------------------------- lifecycle
    def start(self) -> Mount:
        if self.proc is not None:
            raise RuntimeError("already started")
        if is_mounted(self.mountpoint):
            raise MountError(f"{self.mountpoint} is already mounted")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_fh = open(self.log_path, "ab")
        self._log_start = self._log_fh.tell()
        self._log_fh.write(f"$ {shlex.join(self.argv)}\n".encode())
        self._log_fh.flush()
        # A foreground daemon unmounts cleanly on SIGTERM: send it one if
        # the test process dies without cleaning up.
        argv = die_with_parent(self.argv, "TERM") if self.foreground else self.argv
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log_fh,
            stderr=subprocess.STDOUT, env=_child_env(self.password, self.env_extra),
            start_new_session=True)
        try:
            self._wait_mounted()
        except BaseException:
            self._cleanup(patient=False)
            raise
        return self

    def _fail(self, why: str) -> MountError:
        return MountError(f"{why}\n--- {self.log_path} (tail) ---\n{self.log_tail()}")

    def _wait_mounted(self) -> None:
        deadline = time.monotonic() + self.timeout
        mp = str(self.mountpoint)
        while True:
            rc = self.proc.poll()
            if rc is not None and (self.foreground or rc != 0):
                self.returncode = rc
                raise self._fail(f"imapfs exited with {rc} before {mp} was mounted")
            if is_mounted(mp):
                live = _ismount_with_timeout(mp, max(0.5, deadline - time.monotonic()))
                if live:
                    break
                if live is None:
                    raise self._fail(f"{mp} is in the mount table but stat() hangs")
            if time.monotonic() > deadline:
                raise self._fail(f"{mp} not mounted after {self.timeout} s")
            time.sleep(0.02)
        if not self.foreground:
            # The launcher returns 0 once the mount is live.
            try:
                self.returncode = self.proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                raise self._fail("imapfs without -f did not return after mounting")
            if self.returncode != 0:
                raise self._fail(f"imapfs without -f exited {self.returncode}")
            self.daemon_pids = self._find_daemons()

    def _find_daemons(self) -> list[int]:
        """Processes (other than us) whose command line names our mount point."""
        mp = os.fsencode(str(self.mountpoint))
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if mp in argv and _pid_alive(int(d)):
                out.append(int(d))
        return out

    def unmount(self, check: bool = True) -> int | None:
        """Unmount and wait for the daemon; with ``check``, assert a clean exit.

        Returns the daemon's exit code (``None`` without ``-f``).  Idempotent.
        """
        if self.proc is None:
            return self.returncode
        self._cleanup()
        if check:
            self.check()
        return self.returncode

    def check(self) -> None:
        """Assert exit code 0, no forced stop, no unexpected error in the log."""
        if self.forced:
            raise self._fail(f"imapfs did not exit after unmount ({self.forced})")
        if self.foreground and self.returncode != 0:
            raise self._fail(f"imapfs exited with {self.returncode}")
        bad = self.bad_log_lines()
        if bad:
            raise self._fail("imapfs logged errors:\n" + "\n".join(bad[:20]))

    def _cleanup(self, patient: bool = True) -> None:
        proc, mp = self.proc, self.mountpoint
        try:
            if is_mounted(mp):
                r = _fusermount(mp)
                if r.returncode != 0 and is_mounted(mp):
                    self._note(f"fusermount3 -u failed ({r.stderr.strip()}); lazy unmount")
                    _fusermount(mp, lazy=True)
            wait = self.exit_timeout if patient else 1.0
            if self.foreground or proc.poll() is None:
                self._reap(proc, wait)
            if not self.foreground:
                self._wait_daemons(wait)
        finally:
            if self.foreground:
                self.returncode = proc.returncode
            self.proc = None
            if self._log_fh is not None:
                self._log_fh.close()
                self._log_fh = None

    def _note(self, msg: str) -> None:
        if self._log_fh is not None:
            self._log_fh.write(f"[tests.support.mount] {msg}\n".encode())
            self._log_fh.flush()

    def _reap(self, proc: subprocess.Popen, wait: float) -> None:
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            pass
        self.forced = "terminated"
        self._note("daemon still running after unmount: SIGTERM")
        proc.terminate()
        try:
            proc.wait(5)
            return
        except subprocess.TimeoutExpired:
            pass
        self.forced = "killed"
        self._note("daemon ignored SIGTERM: SIGKILL")
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)
        force_unmount(self.mountpoint)

    def _wait_daemons(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        pids = list(self.daemon_pids)
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _pid_alive(p)]
            time.sleep(0.02)
        if pids:
            self.forced = "terminated"
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for p in pids:
                    try:
                        os.kill(p, sig)
                    except ProcessLookupError:
                        pass
                end = time.monotonic() + 5
                while any(_pid_alive(p) for p in pids) and time.monotonic() < end:
                    time.sleep(0.02)
                if not any(_pid_alive(p) for p in pids):
                    break
                self.forced = "killed"
            force_unmount(self.mountpoint)

    def __enter__(self) -> Mount:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.unmount(check=True)
            return
        try:
            self.unmount(check=False)
        finally:
            if hasattr(exc, "add_note"):
                exc.add_note(f"--- imapfs log {self.log_path} (tail) ---\n{self.log_tail()}")

    def __repr__(self) -> str:
        return f"<Mount {self.source} on {self.mountpoint}>"


def mount_dovecot(dovecot, mountpoint: str | os.PathLike, tls: str = "off",
                  user: str | None = None, options: Iterable[str] = (), **kw) -> Mount:
    """A :class:`Mount` of a tests.support.dovecot.Dovecot (not yet started).

    ``tls``: ``"off"`` (plain imap://, ``-o tls=off``), ``"starttls"``
    (imap:// with ``cafile=``) or ``"imaps"`` (imaps:// with ``cafile=``).
    """
    user = user or dovecot.user
    opts = list(options)
    if tls == "off":
        url = dovecot.url("imap", user)
        opts.insert(0, "tls=off")
    elif tls in ("starttls", "imaps"):
        url = dovecot.url("imap" if tls == "starttls" else "imaps", user)
        opts.insert(0, f"cafile={dovecot.ca_file}")
    else:
        raise ValueError(f"tls must be off, starttls or imaps, not {tls!r}")
    kw.setdefault("password", dovecot.users[user])
    return Mount(url, mountpoint, opts, **kw)
