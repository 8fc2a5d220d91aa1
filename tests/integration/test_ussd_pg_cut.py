"""USSD send money with the gateway's PostgreSQL connections cut at the network (PostgreSQL
stays up): the money call lost on its way, or its COMMIT's answer lost. The hop answers the
transfer (tried again under its key within the hop), and so does the provider's retry of the
hop; the money moved once, no wrong PIN was counted. An outage that outlasts the hop's tries
answers "the result will come by SMS" and settles in the background under the same key once
PostgreSQL is back; past the late limit, or after a stop, the promise's record in Redis
(menus.pending) is settled or abandoned under the key by whichever instance sweeps it. The
ledger check runs after every test, and no promise is left behind."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import MappingProxyType

import asyncpg
import pytest

from config.settings import Settings
from core import errors as E
from core.transfers import send_money
from gateway.keys import MENU_BINDINGS, USSD_HTTP, USSD_PENDING, USSD_SERVICE
from menus.actions import ActionContext
from menus.engine import LATE_ACTION_LIMIT_S, Engine
from tests.helpers import eventually
from tests.loans_support import borrower, choose_product, offer_products
from tests.tcp_proxy import CuttableProxy, postgres_proxy
from tests.ussd_support import PIN, UssdEnv, pending_records, ready_to_send, start_env, swept

PENDING = "END We are still processing your request. The result will come by SMS."
NOT_DONE = (
    "Your transfer did not go through and no money was taken from your account. "
    "You may send it again."
)
WAIT_S = 30.0  # the background settle's pauses double: 0.5, 1, 2 ... s between asks
OUTAGE = 1_000_000  # refusals: an outage that lasts until `restore()`

CUTS: dict[str, Callable[[CuttableProxy], None]] = {
    "statement_lost": lambda proxy: proxy.cut_on(b"ledger_p2p"),
    "answer_lost": lambda proxy: proxy.cut_on(b"p2p", from_server=True),
}


@dataclass
class Cut:
    env: UssdEnv
    proxy: CuttableProxy


@pytest.fixture(scope="module")
async def cut(settings: Settings, database_url: str) -> AsyncIterator[Cut]:
    proxy, via = postgres_proxy(database_url)
    port = await proxy.start()
    try:
        async for env in start_env(settings, database_url=via(port)):
            yield Cut(env, proxy)
    finally:
        await proxy.close()


@pytest.fixture(autouse=True)
async def ledger_ok(cut: Cut) -> AsyncIterator[None]:
    yield
    cut.proxy.restore()
    await cut.env.bank.check_ledger()
    assert await pending_records(cut.env) == []  # every promise kept


def fresh_connections(proxy: CuttableProxy) -> None:
    """Close the app's pooled connections: the next ones prepare their statements again, so
    a statement's text (the marker of a cut) goes over the wire."""
    proxy.cut(refuse=0)


@pytest.mark.parametrize("moment", sorted(CUTS))
async def test_a_cut_send_answers_the_hop_and_its_retry_the_transfer(
    cut: Cut, pg_pool: asyncpg.Pool, moment: str
) -> None:
    s, sender, recipient = await ready_to_send(cut.env)
    tripped = cut.proxy.tripped
    fresh_connections(cut.proxy)
    CUTS[moment](cut.proxy)
    receipt = await s.send(PIN)
    assert cut.proxy.tripped == tripped + 1
    # Before: "temporarily unavailable, please try again later", stored as the session's
    # END, also for the money that had moved: the customer sent it again from a new session.
    assert receipt.startswith("END KES 100.00 sent to Neema Achieng"), receipt
    assert await s.post(s.form()) == receipt  # the provider sends the hop again
    bank = cut.env.bank
    assert await bank.balance(recipient) == 10_000
    assert await bank.transfers(recipient) == 1
    failures = await pg_pool.fetchval(
        "SELECT pin_failures FROM customers WHERE msisdn = $1", sender
    )
    assert failures == 0


PENDING_CUTS: dict[str, Callable[[CuttableProxy], None]] = {
    "statement_lost": lambda proxy: proxy.cut_on(b"ledger_p2p", refuse=OUTAGE),
    "answer_lost": lambda proxy: proxy.cut_on(b"p2p", from_server=True, refuse=OUTAGE),
}


def engine(cut: Cut) -> Engine:
    return cut.env.app[USSD_SERVICE].engine


async def nothing_moved_and_told_once(env: UssdEnv, sender: str, recipient: str, key: str) -> None:
    """The KES 100 of `ready_to_send` never moved, the sender was told so once, and an ask
    under the step's key now (a paused instance waking up, with the right PIN) moves nothing."""
    bank = env.bank
    assert await bank.balance(sender) == 100_000 and await bank.balance(recipient) == 0
    [told] = await bank.outbox(sender, "ussd.late_result")
    assert told["body"] == NOT_DONE
    ctx = ActionContext(
        action="send_money",
        msisdn=sender,
        language="en",
        vars=MappingProxyType({"recipient": recipient, "amount_minor": 10_000}),
        secrets=MappingProxyType({"pin": PIN}),
        customer=MappingProxyType({}),
        params=MappingProxyType({}),
        idempotency_key=key,
        channel="ussd",
        session_id="woken",
        currency="KES",
        again=True,
    )
    send = env.app[MENU_BINDINGS].function("send_money")
    assert send is not None
    with pytest.raises(E.MoneyAbandoned):
        await send(ctx)
    assert await bank.balance(sender) == 100_000 and await bank.balance(recipient) == 0
    assert len(await bank.outbox(sender, "ussd.late_result")) == 1


async def settled(cut: Cut) -> None:
    """Wait for the background settles to be over (the engine's late actions)."""
    await eventually(lambda: not engine(cut)._late, timeout_s=WAIT_S)


async def outbox(pool: asyncpg.Pool, msisdn: str) -> list[tuple[str, str | None]]:
    """(kind, template) of every message queued to `msisdn` but the opening deposit's receipt,
    read past the relay."""
    rows = await pool.fetch(
        "SELECT kind, template FROM outbox WHERE recipient = $1"
        " AND template IS DISTINCT FROM 'deposit_received' ORDER BY id",
        msisdn,
    )
    return [(r["kind"], r["template"]) for r in rows]


def engine_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "menus.engine"]


def engine_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "menus.engine" and r.levelno >= logging.ERROR
    ]


async def moved(pool: asyncpg.Pool, recipient: str) -> int:
    return int(
        await pool.fetchval("SELECT count(*) FROM transfers WHERE credit_party = $1", recipient)
    )


@pytest.mark.parametrize("moment", sorted(PENDING_CUTS))
async def test_an_outage_past_the_hops_tries_answers_by_sms_and_settles_once(
    cut: Cut, pg_pool: asyncpg.Pool, moment: str
) -> None:
    """The COMMIT's answer lost, or the statement, and the outage outlasting settle: the hop
    answers "result by SMS" (before: "try again later", and a new session moved the money
    again); once PostgreSQL is reachable the background settle, under the same key, finds the
    transfer or makes it: one transfer, and the customer told once, by the ledger's receipt
    (no result SMS repeating it)."""
    s, sender, recipient = await ready_to_send(cut.env)
    fresh_connections(cut.proxy)
    PENDING_CUTS[moment](cut.proxy)
    started = time.monotonic()
    assert await s.send(PIN) == PENDING
    assert time.monotonic() - started < cut.env.settings.ussd_deadline_s
    assert await s.post(s.form()) == PENDING  # the provider sends the hop again: stored END
    assert engine(cut)._late  # still settling while the outage lasts
    cut.proxy.restore()
    await settled(cut)
    assert await moved(pg_pool, recipient) == 1
    assert await outbox(pg_pool, sender) == [("receipt", "p2p_sent")]
    assert await outbox(pg_pool, recipient) == [("receipt", "p2p_received")]
    # Once settled, the same hop again is still the stored END: nothing runs, nothing moves.
    assert await s.post(s.form()) == PENDING
    assert not engine(cut)._late
    assert await moved(pg_pool, recipient) == 1
    failures = await pg_pool.fetchval(
        "SELECT pin_failures FROM customers WHERE msisdn = $1", sender
    )
    assert failures == 0


async def test_a_refusal_on_the_background_ask_is_told_by_sms_with_nothing_moved(
    cut: Cut, pg_pool: asyncpg.Pool
) -> None:
    """The wallet emptied (from another channel) while the step's outcome was unknown: the
    background ask is refused, and the customer gets the refusal screen by SMS, once."""
    s, sender, recipient = await ready_to_send(cut.env)
    elsewhere = await cut.env.bank.open()
    fresh_connections(cut.proxy)
    PENDING_CUTS["statement_lost"](cut.proxy)
    assert await s.send(PIN) == PENDING
    await send_money(
        pg_pool,
        sender=sender,
        recipient=elsewhere,
        amount_minor=95_000,  # and its fee: KES 37.00 left, short of the KES 100.00
        idempotency_key=f"empty-{sender}",
        channel="test",
    )
    cut.proxy.restore()
    await settled(cut)
    assert await moved(pg_pool, recipient) == 0
    assert await outbox(pg_pool, sender) == [("receipt", "p2p_sent"), ("ussd.late_result", None)]
    [told] = await cut.env.bank.outbox(sender, "ussd.late_result")
    assert told["body"] == "You have insufficient funds for this."
    assert await s.post(s.form()) == PENDING


WITHDRAW_CUTS: dict[str, Callable[[CuttableProxy], None]] = {
    "statement_lost": lambda proxy: proxy.cut_on(b"ledger_cash_out"),
    "sms_lost": lambda proxy: proxy.cut_on(b"INSERT INTO outbox"),
    "commit_answer_lost": lambda proxy: proxy.cut_on(b"COMMIT\x00", from_server=True),
}


@pytest.mark.parametrize("moment", sorted(WITHDRAW_CUTS))
async def test_a_cut_withdrawal_answers_the_hop_with_the_withdrawal(
    cut: Cut, pg_pool: asyncpg.Pool, moment: str
) -> None:
    """Withdraw at an agent: the money and the agent's SMS commit together; cut inside that
    transaction or at its COMMIT's answer, the hop still answers the withdrawal, paid once, and
    the agent is told once to hand over the cash."""
    bank = cut.env.bank
    customer = await bank.open(balance_minor=100_000)
    code, agent_msisdn = await bank.agent()
    s = cut.env.session(customer)
    await s.walk("3", code, "50")
    tripped = cut.proxy.tripped
    fresh_connections(cut.proxy)
    WITHDRAW_CUTS[moment](cut.proxy)
    receipt = await s.send(PIN)
    assert cut.proxy.tripped == tripped + 1
    assert receipt.startswith("END Withdrawn KES 50.00"), receipt
    assert await s.post(s.form()) == receipt
    assert len(await bank.outbox(agent_msisdn, "agent_cash_out")) == 1
    paid = await pg_pool.fetchval(
        "SELECT count(*) FROM transfers WHERE type = 'cash_out' AND debit_party = $1", customer
    )
    assert paid == 1


@pytest.mark.parametrize("moment", sorted(PENDING_CUTS))
async def test_an_outage_past_the_late_limit_settles_or_abandons_under_the_key(
    cut: Cut, pg_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture, moment: str
) -> None:
    """PostgreSQL away for longer than the late limit: no more asks; the movement is settled
    or abandoned under its key once the database answers (the owner cannot then: it leaves the
    record to the sweep). The COMMIT had landed (answer lost): its receipt is the one message.
    It had not (statement lost): the key is abandoned, the customer told once that nothing
    moved, and a later ask under the key (the old instance waking up) moves nothing."""
    caplog.set_level(logging.INFO, logger="menus")
    s, sender, recipient = await ready_to_send(cut.env)
    engine(cut).late_limit_s = 2.0
    try:
        fresh_connections(cut.proxy)
        PENDING_CUTS[moment](cut.proxy)
        assert await s.send(PIN) == PENDING
        [promise] = await pending_records(cut.env)
        await settled(cut)
    finally:
        engine(cut).late_limit_s = LATE_ACTION_LIMIT_S
    assert engine_errors(caplog) == []
    assert "late limit: not settled now; left to its pending record" in engine_messages(caplog)
    cut.proxy.restore()
    await swept(cut.env)
    assert await outbox(pg_pool, recipient) == (
        [("receipt", "p2p_received")] if moment == "answer_lost" else []
    )
    if moment == "answer_lost":
        assert await moved(pg_pool, recipient) == 1
        assert await outbox(pg_pool, sender) == [("receipt", "p2p_sent")]
    else:
        await nothing_moved_and_told_once(cut.env, sender, recipient, promise.key)
    assert await s.post(s.form()) == PENDING
    assert not engine(cut)._late


async def test_a_withdrawal_answer_lost_past_settle_is_paid_once(
    cut: Cut, pg_pool: asyncpg.Pool
) -> None:
    """Withdraw at an agent, the COMMIT's answer lost and the outage outlasting settle: paid
    once, the agent told once to hand over the cash, the customer's receipt once (no result
    SMS beside it)."""
    bank = cut.env.bank
    customer = await bank.open(balance_minor=100_000)
    code, agent_msisdn = await bank.agent()
    s = cut.env.session(customer)
    await s.walk("3", code, "50")
    fresh_connections(cut.proxy)
    cut.proxy.cut_on(b"COMMIT\x00", from_server=True, refuse=OUTAGE)
    assert await s.send(PIN) == PENDING
    assert engine(cut)._late
    cut.proxy.restore()
    await settled(cut)
    assert await outbox(pg_pool, agent_msisdn) == [("agent_cash_out", None)]
    assert await outbox(pg_pool, customer) == [("receipt", "cash_out_done")]
    paid = await pg_pool.fetchval(
        "SELECT count(*) FROM transfers WHERE type = 'cash_out' AND debit_party = $1", customer
    )
    assert paid == 1
    assert await s.post(s.form()) == PENDING


# --- the gateway stopped while a settle is pending ---------------------------------------------


@dataclass
class Own:
    """A gateway of the test's own behind its own relay, to be stopped by the test."""

    env: UssdEnv
    proxy: CuttableProxy
    stop: Callable[[], Awaitable[None]]


@pytest.fixture
async def own(settings: Settings, database_url: str) -> AsyncIterator[Own]:
    proxy, via = postgres_proxy(database_url)
    port = await proxy.start()
    running = start_env(settings, database_url=via(port))
    try:
        yield Own(await anext(running), proxy, running.aclose)
    finally:
        proxy.restore()
        await running.aclose()
        await proxy.close()


async def test_a_stop_waits_for_a_pending_settle(own: Own, pg_pool: asyncpg.Pool) -> None:
    """A stop begun while the outcome is unknown waits for the background settle (as for late
    actions): PostgreSQL back during the stop, the transfer is found, once, with its receipt."""
    env = own.env
    s, sender, recipient = await ready_to_send(env)
    fresh_connections(own.proxy)
    PENDING_CUTS["answer_lost"](own.proxy)
    assert await s.send(PIN) == PENDING
    engine_ = env.app[USSD_SERVICE].engine
    stopping = asyncio.ensure_future(own.stop())
    await eventually(lambda: env.app[USSD_HTTP].service is None, timeout_s=WAIT_S)
    assert engine_._late and not stopping.done()  # the stop waits on the settle
    own.proxy.restore()
    await asyncio.wait_for(stopping, timeout=WAIT_S)
    assert not engine_._late
    assert await moved(pg_pool, recipient) == 1
    assert await outbox(pg_pool, sender) == [("receipt", "p2p_sent")]


@pytest.mark.parametrize("moment", sorted(PENDING_CUTS))
async def test_a_stop_leaves_the_promise_to_another_instance(
    own: Own, pg_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture, moment: str
) -> None:
    """The outage outlasting the stop's wait for late actions: the ask is cancelled and its
    pending record stays (its owner's liveness key goes with the stop). Another instance's
    sweep takes it: the COMMIT that landed is the result (its receipt, no SMS beside it); the
    statement that never arrived is abandoned and told once. The hop again, on the other
    instance, gets the stored END and moves nothing."""
    caplog.set_level(logging.WARNING, logger="menus.engine")
    env = own.env
    s, sender, recipient = await ready_to_send(env)
    fresh_connections(own.proxy)
    PENDING_CUTS[moment](own.proxy)
    assert await s.send(PIN) == PENDING
    [promise] = await pending_records(env)
    engine_ = env.app[USSD_SERVICE].engine
    await own.stop()
    assert not engine_._late
    assert engine_errors(caplog) == []
    stopped = [m for m in engine_messages(caplog) if m.startswith("stopped")]
    assert stopped == ["stopped before a late action finished; left to its pending record"]
    assert await pending_records(env) == [promise]  # nobody finished it
    own.proxy.restore()
    async for other in start_env(env.settings):
        await swept(other)
        again = other.session(sender, session_id=s.session_id)
        again.inputs = list(s.inputs)
        assert await again.post(again.form()) == PENDING
        assert other.calls["send_money"] == 0
        if moment == "statement_lost":
            await nothing_moved_and_told_once(other, sender, recipient, promise.key)
    if moment == "answer_lost":
        assert await moved(pg_pool, recipient) == 1
        assert await outbox(pg_pool, sender) == [("receipt", "p2p_sent")]


async def test_a_sweep_racing_the_owner_abandons_once_and_the_owner_moves_nothing(
    cut: Cut, settings: Settings, pg_pool: asyncpg.Pool
) -> None:
    """The owner still asks (PostgreSQL cut from it) when its liveness key is lost: another
    instance takes the record and abandons the key. The owner's next ask, PostgreSQL back, is
    refused under the abandoned key: nothing moves, and the customer has one SMS, the
    abandonment's (the owner sends none)."""
    s, sender, recipient = await ready_to_send(cut.env)
    fresh_connections(cut.proxy)
    PENDING_CUTS["statement_lost"](cut.proxy)
    assert await s.send(PIN) == PENDING
    [promise] = await pending_records(cut.env)
    liveness = cut.env.app[USSD_PENDING].liveness
    await liveness.stop(delete=True)
    try:
        async for other in start_env(settings):
            await swept(other)
        assert engine(cut)._late  # the owner still asks
        cut.proxy.restore()
        await settled(cut)
    finally:
        await liveness.start()
    await nothing_moved_and_told_once(cut.env, sender, recipient, promise.key)
    assert await pending_records(cut.env) == []


async def test_a_loan_repayment_answer_lost_past_settle_is_taken_once(
    cut: Cut, pg_pool: asyncpg.Pool
) -> None:
    """Loan repayment, its transaction's COMMIT answer lost and the outage outlasting settle:
    the repayment is recorded once, and the loan's repayment notice (queued with it) is the
    one message about it; no result SMS beside it."""
    product = await offer_products(cut.env, "P")
    msisdn = await borrower(cut.env)
    s = cut.env.session(msisdn)
    await choose_product(s, product["name"])
    await s.send("1000")
    await s.send("1")
    assert (await s.send(PIN)).startswith("END Loan approved")
    r = cut.env.session(msisdn)
    await r.walk("5", "2", "50")
    fresh_connections(cut.proxy)
    cut.proxy.cut_on(b"COMMIT\x00", from_server=True, refuse=OUTAGE)
    assert await r.send(PIN) == PENDING
    assert engine(cut)._late
    cut.proxy.restore()
    await settled(cut)
    repayments = await pg_pool.fetchval(
        "SELECT count(*) FROM loan_repayments r JOIN loans l ON l.id = r.loan_id"
        " WHERE l.msisdn = $1",
        msisdn,
    )
    assert repayments == 1
    # The core's receipt row, taken over by the loan's notice (its template stays the core's).
    told = [m for m in await outbox(pg_pool, msisdn) if m[1] != "loan_disbursed"]
    assert told == [("loan_repayment", "loan_repaid")]
    [notice] = await cut.env.bank.outbox(msisdn, "loan_repayment")
    assert "Loan repayment of KES 50.00 received. Still to pay KES 1,000.00" in notice["body"]
    assert await r.post(r.form()) == PENDING
