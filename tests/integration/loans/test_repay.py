"""Repayments on a real database: allocation order recorded, overpayment refused with nothing
changed, idempotent retries, a short wallet refused, and the loan moving to repaid."""

from __future__ import annotations

import pytest

from core.errors import IdempotencyConflict, InsufficientFunds, NotFound, Overpayment
from tests.integration.loans.conftest import World


async def _paid(world: World, loan_id: int) -> list[tuple[int, int, int, int]]:
    rows = await world.pool.fetch(
        "SELECT penalty_paid_minor, fee_paid_minor, interest_paid_minor, principal_paid_minor"
        " FROM loan_installments WHERE loan_id = $1 ORDER BY number",
        loan_id,
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def test_allocation_order_is_recorded(world: World) -> None:
    # 300,000 flat 5 % x 3: installments of 100,000 + 15,000 interest; a 3,000 fee on the first.
    msisdn, loan_id, _ = await world.new_loan(300_000, facility_fee_flat_minor=3_000)
    await world.pool.execute(  # a late penalty on installment 1, as the penalty job would add
        "UPDATE loan_installments SET penalty_minor = 2000 WHERE loan_id = $1 AND number = 1",
        loan_id,
    )
    first = await world.repay(msisdn, 10_000, key="r1")  # penalty 2,000, fee 3,000, interest 5,000
    assert (first.repayment.penalty_minor, first.repayment.fee_minor) == (2_000, 3_000)
    assert (first.repayment.interest_minor, first.repayment.principal_minor) == (5_000, 0)
    second = await world.repay(msisdn, 120_000, key="r2")  # rest of #1 (110,000), #2's interest
    assert await _paid(world, loan_id) == [
        (2_000, 3_000, 15_000, 100_000),
        (0, 0, 10_000, 0),
        (0, 0, 0, 0),
    ]
    # owed: 345,000 + fee 3,000 + penalty 2,000 = 350,000; paid 130,000.
    assert second.outstanding_minor == 220_000
    receipt = await world.pool.fetchval(
        "SELECT portions FROM loan_repayments WHERE id = $1", second.repayment.id
    )
    assert '"number": 2' in receipt


async def test_overpayment_is_refused_and_changes_nothing(world: World) -> None:
    msisdn, loan_id, _ = await world.new_loan(300_000)
    owed = 345_000
    before = await world.balance(msisdn)
    with pytest.raises(Overpayment) as info:
        await world.repay(msisdn, owed + 1, key="over")
    assert info.value.details["outstanding_minor"] == owed
    assert await world.balance(msisdn) == before
    assert await _paid(world, loan_id) == [(0, 0, 0, 0)] * 3
    count = await world.pool.fetchval(
        "SELECT count(*) FROM loan_repayments WHERE loan_id = $1", loan_id
    )
    assert count == 0


async def test_paying_everything_repays_the_loan_and_retries_replay(world: World) -> None:
    msisdn, loan_id, _ = await world.new_loan(300_000)
    result = await world.repay(msisdn, 345_000, key="all")
    assert result.outstanding_minor == 0 and result.loan.status == "repaid"
    assert result.loan.closed_at is not None
    again = await world.repay(msisdn, 345_000, key="all")
    assert again.replayed and again.repayment.id == result.repayment.id
    assert await world.transfers_for(loan_id, "loan_repayment") == 1
    with pytest.raises(IdempotencyConflict):
        await world.repay(msisdn, 1_000, key="all")
    with pytest.raises(NotFound):
        await world.repay(msisdn, 1_000, key="after")
    assert await world.service.status(world.pool, msisdn) is None
    kinds = await world.pool.fetch(
        "SELECT body FROM loan_notices WHERE loan_id = $1 AND kind = 'loan_repayment'", loan_id
    )
    assert len(kinds) == 1 and "fully repaid" in kinds[0]["body"]


async def test_a_short_wallet_is_refused_and_nothing_is_recorded(world: World) -> None:
    msisdn, loan_id, _ = await world.new_loan(300_000)
    balance = await world.balance(msisdn)
    await world.spend(msisdn, balance - 500)  # the wallet can no longer cover 1,000
    with pytest.raises(InsufficientFunds):
        await world.repay(msisdn, 1_000, key="short")
    assert await _paid(world, loan_id) == [(0, 0, 0, 0)] * 3
    status = await world.service.status(world.pool, msisdn)
    assert status is not None and status.outstanding_minor == 345_000


async def test_no_ledger_means_no_money_moves(world: World) -> None:
    msisdn, *_ = await world.new_loan(300_000)
    world.service.ledger = None
    from core.errors import Unavailable

    with pytest.raises(Unavailable):
        await world.repay(msisdn, 1_000, key="x")
