"""A migrated scratch database for a benchmark: on DATABASE_URL's server when set, else on an
embedded PostgreSQL under ./var/bench; dropped afterwards unless `keep`. And the ledger audit
that closes a benchmark that moved money."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from core.ledger import LedgerReport, check_ledger
from gateway import db as dbmod


@contextlib.asynccontextmanager
async def scratch_database(prefix: str, *, keep: bool = False) -> AsyncIterator[str]:
    server = os.environ.get("DATABASE_URL")
    embedded = None
    if not server:
        from gateway.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(Path("var/bench"))
        server = await asyncio.to_thread(embedded.start)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dbmod.asyncpg_url(server))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = dbmod.with_database(server, name)
    print(f"database {name}; migrating", flush=True)
    try:
        await dbmod.migrate(url)
        yield url
    finally:
        if not keep:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def audit_ledger(pool: asyncpg.Pool) -> LedgerReport:
    """The ledger check over everything the run wrote, without the pool's per-statement
    timeout: a full audit of a big run can take longer than a request may (`gateway ledger
    check` runs the same way)."""
    return await check_ledger(pool, statement_timeout_s=0)
