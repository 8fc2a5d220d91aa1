"""A step's last session write that Redis did not take (`menus.final_writes`): held by its
instance and sent again, so that the claim it clears is released as soon as Redis answers.

Instance A's Redis goes through a `CuttableProxy`, cut exactly at the step's last write (the
write never reaches Redis; A's reconnects are refused until `restore()`); instance B reads and
writes Redis directly. A is alive all along (its liveness key fresh): before, B's retry of the
hop waited out the 30 s grace on A's claim. The real banking core moves the money; the ledger
check runs after every test. The bound and the stop are also tested on the held writes
themselves, with a session store through the same proxy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from config.settings import Settings
from gateway.app import make_redis
from gateway.keys import METRICS, USSD_SERVICE
from menus.final_writes import FinalWrite, FinalWrites
from menus.liveness import Liveness
from menus.service import STALE_CLAIM_GRACE_S, UssdService
from menus.session import RedisSessionStore, Session
from tests.helpers import eventually, new_msisdn
from tests.tcp_proxy import CuttableProxy, redis_url_via, running_redis_proxy
from tests.ussd_support import PIN, AtSession, UssdEnv, moved_once, ready_to_send, start_env

DEADLINE_A_S = 2.0
DEADLINE_B_S = 4.0
OUTAGE = 1_000_000  # refusals: an outage that lasts until `restore()`
DOWN = "END The service is temporarily unavailable. Please try again later."
CLOSING = b'"e":true'  # in the session write that stores a step's END screen
RELEASING = b'"f":null'  # in a step's last write (a claim's write has "f":{"hop"...})
RECEIPT = "END KES 100.00 sent to Neema Achieng"
# Redis back, a held write lands within its longest pause (1 s) and one round trip: "well
# within the grace" with room for a loaded machine.
RELEASE_S = 5.0
WAIT_S = 10.0


def service(env: UssdEnv) -> UssdService:
    return env.app[USSD_SERVICE]  # type: ignore[no-any-return]


def liveness_of(env: UssdEnv) -> Liveness:
    liveness = service(env).liveness
    assert liveness is not None
    return liveness


def counted(env: UssdEnv, family: str, label: str, value: str) -> float:
    found = env.app[METRICS].registry.get_sample_value(family, {label: value})
    return found or 0.0


def final_writes(env: UssdEnv, outcome: str) -> float:
    return counted(env, "gateway_ussd_final_writes_total", "outcome", outcome)


def on(env: UssdEnv, s: AtSession) -> AtSession:
    """The same USSD session, its callbacks now delivered to `env` (another instance)."""
    moved = env.session(s.msisdn, session_id=s.session_id)
    moved.inputs = list(s.inputs)
    return moved


def session_key(env: UssdEnv, s: AtSession) -> str:
    return service(env).store.key("africastalking", s.session_id)


async def stored(redis: Redis, key: str) -> tuple[int, Session] | None:
    """The record in Redis as it is (read directly, not through the proxy)."""
    value = await redis.get(key)
    if value is None:
        return None
    version, _, raw = value.decode().partition("|")
    return int(version), Session.from_json(raw)


async def released(redis: Redis, key: str) -> tuple[int, Session]:
    """The record once its claim is cleared; fails after RELEASE_S."""
    found = await eventually(
        lambda: stored(redis, key),
        lambda r: r is not None and r[1].inflight is None,
        timeout_s=RELEASE_S,
    )
    assert found is not None
    return found


def via_proxy(settings: Settings, proxy: CuttableProxy) -> str:
    assert settings.redis_url is not None
    return redis_url_via(settings.redis_url, proxy.port)


@pytest.fixture(scope="module")
async def proxy(settings: Settings) -> AsyncIterator[CuttableProxy]:
    assert settings.redis_url is not None
    async with running_redis_proxy(settings.redis_url) as relay:  # TCP or a unix socket
        yield relay


@pytest.fixture(scope="module")
async def a(settings: Settings, proxy: CuttableProxy) -> AsyncIterator[UssdEnv]:
    """Instance A, its Redis through the proxy."""
    url = via_proxy(settings, proxy)
    async for env in start_env(settings, redis_url=url, ussd_deadline_s=DEADLINE_A_S):
        yield env


@pytest.fixture(scope="module")
async def b(settings: Settings) -> AsyncIterator[UssdEnv]:
    """Instance B, its Redis direct."""
    async for env in start_env(settings, ussd_deadline_s=DEADLINE_B_S):
        yield env


@pytest.fixture(autouse=True)
async def ledger_ok(a: UssdEnv, b: UssdEnv, proxy: CuttableProxy) -> AsyncIterator[None]:
    # The `redis` fixture deletes every key of the run's prefix after a test, the liveness keys
    # too: alive, A and B must not look dead to the next test before their refreshers run.
    await liveness_of(a).refresh()
    await liveness_of(b).refresh()
    yield
    proxy.restore()
    await eventually(lambda: len(service(a).final_writes) == 0, timeout_s=WAIT_S)
    await b.bank.check_ledger()


# --- the step's last write cut, then Redis back -----------------------------------------------


async def test_a_receipt_not_stored_is_stored_once_redis_answers(
    a: UssdEnv, b: UssdEnv, proxy: CuttableProxy, redis: Redis
) -> None:
    """A moves the money and its last write (the receipt) is cut: the customer gets the
    receipt, the claim stays in Redis. Redis back, A's held write releases the session within
    a second or so (not the deadline plus 30 s), and the provider's retry of the hop on B gets
    the stored receipt at once: send money ran once, on A."""
    s, sender, recipient = await ready_to_send(a)
    form, key = s.form(PIN), session_key(a, s)
    calls_a, calls_b = a.calls["send_money"], b.calls["send_money"]
    before = final_writes(a, "stored")
    tripped = proxy.tripped
    proxy.cut_on(CLOSING, refuse=OUTAGE)
    receipt = await s.post(form)
    assert receipt.startswith(RECEIPT), receipt
    assert proxy.tripped == tripped + 1
    await moved_once(a, sender, recipient)
    claimed = await stored(redis, key)
    assert claimed is not None and claimed[1].inflight is not None  # the claim is left
    assert service(a).final_writes.held(key) is not None
    restored = time.monotonic()
    proxy.restore()
    version, record = await released(redis, key)
    assert time.monotonic() - restored < RELEASE_S < STALE_CLAIM_GRACE_S
    assert version == claimed[0] + 1  # the compare-and-set on the claim's version
    assert record.ended and record.last is not None
    assert "END " + record.last["text"] == receipt
    # Redis stored it before A reads the answer.
    await eventually(lambda: final_writes(a, "stored") == before + 1, timeout_s=WAIT_S)
    assert len(service(a).final_writes) == 0
    begun = time.monotonic()
    assert await on(b, s).post(form) == receipt  # the provider's retry, on another instance
    assert time.monotonic() - begun < DEADLINE_B_S
    assert await s.post(form) == receipt  # and on A
    assert (a.calls["send_money"], b.calls["send_money"]) == (calls_a + 1, calls_b)
    await moved_once(b, sender, recipient)


async def test_a_menu_not_stored_is_stored_once_redis_answers(
    a: UssdEnv, b: UssdEnv, proxy: CuttableProxy, redis: Redis
) -> None:
    """The dial's step looks the customer up (a claimed step) and lands on the main menu;
    its last write is cut, so the hop answers "temporarily unavailable" (a menu not on record
    would take the next input for the old screen). Redis back, the held write stores the
    menu: the provider's retry of the dial on B gets it without looking the customer up
    again, and the session goes on from it."""
    msisdn = await a.bank.open(balance_minor=5_00)
    s = a.session(msisdn)
    key = session_key(a, s)
    lookups_a, lookups_b = a.calls["customer.lookup"], b.calls["customer.lookup"]
    proxy.cut_on(RELEASING, refuse=OUTAGE)
    assert await s.dial() == DOWN
    assert a.calls["customer.lookup"] == lookups_a + 1
    proxy.restore()
    _, record = await released(redis, key)
    assert not record.ended and record.last is not None
    on_b = on(b, s)
    menu = await on_b.dial()
    assert menu.startswith("CON ") and "Hello Amina" in menu, menu
    assert menu == "CON " + record.last["text"]
    assert (a.calls["customer.lookup"], b.calls["customer.lookup"]) == (lookups_a + 1, lookups_b)
    assert await on_b.send("2") == "CON Enter your PIN:"
    assert await on_b.send(PIN) == "END Your balance is KES 5.00."


async def test_a_session_taken_over_meanwhile_is_not_clobbered(
    settings: Settings,
    b: UssdEnv,
    proxy: CuttableProxy,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A's outage outlasts its liveness key (a short TTL here): B takes A's claim for dead and
    runs the retried hop (the same idempotency key: the core hands back the same transfer).
    Redis back, A's held write finds B's record: it gives up and says so, B's record stays."""
    caplog.set_level(logging.WARNING, logger="menus.final_writes")
    url = via_proxy(settings, proxy)
    envs = start_env(settings, redis_url=url, ussd_deadline_s=DEADLINE_A_S, ussd_liveness_ttl_s=0.5)
    short = await anext(envs)
    try:
        s, sender, recipient = await ready_to_send(short)
        form, key = s.form(PIN), session_key(short, s)
        calls_b = b.calls["send_money"]
        takeovers = counted(b, "gateway_ussd_claim_takeovers_total", "reason", "instance")
        proxy.cut_on(CLOSING, refuse=OUTAGE)
        receipt = await s.post(form)
        assert receipt.startswith(RECEIPT), receipt
        await eventually(lambda: redis.exists(liveness_of(short).key), lambda n: n == 0, WAIT_S)
        assert (await on(b, s).post(form)).startswith(RECEIPT)
        assert b.calls["send_money"] == calls_b + 1
        assert counted(b, "gateway_ussd_claim_takeovers_total", "reason", "instance") == (
            takeovers + 1
        )
        taken = await redis.get(key)
        lost = final_writes(short, "lost")
        proxy.restore()
        await eventually(lambda: final_writes(short, "lost") == lost + 1, timeout_s=WAIT_S)
        assert len(service(short).final_writes) == 0
        assert await redis.get(key) == taken
        gave_up = "ussd: an unstored session write gives up: the session changed meanwhile"
        assert [getattr(r, "key", None) for r in caplog.records if r.getMessage() == gave_up] == [
            key
        ]
        await moved_once(b, sender, recipient)
    finally:
        await envs.aclose()


async def test_a_stop_stores_the_held_writes(
    settings: Settings, b: UssdEnv, proxy: CuttableProxy, redis: Redis
) -> None:
    """An instance stops with a write held (its background tries far apart here): the stop
    tries it once more, Redis answers, and the session is released with the receipt."""
    url = via_proxy(settings, proxy)
    envs = start_env(settings, redis_url=url, ussd_deadline_s=DEADLINE_A_S)
    env = await anext(envs)
    try:
        writes = service(env).final_writes
        writes.first_pause_s = writes.max_pause_s = 3600.0
        s, sender, recipient = await ready_to_send(env)
        key = session_key(env, s)
        proxy.cut_on(CLOSING, refuse=OUTAGE)
        receipt = await s.post(s.form(PIN))
        assert receipt.startswith(RECEIPT), receipt
        assert writes.held(key) is not None
        proxy.restore()
        claim = await stored(redis, key)
        assert claim is not None and claim[1].inflight is not None  # no background try yet
    finally:
        await envs.aclose()
    assert len(writes) == 0
    record = await stored(redis, key)
    assert record is not None and record[1].inflight is None and record[1].ended
    assert record[1].last is not None and "END " + record[1].last["text"] == receipt
    await moved_once(b, sender, recipient)


# --- the held writes themselves ---------------------------------------------------------------


class Held:
    """Sessions with a claim stored in Redis, and their releasing writes, for a `FinalWrites`
    on a store whose Redis goes through the proxy."""

    def __init__(self, store: RedisSessionStore) -> None:
        self.store = store

    async def claimed(self, n: int, until_s: float = WAIT_S) -> list[FinalWrite]:
        writes = []
        for i in range(n):
            key = self.store.key("test", f"held-{time.monotonic_ns()}-{i}")
            record = Session(key=key, msisdn=new_msisdn(), menu="default", version=1, language="en")
            record.inflight = {"hop": "1", "fp": "x", "at": time.time(), "by": f"t:{i}"}
            assert await self.store.save(key, None, record.to_json(), 60) == (True, None)
            record.inflight, record.seq = None, 1
            record.last = {"hop": "1", "fp": "x", "text": f"done {i}", "end": True}
            record.close()
            until = time.monotonic() + until_s
            writes.append(FinalWrite(key, 1, record.to_json(), 60, f"t:{i}", until))
        return writes


@pytest.fixture
async def held(settings: Settings, proxy: CuttableProxy, redis_prefix: str) -> AsyncIterator[Held]:
    client = make_redis(via_proxy(settings, proxy))
    store = RedisSessionStore(client, redis_prefix, io_timeout_s=0.5)
    try:
        yield Held(store)
    finally:
        await store.aclose()
        await client.aclose()


async def test_the_oldest_held_write_is_dropped_past_the_bound(
    held: Held, proxy: CuttableProxy, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="menus.final_writes")
    outcomes: list[str] = []
    writes = FinalWrites(held.store, limit=2, observe=outcomes.append)
    oldest, *others = await held.claimed(3)
    proxy.cut(refuse=OUTAGE)
    for write in (oldest, *others):
        writes.hold(write)
    assert len(writes) == 2
    assert outcomes == ["dropped"]
    assert not writes.holds(oldest.token) and all(writes.holds(w.token) for w in others)
    dropped = "ussd: too many unstored session writes; the oldest is dropped"
    assert [getattr(r, "key", None) for r in caplog.records if r.getMessage() == dropped] == [
        oldest.key
    ]
    proxy.restore()
    await eventually(lambda: len(writes) == 0, timeout_s=WAIT_S)
    assert outcomes == ["dropped", "stored", "stored"]
    for write in others:
        record = await stored(redis, write.key)
        assert record is not None and record[0] == 2 and record[1].inflight is None
    left = await stored(redis, oldest.key)
    assert left is not None and left[0] == 1 and left[1].inflight is not None  # untouched


async def test_a_held_write_gives_up_at_its_limit(
    held: Held, proxy: CuttableProxy, redis: Redis
) -> None:
    outcomes: list[str] = []
    writes = FinalWrites(held.store, observe=outcomes.append)
    [write] = await held.claimed(1, until_s=0.5)
    proxy.cut(refuse=OUTAGE)
    writes.hold(write)
    await eventually(lambda: outcomes == ["expired"], timeout_s=WAIT_S)
    assert not writes.holds(write.token)
    proxy.restore()
    record = await stored(redis, write.key)
    assert record is not None and record[0] == 1 and record[1].inflight is not None


@pytest.mark.parametrize("reachable", [True, False], ids=["redis_back", "redis_still_out"])
async def test_a_stop_tries_each_held_write_once_more(
    held: Held, proxy: CuttableProxy, redis: Redis, reachable: bool
) -> None:
    outcomes: list[str] = []
    writes = FinalWrites(
        held.store, first_pause_s=3600.0, max_pause_s=3600.0, observe=outcomes.append
    )
    claimed = await held.claimed(2)
    proxy.cut(refuse=OUTAGE)
    for write in claimed:
        writes.hold(write)
    if reachable:
        proxy.restore()
    assert await writes.close() == (0 if reachable else 2)
    assert len(writes) == 0
    assert outcomes == ["stored", "stored"] if reachable else ["left", "left"]
    proxy.restore()
    [late] = await held.claimed(1)  # a step that outlived the stop's wait: not held any more
    writes.hold(late)
    assert len(writes) == 0 and outcomes[-1] == "left"
    for write in claimed:
        record = await stored(redis, write.key)
        assert record is not None
        assert (record[0], record[1].inflight is None) == ((2, True) if reachable else (1, False))
