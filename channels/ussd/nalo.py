"""Nalo Solutions: JSON in, JSON out.

    {"USERID": "NALOTest", "MSISDN": "233244000111", "USERDATA": "*920*1#", "MSGTYPE": true,
     "NETWORK": "MTN", "SESSIONID": "16590115252429751"}
    -> {"USERID": "NALOTest", "MSISDN": "233244000111", "MSG": "...", "MSGTYPE": true}

`MSGTYPE` is a JSON boolean: true on the first request (whose `USERDATA` is the dial string)
and, in the reply, true to continue and false to end. Later requests carry only the latest input
in `USERDATA`. Nalo numbers no hops, so only a closed session answers repeats from storage.
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

NAME = "nalo"


def parse(raw: Raw) -> Inbound:
    data = json_body(raw)
    sid = session_id(data, "SESSIONID")
    user_id = text(data, "USERID", numbers=True)
    phone = msisdn(data, "MSISDN")
    first = boolean(data, "MSGTYPE")
    userdata = text(data, "USERDATA") or ""
    text(data, "NETWORK", required=False)
    request = UssdRequest(
        namespace=NAME,
        session_id=sid,
        msisdn=phone,
        service_code=dial_code(userdata, "USERDATA") if first else "",
        kind="start" if first else "continue",
        input=None if first else userdata,
    )
    return Inbound(request, {"USERID": user_id, "MSISDN": data["MSISDN"]})


def render(inbound: Inbound, reply: Reply) -> Wire:
    return json_wire(
        {
            "USERID": inbound.echo["USERID"],
            "MSISDN": inbound.echo["MSISDN"],
            "MSG": reply.text,
            "MSGTYPE": not reply.end,
        }
    )
