"""Issue 7 across channels: a customer applies for a loan by USSD (the Loans menu), it is
disbursed, they repay it by SMS (`REPAY <amount> <PIN>` over SMPP) and `LOAN STATUS` says what
is due and then that it is repaid; the ledger check passes after each test."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web

from config.settings import Settings
from core.transfers import fund_loans
from gateway.keys import LOANS
from tests.integration.test_ussd_loans import FUND_MINOR, borrower, choose_product, terms
from tests.sms_banking_support import SmsEnv, peer, start_sms_env  # noqa: F401
from tests.smsc_peer import SmscPeer
from tests.ussd_support import PIN


@pytest.fixture(scope="module")
async def env(
    settings: Settings,
    peer: SmscPeer,  # noqa: F811
    app: web.Application,
) -> AsyncIterator[SmsEnv]:
    async for e in start_sms_env(settings, peer, others=(app,)):
        yield e


@pytest.fixture(autouse=True)
async def ledger_ok(env: SmsEnv) -> AsyncIterator[None]:
    yield
    await env.bank.check_ledger()


@pytest.fixture(scope="module")
async def product(env: SmsEnv) -> dict[str, str]:
    await fund_loans(
        env.bank.pool,
        amount_minor=FUND_MINOR,
        idempotency_key=f"sms-loans-{secrets.token_hex(6)}",
        channel="test",
    )
    code = "S" + secrets.token_hex(4).upper()
    name = f"Quick {code[-4:]}"
    for offered, label in ((f"{code}X", f"Other {code[-4:]}"), (code, name)):  # two: pick one
        await env.app[LOANS].create_product(env.bank.pool, terms(offered, label), "test")
    return {"code": code, "name": name}


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
