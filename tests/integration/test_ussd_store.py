"""Session records in real Redis: the compare-and-set contract, TTLs, and the number of Redis
round trips a step costs (one for navigation when this instance wrote the session last)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.app import make_redis
from gateway.keys import USSD_SERVICE
from menus.session import RedisSessionStore
from tests.ussd_support import PIN, RedisProcess, UssdEnv, own_redis, ussd

__all__ = ["own_redis", "ussd"]


async def test_compare_and_set(redis: Redis, redis_prefix: str) -> None:
    store = RedisSessionStore(redis, redis_prefix)
    key = store.key("unit", secrets.token_hex(4))
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
    finally:
        await client.aclose()


class Counter:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.commands: list[str] = []
        self.original = redis.execute_command

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.commands.append(str(args[0]))
        return await self.original(*args, **kwargs)


@pytest.fixture
def counted(ussd: UssdEnv) -> Iterator[Counter]:
    redis = ussd.app[USSD_SERVICE].store.redis  # the session store's own client
    counter = Counter(redis)
    redis.execute_command = counter  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        del redis.execute_command


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
