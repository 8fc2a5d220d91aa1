"""USSD loan applications and repayments promised "the result will come by SMS" (their
connection to PostgreSQL cut at the network, PostgreSQL itself up) are kept like transfers are:
a promise on record in Redis, settled or abandoned under the step's request key by whichever
instance takes it (the owner stopped, or past the late limit). What the loan service did under
the key is the result (its own notice, no SMS beside it); a request that did nothing is
abandoned, the customer told once in their language, and a later ask under the key (the old
instance waking up) applies or repays nothing. After every test: the ledger check, the loan
book against the ledger, and no promise left behind."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from types import MappingProxyType

import asyncpg
import pytest

from core import errors as E
from gateway.keys import LOANS, MENU_BINDINGS, USSD_PENDING
from menus.actions import ActionContext
from menus.engine import LATE_ACTION_LIMIT_S
from menus.messages import not_done_text
from menus.pending import Pending
from tests.integration.loans.conftest import check_invariants
from tests.integration.test_ussd_pg_cut import (  # noqa: F401 (fixtures)
    OUTAGE,
    PENDING,
    Cut,
    Own,
    cut,
    engine,
    engine_errors,
    engine_messages,
    fresh_connections,
    outbox,
    own,
    settled,
)
from tests.loans_support import borrower, choose_product, offer_products
from tests.tcp_proxy import CuttableProxy
from tests.ussd_support import PIN, AtSession, UssdEnv, pending_records, start_env, swept

# The application's or the repayment's first statement (the request key's claim) never
# reaches PostgreSQL; or its transaction's COMMIT lands and its answer is lost.
LOAN_CUTS: dict[str, Callable[[CuttableProxy], None]] = {
    "statement_lost": lambda proxy: proxy.cut_on(b"loan_claim_key", refuse=OUTAGE),
    "answer_lost": lambda proxy: proxy.cut_on(b"COMMIT\x00", from_server=True, refuse=OUTAGE),
}


PENDING_FR = "END Votre demande est en cours. Le résultat vous sera envoyé par SMS."


@pytest.fixture(autouse=True)
async def books_ok(cut: Cut, pg_pool: asyncpg.Pool) -> AsyncIterator[None]:  # noqa: F811
    yield
    cut.proxy.restore()
    await check_invariants(pg_pool)
    assert await pending_records(cut.env) == []  # every promise kept


async def at_apply_pin(env: UssdEnv) -> tuple[AtSession, str, dict[str, str]]:
    """A borrower at the PIN screen of a KES 1,000 loan; the session, the borrower, the
    product."""
    product = await offer_products(env, "A")
    msisdn = await borrower(env)
    s = env.session(msisdn)
    await choose_product(s, product["name"])
    await s.send("1000")
    await s.send("1")
    return s, msisdn, product


async def at_repay_pin(env: UssdEnv, language: str = "en") -> tuple[AtSession, str]:
    """A borrower with a KES 1,000 loan at the PIN screen of repaying KES 50, in a session in
    `language` (the customer's, from then on)."""
    s, msisdn, _ = await at_apply_pin(env)
    assert (await s.send(PIN)).startswith("END Loan approved")
    await env.bank.pool.execute(
        "UPDATE customers SET language = $2 WHERE msisdn = $1", msisdn, language
    )
    r = env.session(msisdn)
    await r.walk("5", "2", "50")
    return r, msisdn


async def late_results(pool: asyncpg.Pool, msisdn: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT body FROM outbox WHERE recipient = $1 AND kind = 'ussd.late_result' ORDER BY id",
        msisdn,
    )
    return [r["body"] for r in rows]


async def loan_rows(pool: asyncpg.Pool, msisdn: str) -> tuple[int, int, int]:
    """(applications, loans, repayments) of `msisdn`."""
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM loan_applications WHERE msisdn = $1) AS a,"
        " (SELECT count(*) FROM loans WHERE msisdn = $1) AS l,"
        " (SELECT count(*) FROM loan_repayments r JOIN loans l ON l.id = r.loan_id"
        "  WHERE l.msisdn = $1) AS r",
        msisdn,
    )
    return int(row["a"]), int(row["l"]), int(row["r"])


async def woken_owner_is_refused(env: UssdEnv, promise: Pending, vars_: dict[str, object]) -> None:
    """The step asked again under its key now (a paused instance waking up, with the right
    PIN): refused, the key being abandoned."""
    ctx = ActionContext(
        action=promise.action,
        msisdn=promise.msisdn,
        language="en",
        vars=MappingProxyType(vars_),
        secrets=MappingProxyType({"pin": PIN}),
        customer=MappingProxyType({}),
        params=MappingProxyType({}),
        idempotency_key=promise.key,
        channel="ussd",
        session_id="woken",
        currency="KES",
        again=True,
    )
    fn = env.app[MENU_BINDINGS].function(promise.action)
    assert fn is not None
    with pytest.raises(E.MoneyAbandoned):
        await fn(ctx)


@pytest.mark.parametrize("moment", sorted(LOAN_CUTS))
async def test_a_stopped_owners_loan_application_is_kept_by_another_instance(
    own: Own,  # noqa: F811
    pg_pool: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
    moment: str,
) -> None:
    """The owner stops while its application's outcome is unknown: the promise stays, and
    another instance's sweep keeps it. The application never reached PostgreSQL: abandoned,
    the customer told once, and nothing is ever disbursed under the key. It was committed
    (approved, its answer lost): found, no SMS of the sweep's; its disbursement follows (the
    loan service's resume) with the loan's notice, the one message."""
    caplog.set_level(logging.WARNING, logger="menus.engine")
    env = own.env
    s, msisdn, product = await at_apply_pin(env)
    before = await env.bank.balance(msisdn)
    fresh_connections(own.proxy)
    LOAN_CUTS[moment](own.proxy)
    assert await s.send(PIN) == PENDING
    [promise] = await pending_records(env)
    assert promise.action == "loans.apply"
    await own.stop()
    assert engine_errors(caplog) == []
    own.proxy.restore()
    async for other in start_env(env.settings):
        await swept(other)
        if moment == "statement_lost":
            assert await late_results(pg_pool, msisdn) == [not_done_text("loans.apply", "en")]
            vars_ = {"loan_product": product["code"], "amount_minor": 100_000}
            await woken_owner_is_refused(other, promise, vars_)
            assert await loan_rows(pg_pool, msisdn) == (0, 0, 0)
            assert await other.app[LOANS].resume_disbursements(pg_pool, older_than_s=0) == 0
            assert await other.bank.balance(msisdn) == before
        else:
            assert await late_results(pg_pool, msisdn) == []
            assert await loan_rows(pg_pool, msisdn) == (1, 0, 0)  # approved, not disbursed
            await other.app[LOANS].resume_disbursements(pg_pool, older_than_s=0)
            assert await loan_rows(pg_pool, msisdn) == (1, 1, 0)
            assert await other.bank.balance(msisdn) == before + 100_000
            assert [m for m in await outbox(pg_pool, msisdn) if m[0] != "receipt"] == [
                ("loan_disbursed", "loan_disbursed")
            ]
        assert len(await late_results(pg_pool, msisdn)) <= 1


@pytest.mark.parametrize("moment", sorted(LOAN_CUTS))
async def test_a_repayment_outage_past_the_late_limit_is_settled_or_abandoned(
    cut: Cut,  # noqa: F811
    pg_pool: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
    moment: str,
) -> None:
    """PostgreSQL away past the late limit: the owner stops asking and cannot settle (it
    leaves the record to the sweep). The repayment had committed: the loan's repayment notice
    is the one message. It had not: the request is abandoned, the customer told once in
    French, the loan unchanged, and the owner's ask under the key refused."""
    caplog.set_level(logging.INFO, logger="menus")
    r, msisdn = await at_repay_pin(cut.env, "fr")
    before = await cut.env.bank.balance(msisdn)
    engine(cut).late_limit_s = 2.0
    try:
        fresh_connections(cut.proxy)
        LOAN_CUTS[moment](cut.proxy)
        assert await r.send(PIN) == PENDING_FR
        [promise] = await pending_records(cut.env)
        assert promise.language == "fr"
        await settled(cut)
    finally:
        engine(cut).late_limit_s = LATE_ACTION_LIMIT_S
    assert engine_errors(caplog) == []
    assert "late limit: not settled now; left to its pending record" in engine_messages(caplog)
    cut.proxy.restore()
    await swept(cut.env)
    if moment == "answer_lost":
        assert await loan_rows(pg_pool, msisdn) == (1, 1, 1)
        assert await late_results(pg_pool, msisdn) == []
        repaid = [m for m in await outbox(pg_pool, msisdn) if m[0] == "loan_repayment"]
        assert len(repaid) == 1
        assert await cut.env.bank.balance(msisdn) == before - 5_000
    else:
        assert await late_results(pg_pool, msisdn) == [not_done_text("loans.repay", "fr")]
        await woken_owner_is_refused(cut.env, promise, {"amount_minor": 5_000})
        assert await loan_rows(pg_pool, msisdn) == (1, 1, 0)
        assert await cut.env.bank.balance(msisdn) == before
    assert not engine(cut)._late


async def test_a_sweep_racing_the_owner_abandons_a_repayment_the_owner_then_cannot_make(
    cut: Cut,  # noqa: F811
    pg_pool: asyncpg.Pool,
) -> None:
    """The owner still asks (PostgreSQL cut from it) when its liveness key is lost: another
    instance takes the record and abandons the request. The owner's next ask, PostgreSQL
    back, waits for nothing and is refused at the loan service's entry: the loan unchanged,
    and the customer has one SMS, the abandonment's."""
    r, msisdn = await at_repay_pin(cut.env)
    before = await cut.env.bank.balance(msisdn)
    fresh_connections(cut.proxy)
    LOAN_CUTS["statement_lost"](cut.proxy)
    assert await r.send(PIN) == PENDING
    [promise] = await pending_records(cut.env)
    assert promise.action == "loans.repay"
    liveness = cut.env.app[USSD_PENDING].liveness
    await liveness.stop(delete=True)
    try:
        async for other in start_env(cut.env.settings):
            await swept(other)
        assert engine(cut)._late  # the owner still asks
        cut.proxy.restore()
        await settled(cut)
    finally:
        await liveness.start()
    assert await late_results(pg_pool, msisdn) == [not_done_text("loans.repay", "en")]
    assert await loan_rows(pg_pool, msisdn) == (1, 1, 0)
    assert await cut.env.bank.balance(msisdn) == before
    assert await r.post(r.form()) == PENDING  # the stored END: nothing runs again
