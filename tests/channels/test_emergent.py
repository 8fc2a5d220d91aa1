"""Emergent (Interpay): Hubtel-like JSON; `USERID` is the service code."""

from __future__ import annotations

from channels.ussd import emergent
from menus.engine import Reply
from tests.channels.harness import (
    HttpCase,
    ParseCase,
    RenderCase,
    case_tests,
    without,
)

INITIATION = {
    "SessionId": "e1f2",
    "Mobile": "233244000111",
    "USERID": "384",
    "Operator": "mtn",
    "Type": "Initiation",
    "Message": "*384#",
}
RESPONSE = {**INITIATION, "Type": "Response", "Message": "1"}


PARSE = [
    ParseCase(
        "a lone surrogate in Message", {**RESPONSE, "Message": "\ud800"}, error="not valid Unicode"
    ),
    ParseCase(
        "initiation",
        INITIATION,
        {"kind": "start", "service_code": "*384#", "msisdn": "+233244000111"},
    ),
    ParseCase(
        "initiation with a path", {**INITIATION, "Message": "*384*2#"}, {"service_code": "*384*2#"}
    ),
    ParseCase(
        "initiation without a dial string uses USERID",
        {**INITIATION, "Message": ""},
        {"service_code": "*384#"},
    ),
    ParseCase(
        "response, any case", {**RESPONSE, "Type": "RESPONSE"}, {"kind": "continue", "input": "1"}
    ),
    ParseCase("release", {**RESPONSE, "Type": "Release"}, {"kind": "end"}),
    ParseCase("an unknown Type", {**RESPONSE, "Type": "Foo"}, error="Type must be"),
    ParseCase("no USERID", without(INITIATION, "USERID"), error="USERID is required"),
    ParseCase("no Mobile", without(INITIATION, "Mobile"), error="Mobile is required"),
    ParseCase(
        "no Message on a response", without(RESPONSE, "Message"), error="Message is required"
    ),
    ParseCase(
        "a bad USERID", {**INITIATION, "USERID": "abc", "Message": ""}, error="not a USSD code"
    ),
]

RENDER = [
    RenderCase(
        "response",
        ParseCase("", INITIATION),
        Reply("Menu", False),
        {"Message": "Menu", "Type": "Response"},
    ),
    RenderCase(
        "release",
        ParseCase("", RESPONSE),
        Reply("Bye", True),
        {"Message": "Bye", "Type": "Release"},
    ),
]

HTTP = [
    HttpCase(
        "initiation",
        {**INITIATION, "SessionId": "em-http-1", "Mobile": "233244000995"},
        200,
        '"Type": "Response"',
    ),
    HttpCase("malformed", {**INITIATION, "Mobile": "12"}, 400, error_code="BAD_REQUEST"),
]


test_parse, test_render, test_http = case_tests(emergent, "emergent", PARSE, RENDER, HTTP)
