"""fs.Operations request handlers, in-process (no FUSE): what a request leaves behind.

``ls -l`` asks ``security.selinux`` and ``system.posix_acl_access`` of every
entry, so ``getxattr`` answers those 20,000 times for a folder of 10,000
messages. Each answer must leave nothing behind (issue 12, stop 17): a shared
exception instance, raised each time, kept a traceback and two frames per
request for good, and every full GC pass walked them.
"""
from __future__ import annotations

import gc

import pyfuse3
import pytest
import trio

from imapfs.fs import Operations


def _chain(e: BaseException) -> int:
    n, tb = 0, e.__traceback__
    while tb is not None:
        n, tb = n + 1, tb.tb_next
    return n


@pytest.mark.parametrize("name", [b"security.selinux", b"system.posix_acl_access", b"system.posix_acl_default"])
def test_getxattr_of_other_names_leaves_nothing_behind(name):
    ops = Operations.__new__(Operations)  # these names are answered before any use of the tree
    seen: list[pyfuse3.FUSEError] = []

    async def ask(times: int) -> None:
        for _ in range(times):
            try:
                await ops.getxattr(5, name, None)  # type: ignore[arg-type]
            except pyfuse3.FUSEError as e:
                seen.append(e)

    trio.run(ask, 10)
    gc.collect()
    frames = sum(1 for o in gc.get_objects() if type(o).__name__ == "frame")
    trio.run(ask, 2000)
    assert all(e.errno == pyfuse3.ENOATTR for e in seen)
    assert _chain(seen[-1]) <= 3  # this request's own frames, not one pair per earlier request
    assert seen[-1] is not seen[0]
    seen.clear()
    gc.collect()
    assert sum(1 for o in gc.get_objects() if type(o).__name__ == "frame") < frames + 50
