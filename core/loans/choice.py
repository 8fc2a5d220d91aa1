"""Which loan product an application names when the customer gives only an amount (SMS
`LOAN <amount> <PIN>`), and the amounts they could borrow when no product takes theirs.

Pure: the offered products, the customer's tier and account age, the amount and today in; a
`Choice` out. The rules are the products' own (core.loans.fraud applies them again when the
application is decided, with the rest of the rules):

1. the active products in the currency;
2. of those, the ones this customer may borrow from (their tier is allowed, their account is old
   enough); when there are none, all of step 1, so the application goes on and the loan rule
   that refuses it says why (TIER_NOT_ALLOWED, ACCOUNT_TOO_NEW) in the customer's language;
3. of those, the ones whose principal range holds the amount;
4. of those, the cheapest for this amount (least to repay in all: principal, interest, fees),
   then the shortest term, then the code, so the choice is the same every time.

When step 3 leaves nothing, `ranges` are the amounts of step 2 (overlapping and touching
ranges merged, lowest first) for the reply to say what may be borrowed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from core.loans.products import Product
from core.loans.schedule import build_schedule

MAX_RANGES_SHOWN = 3  # more than this collapse into one, lowest minimum to highest maximum


@dataclass(frozen=True, slots=True)
class Choice:
    product: Product | None  # None: no product in reach takes the amount (see `ranges`)
    ranges: tuple[tuple[int, int], ...] = ()  # (min_minor, max_minor), merged, lowest first


def may_borrow(product: Product, tier: str, account_age_days: int) -> bool:
    return tier.lower() in product.tiers and account_age_days >= product.min_account_age_days


def merged_ranges(products: Sequence[Product]) -> tuple[tuple[int, int], ...]:
    spans = sorted((p.principal_min_minor, p.principal_max_minor) for p in products)
    merged: list[tuple[int, int]] = []
    for low, high in spans:
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    if len(merged) > MAX_RANGES_SHOWN:
        return ((merged[0][0], max(high for _, high in merged)),)
    return tuple(merged)


def _cost(product: Product, amount_minor: int, today: date) -> tuple[int, date, str]:
    schedule = build_schedule(product, amount_minor, today)
    return schedule.total_minor, schedule.maturity_date, product.code


def choose_product(
    offered: Sequence[Product],
    *,
    currency: str,
    amount_minor: int,
    tier: str,
    account_age_days: int,
    today: date,
) -> Choice:
    """The product for `amount_minor` (module docstring), or None and the ranges in reach."""
    active = [p for p in offered if p.active and p.currency == currency]
    if not active:
        return Choice(None)
    allowed = [p for p in active if may_borrow(p, tier, account_age_days)] or active
    fits = [p for p in allowed if p.principal_min_minor <= amount_minor <= p.principal_max_minor]
    if not fits:
        return Choice(None, merged_ranges(allowed))
    return Choice(min(fits, key=lambda p: _cost(p, amount_minor, today)))
