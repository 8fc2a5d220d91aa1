"""Hostile MO text through SMS banking: control characters, direction overrides, long and mixed
texts, from a registered number and from numbers in each step of the registration dialog.
Nothing may fail the handler, move money, count a wrong PIN or leave a PIN in a reply."""

from __future__ import annotations

import pytest

from channels.sms.executor import SmsBanking
from tests.helpers import new_msisdn, shows_pin
from tests.sms_banking_support import (
    Replies,
    SmsEnv,
    banking,
    fresh_mo_id,
    inbound,
    sms_env_fixtures,
)
from tests.sms_helpers import peer_per_module  # noqa: F401 (the `peer` fixture)
from tests.ussd_support import PIN

env, ledger_ok = sms_env_fixtures()


def answering_into(env: SmsEnv, replies: Replies) -> SmsBanking:
    """The live handler's parts answering into `replies` (the SMPP path has its own tests)."""
    live = banking(env)
    return SmsBanking(
        replies,
        core=live.core,
        loans=live.loans,
        limiter=live.limiter,
        confirmations=live.confirmations,
        registrations=live.registrations,
    )


HOSTILE = [
    "\x01\x02BAL 4821",
    "BAL\u202e4821",
    "BAL 4821\u202e",
    "\u202eLAB 1284",
    "BAL \u200b4821",
    "\ufeffBAL 4821",
    "SEND 0712345678 500 4821" + "\u0301" * 5,
    "B" * 1000 + " 4821",
    "BAL 4821 " + "😀" * 600,
    "Амина Отиено",
    "YES " + "A" * 9,
    "REG \u202eAmina Otieno 12345678 4821",
    "PIN 4821 4821 4821",
    "LOAN STATUS STATUS 4821",
    "\t\n\r\x0b\x0c",
    "SEND +2547" + "9" * 20 + " 100 4821",
    "SEND 0712345678 " + "9" * 30 + " 4821",
    "LANG " + "x" * 500,
    "\x1c\x1d\x1e\x1f",
    "REPAY -0 4821",
]


@pytest.mark.parametrize("text", HOSTILE, ids=[repr(t[:20]) for t in HOSTILE])
async def test_hostile_text_from_a_registered_number(env: SmsEnv, text: str) -> None:
    me = await env.bank.open(balance_minor=10_000)
    replies = Replies()
    handler = answering_into(env, replies)
    await handler.handle(inbound(me, text.replace("4821", PIN), fresh_mo_id()))
    assert len(replies.sent) == 1
    (_, reply, _) = replies.sent[0]
    assert "\n" not in reply and not shows_pin(PIN, reply)
    assert await env.bank.balance(me) == 10_000
    assert (
        await env.bank.pool.fetchval("SELECT pin_failures FROM customers WHERE msisdn=$1", me) == 0
    )


@pytest.mark.parametrize("step", ["REG", "REG Amina Otieno", "REG Amina Otieno A1234567"])
@pytest.mark.parametrize("text", HOSTILE, ids=[repr(t[:20]) for t in HOSTILE])
async def test_hostile_text_in_the_registration_dialog(env: SmsEnv, step: str, text: str) -> None:
    me = new_msisdn()
    replies = Replies()
    handler = answering_into(env, replies)
    await handler.handle(inbound(me, step, fresh_mo_id()))
    await handler.handle(inbound(me, text, fresh_mo_id()))
    assert len(replies.sent) == 2
    assert "\n" not in replies.sent[1][1]
    assert await env.bank.pool.fetchval("SELECT count(*) FROM customers WHERE msisdn=$1", me) == 0
