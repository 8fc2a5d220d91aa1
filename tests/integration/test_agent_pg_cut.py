"""The agent channel when its PostgreSQL connections are cut while PostgreSQL itself stays up
(tests/tcp_proxy.py between the runtime's pool and the server; `cut_on` cuts as a given step
passes, so no test waits for a moment): fixes keep being recorded and their history written
once the relay is back, every command is answered, money moves at most once and a retry of the
same command id moves it exactly once. The runtime's pool has no connection floor, so every
connection the proxy refuses is one the code itself asked for."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from channels.agents.mqtt import Message
from config.settings import Settings
from core.agents import agent_balances
from core.crypto import FieldCipher
from core.customers import get_customer
from core.pg import CALL_TIMEOUT_S, RECORD_RETRY_PAUSES_S
from core.tasks import stop_tasks
from core.transfers import balance, float_topup
from gateway import agents as agents_module
from gateway.agents import AgentCollector, AgentRuntime
from tests.conftest import TEST_SECRET, unique
from tests.helpers import eventually, new_msisdn
from tests.integration.agent_support import (
    AGENT_PIN,
    CUSTOMER_PIN,
    assert_ledger_ok,
    make_customer,
    native,
    new_national_id,
    outbox_rows,
    prepare_core,
    spooled,
    zoned_agent,
)
from tests.tcp_proxy import Relay, relayed_pool

CIPHER = FieldCipher(TEST_SECRET)  # the app's own key in tests
UNAVAILABLE = "SERVICE_UNAVAILABLE"


@dataclass
class Replies:
    """Stands in for the MQTT client (the broker is not under test): what was published."""

    sent: list[tuple[str, bytes]] = field(default_factory=list)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        self.sent.append((topic, payload))

    def to(self, agent: str) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p in self.sent if t == f"agents/{agent}/reply"]


@pytest.fixture
async def relay(database_url: str) -> AsyncIterator[Relay]:
    async with relayed_pool(database_url, max_size=4) as relay:
        yield relay


async def channel_over(
    relay: Relay, settings: Settings, redis: Redis
) -> tuple[AgentRuntime, str, Replies]:
    """A runtime on the relayed pool, an agent zoned around CENTRE, replies recorded; its Redis
    keys (the event spool's among them) its own."""
    prefix = f"{settings.redis_prefix}{unique('cut')}:"
    runtime, agent, _ = await zoned_agent(settings, redis, relay.pool, redis_prefix=prefix)
    replies = Replies()
    runtime.channel.mqtt = replies  # type: ignore[assignment]
    return runtime, agent, replies


@contextlib.asynccontextmanager
async def history_writer(runtime: AgentRuntime) -> AsyncIterator[asyncio.Task[None]]:
    """The sink's history and event backlog tasks, as `gateway.agents.running` runs them;
    yields the history's."""
    task = asyncio.create_task(runtime.sink.run(), name="test-history")
    events_task = asyncio.create_task(runtime.sink.run_events(), name="test-events")
    try:
        yield task
    finally:
        await stop_tasks([task, events_task], "test history")
        await runtime.sink.flush()


async def written(runtime: AgentRuntime, rows: int, timeout_s: float = 10.0) -> None:
    """Until the sink has written `rows` rows and heard so (a stop before that answer would
    write them again, see PgSink.flush)."""
    await eventually(lambda: runtime.sink.written, lambda n: n >= rows, timeout_s)


def fixes(agent: str, *stamps: float, metres: float = 20) -> list[Message]:
    return [
        Message(f"agents/{agent}/location", json.dumps(native(metres, ts)).encode())
        for ts in stamps
    ]


def command(agent: str, command_id: str, op: str, **fields: Any) -> Message:
    body = {"id": command_id, "op": op, "pin": AGENT_PIN, **fields}
    return Message(f"agents/{agent}/cmd", json.dumps(body).encode())


async def history(pg_pool: asyncpg.Pool, agent: str) -> list[float]:
    rows = await pg_pool.fetch(
        "SELECT extract(epoch FROM fix_ts)::float8 AS ts FROM agent_locations "
        "WHERE agent_code = $1 ORDER BY fix_ts",
        agent,
    )
    return [round(r["ts"], 3) for r in rows]


async def events(pg_pool: asyncpg.Pool, agent: str) -> list[str]:
    rows = await pg_pool.fetch(
        "SELECT kind FROM agent_events WHERE agent_code = $1 ORDER BY id", agent
    )
    return [r["kind"] for r in rows]


def stamps(*ts: float) -> list[float]:
    return sorted(round(t, 3) for t in ts)


# --- fixes: events and location history ---------------------------------------------------------


async def test_a_cut_as_fixes_are_recorded_keeps_their_events_and_history(
    relay: Relay, settings: Settings, redis: Redis, pg_pool: asyncpg.Pool
) -> None:
    """Every pooled connection dies and the next two are refused as a batch of fixes comes in:
    the device state in Redis has moved on (the events happened), so the events are written
    once the relay is back, the history too; nothing raises out of `handle`."""
    runtime, agent, _ = await channel_over(relay, settings, redis)
    channel = runtime.channel
    now = time.time()
    async with history_writer(runtime) as writer:
        relay.proxy.cut(refuse=2)
        await channel.handle(fixes(agent, now - 30, now - 29))
        assert relay.proxy.refused == 2  # the outage is over: the code itself tried again
        assert channel.stats["ingest_failed"] == 0
        assert await events(pg_pool, agent) == ["online", "enter"]
        await channel.handle(fixes(agent, now - 20))  # and later fixes go in as ever
        await written(runtime, 3)
        assert not writer.done()
    assert await history(pg_pool, agent) == stamps(now - 30, now - 29, now - 20)  # once each
    assert channel.stats["accepted"] == 3


def announced(published: Replies, agent: str) -> list[str]:
    return [json.loads(p)["kind"] for t, p in published.sent if t == f"agents/{agent}/events"]


async def test_an_outage_longer_than_the_retries_defers_the_events_until_postgres_is_back(
    relay: Relay, settings: Settings, redis: Redis, pg_pool: asyncpg.Pool
) -> None:
    """The database stays out of reach past the events' retries: the batch's events go to the
    Redis spool (counted as deferred, not lost; none held in memory) and `handle` goes on; the
    events of later fixes queue behind them at once, without the retries. Once the relay is
    back the writer stores them all, in order, once each, the breach with its one alert, and
    the spool is empty."""
    runtime, agent, published = await channel_over(relay, settings, redis)
    channel, sink = runtime.channel, runtime.sink
    now = time.time()
    async with history_writer(runtime) as writer:
        relay.proxy.cut(refuse=1_000_000)
        await channel.handle(fixes(agent, now - 30, now - 29))
        assert (channel.stats["events_deferred"], sink.events_pending) == (2, 0)
        assert [e.kind for e in await spooled(redis, sink)] == ["online", "enter"]
        assert channel.stats["ingest_failed"] == 0
        assert announced(published, agent) == ["online", "enter"]  # they happened
        started = time.monotonic()
        await channel.handle(fixes(agent, now - 20, metres=2_000))  # outside: an exit begins
        await channel.handle(fixes(agent, now - 10, metres=2_100))
        assert time.monotonic() - started < sum(RECORD_RETRY_PAUSES_S)  # no retries waited
        assert channel.stats["events_deferred"] == 4
        assert channel.stats["accepted"] == 4
        assert await events(pg_pool, agent) == []
        assert len(await spooled(redis, sink)) == 4
        relay.proxy.restore()
        await eventually(lambda: spooled(redis, sink), lambda e: e == [])
        await written(runtime, 4)
        assert not writer.done()
    assert await events(pg_pool, agent) == ["online", "enter", "exit", "breach"]
    assert len(await outbox_rows(pg_pool, agent)) == 1
    assert await history(pg_pool, agent) == stamps(now - 30, now - 29, now - 20, now - 10)
    assert (sink.events_dropped, sink.events_refused, sink.events_written) == (0, 0, 4)


async def test_a_breach_whose_commit_answer_is_lost_is_stored_and_alerted_once(
    relay: Relay, settings: Settings, redis: Redis, pg_pool: asyncpg.Pool
) -> None:
    """The breach's transaction commits but the COMMIT's answer is lost: the sink cannot tell
    that from a failed one and tries again, and the events' ids make the second try store
    nothing, so the breach and its alert are there once."""
    runtime, agent, _ = await channel_over(relay, settings, redis)
    channel = runtime.channel
    now = time.time()
    await channel.handle(fixes(agent, now - 40))
    relay.proxy.cut_on(b"COMMIT\x00", from_server=True)
    await channel.handle(fixes(agent, now - 30, now - 20, metres=2_000))
    assert relay.proxy.tripped == 1
    assert (channel.stats["events_deferred"], channel.stats["ingest_failed"]) == (0, 0)
    assert await events(pg_pool, agent) == ["online", "enter", "exit", "breach"]
    assert len(await outbox_rows(pg_pool, agent)) == 1


async def test_events_whose_insert_answer_is_lost_are_stored_once(
    relay: Relay, settings: Settings, redis: Redis, pg_pool: asyncpg.Pool
) -> None:
    """The same without a breach: the events' one INSERT (no transaction of its own) went in
    and its answer was lost; the second try stores nothing more."""
    runtime, agent, _ = await channel_over(relay, settings, redis)
    relay.proxy.cut_on(b"INSERT 0 2\x00", from_server=True)
    await runtime.channel.handle(fixes(agent, time.time() - 30))
    assert relay.proxy.tripped == 1
    assert runtime.channel.stats["events_deferred"] == 0
    assert await events(pg_pool, agent) == ["online", "enter"]


async def test_a_full_spool_drops_its_oldest_events_counted_and_ingestion_goes_on(
    relay: Relay,
    settings: Settings,
    redis: Redis,
    pg_pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past EVENT_BACKLOG_MAX the spool's oldest entries are trimmed, counted as dropped and
    shown on /metrics; fixes keep going in, and once the relay is back the newest events are
    stored. (The memory backlog's bound: tests/integration/test_agent_event_spool.py.)"""
    monkeypatch.setattr(agents_module, "EVENT_BACKLOG_MAX", 3)
    runtime, agent, _ = await channel_over(relay, settings, redis)
    channel, sink = runtime.channel, runtime.sink
    now = time.time()
    relay.proxy.cut(refuse=1_000_000)
    await channel.handle(fixes(agent, now - 30))  # online, enter
    await channel.handle(fixes(agent, now - 20, metres=2_000))  # exit begins: no event
    await channel.handle(fixes(agent, now - 10, metres=2_100))  # exit, breach
    assert channel.stats["accepted"] == 3  # every fix went in
    assert channel.stats["events_deferred"] == 4
    assert (sink.events_pending, sink.events_dropped) == (0, 1)
    # "online" went
    assert [e.kind for e in await spooled(redis, sink)] == ["enter", "exit", "breach"]
    metrics = collected(runtime)
    assert metrics["gateway_agent_events_spooled"] == 3
    assert metrics["gateway_agent_events_backlog"] == 0
    assert metrics["gateway_agent_events_dropped_total"] == 1
    assert metrics["gateway_agent_events_deferred_total"] == 4
    relay.proxy.restore()
    async with history_writer(runtime):
        await eventually(lambda: spooled(redis, sink), lambda e: e == [])
        await eventually(lambda: collected(runtime)["gateway_agent_events_spooled"] == 0)
    assert await events(pg_pool, agent) == ["enter", "exit", "breach"]
    assert len(await outbox_rows(pg_pool, agent)) == 1
    assert collected(runtime)["gateway_agent_events_written_late_total"] == 3


async def test_a_stop_with_deferred_events_leaves_them_in_the_spool_for_the_next_writer(
    relay: Relay, settings: Settings, redis: Redis, pg_pool: asyncpg.Pool
) -> None:
    """Events deferred and the writer stopped before PostgreSQL came back: the stop has
    nothing in memory to lose (a stop must end: it does not wait for PostgreSQL), the events
    stay in the spool, and a writer started once it is back (here the same runtime's, as
    after a restart) stores each once."""
    runtime, agent, _ = await channel_over(relay, settings, redis)
    sink = runtime.sink
    now = time.time()
    relay.proxy.cut(refuse=1_000_000)
    await runtime.channel.handle(fixes(agent, now - 30))
    await runtime.channel.handle(fixes(agent, now - 20, now - 10, metres=2_000))
    assert (sink.events_pending, len(await spooled(redis, sink))) == (0, 4)
    started = time.monotonic()
    assert await sink.flush_events(timeout_s=1.0) is True
    assert time.monotonic() - started < 1.0
    assert len(await spooled(redis, sink)) == 4
    relay.proxy.restore()
    await sink.flush()  # the history
    assert await events(pg_pool, agent) == []
    async with history_writer(runtime):
        await eventually(lambda: spooled(redis, sink), lambda e: e == [])
    assert await events(pg_pool, agent) == ["online", "enter", "exit", "breach"]
    assert len(await outbox_rows(pg_pool, agent)) == 1
    assert await history(pg_pool, agent) == stamps(now - 30, now - 20, now - 10)


def collected(runtime: AgentRuntime) -> dict[str, float]:
    """The agent collector's samples by name, as a scrape reads them."""
    return {
        sample.name: sample.value
        for family in AgentCollector(runtime).collect()
        for sample in family.samples
        if not sample.labels
    }


async def test_a_cut_inside_a_breachs_transaction_records_the_breach_and_its_alert_once(
    relay: Relay, settings: Settings, redis: Redis, pg_pool: asyncpg.Pool
) -> None:
    """A breach is stored with its alert in one transaction; the connection dies as the alert
    goes out (before the server gets it), so asyncpg's ROLLBACK on the dead connection raises
    its own InterfaceError: the transaction is tried again, the breach and its alert stored
    once each."""
    runtime, agent, _ = await channel_over(relay, settings, redis)
    channel = runtime.channel
    now = time.time()
    await channel.handle(fixes(agent, now - 40))
    relay.proxy.cut_on(b"INSERT INTO outbox")
    await channel.handle(fixes(agent, now - 30, now - 20, metres=2_000))
    assert relay.proxy.tripped == 1
    assert channel.stats["ingest_failed"] == 0
    assert await events(pg_pool, agent) == ["online", "enter", "exit", "breach"]
    assert len(await outbox_rows(pg_pool, agent)) == 1


async def test_events_whose_connection_dies_on_its_way_back_to_the_pool_are_stored_once(
    relay: Relay, settings: Settings, redis: Redis, pg_pool: asyncpg.Pool
) -> None:
    """The events' INSERT was answered; then the connection dies as the pool resets it, and
    asyncpg raises that out of the `async with`. The events are stored: they are not stored
    again for a failure that was not theirs."""
    runtime, agent, _ = await channel_over(relay, settings, redis)
    relay.proxy.cut_on(b"RESET ALL")
    await runtime.channel.handle(fixes(agent, time.time() - 30))
    assert relay.proxy.tripped == 1
    assert runtime.channel.stats["ingest_failed"] == 0
    assert await events(pg_pool, agent) == ["online", "enter"]


async def test_a_history_copy_whose_connection_dies_on_its_way_back_is_not_written_again(
    relay: Relay, settings: Settings, redis: Redis, pg_pool: asyncpg.Pool
) -> None:
    """The same for the history: its COPY was answered, the pool's reset of the connection
    fails; the rows are written once, and a stop right after does not write them again."""
    runtime, agent, _ = await channel_over(relay, settings, redis)
    pool = relay.pool
    now = time.time()
    async with history_writer(runtime) as writer:
        await runtime.channel.handle(fixes(agent, now - 30))  # online, enter: out of the way
        await written(runtime, 1)
        await eventually(lambda: pool.get_idle_size() == pool.get_size())  # all reset
        relay.proxy.cut_on(b"RESET ALL")
        await runtime.channel.handle(fixes(agent, now - 20, now - 19))  # no events: a COPY
        await written(runtime, 3)
        # The reset comes as the connection goes back to the pool, after the COPY's count.
        await eventually(lambda: relay.proxy.tripped == 1)
        assert not writer.done()
    assert await history(pg_pool, agent) == stamps(now - 30, now - 20, now - 19)
    assert runtime.sink.written == 3


async def test_a_cut_in_the_middle_of_a_history_copy_writes_its_rows_once(
    relay: Relay, settings: Settings, redis: Redis, pg_pool: asyncpg.Pool
) -> None:
    """The connection dies as the history's COPY goes out (the server never gets it) and the
    next connection is refused: the sink keeps the rows it held and writes them once."""
    runtime, agent, _ = await channel_over(relay, settings, redis)
    now = time.time()
    async with history_writer(runtime) as writer:
        relay.proxy.cut_on(b"FROM STDIN", refuse=1)
        await runtime.channel.handle(fixes(agent, now - 30, now - 29))
        await written(runtime, 2)
        assert (relay.proxy.tripped, relay.proxy.refused) == (1, 1)
        assert not writer.done()
        await runtime.channel.handle(fixes(agent, now - 20))  # the sink goes on
        await written(runtime, 3)
    assert await history(pg_pool, agent) == stamps(now - 30, now - 29, now - 20)
    assert runtime.sink.written == 3


async def test_a_history_copy_whose_answer_is_lost_is_written_again(
    relay: Relay, settings: Settings, redis: Redis, pg_pool: asyncpg.Pool
) -> None:
    """The COPY went through but its answer never came back: the sink cannot tell that from a
    COPY that failed, and writes the rows again. The history then holds them twice (a copy of
    a fix, never a lost one), as at a stop that interrupts a COPY (PgSink.flush)."""
    runtime, agent, _ = await channel_over(relay, settings, redis)
    now = time.time()
    async with history_writer(runtime) as writer:
        relay.proxy.cut_on(b"COPY 2\x00", from_server=True)
        await runtime.channel.handle(fixes(agent, now - 30, now - 29))
        await written(runtime, 2)
        assert relay.proxy.tripped == 1
        assert not writer.done()
    assert await history(pg_pool, agent) == stamps(now - 30, now - 30, now - 29, now - 29)
    assert runtime.sink.written == 2  # what the sink knows it wrote


# --- commands ------------------------------------------------------------------------------------


async def counter(
    relay: Relay, settings: Settings, redis: Redis, pg_pool: asyncpg.Pool
) -> tuple[AgentRuntime, str, Replies, str]:
    """An agent with float, inside its zone (its fix in before any cut), and a customer."""
    await prepare_core(pg_pool)
    runtime, agent, replies = await channel_over(relay, settings, redis)
    await float_topup(
        pg_pool, agent_code=agent, amount_minor=1_000_000,
        idempotency_key=f"float-{secrets.token_hex(8)}", channel="test",
    )  # fmt: skip
    customer = await make_customer(pg_pool, CIPHER, balance_minor=50_000)
    await runtime.channel.handle(fixes(agent, time.time() - 5))
    return runtime, agent, replies, customer


async def outcomes_of(pg_pool: asyncpg.Pool, agent: str, command_id: str) -> list[str]:
    rows = await pg_pool.fetch(
        "SELECT outcome FROM agent_decisions WHERE agent_code = $1 AND command_id = $2 ORDER BY id",
        agent,
        command_id,
    )
    return [r["outcome"] for r in rows]


def code_of(reply: dict[str, Any]) -> str:
    return "ok" if reply["ok"] else str(reply["error"]["code"])


async def test_a_cut_before_the_money_moves_is_answered_and_a_retry_moves_it_once(
    relay: Relay, settings: Settings, redis: Redis, pg_pool: asyncpg.Pool
) -> None:
    """The connection dies as the ledger call goes out (the server never gets it), twice: the
    device hears SERVICE_UNAVAILABLE each time, nothing moved, and the same command id sent
    again moves it. The decisions hold one row for the command, its latest outcome: the
    unavailable one until the command is done, then the "ok" in its place."""
    runtime, agent, replies, customer = await counter(relay, settings, redis, pg_pool)
    cash_in = command(agent, "ci-1", "cash_in", msisdn=customer, amount_minor=10_000)
    for attempt in (1, 2):
        relay.proxy.cut_on(b"ledger_cash_in")
        await runtime.channel.handle([cash_in])
        assert relay.proxy.tripped == attempt
        refused = replies.to(agent)[-1]
        assert (refused["id"], code_of(refused)) == ("ci-1", UNAVAILABLE)
        assert await outcomes_of(pg_pool, agent, "ci-1") == [UNAVAILABLE]
    assert await balance(pg_pool, customer) == 50_000

    await runtime.channel.handle([cash_in])
    [_, _, done] = replies.to(agent)
    assert (done["id"], code_of(done)) == ("ci-1", "ok")
    assert await outcomes_of(pg_pool, agent, "ci-1") == ["ok"]
    assert await balance(pg_pool, customer) == 60_000
    assert (await agent_balances(pg_pool, agent)).float_minor == 1_000_000 - 10_000
    await assert_ledger_ok(pg_pool)


async def test_a_refusal_after_an_unavailable_attempt_is_the_commands_one_decision(
    relay: Relay, settings: Settings, redis: Redis, pg_pool: asyncpg.Pool
) -> None:
    """A first attempt ends unavailable, the agent walks out of its zone, and the retry is
    refused by the gate: the refusal is the command's outcome and takes the unavailable row's
    place; another command's rows are untouched."""
    runtime, agent, replies, customer = await counter(relay, settings, redis, pg_pool)
    other = command(agent, "ci-0", "cash_in", msisdn=customer, amount_minor=1_000)
    relay.proxy.cut_on(b"ledger_cash_in")
    await runtime.channel.handle([other])
    cash_in = command(agent, "ci-4", "cash_in", msisdn=customer, amount_minor=10_000)
    relay.proxy.cut_on(b"ledger_cash_in")
    await runtime.channel.handle([cash_in])
    assert code_of(replies.to(agent)[-1]) == UNAVAILABLE
    await runtime.channel.handle(fixes(agent, time.time() - 1, metres=2_000))  # outside
    await runtime.channel.handle([cash_in])
    assert code_of(replies.to(agent)[-1]) == "OUTSIDE_GEOFENCE"
    assert await outcomes_of(pg_pool, agent, "ci-4") == ["OUTSIDE_GEOFENCE"]
    assert await outcomes_of(pg_pool, agent, "ci-0") == [UNAVAILABLE]
    assert await balance(pg_pool, customer) == 50_000


async def test_a_cash_in_whose_commit_answer_is_lost_moves_the_money_once(
    relay: Relay, settings: Settings, redis: Redis, pg_pool: asyncpg.Pool
) -> None:
    """The transfer commits but the COMMIT's answer is lost: the device is told to try again
    (not that it failed for good), and the retry of the same command id finds the transfer
    already posted: the same money, moved once, and an ok reply with its reference."""
    runtime, agent, replies, customer = await counter(relay, settings, redis, pg_pool)
    cash_in = command(agent, "ci-2", "cash_in", msisdn=customer, amount_minor=10_000)
    relay.proxy.cut_on(b"COMMIT\x00", from_server=True)
    await runtime.channel.handle([cash_in])
    assert relay.proxy.tripped == 1
    [lost] = replies.to(agent)
    assert (lost["id"], code_of(lost)) == ("ci-2", UNAVAILABLE)
    assert await balance(pg_pool, customer) == 60_000  # it did move

    await runtime.channel.handle([cash_in])
    [_, done] = replies.to(agent)
    assert (done["id"], code_of(done)) == ("ci-2", "ok")
    assert await balance(pg_pool, customer) == 60_000  # once
    assert (await agent_balances(pg_pool, agent)).float_minor == 1_000_000 - 10_000
    posted = await pg_pool.fetch(
        "SELECT ledger_reference(id) AS ref FROM transfers WHERE idempotency_key = $1",
        f"agent:{agent}:ci-2",
    )
    assert [r["ref"] for r in posted] == [done["result"]["reference"]]
    await runtime.channel.handle([cash_in])  # and now it is stored: the same reply again
    assert replies.to(agent)[-1] == done
    assert await outcomes_of(pg_pool, agent, "ci-2") == ["ok"]
    await assert_ledger_ok(pg_pool)


async def test_a_cash_out_whose_commit_answer_is_lost_moves_the_money_once(
    relay: Relay, settings: Settings, redis: Redis, pg_pool: asyncpg.Pool
) -> None:
    """The same for a cash-out: the retry checks the customer's PIN again and finds the
    transfer posted; the customer paid the amount and its fee once."""
    runtime, agent, replies, customer = await counter(relay, settings, redis, pg_pool)
    cash_out = command(
        agent, "co-2", "cash_out", msisdn=customer, amount_minor=5_000, customer_pin=CUSTOMER_PIN
    )
    relay.proxy.cut_on(b"COMMIT\x00", from_server=True)
    await runtime.channel.handle([cash_out])
    assert relay.proxy.tripped == 1
    [lost] = replies.to(agent)
    assert (lost["id"], code_of(lost)) == ("co-2", UNAVAILABLE)
    moved = await balance(pg_pool, customer)
    assert moved < 50_000

    await runtime.channel.handle([cash_out])
    [_, done] = replies.to(agent)
    assert (done["id"], code_of(done)) == ("co-2", "ok")
    assert await balance(pg_pool, customer) == moved == 45_000 - done["result"]["fee_minor"]
    assert (await agent_balances(pg_pool, agent)).float_minor == 1_000_000 + 5_000
    await assert_ledger_ok(pg_pool)


async def test_a_registration_whose_commit_answer_is_lost_registers_the_customer_once(
    relay: Relay, settings: Settings, redis: Redis, pg_pool: asyncpg.Pool
) -> None:
    """A registration commits with its decision: the retry finds the customer this command
    registered and answers ok."""
    runtime, agent, replies, _ = await counter(relay, settings, redis, pg_pool)
    newcomer = new_msisdn()
    register = command(
        agent, "rc-2", "register_customer", msisdn=newcomer, first_name="New",
        last_name="Comer", national_id=new_national_id(), customer_pin=CUSTOMER_PIN,
    )  # fmt: skip
    relay.proxy.cut_on(b"COMMIT\x00", from_server=True)
    await runtime.channel.handle([register])
    assert relay.proxy.tripped == 1
    [lost] = replies.to(agent)
    assert (lost["id"], code_of(lost)) == ("rc-2", UNAVAILABLE)
    assert (await get_customer(pg_pool, newcomer)).msisdn == newcomer  # it did register

    await runtime.channel.handle([register])
    [_, done] = replies.to(agent)
    assert (done["id"], code_of(done), done["result"]["msisdn"]) == ("rc-2", "ok", newcomer)
    # The first attempt could not tell its COMMIT went through, but its "unavailable" is not
    # added next to the "ok" it committed: one row, the command's outcome.
    assert await outcomes_of(pg_pool, agent, "rc-2") == ["ok"]


async def test_every_command_of_a_batch_is_answered_while_connections_are_refused(
    relay: Relay, settings: Settings, redis: Redis, pg_pool: asyncpg.Pool
) -> None:
    """Every connection is refused while a batch with a fix and one command of each op comes
    in: each command gets its own SERVICE_UNAVAILABLE well within the core's timeouts, none is
    left claimed, and once the relay is back each id sent again runs, money moved once."""
    runtime, agent, replies, customer = await counter(relay, settings, redis, pg_pool)
    newcomer = new_msisdn()
    names = {"first_name": "New", "last_name": "Comer", "national_id": new_national_id()}
    batch = [
        *fixes(agent, time.time() - 2),
        command(agent, "b-1", "balance"),
        command(agent, "ci-3", "cash_in", msisdn=customer, amount_minor=10_000),
        command(
            agent,
            "co-3",
            "cash_out",
            msisdn=customer,
            amount_minor=5_000,
            customer_pin=CUSTOMER_PIN,
        ),
        command(
            agent, "rc-3", "register_customer", msisdn=newcomer, customer_pin=CUSTOMER_PIN, **names
        ),
    ]
    ids = ["b-1", "ci-3", "co-3", "rc-3"]
    relay.proxy.cut(refuse=1_000)
    started = time.monotonic()
    await runtime.channel.handle(batch)
    assert time.monotonic() - started < CALL_TIMEOUT_S
    during = replies.to(agent)
    assert sorted(r["id"] for r in during) == sorted(ids)
    assert {code_of(r) for r in during} == {UNAVAILABLE}
    assert relay.proxy.refused >= len(ids)

    relay.proxy.restore()
    replies.sent.clear()
    await runtime.channel.handle([m for m in batch if m.topic.endswith("/cmd")])
    after = {r["id"]: code_of(r) for r in replies.to(agent)}
    assert after == dict.fromkeys(ids, "ok")
    assert await balance(pg_pool, customer) == 50_000 + 10_000 - 5_000 - after_fee(replies)
    assert await balance(pg_pool, newcomer) == 0
    await assert_ledger_ok(pg_pool)


def after_fee(replies: Replies) -> int:
    """The cash-out's fee, as its reply says (the customer pays it)."""
    for _, payload in replies.sent:
        reply = json.loads(payload)
        if reply.get("id") == "co-3":
            return int(reply["result"]["fee_minor"])
    raise AssertionError("no cash-out reply")


# The answer to a wrong-PIN count (core.pins) for a customer or agent with no failures yet: a
# data row of two columns, the int4 1 and the text "active".
FIRST_FAILURE_ANSWER = (
    b"D\x00\x00\x00\x18\x00\x02\x00\x00\x00\x04\x00\x00\x00\x01\x00\x00\x00\x06active"
)


@pytest.mark.parametrize("whose", ["customer", "agent"])
async def test_a_wrong_pin_whose_count_answer_is_lost_counts_once_when_sent_again(
    relay: Relay, settings: Settings, redis: Redis, pg_pool: asyncpg.Pool, whose: str
) -> None:
    """A cash-out with a wrong PIN (the customer's, or the agent's own): the PIN is counted,
    its answer lost; the device hears SERVICE_UNAVAILABLE and sends the same command id again,
    which finds the same wrong PIN and must not count it a second time."""
    runtime, agent, replies, customer = await counter(relay, settings, redis, pg_pool)
    fields = {"msisdn": customer, "amount_minor": 5_000, "customer_pin": "9137"}
    if whose == "customer":
        cash_out = command(agent, "co-w", "cash_out", **fields)
    else:
        cash_out = command(agent, "co-w", "cash_out", **{**fields, "customer_pin": CUSTOMER_PIN})
        body = json.loads(cash_out.payload)
        cash_out = Message(cash_out.topic, json.dumps({**body, "pin": "9137"}).encode())
    table, key = ("customers", "msisdn") if whose == "customer" else ("agents", "code")
    counted = f"SELECT pin_failures FROM {table} WHERE {key} = $1"
    target = customer if whose == "customer" else agent
    relay.proxy.cut_on(FIRST_FAILURE_ANSWER, from_server=True)
    await runtime.channel.handle([cash_out])
    assert relay.proxy.tripped == 1
    assert code_of(replies.to(agent)[-1]) == UNAVAILABLE
    assert await pg_pool.fetchval(counted, target) == 1
    await runtime.channel.handle([cash_out])
    again = replies.to(agent)[-1]
    assert code_of(again) == "WRONG_PIN", again
    assert again["error"]["details"]["attempts_left"] == 2
    assert await pg_pool.fetchval(counted, target) == 1
    assert await balance(pg_pool, customer) == 50_000
