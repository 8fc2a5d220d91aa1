"""Customers and PINs on a real database: registration with a Basic wallet, encrypted national
ids, duplicates, PIN rules, three wrong PINs lock the wallet across channels, unlock, change."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

from core import errors as E
from core.agents import verify_agent_pin
from core.crypto import FieldCipher
from core.customers import (
    find_by_national_id,
    find_customer,
    national_id_of,
    register_customer,
    set_language,
    wallets,
)
from core.pins import _FAIL_SQL, change_pin, check_pin_format, unlock, verify_pin
from core.transfers import send_money
from tests.helpers import new_msisdn
from tests.integration.core.conftest import (
    AGENT_PIN,
    PIN,
    make_agent,
    make_customer,
    new_key,
)


def tag_task(record: logging.LogRecord) -> bool:
    """A handler filter: which asyncio task emitted the record (its id; None outside a loop)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    record.task = None if task is None else id(task)
    return True


async def test_register_creates_basic_wallet_and_hides_national_id(
    core_db: asyncpg.Pool, cipher: FieldCipher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    me = id(asyncio.current_task())
    caplog.handler.addFilter(tag_task)
    msisdn = new_msisdn()
    local = "0" + msisdn[4:]
    customer = await register_customer(
        core_db,
        cipher,
        msisdn=local,
        first_name="  Amina ",
        last_name="Wanjiru-Njeri",
        national_id="29 876 543",
        pin="7391",
        language="sw",
        channel="ussd",
        pin_rounds=4,
    )
    assert customer.msisdn == msisdn and customer.tier == "Basic"
    assert (customer.status, customer.language, customer.first_name) == ("active", "sw", "Amina")
    assert [(w.currency, w.balance_minor) for w in await wallets(core_db, customer.id)] == [
        ("KES", 0)
    ]
    row = await core_db.fetchrow("SELECT * FROM customers WHERE id = $1", customer.id)
    stored = " ".join(str(v) for v in row.values())
    assert "29876543" not in stored and "7391" not in stored
    assert row["pin_hash"].startswith("$2b$04$")
    assert await national_id_of(core_db, cipher, msisdn) == "29876543"
    found = await find_by_national_id(core_db, cipher, "29876543")
    assert found is not None and found.id == customer.id
    audit = await core_db.fetchrow(
        "SELECT actor_type, actor FROM audit_log WHERE target = $1 AND action = "
        "'customer.registered'",
        msisdn,
    )
    assert tuple(audit) == ("channel", "ussd")
    # Only this test's own records: other tests' background tasks log row ids and numbers
    # meanwhile, and "7391" turned up in one of them once.
    leaks = [
        r
        for r in caplog.records
        if getattr(r, "task", None) == me
        and ("7391" in r.getMessage() or "29876543" in str(r.__dict__))
    ]
    assert not leaks

    with pytest.raises(E.AlreadyExists) as dup:
        await register_customer(
            core_db,
            cipher,
            msisdn=msisdn,
            first_name="A",
            last_name="B",
            national_id="OTHER123",
            pin="7391",
            channel="ussd",
            pin_rounds=4,
        )
    assert dup.value.details["field"] == "msisdn"
    with pytest.raises(E.AlreadyExists) as dup_id:
        await register_customer(
            core_db,
            cipher,
            msisdn=new_msisdn(),
            first_name="A",
            last_name="B",
            national_id="29876543",
            pin="7391",
            channel="ussd",
            pin_rounds=4,
        )
    assert dup_id.value.details["field"] == "national_id"


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("msisdn", "12ab", E.ValidationFailed),
        ("first_name", "", E.ValidationFailed),
        ("first_name", "R2D2", E.ValidationFailed),
        ("last_name", "x" * 51, E.ValidationFailed),
        ("national_id", "12", E.ValidationFailed),
        ("pin", "1234", E.WeakPin),
        ("pin", "0000", E.WeakPin),
        ("pin", "12345", E.WeakPin),
        ("language", "de", E.ValidationFailed),
    ],
)
async def test_register_refuses_bad_input(
    core_db: asyncpg.Pool, cipher: FieldCipher, field: str, value: str, error: type[Exception]
) -> None:
    fields = {
        "msisdn": new_msisdn(),
        "first_name": "Ok",
        "last_name": "Fine",
        "national_id": "NID" + new_msisdn()[-8:],
        "pin": "7391",
        "language": "en",
    }
    fields[field] = value
    before = await core_db.fetchval("SELECT count(*) FROM customers")
    with pytest.raises(error):
        await register_customer(core_db, cipher, channel="t", pin_rounds=4, **fields)
    assert await core_db.fetchval("SELECT count(*) FROM customers") == before


@pytest.mark.parametrize("pin", ["1234", "4321", "0123", "9876", "1111", "12a4", "", "١٢٣٤"])
def test_weak_or_malformed_pins_refused(pin: str) -> None:
    with pytest.raises(E.WeakPin):
        check_pin_format(pin)


@pytest.mark.parametrize("pin", ["1357", "2580", "1212", "9021", "0001"])
def test_good_pins_accepted(pin: str) -> None:
    assert check_pin_format(pin) == pin


async def test_three_wrong_pins_lock_until_admin_unlocks(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    alice = await make_customer(core_db, cipher, 1_000_00)
    bob = await make_customer(core_db, cipher, 1_000_00)
    await verify_pin(core_db, alice, PIN)
    with pytest.raises(E.WrongPin) as first:
        await verify_pin(core_db, alice, "9999")
    assert first.value.details["attempts_left"] == 2
    await verify_pin(core_db, alice, PIN)  # a right PIN resets the count
    for left in (2, 1):
        with pytest.raises(E.WrongPin) as wrong:
            await verify_pin(core_db, alice, "9999")
        assert wrong.value.details["attempts_left"] == left
    with pytest.raises(E.WalletLocked):
        await verify_pin(core_db, alice, "abc")  # malformed input counts as a wrong PIN
    with pytest.raises(E.WalletLocked):
        await verify_pin(core_db, alice, PIN)  # even the right PIN now
    customer = await find_customer(core_db, alice)
    assert customer is not None and customer.status == "locked"
    with pytest.raises(E.WalletLocked):
        await send_money(
            core_db,
            sender=alice,
            recipient=bob,
            amount_minor=100,
            idempotency_key=new_key(),
            channel="ussd",
        )
    # A locked wallet still receives.
    await send_money(
        core_db,
        sender=bob,
        recipient=alice,
        amount_minor=100,
        idempotency_key=new_key(),
        channel="ussd",
    )
    await unlock(core_db, alice, actor="support1")
    await verify_pin(core_db, alice, PIN)
    with pytest.raises(E.WrongPin) as after:
        await verify_pin(core_db, alice, "9999")
    assert after.value.details["attempts_left"] == 2
    actions = await core_db.fetch(
        "SELECT action, actor FROM audit_log WHERE target = $1 ORDER BY id", alice
    )
    assert [tuple(a) for a in actions][-2:] == [
        ("customer.locked", "pins"),
        ("customer.unlocked", "support1"),
    ]


async def test_change_pin(core_db: asyncpg.Pool, cipher: FieldCipher) -> None:
    alice = await make_customer(core_db, cipher)
    with pytest.raises(E.WeakPin):
        await change_pin(core_db, alice, PIN, "5555", 4)
    with pytest.raises(E.WrongPin):
        await change_pin(core_db, alice, "9999", "7391", 4)
    with pytest.raises(E.WeakPin):
        await change_pin(core_db, alice, PIN, PIN, 4)
    await change_pin(core_db, alice, PIN, "7391", 4)
    await verify_pin(core_db, alice, "7391")
    with pytest.raises(E.WrongPin):
        await verify_pin(core_db, alice, PIN)


async def failures(db: asyncpg.Pool, msisdn: str) -> int:
    return int(await db.fetchval("SELECT pin_failures FROM customers WHERE msisdn = $1", msisdn))


async def test_change_pin_processed_again_counts_nothing(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    """The same request (its key) again, after its change: the same success, no wrong PIN; the
    counter stays as strict as before for every other request."""
    alice = await make_customer(core_db, cipher)
    await change_pin(core_db, alice, PIN, "7391", 4, idempotency_key="sms:41")
    await change_pin(core_db, alice, PIN, "7391", 4, idempotency_key="sms:41")
    await change_pin(core_db, alice, PIN, "7391", 4, idempotency_key="sms:41")
    assert await failures(core_db, alice) == 0
    await verify_pin(core_db, alice, "7391")
    # Another request with the old PIN is wrong and counts, key or no key.
    with pytest.raises(E.WrongPin):
        await change_pin(core_db, alice, PIN, "7391", 4, idempotency_key="sms:42")
    with pytest.raises(E.WrongPin):
        await change_pin(core_db, alice, PIN, "5930", 4)
    assert await failures(core_db, alice) == 2
    # A later change remembers its own key only: the first request is now checked again.
    await change_pin(core_db, alice, "7391", "5930", 4, idempotency_key="sms:43")
    with pytest.raises(E.WrongPin):
        await change_pin(core_db, alice, PIN, "7391", 4, idempotency_key="sms:41")
    await change_pin(core_db, alice, "7391", "5930", 4, idempotency_key="sms:43")
    # A locked wallet says locked, even to the request that changed the PIN.
    with pytest.raises(E.WrongPin):
        await verify_pin(core_db, alice, "1357")
    with pytest.raises(E.WalletLocked):
        await verify_pin(core_db, alice, "1357")
    with pytest.raises(E.WalletLocked):
        await change_pin(core_db, alice, "7391", "5930", 4, idempotency_key="sms:43")
    with pytest.raises(E.ValidationFailed):
        await change_pin(core_db, alice, "5930", "2468", 4, idempotency_key="")
    with pytest.raises(E.ValidationFailed):
        await change_pin(core_db, alice, "5930", "2468", 4, idempotency_key="k" * 201)


async def test_unknown_customer_and_language(core_db: asyncpg.Pool, cipher: FieldCipher) -> None:
    with pytest.raises(E.CustomerNotFound):
        await verify_pin(core_db, new_msisdn(), PIN)
    alice = await make_customer(core_db, cipher)
    await set_language(core_db, alice, "fr")
    found = await find_customer(core_db, alice)
    assert found is not None and found.language == "fr"
    with pytest.raises(E.ValidationFailed):
        await set_language(core_db, alice, "xx")
    assert await find_customer(core_db, new_msisdn()) is None


async def test_agent_pin_locks_too(core_db: asyncpg.Pool) -> None:
    agent = await make_agent(core_db)
    assert (await verify_agent_pin(core_db, agent, AGENT_PIN)).code == agent
    for _ in range(2):
        with pytest.raises(E.WrongPin):
            await verify_agent_pin(core_db, agent, "0000")
    with pytest.raises(E.WalletLocked):
        await verify_agent_pin(core_db, agent, "0000")
    with pytest.raises(E.AgentNotFound):
        await verify_agent_pin(core_db, "NOPE999", AGENT_PIN)


async def test_a_wrong_pins_request_look_up_reads_the_audit_index(core_db: asyncpg.Pool) -> None:
    """The once-per-request check of a wrong PIN looks up this request's audit row of the last
    hour (core.pins._FAIL_SQL): by the index (migration 0790), not by reading the whole log,
    which every admin action and every wrong PIN grows."""
    sql = _FAIL_SQL.format(table="customers", name="msisdn", entity="customer")
    async with core_db.acquire() as conn, conn.transaction():
        # On a small test table the planner would rightly scan; the question is whether the
        # index can serve the statement at all.
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = await conn.fetch("EXPLAIN " + sql, 0, 3, "request-key", 3600.0, "+254700000001")
    lines = "\n".join(r[0] for r in plan)
    assert "audit_log_action_target on audit_log" in lines, lines
