"""A TCP relay to a real server that a test can cut, to lose connections at the network
boundary (the server itself stays up and untouched)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit


class CuttableProxy:
    """Relays every connection to `target`. `cut(refuse=n)` closes every open connection at
    once and refuses the next `n` new ones (accepted, then closed before a byte is relayed),
    after which it relays again: an outage that ends after the client's n-th try."""

    def __init__(self, host: str, port: int, *, unix_path: str | None = None) -> None:
        self.target = (host, port)
        self.unix_path = unix_path  # relay to this Unix socket instead of host:port
        self.port = 0
        self.refused = 0
        self._refuse = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def cut(self, *, refuse: int) -> None:
        self._refuse = refuse
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        """Relay again now, refusing nothing more."""
        self._refuse = 0

    async def close(self) -> None:
        self.cut(refuse=0)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refuse > 0:
            self._refuse -= 1
            self.refused += 1
            writer.transport.abort()
            return
        try:
            if self.unix_path is not None:
                up_reader, up_writer = await asyncio.open_unix_connection(self.unix_path)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()  # one side ended: so does the other


def postgres_proxy(url: str) -> tuple[CuttableProxy, Callable[[int], str]]:
    """A proxy to the PostgreSQL server of `url` (TCP or a Unix socket directory in `?host=`),
    and how to make `url` point at the proxy once started (its port)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    port = parts.port or 5432
    socket_dir = next(iter(query.pop("host", [])), None)
    proxy = CuttableProxy(
        parts.hostname or "127.0.0.1",
        port,
        unix_path=f"{socket_dir}/.s.PGSQL.{port}" if socket_dir else None,
    )

    def via(proxy_port: int) -> str:
        user = f"{parts.username}@" if parts.username else ""
        return urlunsplit(
            parts._replace(
                netloc=f"{user}127.0.0.1:{proxy_port}", query=urlencode(query, doseq=True)
            )
        )

    return proxy, via
