"""Concurrency on a real database: 50 transfers racing to drain one wallet, one idempotency
key sent 20 times at once, and crossing transfers A->B / B->A with no deadlock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from core import errors as E
from core.crypto import FieldCipher
from core.fees import quote
from core.transfers import TransferResult, balance, send_money
from gateway import db as dbmod
from tests.integration.core.conftest import make_customer, new_key

WORKERS = 25


@pytest.fixture(scope="module")
async def wide_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """Enough connections that the racing calls really run at once in the database."""
    pool = await dbmod.make_pool(database_url, min_size=WORKERS, max_size=WORKERS)
    try:
        yield pool
    finally:
        await pool.close()


async def _deadlocks(db: asyncpg.Pool) -> int:
    value = await db.fetchval(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    )
    return int(value)


async def test_fifty_transfers_drain_one_wallet(
    wide_pool: asyncpg.Pool, core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    amount = 200_00
    each = (await quote(core_db, "p2p", amount)).total_minor
    affordable = 20
    alice = await make_customer(core_db, cipher, affordable * each + each - 1)
    recipients = [await make_customer(core_db, cipher) for _ in range(5)]
    lowest: list[int] = []
    done = asyncio.Event()

    async def watch() -> None:  # the balance is never seen below zero, even mid-race
        while not done.is_set():
            lowest.append(await balance(core_db, alice))
            await asyncio.sleep(0)

    async def one(i: int) -> TransferResult | E.CoreError:
        try:
            return await send_money(
                wide_pool,
                sender=alice,
                recipient=recipients[i % 5],
                amount_minor=amount,
                idempotency_key=new_key("drain"),
                channel="ussd",
            )
        except E.CoreError as exc:
            return exc

    watcher = asyncio.create_task(watch())
    results = await asyncio.gather(*(one(i) for i in range(50)))
    done.set()
    await watcher
    ok = [r for r in results if isinstance(r, TransferResult)]
    refused = [r for r in results if not isinstance(r, TransferResult)]
    assert len(ok) == affordable, [repr(r) for r in refused][:5]
    assert all(isinstance(r, E.InsufficientFunds) for r in refused), refused
    assert await balance(core_db, alice) == each - 1
    assert min(lowest) >= 0
    assert sorted(r.balance_after_minor or 0 for r in ok) == [
        each - 1 + k * each for k in range(affordable)
    ]


async def test_one_key_twenty_times_at_once(
    wide_pool: asyncpg.Pool, core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    alice = await make_customer(core_db, cipher, 10_000_00)
    bob = await make_customer(core_db, cipher)
    key = new_key("same")
    results = await asyncio.gather(
        *(
            send_money(
                wide_pool,
                sender=alice,
                recipient=bob,
                amount_minor=1_000_00,
                idempotency_key=key,
                channel="sms",
            )
            for _ in range(20)
        )
    )
    assert len({r.reference for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert {r.balance_after_minor for r in results} == {10_000_00 - 1_013_00}
    assert await balance(core_db, bob) == 1_000_00
    assert (
        await core_db.fetchval("SELECT count(*) FROM transfers WHERE idempotency_key = $1", key)
        == 1
    )


async def test_crossing_transfers_do_not_deadlock(
    wide_pool: asyncpg.Pool, core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    alice = await make_customer(core_db, cipher, 50_000_00)
    bob = await make_customer(core_db, cipher, 50_000_00)
    deadlocks_before = await _deadlocks(core_db)
    amount = 100_00  # a free band: balances are easy to predict

    async def move(src: str, dst: str) -> None:
        await send_money(
            wide_pool,
            sender=src,
            recipient=dst,
            amount_minor=amount,
            idempotency_key=new_key("cross"),
            channel="ussd",
        )

    await asyncio.gather(*(move(alice, bob) if i % 2 else move(bob, alice) for i in range(100)))
    assert await balance(core_db, alice) == 50_000_00
    assert await balance(core_db, bob) == 50_000_00
    assert await _deadlocks(core_db) == deadlocks_before


async def test_one_busy_agent_takes_cash_in_and_out_at_once(
    wide_pool: asyncpg.Pool, core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    """Cash-outs take whichever float shard is free; cash-ins lock every shard. Together, at
    once, at one agent: no deadlock, and every shilling accounted for."""
    from core.agents import agent_balances
    from core.transfers import cash_in, cash_out
    from tests.integration.core.conftest import make_agent

    agent = await make_agent(core_db, 10_000_00)
    customers = [await make_customer(core_db, cipher, 5_000_00) for _ in range(10)]
    deadlocks_before = await _deadlocks(core_db)
    out_fee = (await quote(core_db, "cash_out", 300_00)).fee_minor

    async def out(i: int) -> None:
        await cash_out(
            wide_pool,
            agent_code=agent,
            msisdn=customers[i % 10],
            amount_minor=300_00,
            idempotency_key=new_key("out"),
            channel="agent",
        )

    async def into(i: int) -> None:
        await cash_in(
            wide_pool,
            agent_code=agent,
            msisdn=customers[i % 10],
            amount_minor=100_00,
            idempotency_key=new_key("in"),
            channel="agent",
        )

    await asyncio.gather(*(out(i) for i in range(40)), *(into(i) for i in range(10)))
    assert await _deadlocks(core_db) == deadlocks_before
    assert (
        await agent_balances(core_db, agent)
    ).float_minor == 10_000_00 + 40 * 300_00 - 10 * 100_00
    total = sum([await balance(core_db, c) for c in customers])
    assert total == 10 * 5_000_00 - 40 * (300_00 + out_fee) + 10 * 100_00
