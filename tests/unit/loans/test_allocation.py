"""Repayment allocation: penalties, fees, interest, principal; oldest installment first;
overpayment refused; and the arrears buckets at every boundary."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import Overpayment, ValidationFailed
from core.loans.allocation import (
    InstallmentDue,
    allocate,
    apply_allocation,
    due_by,
    outstanding_minor,
)
from core.loans.arrears import BUCKET_NAMES, bucket_for, days_past_due

D1, D2, D3 = date(2024, 1, 1), date(2024, 2, 1), date(2024, 3, 1)
DUES = [
    # Deliberately out of order: allocation sorts by due date.
    InstallmentDue(2, D2, penalty_minor=0, fee_minor=0, interest_minor=50, principal_minor=300),
    InstallmentDue(1, D1, penalty_minor=20, fee_minor=30, interest_minor=50, principal_minor=300),
    InstallmentDue(3, D3, interest_minor=50, principal_minor=300),
]


@pytest.mark.parametrize(
    ("amount", "first"),
    [
        (10, (10, 0, 0, 0)),  # penalties first
        (20, (20, 0, 0, 0)),
        (21, (20, 1, 0, 0)),  # then fees
        (50, (20, 30, 0, 0)),
        (75, (20, 30, 25, 0)),  # then interest
        (100, (20, 30, 50, 0)),
        (101, (20, 30, 50, 1)),  # then principal
        (400, (20, 30, 50, 300)),
    ],
)
def test_order_within_the_oldest_installment(amount: int, first: tuple[int, ...]) -> None:
    result = allocate(amount, DUES)
    portion = result.portions[0]
    assert portion.number == 1
    got = (
        portion.penalty_minor,
        portion.fee_minor,
        portion.interest_minor,
        portion.principal_minor,
    )
    assert got == first
    assert len(result.portions) == 1


def test_flows_into_the_next_installment_in_the_same_order() -> None:
    result = allocate(460, DUES)
    assert [p.number for p in result.portions] == [1, 2]
    second = result.portions[1]
    assert (second.interest_minor, second.principal_minor) == (50, 10)
    assert result.penalty_minor == 20 and result.fee_minor == 30
    assert result.interest_minor == 100 and result.principal_minor == 310
    assert result.outstanding_after_minor == outstanding_minor(DUES) - 460


def test_exact_payoff_is_accepted_and_one_more_unit_is_refused() -> None:
    owed = outstanding_minor(DUES)
    assert owed == 1100
    assert allocate(owed, DUES).outstanding_after_minor == 0
    with pytest.raises(Overpayment) as info:
        allocate(owed + 1, DUES)
    assert info.value.details["outstanding_minor"] == owed
    assert info.value.error_code == "OVERPAYMENT"


@pytest.mark.parametrize("amount", [0, -5, True, 1.5, "10"])
def test_bad_amounts(amount: object) -> None:
    with pytest.raises(ValidationFailed):
        allocate(amount, DUES)  # type: ignore[arg-type]


def test_apply_and_due_by() -> None:
    after = apply_allocation(DUES, allocate(460, DUES))
    by_number = {d.number: d for d in after}
    assert by_number[1].total_minor == 0
    assert by_number[2].total_minor == 290
    assert due_by(after, D2) == 290
    assert due_by(after, D2 - timedelta(days=1)) == 0
    assert due_by(after, D3) == 640


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_allocation_conserves_money(data: st.DataObject) -> None:
    dues = [
        InstallmentDue(
            n,
            D1 + timedelta(days=30 * n),
            *data.draw(st.tuples(*[st.integers(min_value=0, max_value=500)] * 4)),
        )
        for n in range(1, data.draw(st.integers(min_value=1, max_value=6)) + 1)
    ]
    owed = outstanding_minor(dues)
    if owed == 0:
        return
    amount = data.draw(st.integers(min_value=1, max_value=owed))
    result = allocate(amount, dues)
    assert sum(p.total_minor for p in result.portions) == amount
    after = apply_allocation(dues, result)
    assert all(
        min(d.penalty_minor, d.fee_minor, d.interest_minor, d.principal_minor) >= 0 for d in after
    )
    # Nothing in a later installment is paid while an earlier one still owes anything.
    paid = {p.number for p in result.portions}
    for due in after:
        if due.total_minor > 0:
            assert all(n <= due.number for n in paid)
            break


@pytest.mark.parametrize(
    ("dpd", "bucket"),
    [
        (-3, "current"),
        (0, "current"),
        (1, "1-30"),
        (30, "1-30"),
        (31, "31-60"),
        (60, "31-60"),
        (61, "61-90"),
        (90, "61-90"),
        (91, "90+"),
        (4000, "90+"),
    ],
)
def test_bucket_boundaries(dpd: int, bucket: str) -> None:
    assert bucket_for(dpd) == bucket
    assert bucket in BUCKET_NAMES


def test_days_past_due_counts_from_the_oldest_unpaid_installment() -> None:
    paid_first = apply_allocation(DUES, allocate(400, DUES))
    assert days_past_due(DUES, D1) == 0  # due today is not late
    assert days_past_due(DUES, D1 + timedelta(days=1)) == 1
    assert days_past_due(paid_first, D2 + timedelta(days=5)) == 5
    assert days_past_due(paid_first, D1 + timedelta(days=10)) == 0
    assert days_past_due([], D3) == 0
