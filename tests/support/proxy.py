"""A TCP proxy for fault injection between a client and a server (stdlib, threads).

    with Proxy(dovecot.host, dovecot.port) as p:
        ... connect the client to 127.0.0.1:p.port ...
        p.cut()                                # drop every connection now
        cut = p.cut_when(b"UID MOVE")          # drop when the client sends it
        p.cut_when_server(b"[APPENDUID")       # server did it, client never hears
        held = p.hold_when(b"APPEND")          # the command waits in the proxy ...
        p.release()                            # ... until the test lets it go on
        assert cut.fired == 1                  # the cut really happened
        p.rewrite_server = lambda b: b.replace(b" STARTTLS", b"")   # MITM
        p.bytes_server_to_client               # e.g. assert < 20 MB

Each accepted connection gets its own upstream connection and one reader and
one writer thread per direction; the writer sends each chunk ``delay_ms``
after it was read, in order, so latency is added without reordering or
limiting throughput.  Everything is bounded: at most ``max_connections``
connections (later ones are refused) and the proxy stops itself after
``lifetime`` seconds.  All threads are daemons.

For long runs (scripts/bench's latency proxy, in its own process):
``record=False`` keeps no copy of the traffic (only the byte counters; no
triggers then), ``max_queued`` bounds the bytes waiting in each direction
(its reader stops reading, so a slow client back-pressures the server), and
``lifetime=math.inf`` never stops.
"""
from __future__ import annotations

import queue
import re
import select
import socket
import threading
import time
from collections.abc import Callable

Trigger = bytes | Callable[[bytes], bool]

_EOF = object()     # writer: half-close the destination
_CLOSE = object()   # writer: close the whole connection (after what came before)


class _Direction:
    def __init__(self, src: socket.socket, dst: socket.socket, name: str):
        self.src, self.dst, self.name = src, dst, name
        self.q: queue.Queue = queue.Queue()  # (due time, bytes | _EOF | _CLOSE)
        self.queued = 0                      # bytes put and not yet sent (max_queued)
        self.room = threading.Condition()

    def put(self, due: float, item: object) -> None:
        if isinstance(item, (bytes, bytearray)):
            with self.room:
                self.queued += len(item)
        self.q.put((due, item))

    def sent(self, n: int) -> None:
        with self.room:
            self.queued -= n
            self.room.notify_all()

    def wait_room(self, limit: int, closed: threading.Event) -> None:
        """Block the reader while more than ``limit`` bytes wait to be sent."""
        with self.room:
            while self.queued > limit and not closed.is_set():
                self.room.wait(0.1)


class ProxyConnection:
    """One client connection and its upstream connection."""

    def __init__(self, proxy: Proxy, client: socket.socket, upstream: socket.socket):
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.client_data = bytearray()   # everything the client sent
        self.server_data = bytearray()   # everything the server sent (before rewrite)
        self.closed = threading.Event()
        self.client_gone = False         # client side closed, upstream held (cut_when forward)
        self._lock = threading.Lock()
        self._line_buf = b""             # rewrite_server: incomplete last line
        self._eofs = 0
        self._running = 4                # threads; the last one closes the sockets
        self.gate = threading.Event()    # cleared by a hold_when: client data waits
        self.gate.set()
        self.c2s = _Direction(client, upstream, "c2s")
        self.s2c = _Direction(upstream, client, "s2c")
        self.threads = []

    def start(self) -> None:
        for d in (self.c2s, self.s2c):
            for target in (self._reader, self._writer):
                t = threading.Thread(target=target, args=(d,), daemon=True,
                                     name=f"proxy-{d.name}-{target.__name__}")
                t.start()
                self.threads.append(t)

    # ---------------------------------------------------------------- closing
    def close(self) -> None:
        """Drop both sides at once (idempotent)."""
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
        for s in (self.client, self.upstream):
            _shutdown(s)
        for d in (self.c2s, self.s2c):
            d.put(0.0, _CLOSE)

    def _close_client_hold_upstream(self, grace: float) -> None:
        self.client_gone = True
        _shutdown(self.client)
        t = threading.Timer(grace, self.close)
        t.daemon = True
        t.start()

    # ---------------------------------------------------------------- threads
    def _thread_done(self) -> None:
        # Sockets are only shut down while threads may use them (closing an
        # fd another thread is blocked on invites fd-reuse races); the last
        # thread out closes them.
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            for s in (self.client, self.upstream):
                s.close()

    def _reader(self, d: _Direction) -> None:
        try:
            self._read_loop(d)
        finally:
            self._thread_done()

    def _read_loop(self, d: _Direction) -> None:
        p = self.proxy
        try:
            while not self.closed.is_set():
                try:
                    if d is self.s2c and self._line_buf:
                        # rewrite_server holds an incomplete line: pass it on
                        # if nothing follows soon (e.g. TLS after STARTTLS).
                        if not select.select([d.src], [], [], 0.05)[0]:
                            self._flush_line_buf()
                            continue
                    data = d.src.recv(65536)
                except (OSError, ValueError):
                    break
                if not data:
                    break
                due = time.monotonic() + p.delay_ms / 1000.0
                if d is self.c2s:
                    if not self._from_client(data, due):
                        return
                else:
                    if not self._from_server(data, due):
                        return
                if p.max_queued is not None:
                    d.wait_room(p.max_queued, self.closed)
        finally:
            if d is self.s2c and self._line_buf and not self.closed.is_set():
                self._flush_line_buf()
            d.put(0.0, _EOF)

    def _flush_line_buf(self) -> None:
        rest, self._line_buf = self._line_buf, b""
        self.s2c.put(time.monotonic() + self.proxy.delay_ms / 1000.0,
                     self.proxy._rewrite(rest))

    def _from_client(self, data: bytes, due: float) -> bool:
        p = self.proxy
        if not p.record:  # no copy, no triggers
            self.c2s.put(due, data)
            return True
        with p._lock:
            start = len(self.client_data)
            self.client_data += data
            hit = p._match(p._client_triggers, self.client_data, start, len(data))
        if hit is None:
            self.c2s.put(due, data)
            return True
        trig, pos = hit
        if trig.hold:  # this chunk and what follows wait until Proxy.release()
            self.gate.clear()
            self.c2s.put(due, data)
            return True
        if trig.forward:
            self.c2s.put(due, data)
            self._close_client_hold_upstream(trig.grace)
        else:
            before = _before_line(self.client_data, pos) - start
            if before > 0:
                self.c2s.put(due, data[:before])
            self.c2s.put(due, _CLOSE)
            _shutdown(self.client)  # the client sees the drop at once
        return False

    def _from_server(self, data: bytes, due: float) -> bool:
        p = self.proxy
        if not p.record:
            self._send_server(data, due)
            return True
        with p._lock:
            start = len(self.server_data)
            self.server_data += data
            hit = p._match(p._server_triggers, self.server_data, start, len(data))
        if self.client_gone:  # a forwarded cut_when: the server answered, drop now
            self.close()
            return False
        if hit is not None:
            trig, pos = hit
            if trig.forward:
                self._send_server(data, due)
            else:
                before = _before_line(self.server_data, pos) - start
                if before > 0:
                    self._send_server(data[:before], due)
            self.s2c.put(due, _CLOSE)
            _shutdown(self.upstream)
            return False
        self._send_server(data, due)
        return True

    def _send_server(self, data: bytes, due: float) -> None:
        p = self.proxy
        if p.rewrite_server is None and self._line_buf:
            data, self._line_buf = self._line_buf + data, b""
        if p.rewrite_server is not None:
            buf = self._line_buf + data
            cut = buf.rfind(b"\n") + 1
            self._line_buf = buf[cut:]
            data = p._rewrite(buf[:cut]) if cut else b""
            if not data:
                return
        self.s2c.put(due, data)

    def _writer(self, d: _Direction) -> None:
        try:
            self._write_loop(d)
        finally:
            self._thread_done()

    def _write_loop(self, d: _Direction) -> None:
        p = self.proxy
        while True:
            due, item = d.q.get()
            if item is _CLOSE:
                self.close()
                return
            if item is _EOF:
                if d is self.c2s and self.client_gone:
                    return  # keep the upstream open until the grace timer
                try:
                    d.dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                with self._lock:
                    self._eofs += 1
                    both = self._eofs == 2
                if both:
                    self.close()
                return
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            while d is self.c2s and not self.gate.wait(0.05):
                if self.closed.is_set():
                    return
            if self.closed.is_set():
                return
            try:
                d.dst.sendall(item)
            except OSError:
                self.close()
                return
            d.sent(len(item))
            with p._lock:
                if d is self.c2s:
                    p.bytes_client_to_server += len(item)
                else:
                    p.bytes_server_to_client += len(item)


class _Trigger:
    """An armed cut; ``fired`` counts the connections it dropped (tests assert it)."""

    def __init__(self, trigger: Trigger, forward: bool, once: bool, grace: float):
        if not (isinstance(trigger, (bytes, bytearray)) or callable(trigger)):
            raise TypeError("trigger must be bytes or a callable on bytes")
        self.trigger, self.forward, self.once, self.grace = trigger, forward, once, grace
        self.hold = False  # hold_when: delay the data instead of dropping the connection
        self.fired = 0

    def __repr__(self) -> str:
        return f"<cut on {self.trigger!r}, fired {self.fired}>"


def _before_line(buf: bytes | bytearray, pos: int) -> int:
    """Offset of the start of the line holding ``pos``."""
    return buf.rfind(b"\n", 0, pos) + 1


def _shutdown(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _kill(s: socket.socket) -> None:
    """Shut down and close a socket no other thread uses."""
    _shutdown(s)
    try:
        s.close()
    except OSError:
        pass


class Proxy:
    """A bounded, self-stopping TCP proxy on 127.0.0.1 (see module docstring).

    ``rewrite_server(bytes) -> bytes`` is applied to server→client data in
    whole lines (data up to and including a ``\\n``; the incomplete tail is
    held back until its line ends or the server closes).  ``refuse``: accept
    and close at once.  ``hang``: accept and then neither read nor answer
    (a dead server).  Both may be switched at any time.  ``record=False``:
    keep no copy of the traffic (``client_bytes()`` stays empty; triggers
    cannot be armed).  ``max_queued``: bytes per direction read and not yet
    sent beyond which the reader waits (``None``: unbounded).
    """

    def __init__(self, upstream_host: str, upstream_port: int, *,
                 rewrite_server: Callable[[bytes], bytes] | None = None,
                 delay_ms: float = 0, refuse: bool = False, hang: bool = False,
                 max_connections: int = 500, lifetime: float = 900.0,
                 host: str = "127.0.0.1", connect_timeout: float = 5.0,
                 record: bool = True, max_queued: int | None = None):
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.rewrite_server = rewrite_server
        self.delay_ms = delay_ms
        self.refuse = refuse
        self.hang = hang
        self.max_connections = max_connections
        self.lifetime = lifetime
        self.connect_timeout = connect_timeout
        self.record = record
        self.max_queued = max_queued
        self.connections: list[ProxyConnection] = []
        self.accepted = 0
        self.bytes_client_to_server = 0
        self.bytes_server_to_client = 0
        self._lock = threading.RLock()
        self._client_triggers: list[_Trigger] = []
        self._server_triggers: list[_Trigger] = []
        self._hung: list[socket.socket] = []
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self.port = self._listener.getsockname()[1]
        self._thread: threading.Thread | None = None
        self._deadline = None

    # ------------------------------------------------------------- lifecycle
    def start(self) -> Proxy:
        if self._thread is None:
            self._listener.listen(64)
            self._listener.settimeout(0.05)
            self._deadline = time.monotonic() + self.lifetime
            self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                            name="proxy-accept")
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting and drop every connection; idempotent."""
        self._stop.set()
        self.release()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        _kill(self._listener)
        self.cut()
        for c in list(self.connections):
            for t in c.threads:
                t.join(2)

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Proxy 127.0.0.1:{self.port} -> {self.upstream[0]}:{self.upstream[1]}>"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() > self._deadline:
                self._stop.set()
                self.cut()
                break
            try:
                csock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            csock.settimeout(None)
            with self._lock:
                self.accepted += 1
                over = self.accepted > self.max_connections
            if self.refuse or over:
                _kill(csock)
                continue
            if self.hang:
                with self._lock:
                    self._hung.append(csock)
                continue
            try:
                up = socket.create_connection(self.upstream, timeout=self.connect_timeout)
                up.settimeout(None)
            except OSError:
                _kill(csock)
                continue
            for s in (csock, up):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = ProxyConnection(self, csock, up)
            with self._lock:
                self.connections.append(conn)
            conn.start()
        _kill(self._listener)

    # ------------------------------------------------------------- injection
    def cut(self) -> int:
        """Drop every current connection, both directions at once; returns how many."""
        with self._lock:
            conns = [c for c in self.connections if not c.closed.is_set()]
            hung, self._hung = self._hung, []
        for c in conns:
            c.close()
        for s in hung:
            _kill(s)
        return len(conns) + len(hung)

    def cut_when(self, trigger: Trigger, forward: bool = False, once: bool = True,
                 grace: float = 2.0) -> _Trigger:
        """Drop a connection as soon as its client has sent ``trigger``.

        ``trigger``: bytes searched in everything that connection's client sent
        so far, or a callable given those bytes.  ``forward=False``: the
        server never sees the line holding the match (for a callable: the
        chunk that made it true) and both sides are dropped.
        ``forward=True``: the data is forwarded, the client is dropped at once
        and never sees an answer; the server connection stays open until the
        server answers (or ``grace`` seconds), so the command really runs.
        ``once``: disarm after the first cut.  Returns the trigger: a test
        asserts ``fired`` so that it cannot pass without the cut.
        """
        self._need_record()
        t = _Trigger(trigger, forward, once, grace)
        with self._lock:
            self._client_triggers.append(t)
        return t

    def cut_when_server(self, trigger: Trigger, forward: bool = False,
                        once: bool = True) -> _Trigger:
        """Drop a connection as soon as its server sends ``trigger``.

        ``forward=False``: the client never sees the line holding the match,
        e.g. ``b"[APPENDUID"``: the server stored the message, the client
        never learns it.  ``forward=True``: the client gets that data first.
        Returns the trigger (see :meth:`cut_when`).
        """
        self._need_record()
        t = _Trigger(trigger, forward, once, 0.0)
        with self._lock:
            self._server_triggers.append(t)
        return t

    def hold_when(self, trigger: Trigger, once: bool = True) -> _Trigger:
        """Hold a connection's client data from the chunk holding ``trigger`` on.

        The server sees nothing of it (nor anything the client sends after)
        until :meth:`release`; the connection stays open. For a command that
        must be in flight at a known moment, e.g. ``b"APPEND"``: the client
        waits for the server's continuation. Returns the trigger (``fired``).
        """
        self._need_record()
        t = _Trigger(trigger, False, once, 0.0)
        t.hold = True
        with self._lock:
            self._client_triggers.append(t)
        return t

    def _need_record(self) -> None:
        if not self.record:
            raise ValueError("triggers match the recorded traffic: Proxy(record=False) has none")

    def release(self) -> None:
        """Let every held connection's data go on to the server, in order."""
        with self._lock:
            conns = list(self.connections)
        for c in conns:
            c.gate.set()

    def clear_triggers(self) -> None:
        with self._lock:
            self._client_triggers.clear()
            self._server_triggers.clear()

    def _match(self, triggers: list[_Trigger], buf: bytearray, start: int, n: int):
        """Called with self._lock held; returns (trigger, match offset) or None."""
        for t in triggers:
            if isinstance(t.trigger, (bytes, bytearray)):
                pos = buf.find(t.trigger, max(0, start - len(t.trigger) + 1))
                if pos < 0:
                    continue
            else:
                if not t.trigger(bytes(buf)):
                    continue
                pos = start
            t.fired += 1
            if t.once:
                triggers.remove(t)
            return t, pos
        return None

    def _rewrite(self, data: bytes) -> bytes:
        f = self.rewrite_server
        return f(data) if f is not None else data

    # --------------------------------------------------------------- records
    def client_bytes(self) -> bytes:
        """Everything clients sent, all connections in accept order."""
        with self._lock:
            return b"".join(bytes(c.client_data) for c in self.connections)

    def server_bytes(self) -> bytes:
        """Everything the server sent (before ``rewrite_server``), all connections."""
        with self._lock:
            return b"".join(bytes(c.server_data) for c in self.connections)

    def clear(self) -> None:
        """Forget recorded bytes and counters (connections stay up)."""
        with self._lock:
            for c in self.connections:
                c.client_data.clear()
                c.server_data.clear()
            self.bytes_client_to_server = 0
            self.bytes_server_to_client = 0

    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for c in self.connections if not c.closed.is_set())

    def wait_for_client(self, pattern: bytes | str, timeout: float = 10.0) -> bool:
        """Wait until some client sent ``pattern`` (bytes, or a regex str on bytes)."""
        rx = re.compile(pattern.encode() if isinstance(pattern, str) else re.escape(pattern))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if rx.search(self.client_bytes()):
                return True
            time.sleep(0.01)
        return False
