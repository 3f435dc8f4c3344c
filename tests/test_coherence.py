"""Other clients change the mailbox while it is mounted.

A second IMAP connection plays the phone/webmail. Every change must show in
the mount (folders in use: by push or their STATUS polling; the rest: by the
``poll`` round), and no name may ever show another message's bytes. Runs
against full Dovecot (NOTIFY, QRESYNC) and the IDLE-only profile (polling,
full resync).

Time bounds are generous on purpose (2 shared cores): issue 6's target for
folders in use is 5 s, the tests allow IN_USE = 15 s.  That is still half the
``poll`` round, so a pass shows the in-use path did the work, not the round.
"""

from __future__ import annotations

import errno
import os
import random
import re
import threading
import time
from pathlib import Path

import pytest

from tests.support import dovecot as dv
from tests.support.dovecot import Dovecot
from tests.support.mount import Mount
from tests.test_write import eventually, msg

PROFILES = {"full": dv.FULL, "idle-only": dv.IDLE_ONLY}
# Issue 6's target for folders in use is 5 s (push, or STATUS every 2 s, then a
# sync; typically well under 1 s here). The tests allow 3x that for a loaded
# machine: a deadline to converge, not a performance figure.
IN_USE = 15.0
POLL = 30  # -o poll=: the full round, for folders nobody looks at (2 x IN_USE, see above)


@pytest.fixture(scope="module", params=list(PROFILES))
def env(request, tmp_path_factory):
    with Dovecot(capabilities=PROFILES[request.param]) as d:
        mp = tmp_path_factory.mktemp("mnt")
        with Mount(d.url("imap"), mp, ["tls=off", f"poll={POLL}"], password=d.password) as m:
            yield d, m


def names(m: Mount, folder: str) -> list[str]:
    return sorted(n for n in os.listdir(m.path(folder)) if n.endswith(".eml"))


def by_uid(m: Mount, folder: str) -> dict[int, Path]:
    try:
        listed = names(m, folder)
    except FileNotFoundError:  # e.g. between another client's DELETE and CREATE
        return {}
    return {int(re.search(r"#(\d+)\.eml$", n).group(1)): m.path(folder, n) for n in listed}


def within(seconds: float, fn):
    return eventually(fn, timeout=seconds, interval=0.1)


def uidvalidity(d: Dovecot, folder: str) -> int:
    c = d.client()
    try:
        typ, data = c.status(folder, "(UIDVALIDITY)")
    finally:
        c.logout()
    assert typ == "OK", data
    return int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))


def fresh(d: Dovecot, m: Mount, name: str) -> str:
    d.create(name)
    within(IN_USE, lambda: m.path(name).is_dir())
    return name


def test_append_by_other_client_shows(env):
    d, m = env
    f = fresh(d, m, "Append")
    assert names(m, f) == []
    uid = d.append(f, msg("other-append", "from phone"))
    p = within(IN_USE, lambda: by_uid(m, f).get(uid))
    assert p.read_bytes() == d.fetch_all(f)[uid]


def test_expunge_by_other_client_removes_name(env):
    d, m = env
    f = fresh(d, m, "Expunge")
    keep = d.append(f, msg("keep"))
    gone = d.append(f, msg("gone"))
    paths = within(IN_USE, lambda: by_uid(m, f) if len(by_uid(m, f)) == 2 else None)
    old = paths[gone]
    os.stat(old)  # the kernel now holds this name
    c = d.client()
    c.select(f)
    c.uid("STORE", str(gone), "+FLAGS", "(\\Deleted)")
    c.uid("EXPUNGE", str(gone))
    c.logout()
    within(IN_USE, lambda: not old.exists())  # invalidated in the kernel, not just unlisted
    assert list(by_uid(m, f)) == [keep]


def test_flag_change_by_other_client(env):
    d, m = env
    f = fresh(d, m, "Flags")
    uid = d.append(f, msg("flagme"))
    p = within(IN_USE, lambda: by_uid(m, f).get(uid))
    assert "\\Flagged" not in os.getxattr(p, "user.imap.flags").decode()
    c = d.client()
    c.select(f)
    c.uid("STORE", str(uid), "+FLAGS", "(\\Flagged $Phone)")
    c.logout()
    within(IN_USE, lambda: {"\\Flagged", "$Phone"} <= set(os.getxattr(p, "user.imap.flags").decode().split()))


# imapfs.flagview.FLAGS_FRESH: getxattr serves a folder's flags from the tree for at
# most this long after a refresh was asked for (docs/change-tracking.md, "Flags").
FLAGS_FRESH = 1.0
# A command a flag refresh (or a per-message flag fetch) sends; STATUS polls, IDLE's
# EXAMINE and LIST are change tracking's, not getxattr's.
_FLAG_COMMANDS = re.compile(rb"(?m)^\S+ (?:UID FETCH|FETCH|SELECT|UID SEARCH) ")


def _store_flags(d: Dovecot, folder: str, uid: int, flags: set[str]) -> None:
    c = d.client()
    try:
        c.select(folder)
        typ, data = c.uid("STORE", str(uid), "FLAGS", "(" + " ".join(sorted(flags)) + ")")
        assert typ == "OK", data
    finally:
        c.logout()


def test_flag_change_by_other_client_shown_after_the_window(env):
    """A flag change another client made is shown by every getxattr that starts
    FLAGS_FRESH s later, although getxattr answers from the tree (issue 12): the
    refresh it shares is counted from before its SELECT, so the bound is exact
    (a wait of exactly FLAGS_FRESH, no margin). Without CONDSTORE (idle-only)
    no sync reads flags, so only that refresh can show the change."""
    d, m = env
    f = fresh(d, m, "FlagWindow")
    uid = d.append(f, msg("window"))
    p = within(IN_USE, lambda: by_uid(m, f).get(uid))
    for flags in ({"\\Flagged", "$Phone"}, {"\\Seen"}, set(), {"\\Answered", "$Label1"}):
        os.getxattr(p, "user.imap.flags")  # the folder is fresh now, from before the change
        _store_flags(d, f, uid, flags)
        time.sleep(FLAGS_FRESH)
        assert set(os.getxattr(p, "user.imap.flags").decode().split()) == flags
        assert d.flags(f)[uid] - {"\\Recent"} == flags


def test_flags_of_a_folder_cost_one_refresh(env, tmp_mountpoint, make_proxy, make_mount):
    """getxattr user.imap.flags over a whole folder costs one refresh per
    FLAGS_FRESH window, not a FETCH per message, and readers arriving together
    share one refresh; every value is still the server's (issue 12)."""
    d, _m = env
    f = "FlagCost"
    n = 100
    d.create(f)
    seen = d.append_many(f, [msg(f"cost-seen-{i}") for i in range(n // 2)], flags="\\Seen")
    d.append_many(f, [msg(f"cost-work-{i}") for i in range(n - n // 2)], flags="\\Flagged $Work")
    _store_flags(d, f, seen[0], {"\\Answered"})
    p = make_proxy(d.host, d.port)
    mnt = make_mount(f"imap://{d.user}@127.0.0.1:{p.port}/", tmp_mountpoint, ["tls=off", f"poll={POLL}"],
                     password=d.password)
    paths = within(IN_USE, lambda: by_uid(mnt, f) if len(by_uid(mnt, f)) == n else None)
    server = {u: fl - {"\\Recent"} for u, fl in d.flags(f).items()}

    def commands() -> int:
        return len(_FLAG_COMMANDS.findall(p.client_bytes()))

    # A window costs at most 5 commands: a refresh is a SELECT (+ FETCH CHANGEDSINCE);
    # without CONDSTORE, SELECT, UID SEARCH and UID FETCH 1:* FLAGS, after the lone
    # read that found the folder stale (SELECT + UID FETCH of its message). Allowed:
    # one such per window begun, plus one for a sync change tracking may run
    # meanwhile. A FETCH per message would be n.
    time.sleep(FLAGS_FRESH)
    before, t0 = commands(), time.monotonic()
    got = {u: set(os.getxattr(q, "user.imap.flags").decode().split()) for u, q in paths.items()}
    spent, elapsed = commands() - before, time.monotonic() - t0
    assert got == server
    assert spent <= 5 * (2 + int(elapsed / FLAGS_FRESH)), (spent, elapsed)

    # Readers arriving together after the window: they share one refresh.
    readers = 24
    some = sorted(paths)[:readers]
    time.sleep(FLAGS_FRESH)
    start = threading.Barrier(readers)
    out: dict[int, set[str]] = {}

    def read(u: int) -> None:
        start.wait()
        out[u] = set(os.getxattr(paths[u], "user.imap.flags").decode().split())

    before, t0 = commands(), time.monotonic()
    threads = [threading.Thread(target=read, args=(u,)) for u in some]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    spent, elapsed = commands() - before, time.monotonic() - t0
    assert out == {u: server[u] for u in some}
    assert spent <= 5 * (2 + int(elapsed / FLAGS_FRESH)), (spent, elapsed)


def test_folder_create_delete_rename_by_other_client(env):
    d, m = env
    d.create("Made/Elsewhere")
    within(IN_USE, lambda: m.path("Made", "Elsewhere").is_dir())
    c = d.client()
    assert c.rename("Made/Elsewhere", "Made/Renamed")[0] == "OK"
    c.logout()
    within(IN_USE, lambda: m.path("Made", "Renamed").is_dir() and not m.path("Made", "Elsewhere").exists())
    c = d.client()
    assert c.delete("Made/Renamed")[0] == "OK"  # Dovecot drops the implied parent by itself
    c.logout()
    if "NOTIFY" in d.capability():
        within(IN_USE, lambda: not m.path("Made").exists())  # pushed
    else:
        # Without NOTIFY nothing tells of a deleted folder whose name is known:
        # a listing (LIST when over 5 s old) or the poll round finds it (docs/change-tracking.md).
        within(IN_USE, lambda: "Made" not in os.listdir(m.mountpoint))
        # and the kernel forgets the name with it (the invalidation is queued,
        # so it may land a moment after the listing that no longer shows it)
        within(IN_USE, lambda: not m.path("Made").exists())


def test_uidvalidity_change_recomputes_everything(env):
    d, m = env
    f = fresh(d, m, "Rebuilt")
    old_uid = d.append(f, msg("old-1", "old message", "OLD BYTES"))
    old = within(IN_USE, lambda: by_uid(m, f).get(old_uid))
    old_ino = os.stat(old).st_ino
    assert b"OLD BYTES" in old.read_bytes()
    old_validity = uidvalidity(d, f)

    def recreated() -> bool:
        c = d.client()
        assert c.delete(f)[0] == "OK"
        c.logout()
        d.create(f)
        if uidvalidity(d, f) != old_validity:
            return True
        time.sleep(0.2)  # a server whose UIDVALIDITY is a timestamp: try again a moment later
        return False

    eventually(recreated, timeout=10, interval=0)
    new_uid = d.append(f, msg("new-1", "old message", "NEW BYTES"))
    assert new_uid == old_uid  # the same UID now names another message

    def rebuilt():
        p = by_uid(m, f).get(new_uid)
        return p if p is not None and os.stat(p).st_ino != old_ino else None

    p = within(IN_USE, rebuilt)
    assert b"NEW BYTES" in p.read_bytes() and b"OLD BYTES" not in p.read_bytes()
    # Either the folder was seen to vanish and return, or its UIDVALIDITY change was noticed.
    assert "UIDVALIDITY" in m.log() or "is gone from the server" in m.log()


def test_kernel_forgets_expunged_name_without_any_listing(env):
    """The background path: nobody lists the folder again, yet the cached name goes."""
    d, m = env
    f = fresh(d, m, "Cold")
    uid = d.append(f, msg("cold"))
    p = within(IN_USE, lambda: by_uid(m, f).get(uid))
    os.stat(p)
    c = d.client()
    c.select(f)
    c.uid("STORE", str(uid), "+FLAGS", "(\\Deleted)")
    c.uid("EXPUNGE", str(uid))
    c.logout()
    # no listing: only the watcher can make the kernel forget this name
    eventually(lambda: not os.path.exists(p), timeout=POLL + IN_USE, interval=0.2)


def test_soak_churn_while_walking(env, tmp_path):
    """A bounded churn (30 s per profile, a minute in all; IMAPFS_SOAK_SECONDS to change):
    appends, expunges and flag flips against find/cat walks."""
    d, m = env
    f = fresh(d, m, "Churn")
    truth: dict[int, bytes] = {}
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[str] = []
    churn_failed: list[BaseException] = []  # the churn thread's exception, raised by the test
    changes = 0

    def churn():
        nonlocal changes
        rng = random.Random(7)
        c = d.client()
        try:
            c.select(f)
            n = 0
            while not stop.is_set():
                n += 1
                act = rng.random()
                with lock:
                    live = list(truth)
                if act < 0.5 or len(live) < 5:
                    body = msg(f"churn-{n}", f"churn {n}", f"token-{n} " + "x" * rng.randint(0, 3000))
                    uid = d.append(f, body)
                    with lock:
                        truth[uid] = d.fetch_all(f).get(uid, body)
                elif act < 0.8:
                    uid = rng.choice(live)
                    assert c.uid("STORE", str(uid), "+FLAGS", "(\\Deleted)")[0] == "OK"
                    assert c.uid("EXPUNGE", str(uid))[0] == "OK"
                else:
                    uid = rng.choice(live)
                    assert c.uid("STORE", str(uid), "+FLAGS", "(\\Flagged)")[0] == "OK"
                changes += 1
                time.sleep(0.02)
            c.logout()
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            churn_failed.append(e)

    t = threading.Thread(target=churn)
    t.start()
    deadline = time.monotonic() + float(os.environ.get("IMAPFS_SOAK_SECONDS", "30"))
    reads = 0
    try:
        while time.monotonic() < deadline and not churn_failed:
            for root, _dirs, files in os.walk(m.path(f)):
                for name in files:
                    p = Path(root) / name
                    try:
                        data = p.read_bytes()
                    except OSError as e:
                        if e.errno not in (errno.ENOENT, errno.ESTALE):
                            errors.append(f"{name}: {e}")
                        continue
                    mo = re.search(r"#(\d+)\.eml$", name)
                    if mo:
                        reads += 1
                        with lock:
                            want = truth.get(int(mo.group(1)))
                        if want is not None and data != want:
                            errors.append(f"{name}: bytes differ from the server's")
    finally:
        stop.set()
        t.join()
    if churn_failed:
        raise AssertionError("the churn thread (the other client) failed") from churn_failed[0]
    assert not errors, errors[:10]
    assert reads > 20 and changes > 20
    # and at the end the listing matches the server
    server = set(d.fetch_all(f))
    within(IN_USE, lambda: set(by_uid(m, f)) == server)
