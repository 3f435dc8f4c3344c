"""Throwaway X.509 material for TLS tests, made with the ``openssl`` CLI.

Nothing here is secret or long-lived: keys are unencrypted EC P-256 (fast to
generate: the whole session set takes well under a second), certificates are
valid for a few days.  Certificates carry SubjectKeyIdentifier /
AuthorityKeyIdentifier and keyUsage so that they also pass OpenSSL's strict
X.509 checks (``ssl.VERIFY_X509_STRICT``, the default from Python 3.13 on).

    ca = make_ca(d)                                  # CA(ca_cert, ca_key)
    cert, key = make_server_cert(ca, d)              # SAN IP:127.0.0.1, DNS:localhost
    cert, key = make_server_cert(ca, d, names=["wrong.example"])
    tls = session_tls()                              # cached set for the whole session
"""
from __future__ import annotations

import atexit
import ipaddress
import secrets
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

DEFAULT_NAMES = ("127.0.0.1", "localhost")
_DAYS = "30"


@dataclass(frozen=True)
class CA:
    ca_cert: Path
    ca_key: Path


@dataclass(frozen=True)
class TLSMaterial:
    """Everything a TLS test needs, generated once per session.

    ``ca``: the CA every test server trusts by default; ``cert``/``key``: a
    server certificate for 127.0.0.1 and localhost signed by ``ca``;
    ``wrong_name_cert``/``wrong_name_key``: signed by ``ca`` but only for
    ``wrong.example`` (name mismatch); ``other_ca``: an unrelated CA;
    ``other_cert``/``other_key``: correct names but signed by ``other_ca``
    (unknown issuer for a client that trusts ``ca``).
    """

    dir: Path
    ca: CA
    cert: Path
    key: Path
    wrong_name_cert: Path
    wrong_name_key: Path
    other_ca: CA
    other_cert: Path
    other_key: Path

    @property
    def ca_file(self) -> Path:
        return self.ca.ca_cert


def _openssl(*args: str, cwd: Path | None = None) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


def _newkey(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(path))
    path.chmod(0o600)


def make_ca(dir: Path | str, name: str = "imapfs test CA") -> CA:
    """Create a self-signed CA in ``dir`` (files ``<slug>.crt`` / ``<slug>.key``)."""
    d = Path(dir)
    d.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "_" for c in name)
    key, cert = d / f"{slug}.key", d / f"{slug}.crt"
    _newkey(key)
    _openssl("req", "-x509", "-new", "-key", str(key), "-out", str(cert), "-days", _DAYS,
             "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash")
    return CA(cert, key)


def _san(names) -> str:
    parts = []
    for n in names:
        try:
            ipaddress.ip_address(n)
            parts.append(f"IP:{n}")
        except ValueError:
            parts.append(f"DNS:{n}")
    return ",".join(parts)


def make_server_cert(ca: CA, dir: Path | str, names=DEFAULT_NAMES,
                     stem: str | None = None) -> tuple[Path, Path]:
    """Create a server key and a certificate for ``names`` signed by ``ca``.

    ``names`` are IP addresses or DNS names; they all go into subjectAltName
    and the first one is also the CN.  Returns ``(cert, key)``.
    """
    names = list(names)
    d = Path(dir)
    d.mkdir(parents=True, exist_ok=True)
    stem = stem or "server_" + "_".join(n.replace(".", "-").replace(":", "-") for n in names)
    key, csr, cert, ext = (d / f"{stem}.key", d / f"{stem}.csr", d / f"{stem}.crt",
                           d / f"{stem}.ext")
    _newkey(key)
    _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={names[0]}")
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        f"subjectAltName={_san(names)}\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.ca_cert), "-CAkey", str(ca.ca_key),
             "-set_serial", "0x" + secrets.token_hex(8), "-days", _DAYS,
             "-extfile", str(ext), "-out", str(cert))
    csr.unlink()
    ext.unlink()
    return cert, key


def make_tls_material(dir: Path | str) -> TLSMaterial:
    d = Path(dir)
    ca = make_ca(d, "imapfs test CA")
    cert, key = make_server_cert(ca, d, DEFAULT_NAMES, stem="server")
    wcert, wkey = make_server_cert(ca, d, ["wrong.example"], stem="wrong_name")
    other = make_ca(d, "unrelated test CA")
    ocert, okey = make_server_cert(other, d, DEFAULT_NAMES, stem="other_server")
    # Dovecot's unprivileged processes need not read them (the master loads
    # them), but keep the directory traversable in case a test copies paths.
    d.chmod(0o755)
    return TLSMaterial(d, ca, cert, key, wcert, wkey, other, ocert, okey)


_lock = threading.Lock()
_session: TLSMaterial | None = None


def session_tls() -> TLSMaterial:
    """The TLS material of this process, generated on first use and removed at exit."""
    global _session
    with _lock:
        if _session is None:
            d = Path(tempfile.mkdtemp(prefix="imapfs-tls-"))
            atexit.register(shutil.rmtree, d, True)
            _session = make_tls_material(d)
        return _session
