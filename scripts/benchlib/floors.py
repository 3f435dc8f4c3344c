"""The floors of issue 12, built and measured in the same run.

* A trivial pyfuse3 filesystem (floorfs.py) and the same one in C against
  libfuse3 (floorfs.c, compiled here with ``pkg-config fuse3``, one thread),
  each serving imapfs's own listing of the folder (same names, same sizes, the
  message bytes from memory): cold and warm ``ls -l``, cold and warm grep, the
  commands the imapfs figures use.  What any pyfuse3 (or any FUSE) filesystem
  pays for the same requests.
* A no-change ``rsync -a`` / ``rsync -aX`` pair over 2,000 ``.eml`` files of
  an imapfs mount: reading flags as xattrs against stat alone.
* ``imapfs prefetch`` of the folder on a fresh mount, against the mbsync pull.
"""
from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .base import BenchBase
from .common import FOLDER, MB, NEEDLE, StepError, fmt_s, fuse_abort, log, run_cmd
from .mounts import MountRun
from .verify import check_ids, grep_lines, ids_from_mount_paths

HERE = Path(__file__).resolve().parent
FLOOR_OPTIONS = "default_permissions,noatime,fsname=floor"  # as imapfs mounts (imapfs/mount.py)
FLOOR_NAMES = {"py": "trivial pyfuse3 fs", "c": "trivial C libfuse fs"}
FLOOR_KEYS = tuple(f"floor_{k}_{f}" for k in FLOOR_NAMES for f in ("ls", "ls_warm", "grep_cold", "grep_warm")) \
    + ("rsync_a", "rsync_ax", "prefetch")


def floor_labels(kind: str, n: int) -> dict[str, str]:
    """Row key -> label of one trivial filesystem's four figures."""
    fs = FLOOR_NAMES[kind]
    return {f"floor_{kind}_ls": f"{fs}: ls -l of imapfs's {n} .eml names (cold, fresh mount)",
            f"floor_{kind}_ls_warm": f"{fs}: ls -l (warm, same mount)",
            f"floor_{kind}_grep_cold": f"{fs}: grep -rl NEEDLE (cold, fresh mount)",
            f"floor_{kind}_grep_warm": f"{fs}: grep -rl NEEDLE (warm, same mount)"}

# Counts the .eml files of a folder whose user.imapfs.cached is "1" (the persistent cache has them).
COUNT_CACHED = """
import os, sys
n = 0
for f in os.listdir(sys.argv[1]):
    if f.endswith(".eml"):
        try:
            n += os.getxattr(os.path.join(sys.argv[1], f), "user.imapfs.cached") == b"1"
        except OSError:
            pass
print(n)
"""
_EML_UID = re.compile(rb"#(\d+)\.eml$")
_MAILDIR_SEQ = re.compile(r"\.M(\d+)P")


class FloorMount:
    """A trivial filesystem mounted by its own process, with deadlines like MountRun."""

    def __init__(self, argv: list[str], mountpoint: Path, log_path: Path, timeout: float):
        self.argv, self.mountpoint, self.log_path, self.timeout = argv, mountpoint, log_path, timeout
        self.proc: subprocess.Popen | None = None
        self.notes: list[str] = []

    def __enter__(self) -> FloorMount:
        from tests.support import die_with_parent
        from tests.support.mount import is_mounted
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(die_with_parent(self.argv, "KILL"), stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + min(60.0, self.timeout)
        while not is_mounted(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                tail = self.log_path.read_text(errors="replace")[-500:]
                raise StepError(f"{Path(self.argv[0]).name} did not mount (exit "
                                f"{self.proc.returncode}): {tail.strip()}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def path(self, *parts: str) -> Path:
        return self.mountpoint.joinpath(*parts)

    def abort(self) -> None:
        """A hung mount: abort the FUSE connection, kill the daemon, lazy-unmount."""
        from tests.support.mount import force_unmount
        self.notes.append("aborted after a time-out")
        fuse_abort(self.mountpoint)
        self._kill()
        force_unmount(self.mountpoint)

    def run(self, argv, timeout: float | None = None, **kw):
        return run_cmd(argv, timeout or self.timeout, on_timeout=self.abort, **kw)

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    def close(self) -> None:
        from tests.support.mount import force_unmount, is_mounted
        if is_mounted(self.mountpoint):
            rc = subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True,
                                timeout=30).returncode
            if rc != 0:
                force_unmount(self.mountpoint)
        if self.proc is not None:
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.notes.append("daemon did not exit after unmount")
                self._kill()
            if self.proc.returncode not in (0, None, -signal.SIGKILL):
                self.notes.append(f"daemon exited with {self.proc.returncode}")


class Floors(BenchBase):
    """The trivial filesystems, the rsync pair and prefetch (issue 12)."""

    def eml_listing(self, port: int) -> list[tuple[bytes, int]]:
        if self.listing is None:  # the ls step did not run or failed: list on a mount of our own
            m = self.new_mount(port)
            with m:
                self.capture_listing(m)
        assert self.listing is not None
        if len(self.listing) != self.a.n:
            raise StepError(f"imapfs lists {len(self.listing)} .eml files, expected {self.a.n}")
        return self.listing

    def floor_manifest(self, port: int) -> Path:
        """name\\0path\\0 for every message: imapfs's name, the Maildir file with its bytes."""
        path = self.work / "floor-manifest"
        if path.exists():
            return path
        files: dict[int, Path] = {}
        d = self.dv.maildir() / ("." + FOLDER)
        for sub in ("cur", "new"):
            for p in (d / sub).iterdir():
                m = _MAILDIR_SEQ.search(p.name)
                if m:
                    files[int(m.group(1))] = p
        out = []
        for name, size in self.eml_listing(port):
            m = _EML_UID.search(name)
            bid = self.corpus.uid_to_id.get(int(m.group(1))) if m else None
            src = files.get(bid) if bid is not None else None
            if src is None or src.stat().st_size != size:
                raise StepError(f"no Maildir file of {size} bytes for {name!r}")
            out += [name, os.fsencode(src)]
        path.write_bytes(b"\0".join(out) + b"\0")
        return path

    def floor_argv(self, kind: str, manifest: Path, mountpoint: Path) -> list[str]:
        if kind == "py":
            return [sys.executable, str(HERE / "floorfs.py"), str(manifest), str(mountpoint)]
        exe = self.work / "floorfs"
        if not exe.exists():
            flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True,
                                   text=True) if shutil.which("pkg-config") else None
            if flags is None or flags.returncode != 0 or not shutil.which("cc"):
                raise StepError("the C floor needs cc, pkg-config and libfuse3-dev (scripts/setup installs them)")
            _, cp = run_cmd(["cc", "-O2", "-Wall", "-o", str(exe), str(HERE / "floorfs.c"),
                             *shlex.split(flags.stdout)], 120)
            if cp.returncode != 0:
                raise StepError(f"cc failed: {cp.stderr.decode(errors='replace')[:500]}")
        return [str(exe), str(manifest), str(mountpoint), "-f", "-s", "-o", FLOOR_OPTIONS + ",subtype=floorc"]

    def floor_mount(self, kind: str, manifest: Path) -> FloorMount:
        self.mount_no += 1
        mp = self.work / f"floor{self.mount_no}"
        return FloorMount(self.floor_argv(kind, manifest, mp), mp,
                          self.work / f"floor-{kind}-{self.mount_no}.log", self.timeout)

    def note_floor(self, m: FloorMount, key: str) -> None:
        if m.notes:
            row = self.r.by_key.get(key)
            msg = "; ".join(m.notes)
            log(f"  floor notes: {msg}")
            if row is not None:
                row["note"] = (row["note"] + "; " if row["note"] else "") + msg

    # -- the trivial filesystems
    def floor_figures(self, port: int, kind: str) -> None:
        """Cold and warm ls -l (one mount), cold and warm grep (another), as for imapfs."""
        a, r, fs = self.a, self.r, FLOOR_NAMES[kind]
        (key, label), (wkey, wlabel), (gkey, glabel), (wgkey, wglabel) = floor_labels(kind, a.n).items()
        mounts: list[FloorMount] = []
        with self.step(key, label):
            manifest = self.floor_manifest(port)
            times = []
            for _ in range(a.repeat):
                self.drop()
                m = self.floor_mount(kind, manifest)
                mounts.append(m)
                with m:
                    dt, cp = m.run(["ls", "-l", str(m.mountpoint)])
                    if cp.returncode != 0:
                        raise StepError(f"ls exited {cp.returncode}: {cp.stderr.decode(errors='replace')[:300]}")
                    n = sum(1 for l in cp.stdout.splitlines() if l.endswith(b".eml"))
                    if n != a.n:
                        raise StepError(f"ls -l showed {n} .eml files, expected {a.n}")
                    dt2, _ = m.run(["ls", "-l", str(m.mountpoint)])
                times.append(dt)
            r.add(key, label, min(times), note=self.runs_note(times).lstrip("; "))
            r.add(wkey, wlabel, dt2)
        if r.by_key[key]["status"] == "ERROR":
            r.skip(wkey, wlabel, "cold ls failed")
        with self.step(gkey, glabel):
            manifest = self.floor_manifest(port)
            times = []
            for rep in range(a.repeat):
                self.drop()
                m = self.floor_mount(kind, manifest)
                mounts.append(m)
                with m:
                    cmd = ["grep", "-rl", "--line-buffered", "--include=*.eml", NEEDLE, str(m.mountpoint)]
                    dt, cp = m.run(cmd)
                    check_ids(ids_from_mount_paths(grep_lines(cp, glabel), self.corpus.uid_to_id, m.mountpoint),
                              self.corpus.needles, f"{fs} (cold)")
                    times.append(dt)
                    if rep < a.repeat - 1:
                        continue
                    warm = []
                    for _ in range(3):
                        dtw, cp = m.run(cmd)
                        check_ids(ids_from_mount_paths(grep_lines(cp, wglabel), self.corpus.uid_to_id,
                                                       m.mountpoint), self.corpus.needles, f"{fs} (warm)")
                        warm.append(dtw)
            r.add(gkey, glabel, min(times), note=self.runs_note(times).lstrip("; "))
            r.add(wgkey, wglabel, min(warm), note="best of 3: " + ", ".join(f"{t:.2f}" for t in warm))
        if r.by_key[gkey]["status"] == "ERROR":
            r.skip(wgkey, wglabel, "cold grep failed")
        for m in mounts:
            self.note_floor(m, gkey)

    def rejudge_ls(self) -> None:
        """Issue 12: cold ls -l <= 1 s and <= 1.5 x the trivial pyfuse3 fs with the same entries."""
        row, floor = self.r.by_key.get("ls"), self.r.value("floor_py_ls")
        if row is None or row["value"] is None or not floor:
            return
        dt = row["value"]
        self.r.add("ls", row["label"], dt, target=f"<= 1.0 s and <= 1.5 x trivial pyfuse3 = {fmt_s(1.5 * floor)}",
                   ok=dt <= 1.0 and dt <= 1.5 * floor, note=row["note"])

    # -- rsync: flags as xattrs against stat alone
    def rsync_pair(self, port: int) -> None:
        a, r = self.a, self.r
        n = min(a.rsync_n, a.n)
        key, label = "rsync_a", f"imapfs no-change rsync -a of {n} .eml"
        xkey, xlabel = "rsync_ax", f"imapfs no-change rsync -aX of {n} .eml"
        xtarget = "<= 2 x rsync -a"
        mounts: list[MountRun] = []
        with self.step(key, label):
            if not shutil.which("rsync"):
                raise StepError("rsync not installed (scripts/setup installs it)")
            names = sorted(name for name, _ in self.eml_listing(port))[:n]
            lst = self.work / "rsync-files"
            lst.write_bytes(b"\0".join(names) + b"\0")
            dest = self.work / "rsync-copy"
            self.drop()
            m = self.new_mount(port)
            mounts.append(m)
            with m:
                def rsync(opt: str, what: str, no_change: bool) -> float:
                    argv = ["rsync", opt, "--from0", f"--files-from={lst}", str(m.path(FOLDER)) + "/",
                            str(dest) + "/"]
                    if no_change:
                        argv.insert(2, "-i")  # itemize: prints a line for anything it changes
                    dt, cp = m.run(argv)
                    if cp.returncode != 0:
                        raise StepError(f"{what}: rsync exited {cp.returncode}: "
                                        f"{cp.stderr.decode(errors='replace')[:300]}")
                    if no_change and cp.stdout.strip():
                        raise StepError(f"{what} changed something: {cp.stdout[:200]!r}")
                    return dt
                first = rsync("-a", "first rsync -a", False)
                copied = sum(1 for _ in dest.iterdir())
                if copied != n:
                    raise StepError(f"rsync copied {copied} files, expected {n}")
                dt = rsync("-a", "no-change rsync -a", True)
                r.add(key, label, dt, note=f"first copy {fmt_s(first)}")
                with self.step(xkey, xlabel, xtarget):
                    first_x = rsync("-aX", "first rsync -aX", False)
                    dtx = rsync("-aX", "no-change rsync -aX", True)
                    r.add(xkey, xlabel, dtx, target=f"{xtarget} = {fmt_s(2 * dt)}", ok=dtx <= 2 * dt,
                          note=f"{dtx / dt:.1f}x rsync -a; the rsync -aX that copied the xattrs {fmt_s(first_x)}")
        for m in mounts:
            self.note_mount(m, key)
        if xkey not in r.by_key:
            r.skip(xkey, xlabel, "rsync -a failed", xtarget)

    # -- prefetch
    def prefetch(self, port: int) -> None:
        from tests.support.mount import imapfs_command
        a, r = self.a, self.r
        key, label = "prefetch", f"imapfs prefetch of {FOLDER} (fresh mount)"
        mbs = r.value("mbsync")
        target = "<= 1.0 x mbsync pull" + (f" = {fmt_s(mbs)}" if mbs else "")
        m = None
        with self.step(key, label, target):
            env = dict(os.environ)
            if self.src is not None:
                env["PYTHONPATH"] = str(self.src)
            self.drop()
            m = self.new_mount(port)
            with m:
                cmd = [*imapfs_command(), "prefetch", str(m.path(FOLDER))]
                dt, cp = m.run(cmd, env=env)
                if cp.returncode != 0:
                    raise StepError(f"prefetch exited {cp.returncode}: "
                                    f"{cp.stderr.decode(errors='replace').strip()[-300:]}")
                # what prefetch promises: every message is in the persistent cache now
                _, cc = m.run([sys.executable, "-c", COUNT_CACHED, str(m.path(FOLDER))])
                if cc.returncode != 0 or not cc.stdout.strip().isdigit():
                    raise StepError(f"counting user.imapfs.cached failed: {cc.stderr.decode(errors='replace')[-300:]}")
                cached = int(cc.stdout)
            note = f"{self.corpus.total / MB / dt:.1f} MB/s; "
            if cached == a.n:
                note += f"then all {a.n} cached (user.imapfs.cached)"
            else:  # a figure for a job half done: shown, and failed whatever its time
                note += f"INCOMPLETE: then only {cached} of {a.n} cached (user.imapfs.cached)"
                log(f"  prefetch left {a.n - cached} of {a.n} messages uncached")
            r.add(key, label, dt, target=target, ok=(dt <= mbs and cached == a.n) if mbs else cached == a.n,
                  note=note)
        if m is not None:
            self.note_mount(m, key)

    def floors(self, port: int) -> None:
        """Everything of this module, in order (loopback only)."""
        if self.a.skip_floors:
            for kind in FLOOR_NAMES:
                for k, l in floor_labels(kind, self.a.n).items():
                    self.r.skip(k, l, "--skip-floors")
        else:
            self.floor_figures(port, "py")
            self.floor_figures(port, "c")
            self.rejudge_ls()
        self.rsync_pair(port)
        if self.a.skip_prefetch:
            self.r.skip("prefetch", f"imapfs prefetch of {FOLDER} (fresh mount)", "--skip-prefetch",
                        "<= 1.0 x mbsync pull")
        else:
            self.prefetch(port)
