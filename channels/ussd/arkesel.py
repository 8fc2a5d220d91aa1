"""Arkesel: JSON in, JSON out.

    {"sessionID": "a1b2", "userID": "ARKTEST", "newSession": true, "msisdn": "233244000111",
     "userData": "*928*1#", "network": "MTN"}
    -> {"sessionID": "a1b2", "userID": "ARKTEST", "msisdn": "233244000111", "message": "...",
        "continueSession": true}

`newSession` and `continueSession` are JSON booleans. The first request's `userData` is the dial
string; later ones carry only the latest input. No hop numbers.
"""

from __future__ import annotations

from channels.ussd.base import (
    Inbound,
    Raw,
    Reply,
    UssdRequest,
    Wire,
    boolean,
    dial_code,
    json_body,
    json_wire,
    msisdn,
    session_id,
    text,
)

NAME = "arkesel"


def parse(raw: Raw) -> Inbound:
    data = json_body(raw)
    sid = session_id(data, "sessionID")
    user_id = text(data, "userID", numbers=True)
    phone = msisdn(data, "msisdn")
    new = boolean(data, "newSession")
    userdata = text(data, "userData") or ""
    text(data, "network", required=False)
    request = UssdRequest(
        namespace=NAME,
        session_id=sid,
        msisdn=phone,
        service_code=dial_code(userdata, "userData") if new else "",
        kind="start" if new else "continue",
        input=None if new else userdata,
    )
    return Inbound(request, {"sessionID": sid, "userID": user_id, "msisdn": data["msisdn"]})


def render(inbound: Inbound, reply: Reply) -> Wire:
    return json_wire(
        {
            "sessionID": inbound.echo["sessionID"],
            "userID": inbound.echo["userID"],
            "msisdn": inbound.echo["msisdn"],
            "message": reply.text,
            "continueSession": not reply.end,
        }
    )
