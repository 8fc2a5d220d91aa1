"""The daily and monthly caps count days and months of LIMITS_TIMEZONE (Africa/Nairobi unless
set), reaching the ledger functions as each pool connection's `gateway.limits_tz`.

`now()` cannot be moved in PostgreSQL, so the day and month expression (`ledger_day`,
`ledger_month`) is checked with explicit instants, and the path from the pool to the money
functions with two pools whose zones are 26 hours apart (their local dates always differ)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from config.settings import SettingsError
from core import errors as E
from core.crypto import FieldCipher
from core.limits import DEFAULT_LIMITS_KES
from core.transfers import cash_out, send_money
from gateway import db as dbmod
from tests.integration.core.conftest import make_agent, make_customer, new_key

# POSIX-style names: Etc/GMT-14 is UTC+14, Etc/GMT+12 is UTC-12.
EAST, WEST = "Etc/GMT-14", "Etc/GMT+12"


@pytest.fixture
async def zone_pools(database_url: str) -> AsyncIterator[dict[str, asyncpg.Pool]]:
    pools = {}
    try:
        for zone in (EAST, WEST, "Africa/Nairobi"):
            pools[zone] = await dbmod.make_pool(database_url, 1, 2, limits_tz=zone)
        yield pools
    finally:
        for pool in pools.values():
            await pool.close()


@pytest.mark.parametrize(
    ("instant", "day", "month"),
    [
        # 22:30 UTC is 01:30 the next day in Nairobi: it counts towards the next local day.
        ("2026-11-28 22:30:00+00", date(2026, 11, 29), date(2026, 11, 1)),
        ("2026-11-28 20:59:59.999999+00", date(2026, 11, 28), date(2026, 11, 1)),
        ("2026-11-28 21:00:00+00", date(2026, 11, 29), date(2026, 11, 1)),
        # ... and the month turns at local midnight too.
        ("2026-11-30 21:00:00+00", date(2026, 12, 1), date(2026, 12, 1)),
        ("2026-12-31 21:00:00+00", date(2027, 1, 1), date(2027, 1, 1)),
        ("2026-12-31 20:59:59+00", date(2026, 12, 31), date(2026, 12, 1)),
        # The same instant written with another offset is the same local day.
        ("2026-11-29 01:30:00+03", date(2026, 11, 29), date(2026, 11, 1)),
    ],
)
async def test_nairobi_days_and_months(
    zone_pools: dict[str, asyncpg.Pool], instant: str, day: date, month: date
) -> None:
    pool = zone_pools["Africa/Nairobi"]
    row = await pool.fetchrow(
        "SELECT ledger_day($1::text::timestamptz) AS d, ledger_month($1::text::timestamptz) AS m",
        instant,
    )
    assert (row["d"], row["m"]) == (day, month)


async def test_unset_or_empty_setting_means_utc(database_url: str) -> None:
    conn = await asyncpg.connect(dbmod.asyncpg_url(database_url))
    try:
        at = "2026-11-28 22:30:00+00"
        sql = "SELECT ledger_day($1::text::timestamptz)"
        assert await conn.fetchval(sql, at) == date(2026, 11, 28)
        await conn.execute("SET gateway.limits_tz = ''")
        assert await conn.fetchval(sql, at) == date(2026, 11, 28)
        await conn.execute("SET gateway.limits_tz = 'Africa/Nairobi'")
        assert await conn.fetchval(sql, at) == date(2026, 11, 29)
    finally:
        await conn.close()


async def test_the_app_pool_counts_in_the_configured_zone(pg_pool: asyncpg.Pool) -> None:
    assert await pg_pool.fetchval("SELECT current_setting('gateway.limits_tz')") == (
        "Africa/Nairobi"
    )


async def test_no_function_counts_utc_days_any_more(core_db: asyncpg.Pool) -> None:
    utc = await core_db.fetch(
        "SELECT proname FROM pg_proc WHERE prosrc LIKE '%AT TIME ZONE ''UTC''%'"
    )
    assert [r["proname"] for r in utc] == []
    counting = await core_db.fetch(
        "SELECT proname FROM pg_proc WHERE prosrc LIKE '%day_debits%' ORDER BY proname"
    )
    names = [r["proname"] for r in counting]
    assert names == ["ledger_apply", "ledger_p2p", "ledger_post_checked"]
    for name in names:
        src = await core_db.fetchval("SELECT prosrc FROM pg_proc WHERE proname = $1", name)
        assert "v_today date := ledger_day(now());" in src
        assert "v_month date := ledger_month(now());" in src


async def _local_dates(pool: asyncpg.Pool) -> tuple[date, date]:
    row = await pool.fetchrow("SELECT ledger_day(now()) AS d, ledger_month(now()) AS m")
    return row["d"], row["m"]


async def _counter(db: asyncpg.Pool, msisdn: str) -> asyncpg.Record:
    return await db.fetchrow(
        "SELECT a.day, a.day_debits, a.month, a.month_debits FROM accounts a "
        "JOIN customers c ON a.customer_id = c.id WHERE c.msisdn = $1 AND a.kind = 'wallet'",
        msisdn,
    )


async def _spend_the_day(db: asyncpg.Pool, msisdn: str, day: date, month: date, used: int) -> None:
    """The wallet's counters as if `used` had been debited on local `day`."""
    await db.execute(
        "UPDATE accounts SET day = $2, day_debits = $3, month = $4, month_debits = $3 "
        "FROM customers c WHERE accounts.customer_id = c.id AND c.msisdn = $1 "
        "AND accounts.kind = 'wallet'",
        msisdn,
        day,
        used,
        month,
    )


async def test_p2p_counts_the_pools_local_day(
    core_db: asyncpg.Pool, cipher: FieldCipher, zone_pools: dict[str, asyncpg.Pool]
) -> None:
    east, west = zone_pools[EAST], zone_pools[WEST]
    east_day, east_month = await _local_dates(east)
    west_day, _ = await _local_dates(west)
    assert east_day > west_day  # 26 hours apart: never the same date
    cap = DEFAULT_LIMITS_KES["Basic"].daily_debit_minor
    sender = await make_customer(core_db, cipher, 100_00)
    recipient = await make_customer(core_db, cipher)
    await _spend_the_day(core_db, sender, east_day, east_month, cap)

    def send(pool: asyncpg.Pool):  # type: ignore[no-untyped-def]
        return send_money(
            pool,
            sender=sender,
            recipient=recipient,
            amount_minor=10_00,
            idempotency_key=new_key(),
            channel="t",
        )

    with pytest.raises(E.LimitExceeded) as info:
        await send(east)  # the local day whose cap is spent
    assert info.value.details["limit"] == "daily"
    await send(west)  # another local day: the cap starts afresh
    after = await _counter(core_db, sender)
    assert (after["day"], after["day_debits"]) == (west_day, 10_00)


async def test_cash_out_counts_the_pools_local_day(
    core_db: asyncpg.Pool, cipher: FieldCipher, zone_pools: dict[str, asyncpg.Pool]
) -> None:
    east, west = zone_pools[EAST], zone_pools[WEST]
    east_day, east_month = await _local_dates(east)
    west_day, west_month = await _local_dates(west)
    cap = DEFAULT_LIMITS_KES["Basic"].daily_debit_minor
    customer = await make_customer(core_db, cipher, 100_00)
    agent = await make_agent(core_db)
    await _spend_the_day(core_db, customer, west_day, west_month, cap)

    async def withdraw(pool: asyncpg.Pool) -> None:
        await cash_out(
            pool,
            agent_code=agent,
            msisdn=customer,
            amount_minor=10_00,
            idempotency_key=new_key(),
            channel="t",
        )

    with pytest.raises(E.LimitExceeded) as info:
        await withdraw(west)
    assert info.value.details["limit"] == "daily"
    await withdraw(east)
    after = await _counter(core_db, customer)
    assert (after["day"], after["day_debits"], after["month"]) == (east_day, 10_00, east_month)


async def test_the_app_pool_writes_nairobi_dates(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    sender = await make_customer(core_db, cipher, 100_00)
    recipient = await make_customer(core_db, cipher)
    before = await _local_dates(core_db)
    await send_money(
        core_db,
        sender=sender,
        recipient=recipient,
        amount_minor=5_00,
        idempotency_key=new_key(),
        channel="t",
    )
    after = await _local_dates(core_db)
    counter = await _counter(core_db, sender)
    assert counter["day"] in {before[0], after[0]}
    assert counter["month"] in {before[1], after[1]}
    # The database's Nairobi day and month are the ones Python computes for the same instant.
    row = await core_db.fetchrow(
        "SELECT now() AS t, ledger_day(now()) AS d, ledger_month(now()) AS m"
    )
    local = row["t"].astimezone(ZoneInfo("Africa/Nairobi")).date()
    assert (row["d"], row["m"]) == (local, local.replace(day=1))


async def test_a_zone_postgresql_does_not_know_stops_the_pool(database_url: str) -> None:
    with pytest.raises(SettingsError) as info:
        await dbmod.make_pool(database_url, 1, 1, limits_tz="Mars/Olympus_Mons")
    assert str(info.value).startswith("LIMITS_TIMEZONE: ")


async def _functions(url: str) -> dict[str, str]:
    conn = await asyncpg.connect(dbmod.asyncpg_url(url))
    try:
        rows = await conn.fetch(
            "SELECT p.oid::regprocedure::text AS sig, p.prosrc FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'public' AND p.proname LIKE 'ledger%'"
        )
    finally:
        await conn.close()
    return {r["sig"]: r["prosrc"] for r in rows}


async def test_downgrade_restores_the_utc_functions(empty_database: str) -> None:
    url = empty_database
    await dbmod.migrate(url, "0721_pin_change_key")
    before = await _functions(url)
    await dbmod.migrate(url, "0730_limits_timezone")
    after = await _functions(url)
    assert set(after) - set(before) == {
        "ledger_local(timestamp with time zone)",
        "ledger_day(timestamp with time zone)",
        "ledger_month(timestamp with time zone)",
    }
    changed = {sig for sig in before if before[sig] != after[sig]}
    assert {sig.split("(")[0] for sig in changed} == {
        "ledger_apply",
        "ledger_post_checked",
        "ledger_p2p",
    }
    # 0720's ledger_p2p (with the sender-receipt flag) was the one rewritten.
    p2p = next(sig for sig in changed if sig.startswith("ledger_p2p("))
    assert p2p.endswith(",boolean)")
    assert "p_sender_receipt" in after[p2p]
    await dbmod.downgrade(url, "0721_pin_change_key")
    assert await _functions(url) == before
