"""KYC tiers and their limits per currency: maximum balance, per-transaction maximum, daily and
monthly debit caps. The values live in the `tier_limits` table (seeded by the migration with the
KES defaults from CONTRACTS.md) because regulators change them; the ledger functions read them
in the same transaction as the debit. Daily and monthly caps count the principal a customer
sends or withdraws (fees excluded), per UTC day and month."""

from __future__ import annotations

from dataclasses import dataclass

from core import errors as E
from core.money import check_currency
from core.pg import Db

TIERS = ("Basic", "Standard", "Premium", "Business")


@dataclass(frozen=True, slots=True)
class TierLimits:
    tier: str
    currency: str
    max_balance_minor: int
    per_transaction_minor: int
    daily_debit_minor: int
    monthly_debit_minor: int


# CONTRACTS.md defaults, KES, in minor units (the migration seeds exactly these).
DEFAULT_LIMITS_KES = {
    "Basic": TierLimits("Basic", "KES", 100_000_00, 70_000_00, 150_000_00, 500_000_00),
    "Standard": TierLimits("Standard", "KES", 300_000_00, 150_000_00, 300_000_00, 1_000_000_00),
    "Premium": TierLimits("Premium", "KES", 1_000_000_00, 250_000_00, 500_000_00, 3_000_000_00),
    "Business": TierLimits(
        "Business", "KES", 5_000_000_00, 1_000_000_00, 2_500_000_00, 20_000_000_00
    ),
}


def normalise_tier(text: str) -> str:
    for tier in TIERS:
        if isinstance(text, str) and text.strip().lower() == tier.lower():
            return tier
    raise E.ValidationFailed(f"tier is one of {', '.join(TIERS)}", field="tier")


async def get_limits(db: Db, tier: str, currency: str = "KES") -> TierLimits:
    row = await db.fetchrow(
        "SELECT * FROM tier_limits WHERE tier = $1 AND currency = $2",
        normalise_tier(tier),
        check_currency(currency),
    )
    if row is None:
        raise E.CurrencyMismatch(f"No {currency} limits for tier {tier}", currency=currency)
    return TierLimits(
        row["tier"],
        row["currency"],
        row["max_balance_minor"],
        row["per_transaction_minor"],
        row["daily_debit_minor"],
        row["monthly_debit_minor"],
    )


async def set_limits(db: Db, limits: TierLimits) -> None:
    """Insert or replace one tier's limits in one currency."""
    values = (
        limits.max_balance_minor,
        limits.per_transaction_minor,
        limits.daily_debit_minor,
        limits.monthly_debit_minor,
    )
    if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values):
        raise E.ValidationFailed("Limits are positive whole minor units", field="limits")
    await db.execute(
        "INSERT INTO tier_limits VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tier, currency) "
        "DO UPDATE SET max_balance_minor = $3, per_transaction_minor = $4, "
        "daily_debit_minor = $5, monthly_debit_minor = $6",
        normalise_tier(limits.tier),
        check_currency(limits.currency),
        *values,
    )
