"""Admin API for agent devices and geofences.

    POST /api/v1/geofences                     a GeoJSON Feature (a Point with properties.radius_m
                                               is a circle) -> the Feature with its id and version
    GET  /api/v1/geofences, /api/v1/geofences/{id}, PUT /api/v1/geofences/{id} (version + 1;
                                               the answer's "waypoint_push" counts the pushes
                                               queued to its agents' phones)
    PUT  /api/v1/agents/{code}/geofences       {"geofence_ids": [...], "schedule": {...} | null}
    GET  /api/v1/agents/{code}/geofences
    POST /api/v1/agents/{code}/waypoints/push  the agent's zones to its OwnTracks phones now
                                               (setWaypoints on owntracks/{code}/{device}/cmd);
                                               also done after an assignment or a fence edit
    POST /api/v1/agents/{code}/credentials     new MQTT password and device token (old ones die)
    GET  /api/v1/agents/{code}/position        live state: presence, latest fix, zone
    GET  /api/v1/agents/{code}/events, /api/v1/agent-events   newest first by the event's
                                               time (ties by id), paged by `cursor` (see
                                               _events); `before_id` still works
    GET  /api/v1/agents/{code}/decisions       the gate's decisions on the agent's device
                                               transactions (evidence, outcome), newest first
    GET  /api/v1/agent-positions               each agent's latest fix from the history
    GET  /api/v1/map                           FeatureCollection of fences and agents for a map

Collections live outside `/api/v1/agents/{code}` so they never collide with the core's
`GET /api/v1/agents/{code}`.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from core import agent_transactions, devices, geofences
from core.agents import check_code  # agent codes as the core keeps them (upper case)
from core.errors import BadRequest, ValidationFailed
from gateway.agents import QueuedPushes
from gateway.api import ApiRoutes, json_response, whole_number
from gateway.keys import AGENTS, PG_POOL, PRINCIPAL_KEY
from geofence.fences import fence_feature

routes = ApiRoutes(tag="agents")
MAX_LIMIT = 500


class FeatureIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["Feature"]
    geometry: dict[str, Any]
    properties: dict[str, Any] | None = None
    bbox: list[float] | None = None


class WaypointQueueOut(BaseModel):
    agents: int
    devices: int


class FeatureOut(BaseModel):
    type: Literal["Feature"]
    id: int | str
    geometry: dict[str, Any]
    properties: dict[str, Any]
    waypoint_push: WaypointQueueOut | None = None


class FeatureCollectionOut(BaseModel):
    type: Literal["FeatureCollection"]
    features: list[FeatureOut]


class AssignmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    geofence_ids: list[int] = Field(max_length=geofences.MAX_FENCES_PER_AGENT)
    schedule: dict[str, Any] | None = None


class AssignmentOut(BaseModel):
    agent_code: str
    geofence_ids: list[int]
    schedule: dict[str, Any] | None
    waypoint_push: WaypointQueueOut | None = None


class CredentialsOut(BaseModel):
    mqtt_username: str
    mqtt_password: str
    device_token: str


class EventOut(BaseModel):
    id: int
    agent_code: str
    kind: str
    at: str
    fix_ts: str | None
    fence_id: int | None
    fence_version: int | None
    details: dict[str, Any]


class EventsOut(BaseModel):
    events: list[EventOut]
    next_cursor: str | None
    next_before_id: int | None


class DecisionOut(BaseModel):
    id: int
    at: str
    command_id: str
    op: str
    allowed: bool
    reason: str | None
    outcome: str
    reference: str | None
    target: str | None
    evidence: dict[str, Any]


class DecisionsOut(BaseModel):
    decisions: list[DecisionOut]
    next_before_id: int | None


class PositionOut(BaseModel):
    agent_code: str
    presence: str | None = None
    fix: dict[str, Any] | None
    decision: dict[str, Any] | None = None
    zone: str | None = None


def _int_query(
    request: web.Request, name: str, default: int | None, lo: int, hi: int
) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    value = whole_number(raw)
    if value is None or not lo <= value <= hi:
        raise ValidationFailed(
            f"{name} must be a whole number from {lo} to {hi}",
            errors=[{"field": name, "problem": f"a whole number from {lo} to {hi}"}],
        )
    return value


def _fence_id(request: web.Request) -> int:
    fence_id = whole_number(request.match_info["fence_id"])
    if fence_id is None:
        raise ValidationFailed("A geofence id is a number")
    return fence_id


async def _audit(request: web.Request, action: str, target: str, details: dict[str, Any]) -> None:
    principal = request[PRINCIPAL_KEY]
    await request.app[PG_POOL].execute(
        "INSERT INTO audit_log (actor_type, actor, action, target, details) "
        "VALUES ('admin', $1, $2, $3, $4::jsonb)",
        principal.username,
        action,
        target,
        json.dumps(details),
    )


@routes.post(
    "/api/v1/geofences",
    body=FeatureIn,
    response=FeatureOut,
    status=201,
    permission="geofences:write",
    summary="Create a geofence from a GeoJSON Feature (Polygon, MultiPolygon, or a Point with "
    "properties.radius_m for a circle)",
)
async def create_geofence(request: web.Request, body: FeatureIn) -> web.StreamResponse:
    async with request.app[PG_POOL].acquire() as conn:
        stored = await geofences.create_fence(conn, body.model_dump(exclude_none=True))
    await _audit(request, "geofence.create", str(stored.fence.id), {"kind": stored.fence.kind})
    await request.app[AGENTS].fences_changed()
    return json_response(stored.feature(), status=201)


@routes.get(
    "/api/v1/geofences",
    response=FeatureCollectionOut,
    permission="agents:read",
    query=(("after_id", "page: ids above this one"), ("limit", "at most 500")),
    summary="Geofences as a FeatureCollection, by id",
)
async def list_geofences(request: web.Request) -> web.StreamResponse:
    after = _int_query(request, "after_id", 0, 0, 2**62) or 0
    limit = _int_query(request, "limit", 100, 1, MAX_LIMIT) or 100
    async with request.app[PG_POOL].acquire() as conn:
        fences = await geofences.list_fences(conn, after_id=after, limit=limit)
    return json_response({"type": "FeatureCollection", "features": [f.feature() for f in fences]})


@routes.get(
    "/api/v1/geofences/{fence_id}",
    response=FeatureOut,
    permission="agents:read",
    summary="One geofence as a GeoJSON Feature",
)
async def get_geofence(request: web.Request) -> web.StreamResponse:
    async with request.app[PG_POOL].acquire() as conn:
        stored = await geofences.get_fence(conn, _fence_id(request))
    return json_response(stored.feature())


@routes.put(
    "/api/v1/geofences/{fence_id}",
    body=FeatureIn,
    response=FeatureOut,
    permission="geofences:write",
    summary="Replace a geofence's shape and properties (its version goes up); the new zones go "
    "to its agents' OwnTracks phones in the background, counted in waypoint_push",
)
async def update_geofence(request: web.Request, body: FeatureIn) -> web.StreamResponse:
    fence_id = _fence_id(request)
    async with request.app[PG_POOL].acquire() as conn:
        stored = await geofences.update_fence(conn, fence_id, body.model_dump(exclude_none=True))
    await _audit(request, "geofence.update", str(fence_id), {"version": stored.fence.version})
    runtime = request.app[AGENTS]
    await runtime.fences_changed()
    async with request.app[PG_POOL].acquire() as conn:
        holders = await geofences.fence_agents(conn, fence_id)
    queued = await runtime.queue_waypoint_pushes(holders)
    # A foreign member (RFC 7946, 6.1): the body stays a GeoJSON Feature.
    return json_response({**stored.feature(), "waypoint_push": _queued(queued)})


def _queued(queued: QueuedPushes) -> dict[str, int]:
    return {"agents": queued.agents, "devices": queued.devices}


@routes.put(
    "/api/v1/agents/{code}/geofences",
    body=AssignmentIn,
    response=AssignmentOut,
    permission="geofences:write",
    summary="Set an agent's permitted zones (and optional schedule)",
)
async def assign_geofences(request: web.Request, body: AssignmentIn) -> web.StreamResponse:
    code = check_code(request.match_info["code"])
    async with request.app[PG_POOL].acquire() as conn:
        ids, schedule = await geofences.assign_fences(conn, code, body.geofence_ids, body.schedule)
    await _audit(request, "agent.geofences", code, {"geofence_ids": ids})
    await request.app[AGENTS].fences_changed()
    queued = await request.app[AGENTS].queue_waypoint_pushes([code])
    return json_response(
        {
            "agent_code": code,
            "geofence_ids": ids,
            "schedule": None if schedule is None else schedule.to_json(),
            "waypoint_push": _queued(queued),
        }
    )


@routes.get(
    "/api/v1/agents/{code}/geofences",
    response=AssignmentOut,
    permission="agents:read",
    summary="An agent's permitted zones and schedule",
)
async def agent_geofences(request: web.Request) -> web.StreamResponse:
    code = check_code(request.match_info["code"])
    async with request.app[PG_POOL].acquire() as conn:
        ids = await geofences.agent_fence_ids(conn, code)
    schedule = request.app[AGENTS].engine.catalog.schedule_for(code)
    return json_response(
        {
            "agent_code": code,
            "geofence_ids": ids,
            "schedule": None if schedule is None else schedule.to_json(),
        }
    )


class WaypointOut(BaseModel):
    desc: str
    lat: float
    lon: float
    rad: int
    tst: int
    rid: str


class PushFailureOut(BaseModel):
    device: str
    reason: str


class WaypointPushOut(BaseModel):
    agent_code: str
    devices: list[str]
    topics: list[str]
    waypoints: list[WaypointOut]
    failed: list[PushFailureOut]
    removed: list[str]


@routes.post(
    "/api/v1/agents/{code}/waypoints/push",
    response=WaypointPushOut,
    permission="geofences:write",
    summary="Send the agent's zones to its OwnTracks phones as a setWaypoints command "
    "(polygons as their smallest enclosing circle); devices lists the phones whose broker took "
    "it, failed the others (retried at their next report); a phone that still holds zones the "
    "agent lost gets clearWaypoints first and tombstones for them (removed lists their rids); "
    "409 NO_GEOFENCE or NO_OWNTRACKS_DEVICE",
)
async def push_waypoints(request: web.Request) -> web.StreamResponse:
    code = check_code(request.match_info["code"])
    pushed = await request.app[AGENTS].push_waypoints(code)
    await _audit(
        request, "agent.waypoints", code, {"devices": len(pushed.devices),
                                          "failed": len(pushed.failed),
                                          "waypoints": len(pushed.waypoints)},
    )  # fmt: skip
    return json_response(
        {
            "agent_code": pushed.agent_code,
            "devices": pushed.devices,
            "topics": [f"owntracks/{code}/{d}/cmd" for d in pushed.devices],
            "waypoints": [{k: v for k, v in w.items() if k != "_type"} for w in pushed.waypoints],
            "failed": [{"device": d, "reason": r} for d, r in pushed.failed],
            "removed": [f"fence-{i}" for i in pushed.removed],
        }
    )


@routes.post(
    "/api/v1/agents/{code}/credentials",
    response=CredentialsOut,
    permission="agents:write",
    summary="Issue (or rotate) a device's MQTT password and device token; old ones stop working",
)
async def issue_credentials(request: web.Request) -> web.StreamResponse:
    code = check_code(request.match_info["code"])
    async with request.app[PG_POOL].acquire() as conn:
        creds = await devices.issue_credentials(conn, code)
    await _audit(request, "agent.credentials", code, {"version": creds.version})
    return json_response(
        {
            "mqtt_username": creds.mqtt_username,
            "mqtt_password": creds.mqtt_password,
            "device_token": creds.device_token,
        }
    )


@routes.get(
    "/api/v1/agents/{code}/position",
    response=PositionOut,
    permission="agents:read",
    summary="An agent's live state: presence, latest accepted fix, last decision and zone",
)
async def agent_position(request: web.Request) -> web.StreamResponse:
    code = check_code(request.match_info["code"])
    state = await request.app[AGENTS].engine.state(code)
    return json_response(
        {
            "agent_code": code,
            "presence": state["presence"],
            "fix": state["fix"],
            "decision": state["decision"],
            "zone": state["zone"]["zone"],
        }
    )


# An events page cursor: the position (time in microseconds since the epoch, row id) of the
# last event of the page before, packed and base64url-encoded. Opaque to clients: the version
# byte lets a later release change it while the cursors handed out before still read.
_CURSOR = struct.Struct(">Bqq")
_CURSOR_VERSION = 1
_CURSOR_CHARS = -(-_CURSOR.size * 4 // 3)  # base64 of the packed bytes, padding dropped
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def event_cursor(position: devices.EventPosition) -> str:
    at_us = (position.at - _EPOCH) // _MICROSECOND
    raw = _CURSOR.pack(_CURSOR_VERSION, at_us, position.id)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def read_event_cursor(cursor: str) -> devices.EventPosition:
    """The position in `cursor`; BadRequest (400 INVALID_CURSOR) for anything this gateway did
    not hand out: a cursor is not a parameter to tune, and a wrong one must not page silently
    from somewhere else."""
    problem = BadRequest(
        "cursor is not a cursor of this list: pass next_cursor back as it was given",
        code="INVALID_CURSOR",
        field="cursor",
    )
    if len(cursor) != _CURSOR_CHARS or not cursor.isascii():
        raise problem
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, at_us, row_id = _CURSOR.unpack(raw)
        at = _EPOCH + at_us * _MICROSECOND
    except (binascii.Error, ValueError, struct.error, OverflowError):
        raise problem from None
    if (
        version != _CURSOR_VERSION
        or row_id < 1
        or event_cursor(devices.EventPosition(at, row_id)) != cursor
    ):  # one spelling per position (no trailing bits, no other alphabet)
        raise problem
    return devices.EventPosition(at, row_id)


async def _events(request: web.Request, code: str | None) -> web.StreamResponse:
    """Newest first by the event's time, ties by row id. A page's `next_cursor` (null on a
    page that is not full) carries the position of its last event; the next page holds the
    events strictly after that position. So paging is stable while events are written: each
    event comes at most once in a walk, and an event written late (deferred while PostgreSQL
    was away) comes in the walk if its time is after the page read last, in its place among
    the others; one whose place the walk has passed is seen by a walk from the top.
    `before_id` (the older form) is the position of that event: `next_before_id` passed back
    pages as `next_cursor` does."""
    raw_cursor = request.query.get("cursor")
    before = None if not raw_cursor else read_event_cursor(raw_cursor)
    before_id = _int_query(request, "before_id", None, 1, 2**62)
    if before is not None and before_id is not None:
        raise ValidationFailed(
            "Give cursor or before_id, not both",
            errors=[{"field": "before_id", "problem": "not with cursor"}],
        )
    limit = _int_query(request, "limit", 100, 1, MAX_LIMIT) or 100
    async with request.app[PG_POOL].acquire() as conn:
        rows = await devices.list_events(
            conn, agent_code=code, before=before, before_id=before_id, limit=limit
        )
    events = [
        {
            **r,
            "at": r["at"].isoformat(),
            "fix_ts": None if r["fix_ts"] is None else r["fix_ts"].isoformat(),
        }
        for r in rows
    ]
    full = len(rows) == limit
    last = devices.EventPosition(rows[-1]["at"], rows[-1]["id"]) if full else None
    return json_response(
        {
            "events": events,
            "next_cursor": None if last is None else event_cursor(last),
            "next_before_id": None if last is None else last.id,
        }
    )


EVENT_QUERY = (
    ("cursor", "page: next_cursor of the page before (events after its last one)"),
    ("before_id", "page (older form): next_before_id of the page before"),
    ("limit", "at most 500"),
)


@routes.get(
    "/api/v1/agents/{code}/events",
    response=EventsOut,
    permission="agents:read",
    query=EVENT_QUERY,
    summary="An agent's events (enter, exit, breach, online, offline), newest first by time",
)
async def agent_events(request: web.Request) -> web.StreamResponse:
    return await _events(request, check_code(request.match_info["code"]))


@routes.get(
    "/api/v1/agent-events",
    response=EventsOut,
    permission="agents:read",
    query=EVENT_QUERY,
    summary="Every agent's events, newest first by time",
)
async def all_events(request: web.Request) -> web.StreamResponse:
    return await _events(request, None)


@routes.get(
    "/api/v1/agents/{code}/decisions",
    response=DecisionsOut,
    permission="agents:read",
    query=(("before_id", "page: ids below this one"), ("limit", "at most 500")),
    summary="The geofence gate's decisions on an agent's device transactions, newest first",
)
async def agent_decisions(request: web.Request) -> web.StreamResponse:
    code = check_code(request.match_info["code"])
    before = _int_query(request, "before_id", None, 1, 2**62)
    limit = _int_query(request, "limit", 100, 1, MAX_LIMIT) or 100
    rows = await agent_transactions.list_decisions(
        request.app[PG_POOL], code, before_id=before, limit=limit
    )
    decisions = [{**r, "at": r["at"].isoformat()} for r in rows]
    next_before = decisions[-1]["id"] if len(decisions) == limit else None
    return json_response({"decisions": decisions, "next_before_id": next_before})


def _position_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "agent_code": row["agent_code"],
        "fix": {
            "lat": row["lat"],
            "lon": row["lon"],
            "ts": row["fix_ts"].timestamp(),
            "acc": row["accuracy_m"],
            "mock": row["mock"],
            "src": row["source"],
        },
        "zone": row["zone"],
    }


@routes.get(
    "/api/v1/agent-positions",
    permission="agents:read",
    query=(("codes", "comma-separated agent codes (default: all)"),),
    summary="Each agent's latest recorded fix",
)
async def positions(request: web.Request) -> web.StreamResponse:
    raw = request.query.get("codes")
    codes = None if not raw else [check_code(c.strip()) for c in raw.split(",")[:MAX_LIMIT]]
    async with request.app[PG_POOL].acquire() as conn:
        rows = await devices.latest_positions(conn, codes)
    return json_response({"positions": [_position_json(r) for r in rows]})


@routes.get(
    "/api/v1/map",
    response=FeatureCollectionOut,
    permission="agents:read",
    summary="Fences and agents' latest positions as one GeoJSON FeatureCollection",
)
async def map_collection(request: web.Request) -> web.StreamResponse:
    catalog = request.app[AGENTS].engine.catalog
    async with request.app[PG_POOL].acquire() as conn:
        rows = await devices.latest_positions(conn)
    features: list[dict[str, Any]] = []
    for fence in sorted(catalog.fences.values(), key=lambda f: f.id):
        feature = fence_feature(fence, {"kind": "geofence"})
        feature["id"] = f"geofence-{fence.id}"
        feature["properties"]["geofence_id"] = fence.id
        features.append(feature)
    for row in rows:
        features.append(
            {
                "type": "Feature",
                "id": f"agent-{row['agent_code']}",
                "geometry": {"type": "Point", "coordinates": [row["lon"], row["lat"]]},
                "properties": {
                    "kind": "agent",
                    "agent_code": row["agent_code"],
                    "fix_ts": row["fix_ts"].isoformat(),
                    "accuracy_m": row["accuracy_m"],
                    "zone": row["zone"],
                    "geofence_ids": list(catalog.assignments.get(row["agent_code"], ())),
                },
            }
        )
    return json_response({"type": "FeatureCollection", "features": features})
