"""Infobip USSD gateway to third-party REST: the path carries the session and the event.

    POST /ussd/infobip/session/<id>/start     {"msisdn", "imsi", "text", "shortCode",
                                                "language", "optional", "ussdGwId"}
    POST /ussd/infobip/session/<id>/response  {"msisdn", "text", ...}
    PUT  /ussd/infobip/session/<id>/end       {"reason", "exitCode"}     (POST accepted too)
    GET  /ussd/infobip/session/<id>/status
    -> {"ussdMenu": "...", "shouldClose": false, "responseExitCode": 200, "responseMessage": ""}

`end` is acknowledged with `{"responseExitCode": 200, "responseMessage": ""}`, `status` with
`{"sessionActive": bool, ...}`. `text` carries the latest input only (on start, the dial string
when the user dialled one); `language` (when given) picks the menu language. No hop numbers.
"""

from __future__ import annotations

import re

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
    language,
    looks_like_dial,
    msisdn,
    session_id,
    text,
)
from core.errors import BadRequest

NAME = "infobip"
_PATH = re.compile(r"/?session/([^/]{1,128})/(start|response|end|status)/?")
METHODS = {"start": {"POST"}, "response": {"POST"}, "end": {"PUT", "POST"}, "status": {"GET"}}


def parse(raw: Raw) -> Inbound:
    m = _PATH.fullmatch(raw.path)
    if m is None:
        raise bad("Infobip calls /ussd/infobip/session/<id>/start|response|end|status")
    event = m.group(2)
    if raw.method not in METHODS[event]:
        raise bad(f"{event} takes {' or '.join(sorted(METHODS[event]))}", method=raw.method)
    sid = session_id({"sessionId": m.group(1)}, "sessionId")
    if event == "status":
        return Inbound(UssdRequest(NAME, sid, "", "", "status"))
    data = json_body(raw) if raw.body or event != "end" else {}
    if event == "end":
        reason = text(data, "reason", required=False)
        phone = msisdn(data, "msisdn", required=False)
        return Inbound(UssdRequest(NAME, sid, phone, "", "end", detail=(reason or "end")[:32]))
    typed = text(data, "text") or ""
    if event == "start":
        short = text(data, "shortCode", required=False)
        dialled = typed if looks_like_dial(typed) else short
        try:
            code = dial_code(dialled, "shortCode")
        except BadRequest:
            code = ""  # shortCode is optional (and not always well formed): the default menu
        request = UssdRequest(
            namespace=NAME,
            session_id=sid,
            msisdn=msisdn(data, "msisdn"),
            service_code=code,
            kind="start",
            language=language(data, "language"),
        )
        return Inbound(request)
    request = UssdRequest(
        namespace=NAME,
        session_id=sid,
        msisdn=msisdn(data, "msisdn", required=False),
        service_code="",
        kind="continue",
        input=typed,
    )
    return Inbound(request)


def render(inbound: Inbound, reply: Reply) -> Wire:
    if inbound.request.kind == "end":
        return json_wire({"responseExitCode": 200, "responseMessage": ""})
    return json_wire(
        {
            "ussdMenu": reply.text,
            "shouldClose": reply.end,
            "responseExitCode": 200,
            "responseMessage": "",
        }
    )


def render_status(active: bool) -> Wire:
    return json_wire({"sessionActive": active, "responseExitCode": 200, "responseMessage": ""})
