"""Constants and small utilities shared by every step: logging, commands with a
deadline (a hung FUSE mount must not hang the benchmark), machine facts."""
from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import REPO

NEEDLE = "imapfs-bench-needle-Zq7"   # '-' never occurs in base64, so no chance hits
FOLDER = "Bench"
BIG_FOLDER = "Big"
HUGE_FOLDER = "Huge"
SEED = 20240601
MB = 1024 * 1024


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fmt_s(v: float) -> str:
    return f"{v:.3f} s" if v < 10 else f"{v:.1f} s"


def drop_caches(enabled: bool) -> bool:
    """Write back and drop the page cache (root only; failure tolerated)."""
    if not enabled:
        return False
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def machine_info() -> dict:
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_start": os.getloadavg()[0]}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        info["nproc"] = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout)
        info["free_h"] = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.rstrip()
    except (OSError, ValueError):
        pass
    for tool, args in (("dovecot", ["--version"]), ("mbsync", ["--version"])):
        try:
            info[tool] = subprocess.run([tool, *args], capture_output=True, text=True,
                                        timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            info[tool] = None
    try:
        info["imapfs_commit"] = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
            text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "imapfs"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if dirty:
            info["imapfs_commit"] += " (imapfs/ modified)"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


class StepError(Exception):
    """A benchmark step failed, hung or produced a wrong result."""


# --------------------------------------------------------------------------
# Running commands with a deadline (a hung FUSE mount must not hang us)


def run_cmd(argv, timeout: float, on_timeout=None, stdin=subprocess.DEVNULL,
            capture: bool = True, env=None) -> tuple[float, subprocess.CompletedProcess]:
    """Run argv; return (seconds, result).  On timeout: on_timeout(), kill, StepError."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        if on_timeout is not None:
            with contextlib.suppress(Exception):
                on_timeout()
        partial = _kill_group(proc)
        e = StepError(f"{' '.join(map(str, argv[:3]))}... timed out after {timeout:g} s")
        e.partial_stdout = partial
        e.timeout = timeout
        raise e from None
    except BaseException:
        _kill_group(proc)
        raise
    dt = time.perf_counter() - t0
    return dt, subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen) -> bytes:
    """Kill the command's process group; return what it had printed."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        out, _ = proc.communicate(timeout=10)
        return out or b""
    except (subprocess.TimeoutExpired, ValueError, OSError):
        return b""


def proc_cpu(pid: int | None) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, (0, 0) if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tck = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tck, int(fields[12]) / tck
    except (OSError, IndexError, ValueError, TypeError):
        return 0.0, 0.0


def fuse_abort(mountpoint: Path) -> None:
    """Abort the FUSE connection of ``mountpoint`` via /sys/fs/fuse/connections (never blocks)."""
    mp = os.path.abspath(mountpoint)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4] == mp:
                    minor = fields[2].split(":")[1]
                    with open(f"/sys/fs/fuse/connections/{minor}/abort", "w") as a:
                        a.write("1")
    except OSError:
        pass
