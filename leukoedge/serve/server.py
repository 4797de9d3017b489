"""Running the app under uvicorn: binding, signals, draining.

The socket is bound here, before uvicorn starts, so that a port in use is one clear error
(and port 0 gives a free port, which tests use). SIGTERM and SIGINT stop the server
gracefully: no new connections are accepted, requests in flight are answered (for at most
``drain_seconds``), then the batcher runs what is queued and stops. uvicorn re-raises the
signal after its shutdown to the handler that was in place before; the handler installed
here only records it, so a stop on request ends normally.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

from ..errors import UsageError


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: cannot resolve this address ({exc.strerror})",
                         "give an IP address such as 127.0.0.1") from exc
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                         "choose another --port, or stop what is using it") from exc
    sock.set_inheritable(True)
    return sock


def run(app: Any, sock: socket.socket, drain_seconds: float = 30.0,
        on_ready: Callable[[], None] | None = None) -> int | None:
    """Serve ``app`` on ``sock`` until SIGTERM/SIGINT; returns the signal that stopped it."""
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=int(drain_seconds),
                            server_header=False, timeout_keep_alive=5)
    server = _Server(config, on_ready)
    received: list[int] = []

    def record(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, record) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sock.close()
    return received[0] if received else None


class _Server(uvicorn.Server):
    """uvicorn's server, calling ``on_ready`` once it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self._on_ready is not None and not self.should_exit:
            self._on_ready()
