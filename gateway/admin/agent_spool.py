"""Admin API, read only, on the agent event spool (gateway.event_spool): what waits in it, and
the entries set aside as unreadable, as this release reads them. Replaying those is the CLI's
(`gateway agents spool --replay-unreadable`): it writes, and runs where an operator watches.

    GET /api/v1/agent-event-spool              counts: entries, claimed by a writer,
                                               unreadable (by the reason recorded), how many
                                               of those this release reads
    GET /api/v1/agent-event-spool/unreadable   the unreadable entries, oldest first, paged by
                                               `cursor` (`next_cursor` of the page before)

Redis away is 503 SERVICE_UNAVAILABLE, as any dependency lost under a request."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from core.devices import EventRow
from core.errors import BadRequest, Unavailable, ValidationFailed
from gateway import event_spool as es
from gateway.agents import spool_key
from gateway.api import ApiRoutes, json_response, whole_number
from gateway.keys import REDIS, SETTINGS

routes = ApiRoutes(tag="agents")
MAX_LIMIT = 200
# A stream entry id as Redis makes them: milliseconds and a sequence number, each below 2**64
# - 1 (so the page after it has a start Redis takes).
_ENTRY_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_ID_PART_MAX = 2**64 - 2


class ProblemOut(BaseModel):
    problem: str
    entries: int


class SpoolOut(BaseModel):
    spool: int
    pending: int
    unreadable: int
    readable_now: int
    problems: list[ProblemOut]


class UnreadableOut(BaseModel):
    id: str
    spool_id: str | None
    problem: str
    problem_now: str | None
    event: dict[str, Any] | None


class UnreadablesOut(BaseModel):
    entries: list[UnreadableOut]
    next_cursor: str | None


def _spool(request: web.Request) -> es.EventSpool:
    key = spool_key(request.app[SETTINGS].redis_prefix)
    return es.EventSpool(request.app[REDIS], key, consumer="admin-api")


@routes.get(
    "/api/v1/agent-event-spool",
    response=SpoolOut,
    permission="agents:read",
    summary="The agent event spool: entries waiting, claimed, and set aside as unreadable",
)
async def spool_counts(request: web.Request) -> web.StreamResponse:
    try:
        counts = await es.counts(_spool(request))
    except es.Away as exc:
        raise Unavailable(f"Redis {exc.detail}") from None
    return json_response(
        {
            "spool": counts.spool,
            "pending": counts.pending,
            "unreadable": counts.unreadable,
            "readable_now": counts.readable_now,
            "problems": [{"problem": p, "entries": n} for p, n in counts.problems.items()],
        }
    )


def _event_json(event: EventRow | None) -> dict[str, Any] | None:
    if event is None:
        return None
    return {
        "event_id": str(event.event_id),
        "agent_code": event.agent_code,
        "kind": event.kind,
        "at": datetime.fromtimestamp(event.at, UTC).isoformat(),
        "fix_ts": None
        if event.fix_ts is None
        else datetime.fromtimestamp(event.fix_ts, UTC).isoformat(),
        "fence_id": event.fence_id,
        "fence_version": event.fence_version,
        "details": event.details or {},
    }


def _text(value: bytes | None) -> str | None:
    return None if value is None else es.shown(value)


def _entry_id(text: str) -> bool:
    match = _ENTRY_ID.fullmatch(text) if text.isascii() else None
    return match is not None and all(int(part) <= _ID_PART_MAX for part in match.groups())


@routes.get(
    "/api/v1/agent-event-spool/unreadable",
    response=UnreadablesOut,
    permission="agents:read",
    query=(
        ("cursor", "page: next_cursor of the page before (entries after it)"),
        ("limit", f"at most {MAX_LIMIT}"),
    ),
    summary="Agent event spool entries set aside as unreadable, as this release reads them",
)
async def unreadable(request: web.Request) -> web.StreamResponse:
    cursor = request.query.get("cursor") or None
    if cursor is not None and not _entry_id(cursor):
        raise BadRequest(
            "cursor is not a cursor of this list: pass next_cursor back as it was given",
            code="INVALID_CURSOR",
            field="cursor",
        )
    raw_limit = request.query.get("limit") or "50"
    limit = whole_number(raw_limit)
    if limit is None or not 1 <= limit <= MAX_LIMIT:
        raise ValidationFailed(
            f"limit must be a whole number from 1 to {MAX_LIMIT}",
            errors=[{"field": "limit", "problem": f"a whole number from 1 to {MAX_LIMIT}"}],
        )
    try:
        page = await es.unreadable_page(
            _spool(request), None if cursor is None else cursor.encode(), limit
        )
    except es.Away as exc:
        raise Unavailable(f"Redis {exc.detail}") from None
    entries = [
        {
            "id": e.entry_id.decode(),
            "spool_id": _text(e.spool_id),
            "problem": e.problem,
            "problem_now": e.problem_now,
            "event": _event_json(e.event),
        }
        for e in page
    ]
    full = len(page) == limit
    return json_response({"entries": entries, "next_cursor": entries[-1]["id"] if full else None})
