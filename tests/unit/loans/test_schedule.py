"""Schedules against published worked examples, one per method, plus invariants for any input.

Source of the worked examples: Apache Fineract's end-to-end test suite,
`fineract-e2e-tests-runner/src/test/resources/features/Loan.feature` (github.com/apache/fineract),
scenarios RS01 (TestRailId C2490, flat / equal installments), RS02 (C2492, declining balance /
equal installments), RS04 (C2494, declining balance / equal principal), RS05 (C2495, declining
balance with 3 periods of principal grace) and RS07 (C2497, 6 periods of principal grace and 3
of interest grace: interest carried into installment 4). All five: principal 5000.00 EUR,
12 % a year charged monthly (1 % per period), 18 monthly repayments from 1 November 2022,
interest calculated "same as repayment period", and the product's
`installmentAmountInMultiplesOf` = 1 (whole euros), which is our `installment_multiple_minor`
= 100. The tables below are the scenario's "Principal due" and "Interest" columns in cents.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.loans.products import validate_product
from core.loans.schedule import add_months, build_schedule, emi, round_minor

BASE: dict[str, Any] = {
    "code": "FINERACT",
    "name": "Fineract e2e LP1",
    "currency": "EUR",
    "principal_min_minor": 10_000,
    "principal_max_minor": 1_000_000,
    "interest_rate_percent": "1",
    "repayments": 18,
    "frequency": "months",
    "min_account_age_days": 0,
    "auto_approve_max_minor": 0,
    "tiers": ["basic"],
    "installment_multiple_minor": 100,
}


def _table(text: str) -> list[tuple[int, int]]:
    """'277.78 50.0' lines -> [(27778, 5000)]."""
    rows = []
    for line in text.strip().splitlines():
        principal, interest = line.split()
        rows.append((round_minor(Decimal(principal) * 100), round_minor(Decimal(interest) * 100)))
    return rows


RS01_FLAT = "\n".join(["278.0 50.0"] * 17 + ["274.0 50.0"])

RS02_DECLINING_EQUAL_INSTALLMENTS = """
255.0 50.0
257.55 47.45
260.13 44.87
262.73 42.27
265.35 39.65
268.01 36.99
270.69 34.31
273.39 31.61
276.13 28.87
278.89 26.11
281.68 23.32
284.5 20.5
287.34 17.66
290.21 14.79
293.12 11.88
296.05 8.95
299.01 5.99
300.22 3.0
"""

RS04_DECLINING_EQUAL_PRINCIPAL = """
277.78 50.0
277.78 47.22
277.78 44.44
277.78 41.67
277.78 38.89
277.78 36.11
277.78 33.33
277.78 30.56
277.78 27.78
277.78 25.0
277.78 22.22
277.78 19.44
277.78 16.67
277.78 13.89
277.78 11.11
277.78 8.33
277.78 5.56
277.74 2.78
"""

RS05_PRINCIPAL_GRACE_3 = """
0.0 50.0
0.0 50.0
0.0 50.0
311.0 50.0
314.11 46.89
317.25 43.75
320.42 40.58
323.63 37.37
326.86 34.14
330.13 30.87
333.43 27.57
336.77 24.23
340.14 20.86
343.54 17.46
346.97 14.03
350.44 10.56
353.95 7.05
351.36 3.51
"""

RS07_PRINCIPAL_GRACE_6_INTEREST_GRACE_3 = """
0.0 0.0
0.0 0.0
0.0 0.0
0.0 200.0
0.0 50.0
0.0 50.0
394.0 50.0
397.94 46.06
401.92 42.08
405.94 38.06
410.0 34.0
414.1 29.9
418.24 25.76
422.42 21.58
426.65 17.35
430.91 13.09
435.22 8.78
442.66 4.43
"""

CASES = [
    (
        "RS01 flat",
        {"interest_method": "flat", "amortization": "equal_installments"},
        RS01_FLAT,
        90_000,
    ),
    (
        "RS02 declining, equal installments",
        {"interest_method": "declining_balance", "amortization": "equal_installments"},
        RS02_DECLINING_EQUAL_INSTALLMENTS,
        48_822,
    ),
    (
        "RS04 declining, equal principal",
        {"interest_method": "declining_balance", "amortization": "equal_principal"},
        RS04_DECLINING_EQUAL_PRINCIPAL,
        47_500,
    ),
    (
        "RS05 principal grace 3",
        {
            "interest_method": "declining_balance",
            "amortization": "equal_installments",
            "grace_principal_periods": 3,
        },
        RS05_PRINCIPAL_GRACE_3,
        55_887,
    ),
    (
        "RS07 principal grace 6, interest grace 3",
        {
            "interest_method": "declining_balance",
            "amortization": "equal_installments",
            "grace_principal_periods": 6,
            "grace_interest_periods": 3,
        },
        RS07_PRINCIPAL_GRACE_6_INTEREST_GRACE_3,
        63_109,
    ),
]


@pytest.mark.parametrize(
    ("label", "terms", "table", "interest_total"), CASES, ids=[c[0] for c in CASES]
)
def test_fineract_worked_examples(
    label: str, terms: dict[str, Any], table: str, interest_total: int
) -> None:
    product = validate_product({**BASE, **terms})
    schedule = build_schedule(product, 500_000, date(2022, 11, 1))
    got = [(i.principal_minor, i.interest_minor) for i in schedule.installments]
    assert got == _table(table)
    assert schedule.interest_minor == interest_total  # the scenario's "Total row"
    assert schedule.principal_minor == sum(i.principal_minor for i in schedule.installments)
    assert schedule.first_due_date == date(2022, 12, 1)
    assert schedule.maturity_date == date(2024, 5, 1)


def _product(**terms: Any) -> Any:
    return validate_product({**BASE, "installment_multiple_minor": 1, **terms})


def test_equal_installments_to_the_cent_last_absorbs_rounding() -> None:
    # RS02's loan without the whole-euro multiple: the EMI is 304.91 (5000 x 0.01 /
    # (1 - 1.01^-18) = 304.9099...), every installment but the last is exactly that.
    product = _product(interest_method="declining_balance", amortization="equal_installments")
    schedule = build_schedule(product, 500_000, date(2022, 11, 1))
    totals = [i.total_minor for i in schedule.installments]
    assert totals[:-1] == [30_491] * 17
    assert abs(totals[-1] - 30_491) <= 18  # the residue of 17 roundings, each under a cent
    assert round_minor(emi(Decimal(500_000), Decimal("0.01"), 18)) == 30_491


def test_flat_single_repayment_with_facility_fee() -> None:
    # M-Shwari-like: 30 days, 7.5 % per period, a 1.5 % facility fee due with the repayment.
    product = _product(
        interest_method="flat",
        amortization="equal_installments",
        interest_rate_percent="7.5",
        repayments=1,
        frequency="days",
        repayment_every=30,
        facility_fee_percent="1.5",
        facility_fee_flat_minor=100,
    )
    schedule = build_schedule(product, 100_000, date(2024, 1, 31))
    (only,) = schedule.installments
    assert only.due_date == date(2024, 3, 1)
    assert (only.principal_minor, only.interest_minor, only.fee_minor) == (100_000, 7_500, 1_600)
    assert schedule.total_minor == 109_100


def test_flat_interest_split_evenly_with_remainder_last() -> None:
    # 1000.00 at 1 % for 3 periods: 30.00 interest; 10.00 each. 1000.01: 30.0003 -> 30.00.
    product = _product(interest_method="flat", amortization="equal_principal", repayments=3)
    schedule = build_schedule(product, 100_001, date(2024, 1, 1))
    assert [i.interest_minor for i in schedule.installments] == [1000, 1000, 1000]
    assert [i.principal_minor for i in schedule.installments] == [33_334, 33_334, 33_333]
    tiny = build_schedule(product, 100, date(2024, 1, 1))
    assert [i.principal_minor for i in tiny.installments] == [33, 33, 34]


def test_zero_rate_has_no_interest() -> None:
    product = _product(
        interest_method="declining_balance",
        interest_rate_percent="0",
        amortization="equal_installments",
        repayments=4,
    )
    schedule = build_schedule(product, 1_000, date(2024, 1, 1))
    assert [i.principal_minor for i in schedule.installments] == [250, 250, 250, 250]
    assert schedule.interest_minor == 0


@pytest.mark.parametrize(
    ("frequency", "every", "expected"),
    [
        ("days", 30, [date(2024, 3, 1), date(2024, 3, 31), date(2024, 4, 30)]),
        ("weeks", 2, [date(2024, 2, 14), date(2024, 2, 28), date(2024, 3, 13)]),
        ("months", 1, [date(2024, 2, 29), date(2024, 3, 31), date(2024, 4, 30)]),
    ],
)
def test_due_dates(frequency: str, every: int, expected: list[date]) -> None:
    product = _product(
        interest_method="flat",
        amortization="equal_installments",
        repayments=3,
        frequency=frequency,
        repayment_every=every,
    )
    schedule = build_schedule(product, 30_000, date(2024, 1, 31))
    assert [i.due_date for i in schedule.installments] == expected


def test_add_months_clamps_without_drifting() -> None:
    assert add_months(date(2023, 1, 31), 1) == date(2023, 2, 28)
    assert add_months(date(2023, 1, 31), 2) == date(2023, 3, 31)
    assert add_months(date(2023, 11, 30), 3) == date(2024, 2, 29)
    assert add_months(date(2023, 12, 15), 12) == date(2024, 12, 15)


@st.composite
def products(draw: st.DrawFn) -> tuple[Any, int]:
    repayments = draw(st.integers(min_value=1, max_value=36))
    grace_p = draw(st.integers(min_value=0, max_value=min(5, repayments - 1)))
    product = _product(
        interest_method=draw(st.sampled_from(["flat", "declining_balance"])),
        amortization=draw(st.sampled_from(["equal_installments", "equal_principal"])),
        interest_rate_percent=str(draw(st.decimals(min_value=0, max_value=30, places=2))),
        repayments=repayments,
        installment_multiple_minor=draw(st.sampled_from([1, 100, 1000])),
        grace_principal_periods=grace_p,
        grace_interest_periods=draw(st.integers(min_value=0, max_value=grace_p)),
    )
    return product, draw(st.integers(min_value=1, max_value=10**10))


@settings(max_examples=300, deadline=None)
@given(products())
def test_invariants_for_any_product(case: tuple[Any, int]) -> None:
    product, principal = case
    repayments, rate = product.repayments, product.interest_rate_percent
    grace_p, grace_i = product.grace_principal_periods, product.grace_interest_periods
    schedule = build_schedule(product, principal, date(2024, 1, 31))
    rows = schedule.installments
    assert len(rows) == repayments
    assert sum(r.principal_minor for r in rows) == principal
    assert all(r.principal_minor >= 0 and r.interest_minor >= 0 for r in rows)
    assert all(r.principal_minor == 0 for r in rows[:grace_p])
    assert all(r.interest_minor == 0 for r in rows[:grace_i])
    assert [r.number for r in rows] == list(range(1, repayments + 1))
    dates = [r.due_date for r in rows]
    assert dates == sorted(set(dates))
    if product.interest_method == "flat":
        assert schedule.interest_minor == round_minor(Decimal(principal) * rate / 100 * repayments)
    else:
        # Declining interest never exceeds what a flat loan on the full principal would charge.
        assert (
            schedule.interest_minor
            <= round_minor(Decimal(principal) * rate / 100 * repayments) + repayments
        )
