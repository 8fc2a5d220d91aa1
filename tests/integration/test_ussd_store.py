"""Session records in real Redis: the compare-and-set contract, TTLs, and the number of Redis
round trips a step costs (one for navigation when this instance wrote the session last)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.app import make_redis
from gateway.keys import USSD_SERVICE
from menus.session import RedisSessionStore, Versioned
from tests.helpers import eventually
from tests.ussd_support import PIN, RedisProcess, UssdEnv, own_redis, ussd

__all__ = ["own_redis", "ussd"]


async def test_compare_and_set(redis: Redis, redis_prefix: str) -> None:
    store = RedisSessionStore(redis, redis_prefix)
    key = store.key("unit", secrets.token_hex(4))
    try:
        await _compare_and_set(store, key, redis)
    finally:
        await store.aclose()


async def _compare_and_set(store: RedisSessionStore, key: str, redis: Redis) -> None:
    assert key.endswith("}") and "{unit:" in key  # one hash slot on Redis Cluster
    assert await store.save(key, None, '{"a":1}', 60) == (True, None)
    ok, current = await store.save(key, None, '{"a":2}', 60)
    assert not ok and current is not None and (current.version, current.raw) == (1, '{"a":1}')
    assert await store.save(key, 1, '{"a":3}', 60) == (True, None)
    ok, current = await store.save(key, 1, '{"a":4}', 60)  # a stale writer loses
    assert not ok and current is not None and current.version == 2
    assert 0 < await redis.pttl(key) <= 60_000
    loaded = await store.load(key)
    assert loaded is not None and loaded.raw == '{"a":3}'
    await redis.delete(key)
    ok, current = await store.save(key, 2, '{"a":5}', 60)  # expired meanwhile
    assert not ok and current is None


async def test_the_script_loads_itself_on_a_fresh_server(own_redis: RedisProcess) -> None:
    """A new (or restarted) Redis has no scripts: the first write falls back to EVAL."""
    client = make_redis(own_redis.url)
    try:
        store = RedisSessionStore(client, "fresh:")
        key = store.key("unit", "s1")
        assert await client.script_exists(store._sha) == [False]
        assert await store.save(key, None, "{}", 60) == (True, None)
        assert await client.script_exists(store._sha) == [True]
        assert await store.save(key, 1, "{}", 60) == (True, None)
        await store.aclose()
    finally:
        await client.aclose()


class Counter:
    """Every command the store sends (each is one round trip on its connection)."""

    def __init__(self, store: RedisSessionStore) -> None:
        self.commands: list[str] = []
        self.original = store._command

    async def __call__(self, *args: Any) -> Any:
        self.commands.append(str(args[0]))
        return await self.original(*args)


@pytest.fixture
def counted(ussd: UssdEnv) -> Iterator[Counter]:
    store = ussd.app[USSD_SERVICE].store
    assert isinstance(store, RedisSessionStore)
    counter = Counter(store)
    store._command = counter  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        del store._command


async def test_a_navigation_step_is_one_redis_round_trip(ussd: UssdEnv, counted: Counter) -> None:
    msisdn = await ussd.bank.open(balance_minor=100)
    s = ussd.session(msisdn)
    await s.dial()
    counted.commands.clear()
    await s.send("6")
    await s.send("2")
    assert counted.commands == ["EVALSHA", "EVALSHA"]  # one CAS each
    # Another instance wrote last (our cache forgot): one read, then the CAS.
    store = ussd.app[USSD_SERVICE].store
    assert isinstance(store, RedisSessionStore)
    store.forget(store.key("africastalking", s.session_id))
    counted.commands.clear()
    await s.send("0")
    assert counted.commands == ["GET", "EVALSHA"]


async def test_a_step_with_a_side_effect_claims_first(ussd: UssdEnv, counted: Counter) -> None:
    msisdn = await ussd.bank.open(balance_minor=100)
    s = ussd.session(msisdn)
    await s.walk("2")
    counted.commands.clear()
    assert (await s.send(PIN)).startswith("END Your balance")
    assert counted.commands == ["EVALSHA", "EVALSHA"]  # the claim, then the result


async def test_a_command_cut_off_by_its_timeout_leaves_no_answer_behind(
    own_redis: RedisProcess,
) -> None:
    """A command cancelled while Redis has not answered must not leave its late answer on a
    connection that the next command reads (it would get the wrong record)."""
    client = make_redis(own_redis.url)
    store = RedisSessionStore(client, "t:", io_timeout_s=0.3)
    try:
        first, second = store.key("unit", "a"), store.key("unit", "b")
        assert await store.save(first, None, '{"who":"a"}', 60) == (True, None)
        assert await store.save(second, None, '{"who":"b"}', 60) == (True, None)
        await client.execute_command("CLIENT", "PAUSE", "1000", "ALL")
        with pytest.raises(TimeoutError):
            await store.load(first)  # sent, never answered in time
        await client.execute_command("CLIENT", "UNPAUSE")
        loaded = await store.load(second)  # the same (only) connection, reconnected
        assert loaded is not None and loaded.raw == '{"who":"b"}'
    finally:
        await store.aclose()
        await client.aclose()


async def test_a_restarted_redis_is_reached_without_an_error(own_redis: RedisProcess) -> None:
    """The connection a step reuses died with the server: the command goes once more, anew."""
    client = make_redis(own_redis.url)
    store = RedisSessionStore(client, "t:")
    try:
        key = store.key("unit", "r")
        assert await store.save(key, None, "{}", 60) == (True, None)
        own_redis.stop()
        own_redis.start()  # same port, empty: no record, no script
        assert await store.load(key) is None
        assert await store.save(key, None, '{"n":2}', 60) == (True, None)
        loaded = await store.load(key)
        assert loaded is not None and (loaded.version, loaded.raw) == (1, '{"n":2}')
    finally:
        await store.aclose()
        await client.aclose()


async def test_concurrent_steps_share_one_pipelined_connection(own_redis: RedisProcess) -> None:
    """Commands from many concurrent steps go over one connection, each caller gets its own
    answer (Redis answers in order), and Redis sees one client for the store."""
    client = make_redis(own_redis.url)
    store = RedisSessionStore(client, "t:")
    try:
        keys = [store.key("unit", f"m{i}") for i in range(200)]
        results = await asyncio.gather(
            *(store.save(k, None, f'{{"i":{i}}}', 60) for i, k in enumerate(keys))
        )
        assert results == [(True, None)] * 200
        store._cache.clear()
        loaded = await asyncio.gather(*(store.load(k) for k in keys))
        assert [v.raw if v else None for v in loaded] == [f'{{"i":{i}}}' for i in range(200)]
        assert store.link.connects == 1
        clients = await client.execute_command("CLIENT", "LIST")
        text = clients.decode() if isinstance(clients, bytes) else str(clients)
        assert len(text.strip().splitlines()) == 2  # the store's link and this test's client
    finally:
        await store.aclose()
        await client.aclose()


async def test_an_error_reply_raises_and_leaves_the_connection_in_step(
    own_redis: RedisProcess,
) -> None:
    """A command Redis refuses raises redis-py's ResponseError for its caller only; the
    commands around it still get their own answers."""
    client = make_redis(own_redis.url)
    store = RedisSessionStore(client, "t:")
    try:
        await client.set("t:plain", "x")
        key = store.key("unit", "e")
        assert await store.save(key, None, "{}", 60) == (True, None)  # loads the script
        outcomes = await asyncio.gather(
            store.save(key, 1, '{"n":2}', 60),
            store._command("HGET", "t:plain", "field"),  # WRONGTYPE
            store.load(key),  # sent after the CAS on the same connection: sees its write
            return_exceptions=True,
        )
        assert outcomes[0] == (True, None)
        assert isinstance(outcomes[1], ResponseError) and "WRONGTYPE" in str(outcomes[1])
        assert isinstance(outcomes[2], Versioned)
        assert (outcomes[2].version, outcomes[2].raw) == (2, '{"n":2}')
        assert store.link.connects == 1
    finally:
        await store.aclose()
        await client.aclose()


async def test_redis_down_is_a_connection_error_not_a_hang(own_redis: RedisProcess) -> None:
    client = make_redis(own_redis.url)
    store = RedisSessionStore(client, "t:", io_timeout_s=1.0)
    try:
        key = store.key("unit", "d")
        assert await store.save(key, None, "{}", 60) == (True, None)
        own_redis.stop()
        with pytest.raises(RedisConnectionError):
            await store.load(key)
        with pytest.raises(RedisConnectionError):  # and again: no stale state left behind
            await store.save(key, 1, "{}", 60)
        own_redis.start()
        assert await store.save(key, None, '{"back":1}', 60) == (True, None)
    finally:
        await store.aclose()
        await client.aclose()


async def test_a_unix_socket_a_password_and_a_database_number(tmp_path: Path) -> None:
    """The link connects as the redis-py client it is given would: unix socket, AUTH, SELECT."""
    socket = tmp_path / "r.sock"
    server = RedisProcess(tmp_path, ("--unixsocket", str(socket), "--requirepass", "s3cret pass"))
    server.start()
    client = Redis.from_url(f"unix://:s3cret%20pass@{socket}?db=3")
    store = RedisSessionStore(client, "t:")
    wrong = RedisSessionStore(Redis.from_url(f"unix://:nope@{socket}?db=3"), "t:")
    try:
        key = store.key("unit", "u")
        assert await store.save(key, None, '{"db":3}', 60) == (True, None)
        assert await client.get(key) == b'1|{"db":3}'  # database 3, where the client points
        await client.select(0)
        assert await client.execute_command("GET", key) is None
        with pytest.raises(AuthenticationError):
            await wrong.load(key)
    finally:
        await store.aclose()
        await wrong.aclose()
        await client.aclose()
        server.stop()


async def test_a_connection_that_stops_answering_is_dropped_and_replaced(
    own_redis: RedisProcess,
) -> None:
    """Redis paused for longer than two timeouts (as a hung server or a half-open connection
    looks): the commands time out, the connection is dropped, and the first command after
    the pause connects anew and gets its own answer."""
    client = make_redis(own_redis.url)
    store = RedisSessionStore(client, "t:", io_timeout_s=0.2)
    try:
        key = store.key("unit", "h")
        assert await store.save(key, None, '{"n":1}', 60) == (True, None)
        await client.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        with pytest.raises(TimeoutError):
            await store.load(key)
        protocol = store.link._protocol
        assert protocol is not None
        await eventually(lambda: protocol.lost is not None, timeout_s=1.0)
        await client.execute_command("CLIENT", "UNPAUSE")
        loaded = await store.load(key)
        assert loaded is not None and loaded.raw == '{"n":1}'
        assert store.link.connects == 2
    finally:
        await store.aclose()
        await client.aclose()


async def test_a_server_that_speaks_garbage_is_a_connection_error() -> None:
    """Something that is not Redis on the other end (a wrong port, a proxy's error page): the
    reply that is not RESP fails the command as a connection error and drops the connection; an
    answer nobody asked for does the same."""
    replies = [b"HTTP/1.1 400 Bad Request\r\n\r\n", b"$-1\r\n+OK\r\n"]
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        reply = replies[min(connections, len(replies) - 1)]
        connections += 1
        await reader.read(1024)
        writer.write(reply)
        await writer.drain()
        await reader.read()  # until the client drops it
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Redis.from_url(f"redis://127.0.0.1:{port}/0")
    store = RedisSessionStore(client, "t:", io_timeout_s=2.0)
    try:
        with pytest.raises(RedisConnectionError, match="protocol error"):
            await store.load(store.key("unit", "g"))
        # A new connection: the GET gets its nil, then an answer to nothing follows.
        assert await store.load(store.key("unit", "g")) is None
        protocol = store.link._protocol
        assert protocol is not None
        await eventually(lambda: protocol.lost is not None, timeout_s=2.0)
        assert "unexpected reply" in str(protocol.lost)
        assert store.link.connects == 2
    finally:
        await store.aclose()
        await client.aclose()
        server.close()
        await server.wait_closed()
