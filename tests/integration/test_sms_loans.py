"""Issue 7 across channels: a customer applies for a loan by USSD (the Loans menu), it is
disbursed, they repay it by SMS (`REPAY <amount> <PIN>` over SMPP) and `LOAN STATUS` says what
is due and then that it is repaid. `LOAN <amount> <PIN>` among two products of different ranges
(the one whose range holds the amount, or the ranges said), and `LOAN <code> <amount> <PIN>`.
The ledger check passes after each test."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from gateway.keys import LOANS
from tests.loans_support import borrower, choose_product, offer_products, terms
from tests.sms_banking_support import SmsEnv, reprocess, sms_env_fixtures
from tests.sms_helpers import peer_per_module  # noqa: F401 (the `peer` fixture)
from tests.ussd_support import PIN

env, ledger_ok = sms_env_fixtures()


@pytest.fixture(scope="module")
async def product(env: SmsEnv) -> dict[str, str]:
    return await offer_products(env, "S")


async def apply_by_ussd(env: SmsEnv, msisdn: str, name: str) -> str:
    s = env.session(msisdn)
    assert "Enter the loan amount" in await choose_product(s, name)
    await s.send("1000")
    assert "Enter your PIN" in await s.send("1")
    body = await s.send(PIN)
    assert body.startswith("END Loan approved: KES 1,000.00 is in your wallet."), body
    return (datetime.now(UTC) + timedelta(days=30)).strftime("%d/%m/%Y")


async def test_apply_by_ussd_repay_by_sms(env: SmsEnv, product: dict[str, str]) -> None:
    msisdn = await borrower(env)
    before = await env.bank.balance(msisdn)
    due = await apply_by_ussd(env, msisdn, product["name"])
    assert await env.bank.balance(msisdn) == before + 1_000_00

    assert await env.ask(msisdn, f"LOAN STATUS {PIN}") == (f"Your loan: KES 1,050.00 due by {due}.")
    # More than is owed: refused, nothing moves.
    reply = await env.ask(msisdn, f"REPAY 2000 {PIN}")
    assert reply == "That is more than your loan. You owe KES 1,050.00.", reply
    assert "attempts left" in await env.ask(msisdn, f"REPAY 500 {'9137'}")
    assert await env.bank.balance(msisdn) == before + 1_000_00

    reply = await env.ask(msisdn, f"REPAY 500 {PIN}")
    assert "KES 500.00 paid to your loan. Still due KES 550.00." in reply, reply
    assert await env.bank.balance(msisdn) == before + 500_00
    assert await env.ask(msisdn, f"loan status {PIN}") == f"Your loan: KES 550.00 due by {due}."

    reply = await env.ask(msisdn, f"repay 550 {PIN}")
    assert "KES 550.00 paid. Your loan is fully repaid." in reply, reply
    assert await env.bank.balance(msisdn) == before - 50_00  # the interest
    assert await env.ask(msisdn, f"Loan Status {PIN}") == "You have no loan to repay."
    assert await env.app[LOANS].status(env.bank.pool, msisdn) is None
    state = await env.bank.pool.fetchval(
        "SELECT status FROM loans WHERE msisdn = $1 ORDER BY id DESC LIMIT 1", msisdn
    )
    assert state == "repaid"
    channels = await env.bank.pool.fetch(
        "SELECT r.channel FROM loan_repayments r JOIN loans l ON l.id = r.loan_id "
        "WHERE l.msisdn = $1",
        msisdn,
    )
    assert [r["channel"] for r in channels] == ["sms", "sms"]
    assert await env.ask(msisdn, f"REPAY 10 {PIN}") == "You have no loan to repay."


async def test_loan_by_sms_is_refused_while_one_is_open(
    env: SmsEnv, product: dict[str, str]
) -> None:
    msisdn = await borrower(env)
    await apply_by_ussd(env, msisdn, product["name"])
    balance = await env.bank.balance(msisdn)
    reply = await env.ask(msisdn, f"LOAN 500 {PIN}")
    assert reply == "You already have a loan. Send LOAN STATUS <PIN> to see what is due.", reply
    assert await env.bank.balance(msisdn) == balance


@pytest.fixture(scope="module")
async def two_ranges(env: SmsEnv, product: dict[str, str]) -> AsyncIterator[dict[str, str]]:
    """Two products for Business customers, KES 100-900 and KES 1,000-2,000, and the only ones
    open to them while this module runs: other products open to Business (the demo's QUICK30,
    when another test seeded it) are retired meanwhile and offered again afterwards."""
    suffix = secrets.token_hex(3).upper()
    small, big = f"SMALL{suffix}", f"BIG{suffix}"
    pool = env.bank.pool
    retired = await pool.fetch(
        "UPDATE loan_products SET active = false WHERE active AND 'business' = ANY(tiers) "
        "RETURNING id"
    )
    try:
        for code, low, high in ((small, 100_00, 900_00), (big, 1_000_00, 2_000_00)):
            offered = {
                **terms(code, f"Loan {code}"),
                "principal_min_minor": low,
                "principal_max_minor": high,
                "tiers": ["business"],
            }
            await env.app[LOANS].create_product(pool, offered, "test")
        yield {"small": small, "big": big}
    finally:
        await pool.execute(
            "UPDATE loan_products SET active = (id = ANY($1::bigint[])) "
            "WHERE id = ANY($1::bigint[]) OR code = ANY($2::text[])",
            [r["id"] for r in retired],
            [small, big],
        )


async def applied_for(env: SmsEnv, msisdn: str) -> list[str]:
    rows = await env.bank.pool.fetch(
        "SELECT p.code FROM loan_applications a JOIN loan_products p ON p.id = a.product_id "
        "WHERE a.msisdn = $1 ORDER BY a.id",
        msisdn,
    )
    return [r["code"] for r in rows]


async def test_loan_and_repayment_handled_again_after_a_pin_change_do_not_ask_it_again(
    env: SmsEnv, two_ranges: dict[str, str]
) -> None:
    """Each MO ran, its reply's record was lost, the customer changed the PIN, and the MO runs
    again: the loan (then the repayment) answers as the first time, nothing moves twice, and no
    wrong PIN is counted."""
    msisdn = await borrower(env, tier="Business")
    before = await env.bank.balance(msisdn)
    steps = [("LOAN 500 {pin}", "Loan of KES 500.00 approved"), ("REPAY 100 {pin}", "paid")]
    new_pin = PIN
    for template, answer in steps:
        text = template.format(pin=new_pin)
        first = await env.ask(msisdn, text)
        assert answer in first, first
        mo = await env.bank.pool.fetchval(
            "SELECT max(id) FROM sms_messages WHERE direction = 'mo' AND msisdn = $1", msisdn
        )
        old_pin, new_pin = new_pin, "5830" if new_pin == PIN else PIN
        assert await env.ask(msisdn, f"PIN {old_pin} {new_pin}") == "Your PIN has been changed."
        await env.bank.pool.execute(
            "DELETE FROM sms_messages WHERE direction = 'mo' AND msisdn = $1 AND id > $2",
            msisdn,
            mo,
        )
        await env.bank.pool.execute(
            "DELETE FROM sms_messages WHERE direction = 'mt' AND ref = $1", f"mo:{mo}"
        )
        assert await reprocess(env, msisdn, text) == 1
        again = await env.bank.pool.fetchval(
            "SELECT body FROM sms_messages WHERE direction = 'mt' AND ref = $1", f"mo:{mo}"
        )
        assert again == first
    assert await applied_for(env, msisdn) == [two_ranges["small"]]
    assert await env.bank.balance(msisdn) == before + 400_00
    failures = await env.bank.pool.fetchval(
        "SELECT pin_failures FROM customers WHERE msisdn = $1", msisdn
    )
    assert failures == 0


@pytest.mark.parametrize(("amount", "which"), [("500", "small"), ("1500", "big")])
async def test_loan_amount_picks_the_product_whose_range_holds_it(
    env: SmsEnv, two_ranges: dict[str, str], amount: str, which: str
) -> None:
    msisdn = await borrower(env, tier="Business")
    before = await env.bank.balance(msisdn)
    reply = await env.ask(msisdn, f"LOAN {amount} {PIN}")
    assert f"Loan of KES {int(amount):,}.00 approved" in reply, reply
    assert await applied_for(env, msisdn) == [two_ranges[which]]
    assert await env.bank.balance(msisdn) == before + int(amount) * 100


@pytest.mark.parametrize("amount", ["950", "50", "5000"])
async def test_loan_amount_out_of_every_range_says_the_ranges(
    env: SmsEnv, two_ranges: dict[str, str], amount: str
) -> None:
    msisdn = await borrower(env, tier="Business")
    before = await env.bank.balance(msisdn)
    reply = await env.ask(msisdn, f"LOAN {amount} {PIN}")
    assert reply == (
        "No loan for that amount. You can borrow KES 100.00 to KES 900.00 or KES 1,000.00 to "
        "KES 2,000.00. Send LOAN <amount> <PIN>."
    ), reply
    assert await applied_for(env, msisdn) == []
    assert await env.bank.balance(msisdn) == before


async def test_loan_ranges_in_the_customers_language(
    env: SmsEnv, two_ranges: dict[str, str]
) -> None:
    msisdn = await borrower(env, tier="Business")
    await env.bank.pool.execute("UPDATE customers SET language = 'sw' WHERE msisdn = $1", msisdn)
    reply = await env.ask(msisdn, f"LOAN 950 {PIN}")
    assert reply == (
        "Hakuna mkopo wa kiasi hicho. Unaweza kukopa kuanzia KES 100.00 hadi KES 900.00 au "
        "kuanzia KES 1,000.00 hadi KES 2,000.00. Tuma LOAN <kiasi> <PIN>."
    ), reply
    await env.bank.pool.execute("UPDATE customers SET language = 'fr' WHERE msisdn = $1", msisdn)
    reply = await env.ask(msisdn, f"LOAN 5000 {PIN}")
    assert reply.startswith("Pas de crédit pour ce montant. Vous pouvez emprunter de KES 100.00 à")


async def test_loan_with_a_product_code(env: SmsEnv, two_ranges: dict[str, str]) -> None:
    msisdn = await borrower(env, tier="Business")
    before = await env.bank.balance(msisdn)
    # The code names the product; its own range applies.
    reply = await env.ask(msisdn, f"LOAN {two_ranges['small'].lower()} 1500 {PIN}")
    assert reply.startswith("Loan not possible: "), reply
    assert "KES 100.00" in reply and "KES 900.00" in reply
    reply = await env.ask(msisdn, f"LOAN NOSUCH1 1500 {PIN}")
    assert reply.startswith("There is no loan product NOSUCH1. Products: "), reply
    assert await env.bank.balance(msisdn) == before
    reply = await env.ask(msisdn, f"loan {two_ranges['big']} 1200 {PIN}")
    assert "Loan of KES 1,200.00 approved" in reply, reply
    assert await applied_for(env, msisdn) == [two_ranges["small"], two_ranges["big"]]
    # The wrong PIN still counts, with a code too.
    other = await borrower(env, tier="Business")
    assert "attempts left" in await env.ask(other, f"LOAN {two_ranges['big']} 1200 9137")
    assert await applied_for(env, other) == []
