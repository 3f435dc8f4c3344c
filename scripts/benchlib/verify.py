"""Every grep's answer is checked against the needle set: a fast wrong answer is
an error, not a figure."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .common import StepError
from .imap import _BENCH_ID

_EML_UID = re.compile(r"#(\d+)\.eml$")
_PARTS_UID = re.compile(r"#(\d+)\.parts$")


class MountHits:
    """grep -rl output on the mount: top-level messages and hits inside NAME.parts/."""

    def __init__(self, ids: list[int], part_ids: list[int]):
        self.ids = ids
        self.part_ids = part_ids


def ids_from_mount_paths(paths: list[str], uid_to_id: dict[int, int], folder: Path) -> MountHits:
    ids, parts = [], []
    for p in paths:
        rel = Path(p).relative_to(folder).parts
        m = _EML_UID.search(rel[0]) if len(rel) == 1 else _PARTS_UID.search(rel[0])
        if not m or int(m.group(1)) not in uid_to_id:
            raise StepError(f"grep printed a path that is no message or part: {p!r}")
        (ids if len(rel) == 1 else parts).append(uid_to_id[int(m.group(1))])
    return MountHits(ids, parts)


def ids_from_files(paths: list[str]) -> list[int]:
    out = []
    for p in paths:
        with open(p, "rb") as f:
            head = f.read(65536)
        m = _BENCH_ID.search(head)
        if not m or not m.group(1).isdigit():
            raise StepError(f"grep printed a file without X-Bench-Id: {p!r}")
        out.append(int(m.group(1)))
    return out


def check_ids(found, expected: set[int], where: str) -> str:
    """found: bench ids (or MountHits); raises StepError unless exactly ``expected``."""
    note = ""
    if isinstance(found, MountHits):
        stray = set(found.part_ids) - expected
        if stray:
            raise StepError(f"{where}: grep matched inside the parts of messages without the "
                            f"needle: {sorted(stray)[:5]}")
        if found.part_ids:
            note = f"{len(found.part_ids)} more hits inside .parts/ (nested messages)"
        found = found.ids
    if len(found) != len(set(found)):
        raise StepError(f"{where}: grep listed a message twice")
    got = set(found)
    if got != expected:
        missing, extra = sorted(expected - got), sorted(got - expected)
        raise StepError(f"{where}: grep found {len(got)} messages, expected {len(expected)} "
                        f"(missing {missing[:5]}, unexpected {extra[:5]})")
    return note


def grep_lines(cp: subprocess.CompletedProcess, what: str) -> list[str]:
    if cp.returncode not in (0, 1):
        raise StepError(f"{what}: grep exited {cp.returncode}: {cp.stderr.decode(errors='replace')[:300]}")
    return [l for l in cp.stdout.decode("utf-8", "surrogateescape").splitlines() if l]
