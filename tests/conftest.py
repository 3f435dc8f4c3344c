"""Shared fixtures: a real Dovecot, TLS material, proxies, mounts, the corpus.

Fixtures (details in tests/support/*.py):

* ``dovecot`` (session): one full-capability server for the whole run.
  Tests that need an empty mailbox take ``clean_dovecot`` instead (same
  server, reset first: about 30 ms); others should work in folders of their
  own.
* ``make_dovecot(**opts)``: a separate server per call (profiles, ``ssl=False``,
  ``separator="."``, several users …), stopped and removed after the test.
  ``make_dovecot_module`` does the same once per module.
* ``tls`` (session): CA, server certificate, wrong-name certificate, unrelated CA.
* ``make_proxy(host, port, **opts)``: a started :class:`Proxy`, stopped after the test.
* ``tmp_mountpoint``: an empty directory; the test errors if it is still mounted
  at teardown.
* ``make_mount(...)``: a started :class:`Mount`; unmounted after the test, and
  checked (exit 0, clean log) if the test itself passed.
* ``corpus`` (session): ``[(name, crlf_bytes)]`` of the shared mail corpus.

Marker ``slow``: deselect with ``-m "not slow"``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.corpus import corpus_messages  # noqa: E402
from tests.support.dovecot import Dovecot  # noqa: E402
from tests.support.mount import Mount, force_unmount, is_mounted  # noqa: E402
from tests.support.proxy import Proxy  # noqa: E402
from tests.support.tlsca import session_tls  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long test (deselect with -m 'not slow')")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # Remember each phase's outcome so fixtures can tell whether the test failed.
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _test_failed(request) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is None or rep.failed


@pytest.fixture(scope="session")
def tls():
    return session_tls()


@pytest.fixture(scope="session")
def dovecot():
    d = Dovecot()
    d.start()
    yield d
    d.cleanup()


@pytest.fixture
def clean_dovecot(dovecot):
    """The session server, emptied (every user back to an empty INBOX)."""
    dovecot.reset()
    return dovecot


class _DovecotFactory:
    def __init__(self):
        self.servers: list[Dovecot] = []

    def __call__(self, **opts) -> Dovecot:
        d = Dovecot(**opts)
        self.servers.append(d)
        d.start()
        return d

    def cleanup(self):
        for d in self.servers:
            d.cleanup()


@pytest.fixture
def make_dovecot():
    f = _DovecotFactory()
    yield f
    f.cleanup()


@pytest.fixture(scope="module")
def make_dovecot_module():
    f = _DovecotFactory()
    yield f
    f.cleanup()


@pytest.fixture
def make_proxy():
    proxies: list[Proxy] = []

    def make(upstream_host: str, upstream_port: int, **opts) -> Proxy:
        p = Proxy(upstream_host, upstream_port, **opts)
        proxies.append(p)
        return p.start()

    yield make
    for p in proxies:
        p.stop()


@pytest.fixture
def tmp_mountpoint(tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    yield mp
    if is_mounted(mp):
        force_unmount(mp)
        pytest.fail(f"{mp} was still mounted after the test (unmounted now)")


@pytest.fixture
def make_mount(request):
    mounts: list[Mount] = []

    def make(*args, **kw) -> Mount:
        m = Mount(*args, **kw)
        mounts.append(m)
        return m.start()

    yield make
    errors = []
    for m in reversed(mounts):
        try:
            m.unmount(check=not _test_failed(request))
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n\n".join(errors))


@pytest.fixture(scope="session")
def corpus():
    return corpus_messages()
