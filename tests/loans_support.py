"""Loans through the channels, for the USSD and SMS loan tests: a funded loan fund with two KES
products offered (one to pick by name), a borrower the scorer approves, and the USSD walk to a
product by its name."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from core.customers import set_tier
from core.transfers import deposit, fund_loans
from gateway.keys import LOANS
from tests.ussd_support import AtSession, UssdEnv

FUND_MINOR = 10_000_000_00
DEPOSITS = 20
INFLOW_MINOR = 50_000_00  # 20 deposits of KES 2,500: a wallet score well within the limits


def terms(code: str, name: str, *, low: int = 100_00, high: int = 2_000_00) -> dict[str, object]:
    """A KES product for Basic and Standard customers lending `low`-`high`, one repayment after
    30 days at 5 % flat, approved without review up to `high`."""
    return {
        "code": code,
        "name": name,
        "currency": "KES",
        "principal_min_minor": low,
        "principal_max_minor": high,
        "interest_rate_percent": "5",
        "interest_method": "flat",
        "amortization": "equal_installments",
        "repayments": 1,
        "frequency": "days",
        "repayment_every": 30,
        "min_account_age_days": 30,
        "auto_approve_max_minor": high,
        "tiers": ["basic", "standard"],
    }


async def borrower(ussd: UssdEnv, *, age_days: int = 400, tier: str = "Basic") -> str:
    """A customer with tenure and a history of money coming in (what the scorer wants)."""
    msisdn = await ussd.bank.open()
    if tier != "Basic":
        await set_tier(ussd.bank.pool, msisdn, tier, actor="test")
    await ussd.bank.pool.execute(
        "UPDATE customers SET created_at = $2 WHERE msisdn = $1",
        msisdn,
        datetime.now(UTC) - timedelta(days=age_days),
    )
    for i in range(DEPOSITS):
        await deposit(
            ussd.bank.pool,
            msisdn=msisdn,
            amount_minor=INFLOW_MINOR // DEPOSITS,
            idempotency_key=f"loan-dep-{msisdn}-{i}",
            channel="test",
        )
    return msisdn


async def choose_product(s: AtSession, name: str, *, english: bool = True) -> str:
    """Loans -> Apply, then the product by its name (several are offered, over pages). The
    menu's title is checked in English only; the product lines read the same in each language."""
    body = await s.walk("5", "1")
    if english:
        assert "Choose a loan" in body, body
    for _ in range(12):
        for line in body[4:].split("\n"):
            number, _, label = line.partition(". ")
            if label == name:
                return await s.send(number)
        if "98. " not in body:
            break
        body = await s.send("98")
    raise AssertionError(f"{name} is not offered: {body}")


async def offer_products(env: UssdEnv, prefix: str) -> dict[str, str]:
    """Fund the loan fund and offer two KES products (30 days, 5 % flat, one repayment), so that
    a test must pick one; returns the code and name of the one to pick, `prefix` starting its
    code."""
    await fund_loans(
        env.bank.pool,
        amount_minor=FUND_MINOR,
        idempotency_key=f"loans-{prefix}-{secrets.token_hex(6)}",
        channel="test",
    )
    code = prefix + secrets.token_hex(4).upper()
    name = f"Quick {code[-4:]}"
    for offered, label in ((f"{code}X", f"Other {code[-4:]}"), (code, name)):
        await env.app[LOANS].create_product(env.bank.pool, terms(offered, label), "test")
    return {"code": code, "name": name}
