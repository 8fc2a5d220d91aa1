"""Roles and their permissions (tables from migration 0001): list the permissions, list, read,
create, change and delete roles. Migrations still add permissions (a new code needs code that
checks it); which role holds which of them is the operators' to say. Every change is audited
with the acting admin's username and the permission lists before and after.

Rules:
- a name is 2 to 64 of `a-z`, `0-9`, `_` and `-` (ASCII only: no look-alike letters); a
  description is at most DESCRIPTION_MAX characters, without control or invisible formatting
  characters; a role grants at most MAX_PERMISSIONS codes, each one in `permissions`;
- a superuser role (`admin`, from migration 0001) grants every permission, present and future:
  it cannot be changed or deleted, and none is made here;
- a role cannot be deleted while any admin, active or not, holds it (the deletion would take
  it from them unseen);
- a change that takes `admins:manage` away from a role is refused when it would leave no active
  admin who may manage admins, or take it from the acting admin themselves (the rules of
  core.admins, for the same reason).

Every change takes core.admins' MANAGERS_LOCK, so it is serialised with every change to admins
that can take `admins:manage` away (two changes that are each fine alone cannot together lock
the bank out), and with role assignments (a role being deleted cannot gain a holder meanwhile).
The role's row is locked too (FOR UPDATE), so that an admin created with it meanwhile
(core.identity, which takes no advisory lock) waits for the change, or is seen by it.

Tokens carry the permissions: a change that takes permissions away must end the sessions of the
role's holders. `update_role` names them (`RoleChange.cut`) and locks their rows, as a login
does, so a login in flight finishes before (and its tokens are cut) or starts after (and reads
the new permissions). The caller owns the transaction and ends the sessions: core knows nothing
of tokens.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import asyncpg

from core.admins import MANAGE, MANAGERS_LOCK, void_former_managers_tokens
from core.audit import record
from core.errors import AlreadyExists, Conflict, NotFound, ValidationFailed
from core.pg import Db, connection

NAME_RE = re.compile(r"[a-z0-9_-]{2,64}")  # fullmatch; `[a-z]` in `re` is ASCII only
NAME_MAX = 64
DESCRIPTION_MAX = 500
CODE_MAX = 64  # permissions.code is varchar(64)
MAX_PERMISSIONS = 64  # migrations define 20-odd codes; a list longer than this is not a role
# GET /api/v1/roles answers every role at once; staff roles are a handful, so a bound this high
# only stops a runaway script.
MAX_ROLES = 256


@dataclass(frozen=True, slots=True)
class RoleView:
    name: str
    description: str
    is_superuser: bool
    permissions: tuple[str, ...]  # a superuser role's: every permission there is
    active_admins: int
    admins: int  # active or not: a role some admin holds cannot be deleted

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "is_superuser": self.is_superuser,
            "permissions": list(self.permissions),
            "active_admins": self.active_admins,
            "admins": self.admins,
        }


@dataclass(frozen=True, slots=True)
class RoleChange:
    role: RoleView
    # Admins whose sessions must end (their tokens carry permissions the role no longer grants),
    # in the caller's transaction and again after the commit.
    cut: tuple[int, ...]


_VIEW = """
SELECT r.name, r.description, r.is_superuser,
       CASE WHEN r.is_superuser
            THEN coalesce((SELECT array_agg(p.code ORDER BY p.code) FROM permissions p), '{}')
            ELSE coalesce((SELECT array_agg(rp.permission_code ORDER BY rp.permission_code)
                           FROM role_permissions rp WHERE rp.role_id = r.id), '{}')
       END AS permissions,
       (SELECT count(*) FROM admin_user_roles ur JOIN admin_users u ON u.id = ur.user_id
        WHERE ur.role_id = r.id AND u.is_active) AS active_admins,
       (SELECT count(*) FROM admin_user_roles ur WHERE ur.role_id = r.id) AS admins
FROM roles r
"""
_ALL = _VIEW + "ORDER BY r.name"
_ONE = _VIEW + "WHERE r.name = $1"
_LOCK_ROLE = "SELECT id, name, description, is_superuser FROM roles WHERE name = $1 FOR UPDATE"
_GRANTED = (
    "SELECT coalesce(array_agg(permission_code ORDER BY permission_code), '{}') "
    "FROM role_permissions WHERE role_id = $1"
)
# Holders' rows locked in id order, as login locks one (see the module docstring).
_LOCK_HOLDERS = """
SELECT u.id FROM admin_users u JOIN admin_user_roles ur ON ur.user_id = u.id
WHERE ur.role_id = $1 ORDER BY u.id FOR UPDATE OF u
"""
# Whether a role other than $2 lets the admin manage admins ($1 is MANAGE): a superuser role,
# or one granting MANAGE. Written out in each query so that every query is one literal.
_MANAGERS_ELSEWHERE = """
SELECT count(*) FROM admin_users u
WHERE u.is_active AND EXISTS (
    SELECT 1 FROM admin_user_roles ur JOIN roles r ON r.id = ur.role_id
    WHERE ur.user_id = u.id AND r.id <> $2 AND (r.is_superuser OR EXISTS (
        SELECT 1 FROM role_permissions rp WHERE rp.role_id = r.id AND rp.permission_code = $1)))
"""
_MANAGES_ELSEWHERE = """
SELECT EXISTS (
    SELECT 1 FROM admin_user_roles ur JOIN roles r ON r.id = ur.role_id
    WHERE ur.user_id = $3 AND r.id <> $2 AND (r.is_superuser OR EXISTS (
        SELECT 1 FROM role_permissions rp WHERE rp.role_id = r.id AND rp.permission_code = $1)))
"""
_HOLDS = "SELECT EXISTS (SELECT 1 FROM admin_user_roles WHERE user_id = $1 AND role_id = $2)"


def _view(row: asyncpg.Record) -> RoleView:
    return RoleView(
        name=row["name"],
        description=row["description"],
        is_superuser=row["is_superuser"],
        permissions=tuple(row["permissions"]),
        active_admins=row["active_admins"],
        admins=row["admins"],
    )


def _invalid(field: str, problem: str) -> ValidationFailed:
    """The shape of gateway.api's 422, so that a rule broken here reads like a bad field."""
    return ValidationFailed(f"{field}: {problem}", errors=[{"field": field, "problem": problem}])


def _check_name(name: str) -> str:
    if NAME_RE.fullmatch(name) is None:
        raise _invalid(
            "name", "must be 2 to 64 characters, each a-z, 0-9, '_' or '-' (lower case ASCII)"
        )
    return name


def _check_description(description: str) -> str:
    if len(description) > DESCRIPTION_MAX:
        raise _invalid("description", f"must be at most {DESCRIPTION_MAX} characters")
    # Cc: control characters (line breaks, escapes); Cf: invisible formatting (bidi overrides,
    # zero-width characters) that would make the text read otherwise than it is.
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in description):
        raise _invalid("description", "must not contain control or invisible formatting characters")
    return description


async def _known_codes(conn: Any, codes: list[str]) -> tuple[str, ...]:
    """`codes` sorted without repeats; ValidationFailed naming each unknown one's place."""
    if len(codes) > MAX_PERMISSIONS:
        raise _invalid("permissions", f"must list at most {MAX_PERMISSIONS} codes")
    found = {
        r["code"]
        for r in await conn.fetch(
            "SELECT code FROM permissions WHERE code = ANY($1::text[])",
            [c for c in codes if len(c) <= CODE_MAX],
        )
    }
    unknown = [(i, c) for i, c in enumerate(codes) if c not in found]
    if unknown:
        raise ValidationFailed(
            "Unknown permission " + ", ".join(repr(c[:CODE_MAX]) for _, c in unknown),
            errors=[
                {"field": f"permissions.{i}", "problem": f"unknown permission {c[:CODE_MAX]!r}"}
                for i, c in unknown
            ],
        )
    return tuple(sorted(found))


async def list_permissions(db: Db) -> list[dict[str, str]]:
    """Every permission code with its description, by code."""
    async with connection(db) as conn:
        rows = await conn.fetch("SELECT code, description FROM permissions ORDER BY code")
    return [{"code": r["code"], "description": r["description"]} for r in rows]


async def list_roles(db: Db) -> list[RoleView]:
    """Every role (at most MAX_ROLES), by name."""
    async with connection(db) as conn:
        rows = await conn.fetch(_ALL)
    return [_view(r) for r in rows]


async def get_role(db: Db, name: str) -> RoleView:
    # A name that breaks the rules names no role; never sent (a NUL would be a database error).
    if NAME_RE.fullmatch(name) is not None:
        async with connection(db) as conn:
            row = await conn.fetchrow(_ONE, name)
        if row is not None:
            return _view(row)
    raise NotFound(f"No role {name[:NAME_MAX]!r}")


async def _lock_role(conn: Any, name: str, what: str) -> asyncpg.Record:
    """The role's row, locked until the transaction ends; a superuser role is refused."""
    row = await conn.fetchrow(_LOCK_ROLE, name) if NAME_RE.fullmatch(name) else None
    if row is None:
        raise NotFound(f"No role {name[:NAME_MAX]!r}")
    if row["is_superuser"]:
        raise Conflict(
            f"{name!r} is a superuser role: it grants every permission and cannot be {what}",
            code="SUPERUSER_ROLE",
        )
    return row


async def create_role(
    db: Db, *, actor: str, name: str, description: str, permissions: list[str]
) -> RoleView:
    """A new role (AlreadyExists when the name is taken). Audited as `role.created`."""
    _check_name(name)
    _check_description(description)
    async with connection(db) as conn, conn.transaction():
        codes = await _known_codes(conn, permissions)
        await conn.execute(MANAGERS_LOCK)
        if await conn.fetchval("SELECT count(*) FROM roles") >= MAX_ROLES:
            raise Conflict(
                f"There are {MAX_ROLES} roles already; delete one first", code="TOO_MANY_ROLES"
            )
        role_id = await conn.fetchval(
            "INSERT INTO roles (name, description, is_superuser) VALUES ($1, $2, false) "
            "ON CONFLICT (name) DO NOTHING RETURNING id",
            name,
            description,
        )
        if role_id is None:
            raise AlreadyExists(f"A role named {name!r} already exists", field="name")
        await conn.executemany(
            "INSERT INTO role_permissions (role_id, permission_code) VALUES ($1, $2)",
            [(role_id, code) for code in codes],
        )
        await record(
            conn,
            actor_type="admin",
            actor=actor,
            action="role.created",
            target=name,
            details={"description": description, "permissions": list(codes)},
        )
        return await get_role(conn, name)


async def _refuse_losing_managers(conn: Any, role: asyncpg.Record, *, actor_id: int) -> None:
    """The guard rails of the module docstring, for a change that takes MANAGE from `role`."""
    if await conn.fetchval(_HOLDS, actor_id, role["id"]) and not await conn.fetchval(
        _MANAGES_ELSEWHERE, MANAGE, role["id"], actor_id
    ):
        raise Conflict(
            f"You may manage admins only through {role['name']!r}: you cannot take {MANAGE} "
            "from it yourself; another admin can",
            code="CANNOT_DEMOTE_SELF",
        )
    if await conn.fetchval(_MANAGERS_ELSEWHERE, MANAGE, role["id"]) == 0:
        raise Conflict(
            f"Every active admin who may manage admins ({MANAGE}) does so through "
            f"{role['name']!r}; taking it from the role would leave nobody able to. Give "
            f"another admin {MANAGE} first",
            code="LAST_ADMIN_MANAGER",
        )


async def update_role(
    conn: Any,
    *,
    actor_id: int,
    actor: str,
    name: str,
    permissions: list[str],
    description: str | None = None,
) -> RoleChange:
    """Replace the role's permissions with `permissions` and, unless None, its description.
    Audited as `role.updated` when something changed. In the caller's transaction.

    `RoleChange.cut` names the holders whose sessions must end: when permissions are taken
    away, and when nothing changed at all (it may be the retry of a removal whose cut-off
    failed after the commit). Permissions only added end no session: the holders' tokens lack
    them until the next refresh or login, which is not a safety problem."""
    await conn.execute(MANAGERS_LOCK)
    role = await _lock_role(conn, name, "changed")
    if description is not None:
        _check_description(description)
    codes = await _known_codes(conn, permissions)
    before: tuple[str, ...] = tuple(await conn.fetchval(_GRANTED, role["id"]))
    removed = sorted(set(before) - set(codes))
    added = sorted(set(codes) - set(before))
    new_description = role["description"] if description is None else description
    if MANAGE in removed:
        await _refuse_losing_managers(conn, role, actor_id=actor_id)
    changed = bool(removed or added) or new_description != role["description"]
    cut: tuple[int, ...] = ()
    if removed or not changed:
        cut = tuple(r["id"] for r in await conn.fetch(_LOCK_HOLDERS, role["id"]))
    if changed:
        await conn.execute(
            "DELETE FROM role_permissions WHERE role_id = $1 AND permission_code = ANY($2)",
            role["id"],
            removed,
        )
        await conn.executemany(
            "INSERT INTO role_permissions (role_id, permission_code) VALUES ($1, $2)",
            [(role["id"], code) for code in added],
        )
        details: dict[str, Any] = {"before": list(before), "after": list(codes)}
        if new_description != role["description"]:
            await conn.execute(
                "UPDATE roles SET description = $2 WHERE id = $1", role["id"], new_description
            )
            details["description"] = {"before": role["description"], "after": new_description}
        if MANAGE in removed:
            await void_former_managers_tokens(conn, list(cut))
        await record(
            conn,
            actor_type="admin",
            actor=actor,
            action="role.updated",
            target=name,
            details=details,
        )
    return RoleChange(await get_role(conn, name), cut)


async def delete_role(db: Db, *, actor: str, name: str) -> None:
    """Delete a role no admin holds (Conflict ROLE_IN_USE names how many do). Audited as
    `role.deleted` with the permissions it granted."""
    async with connection(db) as conn, conn.transaction():
        await conn.execute(MANAGERS_LOCK)
        role = await _lock_role(conn, name, "deleted")
        holders = await conn.fetchval(
            "SELECT count(*) FROM admin_user_roles WHERE role_id = $1", role["id"]
        )
        if holders:
            raise Conflict(
                f"{holders} admin(s), active or not, hold {name!r}; give them other roles first",
                code="ROLE_IN_USE",
                admins=holders,
            )
        granted = await conn.fetchval(_GRANTED, role["id"])
        await conn.execute("DELETE FROM roles WHERE id = $1", role["id"])  # permissions cascade
        await record(
            conn,
            actor_type="admin",
            actor=actor,
            action="role.deleted",
            target=name,
            details={"description": role["description"], "permissions": list(granted)},
        )
