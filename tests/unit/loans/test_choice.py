"""Which product `LOAN <amount>` applies for: a case table over core.loans.choice."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from core.loans.choice import Choice, choose_product, merged_ranges
from core.loans.products import Product, validate_product
from tests.loans_support import terms

TODAY = date(2026, 11, 29)


def product(code: str, low: int, high: int, **overrides: Any) -> Product:
    return validate_product({**terms(code, code.title(), low=low, high=high), **overrides})


SMALL = product("SMALL", 100_00, 900_00)
BIG = product("BIG", 1_000_00, 5_000_00, interest_rate_percent="8")
CHEAP_BIG = product("CHEAPBIG", 2_000_00, 5_000_00, interest_rate_percent="3")
PREMIUM_ONLY = product("PREM", 100_00, 50_000_00, tiers=["premium"])
OLD_HANDS = product("OLD", 100_00, 50_000_00, min_account_age_days=365)
RETIRED = product("GONE", 100_00, 50_000_00, active=False)
DOLLARS = product("USD1", 100_00, 50_000_00, currency="USD")

CASES = [
    # label, offered, amount, tier, age days, chosen code or the ranges in reach
    ("small amount, small product", [SMALL, BIG], 500_00, "Basic", 400, "SMALL"),
    ("big amount, big product", [SMALL, BIG], 1_500_00, "Basic", 400, "BIG"),
    ("order does not matter", [BIG, SMALL], 500_00, "Basic", 400, "SMALL"),
    ("range edges: lowest", [SMALL, BIG], 100_00, "Basic", 400, "SMALL"),
    ("range edges: highest", [SMALL, BIG], 900_00, "Basic", 400, "SMALL"),
    ("range edges: next product", [SMALL, BIG], 1_000_00, "Basic", 400, "BIG"),
    ("two fit: the cheaper", [BIG, CHEAP_BIG], 3_000_00, "Basic", 400, "CHEAPBIG"),
    ("one of two fits", [BIG, CHEAP_BIG], 1_500_00, "Basic", 400, "BIG"),
    ("between the ranges", [SMALL, BIG], 950_00, "Basic", 400, ((100_00, 900_00),
                                                                (1_000_00, 5_000_00))),
    ("below every range", [SMALL, BIG], 50_00, "Basic", 400, ((100_00, 900_00),
                                                             (1_000_00, 5_000_00))),
    ("above every range", [SMALL, BIG], 9_000_00, "Basic", 400, ((100_00, 900_00),
                                                                (1_000_00, 5_000_00))),
    ("tier: the one allowed", [PREMIUM_ONLY, SMALL], 500_00, "Premium", 400, "PREM"),
    ("tier: not the others'", [PREMIUM_ONLY, SMALL], 500_00, "Basic", 400, "SMALL"),
    ("tier: out of the allowed range, the range said", [PREMIUM_ONLY, SMALL], 2_000_00, "Basic",
     400, ((100_00, 900_00),)),
    ("age: too new for one", [OLD_HANDS, BIG], 1_500_00, "Basic", 40, "BIG"),
    ("age: old enough, cheaper", [OLD_HANDS, BIG], 1_500_00, "Basic", 400, "OLD"),
    ("none allowed: all, the rules refuse later", [PREMIUM_ONLY], 500_00, "Basic", 400, "PREM"),
    ("inactive and other currency left out", [RETIRED, DOLLARS, SMALL], 500_00, "Basic", 400,
     "SMALL"),
    ("only inactive or foreign", [RETIRED, DOLLARS], 500_00, "Basic", 400, ()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("label", "offered", "amount", "tier", "age", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_choice(  # noqa: PLR0917 (one parameter per table column)
    label: str, offered: list[Product], amount: int, tier: str, age: int, expected: object
) -> None:
    choice = choose_product(
        offered, currency="KES", amount_minor=amount, tier=tier, account_age_days=age, today=TODAY
    )
    if isinstance(expected, str):
        assert choice.product is not None and choice.product.code == expected, choice
    else:
        assert choice == Choice(None, expected), choice  # type: ignore[arg-type]


def test_ranges_merge_and_collapse() -> None:
    touching = [product("A1", 100_00, 500_00), product("A2", 500_01, 900_00)]
    assert merged_ranges(touching) == ((100_00, 900_00),)
    nested = [product("B1", 100_00, 900_00), product("B2", 200_00, 300_00)]
    assert merged_ranges(nested) == ((100_00, 900_00),)
    apart = [product(f"C{i}", i * 1_000_00, i * 1_000_00 + 100_00) for i in range(1, 6)]
    assert merged_ranges(apart) == ((1_000_00, 5_100_00),)  # too many to list: one span
