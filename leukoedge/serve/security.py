"""Host header check and bearer token, as one ASGI middleware in front of the app.

- **Host check** (no DNS rebinding): a page in a browser can make a name it controls
  resolve to 127.0.0.1 and then talk to a local service; its requests still carry that name
  in ``Host``. On a loopback bind only the loopback names are accepted (``localhost``,
  ``127.0.0.1``, ``[::1]``, with or without the port); on another specific address only
  that address; on a wildcard bind (``0.0.0.0``, ``::``) there is no name to check, and the
  token (required there) is the guard.
- **Token**: ``Authorization: Bearer <token>``, compared with :func:`hmac.compare_digest`
  (constant time). Required on every path but ``/healthz`` (and the paths the app names
  in ``open_paths``: the page's static files, which hold no data) when a token is set.
- **The rule**: a bind that is not loopback needs a token (:func:`require_token`);
  ``create_app`` applies it itself, so no caller can skip it. :func:`read_token` reads the
  ``--token-file``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..console import escape
from ..errors import UsageError, first_line

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
#: shortest bearer token accepted (characters)
MIN_TOKEN = 16
_TOKEN_HINT = "e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > token.txt"
#: paths answered without a token (a load balancer's liveness probe)
OPEN_PATHS = frozenset({"/healthz"})


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_token(host: str, token: str | None) -> None:
    """UsageError when ``host`` is reachable from other machines and no token is set."""
    if token is None and not is_loopback(host):
        raise UsageError(f"--host {host} is reachable from other machines and needs a "
                         "bearer token", "pass --token-file FILE (and put a TLS reverse "
                         "proxy in front), or serve on 127.0.0.1")


@dataclass(frozen=True)
class TokenFile:
    """A bearer token read from a file, and what to tell the person about the file."""

    token: str
    notes: tuple[str, ...] = ()


def read_token(path: Path) -> TokenFile:
    """The bearer token in ``path`` (surrounding whitespace dropped); UsageError if the file
    cannot be read or the token is too short; a note when others can read the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"--token-file {escape(str(path))}: cannot read it "
                         f"({exc.strerror or first_line(exc)})", "name a readable file") from exc
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError as exc:
        raise UsageError(f"--token-file {path}: the token must be ASCII text",
                         _TOKEN_HINT) from exc
    if len(token) < MIN_TOKEN or any(c.isspace() for c in token):
        raise UsageError(f"--token-file {path}: the token must be one word of at least "
                         f"{MIN_TOKEN} characters", _TOKEN_HINT)
    notes: tuple[str, ...] = ()
    try:
        if os.stat(path).st_mode & 0o077:
            notes = (f"{path} can be read by other users; chmod 600 it",)
    except OSError:
        pass
    return TokenFile(token, notes)


def is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return host == ""


def allowed_hosts(bind: str, port: int) -> frozenset[str] | None:
    """The ``Host`` header values accepted for a server bound to ``bind:port``; None: any."""
    if is_wildcard(bind):
        return None
    name = bind.lower()
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"  # an IPv6 address in a Host header is bracketed
    names = {name}
    if is_loopback(bind):
        names.update(LOOPBACK_NAMES)
    return frozenset(names | {f"{n}:{port}" for n in names})


async def _answer(send: Send, status: int, message: str,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Refuses requests with a wrong ``Host`` (400) or a missing/wrong token (401)."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None,
                 token: str | None, open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.app = app
        self.hosts = hosts
        self.token = token.encode() if token else None
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = b""
        auth = b""
        for k, v in scope["headers"]:
            if k == b"host":
                host = v
            elif k == b"authorization":
                auth = v
        if self.hosts is not None and host.decode("latin-1").lower() not in self.hosts:
            await _answer(send, 400, "Host header not accepted (this server answers only to "
                                     "the name it is bound to)")
            return
        if self.token is not None and scope["path"] not in self.open_paths:
            scheme, _, given = auth.partition(b" ")
            ok = scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)
            if not ok:
                await _answer(send, 401, "a valid bearer token is required "
                                         "(Authorization: Bearer <token>)",
                              [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)
