"""A TCP relay to a real server that a test can cut, to lose connections at the network
boundary (the server itself stays up and untouched)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import asyncpg

from gateway import db as dbmod


class CuttableProxy:
    """Relays every connection to `target`. `cut(refuse=n)` closes every open connection at
    once and refuses the next `n` new ones (accepted, then closed before a byte is relayed),
    after which it relays again: an outage that ends after the client's n-th try. `restore()`
    ends an outage at once (however many refusals were left): for clients whose reconnects a
    test cannot count. `cut_at_reply(marker)` cuts at the moment the server answers the
    client's next request containing `marker`: the server ran it, the client never hears so.
    `cut_on(marker)` cuts as bytes containing `marker` pass, before they are relayed: from the
    client (the server never gets the step) or from the server (a precise answer lost, such as
    a COPY's command tag, where the server's next bytes would be an earlier message)."""

    def __init__(self, host: str, port: int, *, unix_path: str | None = None) -> None:
        self.target = (host, port)
        self.unix_path = unix_path  # relay to this Unix socket instead of host:port
        self.port = 0
        self.refused = 0
        self._refuse = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._marker: bytes | None = None
        self._marker_refuse = 0
        self.replies_dropped = 0
        self._trip: tuple[bytes, bool, int] | None = None
        self.tripped = 0

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

    def cut_at_reply(self, marker: bytes, *, refuse: int = 0) -> None:
        """Once: relay the client's next chunk containing `marker`, then, instead of relaying
        the server's next bytes on that connection, `cut(refuse=refuse)`."""
        self._marker, self._marker_refuse = marker, refuse

    def cut_on(self, marker: bytes, *, from_server: bool = False, refuse: int = 0) -> None:
        """Once: `cut(refuse=refuse)` in place of relaying the first chunk holding `marker`
        that comes from the client (the server never gets it) or, with `from_server`, from
        the server (the server did it, the client never hears so)."""
        self._trip = (marker, from_server, refuse)

    def _trips(self, data: bytes, from_server: bool) -> bool:
        trip = self._trip
        if trip is None or trip[1] != from_server or trip[0] not in data:
            return False
        self._trip = None
        self.tripped += 1
        self.cut(refuse=trip[2])
        return True

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
        asked: list[bool] = []  # the marked request went up this connection
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, asked=asked),
                self._pump(up_reader, writer, answer_of=asked),
            )
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        asked: list[bool] | None = None,
        answer_of: list[bool] | None = None,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if self._trips(data, from_server=asked is None):
                    return
                if answer_of:  # the server answers the marked request: lose the answer
                    answer_of.clear()
                    self.replies_dropped += 1
                    self.cut(refuse=self._marker_refuse)
                    return
                if asked is not None and self._marker is not None and self._marker in data:
                    self._marker = None
                    asked.append(True)
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


def redis_proxy(url: str) -> tuple[CuttableProxy, Callable[[int], str]]:
    """A proxy to the Redis of `url` (TCP, or the embedded engine's `unix://` socket), and how
    to make a `redis://` URL to the same database through the proxy once started (its port)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        proxy = CuttableProxy("127.0.0.1", 0, unix_path=parts.path)
    else:
        proxy = CuttableProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    return proxy, functools.partial(redis_url_via, url)


@contextlib.asynccontextmanager
async def running_redis_proxy(url: str) -> AsyncIterator[CuttableProxy]:
    """A started `redis_proxy` for the duration (a module's fixture, say); `redis_url_via`
    makes the URL through it."""
    relay, _ = redis_proxy(url)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()


def redis_url_via(url: str, proxy_port: int) -> str:
    """A `redis://` URL to the database of `url` (TCP or `unix://`) through a proxy on
    `proxy_port`, with the same credentials."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        database = next(iter(parse_qs(parts.query).get("db", [])), "0")
        auth = ""
    else:
        database = parts.path.lstrip("/") or "0"
        auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@127.0.0.1:{proxy_port}" if auth else f"127.0.0.1:{proxy_port}"
    return f"redis://{netloc}/{database}"


@dataclass
class Relay:
    proxy: CuttableProxy
    pool: asyncpg.Pool


@contextlib.asynccontextmanager
async def relayed_pool(database_url: str, *, max_size: int) -> AsyncIterator[Relay]:
    """A pool made as the app makes its own (`gateway.db.make_pool`, no connection floor),
    every connection of it through a proxy to the PostgreSQL of `database_url`."""
    proxy, via = postgres_proxy(database_url)
    pool = await dbmod.make_pool(via(await proxy.start()), min_size=0, max_size=max_size)
    try:
        yield Relay(proxy, pool)
    finally:
        await pool.close()
        await proxy.close()
