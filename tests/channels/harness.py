"""The shared harness for the provider case tables (one file per provider, cases as data).

A ParseCase is a request in the shape the provider's documentation gives, with either the
canonical fields it must produce or the 400 it must cause. A RenderCase is a request plus the
engine's reply, with the exact bytes (or JSON) the provider must get back. An HttpCase sends a
request to the running gateway and checks status and body shape. `case_tests` makes a
provider's three parametrized tests over its tables.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from channels.ussd.base import Raw
from core.errors import BadRequest
from menus.engine import Reply
from tests.ussd_support import UssdEnv

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


@dataclass(frozen=True)
class ParseCase:
    label: str
    body: Any  # a dict or list is sent as JSON, a str or bytes as is
    expect: dict[str, Any] | None = None  # fields of the UssdRequest it must produce
    error: str | None = None  # a fragment of the 400's message
    content_type: str = JSON
    method: str = "POST"
    path: str = ""

    def raw(self) -> Raw:
        return Raw(self.method, self.path, self.content_type, encode(self.body))


@dataclass(frozen=True)
class RenderCase:
    label: str
    request: ParseCase
    reply: Reply
    expect: Any  # bytes for text replies, a dict for JSON replies
    content_type: str = JSON


@dataclass(frozen=True)
class HttpCase:
    label: str
    body: Any
    status: int
    contains: str = ""  # must appear in the body
    error_code: str | None = None
    content_type: str = JSON
    method: str = "POST"
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)


def encode(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return json.dumps(body).encode("utf-8")


def ids(cases: list[Any]) -> list[str]:
    return [c.label for c in cases]


def without(data: dict[str, object], key: str) -> dict[str, object]:
    """A provider's request with one field left out (the malformed cases)."""
    return {k: v for k, v in data.items() if k != key}


def run_parse(module: ModuleType, case: ParseCase) -> None:
    if case.error is not None:
        with pytest.raises(BadRequest) as caught:
            module.parse(case.raw())
        assert case.error in caught.value.message, caught.value.message
        return
    inbound = module.parse(case.raw())
    assert case.expect is not None
    got = {k: getattr(inbound.request, k) for k in case.expect}
    assert got == case.expect


def run_render(module: ModuleType, case: RenderCase) -> None:
    inbound = module.parse(case.request.raw())
    wire = module.render(inbound, case.reply)
    assert wire.status == 200
    assert wire.content_type.split(";")[0] == case.content_type
    if isinstance(case.expect, bytes):
        assert wire.body == case.expect
    else:
        assert json.loads(wire.body) == case.expect
        assert list(json.loads(wire.body)) == list(case.expect)  # the documented key order


async def run_http(client: TestClient, provider: str, case: HttpCase) -> None:
    resp = await client.request(
        case.method,
        f"/ussd/{provider}{case.path}",
        data=encode(case.body),
        headers={"Content-Type": case.content_type, **case.headers},
    )
    text = await resp.text()
    assert resp.status == case.status, text
    assert case.contains in text, text
    if case.error_code is not None:
        body = json.loads(text)
        assert set(body) == {"status_code", "error_code", "message", "details"}, body
        assert body["error_code"] == case.error_code and body["status_code"] == case.status


def case_tests(
    module: ModuleType,
    provider: str,
    parse: list[ParseCase],
    render: list[RenderCase],
    http: list[HttpCase],
) -> tuple[Callable[..., Any], ...]:
    """A provider's three case-table tests: `parse` and `render` on `module`, `http` against the
    running gateway's /ussd/`provider` (the test module provides the `ussd` fixture). Bind them
    at module level so pytest collects them by these names:
    `test_parse, test_render, test_http = case_tests(module, "name", PARSE, RENDER, HTTP)`."""

    @pytest.mark.parametrize("case", parse, ids=ids(parse))
    def test_parse(case: ParseCase) -> None:
        run_parse(module, case)

    @pytest.mark.parametrize("case", render, ids=ids(render))
    def test_render(case: RenderCase) -> None:
        run_render(module, case)

    @pytest.mark.parametrize("case", http, ids=ids(http))
    async def test_http(ussd: UssdEnv, case: HttpCase) -> None:
        await run_http(ussd.client, provider, case)

    return test_parse, test_render, test_http
