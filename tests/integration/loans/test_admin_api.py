"""The loans admin API over HTTP: products, the application queue, approve and reject, the
portfolio, and bad input of every kind answered with the standard error JSON."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from core.identity import create_admin, load_principal
from core.loans.decision import Outcome
from core.loans.fraud import FraudLimits
from gateway.keys import CIPHER, LOANS, PG_POOL, SESSIONMAKER, TOKENS
from menus.loans.service import LoanPolicy
from tests.helpers import PASSWORD, assert_error, auth
from tests.integration.loans.conftest import World, new_key, prepare_currency, product_terms

PRODUCTS = "/api/v1/loans/products"
APPLICATIONS = "/api/v1/loans/applications"
PORTFOLIO = "/api/v1/loans/portfolio"


async def token_for(client: TestClient, role: str) -> str:
    """A real signed access token for a new admin with `role`, issued without the login
    endpoint: logins are rate limited per address, and login itself is tested elsewhere."""
    app = client.server.app
    assert app is not None
    async with app[SESSIONMAKER].begin() as db:
        created = await create_admin(
            db,
            app[CIPHER],
            username=f"adm{secrets.token_hex(5)}",
            password=PASSWORD,
            role=role,
            password_rounds=4,
        )
        principal = await load_principal(db, created.user_id)
    return app[TOKENS].issue(principal).access_token


@pytest.fixture(scope="module")
async def admin_token(app_client: TestClient) -> str:
    return await token_for(app_client, "admin")


@pytest.fixture
async def api(app_client: TestClient, world: World) -> AsyncIterator[TestClient]:
    """The app's own loan service (on the banking core, as `serve` builds it), pointed at the
    test world's clock; restored afterwards."""
    app = app_client.server.app
    assert app is not None
    service = app[LOANS]
    saved = (service.clock, service.policy)
    service.clock = world.clock
    world.service = service
    yield app_client
    service.clock, service.policy = saved


async def test_create_and_list_products(api: TestClient, admin_token: str) -> None:
    terms = product_terms(interest_rate_percent=7.5, facility_fee_percent="1.5")
    resp = await api.post(PRODUCTS, json=terms, headers=auth(admin_token))
    body = await resp.json()
    assert resp.status == 201, body
    assert body["code"] == terms["code"] and isinstance(body["id"], int)
    assert body["interest_rate_percent"] == "7.5" and body["facility_fee_percent"] == "1.5"
    assert body["tiers"] == ["premium", "standard"] and body["repayment_every"] == 1
    listed = await (await api.get(PRODUCTS, headers=auth(admin_token))).json()
    assert terms["code"] in [p["code"] for p in listed["items"]]
    again = await api.post(PRODUCTS, json=terms, headers=auth(admin_token))
    await assert_error(again, 409, "ALREADY_EXISTS")
    audited = await _pool(api).fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'loan_product.create' AND target = $1",
        terms["code"],
    )
    assert audited == 1


def _without(key: str) -> dict[str, Any]:
    terms = product_terms()
    del terms[key]
    return terms


BAD_PRODUCTS = [
    ("missing code", _without("code"), "code"),
    ("missing tiers", _without("tiers"), "tiers"),
    ("extra field", {**product_terms(), "colour": "red"}, "colour"),
    ("amount as text", product_terms(principal_min_minor="100"), "principal_min_minor"),
    ("amount as float", product_terms(principal_max_minor=100.5), "principal_max_minor"),
    ("amount as bool", product_terms(auto_approve_max_minor=True), "auto_approve_max_minor"),
    ("zero principal", product_terms(principal_min_minor=0), "principal_min_minor"),
    ("huge principal", product_terms(principal_max_minor=10**19), "principal_max_minor"),
    (
        "max below min",
        product_terms(principal_min_minor=500, principal_max_minor=100),
        "principal_max_minor",
    ),
    ("bad method", product_terms(interest_method="compound"), "interest_method"),
    ("bad frequency", product_terms(frequency="years"), "frequency"),
    ("negative rate", product_terms(interest_rate_percent=-1), "interest_rate_percent"),
    ("rate as junk", product_terms(interest_rate_percent="abc"), "interest_rate_percent"),
    ("too precise", product_terms(interest_rate_percent="1.00001"), "interest_rate_percent"),
    ("zero repayments", product_terms(repayments=0), "repayments"),
    (
        "grace beyond term",
        product_terms(repayments=2, grace_principal_periods=2),
        "grace_principal_periods",
    ),
    (
        "interest grace beyond principal grace",
        product_terms(grace_principal_periods=0, grace_interest_periods=1),
        "grace_interest_periods",
    ),
    ("lowercase code", product_terms(code="quick"), "code"),
    ("bad currency", product_terms(currency="kes"), "currency"),
    ("empty tiers", product_terms(tiers=[]), "tiers"),
    ("tier not a word", product_terms(tiers=["gold star!"]), "tiers"),
    ("control chars in name", product_terms(name="Quick\x00loan"), "name"),
]


@pytest.mark.parametrize(("label", "body", "field"), BAD_PRODUCTS, ids=[b[0] for b in BAD_PRODUCTS])
async def test_bad_products_are_refused_and_nothing_is_stored(
    api: TestClient, admin_token: str, label: str, body: dict[str, Any], field: str
) -> None:
    resp = await api.post(PRODUCTS, json=body, headers=auth(admin_token))
    error = await assert_error(resp, 422, "VALIDATION_ERROR")
    fields = [e["field"] for e in error["details"]["errors"]]
    assert any(f.startswith(field) for f in fields), fields
    code = body.get("code")
    if isinstance(code, str):
        stored = await _pool(api).fetchval(
            "SELECT count(*) FROM loan_products WHERE code = $1", code
        )
        assert stored == 0


def _pool(api: TestClient) -> Any:
    app = api.server.app
    assert app is not None
    return app[PG_POOL]


@pytest.mark.parametrize(
    "case",
    [
        ("{not json", {"Content-Type": "application/json"}, 400, "INVALID_JSON"),
        (
            "code=X",
            {"Content-Type": "application/x-www-form-urlencoded"},
            400,
            "INVALID_CONTENT_TYPE",
        ),
        ("[]", {"Content-Type": "application/json"}, 422, "VALIDATION_ERROR"),
        (
            '{"interest_rate_percent": NaN}',
            {"Content-Type": "application/json"},
            422,
            "VALIDATION_ERROR",
        ),
    ],
)
async def test_malformed_bodies(
    api: TestClient, admin_token: str, case: tuple[str, dict[str, str], int, str]
) -> None:
    data, headers, status, code = case
    resp = await api.post(PRODUCTS, data=data, headers={**auth(admin_token), **headers})
    await assert_error(resp, status, code)


async def test_permissions(api: TestClient) -> None:
    await assert_error(await api.get(PRODUCTS), 401)
    viewer = await token_for(api, "viewer")
    await assert_error(await api.post(PRODUCTS, json=product_terms(), headers=auth(viewer)), 403)
    assert (await api.get(PRODUCTS, headers=auth(viewer))).status == 200
    assert (await api.get(PORTFOLIO, headers=auth(viewer))).status == 200
    officer = await token_for(api, "loan_officer")
    await assert_error(
        await api.post(f"{APPLICATIONS}/1/reject", json={"reason": "x"}, headers=auth(viewer)),
        403,
    )
    await assert_error(await api.post(PRODUCTS, json=product_terms(), headers=auth(officer)), 403)


async def _review_application(world: World) -> tuple[str, int]:
    product = await world.product(auto_approve_max_minor=0)
    msisdn = await world.customer()
    result = await world.apply(msisdn, product.code, 100_000, key="k", channel="sms")
    assert result.decision.outcome is Outcome.REVIEW
    return msisdn, result.application.id


async def test_review_queue_approve_and_reject(api: TestClient, world: World) -> None:
    officer = await token_for(api, "loan_officer")
    m1, a1 = await _review_application(world)
    m2, a2 = await _review_application(world)
    queue = await api.get(
        APPLICATIONS, params={"decision": "review", "status": "applied"}, headers=auth(officer)
    )
    ids = [a["id"] for a in (await queue.json())["items"]]
    assert a1 in ids and a2 in ids and ids == sorted(ids, reverse=True)
    approved = await api.post(f"{APPLICATIONS}/{a1}/approve", headers=auth(officer))
    body = await approved.json()
    assert approved.status == 200, body
    assert body["application"]["state"] == "active" and body["loan"]["status"] == "active"
    assert body["application"]["decided_by"].startswith("adm")
    # The same officer again (a retry after a lost answer, a double click): the approval.
    twice = await api.post(f"{APPLICATIONS}/{a1}/approve", headers=auth(officer))
    again = await twice.json()
    assert twice.status == 200, again
    assert (again["application"]["id"], again["loan"]["id"]) == (a1, body["loan"]["id"])
    # Another officer cannot approve what was decided: 409 naming the state.
    other = await token_for(api, "loan_officer")
    late = await api.post(f"{APPLICATIONS}/{a1}/approve", headers=auth(other))
    error = await assert_error(late, 409, "ILLEGAL_TRANSITION")
    assert error["details"]["state"] == "disbursed"
    assert (
        await world.pool.fetchval("SELECT count(*) FROM loans WHERE application_id = $1", a1) == 1
    )
    rejected = await api.post(
        f"{APPLICATIONS}/{a2}/reject",
        json={"reason_code": "INCOMPLETE_DOCUMENTS", "reason": "No payslip"},
        headers=auth(officer),
    )
    assert (await rejected.json())["application"]["status"] == "rejected"
    assert (await rejected.json())["application"]["note"] == "INCOMPLETE_DOCUMENTS: No payslip"
    detail = await (await api.get(f"{APPLICATIONS}/{a1}", headers=auth(officer))).json()
    assert len(detail["installments"]) == 3 and detail["loan"]["msisdn"] == m1
    mine = await api.get(APPLICATIONS, params={"msisdn": m2.lstrip("+")}, headers=auth(officer))
    assert [a["id"] for a in (await mine.json())["items"]] == [a2]
    audit = await _pool(api).fetch(
        # Other kinds of rows (a fence's audit) may carry the same number as their target.
        "SELECT action FROM audit_log WHERE target = ANY($1::text[]) "
        "AND action LIKE 'loan_application.%' ORDER BY id",
        [str(a1), str(a2)],
    )
    assert [r["action"] for r in audit] == ["loan_application.approve", "loan_application.reject"]


@pytest.mark.parametrize(
    "case",
    [
        (f"{APPLICATIONS}/abc/approve", None, 404, "APPLICATION_NOT_FOUND"),
        (f"{APPLICATIONS}/0/approve", None, 404, "APPLICATION_NOT_FOUND"),
        (f"{APPLICATIONS}/99999999999999999999/approve", None, 404, "APPLICATION_NOT_FOUND"),
        (f"{APPLICATIONS}/987654321/approve", None, 404, "APPLICATION_NOT_FOUND"),
        (f"{APPLICATIONS}/987654321/reject", {"reason": "x"}, 404, "APPLICATION_NOT_FOUND"),
        (f"{APPLICATIONS}/1/reject", {}, 422, "VALIDATION_ERROR"),
        (f"{APPLICATIONS}/1/reject", {"reason": ""}, 422, "VALIDATION_ERROR"),
        (f"{APPLICATIONS}/1/reject", {"reason": "x" * 501}, 422, "VALIDATION_ERROR"),
        (f"{APPLICATIONS}/1/reject", {"reason": "x", "more": 1}, 422, "VALIDATION_ERROR"),
        (f"{APPLICATIONS}/1/reject", {"reason_code": "NOPE"}, 422, "VALIDATION_ERROR"),
        (f"{APPLICATIONS}/1/reject", {"reason": None}, 422, "VALIDATION_ERROR"),
        (f"{APPLICATIONS}/1/reject", {"reason_code": 3}, 422, "VALIDATION_ERROR"),
        ("/api/v1/loans/987654321/write-off", None, 404, "LOAN_NOT_FOUND"),
    ],
)
async def test_review_bad_input(
    api: TestClient, admin_token: str, case: tuple[str, Any, int, str]
) -> None:
    path, body, status, code = case
    kwargs: dict[str, Any] = {"headers": auth(admin_token)}
    if body is not None:
        kwargs["json"] = body
    await assert_error(await api.post(path, **kwargs), status, code)


@pytest.mark.parametrize(
    "query",
    [
        {"status": "bogus"},
        {"decision": "maybe"},
        {"limit": "0"},
        {"limit": "201"},
        {"limit": "ten"},
        {"before": "-1"},
        {"before": "1e5"},
        {"msisdn": "not-a-number"},
        {"colour": "red"},
    ],
)
async def test_application_list_bad_query(
    api: TestClient, admin_token: str, query: dict[str, str]
) -> None:
    resp = await api.get(APPLICATIONS, params=query, headers=auth(admin_token))
    error = await assert_error(resp, 422, "VALIDATION_ERROR")
    assert error["details"]["errors"][0]["field"] == next(iter(query))


async def test_application_pages(api: TestClient, world: World, admin_token: str) -> None:
    msisdn = await world.customer()
    product = await world.product(tiers=["premium"])  # every application refused: no limit hit
    world.service.policy = LoanPolicy(fraud=FraudLimits(max_applications_24h=100))
    for i in range(5):
        await world.apply(msisdn, product.code, 100_000, key=f"p{i}", channel="sms")
    seen: list[int] = []
    before = None
    for _ in range(3):
        params = {"msisdn": msisdn, "limit": "2", **({"before": str(before)} if before else {})}
        page = await (await api.get(APPLICATIONS, params=params, headers=auth(admin_token))).json()
        seen += [a["id"] for a in page["items"]]
        before = page["next_before"]
        if before is None:
            break
    assert len(seen) == 5 and seen == sorted(seen, reverse=True) and len(set(seen)) == 5


async def test_portfolio_shows_arrears_buckets(api: TestClient, world: World) -> None:
    token = await token_for(api, "viewer")
    world.currency = "TZS"  # a currency no other test uses
    await prepare_currency(world.pool, "TZS", 300_000)
    product = await world.product()
    msisdns = [await world.customer() for _ in range(3)]
    for m in msisdns:
        result = await world.apply(m, product.code, 100_000, key="k")
        assert result.loan is not None
    # One loan 45 days late, one 95 days late, one current (as the arrears job would record).
    loan_ids = [
        r["id"]
        for r in await _pool(api).fetch(
            "SELECT id FROM loans WHERE msisdn = ANY($1::text[]) ORDER BY id", msisdns
        )
    ]
    await _pool(api).execute(
        "UPDATE loans SET days_past_due = 45, max_days_past_due = 45,"
        " arrears_bucket = '31-60' WHERE id = $1",
        loan_ids[0],
    )
    await _pool(api).execute(
        "UPDATE loans SET days_past_due = 95, max_days_past_due = 95,"
        " arrears_bucket = '90+' WHERE id = $1",
        loan_ids[1],
    )
    body = await (await api.get(PORTFOLIO, headers=auth(token))).json()
    tzs = next(c for c in body["currencies"] if c["currency"] == "TZS")
    assert tzs["open_loans"] == 3 and tzs["loans_by_status"]["active"] == 3
    assert tzs["outstanding_principal_minor"] == 300_000
    assert tzs["outstanding_total_minor"] == 3 * 115_000
    assert {k: v["loans"] for k, v in tzs["arrears"].items()} == {
        "current": 1,
        "1-30": 0,
        "31-60": 1,
        "61-90": 0,
        "90+": 1,
    }
    assert tzs["par_bps"] == 6666  # two thirds of principal is in arrears
    assert json.dumps(body)  # plain JSON all the way down


async def test_openapi_lists_the_loan_routes(api: TestClient) -> None:
    doc = await (await api.get("/api/v1/openapi.json")).json()
    assert doc["paths"][PRODUCTS]["post"]["x-permission"] == "loans:products"
    assert doc["paths"][f"{APPLICATIONS}/{{id}}/approve"]["post"]["x-permission"] == "loans:manage"
    assert "ProductIn" in doc["components"]["schemas"]


async def test_funding_the_loan_fund(api: TestClient, world: World, admin_token: str) -> None:
    fund_url = "/api/v1/loans/fund"
    before = (await world.income())["loan_fund"]
    body = {"amount_minor": 123_456, "idempotency_key": new_key(), "currency": world.currency}
    first = await api.post(fund_url, json=body, headers=auth(admin_token))
    assert first.status == 201, await first.text()
    out = await first.json()
    assert (out["type"], out["amount_minor"], out["credit_party"]) == (
        "loan_fund_topup",
        123_456,
        "LOANS",
    )
    again = await api.post(fund_url, json=body, headers=auth(admin_token))
    assert again.status == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert (await again.json())["reference"] == out["reference"]
    await assert_error(
        await api.post(fund_url, json={**body, "amount_minor": 1}, headers=auth(admin_token)),
        409,
        "IDEMPOTENCY_CONFLICT",
    )
    officer = await token_for(api, "loan_officer")
    await assert_error(await api.post(fund_url, json=body, headers=auth(officer)), 403)
    for bad in (
        {**body, "amount_minor": 0},
        {**body, "amount_minor": "100"},
        {**body, "surprise": 1},
        {**body, "currency": "xts"},
        {**body, "currency": "QQQ"},  # no such currency's accounts
        {"amount_minor": 100},
    ):
        resp = await api.post(fund_url, json=bad, headers=auth(admin_token))
        await assert_error(resp, 422)
    assert (await world.income())["loan_fund"] == before + 123_456


async def test_loan_transfers_refused_by_the_reversal_route(
    api: TestClient, world: World, admin_token: str
) -> None:
    """POST /api/v1/transfers/{reference}/reversal on a loan's disbursement or repayment: 409
    NOT_REVERSIBLE, nothing moves, the loan book and the ledger still agree (the world's
    invariants run after the test)."""
    product = await world.product()
    msisdn = await world.customer()
    applied = await world.apply(msisdn, product.code, 100_000)
    assert applied.loan is not None and applied.loan.disbursement_ref is not None
    paid = await world.repay(msisdn, 10_000)
    assert paid.repayment.ledger_ref is not None
    wallet, income = await world.balance(msisdn), await world.income()
    for ref in (applied.loan.disbursement_ref, paid.repayment.ledger_ref):
        resp = await api.post(
            f"/api/v1/transfers/{ref}/reversal",
            json={"idempotency_key": new_key(), "reason": "customer asked"},
            headers=auth(admin_token),
        )
        error = await assert_error(resp, 409, "NOT_REVERSIBLE")
        assert "loan book" in error["message"] and error["details"]["reference"] == ref
    assert await world.balance(msisdn) == wallet and await world.income() == income
    status = await world.service.status(world.pool, msisdn)
    assert status is not None and status.outstanding_minor == paid.outstanding_minor
