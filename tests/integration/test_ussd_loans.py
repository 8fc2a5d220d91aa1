"""The USSD Loans menu over HTTP against the running gateway, with the loan service on the real
banking core: apply (approved, money in the wallet), an open loan refused as `outstanding`,
status (amount due as `KES 1,050.00` and the due date), partial and full repayment, refusals by
rule, and the ledger check after every test."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from core.customers import set_tier
from core.transfers import deposit, fund_loans
from gateway.keys import LOANS
from tests.ussd_support import PIN, AtSession, UssdEnv, money, ussd

__all__ = ["ussd"]

FUND_MINOR = 10_000_000_00
DEPOSITS = 20
INFLOW_MINOR = 50_000_00  # 20 deposits of KES 2,500: a wallet score well within the limits


@pytest.fixture(autouse=True)
async def ledger_ok(ussd: UssdEnv) -> AsyncIterator[None]:
    yield
    await ussd.bank.check_ledger()


@pytest.fixture(scope="module")
async def product(ussd: UssdEnv) -> dict[str, str]:
    """A KES product (30 days, 5 % flat, one repayment) and a funded loan fund."""
    await fund_loans(
        ussd.bank.pool,
        amount_minor=FUND_MINOR,
        idempotency_key=f"ussd-loans-{secrets.token_hex(6)}",
        channel="test",
    )
    code = "U" + secrets.token_hex(4).upper()
    name = f"Quick {code[-4:]}"
    for offered, label in ((f"{code}X", f"Other {code[-4:]}"), (code, name)):  # two: pick one
        await ussd.app[LOANS].create_product(ussd.bank.pool, terms(offered, label), "test")
    return {"code": code, "name": name}


def terms(code: str, name: str) -> dict[str, object]:
    return {
        "code": code,
        "name": name,
        "currency": "KES",
        "principal_min_minor": 100_00,
        "principal_max_minor": 2_000_00,
        "interest_rate_percent": "5",
        "interest_method": "flat",
        "amortization": "equal_installments",
        "repayments": 1,
        "frequency": "days",
        "repayment_every": 30,
        "min_account_age_days": 30,
        "auto_approve_max_minor": 2_000_00,
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


async def choose_product(s: AtSession, name: str) -> str:
    """Loans -> Apply, then the product by its name (several are offered)."""
    body = await s.walk("5", "1")
    assert "Choose a loan" in body, body
    for _ in range(12):
        for line in body[4:].split("\n"):
            number, _, label = line.partition(". ")
            if label == name:
                return await s.send(number)
        if "98. More" not in body:
            break
        body = await s.send("98")
    raise AssertionError(f"{name} is not offered: {body}")


async def test_apply_status_outstanding_and_repay(ussd: UssdEnv, product: dict[str, str]) -> None:
    msisdn = await borrower(ussd)
    before = await ussd.bank.balance(msisdn)
    s = ussd.session(msisdn)
    assert "Enter the loan amount" in await choose_product(s, product["name"])
    body = await s.send("1000")
    due = (datetime.now(UTC) + timedelta(days=30)).strftime("%d/%m/%Y")
    assert body.startswith(f"CON {product['name']} KES 1,000.00. Fee KES 0.00, interest KES 50.00.")
    assert f"Total due KES 1,050.00 by {due}." in body
    assert "Enter your PIN" in await s.send("1")
    body = await s.send(PIN)
    assert body.startswith("END Loan approved: KES 1,000.00 is in your wallet.")
    assert f"Repay KES 1,050.00 by {due}." in body
    assert await ussd.bank.balance(msisdn) == before + 1_000_00
    [notice] = await ussd.bank.outbox(msisdn, "loan_disbursed")
    assert PIN not in str(notice["body"])

    body = await ussd.session(msisdn).walk("5", "3")
    assert body == f"END Amount due: KES 1,050.00 by {due}."

    again = ussd.session(msisdn)
    await choose_product(again, product["name"])
    body = await again.send("500")
    assert body.startswith("END ") and "outstanding" in body

    body = await ussd.session(msisdn).walk("5", "2", "50", PIN)
    assert body.startswith("END Paid KES 50.00. Still due: KES 1,000.00. Ref ")
    body = await ussd.session(msisdn).walk("5", "2", "1000.01", PIN)
    assert body == "END That is more than you owe. You owe KES 1,000.00."
    body = await ussd.session(msisdn).walk("5", "2", "1000", PIN)
    assert body.startswith("END Your loan is repaid. Thank you! Ref ")
    assert "repaid" in body
    assert await ussd.bank.balance(msisdn) == before + 1_000_00 - 1_050_00
    assert await ussd.session(msisdn).walk("5", "3") == "END You have no open loan."
    assert await ussd.session(msisdn).walk("5", "2", "10", PIN) == "END You have no open loan."


async def test_refusals_and_wrong_pin(ussd: UssdEnv, product: dict[str, str]) -> None:
    newcomer = await borrower(ussd, age_days=3)
    s = ussd.session(newcomer)
    await choose_product(s, product["name"])
    body = await s.send("1000")
    assert body.startswith("END Your loan application was refused: Your account is too new")
    t = ussd.session(newcomer)
    await choose_product(t, product["name"])
    body = await t.send("5000")  # above the product's maximum
    assert (
        body == "END Your loan application was refused: Borrow between KES 100.00 and KES 2,000.00"
    )

    msisdn = await borrower(ussd)
    before = await ussd.bank.balance(msisdn)
    u = ussd.session(msisdn)
    await choose_product(u, product["name"])
    await u.send("1000")
    await u.send("1")
    body = await u.send("0000")
    assert body.startswith("CON Wrong PIN, 2 tries left")
    body = await u.send(PIN)
    assert body.startswith("END Loan approved")
    assert await ussd.bank.balance(msisdn) == before + 1_000_00
    # A replayed callback of the approving hop: the stored answer, no second loan.
    assert await u.post(u.form()) == body
    assert await ussd.bank.balance(msisdn) == before + 1_000_00
    assert money(before + 1_000_00) in await ussd.session(msisdn).walk("2", PIN)


async def _choose_any_language(s: AtSession, name: str) -> str:
    """choose_product for any menu language: the product lines read the same in each."""
    body = await s.walk("5", "1")
    for _ in range(12):
        for line in body[4:].split("\n"):
            number, _, label = line.partition(". ")
            if label == name:
                return await s.send(number)
        if "98. " not in body:
            break
        body = await s.send("98")
    raise AssertionError(f"{name} is not offered: {body}")


@pytest.mark.parametrize(
    ("language", "too_new", "too_much"),
    [
        (
            "sw",
            "END Ombi lako la mkopo limekataliwa: Akaunti yako ni mpya mno; jaribu tena baada "
            "ya siku 27",
            "END Ombi lako la mkopo limekataliwa: Kopa kati ya KES 100.00 na KES 2,000.00",
        ),
        (
            "fr",
            "END Votre demande de crédit est refusée: Votre compte est trop récent; réessayez "
            "dans 27 jours",
            "END Votre demande de crédit est refusée: Empruntez entre KES 100.00 et KES 2,000.00",
        ),
    ],
)
async def test_refusal_reasons_in_the_callers_language(
    ussd: UssdEnv, product: dict[str, str], language: str, too_new: str, too_much: str
) -> None:
    newcomer = await borrower(ussd, age_days=3)
    await ussd.bank.pool.execute(
        "UPDATE customers SET language = $2 WHERE msisdn = $1", newcomer, language
    )
    s = ussd.session(newcomer)
    await _choose_any_language(s, product["name"])
    assert await s.send("1000") == too_new
    t = ussd.session(newcomer)
    await _choose_any_language(t, product["name"])
    assert await t.send("5000") == too_much
