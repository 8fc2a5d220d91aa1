"""Migrations go up, all the way down, and up again on a real database."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from gateway import db as dbmod
from tests.helpers import eventually


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


async def test_an_index_build_that_died_half_way_is_finished_by_the_next_run(
    empty_database: str,
) -> None:
    """0780 builds its unique index CONCURRENTLY (no write lock on agent_events for the build).
    Such a build that fails leaves an invalid index of that name; the migration run again must
    not stop at "already exists" but drop it and build a valid one."""
    url = empty_database
    await dbmod.migrate(url, "0775_admin_push_devices")
    conn = await asyncpg.connect(dbmod.asyncpg_url(url))
    try:
        # What a first run of 0780 leaves when its build fails: the column (committed before
        # the build) and an invalid index, here made by a duplicate the build then refuses.
        await conn.execute("ALTER TABLE agent_events ADD COLUMN event_id uuid")
        await conn.execute("SET session_replication_role = replica")  # rows without an agent
        insert = "INSERT INTO agent_events (agent_code, kind, event_id) VALUES ($1, 'online', $2)"
        same = uuid.uuid4()
        await conn.execute(insert, "AG-ONE", same)
        await conn.execute(insert, "AG-TWO", same)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "CREATE UNIQUE INDEX CONCURRENTLY agent_events_event_id ON agent_events (event_id)"
            )
        assert await _index_valid(conn, "agent_events_event_id") is False
        await conn.execute("DELETE FROM agent_events WHERE agent_code = 'AG-TWO'")
    finally:
        await conn.close()

    await dbmod.migrate(url)

    conn = await asyncpg.connect(dbmod.asyncpg_url(url))
    try:
        assert await _index_valid(conn, "agent_events_event_id") is True
        assert await _index_valid(conn, "audit_log_action_target") is True
        for name in ("agent_events_agent_at", "agent_events_at"):  # 0830, built the same way
            assert await _index_valid(conn, name) is True
    finally:
        await conn.close()


async def _index_valid(conn: asyncpg.Connection, name: str) -> bool | None:
    valid: bool | None = await conn.fetchval(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = $1",
        name,
    )
    return valid


MIGRATE = "import asyncio, sys\nfrom gateway import db\nasyncio.run(db.migrate(sys.argv[1]))"
ROOT = Path(__file__).resolve().parents[2]
STARTUP_S = 60.0


async def test_two_instances_starting_together_both_migrate_through_a_concurrent_build(
    empty_database: str,
) -> None:
    """Every instance migrates at start under one advisory lock. An instance blocked in
    pg_advisory_lock holds a snapshot while it waits, and CREATE INDEX CONCURRENTLY (0780)
    waits for every older snapshot: the two waited for each other and PostgreSQL killed one
    ("deadlock detected"), leaving the migration half-way. The lock is now polled."""
    url = empty_database
    await dbmod.migrate(url, "0775_admin_push_devices")
    watch = await asyncpg.connect(dbmod.asyncpg_url(url))
    reader = await asyncpg.connect(dbmod.asyncpg_url(url))
    procs: list[asyncio.subprocess.Process] = []
    try:
        # An ordinary reader's snapshot (of another table: a lock on agent_events would hold
        # the ALTER before it) holds the first instance's build until it ends, so the second
        # instance surely starts while the build is running.
        held = reader.transaction(isolation="repeatable_read")
        await held.start()
        await reader.fetchval("SELECT count(*) FROM roles")

        async def start() -> None:
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, "-c", MIGRATE, url, cwd=ROOT, stderr=asyncio.subprocess.PIPE
                )
            )

        async def sessions(pattern: str) -> list[int]:
            rows = await watch.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND query LIKE $1 AND pid <> pg_backend_pid()",
                pattern,
            )
            return [r["pid"] for r in rows]

        await start()
        # A process starting (an interpreter, alembic) takes seconds on a loaded machine.
        (builder,) = await eventually(
            lambda: sessions("CREATE UNIQUE INDEX CONCURRENTLY%"), timeout_s=STARTUP_S
        )
        await start()
        await eventually(
            lambda: sessions("%advisory_lock(%"),
            lambda pids: [p for p in pids if p != builder],
            timeout_s=STARTUP_S,
        )
        await held.commit()
        for proc in procs:
            _, err = await asyncio.wait_for(proc.communicate(), timeout=120)
            assert proc.returncode == 0, err.decode()[-2000:]
        assert await _index_valid(watch, "agent_events_event_id") is True
        assert await _index_valid(watch, "audit_log_action_target") is True
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await reader.close()
        await watch.close()
