"""core.admins on a database of its own, where every admin is known: who counts as a manager
(a superuser role or any role granting admins:manage, and only while active), and the last
one can neither be deactivated nor lose it. Over HTTP the guard is only reachable by a race
(an actor who may manage admins is a manager too); here the actor is anyone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from core import admins
from core.errors import CoreError, NotFound
from gateway import db as dbmod


@pytest.fixture
async def pool(empty_database: str) -> AsyncIterator[asyncpg.Pool]:
    await dbmod.migrate(empty_database)
    pool = await asyncpg.create_pool(dbmod.asyncpg_url(empty_database), min_size=1, max_size=2)
    assert pool is not None
    await pool.execute("INSERT INTO roles (name, description) VALUES ('people', 'Staff admin')")
    await pool.execute(
        "INSERT INTO role_permissions (role_id, permission_code) "
        "SELECT id, 'admins:manage' FROM roles WHERE name = 'people'"
    )
    try:
        yield pool
    finally:
        await pool.close()


async def add(pool: asyncpg.Pool, username: str, role: str, *, active: bool = True) -> int:
    user_id = await pool.fetchval(
        "INSERT INTO admin_users (username, password_hash, totp_secret_enc, is_active) "
        "VALUES ($1, 'x', 'x', $2) RETURNING id",
        username,
        active,
    )
    await pool.execute(
        "INSERT INTO admin_user_roles (user_id, role_id) SELECT $1, id FROM roles WHERE name = $2",
        user_id,
        role,
    )
    assert isinstance(user_id, int)
    return user_id


async def in_tx(pool: asyncpg.Pool, change: Any, **kw: Any) -> admins.AdminView:
    async with pool.acquire() as conn, conn.transaction():
        return await change(conn, actor="tester", **kw)  # type: ignore[no-any-return]


async def refused(pool: asyncpg.Pool, change: Any, code: str, **kw: Any) -> None:
    with pytest.raises(CoreError) as caught:
        await in_tx(pool, change, **kw)
    assert caught.value.error_code == code, caught.value


async def test_the_last_manager_stays(pool: asyncpg.Pool) -> None:
    boss = await add(pool, "boss", "people")  # admins:manage through a plain role
    clerk = await add(pool, "clerk", "support")
    spare = await add(pool, "spare", "admin", active=False)  # inactive: does not count
    last = "LAST_ADMIN_MANAGER"

    await refused(pool, admins.deactivate, last, actor_id=clerk, admin_id=boss)
    await refused(pool, admins.set_roles, last, actor_id=clerk, admin_id=boss, roles=["viewer"])
    assert (await admins.get_admin(pool, boss)).roles == ("people",)
    # Keeping admins:manage through another role is fine; so is a superuser role.
    kept = await in_tx(
        pool, admins.set_roles, actor_id=clerk, admin_id=boss, roles=["viewer", "people"]
    )
    assert kept.roles == ("people", "viewer")
    superuser = await in_tx(pool, admins.set_roles, actor_id=clerk, admin_id=boss, roles=["admin"])
    assert superuser.roles == ("admin",)
    await refused(pool, admins.deactivate, last, actor_id=clerk, admin_id=boss)
    # A non-manager goes freely.
    assert not (await in_tx(pool, admins.deactivate, actor_id=boss, admin_id=clerk)).active

    # With a second active manager, the first may go.
    assert (await admins.reactivate(pool, actor="tester", admin_id=spare)).active
    assert not (await in_tx(pool, admins.deactivate, actor_id=spare, admin_id=boss)).active
    await refused(pool, admins.deactivate, "CANNOT_DEACTIVATE_SELF", actor_id=spare, admin_id=spare)
    await refused(
        pool,
        admins.set_roles,
        "CANNOT_DEMOTE_SELF",
        actor_id=spare,
        admin_id=spare,
        roles=["viewer"],
    )
    # The roles of an inactive admin may change: they manage nobody while inactive.
    demoted = await in_tx(pool, admins.set_roles, actor_id=spare, admin_id=boss, roles=["viewer"])
    assert demoted.roles == ("viewer",) and not demoted.active


async def test_unknown_admins_and_roles(pool: asyncpg.Pool) -> None:
    boss = await add(pool, "boss", "admin")
    for change, kw in [
        (admins.deactivate, {}),
        (admins.set_roles, {"roles": ["viewer"]}),
    ]:
        with pytest.raises(NotFound):
            await in_tx(pool, change, actor_id=boss, admin_id=boss + 1000, **kw)
    with pytest.raises(NotFound) as caught:
        await in_tx(pool, admins.set_roles, actor_id=boss, admin_id=boss, roles=["admin", "x", "y"])
    assert "'x', 'y'" in caught.value.message and "people" in caught.value.message
    for plain in (admins.reactivate, admins.unlock):
        with pytest.raises(NotFound):
            await plain(pool, actor="tester", admin_id=boss + 1000)
    with pytest.raises(NotFound):
        await admins.get_admin(pool, boss + 1000)
