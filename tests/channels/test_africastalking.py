"""Africa's Talking: form in, `CON` / `END` text out; cumulative `text`; session-end notice."""

from __future__ import annotations

from channels.ussd import africastalking as at
from menus.engine import Reply
from tests.channels.harness import (
    FORM,
    JSON,
    HttpCase,
    ParseCase,
    RenderCase,
    case_tests,
)

START = (
    "sessionId=ATUid_5e8c1&serviceCode=%2A384%23&phoneNumber=%2B254711000111"
    "&networkCode=63902&text="
)


def form(**fields: str) -> str:
    from urllib.parse import urlencode

    base = {
        "sessionId": "ATUid_5e8c1",
        "serviceCode": "*384#",
        "phoneNumber": "+254711000111",
        "networkCode": "63902",
        "text": "",
    }
    base.update(fields)
    return urlencode({k: v for k, v in base.items() if v is not None})


PARSE = [
    ParseCase(
        "first request: empty text starts the session",
        START,
        {
            "kind": "start",
            "session_id": "ATUid_5e8c1",
            "msisdn": "+254711000111",
            "service_code": "*384#",
            "input": None,
            "inputs": (),
            "hop": "0",
        },
        content_type=FORM,
    ),
    ParseCase(
        "cumulative text: the last segment is the input, the count is the hop",
        form(text="1*0712345678*500"),
        {"kind": "continue", "input": "500", "inputs": ("1", "0712345678", "500"), "hop": "3"},
        content_type=FORM,
    ),
    ParseCase(
        "a phone number without the plus",
        form(phoneNumber="254711000111"),
        {"msisdn": "+254711000111"},
        content_type=FORM,
    ),
    ParseCase(
        "a shared code with its channel",
        form(serviceCode="*384*1234#", text="1*2"),
        {"service_code": "*384*1234#", "inputs": ("1", "2")},
        content_type=FORM,
    ),
    ParseCase(
        "an empty input (the user just pressed send)",
        form(text="1*"),
        {"input": "", "hop": "2"},
        content_type=FORM,
    ),
    ParseCase(
        "no networkCode is fine",
        form(networkCode=None),
        {"kind": "start"},
        content_type=FORM,
    ),
    ParseCase(
        "end-of-session notification on the callback URL",
        "sessionId=ATUid_5e8c1&serviceCode=%2A384%23&networkCode=63902&phoneNumber=%2B254711000111"
        "&status=Success&cost=KES+0.00&durationInMillis=9000&hopsCount=3&input=1*1234",
        {"kind": "end", "detail": "Success"},
        content_type=FORM,
    ),
    ParseCase(
        "end-of-session notification on /events, failed",
        "sessionId=ATUid_5e8c1&phoneNumber=254711000111&status=Failed&errorMessage=timeout",
        {"kind": "end", "detail": "Failed", "msisdn": "+254711000111"},
        content_type=FORM,
        path="/events",
    ),
    ParseCase("JSON instead of a form", {"sessionId": "x"}, error="must be a form"),
    ParseCase(
        "no sessionId", form(sessionId=None), error="sessionId is required", content_type=FORM
    ),
    ParseCase("no text", form(text=None), error="text is required", content_type=FORM),
    ParseCase(
        "no phoneNumber", form(phoneNumber=None), error="phoneNumber is required", content_type=FORM
    ),
    ParseCase(
        "a local phone number",
        form(phoneNumber="0711000111"),
        error="not an international phone number",
        content_type=FORM,
    ),
    ParseCase(
        "letters for a phone number",
        form(phoneNumber="+2547ABC"),
        error="not an international phone number",
        content_type=FORM,
    ),
    ParseCase(
        "a service code that is not one",
        form(serviceCode="hello"),
        error="serviceCode is not a USSD code",
        content_type=FORM,
    ),
    ParseCase(
        "a session id with spaces",
        form(sessionId="AT Uid"),
        error="not a valid session id",
        content_type=FORM,
    ),
    ParseCase(
        "a session id too long",
        form(sessionId="A" * 129),
        error="not a valid session id",
        content_type=FORM,
    ),
    ParseCase("text too long", form(text="1" * 1001), error="longer than 1000", content_type=FORM),
    ParseCase(
        "control characters in text",
        form(text="1\x00"),
        error="control characters",
        content_type=FORM,
    ),
    ParseCase(
        "an unknown session status",
        form(text=None, status="Whatever"),
        error="status must be one of",
        content_type=FORM,
    ),
    ParseCase("not UTF-8", b"sessionId=\xff\xfe&text=", error="not valid UTF-8", content_type=FORM),
]

RENDER = [
    RenderCase(
        "continue",
        ParseCase("", START, content_type=FORM),
        Reply("Welcome\n1. Register", False),
        b"CON Welcome\n1. Register",
        "text/plain",
    ),
    RenderCase(
        "end",
        ParseCase("", form(text="2*1234"), content_type=FORM),
        Reply("Your balance is KES 1,234.00.", True),
        b"END Your balance is KES 1,234.00.",
        "text/plain",
    ),
    RenderCase(
        "UTF-8 text",
        ParseCase("", START, content_type=FORM),
        Reply("3. Français", False),
        "CON 3. Français".encode(),
        "text/plain",
    ),
    RenderCase(
        "the notification is acknowledged",
        ParseCase("", form(text=None, status="Incomplete"), content_type=FORM),
        Reply("", True),
        b"OK",
        "text/plain",
    ),
]

HTTP = [
    HttpCase(
        "a new caller sees the menu",
        form(phoneNumber="+254711999001"),
        200,
        "CON Welcome to CodeForge.\n1. Register",
        content_type=FORM,
    ),
    HttpCase(
        "malformed: missing fields",
        "sessionId=x",
        400,
        "phoneNumber",
        error_code="BAD_REQUEST",
        content_type=FORM,
    ),
    HttpCase(
        "malformed: JSON body", {"sessionId": "x"}, 400, error_code="BAD_REQUEST", content_type=JSON
    ),
    HttpCase(
        "malformed: oversized body",
        "text=" + "1" * 20_000,
        400,
        "larger than",
        error_code="BAD_REQUEST",
        content_type=FORM,
    ),
    HttpCase(
        "a notification for an unknown session",
        form(text=None, status="Success", sessionId="ATUid_unknown"),
        200,
        "OK",
        content_type=FORM,
        path="/events",
    ),
]


test_parse, test_render, test_http = case_tests(at, "africastalking", PARSE, RENDER, HTTP)
