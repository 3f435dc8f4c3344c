"""Fresh imapfs mounts with deadlines on everything, and the instrumented daemon
that counts FUSE requests."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from .common import fuse_abort, run_cmd

# Instrumented daemon for the request-count pass: counts every FUSE handler
# call (plus read bytes) and dumps the counts as JSON to $BENCH_COUNT_FILE on
# SIGUSR2 and at exit.  The headline figures never use this wrapper.
COUNTING_DAEMON = r"""
import atexit, collections, functools, inspect, json, os, signal, sys
if os.environ.get("BENCH_IMAPFS_SRC"):
    sys.path.insert(0, os.environ["BENCH_IMAPFS_SRC"])
import pyfuse3
import imapfs.fs as F
counts = collections.Counter()
seq = [0]
def dump(*_):
    seq[0] += 1
    path = os.environ["BENCH_COUNT_FILE"]
    with open(path + ".tmp", "w") as f:
        json.dump({"seq": seq[0], "counts": counts}, f)
    os.replace(path + ".tmp", path)
def wrap(name, fn):
    if name == "read":
        @functools.wraps(fn)
        async def w(self, *a, **k):
            counts[name] += 1
            r = await fn(self, *a, **k)
            counts["read_bytes"] += len(r)
            return r
    else:
        @functools.wraps(fn)
        async def w(self, *a, **k):
            counts[name] += 1
            return await fn(self, *a, **k)
    return w
for name, fn in inspect.getmembers(F.Operations, inspect.iscoroutinefunction):
    if not name.startswith("_"):
        setattr(F.Operations, name, wrap(name, fn))
signal.signal(signal.SIGUSR2, dump)
atexit.register(dump)
from imapfs.mount import main
sys.argv[0] = "imapfs"
sys.exit(main())
"""


class MountRun:
    """One fresh imapfs mount, with deadlines on everything."""

    def __init__(self, url: str, mountpoint: Path, password: str, log_path: Path,
                 timeout: float, counting: Path | None = None, options: tuple[str, ...] = (),
                 src: Path | None = None):
        from tests.support.mount import Mount, imapfs_command
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.mountpoint = mountpoint
        self.timeout = timeout
        self.count_file = counting
        # A fresh cache directory per mount: a persistent offline cache (issue 7)
        # must not turn the next "fresh" mount into a warm one.
        env = {"XDG_CACHE_HOME": str(mountpoint.parent / f"{mountpoint.name}.cache")}
        if src is not None:  # --imapfs-rev: the daemon imports that revision's package
            env["PYTHONPATH"] = str(src)
            env["BENCH_IMAPFS_SRC"] = str(src)
        cmd = imapfs_command()
        if counting is not None:
            cmd = [sys.executable, "-c", COUNTING_DAEMON]
            env["BENCH_COUNT_FILE"] = str(counting)
        self.mount = Mount(url, mountpoint, ["tls=off", *options], password=password, debug=False,
                           log_path=log_path, timeout=min(60.0, timeout), exit_timeout=15.0,
                           env_extra=env, command=cmd)
        self.notes: list[str] = []

    def __enter__(self) -> MountRun:
        self.mount.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self.mount.pid

    def path(self, *parts: str) -> Path:
        return self.mountpoint.joinpath(*parts)

    def abort(self) -> None:
        """A hung mount: kill the daemon, abort the FUSE connection, lazy-unmount."""
        from tests.support.mount import force_unmount
        self.notes.append("aborted after a time-out")
        fuse_abort(self.mountpoint)
        pid = self.pid
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        force_unmount(self.mountpoint)

    def status(self, field: str) -> int | None:
        """A /proc/PID/status field in bytes (VmHWM, VmRSS), or None."""
        pid = self.pid
        if not pid:
            return None
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def counts(self) -> dict[str, int] | None:
        """Dump and read the instrumented daemon's request counters."""
        if self.count_file is None or not self.pid:
            return None
        old = -1
        with contextlib.suppress(OSError, ValueError):
            old = json.loads(self.count_file.read_text())["seq"]
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError):
                d = json.loads(self.count_file.read_text())
                if d["seq"] != old:
                    return d["counts"]
            time.sleep(0.02)
        return None

    def run(self, argv, timeout: float | None = None, **kw):
        return run_cmd(argv, timeout or self.timeout, on_timeout=self.abort, **kw)

    def close(self) -> None:
        try:
            self.mount.unmount(check=False)
        except Exception as e:  # noqa: BLE001
            self.notes.append(f"unmount: {e}")
        if self.mount.forced:
            self.notes.append(f"daemon did not exit after unmount ({self.mount.forced})")
        if self.mount.returncode not in (0, None):
            self.notes.append(f"daemon exited with {self.mount.returncode}")
        bad = self.mount.bad_log_lines()
        if bad:
            self.notes.append(f"daemon log has {len(bad)} error line(s), first: {bad[0][:200]}")
