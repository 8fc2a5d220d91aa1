"""Hostile input at the HTTP entry points: every case answers a 4xx in the standard error JSON
and changes nothing (never a 500, never a row written).

Each table is labelled cases; the bodies are otherwise well formed for their route, so only the
hostile part stands between them and the database."""

from __future__ import annotations

import json
import secrets
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gateway.keys import PG_POOL, ROUTE_SPECS
from tests.helpers import assert_error, auth, direct_token, make_admin, new_msisdn

JSON = {"Content-Type": "application/json"}
POINT = {"type": "Point", "coordinates": [36.9, -1.2]}


def fence(**properties: Any) -> dict[str, Any]:
    return {"type": "Feature", "geometry": POINT, "properties": {"radius_m": 250, **properties}}


def menu(name: str, **extra: Any) -> dict[str, Any]:
    return {"document": {"name": name, "start": "home", **extra}}


def dumps(data: Any) -> bytes:
    # json.dumps writes NaN and Infinity as such, and a lone surrogate as its \u escape.
    return json.dumps(data).encode()


@pytest.fixture(scope="module")
async def admin(app_client: TestClient) -> dict[str, str]:
    app = app_client.server.app
    assert app is not None
    return auth(await direct_token(app, "admin"))


async def counts(app_client: TestClient) -> dict[str, int]:
    """Rows in the tables the hostile bodies aim at: none may be written."""
    app = app_client.server.app
    assert app is not None
    pool: asyncpg.Pool = app[PG_POOL]
    tables = ("menus", "geofences", "customers", "admin_users", "audit_log")
    return {t: await pool.fetchval(f"SELECT count(*) FROM {t}") for t in tables}


# (label, method, path, raw body, status, error code). Before the central checks in
# `gateway.api.read_json` each of these was a 500 (RecursionError, NaN/Infinity or a NUL or a
# lone surrogate reaching PostgreSQL, an integer asyncpg cannot encode) or, for a deep but
# well-formed body, stored.
HOSTILE_BODIES: list[tuple[str, str, str, bytes, int, str]] = [
    ("a bare number", "POST", "/api/v1/auth/login", b"5", 422, "VALIDATION_ERROR"),
    ("a bare string", "POST", "/api/v1/deposits", b'"x"', 422, "VALIDATION_ERROR"),
    ("a bare NUL string", "POST", "/api/v1/deposits", b'"\\u0000"', 422, "VALIDATION_ERROR"),
    ("null", "POST", "/api/v1/menus", b"null", 422, "VALIDATION_ERROR"),
    ("array nested 100 000 deep", "POST", "/api/v1/auth/login", b"[" * 100_000,
     400, "INVALID_JSON"),
    ("object nested 50 000 deep", "POST", "/api/v1/deposits", b'{"a":' * 50_000,
     400, "INVALID_JSON"),
    ("well-formed but 200 levels deep", "POST", "/api/v1/menus",
     b'{"document": ' + b'{"a": ' * 200 + b"1" + b"}" * 201, 400, "INVALID_JSON"),
    ("NaN in a menu document", "POST", "/api/v1/menus",
     dumps(menu("hostile-nan", x=float("nan"))), 422, "VALIDATION_ERROR"),
    ("Infinity in a menu document", "POST", "/api/v1/menus",
     dumps(menu("hostile-inf", x=float("inf"))), 422, "VALIDATION_ERROR"),
    ("-Infinity in a fence's properties", "POST", "/api/v1/geofences",
     dumps(fence(name="x", weight=float("-inf"))), 422, "VALIDATION_ERROR"),
    ("1e400 (past a double) in a menu document", "POST", "/api/v1/menus",
     b'{"document": {"name": "hostile-big", "x": 1e400}}', 422, "VALIDATION_ERROR"),
    ("NaN in a fence's properties", "POST", "/api/v1/geofences",
     b'{"type": "Feature", "geometry": {"type": "Point", "coordinates": [36.9, -1.2]},'
     b' "properties": {"radius_m": 250, "name": "x", "w": NaN}}', 422, "VALIDATION_ERROR"),
    ("NUL in a login name", "POST", "/api/v1/auth/login",
     dumps({"username": "adm\x00in", "password": "x", "otp": "123456"}), 422, "VALIDATION_ERROR"),
    ("NUL in a menu document", "POST", "/api/v1/menus",
     dumps(menu("hostile-nul", title="a\x00b")), 422, "VALIDATION_ERROR"),
    ("NUL in a key of a menu document", "POST", "/api/v1/menus",
     dumps(menu("hostile-nul-key", **{"a\x00b": 1})), 422, "VALIDATION_ERROR"),
    ("NUL in a fence name", "POST", "/api/v1/geofences",
     dumps(fence(name="Shop\x00")), 422, "VALIDATION_ERROR"),
    ("lone surrogate in a menu document", "POST", "/api/v1/menus",
     dumps(menu("hostile-surrogate", title="\ud800")), 422, "VALIDATION_ERROR"),
    ("lone surrogate in a fence name", "POST", "/api/v1/geofences",
     dumps(fence(name="\udfff")), 422, "VALIDATION_ERROR"),
    ("fence id past int8", "PUT", "/api/v1/agents/NOSUCH9/geofences",
     b'{"geofence_ids": [99999999999999999999999]}', 422, "VALIDATION_ERROR"),
    ("amount past int8", "POST", "/api/v1/deposits",
     b'{"msisdn": "+254700000001", "amount_minor": -99999999999999999999999,'
     b' "idempotency_key": "k"}', 422, "VALIDATION_ERROR"),
]  # fmt: skip


@pytest.mark.parametrize("case", HOSTILE_BODIES, ids=[c[0] for c in HOSTILE_BODIES])
async def test_hostile_json_bodies_are_refused_and_change_nothing(
    app_client: TestClient, admin: dict[str, str], case: tuple[str, str, str, bytes, int, str]
) -> None:
    _, method, path, body, status, code = case
    before = await counts(app_client)
    resp = await app_client.request(method, path, data=body, headers={**admin, **JSON})
    await assert_error(resp, status, code)
    assert await counts(app_client) == before


UNSTORABLE = [
    (
        "a NUL in a menu document",
        "/api/v1/menus",
        dumps(menu("hostile-where", screens={"a": ["x", "y\x00"]})),
        "document.screens.a.1",
        "contains a NUL character",
    ),
    (
        "-Infinity in a menu document",
        "/api/v1/menus",
        b'{"document": {"name": "x", "n": [1, -Infinity]}}',
        "document.n.1",
        "is -Infinity, not a finite number",
    ),
    (
        "a lone surrogate in a fence name",
        "/api/v1/geofences",
        dumps(fence(name="\ud83d")),
        "properties.name",
        "contains an unpaired surrogate (not Unicode)",
    ),
]


@pytest.mark.parametrize("case", UNSTORABLE, ids=[c[0] for c in UNSTORABLE])
async def test_unstorable_values_are_refused_naming_the_field(
    app_client: TestClient, admin: dict[str, str], case: tuple[str, str, Any, str, str]
) -> None:
    _, path, body, field, problem = case
    resp = await app_client.post(path, data=body, headers={**admin, **JSON})
    body = await assert_error(resp, 422, "VALIDATION_ERROR")
    assert body["details"]["errors"] == [{"field": field, "problem": problem}]


async def test_every_json_route_refuses_a_depth_bomb_and_nan(
    app_client: TestClient, admin: dict[str, str]
) -> None:
    """The checks are central: every route that reads a JSON body answers the same way."""
    app = app_client.server.app
    assert app is not None
    specs = [s for s in app[ROUTE_SPECS] if s.body is not None]
    assert len(specs) > 20
    cases = [
        (b"[" * 100_000, 400, "INVALID_JSON"),
        (b'{"a": NaN}', 422, "VALIDATION_ERROR"),
        (b'{"a": [-Infinity]}', 422, "VALIDATION_ERROR"),
        (b"[1e999]", 422, "VALIDATION_ERROR"),
    ]
    for spec in specs:
        path = spec.path.format_map(_PathFiller())
        for raw, status, code in cases:
            resp = await app_client.request(spec.method, path, data=raw, headers={**admin, **JSON})
            await assert_error(resp, status, code)


class _PathFiller(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "1"


async def test_big_numbers_that_fit_still_pass(
    app_client: TestClient, admin: dict[str, str]
) -> None:
    """The checks refuse only what cannot be stored: int8's ends and ordinary floats pass."""
    resp = await app_client.post(
        "/api/v1/menus",
        data=dumps(menu("hostile-fits", big=2**63 - 1, small=-(2**63), f=1.5e308, t="tab\there")),
        headers={**admin, **JSON},
    )
    assert resp.status == 201, await resp.text()
    draft = (await resp.json())["draft"]
    assert draft["big"] == 2**63 - 1 and draft["small"] == -(2**63) and draft["t"] == "tab\there"
    msisdn = new_msisdn()
    resp = await app_client.get(f"/api/v1/customers/{msisdn}", headers=admin)
    await assert_error(resp, 404, "CUSTOMER_NOT_FOUND")


SUP2 = "%C2%B2"  # superscript two: str.isdigit() says yes, int() refuses it
ARABIC1 = "%D9%A1"  # Arabic-Indic one: str.isdigit() says yes, int() reads 1
LONG = "9" * 5000  # past int()'s 4300-digit limit for a string
MSISDN = "+254700000001"

# (label, method, path, status, error code): ids and page cursors that are not ASCII digits,
# or too long for int(). Each but the Arabic digit was a 500 (ValueError from int()); the
# Arabic digit was read as 1.
HOSTILE_IDS: list[tuple[str, str, str, int, str]] = [
    ("fence id sup2", "GET", f"/api/v1/geofences/{SUP2}", 422, "VALIDATION_ERROR"),
    ("fence id arabic1", "GET", f"/api/v1/geofences/{ARABIC1}", 422, "VALIDATION_ERROR"),
    ("fence page limit long", "GET", f"/api/v1/geofences?limit={LONG}", 422, "VALIDATION_ERROR"),
    ("agent events before_id sup2", "GET", f"/api/v1/agent-events?before_id={SUP2}",
     422, "VALIDATION_ERROR"),
    ("menu id sup2", "GET", f"/api/v1/menus/{SUP2}", 404, "MENU_NOT_FOUND"),
    ("menu id arabic1", "GET", f"/api/v1/menus/{ARABIC1}", 404, "MENU_NOT_FOUND"),
    ("menu version sup2", "GET", f"/api/v1/menus/1/versions/{SUP2}", 404, "VERSION_NOT_FOUND"),
    ("KYC document id sup2", "GET", f"/api/v1/customers/{MSISDN}/kyc-documents/{SUP2}/content",
     404, "NOT_FOUND"),
    ("dead letter id sup2", "POST", f"/api/v1/outbox/dead-letters/{SUP2}/replay",
     404, "NOT_FOUND"),
    ("dead letters before sup2", "GET", f"/api/v1/outbox/dead-letters?before={SUP2}",
     422, "VALIDATION_ERROR"),
    ("statement before sup2", "GET", f"/api/v1/customers/{MSISDN}/statement?before={SUP2}",
     422, "VALIDATION_ERROR"),
    ("SMS message id sup2", "GET", f"/api/v1/sms/messages/{SUP2}", 422, "VALIDATION_ERROR"),
    ("SMS message id long", "GET", f"/api/v1/sms/messages/{LONG}", 422, "VALIDATION_ERROR"),
    ("loan application id long", "GET", f"/api/v1/loans/applications/{LONG}",
     404, "APPLICATION_NOT_FOUND"),
    ("loan applications before long", "GET", f"/api/v1/loans/applications?before={LONG}",
     422, "VALIDATION_ERROR"),
]  # fmt: skip


@pytest.mark.parametrize("case", HOSTILE_IDS, ids=[c[0] for c in HOSTILE_IDS])
async def test_ids_and_cursors_that_are_not_ascii_digits_are_refused(
    app_client: TestClient, admin: dict[str, str], case: tuple[str, str, str, int, str]
) -> None:
    _, method, path, status, code = case
    resp = await app_client.request(method, path, headers=admin)
    await assert_error(resp, status, code)


@pytest.mark.parametrize("version", [2**31, 9_999_999_999, 2**63 - 1])
async def test_simulating_a_version_past_int4_is_version_not_found(
    app_client: TestClient, admin: dict[str, str], version: int
) -> None:
    """menu_versions.version is int4: asyncpg refused to encode a bigger one (a 500)."""
    resp = await app_client.post(
        "/api/v1/menus", json=menu(f"hostile-v{version % 997}"), headers=admin
    )
    assert resp.status == 201, await resp.text()
    menu_id = (await resp.json())["id"]
    resp = await app_client.post(
        f"/api/v1/menus/{menu_id}/simulate", json={"version": version}, headers=admin
    )
    await assert_error(resp, 404, "VERSION_NOT_FOUND")


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize(
    "body",
    [b"id=AGT1\xff&lat=1&lon=1&timestamp=1&token=x", b"\xc3\x28=1", b"id=\xed\xa0\x80"],
    ids=["invalid byte", "broken sequence", "encoded surrogate"],
)
async def test_osmand_form_that_is_not_utf8_is_malformed(
    app_client: TestClient, body: bytes
) -> None:
    """aiohttp's request.post() decodes the form strictly: UnicodeDecodeError was a 500."""
    resp = await app_client.post("/agents/osmand", data=body, headers=FORM)
    await assert_error(resp, 400, "MALFORMED_FIX")


def beem_start(request_id: str) -> dict[str, Any]:
    """A Beem session's first hop (dialling *384#) from a number of its own."""
    return {
        "session_id": f"hostile-{secrets.token_hex(4)}",
        "msisdn": "255712000" + str(secrets.randbelow(900) + 100),
        "operator": "vodacom",
        "command": "initiate",
        "payload": {"request_id": request_id, "response": "*384#"},
    }


async def test_ussd_callback_with_a_lone_surrogate_is_400_and_moves_nothing(
    app_client: TestClient,
) -> None:
    """A lone surrogate in a field the reply echoes (Beem's operator) used to run the step and
    then fail to render (503 after the session had moved); in the input it ended the session as
    "temporarily unavailable". Now the parser refuses it, and the same hop sent properly runs."""
    start = beem_start("1")
    resp = await app_client.post("/ussd/beem", data=dumps(start), headers=JSON)
    assert resp.status == 200 and "Register" in (await resp.json())["payload"]["request"]
    step = {**start, "command": "continue", "payload": {"request_id": "2", "response": "1"}}
    for hostile in (
        {**step, "operator": "\ud800"},
        {**step, "payload": {"request_id": "2", "response": "1\udc00"}},
    ):
        resp = await app_client.post("/ussd/beem", data=dumps(hostile), headers=JSON)
        await assert_error(resp, 400, "BAD_REQUEST")
    resp = await app_client.post("/ussd/beem", data=dumps(step), headers=JSON)
    body = await resp.json()
    assert resp.status == 200 and body["command"] == "continue", body
    assert "first name" in body["payload"]["request"], body


# A NUL (%00) anywhere in the URL: PostgreSQL's text refuses it, and the SMS search handed it to
# the database (a 500). Every route now refuses it the same way, before its handler runs.
NUL_URLS = [
    ("GET", "/api/v1/sms/messages?q=%00"),
    ("GET", "/api/v1/sms/messages?q=a%00b&limit=5"),
    ("GET", "/api/v1/agents/AGT%00001"),
    ("GET", f"/api/v1/customers/{MSISDN}%00/statement"),
    ("POST", "/api/v1/outbox/dead-letters/1%00/replay"),
]


@pytest.mark.parametrize(("method", "url"), NUL_URLS, ids=[u for _, u in NUL_URLS])
async def test_a_nul_in_the_url_is_400(
    app_client: TestClient, admin: dict[str, str], method: str, url: str
) -> None:
    resp = await app_client.request(method, url, headers=admin)
    await assert_error(resp, 400, "BAD_REQUEST")


async def test_an_escaped_percent_before_00_is_not_a_nul(
    app_client: TestClient, admin: dict[str, str]
) -> None:
    """ "%2500" is the text "%00": the route's own answer (an unknown channel), not this check's."""
    resp = await app_client.get("/api/v1/outbox/dead-letters?channel=%2500", headers=admin)
    body = await assert_error(resp, 422, "VALIDATION_ERROR")
    assert body["details"] == {"field": "channel"}


# A body that says Content-Encoding: gzip/deflate but is not: aiohttp raises RequestPayloadError
# from request.read() (not an HTTPException), which the middleware answered as a 500.
BAD_ENCODINGS = [
    ("POST", "/api/v1/deposits", "gzip", JSON),
    ("POST", "/api/v1/menus", "gzip", JSON),
    ("POST", "/ussd/beem", "gzip", JSON),
    ("POST", "/agents/osmand", "gzip", FORM),
    ("POST", f"/api/v1/customers/{MSISDN}/kyc-documents?kind=passport", "gzip",
     {"Content-Type": "application/pdf"}),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_ENCODINGS, ids=[f"{c[1]} {c[2]}" for c in BAD_ENCODINGS])
async def test_a_body_that_is_not_its_content_encoding_is_400(
    app_client: TestClient,
    admin: dict[str, str],
    case: tuple[str, str, str, dict[str, str]],
) -> None:
    method, path, encoding, headers = case
    before = await counts(app_client)
    resp = await app_client.request(
        method,
        path,
        data=b'{"not": "compressed"}',
        headers={**admin, **headers, "Content-Encoding": encoding},
    )
    await assert_error(resp, 400, "BAD_REQUEST")
    assert await counts(app_client) == before


@pytest.mark.parametrize("hop", ["\u00b2", "\u0663", "9" * 200])
async def test_ussd_hop_ids_that_are_not_ascii_numbers_run_the_step(
    app_client: TestClient, hop: str
) -> None:
    """Beem's request_id is the hop. The stale-hop check compared hops with int() whenever
    str.isdigit() said yes: "²" raised ValueError inside the step, and the caller was told
    "temporarily unavailable". Such a hop is not a number: it is a new hop, and it runs."""
    start = beem_start("7")
    resp = await app_client.post("/ussd/beem", data=dumps(start), headers=JSON)
    assert resp.status == 200
    step = {**start, "command": "continue", "payload": {"request_id": hop, "response": "1"}}
    resp = await app_client.post("/ussd/beem", data=dumps(step), headers=JSON)
    body = await resp.json()
    assert resp.status == 200 and body["command"] == "continue", body
    assert "first name" in body["payload"]["request"], body


@pytest.mark.parametrize(
    "password",
    ["a" * 73, "x1" * 64, "\u00e9" * 40, "\U0001f600" * 19],
    ids=["73 ASCII", "128 ASCII", "40 two-byte letters", "19 emoji"],
)
@pytest.mark.parametrize("known", [True, False], ids=["known admin", "unknown name"])
async def test_a_password_past_bcrypts_72_bytes_is_a_wrong_password(
    app_client: TestClient, password: str, known: bool
) -> None:
    """bcrypt 5 raises ValueError for more than 72 bytes (earlier versions cut them silently):
    a login with such a password answered 500. No stored password is that long (creation
    refuses it), so it is simply wrong: 401, counted like any wrong password."""
    app = app_client.server.app
    assert app is not None
    admin = await make_admin(app)
    username = admin.username if known else f"nobody-{secrets.token_hex(4)}"
    resp = await app_client.post(
        "/api/v1/auth/login",
        json={"username": username, "password": password, "otp": admin.otp()},
    )
    await assert_error(resp, 401, "INVALID_CREDENTIALS")
    if known:
        pool: asyncpg.Pool = app[PG_POOL]
        failures = await pool.fetchval(
            "SELECT failed_logins FROM admin_users WHERE username = $1", admin.username
        )
        assert failures == 1
