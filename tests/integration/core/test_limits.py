"""Every KYC tier limit at its boundary and one minor unit past it, for every tier: maximum
balance, per transaction, daily and monthly debits. Daily caps reset on a new day (the test
moves the wallet's day counter back, which is what the passing of a day does)."""

from __future__ import annotations

import asyncpg
import pytest

from core import errors as E
from core.crypto import FieldCipher
from core.fees import quote
from core.limits import DEFAULT_LIMITS_KES, TIERS, get_limits
from core.transfers import balance, cash_out, deposit, send_money
from tests.integration.core.conftest import make_agent, make_customer, new_key


async def _yesterday(db: asyncpg.Pool, msisdn: str) -> None:
    await db.execute(
        "UPDATE accounts SET day = day - 1 FROM customers c "
        "WHERE accounts.customer_id = c.id AND c.msisdn = $1 AND accounts.kind = 'wallet'",
        msisdn,
    )


async def _cash_out(db: asyncpg.Pool, agent: str, msisdn: str, amount: int) -> None:
    await cash_out(
        db,
        agent_code=agent,
        msisdn=msisdn,
        amount_minor=amount,
        idempotency_key=new_key(),
        channel="t",
    )


async def _send(db: asyncpg.Pool, sender: str, recipient: str, amount: int) -> None:
    await send_money(
        db,
        sender=sender,
        recipient=recipient,
        amount_minor=amount,
        idempotency_key=new_key(),
        channel="t",
    )


async def _debit(db: asyncpg.Pool, msisdn: str, agent: str, amount: int) -> None:
    """Top the wallet up by amount + fee, then cash the amount out at the agent."""
    fee = (await quote(db, "cash_out", amount)).fee_minor
    await deposit(
        db, msisdn=msisdn, amount_minor=amount + fee, idempotency_key=new_key(), channel="t"
    )
    await _cash_out(db, agent, msisdn, amount)


async def _debit_total(db: asyncpg.Pool, msisdn: str, agent: str, total: int, chunk: int) -> None:
    while total > 0:
        step = min(chunk, total)
        await _debit(db, msisdn, agent, step)
        total -= step


async def test_seeded_limits_are_the_contract_defaults(core_db: asyncpg.Pool) -> None:
    for tier in TIERS:
        assert await get_limits(core_db, tier, "KES") == DEFAULT_LIMITS_KES[tier]


@pytest.mark.parametrize("tier", TIERS)
async def test_max_balance(core_db: asyncpg.Pool, cipher: FieldCipher, tier: str) -> None:
    limit = DEFAULT_LIMITS_KES[tier].max_balance_minor
    msisdn = await make_customer(core_db, cipher, limit - 1, tier=tier)
    await deposit(core_db, msisdn=msisdn, amount_minor=1, idempotency_key=new_key(), channel="t")
    with pytest.raises(E.LimitExceeded) as info:
        await deposit(
            core_db, msisdn=msisdn, amount_minor=1, idempotency_key=new_key(), channel="t"
        )
    assert info.value.details["limit"] == "max_balance"
    assert info.value.details["limit_minor"] == limit
    # The recipient's maximum counts in a P2P transfer too.
    sender = await make_customer(core_db, cipher, 1_000_00)
    with pytest.raises(E.LimitExceeded) as p2p:
        await _send(core_db, sender, msisdn, 1)
    assert p2p.value.details == {
        "limit": "max_balance",
        "limit_minor": limit,
        "used_minor": limit,
        "amount_minor": 1,
        "party": "recipient",
    }
    assert await balance(core_db, msisdn) == limit
    assert await balance(core_db, sender) == 1_000_00


@pytest.mark.parametrize("tier", TIERS)
async def test_per_transaction(core_db: asyncpg.Pool, cipher: FieldCipher, tier: str) -> None:
    limit = DEFAULT_LIMITS_KES[tier].per_transaction_minor
    fee = (await quote(core_db, "p2p", limit)).fee_minor
    sender = await make_customer(core_db, cipher, limit + fee, tier=tier)
    sink = await make_customer(core_db, cipher, tier="Business")
    with pytest.raises(E.LimitExceeded) as info:
        await _send(core_db, sender, sink, limit + 1)
    assert info.value.details["limit"] == "per_transaction"
    await _send(core_db, sender, sink, limit)
    assert await balance(core_db, sender) == 0


@pytest.mark.parametrize("tier", TIERS)
async def test_daily(core_db: asyncpg.Pool, cipher: FieldCipher, tier: str) -> None:
    limits = DEFAULT_LIMITS_KES[tier]
    sender = await make_customer(core_db, cipher, tier=tier)
    agent = await make_agent(core_db)
    await _debit_total(
        core_db, sender, agent, limits.daily_debit_minor - 1, limits.per_transaction_minor
    )
    await _debit(core_db, sender, agent, 1)  # exactly at the cap
    await deposit(
        core_db, msisdn=sender, amount_minor=10_00, idempotency_key=new_key(), channel="t"
    )
    with pytest.raises(E.LimitExceeded) as info:
        await _cash_out(core_db, agent, sender, 1)
    assert info.value.details["limit"] == "daily"
    assert info.value.details["used_minor"] == limits.daily_debit_minor
    await _yesterday(core_db, sender)
    await _cash_out(core_db, agent, sender, 1)


@pytest.mark.parametrize("tier", TIERS)
async def test_monthly(core_db: asyncpg.Pool, cipher: FieldCipher, tier: str) -> None:
    limits = DEFAULT_LIMITS_KES[tier]
    sender = await make_customer(core_db, cipher, tier=tier)
    agent = await make_agent(core_db)
    remaining = limits.monthly_debit_minor
    while remaining > 0:  # a daily cap's worth per "day"
        today = min(limits.daily_debit_minor, remaining)
        await _debit_total(core_db, sender, agent, today, limits.per_transaction_minor)
        remaining -= today
        await _yesterday(core_db, sender)
    await deposit(
        core_db, msisdn=sender, amount_minor=10_00, idempotency_key=new_key(), channel="t"
    )
    with pytest.raises(E.LimitExceeded) as info:
        await _cash_out(core_db, agent, sender, 1)
    assert info.value.details["limit"] == "monthly"
    assert info.value.details["used_minor"] == limits.monthly_debit_minor
