"""Hubtel: JSON `Type` (any case) Initiation / Response / Release / Timeout; `Sequence` hops."""

from __future__ import annotations

from channels.ussd import hubtel
from menus.engine import Reply
from tests.channels.harness import (
    HttpCase,
    ParseCase,
    RenderCase,
    case_tests,
    without,
)

INITIATION = {
    "Type": "Initiation",
    "Mobile": "233200585542",
    "SessionId": "3c79a0a1a5e44c5e9dd0da1f8b7d2b8d",
    "ServiceCode": "384",
    "Message": "*384#",
    "Operator": "vodafone",
    "Sequence": 1,
    "ClientState": "",
    "Platform": "USSD",
}
RESPONSE = {**INITIATION, "Type": "Response", "Message": "2", "Sequence": 2}


PARSE = [
    ParseCase(
        "a lone surrogate in Message", {**RESPONSE, "Message": "\ud800"}, error="not valid Unicode"
    ),
    ParseCase(
        "initiation",
        INITIATION,
        {
            "kind": "start",
            "msisdn": "+233200585542",
            "service_code": "*384#",
            "hop": "1",
            "input": None,
        },
    ),
    ParseCase(
        "initiation with a prefilled path",
        {**INITIATION, "Message": "*384*1*2#"},
        {"service_code": "*384*1*2#"},
    ),
    ParseCase(
        "a two-part service code",
        {**INITIATION, "ServiceCode": "714*5", "Message": "*714*5*3#"},
        {"service_code": "*714*5*3#"},
    ),
    ParseCase(
        "response, lower case, Mobile with a plus",
        {**RESPONSE, "Type": "response", "Mobile": "+233200585542"},
        {"kind": "continue", "input": "2", "hop": "2", "msisdn": "+233200585542"},
    ),
    ParseCase("Sequence as a string", {**RESPONSE, "Sequence": "3"}, {"hop": "3"}),
    ParseCase(
        "release",
        {**RESPONSE, "Type": "Release", "Message": ""},
        {"kind": "end", "detail": "release"},
    ),
    ParseCase("timeout", {**RESPONSE, "Type": "TIMEOUT"}, {"kind": "end", "detail": "timeout"}),
    ParseCase("an unknown Type", {**RESPONSE, "Type": "AddToCart"}, error="Type must be"),
    ParseCase("no Type", without(RESPONSE, "Type"), error="Type is required"),
    ParseCase("Type is a number", {**RESPONSE, "Type": 5}, error="Type must be a string"),
    ParseCase("no Mobile", without(RESPONSE, "Mobile"), error="Mobile is required"),
    ParseCase("no SessionId", without(RESPONSE, "SessionId"), error="SessionId is required"),
    ParseCase(
        "no Message on a response", without(RESPONSE, "Message"), error="Message is required"
    ),
    ParseCase(
        "a Sequence that is no number",
        {**RESPONSE, "Sequence": "abc"},
        error="Sequence must be a number",
    ),
    ParseCase(
        "a Sequence of a superscript digit",
        {**RESPONSE, "Sequence": "\u00b2"},
        error="Sequence must be a number",
    ),
    ParseCase(
        "a Sequence of Arabic-Indic digits",
        {**RESPONSE, "Sequence": "\u0663"},
        error="Sequence must be a number",
    ),
    ParseCase("not JSON", "Type=Initiation", error="not valid JSON"),
    ParseCase("JSON nested 100,000 deep", "[" * 100_000, error="nested too deeply"),
    ParseCase("a JSON array", [INITIATION], error="must be a JSON object"),
    ParseCase(
        "a form content type",
        "Type=Initiation",
        error="must be JSON",
        content_type="application/x-www-form-urlencoded",
    ),
]

RENDER = [
    RenderCase(
        "response",
        ParseCase("", INITIATION),
        Reply("Hello\n1. Balance", False),
        {"Type": "Response", "Message": "Hello\n1. Balance", "ClientState": ""},
    ),
    RenderCase(
        "release",
        ParseCase("", RESPONSE),
        Reply("Goodbye.", True),
        {"Type": "Release", "Message": "Goodbye.", "ClientState": ""},
    ),
    RenderCase(
        "acknowledging Hubtel's release",
        ParseCase("", {**RESPONSE, "Type": "Release"}),
        Reply("", True),
        {"Type": "Release", "Message": "", "ClientState": ""},
    ),
]

HTTP = [
    HttpCase(
        "initiation",
        {**INITIATION, "SessionId": "hub-http-1", "Mobile": "233200000991"},
        200,
        '"Type": "Response"',
    ),
    HttpCase("malformed", {**INITIATION, "Type": "Bogus"}, 400, error_code="BAD_REQUEST"),
    HttpCase(
        "a response for a session that never started",
        {**RESPONSE, "SessionId": "hub-never"},
        200,
        "expired",
    ),
]


test_parse, test_render, test_http = case_tests(hubtel, "hubtel", PARSE, RENDER, HTTP)
