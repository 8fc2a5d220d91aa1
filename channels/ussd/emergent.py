"""Emergent (Interpay): Hubtel-like JSON.

    {"SessionId": "e1", "Mobile": "233244000111", "USERID": "384", "Operator": "mtn",
     "Type": "Initiation", "Message": "*384#"}
    -> {"Message": "...", "Type": "Response"}     ("Release" ends the session)

`USERID` is the service code; `Type` (any case) is Initiation, Response or Release; the
Initiation `Message` is the dial string, later ones the latest input. No hop numbers.
"""

from __future__ import annotations

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

NAME = "emergent"
KINDS = {"initiation": "start", "response": "continue", "release": "end"}


def parse(raw: Raw) -> Inbound:
    data = json_body(raw)
    kind_text = text(data, "Type")
    kind = KINDS.get((kind_text or "").strip().lower())
    if kind is None:
        raise bad("Type must be Initiation, Response or Release", field="Type")
    sid = session_id(data, "SessionId")
    phone = msisdn(data, "Mobile")
    service = text(data, "USERID", numbers=True)
    message = text(data, "Message", required=kind == "continue") or ""
    text(data, "Operator", required=False)
    code = ""
    if kind == "start":
        code = dial_code(message if looks_like_dial(message) else service, "USERID")
    request = UssdRequest(
        namespace=NAME,
        session_id=sid,
        msisdn=phone,
        service_code=code,
        kind=kind,
        input=message if kind == "continue" else None,
        detail="release" if kind == "end" else None,
    )
    return Inbound(request)


def render(inbound: Inbound, reply: Reply) -> Wire:
    end = reply.end or inbound.request.kind == "end"
    return json_wire({"Message": reply.text, "Type": "Release" if end else "Response"})
