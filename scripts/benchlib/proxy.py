"""The latency proxy between every client and Dovecot (``--rtt MS``): the test
suite's proxy (tests/support/proxy.py), run in a child process so that it shares
no GIL with the measurements."""
from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from .common import MB, StepError

BENCH_PY = Path(__file__).resolve().parents[1] / "bench.py"
PROXY_MAX_QUEUE = 64 * MB


def proxy_main(up_host: str, up_port: int, delay_ms: float) -> None:
    """Serve one listener with tests/support/proxy.py: every chunk goes on ``delay_ms``
    after it arrived, in order.

    No copy of the traffic is kept, a direction holding more than 64 MB stops
    reading (a slow client back-pressures the server), and the proxy never
    stops itself; this process exits when its parent dies or on SIGTERM.
    """
    from tests.support.proxy import Proxy
    parent = os.getppid()
    proxy = Proxy(up_host, up_port, delay_ms=delay_ms, record=False, max_queued=PROXY_MAX_QUEUE,
                  lifetime=math.inf, max_connections=1_000_000, connect_timeout=10.0).start()
    sys.stdout.write(f"PORT {proxy.port}\n")
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    while os.getppid() == parent:
        time.sleep(0.5)


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
