"""KYC tiers and their limits per currency: maximum balance, per-transaction maximum, daily and
monthly debit caps. The values live in the `tier_limits` table (seeded by the migration with the
KES defaults from CONTRACTS.md) because regulators change them; the ledger functions read them
in the same transaction as the debit. Daily and monthly caps count the principal a customer
sends or withdraws (fees excluded), per local day and month of LIMITS_TIMEZONE (the SQL
functions `ledger_day` / `ledger_month`, reading the connection's `gateway.limits_tz`; UTC when
a connection does not set it)."""

from __future__ import annotations

from dataclasses import dataclass

from core import errors as E
from core.audit import record
from core.money import MAX_AMOUNT_MINOR, check_currency
from core.pg import Db, connection

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


async def all_limits(db: Db) -> list[TierLimits]:
    """Every tier's limits in every currency, by currency then tier order."""
    rows = await db.fetch(
        "SELECT * FROM tier_limits ORDER BY currency, array_position($1::text[], tier)",
        list(TIERS),
    )
    return [
        TierLimits(
            r["tier"],
            r["currency"],
            r["max_balance_minor"],
            r["per_transaction_minor"],
            r["daily_debit_minor"],
            r["monthly_debit_minor"],
        )
        for r in rows
    ]


def check_limits(limits: TierLimits) -> TierLimits:
    """Positive whole minor units up to the largest amount, and consistent: one transaction
    fits the daily cap, the daily cap the monthly one, and one transaction the maximum
    balance. Raises ValidationFailed naming the field."""
    for field in ("max_balance_minor", "per_transaction_minor", "daily_debit_minor",
                  "monthly_debit_minor"):  # fmt: skip
        value = getattr(limits, field)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not 0 < value <= MAX_AMOUNT_MINOR
        ):
            raise E.ValidationFailed(
                f"{field} is a whole number of minor units, 1 to {MAX_AMOUNT_MINOR}", field=field
            )
    if limits.per_transaction_minor > limits.daily_debit_minor:
        raise E.ValidationFailed(
            "The per-transaction limit cannot exceed the daily cap", field="per_transaction_minor"
        )
    if limits.daily_debit_minor > limits.monthly_debit_minor:
        raise E.ValidationFailed(
            "The daily cap cannot exceed the monthly cap", field="daily_debit_minor"
        )
    if limits.per_transaction_minor > limits.max_balance_minor:
        raise E.ValidationFailed(
            "The per-transaction limit cannot exceed the maximum balance",
            field="per_transaction_minor",
        )
    return TierLimits(
        normalise_tier(limits.tier),
        check_currency(limits.currency),
        limits.max_balance_minor,
        limits.per_transaction_minor,
        limits.daily_debit_minor,
        limits.monthly_debit_minor,
    )


async def change_limits(db: Db, limits: TierLimits, *, actor: str) -> TierLimits:
    """An admin sets one tier's limits in one currency (validated, audited with the values
    before and after). Takes effect for the next movement: the ledger functions read the
    table in the movement's own transaction."""
    new = check_limits(limits)
    async with connection(db) as conn, conn.transaction():
        old = await conn.fetchrow(
            "SELECT * FROM tier_limits WHERE tier = $1 AND currency = $2 FOR UPDATE",
            new.tier,
            new.currency,
        )
        await set_limits(conn, new)
        await record(
            conn,
            actor_type="admin",
            actor=actor,
            action="limits.changed",
            target=f"{new.tier}/{new.currency}",
            details={
                "before": None if old is None else {k: old[k] for k in _LIMIT_FIELDS},
                "after": {k: getattr(new, k) for k in _LIMIT_FIELDS},
            },
        )
    return new


_LIMIT_FIELDS = ("max_balance_minor", "per_transaction_minor", "daily_debit_minor",
                 "monthly_debit_minor")  # fmt: skip
