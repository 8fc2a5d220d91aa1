"""Abandoning an idempotency key (core.transfers.abandon, migration 0810) on a real database:
settle or abandon in one step, no movement under an abandoned key ever after (every movement
type), and the two orders of a race with a movement in flight, each waited for on the key's
lock. The ledger check runs after every test (this package's conftest)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from core import errors as E
from core.crypto import FieldCipher
from core.ledger import check_ledger
from core.transfers import abandon, balance, cash_out, deposit, send_money
from tests.helpers import eventually
from tests.integration.core.conftest import make_agent, make_customer, new_key


async def waiting_on_key_lock(db: asyncpg.Pool) -> int:
    """Sessions of this database waiting for a key's lock (class 810 of the two-int advisory
    locks); pg_locks shows the whole server's, where other runs may wait on theirs."""
    value = await db.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND classid = 810 AND objsubid = 2"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    return int(value)


async def test_an_unused_key_is_abandoned_and_nothing_moves_under_it(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    alice = await make_customer(core_db, cipher, 1_000_00)
    bob = await make_customer(core_db, cipher)
    key = new_key("abandon")
    assert await abandon(core_db, key) is None
    assert await abandon(core_db, key) is None  # again: the same answer, one row
    with pytest.raises(E.MoneyAbandoned):
        await send_money(
            core_db,
            sender=alice,
            recipient=bob,
            amount_minor=100_00,
            idempotency_key=key,
            channel="ussd",
        )
    with pytest.raises(E.MoneyAbandoned):
        await deposit(core_db, msisdn=bob, amount_minor=5_00, idempotency_key=key, channel="t")
    assert (await balance(core_db, alice), await balance(core_db, bob)) == (1_000_00, 0)
    rows = await core_db.fetchval(
        "SELECT count(*) FROM money_abandoned WHERE idempotency_key = $1", key
    )
    assert rows == 1


async def test_a_withdrawal_under_an_abandoned_key_is_refused(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    customer = await make_customer(core_db, cipher, 1_000_00)
    agent = await make_agent(core_db, 0)
    key = new_key("abandon")
    assert await abandon(core_db, key) is None
    with pytest.raises(E.MoneyAbandoned):
        await cash_out(
            core_db,
            agent_code=agent,
            msisdn=customer,
            amount_minor=50_00,
            idempotency_key=key,
            channel="ussd",
        )
    assert await balance(core_db, customer) == 1_000_00


async def test_a_posted_key_settles_to_its_transfer_and_is_not_abandoned(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    alice = await make_customer(core_db, cipher, 1_000_00)
    bob = await make_customer(core_db, cipher)
    key = new_key("settle")
    sent = await send_money(
        core_db,
        sender=alice,
        recipient=bob,
        amount_minor=100_00,
        idempotency_key=key,
        channel="ussd",
    )
    found = await abandon(core_db, key)
    assert found is not None and found.replayed
    assert (found.reference, found.amount_minor) == (sent.reference, 100_00)
    again = await send_money(  # the key still replays
        core_db,
        sender=alice,
        recipient=bob,
        amount_minor=100_00,
        idempotency_key=key,
        channel="ussd",
    )
    assert again.replayed and again.reference == sent.reference
    assert await balance(core_db, bob) == 100_00
    assert not await core_db.fetchval(
        "SELECT count(*) FROM money_abandoned WHERE idempotency_key = $1", key
    )


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
async def test_abandon_waits_for_a_movement_in_flight(
    core_db: asyncpg.Pool, cipher: FieldCipher, outcome: str
) -> None:
    """The movement's transaction holds the key: the abandonment waits, then finds the
    transfer (committed) or abandons the key (rolled back)."""
    alice = await make_customer(core_db, cipher, 1_000_00)
    bob = await make_customer(core_db, cipher)
    key = new_key("race")
    async with core_db.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await send_money(
            conn,
            sender=alice,
            recipient=bob,
            amount_minor=100_00,
            idempotency_key=key,
            channel="ussd",
        )
        settling = asyncio.ensure_future(abandon(core_db, key))
        await eventually(lambda: waiting_on_key_lock(core_db))
        assert not settling.done()
        await (tx.commit() if outcome == "commit" else tx.rollback())
    found = await asyncio.wait_for(settling, timeout=10)
    if outcome == "commit":
        assert found is not None and await balance(core_db, bob) == 100_00
    else:
        assert found is None and await balance(core_db, bob) == 0


async def test_a_movement_waits_for_an_abandonment_in_flight_and_is_refused(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    alice = await make_customer(core_db, cipher, 1_000_00)
    bob = await make_customer(core_db, cipher)
    key = new_key("race")
    async with core_db.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        assert await abandon(conn, key) is None
        moving = asyncio.ensure_future(
            send_money(
                core_db,
                sender=alice,
                recipient=bob,
                amount_minor=100_00,
                idempotency_key=key,
                channel="ussd",
            )
        )
        await eventually(lambda: waiting_on_key_lock(core_db))
        assert not moving.done()
        await tx.commit()
    with pytest.raises(E.MoneyAbandoned):
        await asyncio.wait_for(moving, timeout=10)
    assert (await balance(core_db, alice), await balance(core_db, bob)) == (1_000_00, 0)


async def test_the_ledger_check_sees_money_moved_under_an_abandoned_key(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    """What the trigger prevents, written around it (a row put straight into the table): the
    invariant check names the transfer."""
    alice = await make_customer(core_db, cipher, 1_000_00)
    bob = await make_customer(core_db, cipher)
    key = new_key("breach")
    sent = await send_money(
        core_db,
        sender=alice,
        recipient=bob,
        amount_minor=100_00,
        idempotency_key=key,
        channel="ussd",
    )
    await core_db.execute("INSERT INTO money_abandoned (idempotency_key) VALUES ($1)", key)
    try:
        report = await check_ledger(core_db)
    finally:
        await core_db.execute("DELETE FROM money_abandoned WHERE idempotency_key = $1", key)
    [breach] = [c for c in report.checks if not c.ok]
    assert breach.name == "nothing_moved_under_abandoned_keys"
    assert breach.breaches == [{"reference": sent.reference, "idempotency_key": key}]


@pytest.mark.parametrize("key", ["", "k" * 129])
async def test_a_bad_key_is_refused(core_db: asyncpg.Pool, key: str) -> None:
    with pytest.raises(E.ValidationFailed):
        await abandon(core_db, key)
