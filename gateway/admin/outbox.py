"""`/api/v1/outbox/dead-letters`: messages the dispatcher gave up on (a permanent refusal or
too many attempts), newest first and paged, and replaying them: one or all (of a channel) back
to pending with a fresh attempt count. Reading needs `messages:read`, replaying
`messages:replay`; every replay is audited."""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from core import outbox
from core.errors import NotFound, ValidationFailed
from gateway.api import ApiRoutes, json_response, whole_number
from gateway.keys import DISPATCHER, PG_POOL, PRINCIPAL_KEY

routes = ApiRoutes(tag="outbox")
DEFAULT_PAGE = 50
Channel = Literal["sms", "email", "push", "log"]


class DeadLetterOut(BaseModel):
    id: int
    channel: str
    recipient: str
    kind: str
    template: str | None
    body: str | None
    attempts: int
    last_error: str | None
    transfer_reference: str | None
    status: str
    created_at: str


class DeadLettersOut(BaseModel):
    messages: list[DeadLetterOut]
    next_before: int | None


class ReplayAllIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: Channel | None = None


class ReplayedOut(BaseModel):
    replayed: int


def _int_query(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    value = whole_number(raw)
    if value is None:
        raise ValidationFailed(f"{name} is a positive whole number", field=name)
    return value


@routes.get(
    "/api/v1/outbox/dead-letters",
    response=DeadLettersOut,
    permission="messages:read",
    summary="Dead-lettered outbox messages, newest first; page with ?before=<next_before>",
    query=(
        ("limit", "messages per page, 1-100 (default 50)"),
        ("before", "a message id: messages older than it"),
        ("channel", "only this channel (sms, email, push, log)"),
    ),
)
async def list_dead_letters(request: web.Request) -> web.StreamResponse:
    limit = _int_query(request, "limit", DEFAULT_PAGE)
    assert limit is not None
    page = await outbox.dead_letters(
        request.app[PG_POOL],
        limit=limit,
        before=_int_query(request, "before", None),
        channel=request.query.get("channel") or None,
    )
    return json_response(
        {
            "messages": [m.as_json() for m in page],
            "next_before": page[-1].id if len(page) == limit else None,
        }
    )


@routes.post(
    "/api/v1/outbox/dead-letters/{id}/replay",
    response=DeadLetterOut,
    permission="messages:replay",
    summary="Send one dead letter again: back to pending with a fresh attempt count "
    "(409 when it is not dead)",
)
async def replay_dead_letter(request: web.Request) -> web.StreamResponse:
    raw = request.match_info["id"]
    message_id = whole_number(raw)
    if message_id is None:
        raise NotFound(f"No outbox message {raw[:32]!r}")
    message = await outbox.replay_dead_letter(
        request.app[PG_POOL], message_id, actor=request[PRINCIPAL_KEY].username
    )
    _wake(request)
    return json_response(message.as_json())


@routes.post(
    "/api/v1/outbox/dead-letters/replay",
    body=ReplayAllIn,
    response=ReplayedOut,
    permission="messages:replay",
    summary="Send every dead letter (of one channel, when given) again",
)
async def replay_all_dead_letters(request: web.Request, body: ReplayAllIn) -> web.StreamResponse:
    count = await outbox.replay_dead_letters(
        request.app[PG_POOL], actor=request[PRINCIPAL_KEY].username, channel=body.channel
    )
    if count:
        _wake(request)
    return json_response({"replayed": count})


def _wake(request: web.Request) -> None:
    dispatcher = request.app.get(DISPATCHER)  # this instance's; others poll within a second
    if dispatcher is not None:
        dispatcher.wake()
