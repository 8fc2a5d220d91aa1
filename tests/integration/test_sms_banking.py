"""SMS banking end to end: MOs from the test SMSC, executed on the real core, answered over
SMPP. Case tables for the grammar through the executor, money that moves once (a redelivered or
re-processed MO, two YES messages), both parties told, the shared wrong-PIN count, languages,
the rate limit, and the YES confirmation dialog; the ledger check after every test."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import asyncpg
import pytest
from redis.asyncio import Redis

from channels.sms.executor import RateLimiter, SmsBanking
from channels.sms.handler import InboundSms, RetryLater
from config.settings import Settings
from core.clock import ManualClock, SystemClock
from gateway.app import make_redis
from gateway.keys import DISPATCHER, REDIS
from tests.helpers import eventually, new_msisdn, shows_pin
from tests.sms_banking_support import (
    Replies,
    SmsEnv,
    banking,
    digits,
    fresh_mo_id,
    inbound,
    reprocess,
    retry_horizon_s,
    sms_env_fixtures,
)
from tests.sms_helpers import peer_per_module  # noqa: F401 (the `peer` fixture)
from tests.ussd_support import PIN, RedisProcess, own_redis

__all__ = ["own_redis"]

WRONG = "9137"


env, ledger_ok = sms_env_fixtures()


@pytest.fixture
def confirm_on(env: SmsEnv) -> AsyncIterator[SmsBanking]:
    handler = banking(env)
    handler.confirm_send = True
    try:
        yield handler
    finally:
        handler.confirm_send = False


def local(msisdn: str) -> str:
    return "0" + msisdn[4:]


async def mo_rows(env: SmsEnv, msisdn: str) -> list[dict[str, object]]:
    rows = await env.bank.pool.fetch(
        "SELECT id, body, status, attempts FROM sms_messages "
        "WHERE direction = 'mo' AND msisdn = $1 ORDER BY id",
        msisdn,
    )
    return [dict(r) for r in rows]


async def all_processed(env: SmsEnv, msisdn: str, count: int) -> list[dict[str, object]]:
    return await eventually(
        lambda: mo_rows(env, msisdn),
        lambda rows: len(rows) == count and all(r["status"] == "processed" for r in rows),
    )


# --- the grammar through the executor ---------------------------------------------------------

CASES = [
    ("BAL {pin}", "Your balance is KES 1,000.00."),
    ("  bal    {pin}  ", "Your balance is KES 1,000.00."),
    ("Bal {pin}", "Your balance is KES 1,000.00."),
    ("BAL 12", "The PIN must be 4 digits. Use: BAL <PIN>. Send HELP for all commands."),
    ("BAL", "Wrong number of words. Use: BAL <PIN>. Send HELP for all commands."),
    ("BAL {pin} extra", "Wrong number of words."),
    ("SEND 0712 100 {pin}", "The phone number is not valid."),
    ("SEND {peer} 10.505 {pin}", "The amount must be a number like 500 or 12.50."),
    ("send {peer} abc {pin}", "The amount must be a number"),
    ("SEND {peer} 0 {pin}", "The amount must be more than 0. Use: SEND <phone> <amount> <PIN>."),
    ("SEND +0712345678 100 {pin}", "Not accepted: Type a phone number like 0712345678"),
    ("SEND {peer} 100", "Wrong number of words. Use: SEND <phone> <amount> <PIN>."),
    ("SEND {self} 100 {pin}", "You cannot send money to yourself."),
    ("SEND {stranger} 100 {pin}", "is not registered for mobile money."),
    ("SEND {peer} 5000 {pin}", "Not enough money in your wallet."),
    ("hello there", "Sorry, we did not understand that. Send HELP for the list of commands."),
    ("LANG de", "The language must be EN, SW or FR."),
    ("PIN {pin} {pin}", "The new PIN must differ from the old one."),
    ("YES ABCDE", "No transfer is waiting for confirmation"),
    ("LOAN STATUS {pin}", "You have no loan to repay."),
    ("REPAY 100 {pin}", "You have no loan to repay."),
    ("REG Amina Otieno A1234567 {pin}", "This number is already registered."),
    ("MINI {pin}", "Balance KES 1,000.00. "),
    ("help", "BAL pin; SEND phone amount pin;"),
]


@pytest.mark.parametrize(("template", "expected"), CASES)
async def test_grammar_cases(env: SmsEnv, template: str, expected: str) -> None:
    me = await env.bank.open(balance_minor=100_000)
    other = await env.bank.open()
    text = template.format(pin=PIN, peer=local(other), self=local(me), stranger=new_msisdn())
    reply = await env.ask(me, text)
    assert expected in reply, reply
    assert not shows_pin(PIN, reply)
    assert await env.bank.balance(me) == 100_000  # none of these moves money
    (row,) = await all_processed(env, me, 1)
    assert not shows_pin(PIN, str(row["body"]))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("BAL 4821", "You are not registered. Send REG"),
        ("SEND 0712345678 100 4821", "You are not registered."),
        ("LOAN STATUS 4821", "You are not registered."),
        ("HELP", "Open a wallet: REG first last id pin, or just REG"),
        ("BAL", "Wrong number of words."),
    ],
)
async def test_unknown_sender(env: SmsEnv, text: str, expected: str) -> None:
    stranger = new_msisdn()
    reply = await env.ask(stranger, text)
    assert expected in reply, reply
    assert (
        await env.bank.pool.fetchval("SELECT count(*) FROM customers WHERE msisdn=$1", stranger)
        == 0
    )


async def test_register_then_balance(env: SmsEnv) -> None:
    me = new_msisdn()
    national_id = "ID" + secrets.token_hex(4).upper()
    reply = await env.ask(me, f"reg  wanjiru  kamau {national_id} {PIN}")
    assert reply == "Welcome wanjiru! Your wallet is open. Send BAL <PIN> for your balance."
    assert await env.bank.status(me) == "active"
    assert await env.ask(me, f"BAL {PIN}") == "Your balance is KES 0.00."
    rows = await mo_rows(env, me)
    assert national_id not in str(rows) and not shows_pin(PIN, str(rows))
    # A weak PIN is refused, nothing registered.
    other = new_msisdn()
    reply = await env.ask(other, f"REG Ali Hassan X{national_id} 1234")
    assert "not a sequence" in reply
    assert (
        await env.bank.pool.fetchval("SELECT count(*) FROM customers WHERE msisdn=$1", other) == 0
    )


# --- PINs -------------------------------------------------------------------------------------


async def test_wrong_pin_count_is_shared_with_ussd(env: SmsEnv) -> None:
    me = await env.bank.open(balance_minor=50_000)
    assert await env.ask(me, f"BAL {WRONG}") == (
        "Wrong PIN. 2 attempts left before your wallet is locked."
    )
    assert "1 attempts left" in await env.ask(me, f"MINI {WRONG}")
    # The third wrong PIN, on USSD, locks the wallet.
    await env.session(me).walk("2", WRONG)
    assert await env.bank.status(me) == "locked"
    reply = await env.ask(me, f"BAL {PIN}")
    assert reply.startswith("Your wallet is locked")
    assert "locked" in await env.ask(me, f"SEND {local(new_msisdn())} 10 {PIN}")
    assert await env.bank.balance(me) == 50_000


async def test_right_pin_resets_the_count_and_pin_change(env: SmsEnv) -> None:
    me = await env.bank.open(balance_minor=50_000)
    # Identical texts from one number within SMS_DEDUPE_WINDOW_S are taken for an SMSC
    # redelivery and answered once, so repeated commands differ in case here.
    assert "2 attempts left" in await env.ask(me, f"BAL {WRONG}")
    assert "Your balance" in await env.ask(me, f"BAL {PIN}")
    assert "2 attempts left" in await env.ask(me, f"bal {WRONG}")  # reset by the right one
    assert await env.ask(me, f"PIN {PIN} 5830") == "Your PIN has been changed."
    assert "attempts left" in await env.ask(me, f"Bal {PIN}")
    assert await env.ask(me, "BAL 5830") == "Your balance is KES 500.00."


async def test_pin_change_processed_again_counts_no_wrong_pin(env: SmsEnv) -> None:
    me = await env.bank.open(balance_minor=50_000)
    assert await env.ask(me, f"PIN {PIN} 5830") == "Your PIN has been changed."
    await all_processed(env, me, 1)
    # The reply's record lost (the crash came before it): the same MO runs again. Its reply
    # is found by its ref: the deposit's receipt may reach the number at any time.
    change_mo = await env.bank.pool.fetchval(
        "SELECT max(id) FROM sms_messages WHERE direction = 'mo' AND msisdn = $1", me
    )
    await env.bank.pool.execute(
        "DELETE FROM sms_messages WHERE direction = 'mt' AND ref = $1", f"mo:{change_mo}"
    )
    assert await reprocess(env, me, f"PIN {PIN} 5830") == 1
    last = await env.bank.pool.fetchval(
        "SELECT body FROM sms_messages WHERE direction = 'mt' AND ref = $1", f"mo:{change_mo}"
    )
    assert last == "Your PIN has been changed."
    failures = await env.bank.pool.fetchval(
        "SELECT pin_failures FROM customers WHERE msisdn = $1", me
    )
    assert failures == 0
    # A new message with the old PIN is a wrong PIN, as it always was.
    assert "2 attempts left" in await env.ask(me, f"pin {PIN} 5830")
    assert await env.ask(me, "BAL 5830") == "Your balance is KES 500.00."


async def test_send_processed_again_after_a_pin_change_replays_its_receipt(
    env: SmsEnv,
) -> None:
    """The money moved, the reply's record was lost, and the customer changed the PIN before
    the MO ran again: the retry answers with the transfer, not "wrong PIN" (and counts none)."""
    me = await env.bank.open(balance_minor=100_000)
    recipient = await env.bank.open()
    text = f"SEND {local(recipient)} 150 {PIN}"
    first = await env.ask(me, text)
    assert "KES 150.00 sent" in first, first
    await all_processed(env, me, 1)
    send_mo = await env.bank.pool.fetchval(
        "SELECT max(id) FROM sms_messages WHERE direction = 'mo' AND msisdn = $1", me
    )
    assert await env.ask(me, f"PIN {PIN} 5830") == "Your PIN has been changed."
    await env.bank.pool.execute(
        "DELETE FROM sms_messages WHERE direction = 'mt' AND ref = $1", f"mo:{send_mo}"
    )
    # The SEND is the MO handled again below (`reprocess` takes the number's latest MO).
    await env.bank.pool.execute(
        "DELETE FROM sms_messages WHERE direction = 'mo' AND msisdn = $1 AND id > $2",
        me,
        send_mo,
    )
    assert await reprocess(env, me, text) == 1
    again = await env.bank.pool.fetchval(
        "SELECT body FROM sms_messages WHERE direction = 'mt' AND ref = $1", f"mo:{send_mo}"
    )
    assert again == first
    assert await env.bank.balance(recipient) == 15_000
    assert await env.bank.transfers(recipient) == 1
    failures = await env.bank.pool.fetchval(
        "SELECT pin_failures FROM customers WHERE msisdn = $1", me
    )
    assert failures == 0
    # A new SEND with the old PIN is refused, as it always was.
    assert "2 attempts left" in await env.ask(me, f"SEND {local(recipient)} 10 {PIN}")


# --- money ------------------------------------------------------------------------------------


async def test_send_moves_money_once_and_both_parties_get_an_sms(env: SmsEnv) -> None:
    sender = await env.bank.open(balance_minor=100_000)
    recipient = await env.bank.open(first_name="Baraka", last_name="Mwangi", language="sw")
    receipts_before = len(await env.texts(recipient))
    reply = await env.ask(sender, f"SEND {local(recipient)} 150 {PIN}")
    assert "Confirmed. KES 150.00 sent to Baraka Mwangi " + recipient in reply, reply
    assert not shows_pin(PIN, reply)
    fee = 100_000 - 15_000 - await env.bank.balance(sender)
    assert fee >= 0 and f"New balance KES {(85_000 - fee) // 100:,}" in reply
    assert await env.bank.balance(recipient) == 15_000
    env.app[DISPATCHER].wake()
    texts = await env.wait_texts(recipient, receipts_before + 1)
    assert "150.00" in texts[-1]
    assert await env.bank.transfers(recipient) == 1
    channel = await env.bank.pool.fetchval(
        "SELECT channel FROM transfers WHERE credit_party = $1", recipient
    )
    assert channel == "sms"

    # The same MO processed again (a crash after the money, a lease taken over): the money does
    # not move again and the reply is not sent twice.
    (row,) = await all_processed(env, sender, 1)
    mo = await env.bank.pool.fetchrow("SELECT * FROM sms_messages WHERE id = $1", row["id"])
    submits_before = len(await env.peer.submits())
    await banking(env).handle(
        InboundSms(
            id=int(mo["id"]),
            msisdn=sender,
            short_code=mo["short_code"],
            text=f"SEND {local(recipient)} 150 {PIN}",
            smsc=mo["smsc"],
            received_at=mo["created_at"],
            parts=1,
            complete=True,
            attempt=2,
        )
    )
    assert await env.bank.transfers(recipient) == 1
    assert await env.bank.balance(recipient) == 15_000
    replies = await env.bank.pool.fetchval(
        "SELECT count(*) FROM sms_messages WHERE direction = 'mt' AND ref = $1", f"mo:{mo['id']}"
    )
    assert replies == 1
    assert [
        s for s in (await env.peer.submits())[submits_before:] if s["dest"] == digits(sender)
    ] == []


async def pending_outbox(env: SmsEnv, *msisdns: str) -> int:
    count = await env.bank.pool.fetchval(
        "SELECT count(*) FROM outbox WHERE recipient = ANY($1::text[]) AND status = 'pending'",
        list(msisdns),
    )
    return int(count)


async def test_send_tells_the_sender_once_and_the_recipient_once(env: SmsEnv) -> None:
    """The reply to SEND is the sender's receipt: the core queues no second one for them."""
    sender = await env.bank.open(balance_minor=100_000)
    recipient = await env.bank.open(first_name="Zawadi", last_name="Kamau")
    env.app[DISPATCHER].wake()  # the deposit's receipt goes out before we count
    await eventually(lambda: pending_outbox(env, sender, recipient), lambda n: n == 0)
    sender_before = len(await env.texts(sender))
    recipient_before = len(await env.texts(recipient))

    reply = await env.ask(sender, f"SEND {local(recipient)} 250 {PIN}")
    assert "Confirmed. KES 250.00 sent to Zawadi Kamau" in reply, reply
    reference = reply.split()[0]
    env.app[DISPATCHER].wake()
    await eventually(lambda: pending_outbox(env, sender, recipient), lambda n: n == 0)
    received = await env.wait_texts(recipient, recipient_before + 1)
    assert len(received) == recipient_before + 1 and reference in received[-1]
    assert (await env.texts(sender))[sender_before:] == [reply]  # the reply, nothing more
    rows = await env.bank.pool.fetch(
        "SELECT recipient, template FROM outbox WHERE transfer_id = ledger_reference_id($1)",
        reference,
    )
    assert [(r["recipient"], r["template"]) for r in rows] == [(recipient, "p2p_received")]


async def test_confirmed_send_tells_the_sender_once(env: SmsEnv, confirm_on: SmsBanking) -> None:
    sender = await env.bank.open(balance_minor=100_000)
    recipient = await env.bank.open()
    prompt = await env.ask(sender, f"SEND {local(recipient)} 120 {PIN}")
    code = prompt.split("Reply YES ")[1].split()[0]
    reply = await env.ask(sender, f"YES {code}")
    reference = reply.split()[0]
    rows = await env.bank.pool.fetch(
        "SELECT recipient FROM outbox WHERE transfer_id = ledger_reference_id($1)", reference
    )
    assert [r["recipient"] for r in rows] == [recipient]


async def test_redelivered_mo_moves_money_once(env: SmsEnv) -> None:
    sender = await env.bank.open(balance_minor=100_000)
    recipient = await env.bank.open()
    text = f"SEND {local(recipient)} 70 {PIN}"
    await env.mo(sender, text)
    await env.mo(sender, text)  # the SMSC delivers the same MO again (no resp seen)
    await eventually(lambda: env.bank.balance(recipient), lambda b: b == 7_000)
    await eventually(
        lambda: mo_rows(env, sender),
        lambda rows: rows and all(r["status"] in ("processed", "failed") for r in rows),
    )
    assert await env.bank.transfers(recipient) == 1
    assert await env.bank.balance(recipient) == 7_000


# --- languages --------------------------------------------------------------------------------


async def test_lang_then_replies_in_the_new_language(env: SmsEnv) -> None:
    me = await env.bank.open(balance_minor=20_000)
    assert await env.ask(me, "lang SW") == "Sasa utapokea ujumbe kwa Kiswahili."
    assert await env.ask(me, f"BAL {PIN}") == "Salio lako ni KES 200.00."
    assert "Majaribio 2" in await env.ask(me, f"BAL {WRONG}")
    assert await env.ask(me, "LANG fr") == "Vous recevrez désormais les messages en francais."
    assert await env.ask(me, f"bal {PIN}") == "Votre solde est de KES 200.00."
    assert await env.ask(me, "LANG en") == "You will now get messages in English."
    assert (
        await env.bank.pool.fetchval("SELECT language FROM customers WHERE msisdn=$1", me) == "en"
    )


HINTS_BY_LANGUAGE = [
    ("sw", "BAL 12", "PIN iwe tarakimu 4. Tumia: BAL <PIN>. Tuma HELP kuona amri zote."),
    ("sw", "hujambo", "Samahani, hatukuelewa ujumbe huo. Tuma HELP kuona orodha ya amri."),
    (
        "fr",
        "SEND 0712 100 {pin}",
        "Le numéro de téléphone n'est pas valide. Utilisez : SEND <téléphone> <montant> <PIN>. "
        "Envoyez HELP pour toutes les commandes.",
    ),
    (
        "fr",
        "bonjour",
        "Désolé, nous n'avons pas compris. Envoyez HELP pour la liste des commandes.",
    ),
    ("en", "LANG de", "The language must be EN, SW or FR. Use: LANG <EN or SW or FR>."),
    # Refusals of the core's own checks: their reason was the core's English message.
    ("sw", "SEND {peer} 0 {pin}", "Kiasi kiwe zaidi ya 0. Tumia: SEND <simu> <kiasi> <PIN>."),
    ("sw", "SEND +0712345678 100 {pin}", "Haikubaliwi: Nambari ya simu si sahihi."),
    ("fr", "SEND +0712345678 100 {pin}", "Refusé : Le numéro de téléphone n'est pas valide."),
    ("fr", "REPAY 00 {pin}", "Le montant doit dépasser 0."),
]


@pytest.mark.parametrize(("language", "template", "expected"), HINTS_BY_LANGUAGE)
async def test_hints_in_the_customers_language(
    env: SmsEnv, language: str, template: str, expected: str
) -> None:
    me = await env.bank.open(language=language)
    other = await env.bank.open()
    reply = await env.ask(me, template.format(pin=PIN, peer=local(other)))
    assert reply.startswith(expected), reply
    assert not shows_pin(PIN, reply)


@pytest.mark.parametrize(
    ("form", "ton"),
    [("national", 2), ("national with the trunk 0", 2), ("international prefix 00", 0)],
)
async def test_a_sender_in_any_number_form_is_answered_at_its_number(
    env: SmsEnv, form: str, ton: int
) -> None:
    """The SMSC may give the sender in national form (TON 2, `712345678`) or with the `00`
    prefix. The core found the customer under `+254712345678` (its own rules) while the channel
    kept `712345678`, so the reply went to the international `712345678` (or, for `00254...`,
    to `+2540254...`): money moved on one number, its receipt went to another."""
    me = await env.bank.open()  # no deposit: no receipt among the texts read here
    national = digits(me)[3:]
    source = {
        "national": national,
        "national with the trunk 0": "0" + national,
        "international prefix 00": "00" + digits(me),
    }[form]
    await env.peer.mo(source=source, source_ton=ton, text=f"BAL {PIN}")
    assert await env.wait_texts(me, 1) == ["Your balance is KES 0.00."]
    (row,) = await all_processed(env, me, 1)
    assert row["body"] == "BAL ****"


@pytest.mark.parametrize(
    ("kind", "ton"), [("alphanumeric", 5), ("short code", 3), ("short, international", 1)]
)
async def test_a_sender_that_is_not_a_phone_number_is_not_a_handler_failure(
    env: SmsEnv, kind: str, ton: int
) -> None:
    """An MO from an alphanumeric sender id or a short code (an operator's service, a
    misrouted message) made the core's number check raise inside the handler: the MO was
    failed as a handler bug with a traceback, each time."""
    source = (
        "Svc" + secrets.token_hex(3)
        if kind == "alphanumeric"
        else str(10_000 + secrets.randbelow(90_000))
    )
    await env.peer.mo(source=source, source_ton=ton, text=f"BAL {PIN}")
    stored = "+" + source if ton == 1 else source  # international: as the channel writes it
    (row,) = await all_processed(env, stored, 1)
    assert row["body"] == "BAL ****"
    assert (
        await env.bank.pool.fetchval(
            "SELECT count(*) FROM sms_messages WHERE direction = 'mt' AND msisdn = $1", stored
        )
        == 0
    )


async def test_an_unknown_sender_gets_english_hints(env: SmsEnv) -> None:
    reply = await env.ask(new_msisdn(), "habari")
    assert reply == "Sorry, we did not understand that. Send HELP for the list of commands."


# --- the rate limit ---------------------------------------------------------------------------


async def test_rate_limit_notice_once_then_silence(env: SmsEnv) -> None:
    me = await env.bank.open()  # no deposit: no receipt among the texts counted here
    limit = env.settings.sms_rate_per_minute
    assert limit == 10
    # Distinct texts: identical ones within SMS_DEDUPE_WINDOW_S count as one redelivered MO.
    variants = [
        "".join(c.upper() if i >> n & 1 else c for n, c in enumerate("help")) for i in range(16)
    ]
    for variant in variants[:limit]:
        await env.mo(me, variant)
    await env.wait_texts(me, limit)
    await env.mo(me, f"BAL {WRONG}")  # over the limit: not executed, so no PIN failure
    await env.mo(me, f"bal {WRONG}")
    await env.mo(me, variants[limit])
    await all_processed(env, me, limit + 3)
    texts = await env.texts(me)
    assert len(texts) == limit + 1
    assert texts[-1] == "Too many messages. Please wait a minute before sending another."
    failures = await env.bank.pool.fetchval(
        "SELECT pin_failures FROM customers WHERE msisdn = $1", me
    )
    assert failures == 0
    # A new window starts when the old one ends.
    redis: Redis = env.app[REDIS]
    await redis.delete(banking(env).limiter.key(me))
    assert await env.ask(me, f"BAL {PIN}") == "Your balance is KES 0.00."


async def test_the_rate_limit_notice_is_in_the_customers_language(env: SmsEnv) -> None:
    """The limiter runs before the customer is looked up, and its notice was always English."""
    me = await env.bank.open(language="sw")
    handler = banking(env)
    replies = Replies()
    limited = SmsBanking(
        replies,
        core=handler.core,
        loans=handler.loans,
        limiter=RateLimiter(handler.limiter.redis, f"rate-{secrets.token_hex(4)}:", 1),
        confirmations=handler.confirmations,
    )
    await limited.handle(inbound(me, "HELP", fresh_mo_id()))
    await limited.handle(inbound(me, "help", fresh_mo_id()))
    assert replies.sent[-1][1] == (
        "Ujumbe mwingi mno. Tafadhali subiri dakika moja kabla ya kutuma mwingine."
    )
    await limited.handle(inbound(me, "Help", fresh_mo_id()))
    assert len(replies.sent) == 2  # then silence


# --- the YES confirmation dialog --------------------------------------------------------------


async def test_send_with_confirmation(env: SmsEnv, confirm_on: SmsBanking) -> None:
    sender = await env.bank.open(balance_minor=100_000)
    recipient = await env.bank.open(first_name="Neema", last_name="Ali")
    prompt = await env.ask(sender, f"SEND {local(recipient)} 200 {PIN}")
    assert prompt.startswith(f"Send KES 200.00 to Neema Ali {recipient}? Fee "), prompt
    assert "Reply YES " in prompt and "within 5 minutes" in prompt
    code = prompt.split("Reply YES ")[1].split()[0]
    assert len(code) == 5
    assert await env.bank.transfers(recipient) == 0

    assert "not right" in await env.ask(sender, "YES ZZZZZ")
    assert await env.bank.transfers(recipient) == 0
    reply = await env.ask(sender, f"yes {code.lower()}")
    assert "Confirmed. KES 200.00 sent to Neema Ali" in reply, reply
    assert await env.bank.balance(recipient) == 20_000
    # The code is spent: a second YES moves nothing.
    assert "No transfer is waiting" in await env.ask(sender, f"YES {code.upper()}")
    assert await env.bank.transfers(recipient) == 1
    rows = await mo_rows(env, sender)
    assert all(code not in str(r["body"]) and not shows_pin(PIN, str(r["body"])) for r in rows)
    # Nor in the reply that gave it, as stored (the admin API lists MT bodies): the customer
    # got it, the record says where it was.
    bodies = [
        str(r["body"])
        for r in await env.bank.pool.fetch(
            "SELECT body FROM sms_messages WHERE direction = 'mt' AND msisdn = $1", sender
        )
    ]
    prompt_body = next(b for b in bodies if "within 5 minutes" in b)
    assert code not in prompt_body and "Reply YES ***** within 5 minutes." in prompt_body
    assert all(code not in b for b in bodies)


async def test_a_new_send_replaces_the_pending_one(env: SmsEnv, confirm_on: SmsBanking) -> None:
    sender = await env.bank.open(balance_minor=100_000)
    first, second = await env.bank.open(), await env.bank.open()
    code1 = (await env.ask(sender, f"SEND {local(first)} 100 {PIN}")).split("Reply YES ")[1][:5]
    code2 = (await env.ask(sender, f"SEND {local(second)} 300 {PIN}")).split("Reply YES ")[1][:5]
    if code1 != code2:
        assert "not right" in await env.ask(sender, f"YES {code1}")
    assert "KES 300.00 sent" in await env.ask(sender, f"YES {code2}")
    assert await env.bank.balance(first) == 0 and await env.bank.balance(second) == 30_000


async def test_three_wrong_codes_cancel(env: SmsEnv, confirm_on: SmsBanking) -> None:
    sender = await env.bank.open(balance_minor=100_000)
    recipient = await env.bank.open()
    code = (await env.ask(sender, f"SEND {local(recipient)} 100 {PIN}")).split("Reply YES ")[1][:5]
    wrong = "22222" if code != "22222" else "33333"
    assert "not right" in await env.ask(sender, f"YES {wrong}")
    assert "not right" in await env.ask(sender, f"yes {wrong}")
    assert "cancelled" in await env.ask(sender, f"Yes {wrong}")
    assert "No transfer is waiting" in await env.ask(sender, f"YES {code}")
    assert await env.bank.balance(recipient) == 0


async def test_expired_confirmation_moves_nothing(env: SmsEnv, confirm_on: SmsBanking) -> None:
    sender = await env.bank.open(balance_minor=100_000)
    recipient = await env.bank.open()
    code = (await env.ask(sender, f"SEND {local(recipient)} 100 {PIN}")).split("Reply YES ")[1][:5]
    redis: Redis = env.app[REDIS]
    key = confirm_on.confirmations.store.key("sms-send", sender)
    assert await redis.pttl(key) > 0  # the dialog has a TTL ...
    await redis.pexpire(key, 1)  # ... and here it runs out
    await eventually(lambda: redis.exists(key), lambda n: n == 0)
    confirm_on.confirmations.store.forget(key)
    assert "No transfer is waiting" in await env.ask(sender, f"YES {code}")
    assert await env.bank.balance(recipient) == 0


async def test_wrong_codes_do_not_extend_the_confirmation(
    env: SmsEnv, confirm_on: SmsBanking
) -> None:
    """ "Reply YES <code> within 5 minutes": a wrong code used to save the dialog with a new
    five-minute TTL, so two wrong codes kept a transfer confirmable for up to fifteen."""
    sender = await env.bank.open(balance_minor=100_000)
    recipient = await env.bank.open()
    code = (await env.ask(sender, f"SEND {local(recipient)} 100 {PIN}")).split("Reply YES ")[1][:5]
    wrong = "22222" if code != "22222" else "33333"
    confirmations = confirm_on.confirmations
    clock = ManualClock(datetime.now(UTC))
    confirmations.clock = clock
    try:
        clock.advance(seconds=confirmations.ttl_s - 30)  # four and a half minutes later
        assert "not right" in await env.ask(sender, f"YES {wrong}")
        redis: Redis = env.app[REDIS]
        assert 0 < await redis.pttl(confirmations.store.key("sms-send", sender)) <= 30_000
        clock.advance(seconds=31)  # the five minutes are over
        assert "No transfer is waiting" in await env.ask(sender, f"YES {code}")
    finally:
        confirmations.clock = SystemClock()
    assert await env.bank.balance(recipient) == 0
    assert await env.bank.balance(sender) == 100_000


def recorded_copy(confirm_on: SmsBanking) -> tuple[Replies, SmsBanking]:
    """Another instance of the confirming handler on the same core, Redis and dialogs, its
    replies recorded: the channel running an MO again, where a test drives it by hand."""
    replies = Replies()
    return replies, SmsBanking(
        replies,
        core=confirm_on.core,
        loans=confirm_on.loans,
        limiter=confirm_on.limiter,
        confirmations=confirm_on.confirmations,
        confirm_send=True,
    )


async def test_a_confirmed_send_answers_its_yes_for_as_long_as_the_channel_retries_it(
    env: SmsEnv, confirm_on: SmsBanking
) -> None:
    """A YES whose reply could not go out (the SMSC down) is run again by the channel for
    about five minutes, and each run answers from the confirmed dialog. That dialog lived
    SMS_DIALOG_TTL_S (300 s) from the confirmation, so the last runs found nothing and
    answered "No transfer is waiting" for a transfer that had gone through."""
    sender = await env.bank.open(balance_minor=100_000)
    recipient = await env.bank.open()
    code = (await env.ask(sender, f"SEND {local(recipient)} 100 {PIN}")).split("Reply YES ")[1][:5]
    replies, handler = recorded_copy(confirm_on)
    yes = fresh_mo_id()
    await handler.handle(inbound(sender, f"YES {code}", yes))
    receipt = replies.sent[-1][1]
    assert "KES 100.00 sent" in receipt, receipt
    redis: Redis = env.app[REDIS]
    key = confirm_on.confirmations.store.key("sms-send", sender)
    assert await redis.pttl(key) > retry_horizon_s() * 1000
    await handler.handle(inbound(sender, f"YES {code}", yes, attempt=5))
    assert replies.sent[-1][1] == receipt
    assert await env.bank.transfers(recipient) == 1


async def test_a_send_processed_again_does_not_reopen_its_dialog(
    env: SmsEnv, confirm_on: SmsBanking
) -> None:
    """A SEND run again (its reply not recorded, a lease taken over) after its transfer was
    cancelled or confirmed opened it again under a new code: STOP's "cancelled" was undone."""
    sender = await env.bank.open(balance_minor=100_000)
    recipient = await env.bank.open()
    send = f"SEND {local(recipient)} 100 {PIN}"
    code = (await env.ask(sender, send)).split("Reply YES ")[1][:5]
    assert await env.ask(sender, "STOP") == "The transfer is cancelled. Nothing was sent."
    send_mo = await env.bank.pool.fetchval(
        "SELECT id FROM sms_messages WHERE msisdn = $1 AND direction = 'mo' AND body LIKE 'SEND%'",
        sender,
    )
    replies, again = recorded_copy(confirm_on)
    await again.handle(inbound(sender, send, send_mo, attempt=2))
    assert code in replies.sent[-1][1]  # the same answer, the same code
    assert "No transfer is waiting" in await env.ask(sender, f"YES {code}")
    assert await env.bank.balance(recipient) == 0


async def test_an_older_send_processed_late_does_not_replace_the_newer_one(
    env: SmsEnv, confirm_on: SmsBanking
) -> None:
    """A SEND whose first run failed (the core or Redis down: "we will answer when it is
    back") is run again later; meanwhile the customer sent another SEND and got its code. The
    late run replaced the newer pending transfer with the older one, so the code the customer
    was answering with last was "not right" and the older transfer was the one left to
    confirm."""
    sender = await env.bank.open(balance_minor=100_000)
    first, second = await env.bank.open(), await env.bank.open()
    replies, handler = recorded_copy(confirm_on)
    newer = fresh_mo_id()
    await handler.handle(inbound(sender, f"SEND {local(second)} 300 {PIN}", newer))
    code = replies.sent[-1][1].split("Reply YES ")[1][:5]
    await handler.handle(inbound(sender, f"SEND {local(first)} 100 {PIN}", newer - 1, attempt=2))
    assert replies.sent[-1][1] == (
        "A newer transfer is waiting for your YES. This one was not kept: nothing was sent."
    )
    assert "KES 300.00 sent" in await env.ask(sender, f"YES {code}")
    assert await env.bank.balance(first) == 0 and await env.bank.balance(second) == 30_000


async def test_wrong_pin_in_a_confirmed_send_asks_nothing(
    env: SmsEnv, confirm_on: SmsBanking
) -> None:
    sender = await env.bank.open(balance_minor=100_000)
    recipient = await env.bank.open()
    reply = await env.ask(sender, f"SEND {local(recipient)} 100 {WRONG}")
    assert "2 attempts left" in reply and "YES" not in reply
    assert "No transfer is waiting" in await env.ask(sender, "YES ABCDE")


def test_digits() -> None:
    assert digits("+254700000001") == "254700000001"


# --- temporary failures -----------------------------------------------------------------------


async def test_database_down_is_temporary_and_the_retry_answers(
    env: SmsEnv, settings: Settings
) -> None:
    live = banking(env)
    me = await env.bank.open(balance_minor=30_000)
    recipient = await env.bank.open()
    dead_pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=1)
    await dead_pool.close()
    replies = Replies()
    down = SmsBanking(
        replies,
        core=replace(live.core, pool=dead_pool),
        loans=live.loans,
        limiter=live.limiter,
        confirmations=live.confirmations,
    )
    mo_id = fresh_mo_id()
    text = f"SEND {local(recipient)} 40 {PIN}"
    with pytest.raises(RetryLater):
        await down.handle(inbound(me, text, mo_id))
    assert replies.sent == [
        (
            me,
            "The service is temporarily unavailable. We will answer your message when it is back.",
            f"mo:{mo_id}:unavailable",
        )
    ]
    assert await env.bank.balance(recipient) == 0
    # The channel retries the MO later; with the database back it runs once and answers.
    up = SmsBanking(
        replies,
        core=live.core,
        loans=live.loans,
        limiter=live.limiter,
        confirmations=live.confirmations,
    )
    await up.handle(inbound(me, text, mo_id, attempt=2))
    await up.handle(inbound(me, text, mo_id, attempt=3))  # and again: the money moves once
    assert await env.bank.balance(recipient) == 4_000
    assert await env.bank.transfers(recipient) == 1
    assert "KES 40.00 sent" in replies.sent[1][1] and replies.sent[1][2] == f"mo:{mo_id}"


async def test_redis_down_is_temporary(env: SmsEnv, own_redis: RedisProcess) -> None:
    live = banking(env)
    me = await env.bank.open()
    client = make_redis(own_redis.url)
    own_redis.stop()
    replies = Replies()
    down = SmsBanking(
        replies,
        core=live.core,
        loans=live.loans,
        limiter=RateLimiter(client, "x:", 10),
        confirmations=live.confirmations,
    )
    try:
        with pytest.raises(RetryLater):
            await down.handle(inbound(me, f"BAL {PIN}", fresh_mo_id()))
    finally:
        await client.aclose()
    assert [text for _, text, _ in replies.sent] == [
        "The service is temporarily unavailable. We will answer your message when it is back."
    ]
