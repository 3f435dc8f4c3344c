"""The push listener (watch.PushListener) against a real Dovecot 2.3.19.

Dovecot's NOTIFY process watches ``dovecot.list.index.log`` with inotify on
the file it had at NOTIFY SET; once that log is rotated (every ~62 KB of
list index changes, ~330 APPENDs here) it hears of nothing until its 30 s
fallback timer, and if the log was rotated three times by then it crashes
(signal 11 after "Failed to map view for dovecot.list.index").  Polling it
with NOOP avoided that but left LIST stale after another client's rename
(tests/test_coherence.py::test_folder_create_delete_rename_by_other_client
caught it), so imapfs does not; it recovers from the crash by reconnecting
and comparing.  Details and figures: docs/change-tracking.md, "Dovecot NOTIFY crash";
scripts/repro_notify_crash.py reproduces both without imapfs.
"""
from __future__ import annotations

import queue
import threading
import time

from imapfs.records import Account
from imapfs.watch import PushListener
from tests.support.dovecot import DOVECOT_CAPABILITIES


def _msg(i: int) -> bytes:
    return (f"From: bulk@example.org\r\nSubject: bulk #{i}\r\n"
            f"Message-ID: <bulk-{i}@example.org>\r\n\r\nbody {i}\r\n").encode()


def _start(d, mode: str = "notify", timeout: float = 10) -> tuple[PushListener, threading.Thread, queue.Queue[tuple]]:
    """A live PushListener on *d*, once its session runs in *mode*."""
    account = Account(d.host, d.port, d.user, lambda kind, fresh: d.password, tls="off", timeout=10)
    events: queue.Queue[tuple] = queue.Queue()
    caps = frozenset(DOVECOT_CAPABILITIES)
    listener = PushListener(account, lambda: caps, events.put)
    thread = threading.Thread(target=listener.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not (listener.connected and listener.mode == mode):
        assert time.monotonic() < deadline, f"no {mode} session (mode {listener.mode})"
        time.sleep(0.02)
    return listener, thread, events


def _stop(listener: PushListener, thread: threading.Thread) -> None:
    listener.stop()
    thread.join(10)
    assert not thread.is_alive()


def _wait_for(events: queue.Queue[tuple], want: tuple, timeout: float) -> float | None:
    """Seconds until ``want`` was reported, or None within ``timeout``."""
    t0 = time.monotonic()
    while (left := t0 + timeout - time.monotonic()) > 0:
        try:
            if events.get(timeout=left) == want:
                return time.monotonic() - t0
        except queue.Empty:
            break
    return None


def test_refused_notify_falls_back_to_idle(make_dovecot):
    """Dovecot without mailbox_list_index advertises NOTIFY but refuses NOTIFY SET
    (NO [NOTIFICATIONOVERFLOW]); the listener must watch with IDLE, not retry forever."""
    d = make_dovecot(extra_config="mailbox_list_index = no\n")
    d.create("Other")
    listener, thread, events = _start(d, mode="idle", timeout=15)
    try:
        d.append("INBOX", _msg(1))
        assert _wait_for(events, ("folder", b"INBOX"), 10.0) is not None, "IDLE did not report the new message"
    finally:
        _stop(listener, thread)
