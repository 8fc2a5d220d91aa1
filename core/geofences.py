"""Geofences and their assignment to agents, in PostgreSQL.

A fence is stored as the GeoJSON geometry it was given (plus `radius_m` for a circle) with a
version that goes up on every change, so a decision's evidence (fence id and version) always
names the exact shape it was made against. Validation is the geofence package's: what cannot be
built into a `Fence` is refused here with the reason. `load_catalog` reads everything the ingest
path needs into one immutable `FenceCatalog`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from core.devices import check_code
from core.errors import AgentNotFound, NotFound, ValidationFailed
from geofence.fences import CircleFence, Fence, FenceError, fence_feature, fence_from_geojson
from geofence.index import FenceCatalog
from geofence.schedule import Schedule, ScheduleError, parse_schedule

MAX_FENCES_PER_AGENT = 50
MAX_PAGE = 500


@dataclass(frozen=True)
class StoredFence:
    fence: Fence
    name: str
    properties: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    def feature(self) -> dict[str, Any]:
        props = {**self.properties, "name": self.name}
        return fence_feature(self.fence, props)


def build_fence(fence_id: int, version: int, feature: Any) -> Fence:
    try:
        return fence_from_geojson(fence_id, version, feature)
    except FenceError as exc:
        raise ValidationFailed(
            str(exc), errors=[{"field": "geometry", "problem": str(exc)}]
        ) from None


def _split(feature: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    props = dict(feature.get("properties") or {})
    props.pop("radius_m", None)
    props.pop("version", None)
    name = props.pop("name", "")
    if not isinstance(name, str) or len(name) > 200:
        raise ValidationFailed("properties.name must be text of at most 200 characters")
    return name, props


def _stored(row: asyncpg.Record) -> StoredFence:
    geometry = json.loads(row["geometry"])
    feature = {"type": "Feature", "geometry": geometry, "properties": {}}
    if row["radius_m"] is not None:
        feature["properties"] = {"radius_m": row["radius_m"]}
    fence = fence_from_geojson(row["id"], row["version"], feature)
    return StoredFence(
        fence, row["name"], json.loads(row["properties"]), row["created_at"], row["updated_at"]
    )


_COLUMNS = "id, name, geometry, radius_m, properties, version, created_at, updated_at"


async def create_fence(conn: asyncpg.Connection, feature: dict[str, Any]) -> StoredFence:
    """Store a GeoJSON Feature as a fence (version 1)."""
    fence = build_fence(0, 1, feature)  # validate before anything is written
    name, props = _split(feature)
    radius = fence.radius_m if isinstance(fence, CircleFence) else None
    row = await conn.fetchrow(
        f"INSERT INTO geofences (name, kind, geometry, radius_m, properties) "  # noqa: S608
        f"VALUES ($1, $2, $3::jsonb, $4, $5::jsonb) RETURNING {_COLUMNS}",
        name,
        fence.kind,
        json.dumps(fence.geometry_json()),
        radius,
        json.dumps(props),
    )
    return _stored(row)


async def update_fence(
    conn: asyncpg.Connection, fence_id: int, feature: dict[str, Any]
) -> StoredFence:
    """Replace a fence's shape and properties; its version goes up by one."""
    fence = build_fence(fence_id, 1, feature)
    name, props = _split(feature)
    radius = fence.radius_m if isinstance(fence, CircleFence) else None
    row = await conn.fetchrow(
        f"UPDATE geofences SET name = $2, kind = $3, geometry = $4::jsonb, radius_m = $5, "  # noqa: S608
        f"properties = $6::jsonb, version = version + 1, updated_at = now() "
        f"WHERE id = $1 RETURNING {_COLUMNS}",
        fence_id,
        name,
        fence.kind,
        json.dumps(fence.geometry_json()),
        radius,
        json.dumps(props),
    )
    if row is None:
        raise NotFound(f"No geofence {fence_id}", code="GEOFENCE_NOT_FOUND")
    return _stored(row)


async def get_fence(conn: asyncpg.Connection, fence_id: int) -> StoredFence:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM geofences WHERE id = $1", fence_id)  # noqa: S608
    if row is None:
        raise NotFound(f"No geofence {fence_id}", code="GEOFENCE_NOT_FOUND")
    return _stored(row)


async def list_fences(
    conn: asyncpg.Connection, *, after_id: int = 0, limit: int = 100
) -> list[StoredFence]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM geofences WHERE id > $1 ORDER BY id LIMIT $2",  # noqa: S608
        after_id,
        min(max(limit, 1), MAX_PAGE),
    )
    return [_stored(r) for r in rows]


async def assign_fences(
    conn: asyncpg.Connection,
    agent_code: str,
    fence_ids: Sequence[int],
    schedule: dict[str, Any] | None,
) -> tuple[list[int], Schedule | None]:
    """Replace an agent's fences (and schedule: None removes it). All ids must exist."""
    check_code(agent_code)
    ids = sorted(set(fence_ids))
    if len(ids) > MAX_FENCES_PER_AGENT:
        raise ValidationFailed(f"At most {MAX_FENCES_PER_AGENT} geofences per agent")
    parsed: Schedule | None = None
    if schedule is not None:
        try:
            parsed = parse_schedule(schedule)
        except ScheduleError as exc:
            raise ValidationFailed(str(exc)) from None
    async with conn.transaction():
        found = {
            r["id"] for r in await conn.fetch("SELECT id FROM geofences WHERE id = ANY($1)", ids)
        }
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFound("Unknown geofence ids", code="GEOFENCE_NOT_FOUND", missing=missing)
        # The agent row, locked against a concurrent change: an unknown code is a clear
        # AgentNotFound (the foreign keys are the last line), even with no fences to insert.
        if not await conn.fetchval(
            "SELECT 1 FROM agents WHERE code = $1 FOR KEY SHARE", agent_code
        ):
            raise AgentNotFound(f"No agent {agent_code!r}", agent_code=agent_code)
        await conn.execute("DELETE FROM agent_geofences WHERE agent_code = $1", agent_code)
        await conn.executemany(
            "INSERT INTO agent_geofences (agent_code, geofence_id) VALUES ($1, $2)",
            [(agent_code, i) for i in ids],
        )
        await conn.execute("DELETE FROM agent_schedules WHERE agent_code = $1", agent_code)
        if parsed is not None:
            await conn.execute(
                "INSERT INTO agent_schedules (agent_code, schedule) VALUES ($1, $2::jsonb)",
                agent_code,
                json.dumps(parsed.to_json()),
            )
    return ids, parsed


async def agent_fence_ids(conn: asyncpg.Connection, agent_code: str) -> list[int]:
    rows = await conn.fetch(
        "SELECT geofence_id FROM agent_geofences WHERE agent_code = $1 ORDER BY geofence_id",
        agent_code,
    )
    return [r["geofence_id"] for r in rows]


async def load_catalog(
    conn: asyncpg.Connection, previous: FenceCatalog | None = None
) -> FenceCatalog:
    """Every fence, assignment and schedule, as one immutable catalog. Fences whose id and
    version are already in `previous` are reused rather than built again."""
    known = previous.fences if previous is not None else {}
    fences: list[Fence] = []
    for row in await conn.fetch("SELECT id, version FROM geofences"):
        old = known.get(row["id"])
        if old is not None and old.version == row["version"]:
            fences.append(old)
    missing = [r for r in await conn.fetch(
        f"SELECT {_COLUMNS} FROM geofences WHERE NOT (id = ANY($1::bigint[]))",  # noqa: S608
        [f.id for f in fences],
    )]  # fmt: skip
    fences += [_stored(r).fence for r in missing]
    assignments: dict[str, list[int]] = {}
    for row in await conn.fetch("SELECT agent_code, geofence_id FROM agent_geofences"):
        assignments.setdefault(row["agent_code"], []).append(row["geofence_id"])
    schedules = {
        r["agent_code"]: parse_schedule(json.loads(r["schedule"]))
        for r in await conn.fetch("SELECT agent_code, schedule FROM agent_schedules")
    }
    return FenceCatalog.build(fences, assignments, schedules)


async def agent_fences(conn: asyncpg.Connection, agent_code: str) -> list[StoredFence]:
    """The agent's fences with their names, by id (AgentNotFound for an unknown agent)."""
    code = check_code(agent_code)
    if not await conn.fetchval("SELECT 1 FROM agents WHERE code = $1", code):
        raise AgentNotFound(f"No agent {code!r}", agent_code=code)
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM geofences WHERE id IN "  # noqa: S608
        "(SELECT geofence_id FROM agent_geofences WHERE agent_code = $1) ORDER BY id",
        code,
    )
    return [_stored(r) for r in rows]


async def fence_agents(conn: asyncpg.Connection, fence_id: int) -> list[str]:
    """The codes of the agents a fence is assigned to."""
    rows = await conn.fetch(
        "SELECT agent_code FROM agent_geofences WHERE geofence_id = $1 ORDER BY agent_code",
        fence_id,
    )
    return [r["agent_code"] for r in rows]


async def fences_of_agents(
    conn: asyncpg.Connection, agent_codes: Sequence[str]
) -> dict[str, list[StoredFence]]:
    """Many agents' fences with their names, by id, in two queries on one snapshot; each
    fence is built once however many agents hold it. Agents with none are left out."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        pairs = await conn.fetch(
            "SELECT agent_code, geofence_id FROM agent_geofences "
            "WHERE agent_code = ANY($1::text[]) ORDER BY agent_code, geofence_id",
            list(agent_codes),
        )
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM geofences WHERE id = ANY($1::bigint[])",  # noqa: S608
            sorted({r["geofence_id"] for r in pairs}),
        )
    stored = {r["id"]: _stored(r) for r in rows}
    found: dict[str, list[StoredFence]] = {}
    for row in pairs:
        found.setdefault(row["agent_code"], []).append(stored[row["geofence_id"]])
    return found
