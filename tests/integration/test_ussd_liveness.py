"""Two gateway instances on one Redis and PostgreSQL, and a crash of one in the middle of a step
with side effects (send money). Instance A's step is stopped for good at a chosen point (a
session write waits on an event, as a dead process would never make it), then A "dies": its
liveness refresher stops and its key expires by its TTL, as after a crash. Instance B gets the
provider's retry of the hop. The real banking core moves the money; the ledger check runs after
every test.

B's Redis goes through a `CuttableProxy`, so its liveness check alone can be cut at the network.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis

from config.settings import Settings
from gateway.app import make_redis
from gateway.keys import MENU_BINDINGS, METRICS, USSD_PENDING, USSD_SERVICE
from menus.actions import ActionContext, ActionResult
from menus.liveness import Liveness, liveness_key
from menus.service import STALE_CLAIM_GRACE_S, UssdService
from menus.session import RedisSessionStore, Session
from tests.helpers import eventually
from tests.tcp_proxy import CuttableProxy, redis_url_via, running_redis_proxy
from tests.ussd_support import (
    PIN,
    AtSession,
    RedisProcess,
    UssdEnv,
    moved_once,
    own_redis,
    pending_records,
    ready_to_send,
    start_env,
    swept,
)

__all__ = ["own_redis"]

DEADLINE_A_S = 1.5  # instance A: its claim covers its key until ~2.5 s after the hop began
DEADLINE_B_S = 4.0  # instance B: long enough to poll past A's key expiring
TTL_S = 0.5  # A's liveness TTL: short, so a crash is seen quickly
OUTAGE = 1_000_000
BUSY = "END Your previous request is still being processed. Please wait."
PENDING = "END We are still processing your request. The result will come by SMS."
NOT_DONE = (
    "Your transfer did not go through and no money was taken from your account. "
    "You may send it again."
)
CLAIM = '"f":{"hop"'  # in the session write that claims a hop with side effects
CLOSING = '"e":true'  # in the session write that stores the step's END screen
WAIT_S = 10.0


class Stall:
    """Stops a step at one session write for good (until `release`), as a crash would: the
    first write containing `marker` waits, before it is sent (`after=False`) or once it has
    landed (`after=True`)."""

    def __init__(self, store: RedisSessionStore, marker: str, *, after: bool) -> None:
        self.store, self.marker, self.after = store, marker, after
        self.real = store.save
        self.reached = asyncio.Event()
        self.released = asyncio.Event()

    async def save(
        self, key: str, expected: int | None, raw: str, ttl_s: int, parsed: Session | None = None
    ) -> tuple[bool, Any]:
        if self.marker not in raw or self.reached.is_set():
            return await self.real(key, expected, raw, ttl_s, parsed)
        if self.after:
            result = await self.real(key, expected, raw, ttl_s, parsed)
            self.reached.set()
            await self.released.wait()
            return result
        self.reached.set()
        await self.released.wait()
        return await self.real(key, expected, raw, ttl_s, parsed)


class Loads:
    """Counts a store's reads of one session key (B's first read, then one per busy poll);
    while `gate` is set to an event, a read of that key waits for it first."""

    def __init__(self, store: RedisSessionStore, key: str) -> None:
        self.store, self.key, self.real, self.count = store, key, store.load, 0
        self.gate: asyncio.Event | None = None

    async def load(self, key: str) -> Any:
        if key == self.key:
            self.count += 1
            if self.gate is not None:
                await self.gate.wait()
        return await self.real(key)


def service(env: UssdEnv) -> UssdService:
    return env.app[USSD_SERVICE]  # type: ignore[no-any-return]


def store_of(env: UssdEnv) -> RedisSessionStore:
    store = service(env).store
    assert isinstance(store, RedisSessionStore)
    return store


def liveness_of(env: UssdEnv) -> Liveness:
    liveness = service(env).liveness
    assert liveness is not None
    return liveness


def takeovers(env: UssdEnv, reason: str) -> float:
    value = env.app[METRICS].registry.get_sample_value(
        "gateway_ussd_claim_takeovers_total", {"reason": reason}
    )
    return value or 0.0


@pytest.fixture(scope="module")
async def proxy(settings: Settings) -> AsyncIterator[CuttableProxy]:
    assert settings.redis_url is not None
    async with running_redis_proxy(settings.redis_url) as relay:  # TCP or a unix socket
        yield relay


@pytest.fixture(scope="module")
async def b(settings: Settings, proxy: CuttableProxy) -> AsyncIterator[UssdEnv]:
    """Instance B, its Redis through the proxy."""
    assert settings.redis_url is not None
    via = redis_url_via(settings.redis_url, proxy.port)
    async for env in start_env(settings, redis_url=via, ussd_deadline_s=DEADLINE_B_S):
        yield env


@pytest.fixture
async def a(settings: Settings) -> AsyncIterator[UssdEnv]:
    """Instance A, one per test (a test may crash it)."""
    async for env in start_env(settings, ussd_deadline_s=DEADLINE_A_S, ussd_liveness_ttl_s=TTL_S):
        yield env


@pytest.fixture(autouse=True)
async def ledger_ok(b: UssdEnv, proxy: CuttableProxy) -> AsyncIterator[None]:
    # The `redis` fixture deletes every key of the run's prefix after a test, B's liveness key
    # too: B, alive, must not look dead to the next test before its refresher runs again.
    await liveness_of(b).refresh()
    yield
    proxy.restore()
    await b.bank.check_ledger()


@asynccontextmanager
async def stalled(env: UssdEnv, marker: str, *, after: bool) -> AsyncIterator[Stall]:
    """A's session writes go through a `Stall` (released at the end, so the step finishes)."""
    store = store_of(env)
    stall = Stall(store, marker, after=after)
    store.save = stall.save  # type: ignore[method-assign]
    try:
        yield stall
    finally:
        stall.released.set()
        del store.save


def on(env: UssdEnv, s: AtSession) -> AtSession:
    """The same USSD session, its callbacks now delivered to `env` (another instance)."""
    moved = env.session(s.msisdn, session_id=s.session_id)
    moved.inputs = list(s.inputs)
    return moved


async def started(post: Awaitable[str], stall: Stall) -> asyncio.Task[str]:
    task = asyncio.ensure_future(post)
    await asyncio.wait_for(stall.reached.wait(), WAIT_S)
    return task


async def crash(env: UssdEnv, redis: Redis) -> None:
    """What Redis sees of a crash: no more refreshes, no DEL; the key expires by its TTL (or
    the cover of the claim made last, which lasts until that step's deadline)."""
    liveness = liveness_of(env)
    await liveness.stop(delete=False)
    await eventually(lambda: redis.exists(liveness.key), lambda n: n == 0, timeout_s=WAIT_S)


async def late_actions_done(env: UssdEnv) -> None:
    engine = service(env).engine
    await engine.drain(WAIT_S)
    assert not engine._late


async def timed(call: Callable[[], Awaitable[str]], limit_s: float) -> str:
    begun = time.monotonic()
    body = await call()
    assert time.monotonic() - begun < limit_s, body
    return body


# --- a crashed instance ----------------------------------------------------------------------


async def test_a_crashed_instance_s_claim_is_taken_over_at_once(
    a: UssdEnv, b: UssdEnv, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A moves the money and dies before storing the receipt. B runs the hop sent again at
    once: the same idempotency key, so the core answers with the same transfer."""
    caplog.set_level(logging.WARNING, logger="menus.service")
    s, sender, recipient = await ready_to_send(a)
    form = s.form(PIN)
    before, calls = takeovers(b, "instance"), b.calls["send_money"]
    async with stalled(a, CLOSING, after=False) as stall:
        first = await started(s.post(form), stall)
        assert a.calls["send_money"] == 1  # the money moved; the receipt is not stored
        await moved_once(a, sender, recipient)
        await crash(a, redis)
        receipt = await timed(lambda: on(b, s).post(form), DEADLINE_B_S)
        assert receipt.startswith("END KES 100.00 sent to Neema Achieng"), receipt
        assert b.calls["send_money"] == calls + 1
        await moved_once(b, sender, recipient)
        assert takeovers(b, "instance") == before + 1
        exposed = await (await b.client.get("/metrics")).text()
        assert 'gateway_ussd_claim_takeovers_total{reason="instance"}' in exposed
        stall.released.set()
        # A's step "comes back": its write finds B's and it answers what it did.
        assert (await first).startswith("END KES 100.00 sent to Neema Achieng")
    assert await on(b, s).post(form) == receipt  # a retry: the stored receipt, nothing runs
    assert b.calls["send_money"] == calls + 1
    await moved_once(b, sender, recipient)
    key = store_of(b).key("africastalking", s.session_id)
    warned = [r for r in caplog.records if r.getMessage() == "ussd: a dead claim was taken over"]
    assert [(getattr(r, "key", None), getattr(r, "reason", None)) for r in warned] == [
        (key, "instance")
    ]
    assert all(PIN not in str(r.__dict__) for r in caplog.records)


class Hang:
    """A's send money stops for good (until `woken`), as in a process that died: before the
    core call (nothing moved) or after it (the money moved, the answer never used). Woken, it
    goes on as a paused process would: the call, under the step's key, or its answer."""

    def __init__(self, env: UssdEnv, *, moved: bool) -> None:
        self.functions = env.app[MENU_BINDINGS].functions
        self.real = self.functions["send_money"]
        self.moved = moved
        self.reached = asyncio.Event()
        self.woken = asyncio.Event()

    async def __call__(self, ctx: ActionContext) -> ActionResult:
        result = await self.real(ctx) if self.moved else None
        self.reached.set()
        await self.woken.wait()
        return result if result is not None else await self.real(ctx)


async def late_results(env: UssdEnv, msisdn: str) -> list[tuple[str, str]]:
    return [(r["kind"], r["body"]) for r in await env.bank.outbox(msisdn, "ussd.late_result")]


@pytest.mark.parametrize("moved", [False, True], ids=["before_the_money", "after_the_money"])
async def test_a_crashed_instance_s_promised_result_is_kept_by_another(
    a: UssdEnv, b: UssdEnv, redis: Redis, moved: bool
) -> None:
    """A answered "the result will come by SMS" (its send money past A's deadline) and dies.
    B's sweep takes A's pending record: the transfer that committed is the result (its
    receipt; no SMS beside it), or nothing moved and the key is abandoned, the customer told
    once. A waking up afterwards moves nothing and sends nothing."""
    s, sender, recipient = await ready_to_send(a)
    hang = Hang(a, moved=moved)
    a.app[MENU_BINDINGS].functions["send_money"] = hang
    try:
        assert await s.send(PIN) == PENDING
        assert hang.reached.is_set()
        [promise] = await pending_records(b)
        assert promise.msisdn == sender and promise.action == "send_money"
        await a.app[USSD_PENDING].stop()  # a dead process sweeps nothing either
        await crash(a, redis)
        await swept(b)
        told = await late_results(b, sender)
        hang.woken.set()
        await late_actions_done(a)
    finally:
        hang.woken.set()
        hang.functions["send_money"] = hang.real
    # The same messages (the dispatcher may have sent them meanwhile: status is not compared).
    assert await late_results(b, sender) == told
    if moved:
        await moved_once(b, sender, recipient)
        assert told == []
        receipts = await b.bank.outbox(sender, "receipt")
        assert [r["template"] for r in receipts] == ["deposit_received", "p2p_sent"]
    else:
        assert told == [("ussd.late_result", NOT_DONE)]
        assert await b.bank.balance(sender) == 100_000
        assert await b.bank.transfers(recipient) == 0
    assert await on(b, s).post(s.form()) == PENDING  # the hop again: the stored END


async def test_a_live_but_slow_instance_keeps_its_claim(
    a: UssdEnv, b: UssdEnv, redis: Redis
) -> None:
    """A claimed and is still working (its key is fresh): B's copy of the hop waits, then
    answers "still processing" as before, and runs nothing."""
    s, sender, recipient = await ready_to_send(a)
    form = s.form(PIN)
    calls = b.calls["send_money"]
    async with stalled(a, CLAIM, after=True) as stall:
        first = await started(s.post(form), stall)
        assert await redis.exists(liveness_of(a).key) == 1
        assert await on(b, s).post(form) == BUSY
        assert b.calls["send_money"] == calls
        assert await b.bank.transfers(recipient) == 0
        stall.released.set()
        # Past its deadline now, A's step answers "by SMS" and its action finishes late.
        assert await first == PENDING
    await late_actions_done(a)
    assert await on(b, s).post(form) == PENDING
    assert (a.calls["send_money"], b.calls["send_money"]) == (1, calls)
    await moved_once(b, sender, recipient)


async def test_liveness_unknown_keeps_the_grace_rule(
    a: UssdEnv,
    b: UssdEnv,
    redis: Redis,
    proxy: CuttableProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A died after claiming, but B cannot ask Redis whether A lives: B must not run the step
    on a guess, so the claim blocks as under the grace rule. Once B can ask, it takes over."""
    s, sender, recipient = await ready_to_send(a)
    form = s.form(PIN)
    calls = b.calls["send_money"]
    caplog.set_level(logging.WARNING, logger="menus.service")
    async with stalled(a, CLAIM, after=True) as stall:
        first = await started(s.post(form), stall)
        await crash(a, redis)
        proxy.cut_on(f"ussd:live:{liveness_of(a).instance}".encode(), refuse=OUTAGE)
        tripped = proxy.tripped
        other = on(b, s)
        assert await other.post(other.form("1234")) == BUSY  # another input: no poll
        assert proxy.tripped == tripped + 1  # the check was sent, and cut
        asked = "ussd: the claim's instance could not be asked; the grace rule applies"
        key = store_of(b).key("africastalking", s.session_id)
        assert [getattr(r, "key", None) for r in caplog.records if r.getMessage() == asked] == [key]
        assert b.calls["send_money"] == calls
        proxy.restore()
        receipt = await timed(lambda: on(b, s).post(form), DEADLINE_B_S)
        assert receipt.startswith("END KES 100.00 sent to Neema Achieng"), receipt
        assert b.calls["send_money"] == calls + 1
        await moved_once(b, sender, recipient)
        stall.released.set()
        # A's step runs its action late, under the same idempotency key: nothing moves again.
        assert await first == PENDING
    await late_actions_done(a)
    assert a.calls["send_money"] == 1
    await moved_once(b, sender, recipient)


async def test_a_polling_copy_runs_the_step_when_the_claim_dies(
    a: UssdEnv, b: UssdEnv, redis: Redis
) -> None:
    """B's copy of the hop is polling for A's answer when A dies: it stops polling and runs
    the step itself (through the compare-and-set), instead of answering "still processing"."""
    s, sender, recipient = await ready_to_send(a)
    form = s.form(PIN)
    calls = b.calls["send_money"]
    store = store_of(b)
    loads = Loads(store, store.key("africastalking", s.session_id))
    store.load = loads.load  # type: ignore[method-assign]
    try:
        async with stalled(a, CLAIM, after=True) as stall:
            first = await started(s.post(form), stall)
            begun = time.monotonic()
            copy = asyncio.ensure_future(on(b, s).post(form))
            await eventually(lambda: loads.count >= 2, timeout_s=WAIT_S)  # it polls
            assert not copy.done()
            await crash(a, redis)
            receipt = await asyncio.wait_for(copy, WAIT_S)
            assert time.monotonic() - begun < DEADLINE_B_S
            assert receipt.startswith("END KES 100.00 sent to Neema Achieng"), receipt
            assert b.calls["send_money"] == calls + 1
            await moved_once(b, sender, recipient)
            stall.released.set()
            # A's step runs its action late, under the same idempotency key.
            assert await first == PENDING
    finally:
        del store.load
    await late_actions_done(a)
    assert a.calls["send_money"] == 1
    await moved_once(b, sender, recipient)
    assert await on(b, s).post(form) == receipt


@pytest.mark.parametrize("held", [True, False], ids=["write_held", "write_dropped"])
async def test_a_polling_copy_on_the_instance_whose_last_write_failed(
    b: UssdEnv, proxy: CuttableProxy, held: bool
) -> None:
    """One instance: the first copy of the hop moves the money, its last write is cut at the
    network (the receipt is answered, not stored: the claim stays). Held
    (`menus.final_writes`), that write lands once Redis is back and the copy polling on the
    same instance answers its receipt: nothing runs again. Dropped (no room to hold it), the
    claim is dead for its own instance: the polling copy runs the step (reason "own")."""
    s, sender, recipient = await ready_to_send(b)
    form = s.form(PIN)
    calls, before = b.calls["send_money"], takeovers(b, "own")
    writes = service(b).final_writes
    limit = writes.limit
    functions = b.app[MENU_BINDINGS].functions
    real = functions["send_money"]
    moved, go = asyncio.Event(), asyncio.Event()

    async def hold(ctx: ActionContext) -> ActionResult:
        result = await real(ctx)
        moved.set()
        await go.wait()
        return result

    store = store_of(b)
    loads = Loads(store, store.key("africastalking", s.session_id))
    functions["send_money"] = hold
    store.load = loads.load  # type: ignore[method-assign]
    writes.limit = limit if held else 0
    try:
        first = asyncio.ensure_future(s.post(form))
        await asyncio.wait_for(moved.wait(), WAIT_S)
        copy = asyncio.ensure_future(s.post(form))
        await eventually(lambda: loads.count >= 2, timeout_s=WAIT_S)  # it polls
        loads.gate = asyncio.Event()  # its next read waits until the first copy has answered
        armed = loads.count
        # Waiting at the gate, it has no command in flight for the cut to take down.
        await eventually(lambda: loads.count > armed, timeout_s=WAIT_S)
        proxy.cut_on(CLOSING.encode(), refuse=OUTAGE)  # the write is cut, its resend refused
        go.set()
        receipt = await asyncio.wait_for(first, WAIT_S)
        assert receipt.startswith("END KES 100.00 sent to Neema Achieng"), receipt
        proxy.restore()
        loads.gate.set()
        assert await asyncio.wait_for(copy, WAIT_S) == receipt
    finally:
        go.set()
        functions["send_money"] = real
        writes.limit = limit
        del store.load
    if held:
        assert b.calls["send_money"] == calls + 1
        assert takeovers(b, "own") == before
    else:
        assert b.calls["send_money"] == calls + 2  # the second run: the same idempotency key
        assert takeovers(b, "own") == before + 1
    assert len(writes) == 0
    await moved_once(b, sender, recipient)
    assert await s.post(form) == receipt  # now stored


async def test_two_takers_of_one_dead_claim_run_the_step_once(
    a: UssdEnv, b: UssdEnv, redis: Redis
) -> None:
    """Two copies of the hop meet A's dead claim at once (on B and on a third instance): the
    compare-and-set lets one take it over; the other answers what the first one answers."""
    s, sender, recipient = await ready_to_send(a)
    form = s.form(PIN)
    calls = b.calls["send_money"]
    async for c in start_env(a.settings, ussd_deadline_s=DEADLINE_B_S):
        async with stalled(a, CLAIM, after=True) as stall:
            first = await started(s.post(form), stall)
            await crash(a, redis)
            answers = await asyncio.gather(on(b, s).post(form), on(c, s).post(form))
            assert b.calls["send_money"] - calls + c.calls["send_money"] == 1
            assert answers[0] == answers[1], answers
            assert answers[0].startswith("END KES 100.00 sent to Neema Achieng"), answers
            await moved_once(b, sender, recipient)
            stall.released.set()
            assert await first == PENDING
        await late_actions_done(a)
        assert a.calls["send_money"] == 1
        await moved_once(b, sender, recipient)


async def test_a_claim_without_its_instance_keeps_the_grace_rule(
    a: UssdEnv, b: UssdEnv, redis: Redis
) -> None:
    """A record from before claims named their instance (no "by"): nobody can be asked, so
    only its age decides. Once older than the deadline plus the grace period, it is taken
    over (counted as "stale")."""
    s, sender, recipient = await ready_to_send(a)
    form = s.form(PIN)
    calls, before = b.calls["send_money"], takeovers(b, "stale")
    store = store_of(b)
    key = store.key("africastalking", s.session_id)

    async def rewrite_claim(**changes: object) -> None:
        current = await store.load(key)
        assert current is not None
        record = current.session()
        assert record.inflight is not None
        record.inflight = {k: v for k, v in record.inflight.items() if k != "by"} | changes
        assert await store.save(key, current.version, record.to_json(), 600) == (True, None)

    async with stalled(a, CLAIM, after=True) as stall:
        first = await started(s.post(form), stall)
        await crash(a, redis)
        await rewrite_claim()
        other = on(b, s)
        assert await other.post(other.form("1234")) == BUSY
        assert b.calls["send_money"] == calls
        await rewrite_claim(at=time.time() - DEADLINE_B_S - STALE_CLAIM_GRACE_S - 1)
        receipt = await timed(lambda: on(b, s).post(form), DEADLINE_B_S)
        assert receipt.startswith("END KES 100.00 sent to Neema Achieng"), receipt
        assert b.calls["send_money"] == calls + 1
        assert takeovers(b, "stale") == before + 1
        stall.released.set()
        assert await first == PENDING
    await late_actions_done(a)
    await moved_once(b, sender, recipient)


# --- the liveness key ------------------------------------------------------------------------


async def test_the_key_lives_while_running_and_goes_on_a_clean_stop(
    settings: Settings, redis: Redis
) -> None:
    envs = start_env(settings, ussd_liveness_ttl_s=1.0)
    env = await anext(envs)
    liveness = liveness_of(env)
    try:
        assert liveness.running
        assert await redis.exists(liveness.key) == 1
        assert 0 < await redis.pttl(liveness.key) <= 1000
        first = await redis.get(liveness.key)
        await eventually(lambda: redis.get(liveness.key), lambda v: v not in (None, first))
    finally:
        await envs.aclose()
    assert not liveness.running
    assert await redis.exists(liveness.key) == 0


async def test_a_clean_stop_waits_for_claimed_steps(a: UssdEnv) -> None:
    """The key may go only once no claimed step runs (else another instance could run it
    again): `drain` says whether the steps are over."""
    s, sender, recipient = await ready_to_send(a)
    async with stalled(a, CLAIM, after=True) as stall:
        first = await started(s.post(s.form(PIN)), stall)
        assert not await service(a).drain(0.2)
        stall.released.set()
        assert await service(a).drain(WAIT_S)
        assert (await first).startswith("END KES 100.00 sent to Neema Achieng")
    await moved_once(a, sender, recipient)


async def test_a_cover_outlives_the_ttl_and_a_refresh_never_shortens_it(
    redis: Redis, redis_prefix: str
) -> None:
    store = RedisSessionStore(redis, redis_prefix)
    liveness = Liveness(store.link, redis_prefix, ttl_s=1.0)
    try:
        assert not await liveness.alive(liveness.instance)
        await liveness.start()
        assert await liveness.alive(liveness.instance)
        until = time.monotonic() + 5.0
        assert not liveness.covers(until)
        await liveness.cover(until)
        assert liveness.covers(until)
        assert await redis.pttl(liveness.key) > 5_000  # the step's deadline plus the margin
        await liveness.refresh()  # a refresh with the 1 s TTL
        assert await redis.pttl(liveness.key) > 5_000
        assert liveness_key(redis_prefix, liveness.instance) == liveness.key
    finally:
        await liveness.stop()
        await store.aclose()
    assert await redis.exists(liveness.key) == 0


async def test_the_refresher_outlives_a_redis_outage(
    own_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis down at start-up: the service still starts (the key is best effort), the refresher
    says so once, and sets the key as soon as Redis is back."""
    caplog.set_level(logging.WARNING, logger="menus.liveness")
    client = make_redis(own_redis.url)
    store = RedisSessionStore(client, "t:", io_timeout_s=0.5)
    liveness = Liveness(store.link, "t:", ttl_s=1.0)
    try:
        own_redis.stop()
        await liveness.start()
        assert liveness.running
        own_redis.start()  # same port, empty
        await eventually(lambda: liveness.alive(liveness.instance), timeout_s=WAIT_S)
        messages = [r.getMessage() for r in caplog.records]
        assert messages.count("ussd liveness: the key could not be refreshed") == 1
        assert "ussd liveness: the key is refreshed again" in messages
    finally:
        await liveness.stop()
        await store.aclose()
        await client.aclose()
