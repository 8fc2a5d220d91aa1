"""Sessions under stress, over HTTP with real Redis, PostgreSQL and the real banking core:
repeated and concurrent callbacks (money moves once), expiry, Redis going away mid-session, a
core call that overruns the deadline (its result SMS queued in the outbox), and what is
recorded (screens, outcomes; never a PIN). The ledger check runs after every test."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from config.settings import Settings
from gateway.keys import MENU_BINDINGS, REDIS
from menus.analytics import StepLog, StepRecord
from menus.analytics import now as analytics_now
from tests.helpers import eventually, new_msisdn, shows_pin
from tests.ussd_support import (
    PIN,
    RedisProcess,
    UssdEnv,
    own_redis,
    start_env,
    ussd,
)

__all__ = ["own_redis", "ussd"]


class WalletHold:
    """Holds a customer's wallet row locked from another connection, so the next money call on
    it waits inside the ledger: a slow core, made of the real one."""

    def __init__(self, pool: asyncpg.Pool, msisdn: str) -> None:
        self.pool, self.msisdn = pool, msisdn
        self.conn: asyncpg.Connection | None = None
        self.tx: Any = None

    async def __aenter__(self) -> WalletHold:
        self.conn = await self.pool.acquire()
        self.tx = self.conn.transaction()
        await self.tx.start()
        await self.conn.execute(
            "SELECT 1 FROM accounts a JOIN customers c ON a.customer_id = c.id "
            "WHERE c.msisdn = $1 AND a.kind = 'wallet' FOR UPDATE OF a",
            self.msisdn,
        )
        return self

    async def waiting(self) -> int:
        """How many other backends wait for a lock while running a ledger function."""
        # Not on the holding connection: inside a transaction pg_stat_activity is a snapshot.
        value = await self.pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' "
            "AND query LIKE 'SELECT * FROM ledger_%'"
        )
        return int(value)

    async def release(self) -> None:
        if self.tx is not None:
            await self.tx.rollback()
            self.tx = None
        if self.conn is not None:
            await self.pool.release(self.conn)
            self.conn = None

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


@pytest.fixture(autouse=True)
async def ledger_ok(ussd: UssdEnv) -> AsyncIterator[None]:
    yield
    await ussd.bank.check_ledger()


async def test_replayed_callback_moves_money_once(ussd: UssdEnv) -> None:
    sender = await ussd.bank.open(balance_minor=100_000)
    recipient = await ussd.bank.open()
    s = ussd.session(sender)
    await s.walk("1", recipient, "100", "1")
    form = s.form(PIN)
    before = ussd.calls["send_money"]
    first = await s.post(form)
    again = await s.post(form)  # the aggregator retries the same hop
    third = await s.post(form)
    assert first.startswith("END KES 100.00 sent") and again == first and third == first
    assert ussd.calls["send_money"] == before + 1
    assert await ussd.bank.balance(recipient) == 10_000
    assert await ussd.bank.balance(sender) == 90_000
    assert await ussd.bank.transfers(recipient) == 1
    # An older hop arriving late gets the current answer, and runs nothing either.
    stale = s.form()
    stale["text"] = "1"
    assert await s.post(stale) == first
    assert await ussd.bank.transfers(recipient) == 1


async def test_replayed_navigation_hop(ussd: UssdEnv) -> None:
    msisdn = await ussd.bank.open()
    s = ussd.session(msisdn)
    await s.dial()
    form = s.form("6")
    one = await s.post(form)
    two = await s.post(form)
    assert one == two and "Change PIN" in one
    s.inputs.append("6")
    assert "Choose your language" in await s.send("2")  # the session did not move twice


async def test_two_concurrent_callbacks_for_one_session(ussd: UssdEnv) -> None:
    sender = await ussd.bank.open(balance_minor=100_000)
    recipient = await ussd.bank.open()
    s = ussd.session(sender)
    await s.walk("1", recipient, "100", "1")
    before = ussd.calls["send_money"]
    async with WalletHold(ussd.bank.pool, sender) as hold:
        form = s.form(PIN)
        first = asyncio.create_task(s.post(form))
        await eventually(hold.waiting)  # the transfer is inside the ledger, waiting for the wallet
        # Same hop, same input (a duplicate delivery): it waits for the first and gets its answer.
        duplicate = asyncio.create_task(s.post(form))
        # Same hop, another input (a conflicting request): a clear answer at once.
        busy = await s.post(s.form("9999"))
        assert busy == "END Your previous request is still being processed. Please wait."
        assert not duplicate.done() and not first.done()
        await hold.release()
        one, two = await asyncio.gather(first, duplicate)
    assert one.startswith("END KES 100.00 sent") and two == one
    assert ussd.calls["send_money"] == before + 1
    assert await ussd.bank.balance(recipient) == 10_000
    assert await ussd.bank.transfers(recipient) == 1


async def test_two_sessions_racing_for_one_wallet(ussd: UssdEnv) -> None:
    """Two sessions of one customer each send 600 of a 1,000 balance: exactly one succeeds."""
    sender = await ussd.bank.open(balance_minor=1_000_00)
    recipient = await ussd.bank.open()
    sessions = [ussd.session(sender) for _ in range(2)]
    for s in sessions:
        await s.walk("1", recipient, "600", "1")
    bodies = await asyncio.gather(*(s.send(PIN) for s in sessions))
    assert sorted("insufficient" in b for b in bodies) == [False, True], bodies
    assert await ussd.bank.balance(recipient) == 600_00
    assert await ussd.bank.balance(sender) == 1_000_00 - 600_00 - 13_00


async def test_concurrent_navigation_moves_once(ussd: UssdEnv) -> None:
    msisdn = await ussd.bank.open()
    s = ussd.session(msisdn)
    await s.dial()
    form = s.form("6")
    replies = await asyncio.gather(*(s.post(form) for _ in range(5)))
    assert len(set(replies)) == 1 and "Change PIN" in replies[0]
    s.inputs.append("6")
    assert "Choose your language" in await s.send("2")


def _with_ttl(settings: Settings, provider: str, ttl_s: int) -> Settings:
    providers = tuple(
        replace(p, session_ttl_s=ttl_s) if p.name == provider else p
        for p in settings.ussd_providers
    )
    return replace(settings, ussd_providers=providers)


@pytest.fixture(scope="module")
async def short_ttl(settings: Settings) -> AsyncIterator[UssdEnv]:
    ttl = _with_ttl(_with_ttl(settings, "hubtel", 1), "africastalking", 1)
    async for env in start_env(ttl):
        yield env


async def _gone(env: UssdEnv, key: str) -> None:
    redis: Redis = env.app[REDIS]

    async def expired() -> bool:
        return not await redis.exists(key)

    await eventually(expired)


async def test_session_expiry_latest_only_provider(short_ttl: UssdEnv) -> None:
    msisdn = await short_ttl.bank.open()
    sid = f"hub{time.time_ns()}"
    base = {"Mobile": msisdn[1:], "SessionId": sid, "ServiceCode": "384", "Operator": "mtn"}
    resp = await short_ttl.client.post(
        "/ussd/hubtel", json={**base, "Type": "Initiation", "Message": "*384#", "Sequence": 1}
    )
    assert (await resp.json())["Type"] == "Response"
    key = f"{short_ttl.settings.redis_prefix}ussd:{{hubtel:{sid}}}"
    await _gone(short_ttl, key)
    resp = await short_ttl.client.post(
        "/ussd/hubtel", json={**base, "Type": "Response", "Message": "2", "Sequence": 2}
    )
    body = await resp.json()
    assert resp.status == 200
    assert body == {
        "Type": "Release",
        "Message": "Your session has expired. Please dial again.",
        "ClientState": "",
    }


async def test_session_expiry_cumulative_provider_restarts_from_the_path(
    short_ttl: UssdEnv,
) -> None:
    """Africa's Talking sends every input again: after expiry the menu path is replayed."""
    msisdn = await short_ttl.bank.open()
    s = short_ttl.session(msisdn)
    await s.dial()
    await _gone(
        short_ttl, f"{short_ttl.settings.redis_prefix}ussd:{{africastalking:{s.session_id}}}"
    )
    assert await s.send("2") == "CON Enter your PIN:"


async def test_end_of_session_notification(ussd: UssdEnv) -> None:
    msisdn = await ussd.bank.open()
    s = ussd.session(msisdn)
    await s.walk("2")
    resp = await ussd.client.post(
        "/ussd/africastalking/events",
        data={
            "sessionId": s.session_id,
            "serviceCode": "*384#",
            "networkCode": "63902",
            "phoneNumber": msisdn,
            "status": "Incomplete",
            "cost": "KES 0.00",
            "durationInMillis": "12000",
        },
    )
    assert resp.status == 200 and await resp.text() == "OK"
    # The session is closed: a late hop is told so (not shown the PIN prompt again, which it
    # could never answer), and runs nothing; a retry of it gets the same.
    before = ussd.calls["balance"]
    expired = "END Your session has expired. Please dial again."
    assert await s.send(PIN) == expired
    assert await s.post(s.form()) == expired
    assert ussd.calls["balance"] == before


# --- Redis stopped mid-session ----------------------------------------------------------------


async def test_redis_stopped_mid_session(settings: Settings, own_redis: RedisProcess) -> None:
    async for env in start_env(settings, redis_url=own_redis.url):
        msisdn = await env.bank.open(balance_minor=100)
        s = env.session(msisdn)
        assert "Hello Amina" in await s.dial()
        own_redis.stop()
        body = await s.send("2")
        assert body == "END The service is temporarily unavailable. Please try again later."
        resp = await env.client.post(
            "/ussd/hubtel",
            json={
                "Type": "Initiation",
                "Mobile": msisdn[1:],
                "SessionId": "h1",
                "ServiceCode": "384",
                "Message": "*384#",
                "Sequence": 1,
            },
        )
        assert resp.status == 200 and (await resp.json())["Type"] == "Release"
        # Redis comes back on the same port: new sessions work again without a restart.
        own_redis.start()
        t = env.session(msisdn)
        assert "Hello Amina" in await t.dial()


# --- a core call that overruns the deadline ---------------------------------------------------


@pytest.fixture(scope="module")
async def slow(settings: Settings) -> AsyncIterator[UssdEnv]:
    async for env in start_env(settings, ussd_deadline_s=1.0):
        yield env


async def test_overrunning_action_answers_by_sms(slow: UssdEnv) -> None:
    sender = await slow.bank.open(balance_minor=100_000)
    recipient = await slow.bank.open(first_name="Neema", last_name="Achieng")
    s = slow.session(sender)
    await s.walk("1", recipient, "100", "1")
    async with WalletHold(slow.bank.pool, sender) as hold:
        started = time.monotonic()
        body = await s.send(PIN)
        took = time.monotonic() - started
        assert body == "END We are still processing your request. The result will come by SMS."
        assert took < 1.4
        assert await hold.waiting() == 1  # the transfer is still running
        assert await slow.bank.outbox(sender, "ussd.late_result") == []
        await hold.release()

    async def receipts() -> list[asyncpg.Record]:
        return [r for r in await slow.bank.outbox(sender) if r["template"] == "p2p_sent"]

    # The SMS promised is the transfer's own receipt, queued with the movement: no second SMS
    # with the same facts (a late-result message is for actions without a receipt).
    [receipt] = await eventually(receipts)
    assert receipt["transfer_id"] is not None
    assert await slow.bank.outbox(sender, "ussd.late_result") == []
    assert await slow.bank.balance(recipient) == 10_000
    # The aggregator retries the hop: the stored answer, no second transfer, no second SMS.
    assert await s.post(s.form()) == body
    assert slow.calls["send_money"] == 1
    assert await slow.bank.transfers(recipient) == 1
    assert len(await receipts()) == 1
    assert await slow.bank.outbox(sender, "ussd.late_result") == []
    await slow.bank.check_ledger()


# --- what is recorded -------------------------------------------------------------------------


async def test_steps_are_recorded_and_pins_never_stored_or_logged(
    ussd: UssdEnv, pg_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pin = "7391"
    msisdn = await ussd.bank.open(pin=pin, balance_minor=5_00)
    s = ussd.session(msisdn)
    await s.walk("2", "7390")
    redis: Redis = ussd.app[REDIS]
    raw = await redis.get(f"{ussd.settings.redis_prefix}ussd:{{africastalking:{s.session_id}}}")
    assert raw is not None and b"7390" not in raw  # the wrong PIN is stored encrypted
    assert await s.send(pin) == "END Your balance is KES 5.00."

    async def rows() -> list[asyncpg.Record]:
        found = await pg_pool.fetch(
            "SELECT step, screen, outcome, input, latency_ms, menu, menu_version"
            " FROM ussd_steps WHERE session_id = $1 ORDER BY id",
            s.session_id,
        )
        return found if len(found) == 4 else []

    recorded = await eventually(rows)
    assert [(r["screen"], r["outcome"]) for r in recorded] == [
        ("main", "ok"),
        ("bal_pin", "ok"),
        ("bal_pin_retry", "error:WRONG_PIN"),
        ("bal_done", "end"),
    ]
    assert [r["input"] for r in recorded] == [None, "2", "****", "****"]
    assert all(r["menu"] == "default" and r["menu_version"] >= 1 for r in recorded)
    assert all(r["latency_ms"] > 0 for r in recorded)
    for secret in (pin, "7390"):
        # As a number of its own: the customer's MSISDN, random, may hold the four digits.
        assert not shows_pin(secret, caplog.text)
        dump = await pg_pool.fetchval(
            "SELECT count(*) FROM ussd_steps WHERE session_id = $1 AND input LIKE $2",
            s.session_id,
            f"%{secret}%",
        )
        assert dump == 0
    outbox = await pg_pool.fetchval(
        "SELECT count(*) FROM outbox WHERE recipient = $1 AND body LIKE $2", msisdn, f"%{pin}%"
    )
    assert outbox == 0
    metrics = await (await ussd.client.get("/metrics")).text()
    assert 'gateway_ussd_steps_total{outcome="end",provider="africastalking"}' in metrics


async def test_unbound_action_is_temporarily_unavailable(settings: Settings) -> None:
    """A menu whose action has no implementation says so, cleanly."""
    async for env in start_env(settings):
        env.app[MENU_BINDINGS].functions.pop("customer.lookup")
        s = env.session(new_msisdn())
        body = await s.dial()
        assert body == "END The service is temporarily unavailable. Please try again later."


async def test_access_log_keeps_ussd_failures_only(
    ussd: UssdEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """Answered USSD steps are in the analytics, not the access log; refused ones are in both
    places they matter (the access log and the standard error JSON)."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    caplog.set_level(logging.INFO, logger="aiohttp.access")  # aiohttp asks it whether to log
    msisdn = await ussd.bank.open()
    # New connections: aiohttp decides per connection whether its requests are logged.
    async with aiohttp.ClientSession() as http:
        form = ussd.session(msisdn).form()
        async with http.post(ussd.client.make_url("/ussd/africastalking"), data=form) as resp:
            assert resp.status == 200 and (await resp.text()).startswith("CON Hello")
        async with http.post(ussd.client.make_url("/ussd/hubtel"), data="{") as resp:
            assert resp.status == 400
        async with http.get(ussd.client.make_url("/healthz")) as resp:
            assert resp.status == 200

    def logged() -> set[tuple[object, object]]:
        return {
            (r.__dict__.get("path"), r.__dict__.get("status"))
            for r in caplog.records
            if r.name == "gateway.access"
        }

    async def both() -> bool:  # the line is written just after the response is sent
        return {("/ussd/hubtel", 400), ("/healthz", 200)} <= logged()

    await eventually(both)
    assert not any(p == "/ussd/africastalking" for p, _ in logged())


async def test_analytics_rows_the_writer_held_at_a_stop_are_written(pg_pool: asyncpg.Pool) -> None:
    """The step log is stopped while its writer holds a row it took off the queue (waiting to
    gather a batch): the stop writes it with the rest."""
    log_ = StepLog(pg_pool)
    session = f"held-{new_msisdn()}"
    for step in range(3):
        log_.record(
            StepRecord(
                "africastalking", session, "+254700000001", "main", 1, step, "welcome",
                "continue", 1.5, None, "en", analytics_now(),
            )
        )  # fmt: skip
    log_.start()
    await eventually(log_.queue.qsize, lambda n: n < 3)  # the writer holds one
    await log_.stop()
    steps = await pg_pool.fetch(
        "SELECT step FROM ussd_steps WHERE session_id = $1 ORDER BY step", session
    )
    assert [r["step"] for r in steps] == [0, 1, 2]
    assert (log_.written, log_.dropped) == (3, 0)
