"""What aiohttp's HTTP parser refuses before any middleware runs, over a real socket: each answer
is the standard error JSON with its status and `Connection: close`, moves no money, and the
same request well formed on a fresh connection then works.

aiohttp's client will not send such requests, so these write the bytes themselves. Each hostile
request is a deposit that would otherwise be accepted: the well-formed one after it proves it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from channels import http_body
from gateway.http_server import (
    MAX_HEADER_FIELD_BYTES,
    MAX_HEADERS,
    MAX_REQUEST_LINE_BYTES,
    GatewayRequestHandler,
    GatewayRunner,
)
from tests.helpers import (
    ERROR_KEYS,
    RawAnswer,
    auth,
    direct_token,
    eventually,
    new_msisdn,
    raw_exchange,
    scrape,
)


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def encode(self, request_line: str | None = None) -> bytes:
        lines = [request_line or f"{self.method} {self.target} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body

    def with_headers(self, *headers: tuple[str, str]) -> Request:
        return Request(self.method, self.target, [*self.headers, *headers], self.body)

    def with_body(self, body: bytes, *headers: tuple[str, str]) -> Request:
        kept = [(n, v) for n, v in self.headers if n != "Content-Length"]
        return Request(self.method, self.target, [*kept, *headers], body)


def _pad_target(r: Request) -> bytes:
    target = f"{r.target}?pad={'a' * MAX_REQUEST_LINE_BYTES}"
    return Request(r.method, target, r.headers, r.body).encode()


def _long_header(r: Request) -> bytes:
    # Past the limit on its value alone: aiohttp 3.14 forgets the name's length when it checks.
    return r.with_headers(("X-Pad", "a" * (MAX_HEADER_FIELD_BYTES + 1))).encode()


def _many_headers(r: Request) -> bytes:
    return r.with_headers(*((f"X-Extra-{i}", "1") for i in range(MAX_HEADERS))).encode()


def _garbage_line(r: Request) -> bytes:
    return r.encode(request_line="HELLO THERE")


def _tls_hello(r: Request) -> bytes:
    return b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + secrets.token_bytes(32) + b"\r\n\r\n"


def _bad_chunk(r: Request) -> bytes:
    chunked = b"zz\r\n" + r.body + b"\r\n0\r\n\r\n"
    return r.with_body(chunked, ("Transfer-Encoding", "chunked")).encode()


def _deflate_cut_short(r: Request) -> bytes:
    # Valid deflate for its first half: it fails only when the parser reaches the body's end.
    packed = zlib.compress(r.body)
    cut = packed[: len(packed) // 2]
    headers = [("Content-Encoding", "deflate"), ("Content-Length", str(len(cut)))]
    return r.with_body(cut, *headers).encode()


def _not_deflate(r: Request) -> bytes:
    # Not deflate at all: it fails while the handler reads the body (the middleware answers).
    return r.with_body(
        r.body, ("Content-Encoding", "deflate"), ("Content-Length", str(len(r.body)))
    ).encode()


# (label, hostile version of a request, status, error code, message fragment)
CASES: list[tuple[str, Callable[[Request], bytes], int, str, str]] = [
    ("request line past its limit", _pad_target, 414, "URI_TOO_LONG", "request line"),
    ("header field past its limit", _long_header, 431, "HEADERS_TOO_LARGE", "header field"),
    ("too many header fields", _many_headers, 431, "HEADERS_TOO_LARGE", f"{MAX_HEADERS}"),
    ("garbage request line", _garbage_line, 400, "BAD_REQUEST", "HTTP method"),
    ("TLS on the HTTP port", _tls_hello, 400, "BAD_REQUEST", "HTTP method"),
    ("bad chunk size", _bad_chunk, 400, "BAD_REQUEST", "chunk size"),
    ("deflate body cut short", _deflate_cut_short, 400, "BAD_REQUEST", "Content-Encoding"),
    ("body that is not deflate", _not_deflate, 400, "BAD_REQUEST", "could not be read"),
]  # fmt: skip


@pytest.fixture(scope="module")
async def admin(app_client: TestClient) -> dict[str, str]:
    app = app_client.server.app
    assert app is not None
    return auth(await direct_token(app, "admin"))


async def new_customer(app_client: TestClient, admin: dict[str, str]) -> str:
    msisdn = new_msisdn()
    body = {
        "msisdn": msisdn,
        "first_name": "Achieng",
        "last_name": "Otieno",
        "national_id": f"P{secrets.randbelow(10**7):07d}",
        "pin": "7391",
    }
    resp = await app_client.post("/api/v1/customers", json=body, headers=admin)
    assert resp.status == 201, await resp.text()
    return msisdn


async def balance(app_client: TestClient, admin: dict[str, str], msisdn: str) -> int:
    resp = await app_client.get(f"/api/v1/customers/{msisdn}", headers=admin)
    body = await resp.json()
    assert resp.status == 200, body
    return int(body["wallets"][0]["balance_minor"])


def deposit(client: TestClient, admin: dict[str, str], msisdn: str) -> Request:
    body = json.dumps(
        {
            "msisdn": msisdn,
            "amount_minor": 250_00,
            "idempotency_key": f"proto-{secrets.token_hex(8)}",
            "reference": "BANK-PROTO",
        }
    ).encode()
    headers = [
        ("Host", f"{client.host}:{client.port}"),
        ("Authorization", admin["Authorization"]),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
    ]
    return Request("POST", "/api/v1/deposits", headers, body)


async def exchange(client: TestClient, data: bytes) -> RawAnswer:
    return await raw_exchange(client.host, client.port, data)


Case = tuple[str, Callable[[Request], bytes], int, str, str]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_a_refused_request_is_standard_json_and_moves_nothing(
    app_client: TestClient, admin: dict[str, str], case: Case
) -> None:
    _, hostile, status, code, fragment = case
    msisdn = await new_customer(app_client, admin)
    request = deposit(app_client, admin, msisdn)

    answer = await exchange(app_client, hostile(request))

    assert answer.status == status, answer
    assert answer.headers["content-type"].startswith("application/json"), answer
    assert answer.headers["connection"].lower() == "close", answer
    assert answer.headers["x-request-id"], answer
    assert answer.headers["x-content-type-options"] == "nosniff", answer
    body = answer.json()
    assert set(body) == ERROR_KEYS, body
    assert body["status_code"] == status and body["error_code"] == code, body
    assert fragment in body["message"], body
    assert isinstance(body["details"], dict), body
    assert await balance(app_client, admin, msisdn) == 0

    # The same deposit, well formed, on a fresh connection: the server still answers, and the
    # hostile one would have moved the money.
    ok = await exchange(app_client, request.with_headers(("Connection", "close")).encode())
    assert ok.status == 201, ok
    assert await balance(app_client, admin, msisdn) == 250_00


async def test_the_refusal_does_not_echo_the_request(
    app_client: TestClient, admin: dict[str, str]
) -> None:
    """aiohttp's own answer quoted the first 100 bytes of what it refused (a token in a long
    query string, say); the JSON says only what was wrong."""
    secret = secrets.token_hex(16)
    target = f"/agents/osmand?token={secret}&pad={'a' * MAX_REQUEST_LINE_BYTES}"
    answer = await exchange(app_client, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert answer.status == 414, answer
    assert secret.encode() not in answer.body


async def test_a_ussd_operator_gets_json_for_a_bad_chunk(app_client: TestClient) -> None:
    """Operators post USSD callbacks: a broken chunked body is the standard 400 JSON there too."""
    form = f"sessionId=ATUid_{secrets.token_hex(6)}&serviceCode=*384%23&phoneNumber=%2B254711000111"
    body = b"zz\r\n" + form.encode() + b"\r\n0\r\n\r\n"
    head = (
        "POST /ussd/africastalking HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    answer = await exchange(app_client, head.encode() + body)
    assert answer.status == 400, answer
    assert answer.json()["error_code"] == "BAD_REQUEST"


async def test_a_request_line_under_the_limit_reaches_the_routes(app_client: TestClient) -> None:
    """A URL past aiohttp's default 8190 bytes but within MAX_REQUEST_LINE_BYTES is routed."""
    resp = await app_client.get(f"/api/v1/nothing-here?pad={'a' * 9000}")
    assert resp.status == 404
    assert (await resp.json())["error_code"] == "NOT_FOUND"


async def test_the_server_will_not_start_when_refusals_bypass_the_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If aiohttp stops routing parser refusals through RequestHandler.handle_error (simulated
    by taking the override away), the runner refuses to start rather than answer in plain text."""
    monkeypatch.setattr(GatewayRequestHandler, "handle_error", web.RequestHandler.handle_error)
    runner = GatewayRunner(web.Application())
    with pytest.raises(RuntimeError, match=r"gateway\.http_server needs updating"):
        await runner.setup()
    await runner.cleanup()


async def test_a_refusal_is_counted_in_the_request_metrics(app_client: TestClient) -> None:
    key = (
        "gateway_http_requests_total",
        (("method", "-"), ("route", "unparsed"), ("status", "400")),
    )
    before = (await scrape(app_client)).get(key, 0.0)
    answer = await exchange(app_client, b"HELLO THERE\r\n\r\n")
    assert answer.status == 400, answer
    assert (await scrape(app_client))[key] == before + 1


async def test_a_refusal_has_its_access_log_line(
    app_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """One line with the status, the request id it was answered with and the kind of refusal;
    no method or path (aiohttp has none for it) and nothing of the request itself."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    caplog.set_level(logging.INFO, logger="aiohttp.access")  # aiohttp asks it whether to log
    secret = secrets.token_hex(16)
    answer = await exchange(app_client, f"GET /?token={secret} HTTP/9.9\r\n\r\n".encode())
    assert answer.status == 400, answer
    lines = [
        r.__dict__
        for r in caplog.records
        if r.name == "gateway.access"
        and r.__dict__.get("request_id") == answer.headers["x-request-id"]
    ]
    assert len(lines) == 1, caplog.records
    line = lines[0]
    assert (line["status"], line["method"], line["path"]) == (400, "-", "-"), line
    assert line["refused"] == "BadStatusLine", line
    assert secret not in caplog.text


async def test_an_error_past_the_middleware_is_the_json_500() -> None:
    """The middleware answers every failure of a handler itself; were it to fail, aiohttp's
    protocol answers, and that answer is the standard 500 too (here: an app without it)."""

    async def broken(request: web.Request) -> web.StreamResponse:
        raise RuntimeError("a bug")

    app = web.Application()
    app.router.add_get("/", broken)
    runner = GatewayRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        answer = await raw_exchange(host, port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        await runner.cleanup()
    assert answer.status == 500, answer
    assert answer.json() == {
        "status_code": 500,
        "error_code": "INTERNAL_ERROR",
        "message": "Something went wrong on our side",
        "details": {"request_id": answer.headers["x-request-id"]},
    }
    assert b"a bug" not in answer.body


# --- bodies that stall or are abandoned ---------------------------------------------------------


@pytest.fixture
def short_body_deadline(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(http_body, "BODY_IDLE_TIMEOUT_S", 1.0)
    return 1.0


async def test_a_body_that_stops_coming_is_answered_408_and_moves_nothing(
    app_client: TestClient, admin: dict[str, str], short_body_deadline: float
) -> None:
    """Headers, then part of the body, then nothing (a phone that lost its signal, a slow-loris
    client): before, the handler waited until the client gave up; now 408 and the connection
    closes. The same deposit, whole, then moves the money."""
    msisdn = await new_customer(app_client, admin)
    request = deposit(app_client, admin, msisdn)
    whole = request.encode()
    answer = await exchange(app_client, whole[: len(whole) - 10])  # and then nothing
    assert answer.status == 408, answer
    assert answer.headers["connection"].lower() == "close", answer
    body = answer.json()
    assert set(body) == ERROR_KEYS and body["error_code"] == "REQUEST_TIMEOUT", body
    assert await balance(app_client, admin, msisdn) == 0
    ok = await exchange(app_client, request.with_headers(("Connection", "close")).encode())
    assert ok.status == 201, ok
    assert await balance(app_client, admin, msisdn) == 250_00


async def test_a_client_that_hangs_up_mid_body_is_not_a_lost_dependency(
    app_client: TestClient, admin: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp raises ConnectionResetError into the body read when the client goes away; that
    was logged as PostgreSQL or Redis lost (a warning an operator would chase) and answered
    503. Now it is counted as 499 (the client closed the request) and logged at info."""
    caplog.set_level(logging.INFO, logger="gateway.http")
    key = (
        "gateway_http_requests_total",
        (("method", "POST"), ("route", "/api/v1/deposits"), ("status", "499")),
    )
    before = (await scrape(app_client)).get(key, 0.0)
    msisdn = await new_customer(app_client, admin)
    whole = deposit(app_client, admin, msisdn).encode()
    _, writer = await asyncio.open_connection(app_client.host, app_client.port)
    writer.write(whole[: len(whole) - 10])
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    async def counted() -> bool:
        return (await scrape(app_client)).get(key, 0.0) == before + 1

    await eventually(counted)
    assert "a dependency was lost" not in caplog.text
    assert await balance(app_client, admin, msisdn) == 0


async def test_a_body_received_whole_is_read_without_the_deadline(
    app_client: TestClient, admin: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Most bodies (a USSD hop, a JSON call) arrive whole with their headers: they are read
    without a timer (~4 us a request). One whose body has not all arrived gets the deadline."""
    timers: list[float] = []

    def counted(delay: float | None) -> asyncio.Timeout:
        timers.append(delay or 0.0)
        return asyncio.timeout(delay)

    monkeypatch.setattr(http_body, "asyncio", SimpleNamespace(timeout=counted))
    monkeypatch.setattr(http_body, "BODY_IDLE_TIMEOUT_S", 0.5)
    msisdn = await new_customer(app_client, admin)
    timers.clear()
    request = deposit(app_client, admin, msisdn)
    ok = await exchange(app_client, request.with_headers(("Connection", "close")).encode())
    assert ok.status == 201, ok
    assert timers == []
    whole = request.encode()
    answer = await exchange(app_client, whole[: len(whole) - 10])
    assert answer.status == 408, answer
    assert timers == [0.5]
    assert await balance(app_client, admin, msisdn) == 250_00
