"""Beem: JSON `command` initiate / continue / terminate, `payload.request_id` identifies hops."""

from __future__ import annotations

from channels.ussd import beem
from menus.engine import Reply
from tests.channels.harness import (
    HttpCase,
    ParseCase,
    RenderCase,
    case_tests,
    without,
)

INITIATE = {
    "session_id": "0021",
    "msisdn": "255712000111",
    "operator": "vodacom",
    "command": "initiate",
    "payload": {"request_id": "1", "response": "*150*00#"},
}
CONTINUE = {**INITIATE, "command": "continue", "payload": {"request_id": "2", "response": "3"}}


PARSE = [
    ParseCase(
        "a lone surrogate in operator (echoed back)",
        {**CONTINUE, "operator": "\ud800"},
        error="not valid Unicode",
    ),
    ParseCase(
        "a lone surrogate in request_id",
        {**CONTINUE, "payload": {"request_id": "\udc00", "response": "1"}},
        error="not valid Unicode",
    ),
    ParseCase(
        "initiate",
        INITIATE,
        {
            "kind": "start",
            "service_code": "*150*00#",
            "msisdn": "+255712000111",
            "hop": "1",
            "input": None,
        },
    ),
    ParseCase("continue", CONTINUE, {"kind": "continue", "input": "3", "hop": "2"}),
    ParseCase(
        "numeric request_id",
        {**CONTINUE, "payload": {"request_id": 7, "response": "1"}},
        {"hop": "7"},
    ),
    ParseCase("terminate", {**CONTINUE, "command": "terminate"}, {"kind": "end"}),
    ParseCase(
        "initiate without a dial string",
        {**INITIATE, "payload": {"request_id": "1", "response": ""}},
        {"kind": "start", "service_code": ""},
    ),
    ParseCase("an unknown command", {**INITIATE, "command": "stop"}, error="command must be"),
    ParseCase("no payload", without(INITIATE, "payload"), error="payload must be an object"),
    ParseCase("payload is a string", {**INITIATE, "payload": "1"}, error="payload must be"),
    ParseCase(
        "no request_id", {**CONTINUE, "payload": {"response": "3"}}, error="request_id is required"
    ),
    ParseCase(
        "no response on continue",
        {**CONTINUE, "payload": {"request_id": "2"}},
        error="response is required",
    ),
    ParseCase("no session_id", without(INITIATE, "session_id"), error="session_id is required"),
    ParseCase("a bad msisdn", {**INITIATE, "msisdn": "+0"}, error="not an international"),
]

RENDER = [
    RenderCase(
        "continue",
        ParseCase("", INITIATE),
        Reply("Menu", False),
        {
            "msisdn": "255712000111",
            "operator": "vodacom",
            "session_id": "0021",
            "command": "continue",
            "payload": {"request_id": "1", "request": "Menu"},
        },
    ),
    RenderCase(
        "terminate",
        ParseCase("", CONTINUE),
        Reply("Bye", True),
        {
            "msisdn": "255712000111",
            "operator": "vodacom",
            "session_id": "0021",
            "command": "terminate",
            "payload": {"request_id": "2", "request": "Bye"},
        },
    ),
]

HTTP = [
    HttpCase(
        "initiate",
        {
            **INITIATE,
            "session_id": "beem-http-1",
            "msisdn": "255712000994",
            "payload": {"request_id": "1", "response": "*384#"},
        },
        200,
        '"command": "continue"',
    ),
    HttpCase("malformed", {**INITIATE, "command": 3}, 400, error_code="BAD_REQUEST"),
]


test_parse, test_render, test_http = case_tests(beem, "beem", PARSE, RENDER, HTTP)
