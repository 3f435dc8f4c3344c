"""Test harness: a throwaway Dovecot (dovecot), TLS material (tlsca), a
fault-injecting TCP proxy (proxy), real imapfs mounts (mount) and the shared
mail corpus (corpus).  Import as ``tests.support.<module>``."""
from __future__ import annotations

import shutil

_SETPRIV = shutil.which("setpriv")  # util-linux, essential on Debian


def die_with_parent(argv: list[str], signal_name: str) -> list[str]:
    """``argv`` wrapped so the process gets ``signal_name`` (e.g. ``"KILL"``)
    when the test process dies, even by SIGKILL: no orphaned server or
    daemon survives a killed pytest.  (PR_SET_PDEATHSIG via ``setpriv``,
    which then execs ``argv`` under the same pid; it fires when the thread
    that started the process exits, so start servers from the main thread.)
    """
    if _SETPRIV is None:
        return list(argv)
    return [_SETPRIV, f"--pdeathsig={signal_name}", "--", *argv]
