"""The loan service on the real banking core: quote, apply, decide, disburse (real money from the
loan fund), with the loan rows and the money in the same transactions."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from core.errors import (
    Conflict,
    IdempotencyConflict,
    IllegalTransition,
    NotFound,
    ValidationFailed,
)
from core.loans import book, store
from core.loans.decision import Decision, Outcome
from core.loans.fraud import FraudLimits
from core.loans.products import Product
from core.loans.schedule import build_schedule
from core.loans.scoring import Score, ScoringFacts
from core.transfers import fund_loans
from menus.loans.service import LoanPolicy
from tests.integration.loans.conftest import World, core_service, new_key, prepare_currency


async def _notices(world: World, msisdn: str) -> list[str]:
    rows = await world.pool.fetch(
        "SELECT kind FROM loan_notices WHERE recipient = $1 ORDER BY id", msisdn
    )
    return [r["kind"] for r in rows]


async def test_auto_approved_loan_is_disbursed_with_its_schedule(world: World) -> None:
    product = await world.product(facility_fee_percent="1.5")
    msisdn = await world.customer()
    before = await world.balance(msisdn)
    result = await world.apply(msisdn, product.code, 300_000)
    assert result.decision.outcome is Outcome.APPROVE
    assert result.application.status == "disbursed"
    assert result.loan is not None and result.loan.status == "active"
    assert await world.balance(msisdn) == before + 300_000
    status = await world.service.status(world.pool, msisdn)
    assert status is not None
    # flat 5 % x 3 weeks = 45,000 interest; the 1.5 % fee (4,500) is due with installment 1.
    assert status.outstanding_minor == 300_000 + 45_000 + 4_500
    assert [r.due_date for r in status.installments] == [
        world.clock.today() + timedelta(weeks=k) for k in (1, 2, 3)
    ]
    assert status.next_due_minor == 100_000 + 15_000 + 4_500
    assert await _notices(world, msisdn) == ["loan_disbursed"]
    history = await world.pool.fetch(
        "SELECT trigger, from_status, to_status FROM loan_status_history"
        " WHERE application_id = $1 ORDER BY id",
        result.application.id,
    )
    assert [(h["trigger"], h["from_status"], h["to_status"]) for h in history] == [
        ("apply", None, "applied"),
        ("approve", "applied", "approved"),
        ("disburse", "approved", "disbursed"),
        ("activate", "disbursed", "active"),
    ]


async def test_same_key_replays_and_another_request_conflicts(world: World) -> None:
    product = await world.product()
    msisdn = await world.customer()
    first = await world.apply(msisdn, product.code, 200_000, key="same")
    again = await world.apply(msisdn, product.code, 200_000, key="same")
    assert again.replayed and again.application.id == first.application.id
    assert again.loan is not None and first.loan is not None and again.loan.id == first.loan.id
    assert await world.transfers_for(first.loan.id, "loan_disbursement") == 1
    with pytest.raises(IdempotencyConflict):
        await world.apply(msisdn, product.code, 250_000, key="same")


async def test_an_open_loan_is_refused_as_outstanding(world: World) -> None:
    product = await world.product()
    msisdn = await world.customer()
    await world.apply(msisdn, product.code, 200_000, key="a")
    second = await world.apply(msisdn, product.code, 100_000, key="b")
    assert second.decision.outcome is Outcome.REFUSE
    assert second.decision.code == "LOAN_OUTSTANDING"
    assert "outstanding" in second.decision.message
    assert second.application.status == "rejected"


async def test_review_band_then_officer_approves_and_it_is_disbursed(world: World) -> None:
    product = await world.product(auto_approve_max_minor=100_000)
    msisdn = await world.customer()
    result = await world.apply(msisdn, product.code, 150_000)
    assert (result.decision.outcome, result.decision.code) == (Outcome.REVIEW, "REVIEW_AMOUNT")
    assert result.application.status == "applied" and result.loan is None
    # While it waits, a second application is refused as in flight.
    again = await world.apply(msisdn, product.code, 50_000, key="k2")
    assert again.decision.code == "APPLICATION_IN_FLIGHT"
    reviewed = await world.service.approve(world.pool, result.application.id, actor="officer1")
    assert reviewed.application.status == "disbursed"
    assert reviewed.loan is not None and reviewed.loan.status == "active"
    # The same officer's approval again answers it (the same loan); another's is refused.
    again = await world.service.approve(world.pool, result.application.id, actor="officer1")
    assert again.loan is not None and again.loan.id == reviewed.loan.id
    with pytest.raises(IllegalTransition):
        await world.service.approve(world.pool, result.application.id, actor="officer2")
    with pytest.raises(IllegalTransition):
        await world.service.reject(world.pool, result.application.id, actor="o", reason="late")


async def test_officer_rejects_with_a_reason(world: World) -> None:
    product = await world.product(auto_approve_max_minor=0)
    msisdn = await world.customer()
    result = await world.apply(msisdn, product.code, 20_000)
    assert result.decision.outcome is Outcome.REVIEW
    rejected = await world.service.reject(
        world.pool, result.application.id, actor="officer2", reason="  income  unclear "
    )
    assert rejected.application.status == "rejected"
    assert rejected.application.note == "income unclear"
    assert rejected.application.decided_by == "officer2"
    assert await _notices(world, msisdn) == ["loan_rejected"]
    with pytest.raises(IllegalTransition):
        await world.service.approve(world.pool, result.application.id, actor="officer2")


async def test_officer_reason_code_reaches_the_customer_in_their_language(world: World) -> None:
    product = await world.product(auto_approve_max_minor=0)
    msisdn = await world.customer()
    await world.pool.execute("UPDATE customers SET language = 'sw' WHERE msisdn = $1", msisdn)
    first = await world.apply(msisdn, product.code, 20_000)
    app_id = first.application.id
    for reason, code in ((None, None), ("  ", None), ("x", "NOT_A_REASON")):
        with pytest.raises(ValidationFailed):
            await world.service.reject(
                world.pool, app_id, actor="officer3", reason=reason, reason_code=code
            )
    assert await _notices(world, msisdn) == []  # nothing was sent for the refused calls
    rejected = await world.service.reject(
        world.pool,
        app_id,
        actor="officer3",
        reason=" payslip  unreadable ",
        reason_code="INCOME_NOT_VERIFIED",
    )
    assert rejected.application.note == "INCOME_NOT_VERIFIED: payslip unreadable"
    body = await world.pool.fetchval(
        "SELECT o.body FROM loan_notices n JOIN outbox o ON o.id = n.outbox_id "
        "WHERE n.recipient = $1 AND n.kind = 'loan_rejected'",
        msisdn,
    )
    assert body == (
        "Ombi lako la mkopo halikukubaliwa. Hatukuweza kuthibitisha mapato yako."
    )  # the officer's note stays with the application


async def test_fund_short_rejects_the_approval_and_moves_nothing(world: World) -> None:
    world.currency = "XTF"  # a test currency whose loan fund holds nothing yet
    await prepare_currency(world.pool, world.currency)
    product = await world.product()
    msisdn = await world.customer()
    before = await world.balance(msisdn)
    result = await world.apply(msisdn, product.code, 200_000)
    assert (result.decision.outcome, result.decision.code) == (
        Outcome.REFUSE,
        "DISBURSEMENT_FAILED",
    )
    assert "try again" in result.decision.message
    assert result.application.status == "rejected"
    assert result.application.note == "DISBURSEMENT_FAILED: INSUFFICIENT_FUNDS"
    assert result.loan is None
    assert await world.balance(msisdn) == before
    loans = await world.pool.fetchval("SELECT count(*) FROM loans WHERE msisdn = $1", msisdn)
    assert loans == 0  # the loan row rolled back with the money
    refused = result.refusal_error()
    assert refused is not None and refused.error_code == "DISBURSEMENT_FAILED"
    assert await _notices(world, msisdn) == []  # the customer's own request answers it
    # Once the bank funds it, the fund lends.
    await fund_loans(
        world.pool, amount_minor=200_000, idempotency_key=new_key(), channel="test",
        currency=world.currency,
    )  # fmt: skip
    again = await world.apply(msisdn, product.code, 200_000, key="after-funding")
    assert again.decision.code == "APPROVED" and again.loan is not None
    assert await world.balance(msisdn) == before + 200_000
    assert (await world.income())["loan_fund"] == 0  # it lent all it was given


@pytest.mark.parametrize(
    ("customer", "code"),
    [
        ({"tier": "basic"}, "TIER_NOT_ALLOWED"),
        ({"age_days": 29}, "ACCOUNT_TOO_NEW"),
        ({"age_days": 30}, "REVIEW_SCORE"),  # eligible; a 30-day tenure scores low
    ],
)
async def test_customer_facts_reach_the_rules(
    world: World, customer: dict[str, Any], code: str | None
) -> None:
    product = await world.product()
    msisdn = await world.customer(**customer)
    result = await world.apply(msisdn, product.code, 100_000)
    assert result.decision.code == (code or "APPROVED")


async def test_velocity_counts_applications_in_24_hours(world: World) -> None:
    world.service.policy = replace(world.service.policy, fraud=FraudLimits(max_applications_24h=2))
    closed = await world.product(tiers=["premium"])  # refuses this standard-tier customer
    offered = await world.product()
    msisdn = await world.customer()
    first = await world.apply(msisdn, closed.code, 100_000, key="v1")
    second = await world.apply(msisdn, closed.code, 100_000, key="v2")
    assert [first.decision.code, second.decision.code] == ["TIER_NOT_ALLOWED"] * 2
    # Refused applications count too: a third within 24 hours is more than 2.
    third = await world.apply(msisdn, offered.code, 100_000, key="v3")
    assert third.decision.code == "TOO_MANY_APPLICATIONS"
    world.clock.advance(days=1)  # exactly 24 hours later the first ones fall out of the window
    fourth = await world.apply(msisdn, offered.code, 100_000, key="v4")
    assert fourth.decision.code == "APPROVED"


async def test_concurrent_applications_from_one_number_give_one_loan(world: World) -> None:
    product = await world.product()
    msisdn = await world.customer()
    results = await asyncio.gather(
        *[world.apply(msisdn, product.code, 100_000, key=f"c{i}") for i in range(4)]
    )
    approved = [r for r in results if r.decision.outcome is Outcome.APPROVE]
    assert len(approved) == 1
    assert {r.decision.code for r in results if r not in approved} <= {
        "LOAN_OUTSTANDING",
        "APPLICATION_IN_FLIGHT",
        "TOO_MANY_APPLICATIONS",  # the 4th within 24 hours, whichever order they ran in
    }
    open_loans = await world.pool.fetchval(
        "SELECT count(*) FROM loans WHERE msisdn = $1 AND status = 'active'", msisdn
    )
    assert open_loans == 1


class SlowScorer:
    name = "slow-bureau"

    async def score(self, facts: ScoringFacts, product: Product) -> Score:
        await asyncio.sleep(5)
        return Score(1000, 10**9)


class BrokenScorer:
    name = "broken-bureau"

    async def score(self, facts: ScoringFacts, product: Product) -> Score:
        raise ConnectionError("bureau unreachable")


class GenerousScorer:
    name = "external"

    async def score(self, facts: ScoringFacts, product: Product) -> Score:
        return Score(900, 250_000, {"bureau": 900}, self.name)


@pytest.mark.parametrize("scorer", [SlowScorer(), BrokenScorer()])
async def test_scorer_failure_goes_to_review_never_approval(world: World, scorer: Any) -> None:
    world.service = core_service(
        world.clock, policy=LoanPolicy(scorer_timeout_s=0.2), scorer=scorer
    )
    product = await world.product()
    msisdn = await world.customer()
    result = await world.apply(msisdn, product.code, 100_000)
    assert (result.decision.outcome, result.decision.code) == (
        Outcome.REVIEW,
        "SCORER_UNAVAILABLE",
    )
    assert result.application.score is None


async def test_an_external_scorer_plugs_in(world: World) -> None:
    world.service = core_service(world.clock, scorer=GenerousScorer())
    product = await world.product()
    msisdn = await world.customer(inflow_minor=0)
    over = await world.apply(msisdn, product.code, 300_000, key="x1")
    assert (over.decision.code, over.decision.limit_minor) == ("OVER_LIMIT", 250_000)
    ok = await world.apply(msisdn, product.code, 250_000, key="x2")
    assert ok.decision.code == "APPROVED" and ok.application.score == 900


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("msisdn", "0712345678"),
        ("amount_minor", 0),
        ("amount_minor", 1.5),
        ("idempotency_key", ""),
        ("idempotency_key", "has space"),
        ("channel", "USSD!"),
    ],
)
async def test_bad_input_is_refused_before_anything_happens(
    world: World, field: str, value: Any
) -> None:
    product = await world.product()
    msisdn = await world.customer()
    args: dict[str, Any] = {
        "msisdn": msisdn,
        "product_code": product.code,
        "amount_minor": 100_000,
        "channel": "ussd",
        "idempotency_key": "k",
    }
    args[field] = value
    with pytest.raises(ValidationFailed):
        await world.service.apply(world.pool, **args)
    count = await world.pool.fetchval(
        "SELECT count(*) FROM loan_applications WHERE msisdn = $1", msisdn
    )
    assert count == 0


async def test_unknown_product_and_customer(world: World) -> None:
    product = await world.product()
    msisdn = await world.customer()
    with pytest.raises(NotFound):
        await world.apply(msisdn, "NOPE", 100_000, key="k", channel="sms")
    with pytest.raises(NotFound):
        await world.apply("+254799999999", product.code, 100_000, key="k", channel="sms")


async def test_the_database_backs_the_one_open_loan_rule(world: World) -> None:
    product = await world.product()
    msisdn = await world.customer()
    first = await world.apply(msisdn, product.code, 100_000, key="one")
    assert first.loan is not None
    # Bypass the service's rules: a second application pushed straight to disbursement.
    async with world.pool.acquire() as conn, conn.transaction():
        decision = Decision(Outcome.APPROVE, "APPROVED", "ok")
        app = await store.insert_application(
            conn,
            msisdn=msisdn,
            product=product,
            principal_minor=100_000,
            channel="ussd",
            idempotency_key="two",
            decision=decision,
            score=None,
            now=world.clock.now(),
        )
        for trigger, dest in (("approve", "approved"), ("disburse", "disbursed")):
            app = await store.move_application(
                conn, app, trigger=trigger, dest=dest, actor="t", now=world.clock.now()
            )
        schedule = build_schedule(product, 100_000, world.clock.today())
        with pytest.raises(Conflict) as info:
            await book.insert_loan(
                conn,
                app,
                product,
                schedule,
                disbursement_key="two",
                disbursement_ref=None,
                now=world.clock.now(),
            )
        assert info.value.error_code == "LOAN_OUTSTANDING"


async def test_a_replay_after_review_reads_as_the_final_decision(world: World) -> None:
    product = await world.product(auto_approve_max_minor=0)
    msisdn = await world.customer()
    waiting = await world.apply(msisdn, product.code, 100_000, key="r")
    assert waiting.decision.outcome is Outcome.REVIEW
    await world.service.approve(world.pool, waiting.application.id, actor="officer")
    replay = await world.apply(msisdn, product.code, 100_000, key="r")
    assert replay.replayed and replay.decision.outcome is Outcome.APPROVE
    assert replay.loan is not None and replay.loan.status == "active"


async def test_an_approval_whose_disbursement_is_refused_is_told_to_the_customer(
    world: World,
) -> None:
    """An officer approves; the ledger refuses the disbursement (the fund is short): the
    application is rejected and the customer told so, in their language. Before, nobody told
    them: their last word was "your application will be reviewed" (found in review; the same
    path serves a resumed disbursement after a USSD promise was settled as approved)."""
    world.currency = "XTF"  # a test currency whose loan fund holds nothing yet
    await prepare_currency(world.pool, world.currency)
    product = await world.product(auto_approve_max_minor=0)
    msisdn = await world.customer()
    await world.pool.execute("UPDATE customers SET language = 'sw' WHERE msisdn = $1", msisdn)
    result = await world.apply(msisdn, product.code, 20_000)
    assert result.decision.outcome is Outcome.REVIEW
    reviewed = await world.service.approve(world.pool, result.application.id, actor="officer1")
    assert reviewed.application.status == "rejected" and reviewed.loan is None
    assert await _notices(world, msisdn) == ["loan_rejected"]
    body = await world.pool.fetchval(
        "SELECT o.body FROM loan_notices n JOIN outbox o ON o.id = n.outbox_id "
        "WHERE n.recipient = $1 AND n.kind = 'loan_rejected'",
        msisdn,
    )
    assert body == (
        "Ombi lako la mkopo halikukubaliwa. Hatukuweza kutuma pesa sasa; tafadhali jaribu tena "
        "baadaye"
    )
