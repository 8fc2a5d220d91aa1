"""The USSD Loans menu over HTTP against the running gateway, with the loan service on the real
banking core: apply (approved, money in the wallet), an open loan refused as `outstanding`,
status (amount due as `KES 1,050.00` and the due date), partial and full repayment, refusals by
rule, and the ledger check after every test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import shows_pin
from tests.loans_support import borrower, choose_product, offer_products
from tests.ussd_support import PIN, UssdEnv, money, ussd

__all__ = ["ussd"]


@pytest.fixture(autouse=True)
async def ledger_ok(ussd: UssdEnv) -> AsyncIterator[None]:
    yield
    await ussd.bank.check_ledger()


@pytest.fixture(scope="module")
async def product(ussd: UssdEnv) -> dict[str, str]:
    return await offer_products(ussd, "U")


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
    assert not shows_pin(PIN, str(notice["body"]))

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
    await choose_product(s, product["name"], english=False)
    assert await s.send("1000") == too_new
    t = ussd.session(newcomer)
    await choose_product(t, product["name"], english=False)
    assert await t.send("5000") == too_much
