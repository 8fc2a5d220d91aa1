"""SMS banking's money commands (SEND, SEND confirmed by YES, REPAY) with the executor's
PostgreSQL connections cut at the network (tests/tcp_proxy.py; PostgreSQL stays up): before
the MO's first statement, as the money call goes out, and with the COMMIT's answer lost. One
lost connection under the money call is settled inside the attempt (asked again under the
key), so the reply is the receipt; an outage that outlasts those tries, or one before the
money, is answered "temporarily unavailable" and retried by the channel (`RetryLater`), and
the retry answers the money that moved. Always once: one transfer, the recipient's receipt
once, the loan's notice once, no wrong PIN counted, the same reply on every later attempt."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

import asyncpg
import pytest

from channels.sms.executor import SmsBanking
from channels.sms.handler import RetryLater
from menus.bindings import LoanActions
from tests.loans_support import borrower, offer_products
from tests.sms_banking_support import (
    Replies,
    SmsEnv,
    banking,
    fresh_mo_id,
    inbound,
    sms_env_fixtures,
)
from tests.sms_helpers import peer_per_module  # noqa: F401 (the `peer` fixture)
from tests.tcp_proxy import CuttableProxy, relayed_pool
from tests.ussd_support import PIN

env, ledger_ok = sms_env_fixtures()
WRONG = "9137"
UNAVAILABLE = "The service is temporarily unavailable. We will answer your message when it is back."

OUTAGE = 1_000_000  # refusals: an outage that lasts until `restore()`

Arm = Callable[[CuttableProxy], None]


def cuts(statement: bytes, answer: bytes) -> dict[str, Arm]:
    """The cut moments of one command: `statement` marks its money call going out, `answer`
    the server's answer that says it committed. The "_outage" ones refuse every connection
    after the cut, until the test restores the relay."""
    return {
        "refused": lambda proxy: proxy.cut(refuse=1),
        "statement_lost": lambda proxy: proxy.cut_on(statement),
        "answer_lost": lambda proxy: proxy.cut_on(answer, from_server=True),
        "answer_lost_outage": lambda proxy: proxy.cut_on(answer, from_server=True, refuse=OUTAGE),
    }


RETRIED = {"refused", "answer_lost_outage"}  # the MO's first attempt ends in RetryLater


SEND_CUTS = cuts(b"ledger_p2p", b"p2p")  # the transfer's row carries its type
REPAY_CUTS = cuts(b"ledger_loan_repay", b"COMMIT\x00")  # the loan book's own transaction
# The application's own COMMIT comes first: its answer lost, the disbursement never started.
LOAN_CUTS = cuts(b"ledger_loan_disburse", b"COMMIT\x00")


@dataclass
class Relayed:
    """The app's SMS banking executor with every PostgreSQL call through the proxy."""

    proxy: CuttableProxy
    banking: SmsBanking
    replies: Replies


@pytest.fixture
async def relayed(env: SmsEnv, database_url: str) -> AsyncIterator[Relayed]:
    live = banking(env)
    async with relayed_pool(database_url, max_size=2) as relay:
        core = replace(live.core, pool=relay.pool)
        loans = None if live.loans is None else LoanActions(relay.pool, live.loans.loans, core)
        replies = Replies()
        executor = SmsBanking(
            replies,
            core=core,
            loans=loans,
            limiter=live.limiter,
            confirmations=live.confirmations,
        )
        yield Relayed(relay.proxy, executor, replies)


def local(msisdn: str) -> str:
    return "0" + msisdn[4:]


async def run_cut(
    relayed: Relayed, cut: tuple[str, Arm], msisdn: str, text: str, mo_id: int
) -> str:
    """The MO under the cut (its name, how to arm it); when it ends in "unavailable"
    (`RETRIED`), the channel's retry once the relay is back. The reply (a third attempt must
    repeat it)."""
    name, arm = cut
    arm(relayed.proxy)
    if name in RETRIED:
        with pytest.raises(RetryLater):
            await relayed.banking.handle(inbound(msisdn, text, mo_id))
        assert relayed.replies.sent[-1] == (msisdn, UNAVAILABLE, f"mo:{mo_id}:unavailable")
        relayed.proxy.restore()
        await relayed.banking.handle(inbound(msisdn, text, mo_id, attempt=2))
    else:
        await relayed.banking.handle(inbound(msisdn, text, mo_id))
        assert all(not ref.endswith(":unavailable") for _, _, ref in relayed.replies.sent)
    assert relayed.proxy.tripped or relayed.proxy.refused  # the cut did happen
    recipient, reply, ref = relayed.replies.sent[-1]
    assert (recipient, ref) == (msisdn, f"mo:{mo_id}")
    await relayed.banking.handle(inbound(msisdn, text, mo_id, attempt=3))
    assert relayed.replies.sent[-1] == (msisdn, reply, f"mo:{mo_id}")
    return reply


async def pin_failures(pool: asyncpg.Pool, msisdn: str) -> int:
    return int(await pool.fetchval("SELECT pin_failures FROM customers WHERE msisdn = $1", msisdn))


async def posted(pool: asyncpg.Pool, key: str) -> tuple[int, int]:
    """(transfers, receipts) under `key`."""
    row = await pool.fetchrow(
        "SELECT count(DISTINCT t.id) AS t, count(o.id) AS o FROM transfers t "
        "LEFT JOIN outbox o ON o.transfer_id = t.id WHERE t.idempotency_key = $1",
        key,
    )
    return int(row["t"]), int(row["o"])


@pytest.mark.parametrize("cut", sorted(SEND_CUTS))
async def test_a_cut_send_is_answered_once_its_money_moved_once(
    env: SmsEnv, relayed: Relayed, cut: str
) -> None:
    me = await env.bank.open(balance_minor=100_000)
    friend = await env.bank.open()
    mo_id = fresh_mo_id()
    reply = await run_cut(
        relayed, (cut, SEND_CUTS[cut]), me, f"SEND {local(friend)} 150 {PIN}", mo_id
    )
    assert "KES 150.00 sent" in reply, reply
    reference = await env.bank.pool.fetchval(
        "SELECT ledger_reference(id) FROM transfers WHERE idempotency_key = $1", f"sms:{mo_id}"
    )
    assert reference in reply
    assert await env.bank.balance(friend) == 15_000
    # One transfer; the recipient's receipt only (the reply is the sender's).
    assert await posted(env.bank.pool, f"sms:{mo_id}") == (1, 1)
    assert await pin_failures(env.bank.pool, me) == 0


@pytest.mark.parametrize("cut", sorted(SEND_CUTS))
async def test_a_cut_yes_moves_the_confirmed_send_once(
    env: SmsEnv, relayed: Relayed, cut: str
) -> None:
    me = await env.bank.open(balance_minor=100_000)
    friend = await env.bank.open()
    relayed.banking.confirm_send = True
    send_mo = fresh_mo_id()
    await relayed.banking.handle(inbound(me, f"SEND {local(friend)} 120 {PIN}", send_mo))
    _, question, _ = relayed.replies.sent[-1]
    code = question.split("YES ")[1].split()[0].rstrip(".")
    reply = await run_cut(relayed, (cut, SEND_CUTS[cut]), me, f"YES {code}", fresh_mo_id())
    assert "KES 120.00 sent" in reply, reply
    assert await env.bank.balance(friend) == 12_000
    assert await posted(env.bank.pool, f"sms:{send_mo}") == (1, 1)


@pytest.mark.parametrize("cut", sorted(REPAY_CUTS))
async def test_a_cut_repayment_is_answered_once_and_paid_once(
    env: SmsEnv, relayed: Relayed, cut: str
) -> None:
    product = await offer_products(env, "C")
    me = await borrower(env)
    taken = await env.ask(me, f"LOAN {product['code']} 1000 {PIN}")
    assert "approved" in taken.lower(), taken
    before = await env.bank.balance(me)
    mo_id = fresh_mo_id()
    reply = await run_cut(relayed, (cut, REPAY_CUTS[cut]), me, f"REPAY 500 {PIN}", mo_id)
    assert "KES 500.00 paid to your loan. Still due KES 550.00." in reply, reply
    assert await env.bank.balance(me) == before - 500_00
    rows = await env.bank.pool.fetch(
        "SELECT r.amount_minor FROM loan_repayments r JOIN loans l ON l.id = r.loan_id "
        "WHERE l.msisdn = $1",
        me,
    )
    assert [r["amount_minor"] for r in rows] == [500_00]
    notices = await env.bank.pool.fetchval(
        "SELECT count(*) FROM outbox WHERE recipient = $1 AND kind = 'loan_repayment'", me
    )
    assert notices == 1
    assert await pin_failures(env.bank.pool, me) == 0


@pytest.mark.parametrize("cut", sorted(LOAN_CUTS))
async def test_a_cut_loan_application_is_answered_once_and_disbursed_once(
    env: SmsEnv, relayed: Relayed, cut: str
) -> None:
    product = await offer_products(env, "D")
    me = await borrower(env)
    before = await env.bank.balance(me)
    mo_id = fresh_mo_id()
    text = f"LOAN {product['code']} 1000 {PIN}"
    reply = await run_cut(relayed, (cut, LOAN_CUTS[cut]), me, text, mo_id)
    assert "approved" in reply.lower(), reply
    assert await env.bank.balance(me) == before + 1_000_00
    loans = await env.bank.pool.fetch("SELECT id FROM loans WHERE msisdn = $1", me)
    assert len(loans) == 1
    disbursed = await env.bank.pool.fetchval(
        "SELECT count(*) FROM transfers WHERE type = 'loan_disbursement' AND credit_party = $1",
        me,
    )
    assert disbursed == 1
    notices = await env.bank.pool.fetchval(  # the receipt, with the loan's notice folded in
        "SELECT count(*) FROM outbox o JOIN transfers t ON t.id = o.transfer_id "
        "WHERE t.type = 'loan_disbursement' AND t.credit_party = $1",
        me,
    )
    assert notices == 1
    assert await pin_failures(env.bank.pool, me) == 0


# The answer to the wrong-PIN count (`core.pins` _FAIL_SQL: pin_failures, status) for a wallet
# that had no failures: a data row of two columns, the int4 1 and the text "active".
FIRST_FAILURE_ANSWER = (
    b"D\x00\x00\x00\x18\x00\x02\x00\x00\x00\x04\x00\x00\x00\x01\x00\x00\x00\x06active"
)


@pytest.mark.parametrize("text", ["BAL {pin}", "SEND {friend} 150 {pin}", "PIN {pin} 5830"])
async def test_a_wrong_pin_whose_count_answer_is_lost_counts_once(
    env: SmsEnv, relayed: Relayed, text: str
) -> None:
    """The wrong PIN is counted, the answer lost: the MO is retried and finds the same wrong
    PIN. Before, it was counted again: one wrong PIN typed, "1 attempt left" (two typed, the
    wallet locked)."""
    me = await env.bank.open(balance_minor=100_000)
    friend = await env.bank.open()
    mo_id = fresh_mo_id()
    sms = text.format(pin=WRONG, friend=local(friend))
    relayed.proxy.cut_on(FIRST_FAILURE_ANSWER, from_server=True)
    with pytest.raises(RetryLater):
        await relayed.banking.handle(inbound(me, sms, mo_id))
    assert relayed.proxy.tripped == 1
    assert await pin_failures(env.bank.pool, me) == 1  # it was counted
    await relayed.banking.handle(inbound(me, sms, mo_id, attempt=2))
    _, reply, _ = relayed.replies.sent[-1]
    assert reply == "Wrong PIN. 2 attempts left before your wallet is locked.", reply
    assert await pin_failures(env.bank.pool, me) == 1
    # A new MO with a wrong PIN is a new wrong PIN.
    await relayed.banking.handle(inbound(me, sms, fresh_mo_id()))
    assert await pin_failures(env.bank.pool, me) == 2
    assert await env.bank.balance(friend) == 0
