"""Repayment schedules: due dates and the principal, interest and fee of each installment.

Computed in Decimal on integer minor units and rounded half-even to whole minor units; the last
installment takes whatever rounding left over, so principal always sums to the loan exactly and
interest to the term's total. The formulas are Fineract's (notes section 2):

    FLAT               interest_total = P x i x n           (i = rate per period, n = repayments)
                       interest_k     = interest_total / n
    DECLINING_BALANCE  interest_k     = outstanding_(k-1) x i
      EQUAL_INSTALLMENTS  EMI = outstanding x i / (1 - (1 + i)^-m), m = periods left to amortise
                          principal_k = EMI - interest_k
      EQUAL_PRINCIPAL     principal_k = P / (n - principal grace)

Grace: no principal falls due in the first `grace_principal_periods` installments (the EMI is
then computed over the remaining periods); interest of the first `grace_interest_periods` still
accrues but is carried into the first installment after that grace. With equal installments the
installment is rounded to `installment_multiple_minor` (Fineract's
`installmentAmountInMultiplesOf`; Fineract breaks exact ties downwards, we break them half-even)
and principal is the installment less its interest. The facility fee is due with installment 1.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

from core.loans.products import Amortization, Frequency, InterestMethod, Product

_ONE = Decimal(1)
_HUNDRED = Decimal(100)
_PRECISION = 40  # digits for the EMI power; far beyond the 2-3 decimal places money needs


@dataclass(frozen=True, slots=True)
class Installment:
    number: int
    due_date: date
    principal_minor: int
    interest_minor: int
    fee_minor: int = 0

    @property
    def total_minor(self) -> int:
        return self.principal_minor + self.interest_minor + self.fee_minor


@dataclass(frozen=True, slots=True)
class Schedule:
    principal_minor: int
    installments: tuple[Installment, ...]

    @property
    def interest_minor(self) -> int:
        return sum(i.interest_minor for i in self.installments)

    @property
    def fee_minor(self) -> int:
        return sum(i.fee_minor for i in self.installments)

    @property
    def total_minor(self) -> int:
        return sum(i.total_minor for i in self.installments)

    @property
    def first_due_date(self) -> date:
        return self.installments[0].due_date

    @property
    def maturity_date(self) -> date:
        return self.installments[-1].due_date


def round_minor(value: Decimal) -> int:
    """Half-even to a whole minor unit (banker's rounding: no drift over many installments)."""
    return int(value.quantize(_ONE, rounding=ROUND_HALF_EVEN))


def round_to_multiple(value: Decimal, multiple: int) -> int:
    if multiple <= 1:
        return round_minor(value)
    return round_minor(value / multiple) * multiple


def add_months(start: date, months: int) -> date:
    """The same day `months` later, clamped to the month's end (31 Jan + 1 month = 28/29 Feb).
    Always counted from the start date, so a clamp never shifts later due dates."""
    index = start.month - 1 + months
    year, month = start.year + index // 12, index % 12 + 1
    return date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


def due_dates(start: date, frequency: Frequency, every: int, count: int) -> list[date]:
    if frequency is Frequency.MONTHS:
        return [add_months(start, k * every) for k in range(1, count + 1)]
    step = timedelta(days=every if frequency is Frequency.DAYS else 7 * every)
    return [start + step * k for k in range(1, count + 1)]


def facility_fee_minor(product: Product, principal_minor: int) -> int:
    percent_part = round_minor(Decimal(principal_minor) * product.facility_fee_percent / _HUNDRED)
    return product.facility_fee_flat_minor + percent_part


def emi(outstanding: Decimal, rate: Decimal, periods: int) -> Decimal:
    """The level payment that clears `outstanding` in `periods` at `rate` per period."""
    if rate == 0:
        return outstanding / periods
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        return outstanding * rate / (_ONE - (_ONE + rate) ** -periods)


def _flat_accruals(product: Product, principal_minor: int) -> list[int]:
    """Flat interest accrued in each period: the term's total split evenly, the last period
    taking the rounding remainder."""
    n = product.repayments
    rate = product.interest_rate_percent / _HUNDRED
    total = round_minor(Decimal(principal_minor) * rate * n)
    per = round_minor(Decimal(total) / n)
    if n > 1:
        per = min(per, total // (n - 1))  # tiny totals: the last share must not go negative
    return [per] * (n - 1) + [total - per * (n - 1)]


def build_schedule(product: Product, principal_minor: int, disbursed_on: date) -> Schedule:
    """The repayment schedule for `principal_minor` disbursed on `disbursed_on`."""
    n, grace_p = product.repayments, product.grace_principal_periods
    dates = due_dates(disbursed_on, product.frequency, product.repayment_every, n)
    rate = product.interest_rate_percent / _HUNDRED
    flat = product.interest_method is InterestMethod.FLAT
    accruals = _flat_accruals(product, principal_minor) if flat else []
    equal_principal = round_minor(Decimal(principal_minor) / (n - grace_p))
    balance, deferred = principal_minor, 0
    level: int | None = None  # the regular installment, fixed at the first principal period
    rows: list[Installment] = []
    for k in range(1, n + 1):
        accrued = accruals[k - 1] if flat else round_minor(Decimal(balance) * rate)
        if k <= product.grace_interest_periods:
            interest_due, deferred = 0, deferred + accrued
        else:
            interest_due, deferred = accrued + deferred, 0
        if k == n:
            principal = balance
        elif k <= grace_p:
            principal = 0
        elif product.amortization is Amortization.EQUAL_PRINCIPAL:
            principal = equal_principal
        else:
            if level is None:
                base = (
                    Decimal(principal_minor) / (n - grace_p) + accrued
                    if flat
                    else emi(Decimal(balance), rate, n - k + 1)
                )
                level = round_to_multiple(base, product.installment_multiple_minor)
            principal = level - accrued
        # Tiny loans with a coarse multiple could overshoot; the balance bounds every part.
        principal = max(0, min(balance, principal))
        balance -= principal
        fee = facility_fee_minor(product, principal_minor) if k == 1 else 0
        rows.append(Installment(k, dates[k - 1], principal, interest_due, fee))
    assert balance == 0 and deferred == 0
    return Schedule(principal_minor, tuple(rows))
