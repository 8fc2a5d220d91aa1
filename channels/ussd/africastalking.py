"""Africa's Talking: a form POST per hop, answered in plain text `CON <screen>` or `END <screen>`.

    sessionId=ATUid_1&serviceCode=*384#&phoneNumber=+254711000111&networkCode=63902&text=1*2

`text` is every input so far joined by `*` (empty on the first request; a dial of `*384*1*2#`
may arrive with `text=1*2` already). The hop is the number of inputs, so a repeated callback is
recognised. The end-of-session notification (a form with `status`: Incomplete, Success or
Failed, and no `text`) may be posted to the same URL or to `/ussd/africastalking/events`; it is
acknowledged with `OK`.
"""

from __future__ import annotations

from channels.ussd.base import (
    MAX_TEXT_CHARS,
    Inbound,
    Raw,
    Reply,
    UssdRequest,
    Wire,
    bad,
    dial_code,
    form_body,
    msisdn,
    session_id,
    text,
)

NAME = "africastalking"
STATUSES = ("Incomplete", "Success", "Failed")


def parse(raw: Raw) -> Inbound:
    form = form_body(raw)
    sid = session_id(form, "sessionId")
    if raw.path.strip("/") == "events" or ("status" in form and "text" not in form):
        status = text(form, "status")
        if status not in STATUSES:
            raise bad(f"status must be one of {', '.join(STATUSES)}", field="status")
        phone = msisdn(form, "phoneNumber", required=False)
        request = UssdRequest(NAME, sid, phone, "", "end", detail=status)
        return Inbound(request)
    phone = msisdn(form, "phoneNumber")
    code = dial_code(text(form, "serviceCode"), "serviceCode")
    typed = text(form, "text", max_chars=MAX_TEXT_CHARS)
    assert typed is not None
    inputs = tuple(typed.split("*")) if typed else ()
    request = UssdRequest(
        namespace=NAME,
        session_id=sid,
        msisdn=phone,
        service_code=code,
        kind="continue" if inputs else "start",
        input=inputs[-1] if inputs else None,
        inputs=inputs,
        hop=str(len(inputs)),
    )
    return Inbound(request)


def render(inbound: Inbound, reply: Reply) -> Wire:
    if inbound.request.kind == "end":
        return Wire(200, "text/plain; charset=utf-8", b"OK")
    body = ("END " if reply.end else "CON ") + reply.text
    return Wire(200, "text/plain; charset=utf-8", body.encode("utf-8"))
