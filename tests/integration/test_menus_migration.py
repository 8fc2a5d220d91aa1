"""Migration 0200_menus: up, down to 0001 and up again; published versions are immutable."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest

from gateway import db as dbmod

MINE = {"menus", "menu_versions", "ussd_steps"}


async def _tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


async def test_upgrade_downgrade_upgrade(empty_database: str) -> None:
    url = empty_database
    await dbmod.migrate(url)
    conn = await asyncpg.connect(dbmod.asyncpg_url(url))
    try:
        assert await _tables(conn) >= MINE
        await dbmod.downgrade(url, "0001")
        assert not MINE & await _tables(conn)
        assert "admin_users" in await _tables(conn)
        await dbmod.migrate(url)
        assert await _tables(conn) >= MINE
    finally:
        await conn.close()


async def test_published_versions_are_immutable(pg_pool: asyncpg.Pool) -> None:
    async with pg_pool.acquire() as conn, conn.transaction():
        menu_id = await conn.fetchval(
            "INSERT INTO menus (name, draft, draft_updated_by) VALUES ($1, '{}', 't') RETURNING id",
            f"imm{uuid.uuid4().hex[:6]}",
        )
        await conn.execute(
            "INSERT INTO menu_versions (menu_id, version, document, checksum, published_by)"
            " VALUES ($1, 1, $2::jsonb, 'x', 't')",
            menu_id,
            json.dumps({"a": 1}),
        )
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await pg_pool.execute(
            "UPDATE menu_versions SET document = '{}' WHERE menu_id = $1", menu_id
        )
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pg_pool.execute("UPDATE menus SET current_version = 7 WHERE id = $1", menu_id)
