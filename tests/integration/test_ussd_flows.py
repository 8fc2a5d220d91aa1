"""The default menu over HTTP (Africa's Talking format) against a running gateway with the REAL
banking core on PostgreSQL and Redis: registration, balance, send money (receipts in the outbox),
insufficient funds, the shared wrong-PIN lock, statements paged with 98, withdrawal at an agent,
PIN change and language. Every test that moves money ends with the ledger check."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from core import errors as E
from core.agents import agent_balances, set_agent_language
from core.customers import find_customer
from core.pins import verify_pin
from core.transfers import send_money
from menus.gsm import is_gsm7
from tests.helpers import new_msisdn
from tests.ussd_support import PIN, UssdEnv, money, ussd

__all__ = ["ussd"]

MAIN_LABELS = ("Send money", "Balance", "Withdraw", "Statement", "Loans", "My account")
P2P_FEE_500 = 7_00  # the demo tariff: KES 101-500 costs KES 7
CASH_OUT_FEE_500 = 29_00  # the demo tariff: KES 101-500 costs KES 29


@pytest.fixture(autouse=True)
async def ledger_ok(ussd: UssdEnv) -> AsyncIterator[None]:
    yield
    await ussd.bank.check_ledger()


async def test_register_then_main_menu(ussd: UssdEnv) -> None:
    msisdn = new_msisdn()
    s = ussd.session(msisdn)
    body = await s.dial()
    assert body.startswith("CON ") and "1. Register" in body
    assert "Enter your first name" in await s.send("1")
    assert "Enter your last name" in await s.send("Wanjiku")
    assert "national ID" in await s.send("Kamau")
    assert "4-digit PIN" in await s.send("A1234567")
    assert "PIN again" in await s.send("4821")
    body = await s.send("4822")
    assert body.startswith("CON ") and "differ" in body and "PIN again" in body
    body = await s.send("4821")
    assert body.startswith("END ") and "registered" in body and "Wanjiku" in body

    customer = await find_customer(ussd.bank.pool, msisdn)
    assert customer is not None and (customer.first_name, customer.last_name) == (
        "Wanjiku",
        "Kamau",
    )
    assert customer.tier == "Basic" and customer.language == "en"
    await verify_pin(ussd.bank.pool, msisdn, "4821")  # the PIN the customer chose
    assert await ussd.bank.balance(msisdn) == 0

    again = ussd.session(msisdn)
    body = await again.dial()
    assert body.startswith("CON Hello Wanjiku")
    for label in MAIN_LABELS:
        assert label in body


async def test_registration_refusals(ussd: UssdEnv) -> None:
    taken = await ussd.bank.open()
    # A number already registered never sees Register; a second registration of the same
    # national ID is refused by the core.
    s = ussd.session(new_msisdn())
    body = await s.walk("1", "Neema", "Achieng", "ID777888", "4821", "4821")
    assert "registered" in body
    t = ussd.session(new_msisdn())
    body = await t.walk("1", "Neema", "Achieng", "ID777888", "4821", "4821")
    assert body == "END This number or national ID is already registered."
    # A guessable PIN passes the 4-digit check on the handset but not the core's rule.
    u = ussd.session(new_msisdn())
    body = await u.walk("1", "Juma", "Otieno", "ID555000", "1111", "1111")
    assert body.startswith("END ") and "too easy" in body
    assert await find_customer(ussd.bank.pool, u.msisdn) is None
    assert "Hello Amina" in await ussd.session(taken).dial()


async def test_bad_input_is_refused_and_the_screen_stays(ussd: UssdEnv) -> None:
    s = ussd.session(new_msisdn())
    await s.dial()
    await s.send("1")
    body = await s.send("J0hn!")  # a first name with digits and punctuation
    assert body.startswith("CON ") and "Invalid entry" in body and "first name" in body
    body = await s.send("9")  # not a name either
    assert "Invalid entry" in body


async def test_navigation_back_home_and_balance(ussd: UssdEnv) -> None:
    msisdn = await ussd.bank.open(balance_minor=123_400)
    s = ussd.session(msisdn)
    await s.dial()
    assert "Invalid choice." in await s.send("9")
    assert "1. Change PIN" in await s.send("6")
    assert "Choose your language" in await s.send("2")
    assert "1. Change PIN" in await s.send("0")  # back one screen
    body = await s.send("0")  # back to the main menu
    assert "Hello Amina" in body and "6. My account" in body
    assert "Enter your PIN" in await s.send("2")
    assert "Hello Amina" in await s.send("00")  # home from anywhere
    await s.send("2")
    body = await s.send(PIN)
    assert body == "END Your balance is KES 1,234.00."


async def test_send_money_moves_money_once_with_receipts(ussd: UssdEnv) -> None:
    sender = await ussd.bank.open(balance_minor=100_000)
    recipient = await ussd.bank.open(first_name="Neema", last_name="Achieng", language="sw")
    s = ussd.session(sender)
    await s.walk("1")
    body = await s.send("0" + recipient[4:])  # the local form: 07...
    assert "Enter the amount" in body
    body = await s.send("500")
    assert body.startswith(f"CON Send KES 500.00 to Neema Achieng {recipient}? Fee KES 7.00.")
    assert "1. Confirm" in body and "2. Cancel" in body
    assert "Enter your PIN" in await s.send("1")
    body = await s.send(PIN)
    assert body.startswith("END KES 500.00 sent to Neema Achieng. Fee KES 7.00. Ref ")
    assert "sent" in body and body.endswith(f"Balance {money(100_000 - 50_000 - P2P_FEE_500)}.")
    reference = body.split("Ref ")[1].split(".")[0]
    assert len(reference) >= 6 and reference.isalnum()

    assert await ussd.bank.balance(recipient) == 50_000
    assert await ussd.bank.balance(sender) == 100_000 - 50_000 - P2P_FEE_500
    [sent] = [r for r in await ussd.bank.outbox(sender, "receipt") if r["template"] == "p2p_sent"]
    [received] = await ussd.bank.outbox(recipient, "receipt")
    assert received["template"] == "p2p_received"
    assert sent["transfer_id"] == received["transfer_id"] is not None
    assert ussd.calls["send_money"] >= 1


async def test_send_money_small_amounts_cancel_unknown_and_self(ussd: UssdEnv) -> None:
    sender = await ussd.bank.open(balance_minor=10_000)
    recipient = await ussd.bank.open()
    body = await ussd.session(sender).walk("1", recipient, "12.50", "1", PIN)
    assert body.startswith("END KES 12.50 sent to Amina Otieno. Fee KES 0.00.")
    assert await ussd.bank.balance(recipient) == 1_250

    s = ussd.session(sender)
    await s.walk("1", recipient, "10")
    assert "Invalid choice." in await s.send("3")
    assert (await s.send("2")).startswith("END Cancelled")
    assert await ussd.bank.balance(sender) == 10_000 - 1_250

    stranger = new_msisdn()
    body = await ussd.session(sender).walk("1", stranger, "10")
    assert body == f"END {stranger} is not registered for a wallet."
    body = await ussd.session(sender).walk("1", sender, "10")
    assert body == "END You cannot send money to yourself."
    assert await ussd.bank.transfers(sender) == 2  # the deposit and the one transfer


async def test_insufficient_funds_before_and_after_the_pin(ussd: UssdEnv) -> None:
    sender = await ussd.bank.open(balance_minor=10_000)
    recipient = await ussd.bank.open()
    # The quote already knows: refused before the PIN is asked.
    body = await ussd.session(sender).walk("1", recipient, "5000")
    assert body.startswith("END ") and "insufficient" in body
    # The money leaves by another channel between the confirmation and the PIN: the ledger
    # refuses under its locks and the screen says so.
    s = ussd.session(sender)
    await s.walk("1", recipient, "80", "1")
    await send_money(
        ussd.bank.pool,
        sender=sender,
        recipient=recipient,
        amount_minor=5_000,
        idempotency_key=f"drain-{sender}",
        channel="sms",
    )
    body = await s.send(PIN)
    assert body.startswith("END ") and "insufficient" in body
    assert await ussd.bank.balance(sender) == 5_000
    assert await ussd.bank.balance(recipient) == 5_000


async def test_over_the_tier_limit(ussd: UssdEnv) -> None:
    sender = await ussd.bank.open(balance_minor=90_000_00)
    recipient = await ussd.bank.open()
    body = await ussd.session(sender).walk("1", recipient, "70000.01")  # Basic: 70,000 per txn
    assert body == "END This is over your transaction limit."
    assert await ussd.bank.balance(recipient) == 0


async def test_three_wrong_pins_lock_the_wallet(ussd: UssdEnv) -> None:
    msisdn = await ussd.bank.open(balance_minor=50_000)
    s = ussd.session(msisdn)
    await s.walk("2")
    body = await s.send("0000")
    assert body.startswith("CON ") and "Wrong PIN, 2 tries left" in body
    assert "Wrong PIN, 1 tries left" in await s.send("1357")
    body = await s.send("2468")
    assert body.startswith("END ") and "locked" in body
    assert await ussd.bank.status(msisdn) == "locked"
    # The right PIN no longer helps, on any channel.
    t = ussd.session(msisdn)
    await t.walk("2")
    assert "locked" in await t.send(PIN)
    with pytest.raises(E.WalletLocked):
        await verify_pin(ussd.bank.pool, msisdn, PIN)


async def test_wrong_pins_count_across_channels(ussd: UssdEnv) -> None:
    """Two wrong by USSD, one wrong through the core from another channel: locked."""
    msisdn = await ussd.bank.open(balance_minor=50_000)
    s = ussd.session(msisdn)
    await s.walk("2")
    assert "2 tries left" in await s.send("0000")
    assert "1 tries left" in await s.send("1357")
    with pytest.raises(E.WalletLocked):
        await verify_pin(ussd.bank.pool, msisdn, "9753")  # e.g. an SMS "BAL 9753"
    body = await s.send(PIN)  # the USSD session goes on: the lock is already there
    assert body.startswith("END ") and "locked" in body
    # And a right PIN between wrong ones resets the count (one wrong, right, two wrong: open).
    other = await ussd.bank.open(balance_minor=100)
    with pytest.raises(E.WrongPin):
        await verify_pin(ussd.bank.pool, other, "0000")
    body = await ussd.session(other).walk("2", PIN)
    assert body == "END Your balance is KES 1.00."
    t = ussd.session(other)
    await t.walk("2")
    assert "2 tries left" in await t.send("0000")
    assert "1 tries left" in await t.send("0001")
    assert await ussd.bank.status(other) == "active"


async def with_history(ussd: UssdEnv, transfers: int) -> tuple[str, str]:
    """A customer and a friend (Neema Achieng), KES 500.00 deposited each, then `transfers`
    transfers between them, the customer sending the odd ones: transfer i is KES i * 10.00."""
    msisdn = await ussd.bank.open(balance_minor=50_000)
    friend = await ussd.bank.open(balance_minor=50_000, first_name="Neema", last_name="Achieng")
    for i in range(1, transfers + 1):
        await send_money(
            ussd.bank.pool,
            sender=msisdn if i % 2 else friend,
            recipient=friend if i % 2 else msisdn,
            amount_minor=i * 10_00,
            idempotency_key=f"hist-{msisdn}-{i}",
            channel="test",
        )
    return msisdn, friend


async def test_statement_pages_with_98(ussd: UssdEnv) -> None:
    msisdn, friend = await with_history(ussd, 7)
    s = ussd.session(msisdn)
    first = await s.walk("4", PIN)
    expected_balance = await ussd.bank.balance(msisdn)
    assert first.startswith(f"CON Statement. Balance {money(expected_balance)}")
    assert first.endswith("98. More")
    pages = [first]
    while pages[-1].startswith("CON "):
        pages.append(await s.send("98"))
        assert len(pages) < 10
    assert len(pages) >= 3
    assert pages[-1].startswith("END ") and "98. More" not in pages[-1]
    lines = [x for page in pages for x in page[4:].split("\n")]
    sent = [x for x in lines if " Sent KES " in x and x.endswith(f"to {friend}")]
    received = [x for x in lines if " Received KES " in x and x.endswith(f"from {friend}")]
    deposits = [x for x in lines if x.endswith("Deposit KES 500.00")]
    assert len(sent) == 4 and len(received) == 3 and len(deposits) == 1
    assert lines[1].endswith(f" Sent KES 70.00 to {friend}")  # newest first
    for page in pages:
        assert len(page) - 4 <= 182
    # 0 goes back a page; a wrong PIN gets no statement.
    t = ussd.session(msisdn)
    assert "Wrong PIN" in await t.walk("4", "0000")


async def test_statement_98_fetches_older_lines_from_the_core(ussd: UssdEnv) -> None:
    """23 lines: the latest 10 paged on the handset, then 98 on the last page asks the core for
    the 10 before them (PIN verified again), then the last 3, and the session ends."""
    msisdn, friend = await with_history(ussd, 22)
    balance = money(await ussd.bank.balance(msisdn))
    calls = ussd.calls["statement"]
    s = ussd.session(msisdn)
    pages = [await s.walk("4", PIN)]
    while pages[-1].startswith("CON "):
        assert pages[-1].endswith("98. More")
        pages.append(await s.send("98"))
        assert len(pages) < 30
    assert pages[-1].startswith("END ") and "98. More" not in pages[-1]
    headers = [p for p in pages if p[4:].startswith(f"Statement. Balance {balance}")]
    assert len(headers) == 3  # one per call to the core, each with today's balance
    lines = [x for p in pages for x in p[4:].split("\n") if x[:2].isdigit() and x[2] == "/"]
    assert len(lines) == 23 and lines[-1].endswith("Deposit KES 500.00")
    received = [x for x in lines if " Received KES " in x and x.endswith(f"from {friend}")]
    got = [int(x.split("KES ")[1].split(".")[0]) for x in received]
    assert got == [10 * i for i in range(22, 0, -2)]  # every one, once, newest first
    sent = [int(x.split("KES ")[1].split(".")[0]) for x in lines if x.endswith(f"to {friend}")]
    assert len(sent) == 11
    assert all(
        10 * i <= amount < 10 * i + 10 for amount, i in zip(sent, range(21, 0, -2), strict=True)
    )
    assert ussd.calls["statement"] - calls == 3
    for page in pages:
        assert len(page) - 4 <= 182


async def test_withdraw_at_an_agent(ussd: UssdEnv) -> None:
    msisdn = await ussd.bank.open(balance_minor=100_000, first_name="Baraka")
    code, agent_msisdn = await ussd.bank.agent(float_minor=10_000_00, name="Duka Letu")
    before = await agent_balances(ussd.bank.pool, code)
    s = ussd.session(msisdn)
    assert "agent number" in await s.walk("3")
    assert "amount" in await s.send(code.lower())  # agent codes in any case
    assert "PIN" in await s.send("500")
    body = await s.send(PIN)
    left = 100_000 - 50_000 - CASH_OUT_FEE_500
    assert body.startswith("END Withdrawn KES 500.00 at Duka Letu. Fee KES 29.00. Ref ")
    assert body.endswith(f"Balance {money(left)}.")
    assert await ussd.bank.balance(msisdn) == left
    after = await agent_balances(ussd.bank.pool, code)
    assert after.float_minor == before.float_minor + 50_000
    assert after.commission_minor > before.commission_minor
    [told] = await ussd.bank.outbox(agent_msisdn, "agent_cash_out")
    assert f"Give KES 500.00 cash to Baraka Otieno {msisdn}" in told["body"]
    assert PIN not in told["body"]
    receipts = await ussd.bank.outbox(msisdn, "receipt")
    assert [r["template"] for r in receipts] == ["deposit_received", "cash_out_done"]
    note = await ussd.bank.pool.fetchval(
        "SELECT note FROM transfers WHERE type = 'cash_out' AND debit_party = $1", msisdn
    )
    assert '"initiated_by":"customer"' in note


async def test_withdraw_refusals(ussd: UssdEnv) -> None:
    msisdn = await ussd.bank.open(balance_minor=10_000)
    code, agent_msisdn = await ussd.bank.agent(float_minor=1_000_00)
    body = await ussd.session(msisdn).walk("3", "NOAGENT1", "50", PIN)
    assert body == "END There is no agent NOAGENT1."
    body = await ussd.session(msisdn).walk("3", code, "500", PIN)
    assert body.startswith("END ") and "insufficient" in body
    body = await ussd.session(msisdn).walk("3", code, "50", "0000")
    assert "Wrong PIN, 2 tries left" in body
    await ussd.bank.pool.execute("UPDATE agents SET status = 'locked' WHERE code = $1", code)
    body = await ussd.session(msisdn).walk("3", code, "60", PIN)
    assert body == f"END Agent {code} cannot serve you right now. Nothing was withdrawn."
    assert await ussd.bank.balance(msisdn) == 10_000
    assert await ussd.bank.outbox(agent_msisdn, "agent_cash_out") == []


async def test_change_pin(ussd: UssdEnv) -> None:
    msisdn = await ussd.bank.open(balance_minor=700)
    body = await ussd.session(msisdn).walk("6", "1", PIN, "5902", "5902")
    assert body == "END Your PIN has been changed."
    await verify_pin(ussd.bank.pool, msisdn, "5902")
    assert "Wrong PIN" in await ussd.session(msisdn).walk("2", PIN)
    assert await ussd.session(msisdn).walk("2", "5902") == "END Your balance is KES 7.00."
    body = await ussd.session(msisdn).walk("6", "1", "5902", "2222", "2222")
    assert body == "END That PIN is too easy to guess. Choose another one."
    body = await ussd.session(msisdn).walk("6", "1", "0000", "6813", "6813")
    assert body == "END Wrong PIN, 2 tries left. Your PIN was not changed."
    await verify_pin(ussd.bank.pool, msisdn, "5902")  # unchanged


async def test_language_switch_to_kiswahili_and_french(ussd: UssdEnv) -> None:
    msisdn = await ussd.bank.open(balance_minor=100_000)
    s = ussd.session(msisdn)
    body = await s.walk("6", "2")
    assert "1. English\n2. Kiswahili\n3. Francais" in body
    body = await s.send("2")
    assert body == "END Lugha yako sasa ni Kiswahili."
    customer = await find_customer(ussd.bank.pool, msisdn)
    assert customer is not None and customer.language == "sw"
    t = ussd.session(msisdn)
    body = await t.dial()
    assert body.startswith("CON Habari Amina") and "Tuma pesa" in body
    assert await t.walk("2", PIN) == "END Salio lako ni KES 1,000.00."
    body = await ussd.session(msisdn).walk("6", "2", "3")
    assert body == "END Votre langue est maintenant le francais."
    u = ussd.session(msisdn)
    assert (await u.dial()).startswith("CON Bonjour Amina")
    assert await u.walk("2", PIN) == "END Votre solde est de KES 1,000.00."
    customer = await find_customer(ussd.bank.pool, msisdn)
    assert customer is not None and customer.language == "fr"
    # Receipts follow the stored language.
    recipient = await ussd.bank.open()
    await ussd.session(msisdn).walk("1", recipient, "100", "1", PIN)
    language = await ussd.bank.pool.fetchval(
        "SELECT language FROM outbox WHERE recipient = $1 AND template = 'p2p_sent'", msisdn
    )
    assert language == "fr"


@pytest.mark.parametrize("code", ["*384*2#", "*384*6*2#"])
async def test_prefilled_dial_string(ussd: UssdEnv, code: str) -> None:
    msisdn = await ussd.bank.open()
    body = await ussd.session(msisdn, code=code).dial()
    expected = "Enter your PIN" if code == "*384*2#" else "Choose your language"
    assert body.startswith("CON ") and expected in body


async def test_africas_talking_extended_dial_arrives_as_text(ussd: UssdEnv) -> None:
    """AT may send the extra digits of `*384*2#` as `text=2` on the first request."""
    msisdn = await ussd.bank.open(balance_minor=700)
    s = ussd.session(msisdn)
    s.inputs = ["2"]
    body = await s.post(s.form())
    assert body == "CON Enter your PIN:"
    assert await s.send(PIN) == "END Your balance is KES 7.00."


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("sw", "Imethibitishwa. Mpe Baraka Otieno {msisdn} pesa taslimu KES 500.00."),
        ("fr", "Confirmé. Remettez KES 500.00 en espèces à Baraka Otieno {msisdn}."),
        ("en", "Confirmed. Give KES 500.00 cash to Baraka Otieno {msisdn}."),
    ],
)
async def test_the_agent_is_told_in_its_own_language(
    ussd: UssdEnv, language: str, expected: str
) -> None:
    msisdn = await ussd.bank.open(balance_minor=100_000, first_name="Baraka")
    code, agent_msisdn = await ussd.bank.agent(float_minor=10_000_00)
    await set_agent_language(ussd.bank.pool, code, language, actor="test")
    body = await ussd.session(msisdn).walk("3", code, "500", PIN)
    assert body.startswith("END Withdrawn KES 500.00")  # the customer's own language: English
    [told] = await ussd.bank.outbox(agent_msisdn, "agent_cash_out")
    assert expected.format(msisdn=msisdn) in told["body"]
    assert is_gsm7(told["body"])
