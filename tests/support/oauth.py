"""A tiny OAuth2 authorization server for tests: token introspection and a token endpoint.

Dovecot's ``oauth2`` passdb with ``introspection_mode = post`` asks
``POST /introspect`` (form field ``token=``) whether an access token is
valid, and expects an RFC 7662 answer: ``{"active": true, "username":
"alice"}`` or ``{"active": false}``.  ``POST /token`` mints a new token, the
way a real token endpoint answers a refresh (``{"access_token": ...,
"token_type": "Bearer", "expires_in": N}``).  A token is valid for its
``ttl`` seconds from when it was issued.

    with OAuthServer(ttl=5) as auth:
        d = Dovecot(**auth.dovecot_options(tmp_path))    # XOAUTH2 and OAUTHBEARER, beside PLAIN/LOGIN
        tok = auth.issue()                               # valid for 5 s
        cmd = auth.token_command(tmp_path / "tok")       # prints a fresh token each run

The server runs ``http.server`` in a daemon thread on a free loopback port.
Everything it saw is kept (``minted``, ``introspected``) so tests can tell
how often imapfs asked for a token and which tokens Dovecot checked.
"""
from __future__ import annotations

import json
import os
import secrets
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HOST = "127.0.0.1"


class OAuthServer:
    """Issues tokens and answers introspection for them (see module docstring)."""

    def __init__(self, user: str = "alice", ttl: float = 3600.0) -> None:
        self.user = user
        self.ttl = ttl
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (user, expiry on time.time())
        self._lock = threading.Lock()
        self.minted: list[str] = []  # tokens handed out by POST /token, in order
        self.minted_by: dict[str, list[str]] = {}  # the same, per ?tag= (one token_command each)
        self.introspected: list[tuple[str, bool]] = []  # (token, active) for every introspection
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------- tokens
    def issue(self, ttl: float | None = None, user: str | None = None) -> str:
        """A new token for *user*, valid for *ttl* seconds (default: the server's)."""
        tok = "tok-" + secrets.token_urlsafe(18)
        with self._lock:
            self._tokens[tok] = (user or self.user, time.time() + (self.ttl if ttl is None else ttl))
        return tok

    def revoke(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def tokens_of(self, script: Path | str) -> list[str]:
        """The tokens one token_command script got so far, in order."""
        with self._lock:
            return list(self.minted_by.get(str(script), []))

    def active(self, token: str) -> str | None:
        """The user a token belongs to while it is valid, else None."""
        with self._lock:
            user, expiry = self._tokens.get(token, (None, 0.0))
        return user if user is not None and time.time() < expiry else None

    # ----------------------------------------------------------- lifecycle
    def start(self) -> OAuthServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _reply(self, obj: dict) -> None:
                body = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                n = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(n).decode("utf-8", "replace"))
                path = self.path.split("?", 1)[0]
                if path == "/introspect":
                    tok = (form.get("token") or [""])[0]
                    user = server.active(tok)
                    server.introspected.append((tok, user is not None))
                    self._reply({"active": True, "username": user} if user else {"active": False})
                elif path == "/token":
                    query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                    ttl = float(query["ttl"][0]) if "ttl" in query else server.ttl
                    tok = server.issue(ttl)
                    with server._lock:
                        server.minted.append(tok)
                        server.minted_by.setdefault(query.get("tag", [""])[0], []).append(tok)
                    self._reply({"access_token": tok, "token_type": "Bearer", "expires_in": int(ttl)})
                else:
                    self.send_error(404)

        self._httpd = ThreadingHTTPServer((HOST, 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="oauth-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> OAuthServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    # ------------------------------------------------------------ helpers
    def dovecot_options(self, directory: Path | str) -> dict:
        """``Dovecot(**options)`` for a server that also takes XOAUTH2 and OAUTHBEARER.

        Writes the oauth2 passdb's settings file into *directory* (readable by
        Dovecot's auth process). The passwd-file passdb stays, for PLAIN and LOGIN.
        """
        path = Path(directory) / "dovecot-oauth2.conf.ext"
        path.write_text(
            "introspection_mode = post\n"
            f"introspection_url = {self.url}/introspect\n"
            "force_introspection = yes\n"
            "username_attribute = username\n"
            "active_attribute = active\n"
            "active_value = true\n")
        path.chmod(0o644)
        passdb = ("passdb {\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
                  f"  args = {path}\n}}\n")
        return {"auth_mechanisms": "plain login xoauth2 oauthbearer", "extra_config": passdb}

    def token_command(self, path: Path | str, json_output: bool = False, ttl: float | None = None) -> str:
        """Write an executable script that asks POST /token for a new token and prints it.

        *json_output*: print the token endpoint's JSON answer (with ``expires_in``)
        instead of the bare access token. *ttl*: the tokens' lifetime (default:
        the server's). The tokens it gets are listed in ``minted_by[str(path)]``,
        apart from other scripts' (a daemon that is going away may still run one).
        Returns the script's path (a ``password_command=`` value without commas).
        """
        script = Path(path)
        query = urllib.parse.urlencode({"tag": str(script), **({"ttl": ttl} if ttl is not None else {})})
        pick = "print(json.dumps(r))" if json_output else "print(r['access_token'])"
        script.write_text(
            f"#!{sys.executable}\n"
            "import json, urllib.request\n"
            f"r = json.load(urllib.request.urlopen({self.url + '/token?' + query!r}, b''))\n"
            f"{pick}\n")
        os.chmod(script, 0o755)
        return str(script)
