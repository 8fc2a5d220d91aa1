"""The admin API for the banking core over real HTTP: customers, statement, deposits with
idempotency, agents and float, unlock, reversal, ledger check, permissions per route."""

from __future__ import annotations

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from core.crypto import FieldCipher
from core.pins import verify_pin
from gateway.admin import money as money_admin
from gateway.keys import PG_POOL
from tests.helpers import assert_error, auth, new_msisdn, token_for
from tests.integration.core.conftest import PIN, Tokens, make_customer, new_key

CUSTOMER_KEYS = {"msisdn", "first_name", "last_name", "tier", "status", "language", "wallets"}


async def test_register_read_deposit_statement(
    app_client: TestClient, core_db: asyncpg.Pool, tokens: Tokens
) -> None:
    msisdn = new_msisdn()
    body = {
        "msisdn": "0" + msisdn[4:],
        "first_name": "Wanjiku",
        "last_name": "Kamau",
        "national_id": "NID" + msisdn[-8:],
        "pin": "7391",
        "language": "sw",
    }
    created = await app_client.post("/api/v1/customers", json=body, headers=auth(tokens.admin))
    assert created.status == 201, await created.text()
    assert await created.json() == {
        "msisdn": msisdn,
        "first_name": "Wanjiku",
        "last_name": "Kamau",
        "tier": "Basic",
        "status": "active",
        "language": "sw",
        "wallets": [{"currency": "KES", "balance_minor": 0}],
    }
    again = await app_client.post("/api/v1/customers", json=body, headers=auth(tokens.admin))
    await assert_error(again, 409, "ALREADY_EXISTS")

    deposit = {
        "msisdn": msisdn[1:],
        "amount_minor": 5_000_00,
        "idempotency_key": new_key(),
        "reference": "BANK-1",
    }
    first = await app_client.post("/api/v1/deposits", json=deposit, headers=auth(tokens.finance))
    first_body = await first.json()
    assert first.status == 201, first_body
    assert first_body["balance_after_minor"] == 5_000_00 and first_body["type"] == "deposit"
    replay = await app_client.post("/api/v1/deposits", json=deposit, headers=auth(tokens.finance))
    assert replay.status == 201 and await replay.json() == first_body
    assert replay.headers["Idempotent-Replayed"] == "true"
    other = dict(deposit, amount_minor=5_000_01)
    conflict = await app_client.post("/api/v1/deposits", json=other, headers=auth(tokens.finance))
    await assert_error(conflict, 409, "IDEMPOTENCY_CONFLICT")

    for path in (f"/api/v1/customers/{msisdn}", f"/api/v1/customers/{msisdn[1:]}"):
        got = await app_client.get(path, headers=auth(tokens.admin))
        got_body = await got.json()
        assert got.status == 200 and set(got_body) == CUSTOMER_KEYS
        assert got_body["wallets"] == [{"currency": "KES", "balance_minor": 5_000_00}]

    stmt = await app_client.get(
        f"/api/v1/customers/{msisdn}/statement?limit=1", headers=auth(tokens.admin)
    )
    stmt_body = await stmt.json()
    assert stmt.status == 200, stmt_body
    assert [line["reference"] for line in stmt_body["lines"]] == [first_body["reference"]]
    assert stmt_body["next_before"] == stmt_body["lines"][0]["entry_id"]
    older = await app_client.get(
        f"/api/v1/customers/{msisdn}/statement?before={stmt_body['next_before']}",
        headers=auth(tokens.admin),
    )
    assert (await older.json())["lines"] == []


async def test_permissions_per_route(
    app_client: TestClient,
    core_db: asyncpg.Pool,
    cipher: FieldCipher,
    tokens: Tokens,
) -> None:
    msisdn = await make_customer(core_db, cipher)
    deposit = {"msisdn": msisdn, "amount_minor": 100, "idempotency_key": new_key()}
    refused = await app_client.post("/api/v1/deposits", json=deposit, headers=auth(tokens.support))
    body = await assert_error(refused, 403, "FORBIDDEN")
    assert body["details"]["permission"] == "deposits:create"
    register = {
        "msisdn": new_msisdn(),
        "first_name": "A",
        "last_name": "B",
        "national_id": "X1234567",
        "pin": "7391",
    }
    no_write = await app_client.post(
        "/api/v1/customers", json=register, headers=auth(tokens.finance)
    )
    await assert_error(no_write, 403, "FORBIDDEN")
    anonymous = await app_client.post("/api/v1/deposits", json=deposit)
    await assert_error(anonymous, 401)
    reads = await app_client.get(f"/api/v1/customers/{msisdn}", headers=auth(tokens.support))
    assert reads.status == 200
    assert (
        await core_db.fetchval(
            "SELECT count(*) FROM transfers WHERE idempotency_key = $1", deposit["idempotency_key"]
        )
        == 0
    )


@pytest.mark.parametrize(
    "case",
    [
        ({"amount_minor": -5}, 422, "VALIDATION_ERROR"),
        ({"amount_minor": 0}, 422, "VALIDATION_ERROR"),
        ({"amount_minor": 12.5}, 422, "VALIDATION_ERROR"),
        ({"amount_minor": "100"}, 422, "VALIDATION_ERROR"),
        ({"amount_minor": 10**20}, 422, "VALIDATION_ERROR"),
        ({"msisdn": "+254799999999x"}, 422, "VALIDATION_ERROR"),
        ({"msisdn": "+19999999999"}, 404, "CUSTOMER_NOT_FOUND"),
        ({"extra": 1}, 422, "VALIDATION_ERROR"),
        ({"idempotency_key": ""}, 422, "VALIDATION_ERROR"),
    ],
)
async def test_deposit_bad_input(
    app_client: TestClient,
    core_db: asyncpg.Pool,
    cipher: FieldCipher,
    tokens: Tokens,
    case: tuple[dict[str, object], int, str],
) -> None:
    payload, status, code = case
    msisdn = await make_customer(core_db, cipher)
    body = {"msisdn": msisdn, "amount_minor": 100, "idempotency_key": new_key()} | payload
    resp = await app_client.post("/api/v1/deposits", json=body, headers=auth(tokens.finance))
    await assert_error(resp, status, code)
    got = await app_client.get(f"/api/v1/customers/{msisdn}", headers=auth(tokens.finance))
    assert (await got.json())["wallets"][0]["balance_minor"] == 0


async def test_not_json_and_unknown_customer(app_client: TestClient, tokens: Tokens) -> None:
    resp = await app_client.post(
        "/api/v1/deposits",
        data="{nope",
        headers=auth(tokens.admin) | {"Content-Type": "application/json"},
    )
    await assert_error(resp, 400, "INVALID_JSON")
    missing = await app_client.get(f"/api/v1/customers/{new_msisdn()}", headers=auth(tokens.admin))
    await assert_error(missing, 404, "CUSTOMER_NOT_FOUND")
    bad = await app_client.get("/api/v1/customers/hello", headers=auth(tokens.admin))
    await assert_error(bad, 422, "VALIDATION_ERROR")
    page = await app_client.get(
        f"/api/v1/customers/{new_msisdn()}/statement?limit=abc", headers=auth(tokens.admin)
    )
    await assert_error(page, 422, "VALIDATION_ERROR")


async def test_agents_float_and_unlock(
    app_client: TestClient,
    core_db: asyncpg.Pool,
    cipher: FieldCipher,
    tokens: Tokens,
) -> None:
    code = "AP" + new_msisdn()[-6:]
    body = {"code": code.lower(), "msisdn": "0711000111", "name": "Mama Mboga", "pin": "4826"}
    created = await app_client.post("/api/v1/agents", json=body, headers=auth(tokens.admin))
    created_body = await created.json()
    assert created.status == 201, created_body
    assert created_body == {
        "code": code,
        "msisdn": "+254711000111",
        "name": "Mama Mboga",
        "status": "active",
        "currency": "KES",
        "language": "en",
        "float_minor": 0,
        "commission_minor": 0,
    }
    dup = await app_client.post("/api/v1/agents", json=body, headers=auth(tokens.admin))
    await assert_error(dup, 409, "ALREADY_EXISTS")
    top_up = {"amount_minor": 10_000_00, "idempotency_key": new_key()}
    no = await app_client.post(
        f"/api/v1/agents/{code}/float", json=top_up, headers=auth(tokens.support)
    )
    await assert_error(no, 403, "FORBIDDEN")
    ok = await app_client.post(
        f"/api/v1/agents/{code}/float", json=top_up, headers=auth(tokens.finance)
    )
    assert ok.status == 201, await ok.text()
    again = await app_client.post(
        f"/api/v1/agents/{code}/float", json=top_up, headers=auth(tokens.finance)
    )
    assert again.headers["Idempotent-Replayed"] == "true"
    got = await app_client.get(f"/api/v1/agents/{code}", headers=auth(tokens.support))
    assert (await got.json())["float_minor"] == 10_000_00
    unknown = await app_client.get("/api/v1/agents/NOSUCH9", headers=auth(tokens.support))
    await assert_error(unknown, 404, "AGENT_NOT_FOUND")
    unknown_float = await app_client.post(
        "/api/v1/agents/NOSUCH9/float",
        json=top_up | {"idempotency_key": new_key()},
        headers=auth(tokens.finance),
    )
    await assert_error(unknown_float, 404, "AGENT_NOT_FOUND")


async def test_unlock_and_reversal(
    app_client: TestClient,
    core_db: asyncpg.Pool,
    cipher: FieldCipher,
    tokens: Tokens,
) -> None:
    msisdn = await make_customer(core_db, cipher)
    for _ in range(3):
        with pytest.raises(Exception):  # WrongPin twice, then WalletLocked
            await verify_pin(core_db, msisdn, "9999")
    unlocked = await app_client.post(
        f"/api/v1/customers/{msisdn}/unlock", headers=auth(tokens.support)
    )
    assert unlocked.status == 200 and (await unlocked.json())["status"] == "active"
    await verify_pin(core_db, msisdn, PIN)

    deposit = {"msisdn": msisdn, "amount_minor": 700_00, "idempotency_key": new_key()}
    posted = await (
        await app_client.post("/api/v1/deposits", json=deposit, headers=auth(tokens.finance))
    ).json()
    reversal = {"idempotency_key": new_key(), "reason": "duplicate credit"}
    refused = await app_client.post(
        f"/api/v1/transfers/{posted['reference']}/reversal",
        json=reversal,
        headers=auth(tokens.support),
    )
    await assert_error(refused, 403, "FORBIDDEN")
    done = await app_client.post(
        f"/api/v1/transfers/{posted['reference'].lower()}/reversal",
        json=reversal,
        headers=auth(tokens.finance),
    )
    done_body = await done.json()
    assert done.status == 201, done_body
    assert done_body["type"] == "reversal" and done_body["balance_after_minor"] == 0
    twice = await app_client.post(
        f"/api/v1/transfers/{posted['reference']}/reversal",
        json={"idempotency_key": new_key()},
        headers=auth(tokens.admin),
    )
    await assert_error(twice, 409, "ALREADY_REVERSED")
    missing = await app_client.post(
        "/api/v1/transfers/TNOTHING1/reversal",
        json={"idempotency_key": new_key()},
        headers=auth(tokens.admin),
    )
    await assert_error(missing, 404, "TRANSFER_NOT_FOUND")

    tier = await app_client.put(
        f"/api/v1/customers/{msisdn}/tier", json={"tier": "Premium"}, headers=auth(tokens.support)
    )
    refused = await assert_error(tier, 409, "KYC_DOCUMENTS_MISSING")  # tests/.../test_kyc.py
    assert refused["details"]["missing"] == ["identity", "proof_of_address"]


async def test_ledger_check_route(app_client: TestClient, tokens: Tokens) -> None:
    viewer = await token_for(app_client, "viewer")
    resp = await app_client.get("/api/v1/ledger/check", headers=auth(viewer))
    body = await resp.json()
    assert resp.status == 200 and body["ok"] is True
    assert {c["name"] for c in body["checks"]} >= {
        "transfers_sum_to_zero",
        "balances_equal_entries",
        "no_negative_wallets",
        "debits_equal_credits_per_currency",
    }
    refused = await app_client.get("/api/v1/ledger/check", headers=auth(tokens.support))
    await assert_error(refused, 403, "FORBIDDEN")


async def test_a_ledger_check_that_cannot_finish_is_503_and_changes_no_setting(
    app_client: TestClient, core_db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check held up past its time (here: the entries locked by another transaction, and a
    0.2 s bound instead of 120 s) answers 503 with what to do instead; the bound was the
    check's own, not left on the pooled connection."""
    monkeypatch.setattr(money_admin, "LEDGER_CHECK_TIMEOUT_S", 0.2)
    viewer = await token_for(app_client, "viewer")
    async with core_db.acquire() as locker, locker.transaction():
        await locker.execute("LOCK TABLE entries IN ACCESS EXCLUSIVE MODE")
        resp = await app_client.get("/api/v1/ledger/check", headers=auth(viewer))
        body = await assert_error(resp, 503, "LEDGER_CHECK_TIMEOUT")
    assert "gateway ledger check" in body["message"]
    app = app_client.server.app
    assert app is not None
    timeouts = set()
    for _ in range(3):  # whichever connections the pool hands out
        timeouts.add(await app[PG_POOL].fetchval("SHOW statement_timeout"))
    assert timeouts == {"10s"}
    ok = await app_client.get("/api/v1/ledger/check", headers=auth(viewer))
    assert ok.status == 200 and (await ok.json())["ok"] is True
