"""Menus in PostgreSQL: one working draft per menu and its immutable published versions.

Publishing copies the draft into version N+1 and points the menu at it; rolling back points the
menu at an earlier version (versions are never edited, a trigger refuses it). The caller owns the
transaction: every function takes an asyncpg connection inside `conn.transaction()`, and writes
its audit row in that same transaction.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from core.errors import AlreadyExists, Conflict, NotFound


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: int
    published_at: datetime
    published_by: str
    checksum: str


@dataclass(frozen=True, slots=True)
class MenuRow:
    id: int
    name: str
    draft: dict[str, Any]
    draft_updated_at: datetime
    draft_updated_by: str
    current_version: int | None
    service_code: str | None
    versions: tuple[VersionInfo, ...] = ()


def checksum(document: Any) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def _audit(
    conn: asyncpg.Connection, actor: str, action: str, target: str, **details: Any
) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor_type, actor, action, target, details)"
        " VALUES ($1, $2, $3, $4, $5::jsonb)",
        "system" if actor == "system" else "admin",
        actor,
        action,
        target,
        json.dumps(details),
    )


async def _versions(conn: asyncpg.Connection, menu_id: int) -> tuple[VersionInfo, ...]:
    rows = await conn.fetch(
        "SELECT version, published_at, published_by, checksum FROM menu_versions"
        " WHERE menu_id = $1 ORDER BY version",
        menu_id,
    )
    return tuple(VersionInfo(r[0], r[1], r[2], r[3]) for r in rows)


def _row(record: asyncpg.Record, versions: tuple[VersionInfo, ...] = ()) -> MenuRow:
    return MenuRow(
        id=record["id"],
        name=record["name"],
        draft=_json(record["draft"]),
        draft_updated_at=record["draft_updated_at"],
        draft_updated_by=record["draft_updated_by"],
        current_version=record["current_version"],
        service_code=record["service_code"],
        versions=versions,
    )


MAX_VERSION = 2**31 - 1  # menu_versions.version is int4

_COLUMNS = "id, name, draft, draft_updated_at, draft_updated_by, current_version, service_code"


async def save_draft(
    conn: asyncpg.Connection, name: str, document: dict[str, Any], actor: str
) -> tuple[MenuRow, bool]:
    """Create the menu or replace its draft. Returns the row and whether it was created."""
    record = await conn.fetchrow(
        f"INSERT INTO menus (name, draft, draft_updated_by) VALUES ($1, $2::jsonb, $3)"  # noqa: S608
        f" ON CONFLICT (name) DO UPDATE SET draft = EXCLUDED.draft,"
        f" draft_updated_at = now(), draft_updated_by = EXCLUDED.draft_updated_by"
        f" RETURNING {_COLUMNS}, (xmax = 0) AS created",
        name,
        json.dumps(document),
        actor,
    )
    assert record is not None
    await _audit(conn, actor, "menu.draft", name)
    return _row(record, await _versions(conn, record["id"])), bool(record["created"])


async def get_menu(conn: asyncpg.Connection, menu_id: int, *, lock: bool = False) -> MenuRow:
    suffix = " FOR UPDATE" if lock else ""
    record = await conn.fetchrow(f"SELECT {_COLUMNS} FROM menus WHERE id = $1{suffix}", menu_id)  # noqa: S608
    if record is None:
        raise NotFound(f"No menu {menu_id}", code="MENU_NOT_FOUND")
    return _row(record, await _versions(conn, menu_id))


async def find_menu(conn: asyncpg.Connection, name: str) -> MenuRow | None:
    record = await conn.fetchrow(f"SELECT {_COLUMNS} FROM menus WHERE name = $1", name)  # noqa: S608
    return None if record is None else _row(record, await _versions(conn, record["id"]))


async def list_menus(conn: asyncpg.Connection) -> list[MenuRow]:
    records = await conn.fetch(f"SELECT {_COLUMNS} FROM menus ORDER BY name")  # noqa: S608
    return [_row(r, await _versions(conn, r["id"])) for r in records]


async def publish(
    conn: asyncpg.Connection, menu: MenuRow, document: dict[str, Any], actor: str
) -> int:
    """Store `document` (the validated draft) as the next version and make it current."""
    version = (menu.versions[-1].version if menu.versions else 0) + 1
    await conn.execute(
        "INSERT INTO menu_versions (menu_id, version, document, checksum, published_by)"
        " VALUES ($1, $2, $3::jsonb, $4, $5)",
        menu.id,
        version,
        json.dumps(document),
        checksum(document),
        actor,
    )
    await _point(conn, menu, version, document.get("service_code"))
    await _audit(conn, actor, "menu.publish", menu.name, version=version)
    return version


async def rollback(conn: asyncpg.Connection, menu: MenuRow, version: int, actor: str) -> None:
    if version not in {v.version for v in menu.versions}:
        raise NotFound(f"Menu {menu.name!r} has no version {version}", code="VERSION_NOT_FOUND")
    if version == menu.current_version:
        raise Conflict(f"Version {version} is already current", code="ALREADY_CURRENT")
    document = await version_document(conn, menu.name, version)
    await _point(conn, menu, version, document.get("service_code"))
    await _audit(
        conn, actor, "menu.rollback", menu.name, version=version, previous=menu.current_version
    )


async def _point(
    conn: asyncpg.Connection, menu: MenuRow, version: int, service_code: str | None
) -> None:
    try:
        async with conn.transaction():  # a savepoint: a clash leaves the outer one usable
            await conn.execute(
                "UPDATE menus SET current_version = $2, service_code = $3 WHERE id = $1",
                menu.id,
                version,
                service_code,
            )
    except asyncpg.UniqueViolationError:
        raise AlreadyExists(
            f"Another menu already answers {service_code}", code="SERVICE_CODE_TAKEN"
        ) from None


async def version_document(conn: asyncpg.Connection, name: str, version: int) -> dict[str, Any]:
    # The column is int4: asyncpg refuses to encode a bigger number (an OverflowError, a 500
    # for an admin's simulate request), and no such version can exist.
    if not 1 <= version <= MAX_VERSION:
        raise NotFound(f"Menu {name!r} has no version {version}", code="VERSION_NOT_FOUND")
    value = await conn.fetchval(
        "SELECT v.document FROM menu_versions v JOIN menus m ON m.id = v.menu_id"
        " WHERE m.name = $1 AND v.version = $2",
        name,
        version,
    )
    if value is None:
        raise NotFound(f"Menu {name!r} has no version {version}", code="VERSION_NOT_FOUND")
    return dict(_json(value))


async def current_documents(conn: asyncpg.Connection) -> list[tuple[str, int, dict[str, Any]]]:
    rows = await conn.fetch(
        "SELECT m.name, v.version, v.document FROM menus m"
        " JOIN menu_versions v ON v.menu_id = m.id AND v.version = m.current_version"
    )
    return [(r[0], r[1], dict(_json(r[2]))) for r in rows]


async def current_of(conn: asyncpg.Connection, name: str) -> tuple[int, dict[str, Any]] | None:
    row = await conn.fetchrow(
        "SELECT v.version, v.document FROM menus m"
        " JOIN menu_versions v ON v.menu_id = m.id AND v.version = m.current_version"
        " WHERE m.name = $1",
        name,
    )
    return None if row is None else (row[0], dict(_json(row[1])))
