"""In-process tests of the flags ``getxattr user.imap.flags`` shows (imapfs/flagview.py, issue 12).

The tree's collaborators over the fake server of tests/test_inprocess.py, with
a hand-driven clock: the window is checked at its edge, and a refresh is held
at the server to race our own STORE against it. The fake server has no
CONDSTORE, so a refresh is a verify sync (SELECT, UID SEARCH, UID FETCH 1:*
(UID FLAGS)) and the first read of a stale folder asks for its message only.
The mount-level checks (both Dovecot profiles, command counts through the
proxy) are in tests/test_coherence.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from imapfs.flagview import FLAGS_FRESH
from tests.support.fake_imap import FakeServer
from tests.test_inprocess import OURS, Rig, message, mount

FULL_FETCH = "UID FETCH INBOX 1:* (UID FLAGS)"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def rig_with_clock(tmp_path: Path) -> tuple[FakeServer, Rig, Clock]:
    server = FakeServer({"UIDPLUS", "MOVE", "UNSELECT"}, folders=["INBOX"])
    assert server.deliver("INBOX", OURS) == 1
    assert server.deliver("INBOX", message("second")) == 2
    rig = await mount(server, tmp_path, cache=False)
    clock = Clock()
    rig.tree.clock = clock
    await rig.msgs("INBOX")
    return server, rig, clock


def flag_commands(server: FakeServer) -> list[str]:
    return [c for c in server.log if c.startswith(("UID FETCH", "SELECT", "UID SEARCH"))]


@pytest.mark.trio
async def test_flags_come_from_the_tree_for_one_window_then_from_one_refresh(tmp_path: Path) -> None:
    """Inside the window no command is sent and another client's change is not seen
    yet; from FLAGS_FRESH after the refresh was asked for, it is."""
    server, rig, clock = await rig_with_clock(tmp_path)
    m1, m2 = (await rig.msgs("INBOX")).values()
    flags = rig.tree.flags
    assert await flags(m1) == ()  # a lone read: its own message
    assert await flags(m2) == ()  # a second read: the folder's refresh, asked for now
    asked = clock.now
    sent = len(flag_commands(server))
    assert FULL_FETCH in server.log
    server.set_flags("INBOX", 1, "\\Flagged")
    clock.now = asked + FLAGS_FRESH - 0.001
    assert [await flags(m) for m in (m1, m2, m1)] == [(), (), ()]  # from the tree
    assert len(flag_commands(server)) == sent
    clock.now = asked + FLAGS_FRESH
    assert await flags(m1) == ("\\Flagged",)
    assert await flags(m2) == ()
    await rig.close()


@pytest.mark.trio
async def test_readers_arriving_together_share_one_refresh(tmp_path: Path) -> None:
    server, rig, clock = await rig_with_clock(tmp_path)
    m1, m2 = (await rig.msgs("INBOX")).values()
    await rig.tree.flags(m1)  # the lone read: the next ones refresh the folder
    server.set_flags("INBOX", 2, "\\Seen")
    before = server.log.count(FULL_FETCH)
    got: list[tuple[str, ...]] = []

    async def read() -> None:
        got.append(await rig.tree.flags(m2))

    async with trio.open_nursery() as n:
        for _ in range(10):
            n.start_soon(read)
    assert got == [("\\Seen",)] * 10
    assert server.log.count(FULL_FETCH) == before + 1
    await rig.close()


def hold(server: FakeServer, command: str) -> tuple[threading.Event, threading.Event]:
    """The next *command* is carried out (its answer read from the server's state) and then
    held until the test sets the second event; the first is set when it is held."""
    reached, release = threading.Event(), threading.Event()
    run: Callable[..., Any] = server.run
    armed = [True]

    def held(client: Any, what: str, fn: Callable[[], Any]) -> Any:
        res = run(client, what, fn)
        if armed[0] and what == command:
            armed[0] = False
            reached.set()
            release.wait(10)
        return res

    server.run = held  # type: ignore[method-assign]
    return reached, release


@pytest.mark.trio
async def test_own_flag_change_is_not_undone_by_a_refresh_in_flight(tmp_path: Path) -> None:
    """A refresh read the flags, then our setxattr stored new ones, then the refresh put
    the old ones back into the tree: the next read must still show ours (the refresh
    does not count as fresh), and so must the readers that shared it."""
    server, rig, clock = await rig_with_clock(tmp_path)
    m1, _m2 = (await rig.msgs("INBOX")).values()
    await rig.tree.flags(m1)  # the lone read
    reached, release = hold(server, FULL_FETCH)
    got: list[tuple[str, ...]] = []

    async def reader() -> None:
        got.append(await rig.tree.flags(m1))  # refreshes the folder: held after its FETCH

    async with trio.open_nursery() as n:
        n.start_soon(reader)
        await trio.to_thread.run_sync(reached.wait, abandon_on_cancel=True)
        await rig.tree.set_flags(m1, ["\\Flagged", "$Ours"])
        assert server.flags("INBOX", 1) == {"\\Flagged", "$Ours"}
        release.set()
    assert set(got[0]) == {"\\Flagged", "$Ours"}
    assert set(await rig.tree.flags(m1)) == {"\\Flagged", "$Ours"}
    await rig.close()
