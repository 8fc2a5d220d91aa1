"""Helpers for the tests of admin management (`/api/v1/admins`, `/api/v1/roles`): admins and
their tokens, audit rows, a race at the managers' advisory lock, and Redis through a proxy the
test can cut."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from config.settings import Settings
from tests import tcp_proxy
from tests.helpers import Admin, eventually, login, make_admin
from tests.tcp_proxy import CuttableProxy

MANAGERS_LOCK = "hashtext('admins:manage')"
OUTAGE = 1_000_000  # refusals: an outage that lasts until `restore()`


async def admin_id(pool: asyncpg.Pool, username: str) -> int:
    value = await pool.fetchval("SELECT id FROM admin_users WHERE username = $1", username)
    assert isinstance(value, int)
    return value


async def manager(client: TestClient, role: str = "admin") -> tuple[Admin, str]:
    """A new admin with `role` (by default the superuser one) and a fresh access token."""
    app = client.server.app
    assert app is not None
    admin = await make_admin(app, role)
    return admin, (await login(client, admin))["access_token"]


async def audit_rows(pool: asyncpg.Pool, action: str, target: str) -> list[asyncpg.Record]:
    return await pool.fetch(  # type: ignore[no-any-return]
        "SELECT actor_type, actor, details FROM audit_log WHERE action = $1 AND target = $2 "
        "ORDER BY id",
        action,
        target,
    )


async def ok(resp: ClientResponse, status: int = 200) -> dict[str, Any]:
    body = await resp.json()
    assert resp.status == status, body
    return body  # type: ignore[no-any-return]


# Sessions waiting for the managers' lock: an advisory lock on one bigint keeps its high half
# in classid, its low half in objid, and objsubid 1.
WAITERS = f"""
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND classid::bigint = ({MANAGERS_LOCK}::bigint >> 32) & 4294967295
  AND objid::bigint = {MANAGERS_LOCK}::bigint & 4294967295
"""


async def race(
    client: TestClient, pool: asyncpg.Pool, first: Any, second: Any
) -> list[ClientResponse]:
    """Send both requests while the test holds the managers' lock, wait until both wait for
    it inside the database, then let them go: they pass authentication together and meet at
    the lock, which is what a real race looks like at its worst."""
    async with pool.acquire() as holder:
        await holder.execute(f"SELECT pg_advisory_lock({MANAGERS_LOCK})")
        try:
            tasks = [asyncio.ensure_future(first), asyncio.ensure_future(second)]
            await eventually(lambda: pool.fetchval(WAITERS), until=lambda waiting: waiting == 2)
        finally:
            await holder.execute(f"SELECT pg_advisory_unlock({MANAGERS_LOCK})")
    return list(await asyncio.gather(*tasks))


async def redis_proxy(settings: Settings) -> tuple[CuttableProxy, str]:
    """A started proxy to the test Redis (TCP or the embedded engine's socket), and the
    REDIS_URL that goes through it."""
    assert settings.redis_url is not None
    proxy, via = tcp_proxy.redis_proxy(settings.redis_url)
    return proxy, via(await proxy.start())
