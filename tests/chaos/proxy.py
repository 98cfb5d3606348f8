"""A TCP proxy the test controls: it forwards to a broker or a database and breaks the
connections on command (reset, black hole, heal), optionally terminating TLS.
"""

from __future__ import annotations

import asyncio
import ssl


class TcpProxy:
    """Forwards 127.0.0.1:`port` to a target; the test breaks it on command.

    `cut()` aborts every connection and refuses new ones (accepts and resets) until
    `heal()`; `stall()` keeps connections open but forwards nothing (a black hole)
    until `heal()`, then delivers what it held, as TCP does after a partition heals.
    `stall(new_too=False)` stalls only the connections open now: whoever was
    connected is cut off, newcomers get through. With `server_ssl` the proxy
    terminates TLS: clients speak TLS to it, and it speaks plaintext to the target.
    """

    def __init__(
        self,
        target_port: int,
        *,
        target_host: str = "127.0.0.1",
        port: int = 0,
        server_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self._server_ssl = server_ssl
        self._server: asyncio.Server | None = None
        self._stalled = False
        self._cut = False
        # Each connection (client side, upstream side) with the event its pumps wait on.
        self._links: dict[tuple[asyncio.StreamWriter, asyncio.StreamWriter], asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, ssl=self._server_ssl
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._abort_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def cut(self) -> None:
        self._cut = True
        self._abort_all()

    def stall(self, *, new_too: bool = True) -> None:
        self._stalled = new_too
        for flowing in self._links.values():
            flowing.clear()

    def heal(self) -> None:
        self._cut = False
        self._stalled = False
        for flowing in self._links.values():
            flowing.set()

    def _abort_all(self) -> None:
        for client, upstream in list(self._links):
            client.transport.abort()
            upstream.transport.abort()
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        if self._cut:
            writer.transport.abort()
            up_writer.transport.abort()
            return
        link = (writer, up_writer)
        flowing = asyncio.Event()
        if not self._stalled:
            flowing.set()
        self._links[link] = flowing
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, link)),
            asyncio.create_task(self._pump(up_reader, writer, link)),
        ]
        self._tasks.update(pumps)
        for pump in pumps:
            pump.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while True:
                data = await source.read(65536)
                if not data:
                    break
                flowing = self._links.get(link)
                if flowing is None:
                    break
                await flowing.wait()
                if link not in self._links:
                    break
                sink.write(data)
                await sink.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            self._links.pop(link, None)
            for side in link:
                side.transport.abort()
