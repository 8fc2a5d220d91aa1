"""Arrears: days past due and the delinquency bucket a loan sits in.

Days past due (DPD) count from the oldest installment that is still unpaid after its due date,
as Fineract's delinquency classification does (notes section 2): an installment due on the 1st
and unpaid is 1 day past due on the 2nd. The buckets are the issue's: 1-30, 31-60, 61-90 and 90+
days (90+ meaning 91 days or more); a loan with nothing past due is `current`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from core.loans.allocation import InstallmentDue

CURRENT = "current"
BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("1-30", 1, 30),
    ("31-60", 31, 60),
    ("61-90", 61, 90),
    ("90+", 91, None),
)
BUCKET_NAMES = (CURRENT, *(name for name, _, _ in BUCKETS))


def oldest_unpaid_due_date(dues: Sequence[InstallmentDue]) -> date | None:
    unpaid = [d.due_date for d in dues if d.total_minor > 0]
    return min(unpaid) if unpaid else None


def days_past_due(dues: Sequence[InstallmentDue], today: date) -> int:
    oldest = oldest_unpaid_due_date(dues)
    if oldest is None:
        return 0
    return max(0, (today - oldest).days)


def bucket_for(dpd: int) -> str:
    if dpd <= 0:
        return CURRENT
    for name, low, high in BUCKETS:
        if dpd >= low and (high is None or dpd <= high):
            return name
    raise AssertionError(f"no bucket for {dpd} days")  # the table covers 1..infinity
