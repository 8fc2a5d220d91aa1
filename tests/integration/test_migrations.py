"""Migrations go up, all the way down, and up again on a real database."""

from __future__ import annotations

import asyncpg

from gateway import db as dbmod


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(dbmod.asyncpg_url(url))
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows}


async def test_upgrade_downgrade_upgrade(empty_database: str) -> None:
    url = empty_database
    await dbmod.migrate(url)
    up = await _tables(url)
    assert {"admin_users", "roles", "permissions", "audit_log"} <= up
    await dbmod.downgrade(url, "base")
    assert await _tables(url) == {"alembic_version"}
    await dbmod.migrate(url)
    assert await _tables(url) == up


async def test_audit_log_is_append_only(pg_pool: asyncpg.Pool) -> None:
    await pg_pool.execute(
        "INSERT INTO audit_log (actor_type, actor, action) VALUES ('system', 'test', 'probe')"
    )
    try:
        await pg_pool.execute("UPDATE audit_log SET actor = 'x' WHERE action = 'probe'")
    except asyncpg.InsufficientPrivilegeError:
        pass
    else:
        raise AssertionError("audit_log accepted an UPDATE")
    try:
        await pg_pool.execute("DELETE FROM audit_log WHERE action = 'probe'")
    except asyncpg.InsufficientPrivilegeError:
        pass
    else:
        raise AssertionError("audit_log accepted a DELETE")


async def test_queue_tables_are_vacuumed_after_a_fixed_number_of_changes(
    pg_pool: asyncpg.Pool,
) -> None:
    rows = await pg_pool.fetch(
        "SELECT relname, reloptions FROM pg_class "
        "WHERE relname = ANY($1::text[]) AND relkind = 'r'",
        ["sms_messages", "sms_mt_parts", "sms_mo_seen", "outbox"],
    )
    options = {r["relname"]: set(r["reloptions"] or ()) for r in rows}
    assert set(options) == {"sms_messages", "sms_mt_parts", "sms_mo_seen", "outbox"}
    for table, opts in options.items():
        assert {"autovacuum_vacuum_scale_factor=0", "autovacuum_analyze_scale_factor=0"} <= opts
        (threshold,) = [o for o in opts if o.startswith("autovacuum_vacuum_threshold=")]
        assert 1_000 <= int(threshold.split("=")[1]) <= 10_000, table
