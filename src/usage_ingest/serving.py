"""Serving an ASGI app with uvicorn inside the running event loop: the HTTP API
(`usage-ingest api`) and the worker's operations server share this."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import uvicorn


class QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signals to its command: the command's own handlers
    stop it (`should_exit`), so uvicorn installs none."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address of `host`, bound as `asyncio.start_server`
    binds them, before the server starts: a taken port is an OSError here, not a
    server that exits."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, protocol, _, address in dict.fromkeys(infos):  # each address once
            sock = socket.socket(family, kind, protocol)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # IPv4 has a socket of its own
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            # Connections made before the server task first runs wait in the backlog.
            sock.listen()
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
