"""The default menu over HTTP (Africa's Talking format) against a running gateway with real
PostgreSQL and Redis. The banking core is stood in for by tests/ussd_support.FakeBank until the
core binding lands; everything else (parsing, sessions, the engine, rendering) is the product."""

from __future__ import annotations

import pytest

from tests.ussd_support import UssdEnv, new_msisdn, ussd

__all__ = ["ussd"]

MAIN_LABELS = ("Send money", "Balance", "Withdraw", "Statement", "Loans", "My account")


async def test_register_then_main_menu(ussd: UssdEnv) -> None:
    msisdn = new_msisdn()
    s = ussd.session(msisdn)
    body = await s.dial()
    assert body.startswith("CON ") and "1. Register" in body
    assert "Enter your first name" in await s.send("1")
    assert "Enter your last name" in await s.send("Wanjiku")
    assert "national ID" in await s.send("Kamau")
    assert "4-digit PIN" in await s.send("12345678")
    assert "PIN again" in await s.send("4821")
    body = await s.send("4822")
    assert body.startswith("CON ") and "differ" in body and "PIN again" in body
    body = await s.send("4821")
    assert body.startswith("END ") and "registered" in body and "Wanjiku" in body
    assert ussd.bank.accounts[msisdn].pin == "4821"

    again = ussd.session(msisdn)
    body = await again.dial()
    assert body.startswith("CON Hello Wanjiku")
    for label in MAIN_LABELS:
        assert label in body


async def test_bad_input_is_refused_and_the_screen_stays(ussd: UssdEnv) -> None:
    s = ussd.session(new_msisdn())
    await s.dial()
    await s.send("1")
    body = await s.send("J0hn!")  # a first name with digits and punctuation
    assert body.startswith("CON ") and "Invalid entry" in body and "first name" in body
    body = await s.send("9")  # not a name either
    assert "Invalid entry" in body


async def test_navigation_back_home_and_invalid_choice(ussd: UssdEnv) -> None:
    msisdn = new_msisdn()
    ussd.bank.open(msisdn, balance_minor=123_400)
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
    body = await s.send("2")
    body = await s.send("1234")
    assert body == "END Your balance is KES 1,234.00."


async def test_three_wrong_pins_lock_the_wallet(ussd: UssdEnv) -> None:
    msisdn = new_msisdn()
    ussd.bank.open(msisdn, balance_minor=50_000)
    s = ussd.session(msisdn)
    await s.walk("2")
    body = await s.send("0000")
    assert body.startswith("CON ") and "Wrong PIN, 2 tries left" in body
    assert "Wrong PIN, 1 tries left" in await s.send("1111")
    body = await s.send("2222")
    assert body.startswith("END ") and "locked" in body
    # The right PIN no longer helps: the lock is the core's, shared by every channel.
    t = ussd.session(msisdn)
    await t.walk("2")
    assert "locked" in await t.send("1234")


async def test_send_money_moves_money_once_with_a_receipt_screen(ussd: UssdEnv) -> None:
    sender, recipient = new_msisdn(), new_msisdn()
    ussd.bank.open(sender, balance_minor=100_000)
    ussd.bank.open(recipient, balance_minor=0)
    s = ussd.session(sender)
    await s.walk("1")
    body = await s.send("0" + recipient[4:])  # the local form: 07...
    assert "Enter the amount" in body
    body = await s.send("500")
    assert body.startswith("CON Send KES 500.00 to Amina Otieno " + recipient)
    assert "Fee KES 5.00" in body and "1. Confirm" in body and "2. Cancel" in body
    assert "Enter your PIN" in await s.send("1")
    body = await s.send("1234")
    assert body.startswith("END Sent KES 500.00 to Amina. Fee KES 5.00. Ref TX")
    assert ussd.bank.accounts[recipient].balance_minor == 50_000
    assert ussd.bank.accounts[sender].balance_minor == 100_000 - 50_500


async def test_send_money_insufficient_funds_and_unknown_recipient(ussd: UssdEnv) -> None:
    sender, recipient = new_msisdn(), new_msisdn()
    ussd.bank.open(sender, balance_minor=10_000)
    ussd.bank.open(recipient)
    s = ussd.session(sender)
    body = await s.walk("1", recipient, "12.50", "1", "1234")
    assert body.startswith("END Sent KES 12.50")
    t = ussd.session(sender)
    body = await t.walk("1", recipient, "5000", "1", "1234")
    assert body.startswith("END ") and "insufficient" in body
    assert ussd.bank.accounts[recipient].balance_minor == 1_250
    u = ussd.session(sender)
    body = await u.walk("1", new_msisdn(), "10")
    assert body.startswith("END ") and "not registered" in body


async def test_cancel_at_confirmation_moves_nothing(ussd: UssdEnv) -> None:
    sender, recipient = new_msisdn(), new_msisdn()
    ussd.bank.open(sender, balance_minor=10_000)
    ussd.bank.open(recipient)
    s = ussd.session(sender)
    body = await s.walk("1", recipient, "10")
    assert "Invalid choice." in await s.send("3")
    body = await s.send("2")
    assert body.startswith("END Cancelled")
    assert ussd.bank.accounts[sender].balance_minor == 10_000


async def test_statement_pages_with_98(ussd: UssdEnv) -> None:
    msisdn = new_msisdn()
    ussd.bank.open(msisdn, balance_minor=99_00)
    s = ussd.session(msisdn)
    first = await s.walk("4", "1234")
    assert first.startswith("CON Statement. Balance KES 99.00")
    assert first.endswith("98. More")
    pages = [first]
    while pages[-1].startswith("CON "):
        pages.append(await s.send("98"))
        assert len(pages) < 10
    assert pages[-1].startswith("END ") and "98. More" not in pages[-1]
    lines = "\n".join(pages)
    for i in range(1, 9):
        assert f"0{i}/01 Received" in lines
    for page in pages:
        assert len(page) - 4 <= 182


async def test_language_switch_to_kiswahili_and_french(ussd: UssdEnv) -> None:
    msisdn = new_msisdn()
    ussd.bank.open(msisdn)
    s = ussd.session(msisdn)
    body = await s.walk("6", "2")
    assert "1. English\n2. Kiswahili\n3. Français" in body
    body = await s.send("2")
    assert body == "END Lugha yako sasa ni Kiswahili."
    t = ussd.session(msisdn)
    body = await t.dial()
    assert body.startswith("CON Habari Amina") and "Tuma pesa" in body
    body = await t.walk("6", "2", "3")
    assert body == "END Votre langue est maintenant le français."
    u = ussd.session(msisdn)
    assert (await u.dial()).startswith("CON Bonjour Amina")


async def test_change_pin(ussd: UssdEnv) -> None:
    msisdn = new_msisdn()
    ussd.bank.open(msisdn)
    s = ussd.session(msisdn)
    body = await s.walk("6", "1", "1234", "5678", "5678")
    assert body == "END Your PIN has been changed."
    assert ussd.bank.accounts[msisdn].pin == "5678"


@pytest.mark.parametrize("code", ["*384*2#", "*384*6*2#"])
async def test_prefilled_dial_string(ussd: UssdEnv, code: str) -> None:
    msisdn = new_msisdn()
    ussd.bank.open(msisdn)
    s = ussd.session(msisdn, code=code)
    body = await s.dial()
    expected = "Enter your PIN" if code == "*384*2#" else "Choose your language"
    assert body.startswith("CON ") and expected in body


async def test_africas_talking_extended_dial_arrives_as_text(ussd: UssdEnv) -> None:
    """AT may send the extra digits of `*384*2#` as `text=2` on the first request."""
    msisdn = new_msisdn()
    ussd.bank.open(msisdn, balance_minor=700)
    s = ussd.session(msisdn)
    s.inputs = ["2"]
    body = await s.post(s.form())
    assert body == "CON Enter your PIN:"
    assert await s.send("1234") == "END Your balance is KES 7.00."
