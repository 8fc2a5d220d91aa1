"""The money path on a real database: every movement type, fees and commissions, replays,
idempotency conflicts, reversals, receipts in the same transaction, and bad input refused with
a typed error and nothing written."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from core import errors as E
from core.agents import agent_balances
from core.crypto import FieldCipher
from core.customers import open_wallet
from core.fees import quote
from core.ledger import system_balance
from core.limits import TierLimits, set_limits
from core.transfers import (
    balance,
    cash_in,
    cash_out,
    deposit,
    reverse,
    send_money,
    statement,
)
from tests.helpers import new_msisdn
from tests.integration.core.conftest import make_agent, make_customer, new_key


async def counts(db: asyncpg.Pool) -> tuple[int, int, int]:
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM transfers) AS t, (SELECT count(*) FROM entries) AS e, "
        "(SELECT count(*) FROM outbox) AS o"
    )
    return row["t"], row["e"], row["o"]


async def test_p2p_moves_amount_and_fee(core_db: asyncpg.Pool, cipher: FieldCipher) -> None:
    alice = await make_customer(core_db, cipher, 10_000_00)
    bob = await make_customer(core_db, cipher)
    fees_before = await system_balance(core_db, "fee_income", "KES")
    q = await quote(core_db, "p2p", 1_000_00)
    assert q.fee_minor == 13_00 and q.total_minor == 1_013_00

    result = await send_money(
        core_db,
        sender=alice,
        recipient=bob,
        amount_minor=1_000_00,
        idempotency_key=new_key(),
        channel="ussd",
    )
    assert result.fee_minor == 13_00 and not result.replayed
    assert result.balance_after_minor == 10_000_00 - 1_013_00
    assert await balance(core_db, alice) == 8_987_00
    assert await balance(core_db, bob) == 1_000_00
    assert await system_balance(core_db, "fee_income", "KES") == fees_before + 13_00

    lines = await statement(core_db, alice, limit=5)
    assert [line.amount_minor for line in lines] == [-1_013_00, 10_000_00]
    assert lines[0].counterparty == bob and lines[0].reference == result.reference
    older = await statement(core_db, alice, limit=5, before=lines[0].entry_id)
    assert [line.amount_minor for line in older] == [10_000_00]

    receipts = await core_db.fetch(
        "SELECT o.recipient, o.template, o.language FROM outbox o JOIN transfers t "
        "ON t.id = o.transfer_id WHERE t.id = ledger_reference_id($1) ORDER BY o.id",
        result.reference,
    )
    assert [(r["recipient"], r["template"]) for r in receipts] == [
        (alice, "p2p_sent"),
        (bob, "p2p_received"),
    ]


async def test_p2p_without_the_sender_receipt(core_db: asyncpg.Pool, cipher: FieldCipher) -> None:
    """A channel whose reply is the sender's receipt (SMS) asks for the recipient's only; the
    money, the fee and a replay are the same as with both receipts."""
    alice = await make_customer(core_db, cipher, 2_000_00)
    bob = await make_customer(core_db, cipher)
    key = new_key()
    before = await counts(core_db)
    result = await send_money(
        core_db,
        sender=alice,
        recipient=bob,
        amount_minor=500_00,
        idempotency_key=key,
        channel="sms",
        sender_receipt=False,
    )
    assert result.balance_after_minor == 2_000_00 - 500_00 - result.fee_minor
    assert await balance(core_db, bob) == 500_00
    receipts = await core_db.fetch(
        "SELECT recipient, template, balance_minor FROM outbox "
        "WHERE transfer_id = ledger_reference_id($1)",
        result.reference,
    )
    assert [(r["recipient"], r["template"], r["balance_minor"]) for r in receipts] == [
        (bob, "p2p_received", 500_00)
    ]
    transfers_, entries, outbox = await counts(core_db)
    assert (transfers_ - before[0], outbox - before[2]) == (1, 1)
    again = await send_money(
        core_db,
        sender=alice,
        recipient=bob,
        amount_minor=500_00,
        idempotency_key=key,
        channel="sms",
        sender_receipt=False,
    )
    assert again.replayed and again.reference == result.reference
    assert await counts(core_db) == (transfers_, entries, outbox)


async def test_same_key_replays_and_other_request_conflicts(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    alice = await make_customer(core_db, cipher, 5_000_00)
    bob = await make_customer(core_db, cipher)
    key = new_key()
    first = await send_money(
        core_db,
        sender=alice,
        recipient=bob,
        amount_minor=200_00,
        idempotency_key=key,
        channel="sms",
    )
    again = await send_money(
        core_db,
        sender=alice,
        recipient=bob,
        amount_minor=200_00,
        idempotency_key=key,
        channel="sms",
    )
    assert again.replayed and again.reference == first.reference
    assert again.balance_after_minor == first.balance_after_minor
    with pytest.raises(E.IdempotencyConflict):
        await send_money(
            core_db,
            sender=alice,
            recipient=bob,
            amount_minor=201_00,
            idempotency_key=key,
            channel="sms",
        )
    assert await balance(core_db, bob) == 200_00


async def test_agent_cash_in_and_cash_out_with_commission(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    agent = await make_agent(core_db, 50_000_00)
    carol = await make_customer(core_db, cipher)
    fees_before = await system_balance(core_db, "fee_income", "KES")

    got = await cash_in(
        core_db,
        agent_code=agent,
        msisdn=carol,
        amount_minor=3_000_00,
        idempotency_key=new_key(),
        channel="agent",
        evidence={"geofence": "inside", "accuracy_m": 12},
    )
    assert got.commission_minor == 12_00 and got.balance_after_minor == 3_000_00
    note = await core_db.fetchval(
        "SELECT note FROM transfers WHERE id = ledger_reference_id($1)", got.reference
    )
    assert note == '{"accuracy_m":12,"geofence":"inside"}'
    out = await cash_out(
        core_db,
        agent_code=agent,
        msisdn=carol,
        amount_minor=1_000_00,
        idempotency_key=new_key(),
        channel="agent",
    )
    assert (out.fee_minor, out.commission_minor) == (29_00, 10_00)
    assert out.balance_after_minor == 3_000_00 - 1_029_00
    balances = await agent_balances(core_db, agent)
    assert balances.float_minor == 50_000_00 - 3_000_00 + 1_000_00
    assert balances.commission_minor == 12_00 + 10_00
    assert await system_balance(core_db, "fee_income", "KES") == fees_before - 12_00 + 19_00


async def test_float_debit_spans_shards_and_refuses_past_the_float(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    agent = await make_agent(core_db)
    customers = [await make_customer(core_db, cipher, 2_000_00) for _ in range(4)]
    for msisdn in customers:  # credits land on random shards
        await cash_out(
            core_db,
            agent_code=agent,
            msisdn=msisdn,
            amount_minor=1_000_00,
            idempotency_key=new_key(),
            channel="agent",
        )
    assert (await agent_balances(core_db, agent)).float_minor == 4_000_00
    dave = await make_customer(core_db, cipher)
    with pytest.raises(E.InsufficientFunds):
        await cash_in(
            core_db,
            agent_code=agent,
            msisdn=dave,
            amount_minor=4_000_01,
            idempotency_key=new_key(),
            channel="agent",
        )
    await cash_in(
        core_db,
        agent_code=agent,
        msisdn=dave,
        amount_minor=4_000_00,
        idempotency_key=new_key(),
        channel="agent",
    )
    assert (await agent_balances(core_db, agent)).float_minor == 0


async def test_reversal_restores_everything_once(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    alice = await make_customer(core_db, cipher, 5_000_00)
    bob = await make_customer(core_db, cipher)
    fees_before = await system_balance(core_db, "fee_income", "KES")
    sent = await send_money(
        core_db,
        sender=alice,
        recipient=bob,
        amount_minor=2_000_00,
        idempotency_key=new_key(),
        channel="ussd",
    )
    key = new_key()
    back = await reverse(
        core_db,
        reference=sent.reference,
        idempotency_key=key,
        channel="admin",
        initiator="ops",
        reason="wrong number",
    )
    assert back.kind == "reversal" and back.balance_after_minor == 5_000_00
    assert await balance(core_db, alice) == 5_000_00
    assert await balance(core_db, bob) == 0
    assert await system_balance(core_db, "fee_income", "KES") == fees_before
    replay = await reverse(core_db, reference=sent.reference, idempotency_key=key, channel="admin")
    assert replay.replayed and replay.reference == back.reference
    with pytest.raises(E.AlreadyReversed):
        await reverse(core_db, reference=sent.reference, idempotency_key=new_key(), channel="admin")
    with pytest.raises(E.ValidationFailed):
        await reverse(core_db, reference=back.reference, idempotency_key=new_key(), channel="a")


async def test_reversal_refused_when_money_was_spent(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    alice = await make_customer(core_db, cipher, 1_000_00)
    bob = await make_customer(core_db, cipher)
    carol = await make_customer(core_db, cipher)
    sent = await send_money(
        core_db,
        sender=alice,
        recipient=bob,
        amount_minor=500_00,
        idempotency_key=new_key(),
        channel="ussd",
    )
    await send_money(
        core_db,
        sender=bob,
        recipient=carol,
        amount_minor=400_00,
        idempotency_key=new_key(),
        channel="ussd",
    )
    with pytest.raises(E.InsufficientFunds):
        await reverse(core_db, reference=sent.reference, idempotency_key=new_key(), channel="a")


BAD_AMOUNTS: list[tuple[str, Any, type[E.CoreError]]] = [
    ("negative", -100, E.ValidationFailed),
    ("zero", 0, E.ValidationFailed),
    ("fractional", 12.5, E.ValidationFailed),
    ("string", "100", E.ValidationFailed),
    ("bool", True, E.ValidationFailed),
    ("huge", 10**19, E.ValidationFailed),
    ("past balance", 1_000_01, E.InsufficientFunds),
]


@pytest.mark.parametrize(("label", "amount", "error"), BAD_AMOUNTS, ids=[b[0] for b in BAD_AMOUNTS])
async def test_bad_amounts_write_nothing(
    core_db: asyncpg.Pool,
    cipher: FieldCipher,
    label: str,
    amount: Any,
    error: type[E.CoreError],
) -> None:
    alice = await make_customer(core_db, cipher, 1_000_00)
    bob = await make_customer(core_db, cipher)
    agent = await make_agent(core_db, 1_000_00)
    before = await counts(core_db)
    calls = [
        send_money(
            core_db,
            sender=alice,
            recipient=bob,
            amount_minor=amount,
            idempotency_key=new_key(),
            channel="t",
        ),
        deposit(
            core_db,
            msisdn=alice,
            amount_minor=amount if label != "past balance" else -1,
            idempotency_key=new_key(),
            channel="t",
        ),
        cash_out(
            core_db,
            agent_code=agent,
            msisdn=alice,
            amount_minor=amount,
            idempotency_key=new_key(),
            channel="t",
        ),
    ]
    for pending in calls:
        with pytest.raises(E.ValidationFailed if pending is calls[1] else error) as info:
            await pending
        assert info.value.message
    assert await counts(core_db) == before
    assert await balance(core_db, alice) == 1_000_00


async def test_bad_parties_write_nothing(core_db: asyncpg.Pool, cipher: FieldCipher) -> None:
    alice = await make_customer(core_db, cipher, 1_000_00)
    bob = await make_customer(core_db, cipher)
    usd_only = new_msisdn()
    await make_customer(core_db, cipher)  # warm-up: nothing below may change counts
    before = await counts(core_db)
    with pytest.raises(E.CustomerNotFound) as unknown:
        await send_money(
            core_db,
            sender=alice,
            recipient=new_msisdn(),
            amount_minor=100,
            idempotency_key=new_key(),
            channel="t",
        )
    assert unknown.value.details["party"] == "recipient"
    with pytest.raises(E.CustomerNotFound):
        await send_money(
            core_db,
            sender=new_msisdn(),
            recipient=bob,
            amount_minor=100,
            idempotency_key=new_key(),
            channel="t",
        )
    with pytest.raises(E.SameAccount):
        await send_money(
            core_db,
            sender=alice,
            recipient="0" + alice[4:],
            amount_minor=100,
            idempotency_key=new_key(),
            channel="t",
        )
    with pytest.raises(E.ValidationFailed):
        await send_money(
            core_db,
            sender=alice,
            recipient="not a number",
            amount_minor=100,
            idempotency_key=new_key(),
            channel="t",
        )
    with pytest.raises(E.CurrencyMismatch):
        await send_money(
            core_db,
            sender=alice,
            recipient=bob,
            amount_minor=100,
            idempotency_key=new_key(),
            channel="t",
            currency="USD",
        )
    with pytest.raises(E.ValidationFailed):
        await send_money(
            core_db, sender=alice, recipient=bob, amount_minor=100, idempotency_key="", channel="t"
        )
    with pytest.raises(E.AgentNotFound):
        await cash_in(
            core_db,
            agent_code="NOSUCH1",
            msisdn=alice,
            amount_minor=100,
            idempotency_key=new_key(),
            channel="t",
        )
    assert await counts(core_db) == before
    del usd_only


async def test_currency_mismatch_between_wallets(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    alice = await make_customer(core_db, cipher, 1_000_00)
    bob = await make_customer(core_db, cipher)
    await open_wallet(core_db, alice, "UGX")
    await set_limits(
        core_db, TierLimits("Basic", "UGX", 5_000_000, 1_000_000, 2_000_000, 9_000_000)
    )
    with pytest.raises(E.AlreadyExists):
        await open_wallet(core_db, alice, "UGX")
    await set_limits(
        core_db, TierLimits("Basic", "UGX", 5_000_000, 1_000_000, 2_000_000, 9_000_000)
    )
    before = await counts(core_db)
    with pytest.raises(E.CurrencyMismatch) as info:
        await send_money(
            core_db,
            sender=alice,
            recipient=bob,
            amount_minor=100,
            idempotency_key=new_key(),
            channel="t",
            currency="UGX",
        )
    assert info.value.details["party"] == "recipient"
    assert await counts(core_db) == before


async def test_wallets_never_negative_in_the_database(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    alice = await make_customer(core_db, cipher, 100)
    with pytest.raises(asyncpg.CheckViolationError):
        await core_db.execute(
            "UPDATE accounts SET balance = -1 FROM customers c "
            "WHERE accounts.customer_id = c.id AND c.msisdn = $1",
            alice,
        )
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await core_db.execute("DELETE FROM entries WHERE amount = 100")


@pytest.mark.parametrize(
    ("sql", "constraint"),
    [
        ("INSERT INTO accounts (kind, currency) VALUES ('bogus', 'KES')", "accounts_kind_check"),
        (
            "INSERT INTO accounts (kind, currency) VALUES ('suspense', 'kes')",
            "accounts_currency_check",
        ),
        (
            "INSERT INTO accounts (kind, currency, shards) VALUES ('suspense', 'KES', 0)",
            "accounts_shards_check",
        ),
        (
            "INSERT INTO accounts (kind, currency) VALUES ('wallet', 'KES')",
            "accounts_wallet_has_customer",
        ),
        (
            "UPDATE accounts SET allow_negative = true WHERE id = (SELECT w.id FROM accounts w "
            "JOIN customers c ON c.id = w.customer_id WHERE c.msisdn = $1)",
            "accounts_liabilities_never_negative",
        ),
        (
            "UPDATE accounts SET shards = 2 WHERE id = (SELECT w.id FROM accounts w "
            "JOIN customers c ON c.id = w.customer_id WHERE c.msisdn = $1)",
            "accounts_wallets_unsharded",
        ),
        (
            "UPDATE accounts SET customer_id = NULL WHERE id = (SELECT w.id FROM accounts w "
            "JOIN customers c ON c.id = w.customer_id WHERE c.msisdn = $1)",
            "accounts_wallet_has_customer",
        ),
    ],
)
async def test_account_rules_hold_off_the_money_path(
    core_db: asyncpg.Pool, cipher: FieldCipher, sql: str, constraint: str
) -> None:
    """The rules on columns fixed at opening are a trigger since 0600 (not evaluated on every
    balance UPDATE) and refuse like the CHECK constraints they replaced, by the same name."""
    alice = await make_customer(core_db, cipher, 100)
    args = (alice,) if "$1" in sql else ()
    with pytest.raises(asyncpg.CheckViolationError) as info:
        await core_db.execute(sql, *args)
    assert info.value.constraint_name == constraint
    assert await balance(core_db, alice) == 100


async def test_loan_disbursement_and_repayment(core_db: asyncpg.Pool, cipher: FieldCipher) -> None:
    from core.transfers import disburse_loan, fund_loans, repay_loan

    alice = await make_customer(core_db, cipher)
    # The fund lends only what it holds: give it this loan's money first.
    await fund_loans(core_db, amount_minor=1_000_00, idempotency_key=new_key(), channel="test")
    fund_before = await system_balance(core_db, "loan_fund", "KES")
    key = new_key("loan")
    out = await disburse_loan(
        core_db,
        msisdn=alice,
        amount_minor=1_000_00,
        idempotency_key=key,
        channel="ussd",
        loan_reference="L-1",
    )
    assert out.kind == "loan_disbursement" and out.balance_after_minor == 1_000_00
    again = await disburse_loan(
        core_db,
        msisdn=alice,
        amount_minor=1_000_00,
        idempotency_key=key,
        channel="ussd",
        loan_reference="L-1",
    )
    assert again.replayed and again.reference == out.reference
    with pytest.raises(E.IdempotencyConflict):
        await disburse_loan(
            core_db,
            msisdn=alice,
            amount_minor=1_000_00,
            idempotency_key=key,
            channel="ussd",
            loan_reference="L-2",
        )
    with pytest.raises(E.InsufficientFunds):
        await repay_loan(
            core_db,
            msisdn=alice,
            amount_minor=1_000_01,
            idempotency_key=new_key(),
            channel="ussd",
            loan_reference="L-1",
        )
    paid = await repay_loan(
        core_db,
        msisdn=alice,
        amount_minor=1_000_00,
        idempotency_key=new_key(),
        channel="ussd",
        loan_reference="L-1",
    )
    assert paid.kind == "loan_repayment" and paid.balance_after_minor == 0
    assert await system_balance(core_db, "loan_fund", "KES") == fund_before
    with pytest.raises(E.CustomerNotFound):
        await disburse_loan(
            core_db,
            msisdn=new_msisdn(),
            amount_minor=100,
            idempotency_key=new_key(),
            channel="ussd",
        )
