"""Abandoning a registration's or a PIN change's key (core.customers.abandon_request, migration
0840) on a real database: settle or abandon in one step, nothing registered or changed under an
abandoned key ever after (nor a wrong PIN counted), a registration found under its key, a PIN
change found under its key after a later change, and both orders of a race with a request in
flight, each waited for on the key's lock. The ledger check runs after every test (this
package's conftest)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

from core import errors as E
from core.crypto import FieldCipher
from core.customers import abandon_request, find_customer, register_customer, registered_under
from core.pins import change_pin, verify_pin
from tests.helpers import eventually, new_msisdn
from tests.integration.core.conftest import PIN, make_customer, new_key
from tests.ussd_support import nothing_changed_under_abandoned_requests

NEW_PIN = "7391"


@pytest.fixture(autouse=True)
async def nothing_changed(core_db: asyncpg.Pool) -> AsyncIterator[None]:
    yield
    await nothing_changed_under_abandoned_requests(core_db)


async def waiting_on_key_lock(db: asyncpg.Pool) -> int:
    """Sessions of this database waiting for a request key's lock (class 840 of the two-int
    advisory locks); pg_locks shows the whole server's, where other runs may wait on theirs."""
    value = await db.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND classid = 840 AND objsubid = 2"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    return int(value)


async def register(
    db: asyncpg.Pool | asyncpg.Connection,
    cipher: FieldCipher,
    msisdn: str,
    key: str,
    national_id: str | None = None,
) -> object:
    return await register_customer(
        db,
        cipher,
        msisdn=msisdn,
        first_name="Neema",
        last_name="Achieng",
        national_id=national_id or "ID" + secrets.token_hex(5).upper(),
        pin=PIN,
        channel="ussd",
        pin_rounds=4,
        idempotency_key=key,
    )


async def abandoned_rows(db: asyncpg.Pool, msisdn: str) -> list[tuple[str, str]]:
    rows = await db.fetch(
        "SELECT idempotency_key, action FROM action_abandoned WHERE msisdn = $1", msisdn
    )
    return [(r["idempotency_key"], r["action"]) for r in rows]


async def pin_failures(db: asyncpg.Pool, msisdn: str) -> int:
    return int(await db.fetchval("SELECT pin_failures FROM customers WHERE msisdn = $1", msisdn))


async def test_a_registration_under_an_abandoned_key_is_refused(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    msisdn, key = new_msisdn(), new_key("reg")
    assert await abandon_request(core_db, msisdn, key, "register") is False
    assert await abandon_request(core_db, msisdn, key, "register") is False  # one row
    with pytest.raises(E.ActionAbandoned):
        await register(core_db, cipher, msisdn, key)
    assert await find_customer(core_db, msisdn) is None
    assert await abandoned_rows(core_db, msisdn) == [(key, "register")]
    # The customer told "register again" does, in a new session (a new key).
    await register(core_db, cipher, msisdn, new_key("reg"))
    assert await find_customer(core_db, msisdn) is not None


async def test_a_registration_done_under_its_key_is_found(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    msisdn, key = new_msisdn(), new_key("reg")
    first = await register(core_db, cipher, msisdn, key)
    assert await registered_under(core_db, msisdn, key) == first
    assert await registered_under(core_db, msisdn, new_key("reg")) is None
    with pytest.raises(E.AlreadyExists):  # the channel decides whether that is its answer
        await register(core_db, cipher, msisdn, key)
    assert await abandon_request(core_db, msisdn, key, "register") is True
    assert await abandoned_rows(core_db, msisdn) == []


async def test_a_pin_change_under_an_abandoned_key_changes_and_counts_nothing(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    msisdn = await make_customer(core_db, cipher)
    key = new_key("pin")
    assert await abandon_request(core_db, msisdn, key, "pin.change") is False
    for old in (PIN, "9731"):  # the right PIN, and a wrong one: not counted either
        with pytest.raises(E.ActionAbandoned):
            await change_pin(core_db, msisdn, old, NEW_PIN, 4, idempotency_key=key)
    await verify_pin(core_db, msisdn, PIN)  # unchanged
    assert await pin_failures(core_db, msisdn) == 0
    # What the trigger holds however the change is written: pin_changed_by under the key.
    with pytest.raises(asyncpg.RaiseError, match="given up"):
        await core_db.execute(
            "UPDATE customers SET pin_changed_by = $2 WHERE msisdn = $1", msisdn, key
        )


async def test_a_pin_change_done_under_its_key_is_found_after_a_later_change(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    msisdn = await make_customer(core_db, cipher)
    key = new_key("pin")
    await change_pin(core_db, msisdn, PIN, NEW_PIN, 4, idempotency_key=key)
    await change_pin(core_db, msisdn, NEW_PIN, "2468", 4, idempotency_key=new_key("sms"))
    # pin_changed_by names the later change now; the audit row still names this one.
    assert await abandon_request(core_db, msisdn, key, "pin.change") is True
    assert await abandoned_rows(core_db, msisdn) == []
    await verify_pin(core_db, msisdn, "2468")


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
async def test_abandon_waits_for_a_registration_in_flight(
    core_db: asyncpg.Pool, cipher: FieldCipher, outcome: str
) -> None:
    """The registration's transaction holds the key: the abandonment waits, then finds the
    customer (committed) or abandons the key (rolled back)."""
    msisdn, key = new_msisdn(), new_key("race")
    async with core_db.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await register(conn, cipher, msisdn, key)
        settling = asyncio.ensure_future(abandon_request(core_db, msisdn, key, "register"))
        await eventually(lambda: waiting_on_key_lock(core_db))
        assert not settling.done()
        await (tx.commit() if outcome == "commit" else tx.rollback())
    done = await asyncio.wait_for(settling, timeout=10)
    assert done is (outcome == "commit")
    assert (await find_customer(core_db, msisdn) is not None) is done
    assert await abandoned_rows(core_db, msisdn) == ([] if done else [(key, "register")])


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
async def test_abandon_waits_for_a_pin_change_in_flight(
    core_db: asyncpg.Pool, cipher: FieldCipher, outcome: str
) -> None:
    msisdn = await make_customer(core_db, cipher)
    key = new_key("race")
    async with core_db.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await change_pin(conn, msisdn, PIN, NEW_PIN, 4, idempotency_key=key)
        settling = asyncio.ensure_future(abandon_request(core_db, msisdn, key, "pin.change"))
        await eventually(lambda: waiting_on_key_lock(core_db))
        assert not settling.done()
        await (tx.commit() if outcome == "commit" else tx.rollback())
    done = await asyncio.wait_for(settling, timeout=10)
    assert done is (outcome == "commit")
    await verify_pin(core_db, msisdn, NEW_PIN if done else PIN)


@pytest.mark.parametrize("action", ["register", "pin.change"])
async def test_a_request_waits_for_an_abandonment_in_flight_and_is_refused(
    core_db: asyncpg.Pool, cipher: FieldCipher, action: str
) -> None:
    msisdn = new_msisdn() if action == "register" else await make_customer(core_db, cipher)
    key = new_key("race")
    async with core_db.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        assert await abandon_request(conn, msisdn, key, action) is False
        if action == "register":
            asking = asyncio.ensure_future(register(core_db, cipher, msisdn, key))
        else:
            asking = asyncio.ensure_future(
                change_pin(core_db, msisdn, PIN, NEW_PIN, 4, idempotency_key=key)
            )
        await eventually(lambda: waiting_on_key_lock(core_db))
        assert not asking.done()
        await tx.commit()
    with pytest.raises(E.ActionAbandoned):
        await asyncio.wait_for(asking, timeout=10)
    if action == "register":
        assert await find_customer(core_db, msisdn) is None
    else:
        await verify_pin(core_db, msisdn, PIN)


@pytest.mark.parametrize(
    ("msisdn", "key", "action"),
    [
        pytest.param("+254700000001", "", "register", id="empty_key"),
        pytest.param("+254700000001", "k" * 201, "register", id="long_key"),
        pytest.param("+254700000001", "k", "send_money", id="not_abandonable_here"),
        pytest.param("0700000001", "k", "register", id="not_e164"),
    ],
)
async def test_bad_input_is_refused_and_changes_nothing(
    core_db: asyncpg.Pool, msisdn: str, key: str, action: str
) -> None:
    before = await core_db.fetchval("SELECT count(*) FROM action_abandoned")
    with pytest.raises(E.ValidationFailed):
        await abandon_request(core_db, msisdn, key, action)
    assert await core_db.fetchval("SELECT count(*) FROM action_abandoned") == before


async def test_the_guards_refuse_to_run_on_an_older_snapshot(core_db: asyncpg.Pool) -> None:
    """Under REPEATABLE READ a snapshot from before the key's lock would miss what the lock
    waited for: both functions refuse."""
    async with core_db.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        with pytest.raises(asyncpg.RaiseError, match="READ COMMITTED"):
            await conn.execute("SELECT action_abandon('+254700000001', 'k', 'register')")
    async with core_db.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        with pytest.raises(asyncpg.RaiseError, match="READ COMMITTED"):
            await conn.execute("SELECT action_claim_key('+254700000001', 'k')")
