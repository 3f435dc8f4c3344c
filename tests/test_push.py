"""The push listener (watch.PushListener) against a real Dovecot 2.3.19.

Dovecot's NOTIFY process watches ``dovecot.list.index.log`` with inotify on
the file it had at NOTIFY SET; once that log is rotated (every ~62 KB of
list index changes, ~330 APPENDs here) it hears of nothing until its 30 s
fallback timer, and if the log was rotated three times by then it crashes
(signal 11 after "Failed to map view for dovecot.list.index").  imapfs polls
with NOOP so the process catches up before either happens.  Details and
figures: docs/change-tracking.md, "Dovecot NOTIFY crash";
scripts/repro_notify_crash.py reproduces both without imapfs.
"""
from __future__ import annotations

import queue
import threading
import time

import pytest

from imapfs.session import Account
from imapfs.watch import PushListener
from tests.support.dovecot import DOVECOT_CAPABILITIES


def _msg(i: int) -> bytes:
    return (f"From: bulk@example.org\r\nSubject: bulk #{i}\r\n"
            f"Message-ID: <bulk-{i}@example.org>\r\n\r\nbody {i}\r\n").encode()


def _start(d) -> tuple[PushListener, threading.Thread, "queue.Queue[tuple]"]:
    account = Account(d.host, d.port, d.user, lambda kind, fresh: d.password, tls="off", timeout=10)
    events: "queue.Queue[tuple]" = queue.Queue()
    caps = frozenset(DOVECOT_CAPABILITIES)
    listener = PushListener(account, lambda: caps, events.put)
    thread = threading.Thread(target=listener.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not listener.connected:
        assert time.monotonic() < deadline, "push listener did not connect"
        time.sleep(0.02)
    assert listener.mode == "notify"
    return listener, thread, events


def _stop(listener: PushListener, thread: threading.Thread) -> None:
    listener.stop()
    thread.join(10)
    assert not thread.is_alive()


def _wait_for(events: "queue.Queue[tuple]", want: tuple, timeout: float) -> float | None:
    """Seconds until ``want`` was reported, or None within ``timeout``."""
    t0 = time.monotonic()
    while (left := t0 + timeout - time.monotonic()) > 0:
        try:
            if events.get(timeout=left) == want:
                return time.monotonic() - t0
        except queue.Empty:
            break
    return None


def test_notify_still_pushes_after_list_index_log_rotation(clean_dovecot):
    d = clean_dovecot
    d.create("Bulk")
    d.create("Other")
    listener, thread, events = _start(d)
    try:
        log = d.maildir() / "dovecot.list.index.log"
        before = log.stat().st_ino
        d.append_many("Bulk", [_msg(i) for i in range(700)])
        assert log.stat().st_ino != before, "the bulk did not rotate the list index log"
        while not events.empty():
            events.get_nowait()
        d.append("Other", _msg(10_000))
        # Polled every 0.5 s; without the poll Dovecot tells only at its 30 s timer.
        delay = _wait_for(events, ("folder", b"Other"), 5.0)
        assert delay is not None, "a new message in Other was not pushed within 5 s"
        assert listener.connected
    finally:
        _stop(listener, thread)


@pytest.mark.slow
def test_notify_session_survives_bulk_appends(make_dovecot):
    """About 15 s: Dovecot's fallback timer is shortened from 30 s to 8 s so
    that it runs (and, without imapfs's NOOP poll, crashes) soon after the bulk."""
    d = make_dovecot(extra_config="mailbox_idle_check_interval = 8 secs\n")
    d.create("NewFolder")
    listener, thread, events = _start(d)
    try:
        log = d.maildir() / "dovecot.list.index.log"
        inodes = {log.stat().st_ino}
        for start in range(0, 2000, 250):
            d.append_many("NewFolder", [_msg(i) for i in range(start, start + 250)])
            inodes.add(log.stat().st_ino)
        assert len(inodes) >= 4, "the bulk did not rotate the list index log three times"
        time.sleep(10)  # at least one run of Dovecot's timer after the bulk
        crash = [l for l in d.log().splitlines() if "signal 11" in l or "Failed to map view" in l]
        assert crash == []
        while not events.empty():
            events.get_nowait()
        d.append("NewFolder", _msg(10_000))
        assert _wait_for(events, ("folder", b"NewFolder"), 5.0) is not None
        assert listener.connected
    finally:
        _stop(listener, thread)


def test_refused_notify_falls_back_to_idle(make_dovecot):
    """Dovecot without mailbox_list_index advertises NOTIFY but refuses NOTIFY SET
    (NO [NOTIFICATIONOVERFLOW]); the listener must watch with IDLE, not retry forever."""
    d = make_dovecot(extra_config="mailbox_list_index = no\n")
    d.create("Other")
    account = Account(d.host, d.port, d.user, lambda kind, fresh: d.password, tls="off", timeout=10)
    events: "queue.Queue[tuple]" = queue.Queue()
    caps = frozenset(DOVECOT_CAPABILITIES)
    listener = PushListener(account, lambda: caps, events.put)
    thread = threading.Thread(target=listener.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not (listener.connected and listener.mode == "idle"):
            assert time.monotonic() < deadline, f"no IDLE session (mode {listener.mode})"
            time.sleep(0.05)
        d.append("INBOX", _msg(1))
        assert _wait_for(events, ("folder", b"INBOX"), 10.0) is not None, "IDLE did not report the new message"
    finally:
        _stop(listener, thread)
