"""The loan ports on the banking core (core.loans.core_ledger) and what the channels call first:
every port call runs inside the caller's transaction; customers' tier, tenure and status reach
the rules; notices reach the core's outbox; the loan tables reference the core's customers; and
`quote` gives the confirmation screen its figures or the refusal before the PIN."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from core.errors import (
    AccountClosed,
    CustomerNotFound,
    LoanRefused,
    NotFound,
    ValidationFailed,
    WalletLocked,
    WrongPin,
)
from core.loans.core_ledger import CoreCustomerDirectory, CoreLoanLedger
from core.loans.decision import Outcome
from core.pins import verify_pin
from tests.helpers import new_msisdn
from tests.integration.loans.conftest import PIN, World

ledger = CoreLoanLedger()


async def test_port_calls_run_in_the_callers_transaction(world: World) -> None:
    msisdn = await world.customer(inflow_minor=0)
    key = f"loan-disburse:tx-{msisdn}"
    fund = (await world.income())["loan_fund"]
    async with world.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        receipt = await ledger.disburse(
            conn, loan_id=0, msisdn=msisdn, amount_minor=5_000, currency=world.currency,
            idempotency_key=key,
        )  # fmt: skip
        assert await ledger.available_minor(conn, msisdn, world.currency) == 5_000
        await tx.rollback()
    assert await world.balance(msisdn) == 0
    assert (await world.income())["loan_fund"] == fund
    gone = await world.pool.fetchval(
        "SELECT count(*) FROM transfers WHERE id = ledger_reference_id($1)", receipt.reference
    )
    assert gone == 0


async def test_wallet_activity_leaves_loan_money_out(world: World) -> None:
    product = await world.product()
    msisdn = await world.customer(inflow_minor=2_000_000)  # 20 deposits of 100,000
    await world.spend(msisdn, 30_000)
    result = await world.apply(msisdn, product.code, 100_000)
    assert result.loan is not None
    async with world.pool.acquire() as conn:
        since = await conn.fetchval("SELECT now() - interval '1 hour'")
        activity = await ledger.wallet_activity(conn, msisdn, world.currency, since)
        assert (activity.inflow_minor, activity.outflow_minor) == (2_000_000, 30_000)
        assert activity.transactions == 21  # the disbursement is not activity
        later = await ledger.wallet_activity(conn, msisdn, world.currency, since + timedelta(2))
        assert later.transactions == 0
        nobody = await ledger.wallet_activity(conn, new_msisdn(), world.currency, since)
        assert nobody.transactions == 0


async def test_directory_reports_tier_tenure_and_status(world: World) -> None:
    msisdn = await world.customer(tier="premium", age_days=77, inflow_minor=0)
    async with world.pool.acquire() as conn:
        facts = await CoreCustomerDirectory().customer(conn, msisdn)
        assert facts is not None
        assert (facts.tier, facts.active, facts.status) == ("premium", True, "active")
        assert (world.clock.now() - facts.registered_at).days == 77
        assert await CoreCustomerDirectory().customer(conn, new_msisdn()) is None


async def _lock(world: World, msisdn: str) -> None:
    for _ in range(3):
        with pytest.raises((WrongPin, WalletLocked)):
            await verify_pin(world.pool, msisdn, "9" + PIN[1:])


async def test_a_locked_or_closed_wallet_cannot_borrow_and_is_not_swept(world: World) -> None:
    product = await world.product()
    locked = await world.customer()
    await _lock(world, locked)
    with pytest.raises(WalletLocked):
        await world.apply(locked, product.code, 100_000)
    with pytest.raises(WalletLocked):
        await world.service.quote(
            world.pool, msisdn=locked, product_code=product.code, amount_minor=100_000
        )
    async with world.pool.acquire() as conn:
        assert await ledger.available_minor(conn, locked, world.currency) == 0
    closed = await world.customer()
    await world.pool.execute("UPDATE customers SET status = 'closed' WHERE msisdn = $1", closed)
    with pytest.raises(AccountClosed):
        await world.apply(closed, product.code, 100_000)
    with pytest.raises(CustomerNotFound):
        await world.apply(new_msisdn(), product.code, 100_000)
    count = await world.pool.fetchval(
        "SELECT count(*) FROM loan_applications WHERE msisdn = ANY($1::text[])", [locked, closed]
    )
    assert count == 0


async def test_notices_go_to_the_core_outbox(world: World) -> None:
    product = await world.product()
    msisdn = await world.customer()
    result = await world.apply(msisdn, product.code, 100_000)
    loan = result.loan
    assert loan is not None
    rows = await world.pool.fetch(
        "SELECT o.kind, o.template, o.body, o.channel, o.transfer_id, n.loan_id FROM outbox o"
        " LEFT JOIN loan_notices n ON n.outbox_id = o.id WHERE o.recipient = $1"
        " AND (o.kind <> 'receipt' OR o.template = 'loan_disbursed') ORDER BY o.id",
        msisdn,
    )
    shaped = [(r["kind"], r["template"], r["channel"], r["loan_id"]) for r in rows]
    # ONE message: the core's receipt row for the disbursement, carrying the loan's text
    # (reference, new balance, total to repay, first due date), in the same transaction.
    assert shaped == [("loan_disbursed", "loan_disbursed", "sms", loan.id)]
    ref = loan.disbursement_ref
    transfer = await world.pool.fetchval("SELECT ledger_reference_id($1)", ref)
    assert rows[0]["transfer_id"] == transfer
    assert rows[0]["body"].startswith(f"{ref} Confirmed. Loan of XTS 1,000.00 is in your wallet.")
    # Three weekly installments of 383.33, 383.33 and 383.34 (the last absorbs the rounding).
    assert rows[0]["body"].endswith(
        "Pay XTS 383.33 by 17/01/2024, XTS 1,150.00 in all. New balance XTS 101,000.00."
    )


async def test_loan_rows_need_a_core_customer(world: World) -> None:
    product = await world.product()
    stranger = new_msisdn()
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await world.pool.execute(
            "INSERT INTO loan_applications (msisdn, product_id, principal_minor, currency,"
            " channel, idempotency_key, status, decision, decision_code, decision_message)"
            " VALUES ($1, $2, 100, 'XTS', 'ussd', 'x', 'applied', 'review', 'R', 'r')",
            stranger,
            product.id,
        )
    msisdn = await world.customer()
    result = await world.apply(msisdn, product.code, 100_000)
    assert result.loan is not None
    # A changed number carries the customer's loans with it.
    moved = new_msisdn()
    await world.pool.execute("UPDATE customers SET msisdn = $2 WHERE msisdn = $1", msisdn, moved)
    status = await world.service.status(world.pool, moved)
    assert status is not None and status.loan.id == result.loan.id
    assert await world.service.status(world.pool, msisdn) is None


# --- quote -----------------------------------------------------------------------------------


async def test_quote_gives_the_confirmation_screen_its_figures(world: World) -> None:
    product = await world.product(
        repayments=1, frequency="days", repayment_every=30, facility_fee_percent="2"
    )
    msisdn = await world.customer()
    quote = await world.service.quote(
        world.pool, msisdn=msisdn, product_code=product.code, amount_minor=100_000
    )
    assert (quote.principal_minor, quote.interest_minor, quote.fee_minor) == (
        100_000,
        5_000,
        2_000,
    )
    assert quote.total_minor == 107_000 and quote.first_due_minor == 107_000
    assert quote.first_due_date == quote.maturity_date == world.clock.today() + timedelta(30)
    assert (quote.installments, quote.currency) == (1, world.currency)
    # The loan the customer then takes has exactly these figures.
    result = await world.apply(msisdn, product.code, 100_000)
    status = await world.service.status(world.pool, msisdn)
    assert result.decision.outcome is Outcome.APPROVE
    assert status is not None and status.outstanding_minor == quote.total_minor
    assert status.next_due_date == quote.first_due_date
    # With the loan open, the next quote is refused before any PIN is asked for.
    with pytest.raises(LoanRefused) as info:
        await world.service.quote(
            world.pool, msisdn=msisdn, product_code=product.code, amount_minor=100_000
        )
    assert info.value.error_code == "LOAN_OUTSTANDING"
    assert "outstanding" in info.value.message


@pytest.mark.parametrize(
    ("customer", "amount", "code"),
    [
        ({}, 9_999, "AMOUNT_OUT_OF_RANGE"),
        ({}, 1_000_001, "AMOUNT_OUT_OF_RANGE"),
        ({"tier": "basic"}, 100_000, "TIER_NOT_ALLOWED"),
        ({"age_days": 29}, 100_000, "ACCOUNT_TOO_NEW"),
    ],
)
async def test_quote_refusals_carry_the_rules_code(
    world: World, customer: dict[str, object], amount: int, code: str
) -> None:
    product = await world.product()
    msisdn = await world.customer(**customer)  # type: ignore[arg-type]
    with pytest.raises(LoanRefused) as info:
        await world.service.quote(
            world.pool, msisdn=msisdn, product_code=product.code, amount_minor=amount
        )
    assert info.value.error_code == code
    if code == "AMOUNT_OUT_OF_RANGE":
        assert info.value.message == "Borrow between XTS 100.00 and XTS 10,000.00"


async def test_quote_bad_input(world: World) -> None:
    product = await world.product()
    msisdn = await world.customer(inflow_minor=0)
    for kwargs, error in (
        ({"product_code": "NOPE"}, NotFound),
        ({"product_code": 7}, NotFound),
        ({"amount_minor": 0}, ValidationFailed),
        ({"amount_minor": "100"}, ValidationFailed),
        ({"msisdn": "0712345678"}, ValidationFailed),
        ({"msisdn": new_msisdn()}, CustomerNotFound),
    ):
        args: dict[str, object] = {
            "msisdn": msisdn,
            "product_code": product.code,
            "amount_minor": 100_000,
            **kwargs,
        }
        with pytest.raises(error):
            await world.service.quote(world.pool, **args)  # type: ignore[arg-type]
    await world.pool.execute("UPDATE loan_products SET active = false WHERE id = $1", product.id)
    with pytest.raises(NotFound) as info:
        await world.service.quote(
            world.pool, msisdn=msisdn, product_code=product.code, amount_minor=100_000
        )
    assert info.value.error_code == "PRODUCT_NOT_FOUND"


async def test_an_account_with_an_open_loan_cannot_close(world: World) -> None:
    """The core's close refuses while the loan book has the customer's loan open, even with
    the wallet empty; the account stays active."""
    from core.customers import close_customer
    from core.errors import Conflict

    product = await world.product()
    msisdn = await world.customer()
    result = await world.apply(msisdn, product.code, 100_000, key="close-" + msisdn)
    assert result.loan is not None
    await world.spend_all(msisdn)
    assert await world.balance(msisdn) == 0
    with pytest.raises(Conflict) as info:
        await close_customer(world.pool, msisdn, actor="test")
    assert info.value.error_code == "LOAN_OUTSTANDING"
    status = await world.pool.fetchval("SELECT status FROM customers WHERE msisdn = $1", msisdn)
    assert status == "active"
