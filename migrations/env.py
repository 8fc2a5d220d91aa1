"""Alembic environment: async engine, one advisory lock so concurrent starts migrate once."""

from __future__ import annotations

import asyncio
import time

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from core.models import Base

MIGRATION_LOCK = 7_384_001  # pg_advisory_lock key shared by every gateway process
LOCK_POLL_S = 0.25  # while another instance migrates

config = context.config
target_metadata = Base.metadata


def _take_lock(connection: Connection) -> None:
    """The session-level migration lock, polled rather than waited for: a session blocked in
    pg_advisory_lock holds a snapshot for as long as it waits, and CREATE INDEX CONCURRENTLY
    (0780, 0790) waits for every older snapshot, so the migrating instance and an instance
    starting beside it would wait for each other (PostgreSQL then kills one: "deadlock
    detected"). Between tries this session holds no transaction, hence no snapshot."""
    while True:
        got = connection.execute(
            text("SELECT pg_try_advisory_lock(:k)"), {"k": MIGRATION_LOCK}
        ).scalar()
        connection.commit()  # the lock is per session; alembic then owns the transactions
        if got:
            return
        time.sleep(LOCK_POLL_S)


def _run(connection: Connection) -> None:
    _take_lock(connection)
    try:
        context.configure(
            connection=connection, target_metadata=target_metadata, transaction_per_migration=True
        )
        with context.begin_transaction():
            context.run_migrations()
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
        connection.commit()


async def _run_async() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
