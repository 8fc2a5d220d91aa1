"""The SMS registration dialog end to end: MOs from the test SMSC, one question per SMS, the
customer registered on the real core. A full dialog registers once (re-processed, redelivered
or raced final messages too); bad answers are asked again with the reason; a PIN mismatch;
STOP; expiry; other commands while it waits; a one-shot REG replacing it; languages; and the
PIN and ID number never stored or logged in clear (the message store, the dialog in Redis, the
log records)."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterator
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from channels.sms.dialogs import DONE_KEEP_S
from channels.sms.executor import SmsBanking
from channels.sms.registration import Registrations
from core import errors as E
from core.clock import ManualClock, SystemClock
from gateway.keys import REDIS, SMS_CHANNEL
from menus.actions import ActionContext, ActionResult
from menus.bindings import CoreActions
from tests.helpers import eventually, new_msisdn, shows_pin
from tests.sms_banking_support import (
    Replies,
    SmsEnv,
    banking,
    fresh_mo_id,
    inbound,
    retry_horizon_s,
    sms_env_fixtures,
)
from tests.sms_helpers import peer_per_module  # noqa: F401 (the `peer` fixture)
from tests.ussd_support import PIN

OTHER_PIN = "5930"
HINT = "Sorry, we did not understand that."
PENDING = (
    "Your wallet is still being opened. If no welcome SMS comes, send PIN <PIN> to finish, "
    "REG to start over or STOP to cancel."
)
UNAVAILABLE = "The service is temporarily unavailable. We will answer your message when it is back."


env, ledger_ok = sms_env_fixtures()


def regs(env: SmsEnv) -> Registrations:
    found = banking(env).registrations
    assert found is not None
    return found


def new_id_number() -> str:
    return "ID" + secrets.token_hex(5).upper()


async def customers(env: SmsEnv, msisdn: str) -> int:
    return int(
        await env.bank.pool.fetchval("SELECT count(*) FROM customers WHERE msisdn = $1", msisdn)
    )


async def stored_bodies(env: SmsEnv, msisdn: str) -> list[str]:
    """Every stored message to and from the number, as the store keeps it."""
    rows = await env.bank.pool.fetch(
        "SELECT body FROM sms_messages WHERE msisdn = $1 ORDER BY id", msisdn
    )
    return [str(r["body"]) for r in rows]


async def assert_no_secret_stored(env: SmsEnv, msisdn: str, *secrets_: str) -> None:
    bodies = await stored_bodies(env, msisdn)
    assert bodies
    for secret in secrets_:
        assert all(secret not in body for body in bodies), (secret, bodies)
    raw = await env.app[REDIS].get(regs(env).key(msisdn))
    for secret in secrets_:
        assert raw is None or secret.encode() not in raw


async def walk(env: SmsEnv, msisdn: str, *answers: str) -> list[str]:
    return [await env.ask(msisdn, answer) for answer in answers]


def collecting(env: SmsEnv, replies: Replies) -> SmsBanking:
    """The live handler's parts (core, Redis dialogs) answering into `replies`."""
    live = banking(env)
    return SmsBanking(
        replies,
        core=live.core,
        loans=live.loans,
        limiter=live.limiter,
        confirmations=live.confirmations,
        registrations=live.registrations,
    )


def logged_fields(record: logging.LogRecord) -> dict[str, object]:
    """A record's fields that could carry text: its timings and ids are numbers, and one of
    them holding the PIN's four digits by chance (`relativeCreated` 2924.4821...) is no leak."""
    return {k: v for k, v in record.__dict__.items() if not isinstance(v, int | float)}


@pytest.fixture
def log_records(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog


# --- the whole dialog -------------------------------------------------------------------------


async def test_full_dialog_registers_once(
    env: SmsEnv, log_records: pytest.LogCaptureFixture
) -> None:
    me, id_number = new_msisdn(), new_id_number()
    replies = await walk(env, me, "REG", "Amina Otieno", id_number.lower(), PIN, f"YES {PIN}")
    assert replies[0].startswith("Welcome! To open a wallet, send your first and last name")
    assert replies[1] == "Thank you Amina. Now send your national ID number."
    assert replies[2].startswith("Now choose a 4-digit PIN and send it.")
    assert replies[3] == "To confirm your PIN, send YES and the same PIN, like this: YES <PIN>"
    assert replies[4] == "Welcome Amina! Your wallet is open. Send BAL <PIN> for your balance."
    row = await env.bank.pool.fetchrow(
        "SELECT first_name, last_name, language, status FROM customers WHERE msisdn = $1", me
    )
    assert dict(row) == {
        "first_name": "Amina",
        "last_name": "Otieno",
        "language": "en",
        "status": "active",
    }
    assert await env.ask(me, f"BAL {PIN}") == "Your balance is KES 0.00."  # the PIN chosen
    assert await customers(env, me) == 1
    await assert_no_secret_stored(env, me, PIN, id_number, id_number.lower())
    masked = await env.bank.pool.fetch(
        "SELECT body FROM sms_messages WHERE msisdn = $1 AND direction = 'mo' ORDER BY id", me
    )
    assert [r["body"] for r in masked] == [
        "REG",
        "Amina Otieno",
        "****",
        "****",
        "YES ****",
        "BAL ****",
    ]
    logged = "\n".join(r.getMessage() + repr(logged_fields(r)) for r in log_records.records)
    assert (
        not shows_pin(PIN, logged) and id_number not in logged and id_number.lower() not in logged
    )
    # The dialog lives on (without its secrets) only to answer the final message again, for as
    # long as the channel may run that MO again: with SMS_DIALOG_TTL_S alone, a final message
    # whose welcome could not be sent (the SMSC down) was answered, on its last runs, as a YES
    # with no transfer waiting.
    redis: Redis = env.app[REDIS]
    ttl_ms = await redis.pttl(regs(env).key(me))
    assert retry_horizon_s() * 1000 < ttl_ms <= DONE_KEEP_S * 1000


async def test_reprocessed_and_redelivered_final_message_registers_once(env: SmsEnv) -> None:
    me = new_msisdn()
    await walk(env, me, "REG", "Baraka Mwangi", new_id_number(), PIN)
    # The SMSC delivers the confirmation twice (its acknowledgement was lost).
    await env.mo(me, f"YES {PIN}")
    await env.mo(me, f"YES {PIN}")
    texts = await env.wait_texts(me, 5)
    assert texts[-1].startswith("Welcome Baraka!")
    final = await env.bank.pool.fetchrow(
        "SELECT id FROM sms_messages WHERE msisdn = $1 AND direction = 'mo' AND body = 'YES ****'",
        me,
    )
    # The same MO processed again (a crash after the core call): the same welcome, once sent.
    replies = Replies()
    await collecting(env, replies).handle(inbound(me, f"YES {PIN}", final["id"], attempt=2))
    assert replies.sent == [
        (
            me,
            "Welcome Baraka! Your wallet is open. Send BAL <PIN> for your balance.",
            f"mo:{final['id']}",
        )
    ]
    # A copy that came after the de-duplication window (a new MO id): already registered.
    await collecting(env, replies).handle(inbound(me, f"YES {PIN}", fresh_mo_id()))
    assert replies.sent[-1][1] == "This number is already registered. Send HELP for the commands."
    assert await customers(env, me) == 1
    # The MT's record follows its submit_sm_resp (the outcome writes are batched): wait for
    # it. It is kept by ref, so a second send of the welcome would show in its attempts.
    record = await eventually(
        lambda: env.bank.pool.fetchrow(
            "SELECT attempts FROM sms_messages WHERE direction = 'mt' AND ref = $1",
            f"mo:{final['id']}",
        )
    )
    assert record["attempts"] == 1


async def test_a_crash_between_the_confirmation_and_the_core_registers_on_the_retry(
    env: SmsEnv,
) -> None:
    me = new_msisdn()
    await walk(env, me, "REG", "Neema Ali", new_id_number(), PIN)
    final = fresh_mo_id()
    # The confirmation was applied to the dialog, then the process died before the core call.
    applied = await regs(env).answer(me, f"YES {PIN}", final)
    assert applied is not None and applied[0].register
    assert await customers(env, me) == 0
    replies = Replies()
    handler = collecting(env, replies)
    await handler.handle(inbound(me, f"YES {PIN}", final, attempt=2))
    await handler.handle(inbound(me, f"YES {PIN}", final, attempt=3))
    assert [text for _, text, _ in replies.sent] == [
        "Welcome Neema! Your wallet is open. Send BAL <PIN> for your balance."
    ] * 2
    assert await customers(env, me) == 1
    dialog = await regs(env).load(me)
    assert dialog is not None and dialog.state == "registered" and dialog.pin == ""


async def test_two_confirmations_at_once_register_once(env: SmsEnv) -> None:
    me = new_msisdn()
    await walk(env, me, "REG", "Zawadi Njeri", new_id_number(), PIN)
    replies = Replies()
    handler = collecting(env, replies)
    first, second = fresh_mo_id(), fresh_mo_id()
    await asyncio.gather(
        handler.handle(inbound(me, f"YES {PIN}", first)),
        handler.handle(inbound(me, PIN, second)),
    )
    assert await customers(env, me) == 1
    welcomes = [text for _, text, _ in replies.sent if text.startswith("Welcome Zawadi!")]
    assert len(welcomes) == 1, replies.sent


# --- wrong answers ----------------------------------------------------------------------------


async def test_bad_answers_are_asked_again_then_the_third_ends_it(env: SmsEnv) -> None:
    me = new_msisdn()
    replies = await walk(env, me, "reg", "Amina", "Amina Otieno", "12", new_id_number(), "1234")
    assert replies[1] == (
        "Please send two names, letters only, e.g. Amina Otieno. Send STOP to cancel."
    )
    assert replies[2].startswith("Thank you Amina.")
    assert replies[3].startswith("The ID number must be 4 to 20 letters or digits")
    assert replies[4].startswith("Now choose a 4-digit PIN")
    assert replies[5] == (
        "Too many wrong answers: registration cancelled. Send REG to start again."
    )
    # Over: a PIN now is just a text nobody asked for.
    assert (await env.ask(me, PIN)).startswith(HINT)
    assert await customers(env, me) == 0


async def test_hostile_answers(env: SmsEnv) -> None:
    me = new_msisdn()
    replies = await walk(env, me, "REG", "Robert'); DROP TABLE customers;--", "x" * 160)
    assert replies[1].startswith("Please send two names")
    assert replies[2].startswith("Please send two names")
    assert await env.bank.pool.fetchval("SELECT count(*) FROM customers") > 0
    replies = await walk(env, me, "Amina Otieno", "A1234567' OR '1'='1")
    assert replies[1].startswith("Too many wrong answers")  # the third wrong answer
    assert await customers(env, me) == 0
    bodies = await stored_bodies(env, me)
    assert "A1234567' OR '1'='1" not in bodies and "A****' OR '****'='****" in bodies


async def test_weak_pin_then_pin_mismatch(env: SmsEnv) -> None:
    me = new_msisdn()
    replies = await walk(
        env, me, "REG", "Amina Otieno", new_id_number(), "1111", PIN, f"YES {OTHER_PIN}"
    )
    assert replies[3].startswith("That PIN is too easy to guess")
    assert replies[4].startswith("To confirm your PIN")
    assert replies[5] == (
        "The two PINs were different. Choose a PIN again and send it like this: PIN <PIN>"
    )
    assert await customers(env, me) == 0
    # The first PIN was the right one: chosen again, then confirmed.
    replies = await walk(env, me, f"PIN {PIN}", f"yes {PIN}")
    assert replies[0].startswith("To confirm your PIN")
    assert replies[1].startswith("Welcome Amina!")
    assert await env.ask(me, f"BAL {PIN}") == "Your balance is KES 0.00."
    await assert_no_secret_stored(env, me, PIN, OTHER_PIN)


async def test_mismatch_when_the_first_pin_had_the_typo(env: SmsEnv) -> None:
    """The confirmation's PIN, sent again after the mismatch, registers: the customer never
    has to repeat a text word for word (the channel would take it for a redelivery)."""
    me = new_msisdn()
    replies = await walk(
        env, me, "REG", "Amina Otieno", new_id_number(), PIN, f"YES {OTHER_PIN}", OTHER_PIN
    )
    assert replies[4].startswith("The two PINs were different.")
    assert replies[5].startswith("Welcome Amina!")
    assert await env.ask(me, f"BAL {OTHER_PIN}") == "Your balance is KES 0.00."


# --- ending it --------------------------------------------------------------------------------


async def test_stop_and_cancel(env: SmsEnv) -> None:
    me, id_number = new_msisdn(), new_id_number()
    replies = await walk(env, me, "REG", "Amina Otieno", "STOP", id_number)
    assert replies[2] == "Registration cancelled. Nothing was saved. Send REG to start again."
    assert replies[3].startswith(HINT)
    assert await env.ask(me, "stop") == "There is nothing to cancel. Send HELP for the commands."
    replies = await walk(env, me, "Reg", "Amina Wanjiru", "cancel please")
    assert replies[1].startswith("Thank you Amina.")
    assert replies[2].startswith("Registration cancelled.")
    assert await customers(env, me) == 0
    dialog = await regs(env).load(me)
    assert dialog is not None and dialog.state == "ended"


@pytest.fixture
def short_ttl(env: SmsEnv) -> Iterator[Registrations]:
    dialogs = regs(env)
    ttl_s, dialogs.ttl_s = dialogs.ttl_s, 1
    try:
        yield dialogs
    finally:
        dialogs.ttl_s = ttl_s


async def test_the_dialog_expires(env: SmsEnv, short_ttl: Registrations) -> None:
    me = new_msisdn()
    assert (await env.ask(me, "REG")).startswith("Welcome! To open a wallet")
    redis: Redis = env.app[REDIS]
    key = short_ttl.key(me)
    assert 0 < await redis.pttl(key) <= 1000
    await eventually(lambda: redis.exists(key), lambda n: n == 0)
    assert (await env.ask(me, "Amina Otieno")).startswith(HINT)
    assert await customers(env, me) == 0


# --- other messages while it waits ------------------------------------------------------------


async def test_other_commands_are_answered_and_the_dialog_waits(env: SmsEnv) -> None:
    me = new_msisdn()
    replies = await walk(env, me, "REG", "HELP", f"BAL {PIN}", "what?", "YES ABCDE")
    assert replies[1].startswith("Open a wallet: REG first last id pin")  # no wallet yet
    assert replies[2].startswith("You are not registered.")
    assert (
        replies[3] == "Please send two names, letters only, e.g. Amina Otieno. Send STOP to cancel."
    )
    assert replies[4].startswith("You are not registered.")  # YES is for a PIN question only
    assert (await env.ask(me, "Amina Otieno")).startswith("Thank you Amina.")
    dialog = await regs(env).load(me)
    assert dialog is not None and dialog.state == "national_id" and dialog.wrong == 1


async def test_language_during_the_dialog(env: SmsEnv) -> None:
    me = new_msisdn()
    replies = await walk(env, me, "REG", "LANG sw", "Juma Hamisi", "lang fr", new_id_number())
    assert replies[1].startswith("Karibu! Kufungua pochi")
    assert replies[2] == "Asante Juma. Sasa tuma nambari ya kitambulisho chako."
    assert replies[3] == "Merci Juma. Envoyez maintenant votre numéro de pièce d'identité."
    assert replies[4].startswith("Choisissez un PIN de 4 chiffres")
    replies = await walk(env, me, "lang SW", PIN, f"YES {PIN}")
    assert replies[0].startswith("Sasa chagua PIN")
    assert replies[2].startswith("Karibu Juma! Pochi yako imefunguliwa.")
    language = await env.bank.pool.fetchval("SELECT language FROM customers WHERE msisdn=$1", me)
    assert language == "sw"
    assert await env.ask(me, f"BAL {PIN}") == "Salio lako ni KES 0.00."
    # Started again later, a dialog keeps the language it had.
    other = new_msisdn()
    await walk(env, other, "REG", "LANG fr", "STOP")
    assert (await env.ask(other, "reg")).startswith("Bienvenue ! Pour ouvrir")


async def test_a_registering_dialog_outlives_the_retries_of_its_final_message(
    env: SmsEnv,
) -> None:
    """The final message of a dialog whose core call failed (the core down) is run again by
    the channel for about five minutes; the `registering` dialog lived SMS_DIALOG_TTL_S from
    the confirmation, so the last runs found none and answered "You are not registered"."""
    me = new_msisdn()
    await walk(env, me, "REG", "Amina Otieno", new_id_number(), PIN)
    step, dialog = await regs(env).answer(me, f"YES {PIN}", fresh_mo_id())
    assert step is not None and step.register
    assert dialog is not None and dialog.state == "registering"
    redis: Redis = env.app[REDIS]
    ttl_ms = await redis.pttl(regs(env).key(me))
    assert retry_horizon_s() * 1000 < ttl_ms <= (retry_horizon_s() + 120) * 1000
    await regs(env).end(me)


async def test_lang_before_reg_sets_the_language_of_what_follows(env: SmsEnv) -> None:
    """HELP tells a number without a wallet "LANG en/sw/fr sets your language", but LANG with
    no dialog waiting was answered "You are not registered" in English and changed nothing."""
    me = new_msisdn()
    assert await env.ask(me, "LANG sw") == "Sasa utapokea ujumbe kwa Kiswahili."
    assert (await env.ask(me, "HELP")).startswith("Fungua pochi")
    assert (await env.ask(me, "BAL 12")).startswith("PIN iwe tarakimu 4.")
    assert (await env.ask(me, "REG")).startswith("Karibu! Kufungua pochi")
    other = new_msisdn()
    assert await env.ask(other, "lang FR") == "Vous recevrez désormais les messages en francais."
    reply = await env.ask(other, f"REG Amina Otieno {new_id_number()} {PIN}")
    assert reply.startswith("Bienvenue Amina !"), reply
    language = await env.bank.pool.fetchval(
        "SELECT language FROM customers WHERE msisdn = $1", other
    )
    assert language == "fr"


async def test_a_one_shot_reg_replaces_the_dialog(env: SmsEnv) -> None:
    me, id_number = new_msisdn(), new_id_number()
    await walk(env, me, "REG", "Amina Otieno")
    reply = await env.ask(me, f"REG Baraka Mwangi {id_number} {PIN}")
    assert reply == "Welcome Baraka! Your wallet is open. Send BAL <PIN> for your balance."
    assert (await env.ask(me, new_id_number())).startswith(HINT)  # nobody asked for it
    name = await env.bank.pool.fetchval("SELECT first_name FROM customers WHERE msisdn=$1", me)
    assert name == "Baraka"
    dialog = await regs(env).load(me)
    assert dialog is not None and dialog.state == "ended"


async def test_reg_with_too_few_words_starts_the_dialog_with_them(env: SmsEnv) -> None:
    me, id_number = new_msisdn(), new_id_number()
    reply = await env.ask(me, f"REG Amina Otieno {id_number}")
    assert reply.startswith("Now choose a 4-digit PIN")  # names and ID given: the PIN next
    # Four words that do not fit are the one-shot form, answered as before.
    assert (await env.ask(me, "REG Amina Otieno 12 4821")).startswith(
        "The ID number must be 4 to 20 letters or digits. Use: REG"
    )
    replies = await walk(env, me, PIN, f"YES {PIN}")  # the dialog waited
    assert replies[1].startswith("Welcome Amina!")
    await assert_no_secret_stored(env, me, PIN, id_number)
    # A bad word given with REG is not a wrong answer: its question is asked.
    other = new_msisdn()
    assert (await env.ask(other, "reg Amina 0tieno")).startswith("Welcome! To open a wallet")
    assert (await env.ask(other, "reg Amina Otieno 12")).startswith("Thank you Amina. Now send")
    dialog = await regs(env).load(other)
    assert dialog is not None and dialog.wrong == 0


async def test_a_registration_that_the_core_refuses_ends_the_dialog(env: SmsEnv) -> None:
    taken = new_id_number()
    await env.ask(new_msisdn(), f"REG Asha Juma {taken} {PIN}")
    me = new_msisdn()
    replies = await walk(env, me, "REG", "Amina Otieno", taken, PIN, f"YES {PIN}")
    assert replies[-1] == "This number or ID is already registered."
    assert await customers(env, me) == 0
    dialog = await regs(env).load(me)
    assert dialog is not None and dialog.state == "ended" and dialog.pin == ""


# --- a final message that failed for good ----------------------------------------------------


class RegistrationDown(CoreActions):
    """The core with its registration not answering (the rest of it up): what every attempt of
    a final message found until the channel gave up on it."""

    __slots__ = ()

    async def register(self, ctx: ActionContext) -> ActionResult:
        raise E.Unavailable("the database is not answering")


async def final_message_fails_for_good(env: SmsEnv, msisdn: str, text: str) -> int:
    """`text` (the PIN's confirmation) from the phone while the core cannot register: answered
    "temporarily unavailable" and put back for a retry, then given up by the channel's store as
    after the last attempt. The MO's id."""
    live, pool = banking(env), env.bank.pool
    last = await pool.fetchval(
        "SELECT coalesce(max(id), 0) FROM sms_messages WHERE direction = 'mo' AND msisdn = $1",
        msisdn,
    )
    core = live.core
    live.core = RegistrationDown(**{f.name: getattr(core, f.name) for f in fields(core)})
    try:
        await env.mo(msisdn, text)

        async def retried() -> Any:
            return await pool.fetchrow(
                "SELECT id, status, error FROM sms_messages "
                "WHERE direction = 'mo' AND msisdn = $1 AND id > $2",
                msisdn,
                last,
            )

        row = await eventually(retried, lambda r: r is not None and r["status"] == "received")
    finally:
        live.core = core
    assert row["error"].startswith("temporary: RetryLater"), row
    await env.app[SMS_CHANNEL].store.mo_failed(row["id"], f"{row['error']} (after 5 attempts)")
    assert (await env.wait_texts(msisdn, 1))[-1] == UNAVAILABLE
    return int(row["id"])


async def test_the_pin_again_finishes_a_registration_whose_final_message_failed(
    env: SmsEnv,
) -> None:
    me = new_msisdn()
    await walk(env, me, "REG", "Amina Otieno", new_id_number(), PIN)
    failed = await final_message_fails_for_good(env, me, f"YES {PIN}")
    stuck = await regs(env).load(me)
    assert stuck is not None and stuck.state == "registering" and stuck.final_mo == failed
    # Anything but the chosen PIN says how to finish, and changes nothing (a wrong PIN is not a
    # wrong answer: there is no wallet yet to guess at).
    assert await walk(env, me, "hello", f"YES {OTHER_PIN}", f"BAL {PIN}") == [PENDING] * 3
    assert await regs(env).load(me) == stuck and await customers(env, me) == 0
    # An older MO processed late changes nothing either, the PIN in it included.
    first = await env.bank.pool.fetchval(
        "SELECT min(id) FROM sms_messages WHERE direction = 'mo' AND msisdn = $1", me
    )
    replies = Replies()
    await collecting(env, replies).handle(inbound(me, f"PIN {PIN}", first, attempt=2))
    assert replies.sent == [(me, PENDING, f"mo:{first}")]
    assert await regs(env).load(me) == stuck and await customers(env, me) == 0
    # The PIN again (as the reply asks): this message is the final one now, and registers.
    welcome = "Welcome Amina! Your wallet is open. Send BAL <PIN> for your balance."
    assert await env.ask(me, f"PIN {PIN}") == welcome
    done = await regs(env).load(me)
    assert done is not None and done.state == "registered" and done.pin == ""
    assert done.final_mo > failed and done.start_mo == stuck.start_mo
    # (A text repeated within the short de-duplication window would be taken for a redelivery.)
    assert await env.ask(me, f"bal {PIN}") == "Your balance is KES 0.00."
    # The given-up message processed after all (an operator's replay): registered once.
    await collecting(env, replies).handle(inbound(me, f"YES {PIN}", failed, attempt=6))
    assert replies.sent[-1][1] == "This number is already registered. Send HELP for the commands."
    assert await customers(env, me) == 1
    await assert_no_secret_stored(env, me, PIN)


async def test_the_retry_in_the_dialogs_language(env: SmsEnv) -> None:
    me = new_msisdn()
    await walk(env, me, "REG", "LANG sw", "Juma Hamisi", new_id_number(), PIN)
    await final_message_fails_for_good(env, me, f"PIN {PIN}")
    replies = await walk(env, me, "habari", "HELP", "lang FR")
    assert replies[0] == (
        "Pochi yako bado inafunguliwa. Usipopata SMS ya karibu, tuma PIN <PIN> kumaliza, "
        "REG kuanza upya au STOP kusitisha."
    )
    assert replies[1].startswith("Fungua pochi: REG jina1")  # HELP is HELP (no wallet yet)
    assert replies[2].startswith("Votre portefeuille est en cours d'ouverture.")
    # `YES <PIN>` works as well (the failed confirmation was `PIN <PIN>`).
    assert (await env.ask(me, f"yes {PIN}")).startswith("Bienvenue Juma ! Votre portefeuille")
    language = await env.bank.pool.fetchval("SELECT language FROM customers WHERE msisdn=$1", me)
    assert language == "fr" and await customers(env, me) == 1


async def test_a_registration_that_went_through_is_not_made_twice(env: SmsEnv) -> None:
    """The core registered the number but the answer never came back (the final message given
    up all the same): the PIN again answers as registered and registers nothing."""
    me = new_msisdn()
    await walk(env, me, "REG", "Amina Otieno", new_id_number(), PIN)
    await final_message_fails_for_good(env, me, f"YES {PIN}")
    await env.bank.open(me)
    reply = await env.ask(me, f"PIN {PIN}")
    assert reply == "This number is already registered. Send HELP for the commands."
    assert await customers(env, me) == 1


async def test_the_late_final_message_and_the_retry_at_once_register_once(env: SmsEnv) -> None:
    """The original final message, retried at last while the customer's `PIN <PIN>` comes: the
    number registers once and one welcome is sent, whichever runs first."""
    me = new_msisdn()
    await walk(env, me, "REG", "Zawadi Njeri", new_id_number(), PIN)
    late = fresh_mo_id()
    applied, _ = await regs(env).answer(me, f"YES {PIN}", late)  # its earlier attempts
    assert applied is not None and applied.register
    replies = Replies()
    handler = collecting(env, replies)
    await asyncio.gather(
        handler.handle(inbound(me, f"YES {PIN}", late, attempt=5)),
        handler.handle(inbound(me, f"PIN {PIN}", late + 1)),
    )
    assert await customers(env, me) == 1
    welcomes = [text for _, text, _ in replies.sent if text.startswith("Welcome Zawadi!")]
    assert len(welcomes) == 1, replies.sent
    assert not any("or ID" in text for _, text, _ in replies.sent), replies.sent
    dialog = await regs(env).load(me)
    assert dialog is not None and dialog.pin == "" and dialog.state in ("registered", "ended")


async def test_a_number_registered_meanwhile_ends_the_dialog(env: SmsEnv) -> None:
    """The dialog's core call finds the number taken (registered between the customer look-up
    and the call: by the other final message of a race, USSD, an agent): "already
    registered", not the refusal that names the ID, and the dialog's secrets are gone."""
    me = new_msisdn()
    await walk(env, me, "REG", "Amina Otieno", new_id_number(), PIN)
    final = fresh_mo_id()
    applied, dialog = await regs(env).answer(me, f"YES {PIN}", final)
    assert applied is not None and applied.register and dialog is not None
    await env.bank.open(me)
    handler = collecting(env, Replies())
    reply = await handler._register_dialog(inbound(me, f"YES {PIN}", final), dialog, regs(env))
    assert reply == "This number is already registered. Send HELP for the commands."
    ended = await regs(env).load(me)
    assert ended is not None and ended.state == "ended" and ended.pin == ended.national_id == ""
    assert await customers(env, me) == 1


async def test_stop_and_reg_while_registering(env: SmsEnv) -> None:
    me = new_msisdn()
    await walk(env, me, "REG", "Amina Otieno", new_id_number(), PIN)
    await final_message_fails_for_good(env, me, f"YES {PIN}")
    assert (await env.ask(me, "Reg")).startswith("Welcome! To open a wallet")  # over again
    fresh = await regs(env).load(me)
    assert fresh is not None and fresh.state == "name" and fresh.pin == ""
    other = new_msisdn()
    await walk(env, other, "REG", "Amina Otieno", new_id_number(), PIN)
    await final_message_fails_for_good(env, other, f"YES {PIN}")
    assert await env.ask(other, "STOP") == (
        "Registration cancelled. Nothing was saved. Send REG to start again."
    )
    assert (await env.ask(other, f"PIN {PIN}")).startswith("Wrong number of words.")
    assert await customers(env, me) == await customers(env, other) == 0


# --- an unregistered number's other messages, in the dialog's language -----------------------


async def test_hints_follow_the_dialogs_language(env: SmsEnv) -> None:
    me = new_msisdn()
    replies = await walk(env, me, "REG", "LANG sw", "BAL 12", f"BAL {PIN}", "HELP", "SEND x")
    assert replies[2] == "PIN iwe tarakimu 4. Tumia: BAL <PIN>. Tuma HELP kuona amri zote."
    assert replies[3].startswith("Hujasajiliwa. Tuma REG")
    # HELP from a number with no wallet: how to open one, in the dialog's language.
    assert replies[4].startswith("Fungua pochi: REG jina1 jina2 kitambulisho pin")
    assert replies[5].startswith("Idadi ya maneno si sahihi. Tumia: SEND <simu>")
    dialog = await regs(env).load(me)
    assert dialog is not None and dialog.state == "name" and dialog.wrong == 0
    # No dialog waiting: still the language the number chose (English was a surprise to a
    # number that had said LANG sw); a number that never chose one gets English.
    replies = await walk(env, me, "STOP", "bal 12")
    assert replies[0].startswith("Usajili umesitishwa.")
    assert replies[1] == "PIN iwe tarakimu 4. Tumia: BAL <PIN>. Tuma HELP kuona amri zote."
    reply = await env.ask(new_msisdn(), "bal 12")
    assert reply == "The PIN must be 4 digits. Use: BAL <PIN>. Send HELP for all commands."


async def test_a_one_shot_reg_registers_in_the_dialogs_language(env: SmsEnv) -> None:
    me = new_msisdn()
    await walk(env, me, "REG", "LANG fr")
    reply = await env.ask(me, f"REG Awa Diop {new_id_number()} {PIN}")
    assert reply.startswith("Bienvenue Awa ! Votre portefeuille est ouvert.")
    language = await env.bank.pool.fetchval("SELECT language FROM customers WHERE msisdn=$1", me)
    assert language == "fr"


async def test_after_the_dialogs_ttl_a_pin_shaped_message_is_answered_as_usual(
    env: SmsEnv,
) -> None:
    """The registered dialog is kept long enough to answer its final message again (the
    channel's retries); other PIN-shaped messages get "already registered" only within the
    dialog's TTL, then the usual answer (`PIN 4821` its hint)."""
    me = new_msisdn()
    replies = await walk(env, me, "REG", "Amina Otieno", new_id_number(), PIN, f"YES {PIN}")
    assert replies[-1].startswith("Welcome Amina!")
    final = await env.bank.pool.fetchval(
        "SELECT max(id) FROM sms_messages WHERE msisdn = $1 AND direction = 'mo'", me
    )
    out = Replies()
    assert (await env.ask(me, f"PIN {PIN}")).startswith("This number is already registered.")
    registrations = regs(env)
    clock = ManualClock(datetime.now(UTC))
    registrations.clock = clock
    try:
        clock.advance(seconds=registrations.ttl_s + 1)
        await collecting(env, out).handle(inbound(me, f"PIN {PIN}", fresh_mo_id()))
        assert out.sent[-1][1].startswith("Wrong number of words. Use: PIN <old PIN> <new PIN>.")
        await collecting(env, out).handle(inbound(me, f"YES {PIN}", final, attempt=5))
        assert out.sent[-1][1].startswith("Welcome Amina!")
    finally:
        registrations.clock = SystemClock()


# --- a registered number ----------------------------------------------------------------------


async def test_a_registered_number(env: SmsEnv) -> None:
    me = await env.bank.open(balance_minor=100_000)
    recipient = await env.bank.open()
    assert (
        await env.ask(me, "REG") == "This number is already registered. Send HELP for the commands."
    )
    assert (await env.ask(me, "reg Amina")).startswith("This number is already registered.")
    assert await env.ask(me, "STOP") == "There is nothing to cancel. Send HELP for the commands."
    assert (await env.ask(me, PIN)).startswith(HINT)
    handler = banking(env)
    handler.confirm_send = True
    try:
        prompt = await env.ask(me, f"SEND 0{recipient[4:]} 100 {PIN}")
        code = prompt.split("Reply YES ")[1][:5]
        assert await env.ask(me, "Cancel") == "The transfer is cancelled. Nothing was sent."
        assert "No transfer is waiting" in await env.ask(me, f"YES {code}")
    finally:
        handler.confirm_send = False
    assert await env.bank.balance(recipient) == 0
