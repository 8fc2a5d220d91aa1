"""Promises of a result by SMS for the USSD actions that move no money: a balance, a statement
(reads), a registration and a PIN change (changes). They are kept like money's (menus.pending):
a record in Redis, settled by whichever instance takes it once its owner is gone.

Instance A (a short deadline and liveness TTL) answers "the result will come by SMS" while its
action hangs, as in a process that died: before the core call, or (a change) after it. Then A
dies (no sweeps, its liveness key expiring by its TTL) and instance B's sweep keeps the
promise: a read is told "could not be completed, nothing changed, try again"; a change done
under the step's key is told done; one not done is abandoned under its key and told "did not
go through, nothing changed". A waking afterwards applies nothing and sends nothing more. An
owner that lives and completes sends its own result, and no sweep adds one; two sweepers
racing for one promise send one SMS. The real banking core, Redis and PostgreSQL; the ledger
check after every test, and no promise left behind."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

import pytest
from redis.asyncio import Redis

from config.settings import Settings
from core import errors as E
from core.customers import find_customer
from core.pins import verify_pin
from gateway.keys import MENU_BINDINGS, USSD_PENDING, USSD_SERVICE
from menus.actions import ActionContext, ActionResult
from menus.engine import LATE_ACTION_LIMIT_S
from menus.messages import done_text, not_done_text
from menus.pending import PendingSweeper
from tests.helpers import new_msisdn
from tests.integration.test_ussd_liveness import crash, late_actions_done
from tests.integration.test_ussd_pending import promise, put
from tests.ussd_support import (
    PIN,
    AtSession,
    UssdEnv,
    nothing_changed_under_abandoned_requests,
    pending_records,
    start_env,
    swept,
)

DEADLINE_A_S = 1.5
TTL_S = 0.5
NEW_PIN = "7391"
DEAD = "0123456789ab"  # an instance id with no liveness key
PENDING = {
    "en": "END We are still processing your request. The result will come by SMS.",
    "sw": "END Bado tunashughulikia ombi lako. Utapokea jibu kwa SMS.",
    "fr": "END Votre demande est en cours. Le résultat vous sera envoyé par SMS.",
}
READS = ("balance", "statement")
ACTIONS = ("balance", "statement", "register", "pin.change")
T = TypeVar("T")


@dataclass
class Started:
    """A customer at the last input of `action`: the session, the number, that input, and the
    language the customer is told in."""

    session: AtSession
    msisdn: str
    last: str
    language: str


async def at_last_input(env: UssdEnv, action: str) -> Started:
    bank = env.bank
    if action == "balance":
        msisdn = await bank.open(balance_minor=50_000, language="sw")
        s = env.session(msisdn)
        await s.walk("2")
        return Started(s, msisdn, PIN, "sw")
    if action == "statement":
        msisdn = await bank.open(balance_minor=50_000, language="fr")
        s = env.session(msisdn)
        await s.walk("4")
        return Started(s, msisdn, PIN, "fr")
    if action == "register":
        msisdn = new_msisdn()
        s = env.session(msisdn)
        national_id = "ID" + secrets.token_hex(4).upper()
        assert "PIN again" in await s.walk("1", "Neema", "Achieng", national_id, PIN)
        return Started(s, msisdn, PIN, "en")
    assert action == "pin.change"
    msisdn = await bank.open(language="sw")
    s = env.session(msisdn)
    await s.walk("6", "1", PIN, NEW_PIN)
    return Started(s, msisdn, NEW_PIN, "sw")


async def late_results(env: UssdEnv, msisdn: str) -> list[str]:
    return [r["body"] for r in await env.bank.outbox(msisdn, "ussd.late_result")]


async def unchanged(env: UssdEnv, action: str, msisdn: str) -> None:
    """Nothing of `action` was applied for `msisdn`."""
    pool = env.bank.pool
    if action == "register":
        assert await find_customer(pool, msisdn) is None
    elif action == "pin.change":
        await verify_pin(pool, msisdn, PIN)
        failures = "SELECT pin_failures FROM customers WHERE msisdn = $1"
        assert await pool.fetchval(failures, msisdn) == 0
        assert await env.bank.status(msisdn) == "active"


async def applied(env: UssdEnv, action: str, msisdn: str) -> None:
    pool = env.bank.pool
    if action == "register":
        found = await find_customer(pool, msisdn)
        assert found is not None and found.first_name == "Neema"
    else:
        await verify_pin(pool, msisdn, NEW_PIN)


class Hang:
    """A's `action` stops for good (until `woken`), as in a process that died: before the core
    call (nothing done) or after it (`done`: the change made, its answer never used). Woken, it
    goes on as a paused process would: the call under the step's key, or its answer."""

    def __init__(self, env: UssdEnv, action: str, *, done: bool) -> None:
        self.functions = env.app[MENU_BINDINGS].functions
        self.action = action
        self.real = self.functions[action]
        self.done = done
        self.reached = asyncio.Event()
        self.woken = asyncio.Event()
        self.functions[action] = self

    async def __call__(self, ctx: ActionContext) -> ActionResult:
        result = await self.real(ctx) if self.done else None
        self.reached.set()
        await self.woken.wait()
        return result if result is not None else await self.real(ctx)

    def restore(self) -> None:
        self.woken.set()
        self.functions[self.action] = self.real


@pytest.fixture(scope="module")
async def b(settings: Settings) -> AsyncIterator[UssdEnv]:
    async for env in start_env(settings):
        yield env


@pytest.fixture
async def a(settings: Settings) -> AsyncIterator[UssdEnv]:
    """Instance A, one per test (a test may crash it)."""
    async for env in start_env(settings, ussd_deadline_s=DEADLINE_A_S, ussd_liveness_ttl_s=TTL_S):
        yield env


@pytest.fixture(autouse=True)
async def ledger_ok(b: UssdEnv) -> AsyncIterator[None]:
    yield
    await b.bank.check_ledger()
    await nothing_changed_under_abandoned_requests(b.bank.pool)
    assert await pending_records(b) == []  # every promise kept


CASES = [
    *((action, False) for action in ACTIONS),
    ("register", True),
    ("pin.change", True),
]


@pytest.mark.parametrize(
    ("action", "done"),
    CASES,
    ids=[f"{a}-{'done' if d else 'not_done'}" for a, d in CASES],
)
async def test_a_dead_owners_promise_is_kept_by_another_instance_once(
    a: UssdEnv, b: UssdEnv, redis: Redis, action: str, done: bool
) -> None:
    """A answered "by SMS" and died. B's sweep tells the customer once, in their language: a
    read could not be completed; a change done under its key is told done; one not done is
    abandoned, and A waking afterwards (the right PIN, the same key) applies nothing."""
    at = await at_last_input(a, action)
    hang = Hang(a, action, done=done)
    try:
        assert await at.session.send(at.last) == PENDING[at.language]
        assert hang.reached.is_set()
        [pending] = await pending_records(b)
        assert (pending.action, pending.msisdn, pending.language) == (
            action,
            at.msisdn,
            at.language,
        )
        await a.app[USSD_PENDING].stop()  # a dead process sweeps nothing either
        await crash(a, redis)
        await swept(b)
        if done:
            expected = [done_text(action, at.language)]
        else:
            expected = [not_done_text(action, at.language)]
        assert await late_results(b, at.msisdn) == expected
        hang.woken.set()  # the paused owner wakes up and goes on under the step's key
        await late_actions_done(a)
    finally:
        hang.restore()
    assert await late_results(b, at.msisdn) == expected  # nothing more
    if done:
        await applied(b, action, at.msisdn)
    elif action not in READS:
        await unchanged(b, action, at.msisdn)
        table = await b.bank.pool.fetchval(
            "SELECT action FROM action_abandoned WHERE msisdn = $1 AND idempotency_key = $2",
            at.msisdn,
            pending.key,
        )
        assert table == action


@pytest.mark.parametrize("action", ACTIONS)
async def test_a_live_owner_past_the_late_limit_keeps_the_promise_itself(
    a: UssdEnv, b: UssdEnv, action: str
) -> None:
    """A's action still hangs at the late limit: A stops waiting and settles the promise itself
    (no record needed for that): the read told it could not be completed, the change not made
    abandoned under its key and told so. The step asked again afterwards applies nothing."""
    at = await at_last_input(a, action)
    engine = a.app[USSD_SERVICE].engine
    engine.late_limit_s = 1.0
    hang = Hang(a, action, done=False)
    try:
        assert await at.session.send(at.last) == PENDING[at.language]
        [pending] = await pending_records(b)
        await late_actions_done(a)  # the limit: the hung call is cancelled, the promise kept
    finally:
        hang.restore()
        engine.late_limit_s = LATE_ACTION_LIMIT_S
    assert await pending_records(b) == []
    assert await late_results(b, at.msisdn) == [not_done_text(action, at.language)]
    if action not in READS:
        with pytest.raises(E.ActionAbandoned):
            await woken(b, action, at.msisdn, pending.key)
        await unchanged(b, action, at.msisdn)
    assert len(await late_results(b, at.msisdn)) == 1


OWN_RESULT: dict[str, Callable[[str], bool]] = {
    "balance": lambda body: body == "Salio lako ni KES 500.00.",
    "statement": lambda body: body.startswith("Relevé. Solde KES 500.00"),
    "register": lambda body: body == "You are registered, Neema. Dial again to use your wallet.",
    "pin.change": lambda body: body == "PIN yako imebadilishwa.",
}


@pytest.mark.parametrize("action", ACTIONS)
async def test_a_live_owner_that_completes_sends_its_own_result_and_no_sweep_adds_one(
    a: UssdEnv, b: UssdEnv, action: str
) -> None:
    at = await at_last_input(a, action)
    hang = Hang(a, action, done=False)
    try:
        assert await at.session.send(at.last) == PENDING[at.language]
        [record] = await b.app[USSD_PENDING].store.oldest()
        assert await b.app[USSD_PENDING].sweep() == 0  # its owner lives: left to it
        assert await b.app[USSD_PENDING].store.oldest() == [record]
        hang.woken.set()
        await late_actions_done(a)
    finally:
        hang.restore()
    assert await pending_records(b) == []  # the owner dropped its kept promise
    assert await b.app[USSD_PENDING].sweep() == 0
    [told] = await late_results(b, at.msisdn)
    assert OWN_RESULT[action](told), told
    if action not in READS:
        await applied(b, action, at.msisdn)


async def race(*calls: Awaitable[T]) -> list[T]:
    return list(await asyncio.gather(*calls))


@pytest.mark.parametrize("action", ACTIONS)
async def test_two_sweepers_racing_for_one_promise_send_one_sms(
    b: UssdEnv, settings: Settings, action: str
) -> None:
    """Two instances sweep at once (the compare-and-set lets one take the record); and, what
    a paused sweeper could do, two settle the same promise at once: still one SMS, one
    abandonment, nothing applied."""
    msisdn = await b.bank.open(balance_minor=50_000, language="fr")
    if action == "register":
        msisdn = new_msisdn()
    mine = b.app[USSD_PENDING]
    async for c in start_env(settings):
        theirs: PendingSweeper = c.app[USSD_PENDING]
        for sweeper in (mine, theirs):
            await sweeper.stop()  # no background sweep in the way of the counts
        first = promise(
            msisdn, key=f"ussd:race{secrets.token_hex(6)}:1:x", action=action, language="fr"
        )
        await put(b, first, DEAD)
        assert sum(await race(mine.sweep(), theirs.sweep())) == 1
        second = promise(
            msisdn, key=f"ussd:race{secrets.token_hex(6)}:1:x", action=action, language="fr"
        )
        settled = await race(
            mine.settler.settle_or_abandon(second), theirs.settler.settle_or_abandon(second)
        )
        assert settled == [False, False]
    mine.start()
    told = not_done_text(action, "fr")
    assert await late_results(b, msisdn) == [told, told]  # one per promise
    if action not in READS:
        rows = await b.bank.pool.fetchval(
            "SELECT count(*) FROM action_abandoned WHERE msisdn = $1", msisdn
        )
        assert rows == 2
        for key in (first.key, second.key):
            with pytest.raises(E.ActionAbandoned):
                await woken(b, action, msisdn, key)
        await unchanged(b, action, msisdn)


async def woken(
    env: UssdEnv, action: str, msisdn: str, key: str, *, again: bool = True
) -> ActionResult:
    """The step asked again under `key` now (a paused owner waking up, with the right PIN)."""
    ctx = ActionContext(
        action=action,
        msisdn=msisdn,
        language="fr",
        vars=MappingProxyType({"first_name": "Neema", "last_name": "Achieng"}),
        secrets=MappingProxyType(
            {"pin": PIN, "new_pin": NEW_PIN, "national_id": "ID" + secrets.token_hex(4).upper()}
        ),
        customer=MappingProxyType({}),
        params=MappingProxyType({}),
        idempotency_key=key,
        channel="ussd",
        session_id="woken",
        currency="KES",
        again=again,
    )
    fn = env.app[MENU_BINDINGS].function(action)
    assert fn is not None
    return await fn(ctx)


async def test_a_registration_asked_again_under_its_key_answers_the_customer_it_made(
    b: UssdEnv,
) -> None:
    """A late answer lost after the registration committed: the owner asks again under the
    step's key (a registration changes something: asked again, not told "unavailable") and
    gets the customer it made, not "already registered"; so does the step run again by
    another instance (a dead claim taken over). Another request (another key) for the number
    is still "already registered"."""
    msisdn, key = new_msisdn(), f"ussd:again{secrets.token_hex(6)}:1:reg_do"
    first = await woken(b, "register", msisdn, key, again=False)
    for again in (True, False):
        repeated = await woken(b, "register", msisdn, key, again=again)
        assert repeated.vars == first.vars == {"first_name": "Neema"}
        assert repeated.customer is not None and repeated.customer["registered"] is True
    with pytest.raises(E.AlreadyExists):
        await woken(b, "register", msisdn, key + "x")
    assert b.app[MENU_BINDINGS].settler.changes("register")
    assert not b.app[MENU_BINDINGS].settler.changes("balance")
