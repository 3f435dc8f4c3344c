"""The latency proxy between every client and Dovecot (``--rtt MS``)."""
from __future__ import annotations

import collections
import contextlib
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .common import MB, StepError

BENCH_PY = Path(__file__).resolve().parents[1] / "bench.py"
PROXY_MAX_QUEUE = 64 * MB


def proxy_main(up_host: str, up_port: int, delay_ms: float) -> None:
    """Serve one listener: every chunk goes on ``delay_ms`` after it arrived, in order.

    Single-threaded (selectors): per direction a FIFO of (due, bytes); a
    reader stops reading while its FIFO holds more than 64 MB (so a slow
    client back-pressures the server instead of filling memory).  Exits
    when its parent dies or on SIGTERM.
    """
    delay = delay_ms / 1000.0
    parent = os.getppid()
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    lsock.setblocking(False)
    sys.stdout.write(f"PORT {lsock.getsockname()[1]}\n")
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    EOF = None

    class Pipe:
        __slots__ = ("src", "dst", "q", "qbytes", "read_eof", "done", "blocked", "conn")

        def __init__(self, src, dst, conn):
            self.src, self.dst, self.conn = src, dst, conn
            self.q = collections.deque()
            self.qbytes = 0
            self.read_eof = False
            self.done = False
            self.blocked = False

    class Conn:
        def __init__(self, client, up):
            self.socks = (client, up)
            self.c2s = Pipe(client, up, self)
            self.s2c = Pipe(up, client, self)
            self.closed = False
            self.mask = {client: 0, up: 0}

    conns: list[Conn] = []
    by_sock: dict = {}

    def update(conn: Conn) -> None:
        for s in conn.socks:
            inp = conn.c2s if conn.c2s.src is s else conn.s2c
            out = conn.s2c if conn.s2c.dst is s else conn.c2s
            m = 0
            if not inp.read_eof and inp.qbytes < PROXY_MAX_QUEUE:
                m |= selectors.EVENT_READ
            if out.blocked:
                m |= selectors.EVENT_WRITE
            old = conn.mask[s]
            if m != old:
                if old == 0:
                    sel.register(s, m, conn)
                elif m == 0:
                    sel.unregister(s)
                else:
                    sel.modify(s, m, conn)
                conn.mask[s] = m

    def close(conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        for s in conn.socks:
            if conn.mask[s]:
                sel.unregister(s)
            by_sock.pop(s, None)
            with contextlib.suppress(OSError):
                s.close()
        conns.remove(conn)

    def flush(p: Pipe, now: float) -> None:
        while p.q and p.q[0][0] <= now:
            due, data = p.q[0]
            if data is EOF:
                p.q.popleft()
                with contextlib.suppress(OSError):
                    p.dst.shutdown(socket.SHUT_WR)
                p.done = True
                return
            try:
                n = p.dst.send(data)
            except BlockingIOError:
                p.blocked = True
                return
            except OSError:
                close(p.conn)
                return
            p.qbytes -= n
            if n < len(data):
                p.q[0] = (due, data[n:])
                p.blocked = True
                return
            p.q.popleft()
        p.blocked = False

    while True:
        if os.getppid() != parent:
            return
        now = time.monotonic()
        timeout = 0.5
        for conn in list(conns):
            for p in (conn.c2s, conn.s2c):
                if conn.closed:
                    break
                if p.q and not p.blocked:
                    if p.q[0][0] <= now:
                        flush(p, now)
                    if p.q and not p.blocked:
                        timeout = min(timeout, max(0.0, p.q[0][0] - now))
            if not conn.closed:
                if conn.c2s.done and conn.s2c.done:
                    close(conn)
                else:
                    update(conn)
        for key, ev in sel.select(timeout):
            if key.data is None:
                try:
                    cs, _ = lsock.accept()
                    up = socket.create_connection((up_host, up_port), timeout=10)
                except OSError:
                    continue
                for s in (cs, up):
                    s.setblocking(False)
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = Conn(cs, up)
                conns.append(conn)
                update(conn)
                continue
            conn = key.data
            if conn.closed:
                continue
            s = key.fileobj
            now = time.monotonic()
            if ev & selectors.EVENT_WRITE:
                p = conn.s2c if conn.s2c.dst is s else conn.c2s
                p.blocked = False
                flush(p, now)
                if conn.closed:
                    continue
            if ev & selectors.EVENT_READ:
                p = conn.c2s if conn.c2s.src is s else conn.s2c
                try:
                    data = s.recv(1 << 20)
                except BlockingIOError:
                    data = b"?"
                    continue
                except OSError:
                    data = b""
                if data:
                    p.q.append((now + delay, data))
                    p.qbytes += len(data)
                else:
                    p.read_eof = True
                    p.q.append((now + delay, EOF))
            if not conn.closed:
                update(conn)


class LatencyProxy:
    """Runs :func:`proxy_main` in a child process (no GIL shared with the measurements)."""

    def __init__(self, up_host: str, up_port: int, rtt_ms: float):
        self.rtt_ms = rtt_ms
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH_PY), "--_proxy", up_host, str(up_port), str(rtt_ms / 2)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"PORT (\d+)", line)
        if not m:
            self.stop()
            raise StepError(f"latency proxy did not start: {line!r}")
        self.port = int(m.group(1))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
