"""Nalo Solutions: JSON with a boolean `MSGTYPE`; the first `USERDATA` is the dial string."""

from __future__ import annotations

from channels.ussd import nalo
from menus.engine import Reply
from tests.channels.harness import (
    HttpCase,
    ParseCase,
    RenderCase,
    case_tests,
    without,
)

FIRST = {
    "USERID": "NALOTest",
    "MSISDN": "233244000111",
    "USERDATA": "*920*1#",
    "MSGTYPE": True,
    "NETWORK": "MTN",
    "SESSIONID": "16590115252429751",
}
NEXT = {**FIRST, "USERDATA": "1", "MSGTYPE": False}


PARSE = [
    ParseCase(
        "a lone surrogate in USERID (echoed back)",
        {**NEXT, "USERID": "\ud800"},
        error="not valid Unicode",
    ),
    ParseCase("a lone surrogate in USERDATA", {**NEXT, "USERDATA": "\udfff"}, error="Unicode"),
    ParseCase(
        "first dial",
        FIRST,
        {
            "kind": "start",
            "service_code": "*920*1#",
            "msisdn": "+233244000111",
            "session_id": "16590115252429751",
            "input": None,
            "hop": None,
        },
    ),
    ParseCase("a later input", NEXT, {"kind": "continue", "input": "1", "service_code": ""}),
    ParseCase(
        "numeric ids", {**NEXT, "SESSIONID": 165901152, "USERID": 42}, {"session_id": "165901152"}
    ),
    ParseCase("MSGTYPE as a string", {**FIRST, "MSGTYPE": "true"}, error="JSON boolean"),
    ParseCase("no MSGTYPE", without(FIRST, "MSGTYPE"), error="MSGTYPE is required"),
    ParseCase("no SESSIONID", without(FIRST, "SESSIONID"), error="SESSIONID is required"),
    ParseCase("no USERID", without(FIRST, "USERID"), error="USERID is required"),
    ParseCase("no USERDATA", without(NEXT, "USERDATA"), error="USERDATA is required"),
    ParseCase("a bad MSISDN", {**FIRST, "MSISDN": "abc"}, error="not an international"),
    ParseCase(
        "a first USERDATA that is no code",
        {**FIRST, "USERDATA": "hello"},
        error="USERDATA is not a USSD code",
    ),
    ParseCase("not JSON", "{", error="not valid JSON"),
    ParseCase("JSON nested 100,000 deep", "[" * 100_000, error="nested too deeply"),
]

RENDER = [
    RenderCase(
        "continue",
        ParseCase("", FIRST),
        Reply("Menu", False),
        {"USERID": "NALOTest", "MSISDN": "233244000111", "MSG": "Menu", "MSGTYPE": True},
    ),
    RenderCase(
        "end",
        ParseCase("", NEXT),
        Reply("Bye", True),
        {"USERID": "NALOTest", "MSISDN": "233244000111", "MSG": "Bye", "MSGTYPE": False},
    ),
]

HTTP = [
    HttpCase(
        "first dial of the default code",
        {**FIRST, "USERDATA": "*384#", "SESSIONID": "nalo-http-1", "MSISDN": "233244000992"},
        200,
        '"MSGTYPE": true',
    ),
    HttpCase("malformed", {**FIRST, "MSGTYPE": 1}, 400, error_code="BAD_REQUEST"),
]


test_parse, test_render, test_http = case_tests(nalo, "nalo", PARSE, RENDER, HTTP)
