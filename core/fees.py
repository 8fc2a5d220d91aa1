"""Fees: a tariff table of step bands per transaction type and currency (fee = f(band), never
a percentage), the quote shown before confirmation, and the demo bands.

The ledger functions read the same table in the same transaction as the posting, so the fee a
customer confirmed is the fee posted unless an operator changed the tariff in between. An
amount in no band is free. `cash_in` bands only carry the agent's commission (deposits at an
agent are free for the customer); `cash_out` bands carry the customer's fee and the agent's
commission out of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from core import errors as E
from core.audit import record
from core.money import MAX_AMOUNT_MINOR, check_amount, check_currency
from core.pg import Db, call, connection

TXN_TYPES = ("p2p", "deposit", "float_topup", "cash_in", "cash_out")
DEBIT_TYPES = ("p2p", "cash_out")  # the customer pays amount + fee
MAX_BANDS = 64


@dataclass(frozen=True, slots=True)
class Band:
    min_minor: int
    max_minor: int
    fee_minor: int
    commission_minor: int = 0


@dataclass(frozen=True, slots=True)
class Quote:
    kind: str
    currency: str
    amount_minor: int
    fee_minor: int
    total_minor: int  # what leaves the customer's wallet
    commission_minor: int = 0


def _kind(kind: str) -> str:
    if kind not in TXN_TYPES:
        raise E.ValidationFailed(f"kind is one of {', '.join(TXN_TYPES)}", field="kind")
    return kind


async def quote(db: Db, kind: str, amount_minor: int, currency: str = "KES") -> Quote:
    """The fee for `amount_minor` of `kind`, before the customer confirms."""
    amount = check_amount(amount_minor)
    row = await call(
        db,
        "SELECT o_fee, o_commission FROM ledger_tariff($1, $2, $3)",
        _kind(kind),
        check_currency(currency),
        amount,
    )
    fee = int(row["o_fee"]) if kind in DEBIT_TYPES else 0
    return Quote(kind, currency, amount, fee, amount + fee, int(row["o_commission"]))


def check_bands(bands: list[Band]) -> list[Band]:
    """Bands sorted, positive, non-overlapping, commission never above the fee it comes from
    (cash_in commissions come from fee income and are exempt)."""
    if len(bands) > MAX_BANDS:
        raise E.ValidationFailed(f"At most {MAX_BANDS} bands", field="bands")
    ordered = sorted(bands, key=lambda b: b.min_minor)
    previous_max = 0
    for band in ordered:
        if band.min_minor <= previous_max or band.max_minor < band.min_minor:
            raise E.ValidationFailed("Bands must not overlap or be empty", field="bands")
        if band.fee_minor < 0 or band.commission_minor < 0:
            raise E.ValidationFailed("Fees and commissions are not negative", field="bands")
        previous_max = band.max_minor
    return ordered


async def set_tariff(db: Db, kind: str, currency: str, bands: list[Band]) -> None:
    """Replace the bands of one (kind, currency) atomically."""
    _kind(kind)
    check_currency(currency)
    ordered = check_bands(bands)
    if kind == "cash_out" and any(b.commission_minor > b.fee_minor for b in ordered):
        raise E.ValidationFailed("A cash-out commission comes out of its fee", field="bands")
    async with connection(db) as conn, conn.transaction():
        await conn.execute(
            "DELETE FROM tariffs WHERE txn_type = $1 AND currency = $2", kind, currency
        )
        await conn.executemany(
            "INSERT INTO tariffs (txn_type, currency, min_minor, max_minor, fee_minor, "
            "commission_minor) VALUES ($1, $2, $3, $4, $5, $6)",
            [
                (kind, currency, b.min_minor, b.max_minor, b.fee_minor, b.commission_minor)
                for b in ordered
            ],
        )


async def tariff(db: Db, kind: str, currency: str = "KES") -> list[Band]:
    rows = await db.fetch(
        "SELECT min_minor, max_minor, fee_minor, commission_minor FROM tariffs "
        "WHERE txn_type = $1 AND currency = $2 ORDER BY min_minor",
        _kind(kind),
        check_currency(currency),
    )
    return [Band(r[0], r[1], r[2], r[3]) for r in rows]


def _bands(first_minor: int, steps: list[tuple[int, int, int]]) -> list[Band]:
    """Contiguous bands from (upper bound KES, fee KES, commission KES) steps."""
    out, low = [], first_minor
    for upper_kes, fee_kes, commission_kes in steps:
        out.append(Band(low, upper_kes * 100, fee_kes * 100, commission_kes * 100))
        low = upper_kes * 100 + 1
    return out


# Demo bands, KES, shaped like the 2024 M-Pesa tariff and agent commissions (weak secondary
# sources; see shared/notes/ledger-and-loans.md 3.2 and 3.4). Not for production.
DEMO_TARIFFS: dict[str, list[Band]] = {
    "p2p": _bands(
        1,
        [(49, 0, 0), (100, 0, 0), (500, 7, 0), (1000, 13, 0), (1500, 23, 0), (2500, 33, 0),
         (3500, 53, 0), (5000, 57, 0), (7500, 78, 0), (10000, 90, 0), (15000, 100, 0),
         (20000, 105, 0), (250000, 108, 0)],
    ),
    "cash_out": _bands(
        5000,
        [(100, 11, 5), (500, 29, 8), (1000, 29, 10), (1500, 29, 12), (2500, 29, 15),
         (3500, 52, 20), (5000, 69, 25), (7500, 87, 30), (10000, 115, 35), (15000, 167, 45),
         (20000, 185, 60), (35000, 197, 70), (50000, 278, 80), (250000, 309, 100)],
    ),
    "cash_in": _bands(
        5000,
        [(100, 0, 4), (500, 0, 8), (1000, 0, 9), (1500, 0, 10), (2500, 0, 11), (3500, 0, 12),
         (5000, 0, 14), (7500, 0, 20), (10000, 0, 28), (15000, 0, 40), (50000, 0, 100),
         (250000, 0, 190)],
    ),
}  # fmt: skip


async def seed_demo_tariffs(db: Db, currency: str = "KES") -> None:
    for kind, bands in DEMO_TARIFFS.items():
        await set_tariff(db, kind, currency, bands)


async def change_tariff(
    db: Db, kind: str, currency: str, bands: list[Band], *, actor: str
) -> list[Band]:
    """An admin replaces the bands of one (kind, currency): validated like set_tariff,
    amounts up to the largest amount, audited with the bands before and after."""
    for band in bands:
        for value in (band.min_minor, band.max_minor, band.fee_minor, band.commission_minor):
            if isinstance(value, bool) or not isinstance(value, int) or value > MAX_AMOUNT_MINOR:
                raise E.ValidationFailed(
                    f"Band amounts are whole minor units up to {MAX_AMOUNT_MINOR}", field="bands"
                )
    async with connection(db) as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tariffs'))")
        before = await tariff(conn, kind, currency)
        await set_tariff(conn, kind, currency, bands)
        after = await tariff(conn, kind, currency)
        await record(
            conn,
            actor_type="admin",
            actor=actor,
            action="tariff.changed",
            target=f"{kind}/{currency}",
            details={
                "before": [_band_json(b) for b in before],
                "after": [_band_json(b) for b in after],
            },
        )
    return after


def _band_json(band: Band) -> dict[str, int]:
    return {
        "min_minor": band.min_minor,
        "max_minor": band.max_minor,
        "fee_minor": band.fee_minor,
        "commission_minor": band.commission_minor,
    }
