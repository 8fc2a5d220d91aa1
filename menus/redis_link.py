"""One pipelined Redis connection for the session store's two commands (GET and the CAS script).

Every USSD step is one Redis round trip, so the client's own cost per command is a large share
of a step. redis-py's asyncio connection reads each reply through a StreamReader and a chain of
coroutines, one command at a time per connection; measured under 64 concurrent steps it cost
~110-130 us of client CPU per command against ~40-50 us for this link (bench/ussd.py's machine,
`RedisSessionStore.save` in a loop). Here commands from every concurrent step share one
connection in order (Redis answers in order on a connection), the commands written in one
event-loop turn leave in one `send()`, and replies are parsed in `data_received` by hiredis's
C reader (the parser redis-py itself uses when hiredis is installed) and handed to the waiting
futures first-in first-out.

Each command has a deadline (`timeout_s`): rather than a timer per command, one sweep a quarter
of a second apart, while commands are in flight, fails those past it with TimeoutError (so a
command gives up between `timeout_s` and `timeout_s` + 0.25 s). A caller that gives up (its
deadline, a cancelled step) leaves its future in the queue: the late reply is read and dropped
there, so the next command never gets another's answer. A lost connection fails every command
in flight with redis-py's ConnectionError; the next command connects again. A connection on
which the oldest command has waited two timeouts (a hung server, a half-open connection) is
dropped the same way. Connection settings (host and port or unix socket, TLS, username,
password, database) are the ones of the redis-py client the store is given.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

MAX_IN_FLIGHT = 10_000  # commands waiting on one connection; more means Redis is stuck
SWEEP_S = 0.25  # how often commands in flight are checked against their deadline


def pack(args: tuple[str | int, ...]) -> bytes:
    """One command in RESP, as redis-py's `pack_command` writes it for str and int arguments
    (at half its cost: it also handles memoryviews, floats and large-value chunking)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _ReplyError(Exception):
    """What hiredis builds for an error reply; turned into redis-py's exceptions."""


def _raise_for(error: _ReplyError) -> None:
    message = str(error)
    if message.startswith("NOSCRIPT"):
        raise NoScriptError(message)
    if message.startswith(("NOAUTH", "WRONGPASS")):
        raise AuthenticationError(message)
    raise ResponseError(message)


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(replyError=_ReplyError)
        # (future, deadline) in the order the commands were written
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.out: list[bytes] = []
        self.lost: Exception | None = None
        self._sweeping: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader, waiting = self.reader, self.waiting
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(RedisConnectionError(f"Redis protocol error: {exc}"))
                if self.transport is not None:
                    self.transport.abort()
                return
            if reply is False:
                return
            if not waiting:  # an answer nobody asked for: the connection cannot be trusted
                self._fail(RedisConnectionError("Redis sent an unexpected reply"))
                if self.transport is not None:
                    self.transport.abort()
                return
            future, _ = waiting.popleft()
            if not future.done():  # a caller that gave up: its late answer is dropped here
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"Connection to Redis lost: {exc or 'closed'}"))

    def _fail(self, error: Exception) -> None:
        self.lost = error
        waiting, self.waiting = self.waiting, collections.deque()
        for future, _ in waiting:
            if not future.done():
                future.set_exception(error)
        if self._sweeping is not None:
            self._sweeping.cancel()
            self._sweeping = None

    def _sweep(self) -> None:
        self._sweeping = None
        if not self.waiting:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now > self.waiting[0][1] + self.timeout_s and self.transport is not None:
            # Nothing answered for two timeouts: a hung server or a half-open connection
            # (no RST ever comes). Drop it; the next command connects again.
            self._fail(RedisConnectionError("Redis stopped answering; connection dropped"))
            self.transport.abort()
            return
        for future, deadline in self.waiting:  # deadlines grow along the queue
            if deadline > now:
                break
            if not future.done():
                future.set_exception(TimeoutError("Redis did not answer in time"))
        self._sweeping = loop.call_later(SWEEP_S, self._sweep)

    def flush(self) -> None:
        out, self.out = self.out, []
        if out and self.transport is not None and self.lost is None:
            self.transport.write(b"".join(out))

    def send(self, data: bytes) -> asyncio.Future[Any]:
        if self.lost is not None:  # a fresh error each time: re-raising one grows its traceback
            raise RedisConnectionError(str(self.lost))
        if len(self.waiting) >= MAX_IN_FLIGHT:
            raise RedisConnectionError("Too many Redis commands in flight on one connection")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting.append((future, loop.time() + self.timeout_s))
        if self._sweeping is None:
            self._sweeping = loop.call_later(SWEEP_S, self._sweep)
        if not self.out:  # the first command of this loop turn: flush at the turn's end
            loop.call_soon(self.flush)
        self.out.append(data)
        return future


def _ssl_context(kwargs: dict[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=kwargs.get("ssl_ca_certs"))
    reqs = kwargs.get("ssl_cert_reqs", "required")
    if reqs in ("none", ssl.CERT_NONE, None):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if kwargs.get("ssl_certfile"):
        context.load_cert_chain(kwargs["ssl_certfile"], kwargs.get("ssl_keyfile"))
    return context


class RedisLink:
    """A lazily (re)connected, pipelined connection made from a redis-py client's settings."""

    def __init__(self, redis: Redis, timeout_s: float = 2.0) -> None:
        pool = redis.connection_pool
        self._class = pool.connection_class
        self._kwargs = dict(pool.connection_kwargs)
        self._timeout_s = timeout_s  # per command, and for connecting
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self.connects = 0  # how many connections were opened (tests, diagnostics)

    async def command(self, *args: str | int) -> Any:
        """Send one command and return its reply; an error reply raises redis-py's exception,
        no reply within the timeout raises TimeoutError.
        A command sent on a connection made before this call that finds it closed (Redis
        restarted) is sent once more on a new connection."""
        protocol = self._protocol
        reused = protocol is not None and protocol.lost is None
        data = pack(args)
        try:
            reply = await self._send(protocol, data)
        except RedisConnectionError:
            if not reused:
                raise
            reply = await self._send(None, data)
        if isinstance(reply, _ReplyError):
            _raise_for(reply)
        return reply

    async def _send(self, protocol: _Protocol | None, data: bytes) -> Any:
        if protocol is None or protocol.lost is not None:
            protocol = await self._connect()
        return await protocol.send(data)

    async def _connect(self) -> _Protocol:
        if self._protocol is not None and self._protocol.lost is None:
            return self._protocol
        if self._connecting is None:  # one connection attempt for every concurrent caller
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        kwargs = self._kwargs

        def make() -> _Protocol:
            return _Protocol(self._timeout_s)

        protocol: _Protocol | None = None
        try:
            async with asyncio.timeout(self._timeout_s):
                if issubclass(self._class, UnixDomainSocketConnection):
                    _, protocol = await loop.create_unix_connection(make, kwargs["path"])
                else:
                    context = (
                        _ssl_context(kwargs) if issubclass(self._class, SSLConnection) else None
                    )
                    _, protocol = await loop.create_connection(
                        make,
                        kwargs.get("host", "localhost"),
                        kwargs.get("port", 6379),
                        ssl=context,
                    )
                await self._handshake(protocol)
        except BaseException as exc:
            if protocol is not None and protocol.transport is not None:
                protocol.transport.close()  # a refused AUTH, a handshake cut off by the timeout
            if isinstance(exc, OSError | TimeoutError):
                raise RedisConnectionError(f"Cannot connect to Redis: {exc}") from exc
            raise
        self._protocol = protocol
        self.connects += 1
        return protocol

    async def _handshake(self, protocol: _Protocol) -> None:
        kwargs = self._kwargs
        commands: list[tuple[str | int, ...]] = []
        if kwargs.get("password"):
            user = kwargs.get("username")
            commands.append(
                ("AUTH", user, kwargs["password"]) if user else ("AUTH", kwargs["password"])
            )
        if kwargs.get("db"):
            commands.append(("SELECT", int(kwargs["db"])))
        for command in commands:
            reply = await protocol.send(pack(command))
            if isinstance(reply, _ReplyError):
                _raise_for(reply)

    async def aclose(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
