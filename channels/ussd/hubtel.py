"""Hubtel programmable services: JSON in, JSON out.

    {"Type": "Initiation", "Mobile": "233200585542", "SessionId": "3c79...", "ServiceCode": "384",
     "Message": "*384*1*2#", "Operator": "vodafone", "Sequence": 1, "ClientState": ""}
    -> {"Type": "Response", "Message": "...", "ClientState": ""}     ("Release" ends the session)

`Type` comes in any case: Initiation starts (its `Message` is the whole dial string, so
`*384*1*2#` prefills the path), Response continues with the latest input only, Release and
Timeout end the session. `Sequence` numbers the hops, so a repeated callback is recognised.
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

NAME = "hubtel"
KINDS = {"initiation": "start", "response": "continue", "release": "end", "timeout": "end"}


def parse(raw: Raw) -> Inbound:
    data = json_body(raw)
    kind_text = text(data, "Type")
    assert kind_text is not None
    kind = KINDS.get(kind_text.strip().lower())
    if kind is None:
        raise bad("Type must be Initiation, Response, Release or Timeout", field="Type")
    sid = session_id(data, "SessionId")
    phone = msisdn(data, "Mobile")
    message = text(data, "Message", required=kind != "end") or ""
    sequence = data.get("Sequence")
    if sequence is not None and not (
        isinstance(sequence, int | str)
        and str(sequence).isascii()  # isdigit() alone takes "²", which int() refuses
        and str(sequence).isdigit()
        and len(str(sequence)) < 6
    ):
        raise bad("Sequence must be a number", field="Sequence")
    client_state = text(data, "ClientState", required=False) or ""
    if kind == "start":
        code = message if looks_like_dial(message) else text(data, "ServiceCode", numbers=True)
    else:
        code = text(data, "ServiceCode", required=False, numbers=True) or ""
    request = UssdRequest(
        namespace=NAME,
        session_id=sid,
        msisdn=phone,
        service_code=dial_code(code, "ServiceCode") if code else "",
        kind=kind,
        input=message if kind == "continue" else None,
        hop=None if sequence is None else str(int(sequence)),
        detail=kind_text.strip().lower() if kind == "end" else None,
    )
    return Inbound(request, {"ClientState": client_state})


def render(inbound: Inbound, reply: Reply) -> Wire:
    if inbound.request.kind == "end":
        return json_wire({"Type": "Release", "Message": "", "ClientState": ""})
    return json_wire(
        {
            "Type": "Release" if reply.end else "Response",
            "Message": reply.text,
            "ClientState": "",
        }
    )
