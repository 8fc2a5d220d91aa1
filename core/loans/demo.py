"""Loan demo data for `make run` (GATEWAY_DEMO=1), after core.demo has seeded the customers:

- the loan fund funded from settlement (`DEMO_FUND_MINOR`, one fixed idempotency key, so a
  restart or a second instance funds it once);
- the demo product `QUICK30`: one repayment after 30 days, 5 % flat, no fee, KES 100-2,000,
  every tier, auto-approved (borrow 1,000.00, repay 1,050.00);
- the demo customers given a year of tenure (their registration backdated), because the
  internal scorer weighs tenure and a customer registered a minute ago would be sent to review.
  With their demo balances each then scores 620-660 and may borrow about KES 1,250-1,320.

Idempotent and safe with several instances at once (the demo advisory lock).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from core.demo import DEMO_CUSTOMERS, DEMO_LOCK
from core.errors import AlreadyExists
from core.loans import store
from core.loans.products import validate_product
from core.pg import Db, connection
from core.transfers import fund_loans

log = logging.getLogger("core.loans.demo")

DEMO_FUND_MINOR = 1_000_000_00
DEMO_TENURE_DAYS = 365
DEMO_PRODUCT: dict[str, Any] = {
    "code": "QUICK30",
    "name": "Quick loan, 30 days",
    "principal_min_minor": 100_00,
    "principal_max_minor": 2_000_00,
    "interest_rate_percent": "5",
    "interest_method": "flat",
    "amortization": "equal_installments",
    "repayments": 1,
    "frequency": "days",
    "repayment_every": 30,
    "late_penalty_percent": "2",
    "penalty_grace_days": 3,
    "default_after_days": 90,
    "min_account_age_days": 30,
    "auto_approve_max_minor": 2_000_00,
    "tiers": ["basic", "standard", "premium", "business"],
}


async def seed_demo_loans(db: Db, *, currency: str) -> None:
    async with connection(db) as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", DEMO_LOCK)
        try:
            await _seed(conn, currency)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", DEMO_LOCK)


async def _seed(conn: Any, currency: str) -> None:
    await fund_loans(
        conn,
        amount_minor=DEMO_FUND_MINOR,
        idempotency_key=f"demo-loan-fund-{currency}",
        channel="demo",
        currency=currency,
        initiator="demo",
        note="demo",
    )
    product = validate_product({**DEMO_PRODUCT, "currency": currency})
    if not await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM loan_products WHERE code = $1)", product.code
    ):
        with contextlib.suppress(AlreadyExists):
            await store.insert_product(conn, product, "demo")
    await conn.execute(
        "UPDATE customers SET created_at = now() - make_interval(days => $2)"
        " WHERE msisdn = ANY($1::text[]) AND created_at > now() - make_interval(days => $2)",
        [c.msisdn for c in DEMO_CUSTOMERS],
        DEMO_TENURE_DAYS,
    )
    log.info("demo loans ready", extra={"product": product.code, "currency": currency})
