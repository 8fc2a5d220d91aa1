"""The sweep of promised late results (menus.pending) on a running gateway with the real core,
Redis and PostgreSQL: which records it takes (owner gone, released, past its limit) and which it
leaves (a live owner within the limit); records that are not ours (garbage, another type of key,
an index entry without its record, an action it does not settle) logged, set aside, and never
in the way of the others. The ledger check runs after every test."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import pytest

from gateway.keys import MENU_BINDINGS, USSD_PENDING
from menus.bindings import result_sms_key
from menus.liveness import liveness_key
from menus.pending import SWEEP_BATCH, Pending, PendingSweeper
from tests.ussd_support import UssdEnv, ussd  # noqa: F401 (fixture)

NOT_DONE = {
    "send_money": "Utumaji wako haukufanikiwa na hakuna pesa iliyotolewa kwenye akaunti yako. "
    "Unaweza kutuma tena.",
    "withdraw": "Utoaji wako haukufanikiwa na hakuna pesa iliyotolewa kwenye akaunti yako. "
    "Usipokee pesa taslimu kwa ajili yake; unaweza kujaribu tena.",
    "en": "Your transfer did not go through and no money was taken from your account. "
    "You may send it again.",
}
DEAD = "0123456789ab"  # an instance id with no liveness key


def sweeper(env: UssdEnv) -> PendingSweeper:
    return env.app[USSD_PENDING]


@pytest.fixture(autouse=True)
async def ledger_ok(ussd: UssdEnv) -> AsyncIterator[None]:  # noqa: F811
    # These tests sweep by hand; the app's own sweeps (every 5 s) would race them for the
    # same records (a record it took first would fail a test's `sweep() == 1`).
    await sweeper(ussd).stop()
    yield
    await ussd.bank.check_ledger()
    assert await sweeper(ussd).store.oldest() == []


def promise(
    msisdn: str,
    *,
    key: str,
    action: str = "send_money",
    language: str = "en",
    age_s: float = 5.0,
    limit_s: float = 600.0,
) -> Pending:
    promised = time.time() - age_s
    return Pending(
        key=key,
        action=action,
        msisdn=msisdn,
        language=language,
        menu="default",
        version=1,
        screen="send_do",
        promised_at=promised,
        until=promised + limit_s,
    )


async def put(env: UssdEnv, pending: Pending, owner: str) -> str:
    """Write `pending` as if `owner` had promised it."""
    store = sweeper(env).store
    await store.put(pending)
    record = store.record_key(pending.key)
    assert await store.link.command("HSET", record, "owner", owner) == 0
    return record


async def abandoned(env: UssdEnv, idempotency_key: str) -> bool:
    return bool(
        await env.bank.pool.fetchval(
            "SELECT count(*) FROM money_abandoned WHERE idempotency_key = $1", idempotency_key
        )
    )


def key(tag: str) -> str:
    return f"ussd:test{time.monotonic_ns()}:{tag}"


@pytest.mark.parametrize("action", ["send_money", "withdraw"])
async def test_a_dead_owners_promise_is_abandoned_once_in_the_customers_language(
    ussd: UssdEnv,  # noqa: F811
    action: str,
) -> None:
    customer = await ussd.bank.open(balance_minor=50_000, language="sw")
    pending = promise(customer, key=key("dead"), language="sw", action=action)
    await put(ussd, pending, DEAD)
    assert await sweeper(ussd).sweep() == 1
    [told] = await ussd.bank.outbox(customer, "ussd.late_result")
    assert told["body"] == NOT_DONE[action]
    assert await abandoned(ussd, pending.key)
    assert await sweeper(ussd).sweep() == 0  # gone: nothing to do again
    assert len(await ussd.bank.outbox(customer, "ussd.late_result")) == 1
    assert await ussd.bank.balance(customer) == 50_000


@pytest.mark.parametrize("whose", ["another_instance", "this_instance"])
async def test_a_live_owners_promise_is_left_to_it_until_past_its_limit(
    ussd: UssdEnv,  # noqa: F811
    whose: str,
) -> None:
    customer = await ussd.bank.open(balance_minor=50_000)
    liveness = sweeper(ussd).liveness
    owner = liveness.instance
    if whose == "another_instance":
        owner = "live-elsewhere"
        other = liveness_key(liveness.prefix, owner)
        await liveness.link.command("SET", other, "1", "PX", 60_000)
    try:
        young = await put(ussd, promise(customer, key=key("young")), owner)
        assert await sweeper(ussd).sweep() == 0
        assert await sweeper(ussd).store.oldest() == [young]
        assert await ussd.bank.outbox(customer, "ussd.late_result") == []
        await sweeper(ussd).store.done(young)
        # Past its limit and the grace, a live owner's record is taken all the same.
        await put(ussd, promise(customer, key=key("old"), age_s=700.0), owner)
        assert await sweeper(ussd).sweep() == 1
    finally:
        if whose == "another_instance":
            await liveness.link.command("DEL", other)
    [told] = await ussd.bank.outbox(customer, "ussd.late_result")
    assert told["body"] == NOT_DONE["en"]


async def test_an_orphan_behind_a_batch_of_live_promises_is_still_taken(
    ussd: UssdEnv,  # noqa: F811
) -> None:
    """A sweep reads the whole index in batches, not only the oldest batch."""
    customer = await ussd.bank.open()
    me = sweeper(ussd).liveness.instance
    live = [
        await put(ussd, promise(customer, key=key(f"live{n}"), age_s=10.0), me)
        for n in range(SWEEP_BATCH + 20)
    ]
    await put(ussd, promise(customer, key=key("orphan"), age_s=1.0), DEAD)
    try:
        assert await sweeper(ussd).sweep() == 1
        assert len(await ussd.bank.outbox(customer, "ussd.late_result")) == 1
        assert sorted(await sweeper(ussd).store.oldest(len(live) + 10)) == sorted(live)
    finally:
        for record in live:
            await sweeper(ussd).store.done(record)


async def test_a_result_sms_queued_first_stays_the_one_and_the_key_is_abandoned_still(
    ussd: UssdEnv,  # noqa: F811
) -> None:
    """The owner queued its late answer (a refusal, say) as the sweep abandons: the customer
    keeps that one SMS, and the key is abandoned all the same (no later ask moves money)."""
    customer = await ussd.bank.open()
    pending = promise(customer, key=key("raced"))
    notifier = ussd.app[MENU_BINDINGS].notifier
    assert notifier is not None
    first = "You have insufficient funds for this."
    await notifier.notify(
        msisdn=customer,
        text=first,
        kind="ussd.late_result",
        idempotency_key=result_sms_key(pending.key),
    )
    await put(ussd, pending, DEAD)
    assert await sweeper(ussd).sweep() == 1
    assert [r["body"] for r in await ussd.bank.outbox(customer, "ussd.late_result")] == [first]
    assert await abandoned(ussd, pending.key)


async def test_a_promise_released_by_its_owner_is_taken_at_once(
    ussd: UssdEnv,  # noqa: F811
) -> None:
    customer = await ussd.bank.open()
    await put(ussd, promise(customer, key=key("released"), age_s=0.0), "")
    assert await sweeper(ussd).sweep() == 1
    assert len(await ussd.bank.outbox(customer, "ussd.late_result")) == 1


async def test_a_claim_lost_to_another_instance_leaves_the_record_to_it(
    ussd: UssdEnv,  # noqa: F811
) -> None:
    """The compare-and-set: a claim that read an owner the record no longer has fails."""
    customer = await ussd.bank.open()
    store = sweeper(ussd).store
    record = await put(ussd, promise(customer, key=key("taken")), DEAD)
    assert await store.claim(record, "someone-else") is False
    assert await store.claim(record, DEAD) is True
    assert await store.claim(record, DEAD) is False  # it is this instance's now
    assert await store.release(record) is True
    assert await sweeper(ussd).sweep() == 1


GARBAGE: dict[str, tuple[str, ...]] = {
    "not_json": ("HSET", "{r}", "owner", DEAD, "data", "{not json"),
    "no_owner": ("HSET", "{r}", "data", "{}"),
    "old_version": ("HSET", "{r}", "owner", DEAD, "data", '{"v":0,"key":"k"}'),
    "bad_fields": (
        "HSET",
        "{r}",
        "owner",
        DEAD,
        "data",
        '{"v":1,"key":"","action":"send_money","msisdn":7,"language":"en","menu":"m",'
        '"version":1,"screen":"s","promised_at":1,"until":2}',
    ),
    "a_string": ("SET", "{r}", "hello"),
    "nothing": (),
}


async def test_garbage_is_logged_set_aside_and_never_blocks_a_good_record(
    ussd: UssdEnv,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="menus.pending")
    store = sweeper(ussd).store
    bad = []
    for name, command in GARBAGE.items():
        record = f"{store.index}:garbage-{name}-{time.monotonic_ns()}"
        if command:
            await store.link.command(*(record if a == "{r}" else a for a in command))
        await store.link.command("ZADD", store.index, 0, record)
        bad.append(record)
    customer = await ussd.bank.open()
    unknown = await put(ussd, promise(customer, key=key("unknown"), action="language.set"), DEAD)
    good = await put(ussd, promise(customer, key=key("good")), DEAD)
    assert await sweeper(ussd).sweep() == 1
    assert await store.oldest() == []
    errors = [r for r in caplog.records if r.name == "menus.pending"]
    assert len(errors) == len(GARBAGE) + 1
    assert {getattr(r, "record", None) for r in errors} == {*bad, unknown}
    assert len(await ussd.bank.outbox(customer, "ussd.late_result")) == 1
    assert await store.link.command("EXISTS", good) == 0
    # Set aside, not deleted: an operator can still read what was there, for a while.
    kept = await store.link.command("TTL", unknown)
    assert 0 < kept <= 7 * 24 * 3600
    caplog.clear()
    assert await sweeper(ussd).sweep() == 0
    assert [r for r in caplog.records if r.name == "menus.pending"] == []
    for record in [*bad, unknown]:
        await store.link.command("DEL", record)


async def test_a_record_this_release_cannot_read_is_left_while_its_owner_lives(
    ussd: UssdEnv,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A rolling upgrade: a newer release's record (another version) or an action only it
    settles. Set aside at once (found in review), its owner would keep its late task but no
    instance would keep the promise if that owner then died. Left while the owner lives; set
    aside once it is gone."""
    caplog.set_level(logging.WARNING, logger="menus.pending")
    customer = await ussd.bank.open()
    liveness = sweeper(ussd).liveness
    owner = "newer-release"
    alive = liveness_key(liveness.prefix, owner)
    await liveness.link.command("SET", alive, "1", "PX", 60_000)
    store = sweeper(ussd).store
    newer = await put(ussd, promise(customer, key=key("newer")), owner)
    await store.link.command("HSET", newer, "data", '{"v": 2, "something": "new"}')
    other = await put(ussd, promise(customer, key=key("other"), action="language.set"), owner)
    try:
        assert await sweeper(ussd).sweep() == 0
        assert sorted(await store.oldest()) == sorted([newer, other])
    finally:
        await liveness.link.command("DEL", alive)
    assert await sweeper(ussd).sweep() == 0
    assert await store.oldest() == []
    set_aside = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert {getattr(r, "record", None) for r in set_aside} == {newer, other}
    for record in (newer, other):
        await store.link.command("DEL", record)


async def test_a_settling_that_fails_unforeseen_is_asked_again_not_set_aside(
    ussd: UssdEnv,  # noqa: F811
) -> None:
    """An error no list foresaw (not Unavailable, not a refusal: a failover's, say) used to
    set the record aside for good, and the customer promised a result never got one (found
    in review). Now it is released and asked again at the next sweep."""
    customer = await ussd.bank.open(balance_minor=50_000)
    real = sweeper(ussd)
    failures = []

    class FailsOnce:
        def settles(self, action: str) -> bool:
            return real.settler.settles(action)

        async def settle_or_abandon(self, pending: Pending) -> bool:
            if not failures:
                failures.append(pending.key)
                raise RuntimeError("a database error no list foresaw")
            return await real.settler.settle_or_abandon(pending)

    flaky = PendingSweeper(real.store, real.liveness, FailsOnce())
    pending = promise(customer, key=key("flaky"))
    record = await put(ussd, pending, DEAD)
    assert await flaky.sweep() == 0
    assert failures == [pending.key]
    assert await real.store.oldest() == [record]  # released, not set aside
    assert await flaky.sweep() == 1
    [told] = await ussd.bank.outbox(customer, "ussd.late_result")
    assert told["body"] == NOT_DONE["en"]
    assert await abandoned(ussd, pending.key)
