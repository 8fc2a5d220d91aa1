"""Beem (Tanzania): JSON in, JSON out.

    {"session_id": "0021", "msisdn": "255712000111", "operator": "vodacom", "command": "initiate",
     "payload": {"request_id": "1", "response": "*150*00#"}}
    -> {"msisdn": "255712000111", "operator": "vodacom", "session_id": "0021",
        "command": "continue", "payload": {"request_id": "1", "request": "..."}}

`command` is initiate, continue or terminate; `payload.response` carries the latest input (the
dial string on initiate). The reply's `command` is continue or terminate and echoes the
`request_id`, which also identifies the hop, so a repeated callback is recognised.
"""

from __future__ import annotations

from typing import Any

from channels.ussd.base import (
    Inbound,
    Raw,
    Reply,
    UssdRequest,
    Wire,
    bad,
    dial_code,
    json_body,
    json_wire,
    looks_like_dial,
    msisdn,
    session_id,
    text,
)

NAME = "beem"
KINDS = {"initiate": "start", "continue": "continue", "terminate": "end"}


def parse(raw: Raw) -> Inbound:
    data = json_body(raw)
    sid = session_id(data, "session_id")
    phone = msisdn(data, "msisdn")
    operator = text(data, "operator", required=False) or ""
    command = text(data, "command")
    kind = KINDS.get((command or "").strip().lower())
    if kind is None:
        raise bad("command must be initiate, continue or terminate", field="command")
    payload: Any = data.get("payload")
    if not isinstance(payload, dict):
        raise bad("payload must be an object with request_id and response", field="payload")
    request_id = text(payload, "request_id", numbers=True)
    response = text(payload, "response", required=kind == "continue") or ""
    code = ""
    if kind == "start":
        code = dial_code(response, "payload.response") if looks_like_dial(response) else ""
    request = UssdRequest(
        namespace=NAME,
        session_id=sid,
        msisdn=phone,
        service_code=code,
        kind=kind,
        input=response if kind == "continue" else None,
        hop=request_id,
        detail="terminate" if kind == "end" else None,
    )
    echo = {"msisdn": data["msisdn"], "operator": operator, "request_id": request_id}
    return Inbound(request, {**echo, "session_id": sid})


def render(inbound: Inbound, reply: Reply) -> Wire:
    end = reply.end or inbound.request.kind == "end"
    return json_wire(
        {
            "msisdn": inbound.echo["msisdn"],
            "operator": inbound.echo["operator"],
            "session_id": inbound.echo["session_id"],
            "command": "terminate" if end else "continue",
            "payload": {"request_id": inbound.echo["request_id"], "request": reply.text},
        }
    )
