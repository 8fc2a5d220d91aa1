"""`/api/v1/audit-log`: who changed what (core.audit), newest first and paged, filtered by
actor, action, target and time. Permission `audit:read` (the support role holds it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from core import audit
from core.errors import ValidationFailed
from gateway.api import ApiRoutes, json_response, validate
from gateway.keys import PG_POOL

routes = ApiRoutes(tag="audit")
MAX_ID = 2**63 - 1


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actor: str | None = Field(default=None, min_length=1, max_length=128)
    action: str | None = Field(default=None, min_length=1, max_length=64)
    target: str | None = Field(default=None, min_length=1, max_length=256)
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    before: int | None = Field(default=None, ge=1, le=MAX_ID)
    limit: int = Field(default=50, ge=1, le=audit.MAX_PAGE)


class AuditEntryOut(BaseModel):
    id: int
    at: str
    actor_type: str
    actor: str
    action: str
    target: str
    details: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditEntryOut]
    next_before: int | None


def _entry(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "at": row["at"].isoformat() if isinstance(row["at"], datetime) else row["at"]}


@routes.get(
    "/api/v1/audit-log",
    permission="audit:read",
    response=AuditPage,
    summary="The audit log, newest first: who (an admin, a channel, the system, a customer, "
    "an agent) changed what",
    query=(
        ("actor", "an admin's username, a channel, an MSISDN or an agent code"),
        ("action", "e.g. customer.locked, push_device.registered, outbox.replayed"),
        ("target", "what was changed: an id, an MSISDN, an agent code"),
        ("since", "ISO-8601 with a time zone: entries at or after"),
        ("until", "ISO-8601 with a time zone: entries before"),
        ("before", "page on: the next_before of the previous page"),
        ("limit", f"1 to {audit.MAX_PAGE}, default 50"),
    ),
)
async def list_audit(request: web.Request) -> web.StreamResponse:
    query = validate(AuditQuery, dict(request.query))
    if query.since is not None and query.until is not None and query.since >= query.until:
        raise ValidationFailed(
            "The request is not valid",
            errors=[{"field": "until", "problem": "must be after since"}],
        )
    rows = await audit.search(
        request.app[PG_POOL],
        actor=query.actor,
        action=query.action,
        target=query.target,
        since=query.since,
        until=query.until,
        before_id=query.before,
        limit=query.limit,
    )
    next_before = rows[-1]["id"] if len(rows) == query.limit else None
    return json_response({"items": [_entry(r) for r in rows], "next_before": next_before})
