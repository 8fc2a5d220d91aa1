"""Infobip: the path carries the session and the event (start / response / end / status)."""

from __future__ import annotations

from channels.ussd import infobip
from menus.engine import Reply
from tests.channels.harness import (
    HttpCase,
    ParseCase,
    RenderCase,
    case_tests,
    run_http,
)
from tests.ussd_support import UssdEnv

START = {
    "msisdn": "385955363443",
    "imsi": "429011234567890",
    "text": "*384#",
    "shortCode": "*384#",
    "optional": "o=1",
    "ussdGwId": "11",
    "language": None,
}
RESPONSE = {"msisdn": "385955363443", "imsi": "429011234567890", "text": "2"}
END = {"reason": "ok", "exitCode": 0}


PARSE = [
    ParseCase(
        "a lone surrogate in text",
        {**RESPONSE, "text": "1\ud800"},
        error="not valid Unicode",
        path="/session/123/response",
    ),
    ParseCase(
        "start",
        START,
        {
            "kind": "start",
            "session_id": "123",
            "service_code": "*384#",
            "msisdn": "+385955363443",
            "language": None,
        },
        path="/session/123/start",
    ),
    ParseCase(
        "start with a language and a path",
        {**START, "text": "*384*2#", "language": "fr"},
        {"service_code": "*384*2#", "language": "fr"},
        path="/session/124/start",
    ),
    ParseCase(
        "start with an odd shortCode falls back to the default menu",
        {**START, "text": "hello there", "shortCode": "*123#1#"},
        {"service_code": ""},
        path="/session/125/start",
    ),
    ParseCase(
        "response", RESPONSE, {"kind": "continue", "input": "2"}, path="/session/123/response"
    ),
    ParseCase(
        "end (PUT)", END, {"kind": "end", "detail": "ok"}, method="PUT", path="/session/123/end"
    ),
    ParseCase("end (POST, no body)", b"", {"kind": "end"}, path="/session/123/end"),
    ParseCase(
        "status",
        b"",
        {"kind": "status", "session_id": "123"},
        method="GET",
        path="/session/123/status",
    ),
    ParseCase(
        "an unknown event", START, error="start|response|end|status", path="/session/123/explode"
    ),
    ParseCase(
        "start by GET", START, error="start takes POST", method="GET", path="/session/123/start"
    ),
    ParseCase(
        "start without text",
        {k: v for k, v in START.items() if k != "text"},
        error="text is required",
        path="/session/123/start",
    ),
    ParseCase(
        "start without msisdn",
        {k: v for k, v in START.items() if k != "msisdn"},
        error="msisdn is required",
        path="/session/123/start",
    ),
    ParseCase(
        "not JSON",
        "not json at all",
        error="not valid JSON",
        path="/session/1/start",
        content_type="text/plain",
    ),
    ParseCase(
        "a bad session id", START, error="not a valid session id", path="/session/a%20b/start"
    ),
]

RENDER = [
    RenderCase(
        "menu",
        ParseCase("", START, path="/session/1/start"),
        Reply("Menu", False),
        {"ussdMenu": "Menu", "shouldClose": False, "responseExitCode": 200, "responseMessage": ""},
    ),
    RenderCase(
        "close",
        ParseCase("", RESPONSE, path="/session/1/response"),
        Reply("Bye", True),
        {"ussdMenu": "Bye", "shouldClose": True, "responseExitCode": 200, "responseMessage": ""},
    ),
    RenderCase(
        "end acknowledged",
        ParseCase("", END, method="PUT", path="/session/1/end"),
        Reply("", True),
        {"responseExitCode": 200, "responseMessage": ""},
    ),
]

# One session's life, in order: each step depends on the one before, so they run as one test
# (a parametrized case each would fail alone, e.g. under `-k status`).
SESSION_LIFE = [
    HttpCase(
        "start",
        {**START, "msisdn": "385955300996"},
        200,
        '"shouldClose": false',
        path="/session/ib-http-1/start",
    ),
    HttpCase(
        "status of the running session",
        b"",
        200,
        '"sessionActive": true',
        method="GET",
        path="/session/ib-http-1/status",
    ),
    HttpCase(
        "end", END, 200, '"responseExitCode": 200', method="PUT", path="/session/ib-http-1/end"
    ),
    HttpCase(
        "status after the end",
        b"",
        200,
        '"sessionActive": false',
        method="GET",
        path="/session/ib-http-1/status",
    ),
]

HTTP = [
    HttpCase(
        "malformed", {"text": "1"}, 400, error_code="BAD_REQUEST", path="/session/ib-http-2/start"
    ),
    HttpCase(
        "an unknown event",
        START,
        400,
        error_code="BAD_REQUEST",
        path="/session/ib-http-2/frobnicate",
    ),
]


test_parse, test_render, test_http = case_tests(infobip, "infobip", PARSE, RENDER, HTTP)


def test_render_status() -> None:
    import json

    wire = infobip.render_status(True)
    assert json.loads(wire.body) == {
        "sessionActive": True,
        "responseExitCode": 200,
        "responseMessage": "",
    }


async def test_a_session_start_status_end_status(ussd: UssdEnv) -> None:
    for case in SESSION_LIFE:
        await run_http(ussd.client, "infobip", case)
