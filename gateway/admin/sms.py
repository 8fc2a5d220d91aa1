"""`/api/v1/sms`: stored SMS messages (PINs masked) with search and paging, and the state of
each SMPP bind (bound or not, window in use, TPS, last error). Permission `messages:read`."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from core.errors import NotFound, ValidationFailed
from core.msisdn import normalise_msisdn
from core.sms_messages import MAX_PAGE, get_message, search_messages
from gateway.api import ApiRoutes, json_response, validate, whole_number
from gateway.keys import PG_POOL, SETTINGS, SMS_CHANNEL

routes = ApiRoutes(tag="sms")
PERMISSION = "messages:read"
MAX_ID = 2**63 - 1


class MessageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    direction: Literal["mo", "mt"] | None = None
    status: (
        Literal[
            "received",
            "processing",
            "processed",
            "queued",
            "submitted",
            "delivered",
            "failed",
            "expired",
        ]
        | None
    ) = None
    msisdn: str | None = Field(default=None, max_length=20)
    q: str | None = Field(default=None, min_length=1, max_length=100)
    before: int | None = Field(default=None, ge=1, le=MAX_ID)
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)


class PartOut(BaseModel):
    part_no: int
    message_id: str
    status: str
    error: str | None


class MessageOut(BaseModel):
    id: int
    direction: str
    smsc: str
    msisdn: str
    short_code: str
    body: str
    encoding: str
    parts: int
    complete: bool
    status: str
    error: str | None
    ref: str | None
    attempts: int
    created_at: str
    updated_at: str
    submitted_parts: list[PartOut] | None = None


class MessagePage(BaseModel):
    items: list[MessageOut]
    next_before: int | None


class BindOut(BaseModel):
    name: str
    system_id: str
    host: str
    port: int
    bind_type: str
    state: str
    since: str
    window_size: int
    window_in_use: int
    tps_configured: float
    tps_current: float
    tps_achieved: float
    last_error: str | None
    last_error_at: str | None
    retry_at: str | None
    connects: int
    submitted: int
    throttled: int
    rejected: int
    timeouts: int
    received: int
    nacks_sent: int


class BindsOut(BaseModel):
    enabled: bool
    binds: list[BindOut]


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _when(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def _message(row: dict[str, Any]) -> dict[str, Any]:
    return {key: _iso(value) for key, value in row.items()}


@routes.get(
    "/api/v1/sms/messages",
    permission=PERMISSION,
    response=MessagePage,
    summary="Stored SMS messages, newest first (PINs masked)",
    query=(
        ("direction", "mo or mt"),
        ("status", "received, processing, processed, queued, submitted, delivered, ..."),
        ("msisdn", "the customer's number, in any accepted form"),
        ("q", "text the (masked) body contains"),
        ("before", "page on: the next_before of the previous page"),
        ("limit", f"1 to {MAX_PAGE}, default 50"),
    ),
)
async def list_messages(request: web.Request) -> web.StreamResponse:
    query = validate(MessageQuery, dict(request.query))
    msisdn = None
    if query.msisdn is not None:
        # The core's rules, as the channel reads a sender (`address.to_e164`): `00254...` is
        # international, and only ASCII digits make a number.
        try:
            msisdn = normalise_msisdn(query.msisdn, request.app[SETTINGS].default_country_code)
        except ValidationFailed:
            raise ValidationFailed(
                "The request is not valid",
                errors=[{"field": "msisdn", "problem": "not a phone number"}],
            ) from None
    rows = await search_messages(
        request.app[PG_POOL],
        direction=query.direction,
        status=query.status,
        msisdn=msisdn,
        text=query.q,
        before_id=query.before,
        limit=query.limit,
    )
    next_before = rows[-1]["id"] if len(rows) == query.limit else None
    return json_response({"items": [_message(r) for r in rows], "next_before": next_before})


@routes.get(
    "/api/v1/sms/messages/{message_id}",
    permission=PERMISSION,
    response=MessageOut,
    summary="One SMS message with the SMSC ids and receipts of its parts",
)
async def show_message(request: web.Request) -> web.StreamResponse:
    message_id = whole_number(request.match_info["message_id"])
    if message_id is None or message_id < 1:
        raise ValidationFailed(
            "The request is not valid",
            errors=[{"field": "message_id", "problem": "must be a positive integer"}],
        )
    row = await get_message(request.app[PG_POOL], message_id)
    if row is None:
        raise NotFound("No such message")
    return json_response(_message(row))


@routes.get(
    "/api/v1/sms/binds",
    permission=PERMISSION,
    response=BindsOut,
    summary="The state of each SMPP bind",
)
async def list_binds(request: web.Request) -> web.StreamResponse:
    channel = request.app.get(SMS_CHANNEL)
    if channel is None:
        return json_response({"enabled": False, "binds": []})
    binds = []
    for status in channel.bind_statuses():
        item = asdict(status)
        item["since"] = _when(status.since)
        item["last_error_at"] = _when(status.last_error_at)
        item["retry_at"] = _when(status.retry_at)
        binds.append(item)
    return json_response({"enabled": True, "binds": binds})
