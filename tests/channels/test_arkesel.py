"""Arkesel: JSON with boolean `newSession` / `continueSession`; latest input only."""

from __future__ import annotations

from channels.ussd import arkesel
from menus.engine import Reply
from tests.channels.harness import (
    HttpCase,
    ParseCase,
    RenderCase,
    case_tests,
    without,
)

FIRST = {
    "sessionID": "a1b2c3d4",
    "userID": "ARKTEST",
    "newSession": True,
    "msisdn": "233244000111",
    "userData": "*928*1#",
    "network": "MTN",
}
NEXT = {**FIRST, "newSession": False, "userData": "2"}


PARSE = [
    ParseCase(
        "a lone surrogate in userID (echoed back)",
        {**NEXT, "userID": "\ud800"},
        error="not valid Unicode",
    ),
    ParseCase(
        "first dial",
        FIRST,
        {
            "kind": "start",
            "service_code": "*928*1#",
            "msisdn": "+233244000111",
            "session_id": "a1b2c3d4",
        },
    ),
    ParseCase("a later input", NEXT, {"kind": "continue", "input": "2"}),
    ParseCase(
        "msisdn with a plus", {**NEXT, "msisdn": "+233244000111"}, {"msisdn": "+233244000111"}
    ),
    ParseCase("newSession as a string", {**FIRST, "newSession": "true"}, error="JSON boolean"),
    ParseCase("no newSession", without(FIRST, "newSession"), error="newSession is required"),
    ParseCase("no sessionID", without(FIRST, "sessionID"), error="sessionID is required"),
    ParseCase("no userID", without(FIRST, "userID"), error="userID is required"),
    ParseCase("no msisdn", without(FIRST, "msisdn"), error="msisdn is required"),
    ParseCase("no userData", without(NEXT, "userData"), error="userData is required"),
    ParseCase("userData is a list", {**NEXT, "userData": ["1"]}, error="must be a string"),
    ParseCase("an empty body", "", error="not valid JSON"),
]

RENDER = [
    RenderCase(
        "continue",
        ParseCase("", FIRST),
        Reply("Menu", False),
        {
            "sessionID": "a1b2c3d4",
            "userID": "ARKTEST",
            "msisdn": "233244000111",
            "message": "Menu",
            "continueSession": True,
        },
    ),
    RenderCase(
        "end",
        ParseCase("", NEXT),
        Reply("Bye", True),
        {
            "sessionID": "a1b2c3d4",
            "userID": "ARKTEST",
            "msisdn": "233244000111",
            "message": "Bye",
            "continueSession": False,
        },
    ),
]

HTTP = [
    HttpCase(
        "first dial",
        {**FIRST, "userData": "*384#", "sessionID": "ark-http-1", "msisdn": "233244000993"},
        200,
        '"continueSession": true',
    ),
    HttpCase("malformed", without(FIRST, "sessionID"), 400, error_code="BAD_REQUEST"),
]


test_parse, test_render, test_http = case_tests(arkesel, "arkesel", PARSE, RENDER, HTTP)
