"""Managing admins (tables from migration 0001): list them, replace an admin's roles,
deactivate, reactivate, and clear a login lockout. Creating one is `core.identity.create_admin`
(shared with the CLI). Every change is audited with the acting admin's username, or as the
CLI's (`gateway admin deactivate | unlock`, actor_type "system", actor "cli").

Guard rails, so that the bank cannot lock itself out of its own gateway:
- an admin cannot deactivate themselves, nor give themselves roles without `admins:manage`;
- the last active admin who may manage admins (a role granting `admins:manage`, or a superuser
  role) cannot be deactivated nor lose it.
Every change that can take `admins:manage` away from someone runs under one transaction-level
advisory lock, `MANAGERS_LOCK`, so two of them (two managers deactivating each other) are
serialised and the second one counts the managers after the first committed. core.roles takes
the same lock for every change to a role (a role losing `admins:manage` is such a change).

The caller owns the transaction and ends the admin's sessions (gateway.auth `cut_sessions`):
core knows nothing of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from core.audit import record
from core.errors import Conflict, NotFound
from core.pg import Db, connection

MANAGE = "admins:manage"
MAX_PAGE = 100
MAX_ROLES = 16
# One lock for every change that can take MANAGE away from an admin, here and in core.roles
# (see the docstring).
MANAGERS_LOCK = "SELECT pg_advisory_xact_lock(hashtext('admins:manage'))"


@dataclass(frozen=True, slots=True)
class AdminView:
    """An admin as an operator sees them: never the password hash nor the TOTP secret."""

    id: int
    username: str
    roles: tuple[str, ...]
    active: bool
    failed_logins: int
    locked_until: datetime | None  # None unless a lockout is running now
    created_at: datetime
    updated_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "roles": list(self.roles),
            "active": self.active,
            "failed_logins": self.failed_logins,
            "locked_until": None if self.locked_until is None else self.locked_until.isoformat(),
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


_VIEW = """
SELECT u.id, u.username, u.is_active, u.failed_logins, u.created_at, u.updated_at,
       CASE WHEN u.locked_until > now() THEN u.locked_until END AS locked_until,
       coalesce(
           array_agg(r.name ORDER BY r.name) FILTER (WHERE r.name IS NOT NULL), '{}'
       ) AS roles
FROM admin_users u
LEFT JOIN admin_user_roles ur ON ur.user_id = u.id
LEFT JOIN roles r ON r.id = ur.role_id
"""
_LIST = (
    _VIEW
    + """
WHERE ($1::bigint IS NULL OR u.id < $1)
GROUP BY u.id
ORDER BY u.id DESC
LIMIT $2
"""
)
_ONE = _VIEW + "WHERE u.id = $1 GROUP BY u.id"

# A role manages admins when it is a superuser role or grants MANAGE ($1). Written out in each
# query below rather than pasted in, so that every query is one literal.
_OTHER_MANAGERS = """
SELECT count(*) FROM admin_users u
WHERE u.is_active AND u.id <> $2 AND EXISTS (
    SELECT 1 FROM admin_user_roles ur JOIN roles r ON r.id = ur.role_id
    WHERE ur.user_id = u.id AND (r.is_superuser OR EXISTS (
        SELECT 1 FROM role_permissions rp WHERE rp.role_id = r.id AND rp.permission_code = $1)))
"""
_MANAGES = """
SELECT EXISTS (
    SELECT 1 FROM admin_user_roles ur JOIN roles r ON r.id = ur.role_id
    WHERE ur.user_id = $2 AND (r.is_superuser OR EXISTS (
        SELECT 1 FROM role_permissions rp WHERE rp.role_id = r.id AND rp.permission_code = $1)))
"""
_ROLES_BY_NAME = """
SELECT r.id, r.name, (r.is_superuser OR EXISTS (
    SELECT 1 FROM role_permissions rp WHERE rp.role_id = r.id AND rp.permission_code = $1))
    AS manages
FROM roles r WHERE r.name = ANY($2)
"""


def _view(row: asyncpg.Record) -> AdminView:
    return AdminView(
        id=row["id"],
        username=row["username"],
        roles=tuple(row["roles"]),
        active=row["is_active"],
        failed_logins=row["failed_logins"],
        locked_until=row["locked_until"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def list_admins(db: Db, *, before_id: int | None = None, limit: int = 50) -> list[AdminView]:
    """Admins, newest first (by id); page with `before_id` (the last id of the previous page)."""
    assert 1 <= limit <= MAX_PAGE
    async with connection(db) as conn:
        rows = await conn.fetch(_LIST, before_id, limit)
    return [_view(r) for r in rows]


async def get_admin(db: Db, admin_id: int) -> AdminView:
    async with connection(db) as conn:
        row = await conn.fetchrow(_ONE, admin_id)
    if row is None:
        raise NotFound(f"No admin {admin_id}")
    return _view(row)


async def _lock_admin(conn: Any, admin_id: int) -> asyncpg.Record:
    """The admin's row, locked until the transaction ends (login locks it too: a login waits
    for the change, and sees it)."""
    row = await conn.fetchrow(
        "SELECT id, username, is_active FROM admin_users WHERE id = $1 FOR UPDATE", admin_id
    )
    if row is None:
        raise NotFound(f"No admin {admin_id}")
    return row


async def _refuse_last_manager(conn: Any, admin: asyncpg.Record, what: str) -> None:
    """Conflict when `admin` is the last active admin who may manage admins."""
    if not admin["is_active"] or not await conn.fetchval(_MANAGES, MANAGE, admin["id"]):
        return
    if await conn.fetchval(_OTHER_MANAGERS, MANAGE, admin["id"]) == 0:
        raise Conflict(
            f"{admin['username']!r} is the last active admin who may manage admins "
            f"({MANAGE}); {what} would leave nobody able to. Give another admin {MANAGE} first",
            code="LAST_ADMIN_MANAGER",
        )


# The unused reset tokens issued by these admins ($1) who may no longer manage admins ($2 is
# MANAGE): they may still hold them, and a token lets whoever holds it into the account.
_VOID_FORMER_MANAGERS_TOKENS = """
UPDATE admin_reset_tokens t SET revoked_at = now()
WHERE t.issued_by_id = ANY($1::bigint[]) AND t.used_at IS NULL AND t.revoked_at IS NULL
  AND NOT EXISTS (
    SELECT 1 FROM admin_user_roles ur JOIN roles r ON r.id = ur.role_id
    WHERE ur.user_id = t.issued_by_id AND (r.is_superuser OR EXISTS (
        SELECT 1 FROM role_permissions rp WHERE rp.role_id = r.id AND rp.permission_code = $2)))
"""


async def void_former_managers_tokens(conn: Any, admin_ids: list[int]) -> None:
    """After a change to roles, in its transaction: the unused reset tokens issued by those of
    `admin_ids` who may no longer manage admins die, as a deactivation's do."""
    if admin_ids:
        await conn.execute(_VOID_FORMER_MANAGERS_TOKENS, admin_ids, MANAGE)


async def set_roles(
    conn: Any, *, actor_id: int, actor: str, admin_id: int, roles: list[str]
) -> AdminView:
    """Replace the admin's roles with `roles` (at least one, each must exist: NotFound names
    the roles there are). In the caller's transaction."""
    assert roles, "the HTTP layer refuses an empty list"
    wanted = sorted(set(roles))
    await conn.execute(MANAGERS_LOCK)
    admin = await _lock_admin(conn, admin_id)
    found = await conn.fetch(_ROLES_BY_NAME, MANAGE, wanted)
    missing = sorted(set(wanted) - {r["name"] for r in found})
    if missing:
        names = await conn.fetch("SELECT name FROM roles ORDER BY name")
        raise NotFound(
            f"No role {', '.join(repr(m) for m in missing)}; roles are: "
            + ", ".join(r["name"] for r in names),
            field="roles",
        )
    before = (await get_admin(conn, admin_id)).roles
    if not any(r["manages"] for r in found):
        if admin_id == actor_id:
            raise Conflict(
                f"You cannot take {MANAGE} away from yourself; another admin can",
                code="CANNOT_DEMOTE_SELF",
            )
        await _refuse_last_manager(conn, admin, "taking it away")
    if tuple(wanted) != before:
        await conn.execute("DELETE FROM admin_user_roles WHERE user_id = $1", admin_id)
        await conn.executemany(
            "INSERT INTO admin_user_roles (user_id, role_id) VALUES ($1, $2)",
            [(admin_id, r["id"]) for r in found],
        )
        await conn.execute("UPDATE admin_users SET updated_at = now() WHERE id = $1", admin_id)
        await record(
            conn,
            actor_type="admin",
            actor=actor,
            action="admin.roles_changed",
            target=admin["username"],
            details={"before": list(before), "after": wanted},
        )
        await void_former_managers_tokens(conn, [admin_id])
    return await get_admin(conn, admin_id)


async def admin_id_named(db: Db, username: str) -> int:
    """The id of the admin with this username (any case, spaces around ignored): the CLI
    names admins by username."""
    name = username.strip().lower()
    async with connection(db) as conn:
        found = await conn.fetchval("SELECT id FROM admin_users WHERE username = $1", name)
    if found is None:
        raise NotFound(f"No admin named {name[:64]!r}")
    assert isinstance(found, int)
    return found


async def deactivate(
    conn: Any, *, actor_id: int | None, actor: str, admin_id: int, actor_type: str = "admin"
) -> AdminView:
    """The admin can no longer log in or refresh; their unused reset token dies (it must not
    come back with a reactivation), and so do the unused ones they issued as a manager (they
    may still hold them). Deactivating an inactive admin changes nothing (a
    retry is safe). `actor_id` is None for the CLI, which is no admin. In the caller's
    transaction."""
    if admin_id == actor_id:
        raise Conflict(
            "You cannot deactivate yourself; another admin can", code="CANNOT_DEACTIVATE_SELF"
        )
    await conn.execute(MANAGERS_LOCK)
    admin = await _lock_admin(conn, admin_id)
    if admin["is_active"]:
        await _refuse_last_manager(conn, admin, "deactivating them")
        await _set_active(conn, actor_type, actor, admin, active=False)
        await conn.execute(
            "UPDATE admin_reset_tokens SET revoked_at = now() "
            "WHERE (admin_id = $1 OR issued_by_id = $1) AND used_at IS NULL "
            "AND revoked_at IS NULL",
            admin_id,
        )
    return await get_admin(conn, admin_id)


async def reactivate(db: Db, *, actor: str, admin_id: int, actor_type: str = "admin") -> AdminView:
    """The admin may log in again (with the password and TOTP they had). Their old tokens
    stay revoked."""
    async with connection(db) as conn, conn.transaction():
        admin = await _lock_admin(conn, admin_id)
        if not admin["is_active"]:
            await _set_active(conn, actor_type, actor, admin, active=True)
        return await get_admin(conn, admin_id)


async def _set_active(
    conn: Any, actor_type: str, actor: str, admin: asyncpg.Record, *, active: bool
) -> None:
    await conn.execute(
        "UPDATE admin_users SET is_active = $2, updated_at = now() WHERE id = $1",
        admin["id"],
        active,
    )
    await record(
        conn,
        actor_type=actor_type,
        actor=actor,
        action="admin.reactivated" if active else "admin.deactivated",
        target=admin["username"],
    )


async def unlock(db: Db, *, actor: str, admin_id: int, actor_type: str = "admin") -> AdminView:
    """Clear a login lockout and the failure count (core.identity locks an admin out for a
    while after repeated wrong logins). Audited only when there was something to clear."""
    async with connection(db) as conn, conn.transaction():
        admin = await _lock_admin(conn, admin_id)
        cleared = await conn.fetchrow(
            "UPDATE admin_users SET failed_logins = 0, locked_until = NULL, updated_at = now() "
            "WHERE id = $1 AND (failed_logins > 0 OR locked_until IS NOT NULL) "
            "RETURNING id",
            admin_id,
        )
        if cleared is not None:
            await record(
                conn,
                actor_type=actor_type,
                actor=actor,
                action="admin.unlocked",
                target=admin["username"],
            )
        return await get_admin(conn, admin_id)
