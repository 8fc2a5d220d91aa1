"""Sessions under stress, over HTTP with real Redis and PostgreSQL: repeated and concurrent
callbacks, expiry, Redis going away mid-session, a core call that overruns the deadline, and
what is recorded (screens, outcomes; never a PIN)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import pytest
from redis.asyncio import Redis

from config.settings import Settings
from gateway.keys import MENU_BINDINGS, REDIS
from tests.ussd_support import RedisProcess, UssdEnv, new_msisdn, own_redis, start_env, ussd

__all__ = ["own_redis", "ussd"]

DEADLINE_S = 5.0


async def _until(predicate, timeout_s: float = DEADLINE_S):  # type: ignore[no-untyped-def]
    """Poll a condition until it holds (never a bare sleep as synchronisation)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.05)  # polling interval while waiting for the condition
    raise AssertionError("condition not met in time")


async def test_replayed_callback_returns_the_stored_reply_and_runs_nothing(
    ussd: UssdEnv,
) -> None:
    sender, recipient = new_msisdn(), new_msisdn()
    ussd.bank.open(sender, balance_minor=100_000)
    ussd.bank.open(recipient)
    s = ussd.session(sender)
    await s.walk("1", recipient, "100", "1")
    form = s.form("1234")
    before = ussd.bank.calls["send_money"]
    first = await s.post(form)
    again = await s.post(form)  # the aggregator retries the same hop
    third = await s.post(form)
    assert first.startswith("END Sent KES 100.00") and again == first and third == first
    assert ussd.bank.calls["send_money"] == before + 1
    assert ussd.bank.accounts[recipient].balance_minor == 10_000
    # An older hop arriving late gets the current answer, and runs nothing either.
    stale = s.form()
    stale["text"] = "1"
    assert await s.post(stale) == first


async def test_replayed_navigation_hop(ussd: UssdEnv) -> None:
    msisdn = new_msisdn()
    ussd.bank.open(msisdn)
    s = ussd.session(msisdn)
    await s.dial()
    form = s.form("6")
    one = await s.post(form)
    two = await s.post(form)
    assert one == two and "Change PIN" in one
    s.inputs.append("6")
    assert "Choose your language" in await s.send("2")  # the session did not move twice


async def test_two_concurrent_callbacks_for_one_session(ussd: UssdEnv) -> None:
    sender, recipient = new_msisdn(), new_msisdn()
    ussd.bank.open(sender, balance_minor=100_000)
    ussd.bank.open(recipient)
    s = ussd.session(sender)
    await s.walk("1", recipient, "100", "1")
    ussd.bank.gate = asyncio.Event()
    ussd.bank.entered.clear()
    before = ussd.bank.calls["send_money"]
    try:
        form = s.form("1234")
        first = asyncio.create_task(s.post(form))
        await asyncio.wait_for(ussd.bank.entered.wait(), DEADLINE_S)
        # Same hop, same input (a duplicate delivery): it waits for the first and gets its answer.
        duplicate = asyncio.create_task(s.post(form))
        # Same hop, another input (a conflicting request): a clear answer at once.
        conflict = s.form("9999")
        busy = await s.post(conflict)
        assert busy == "END Your previous request is still being processed. Please wait."
        assert not duplicate.done()
        ussd.bank.gate.set()
        one, two = await asyncio.gather(first, duplicate)
    finally:
        ussd.bank.gate = None
    assert one.startswith("END Sent KES 100.00") and two == one
    assert ussd.bank.calls["send_money"] == before + 1
    assert ussd.bank.accounts[recipient].balance_minor == 10_000


async def test_concurrent_navigation_moves_once(ussd: UssdEnv) -> None:
    msisdn = new_msisdn()
    ussd.bank.open(msisdn)
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

    await _until(expired)


async def test_session_expiry_latest_only_provider(short_ttl: UssdEnv) -> None:
    msisdn = new_msisdn()
    short_ttl.bank.open(msisdn)
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
    msisdn = new_msisdn()
    short_ttl.bank.open(msisdn)
    s = short_ttl.session(msisdn)
    await s.dial()
    await _gone(
        short_ttl, f"{short_ttl.settings.redis_prefix}ussd:{{africastalking:{s.session_id}}}"
    )
    assert await s.send("2") == "CON Enter your PIN:"


async def test_end_of_session_notification(ussd: UssdEnv) -> None:
    msisdn = new_msisdn()
    ussd.bank.open(msisdn)
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
    # The session is closed: a late hop gets the last answer, and runs nothing.
    before = ussd.bank.calls["balance"]
    assert await s.send("1234") == "CON Enter your PIN:"
    assert ussd.bank.calls["balance"] == before


# --- Redis stopped mid-session ----------------------------------------------------------------


async def test_redis_stopped_mid_session(settings: Settings, own_redis: RedisProcess) -> None:
    async for env in start_env(settings, redis_url=own_redis.url):
        msisdn = new_msisdn()
        env.bank.open(msisdn, balance_minor=100)
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
    sender, recipient = new_msisdn(), new_msisdn()
    slow.bank.open(sender, balance_minor=100_000)
    slow.bank.open(recipient)
    slow.bank.delay_s = 1.5
    try:
        s = slow.session(sender)
        await s.walk("1", recipient, "100", "1")
        started = time.monotonic()
        body = await s.send("1234")
        took = time.monotonic() - started
        assert body == ("END We are still processing your request. The result will come by SMS.")
        assert took < 1.4
        await asyncio.wait_for(slow.notifier.event.wait(), DEADLINE_S)
    finally:
        slow.bank.delay_s = 0.0
    [sms] = [m for m in slow.notifier.sent if m.msisdn == sender]
    assert sms.text.startswith("Sent KES 100.00 to Amina. Fee KES 1.00. Ref TX")
    assert sms.kind == "ussd.late_result"
    assert slow.bank.accounts[recipient].balance_minor == 10_000
    # The aggregator retries the hop: the stored answer, no second transfer.
    assert await s.post(s.form()) == body
    assert slow.bank.calls["send_money"] == 1


# --- what is recorded -------------------------------------------------------------------------


async def test_steps_are_recorded_and_pins_never_stored_or_logged(
    ussd: UssdEnv, pg_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    msisdn = new_msisdn()
    pin = "7391"
    ussd.bank.open(msisdn, pin=pin, balance_minor=5_00)
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

    recorded = await _until(rows)
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
        assert secret not in caplog.text
        dump = await pg_pool.fetchval(
            "SELECT count(*) FROM ussd_steps WHERE session_id = $1 AND input LIKE $2",
            s.session_id,
            f"%{secret}%",
        )
        assert dump == 0
    contexts = [c for c in ussd.bank.seen_contexts if c.msisdn == msisdn and c.secrets]
    assert contexts and all(pin not in repr(c) for c in contexts)
    metrics = await (await ussd.client.get("/metrics")).text()
    assert 'gateway_ussd_steps_total{outcome="end",provider="africastalking"}' in metrics


async def test_unbound_action_is_temporarily_unavailable(settings: Settings) -> None:
    """Before the core binding, a menu whose action has no implementation says so, cleanly."""
    async for env in start_env(settings):
        env.app[MENU_BINDINGS].functions.pop("customer.lookup")
        s = env.session(new_msisdn())
        body = await s.dial()
        assert body == "END The service is temporarily unavailable. Please try again later."
