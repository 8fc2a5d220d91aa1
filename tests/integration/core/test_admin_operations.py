"""Admin operations over real HTTP: closing a customer's account, outbox dead letters (list,
replay one, replay all), KYC tier limits and tariffs (read, change, audited). Happy paths and
bad input: malformed, unknown, forbidden, conflicts; a refused request changes nothing."""

from __future__ import annotations

import json
import secrets

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from core import errors as E
from core.crypto import FieldCipher
from core.transfers import balance, deposit, send_money
from tests.helpers import assert_error, auth
from tests.integration.core.conftest import Tokens, make_customer, new_key


async def audit_count(db: asyncpg.Pool, action: str, target: str) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = $1 AND target = $2", action, target
        )
    )


async def private_currency(db: asyncpg.Pool) -> str:
    """A currency no test has used in this database (it outlives a run: tier limits, tariffs
    and their audit rows stay), so changing its limits and tariffs disturbs nobody and a test
    may count what it wrote from zero."""
    while True:
        code = "Q" + "".join(secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(2))
        used = await db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM tier_limits WHERE currency = $1) "
            "OR EXISTS (SELECT 1 FROM tariffs WHERE currency = $1) "
            "OR EXISTS (SELECT 1 FROM audit_log WHERE target LIKE '%/' || $1)",
            code,
        )
        if not used:
            return code


# --- closing an account ------------------------------------------------------------------------


async def test_close_only_an_empty_account_then_money_is_refused(
    app_client: TestClient, core_db: asyncpg.Pool, cipher: FieldCipher, tokens: Tokens
) -> None:
    alice = await make_customer(core_db, cipher, 500_00)
    bob = await make_customer(core_db, cipher)
    path = f"/api/v1/customers/{alice[1:]}/close"

    full = await app_client.post(path, headers=auth(tokens.support))
    body = await assert_error(full, 409, "BALANCE_NOT_ZERO")
    assert body["details"]["balances_minor"] == {"KES": 500_00}
    assert (
        await (
            await app_client.get(f"/api/v1/customers/{alice}", headers=auth(tokens.admin))
        ).json()
    )["status"] == "active"

    # Empty the wallet (amount + fee), then the close goes through.
    await send_money(
        core_db,
        sender=alice,
        recipient=bob,
        amount_minor=493_00,
        idempotency_key=new_key(),
        channel="test",
    )
    assert await balance(core_db, alice) == 0
    closed = await app_client.post(path, headers=auth(tokens.support))
    assert closed.status == 200, await closed.text()
    got = await closed.json()
    assert got["status"] == "closed" and got["wallets"] == [{"currency": "KES", "balance_minor": 0}]
    assert await audit_count(core_db, "customer.closed", alice) == 1

    # A closed wallet refuses money in and out.
    with pytest.raises(E.AccountClosed):
        await deposit(
            core_db, msisdn=alice, amount_minor=100, idempotency_key=new_key(), channel="t"
        )
    with pytest.raises(E.AccountClosed):
        await send_money(
            core_db,
            sender=bob,
            recipient=alice,
            amount_minor=100,
            idempotency_key=new_key(),
            channel="t",
        )

    # Closing again changes nothing (no second audit record).
    again = await app_client.post(path, headers=auth(tokens.admin))
    assert again.status == 200 and (await again.json())["status"] == "closed"
    assert await audit_count(core_db, "customer.closed", alice) == 1


async def test_close_bad_input(
    app_client: TestClient, core_db: asyncpg.Pool, cipher: FieldCipher, tokens: Tokens
) -> None:
    alice = await make_customer(core_db, cipher)
    forbidden = await app_client.post(
        f"/api/v1/customers/{alice}/close", headers=auth(tokens.finance)
    )
    body = await assert_error(forbidden, 403, "FORBIDDEN")
    assert body["details"]["permission"] == "customers:write"
    anonymous = await app_client.post(f"/api/v1/customers/{alice}/close")
    await assert_error(anonymous, 401)
    unknown = await app_client.post(
        "/api/v1/customers/254799999999/close", headers=auth(tokens.admin)
    )
    await assert_error(unknown, 404, "CUSTOMER_NOT_FOUND")
    malformed = await app_client.post("/api/v1/customers/12ab/close", headers=auth(tokens.admin))
    await assert_error(malformed, 422)
    assert (
        await core_db.fetchval("SELECT status FROM customers WHERE msisdn = $1", alice)
    ) == "active"


# --- outbox dead letters -----------------------------------------------------------------------


async def dead_letter(db: asyncpg.Pool, channel: str = "push", body: str = "hello") -> int:
    return int(
        await db.fetchval(
            "INSERT INTO outbox (channel, recipient, kind, body, status, attempts, last_error) "
            "VALUES ($1, '+254700000995', 'test', $2, 'dead', 8, 'bad number') RETURNING id",
            channel,
            body,
        )
    )


async def test_dead_letters_listed_newest_first_and_paged(
    app_client: TestClient, core_db: asyncpg.Pool, tokens: Tokens
) -> None:
    ids = [await dead_letter(core_db, "push", f"m{i}") for i in range(3)]
    first = await app_client.get(
        "/api/v1/outbox/dead-letters?channel=push&limit=2", headers=auth(tokens.support)
    )
    page = await first.json()
    assert first.status == 200, page
    assert [m["id"] for m in page["messages"]] == [ids[2], ids[1]]
    message = page["messages"][0]
    assert message["status"] == "dead" and message["last_error"] == "bad number"
    assert message["attempts"] == 8 and message["body"] == "m2"
    second = await app_client.get(
        f"/api/v1/outbox/dead-letters?channel=push&limit=2&before={page['next_before']}",
        headers=auth(tokens.support),
    )
    assert (await second.json())["messages"][0]["id"] == ids[0]

    for query, field in (("limit=0", "limit"), ("limit=x", "limit"), ("before=-1", "before"),
                         ("channel=fax", "channel")):  # fmt: skip
        bad = await app_client.get(
            f"/api/v1/outbox/dead-letters?{query}", headers=auth(tokens.admin)
        )
        body = await assert_error(bad, 422)
        assert body["details"]["field"] == field
    forbidden = await app_client.get("/api/v1/outbox/dead-letters", headers=auth(tokens.finance))
    await assert_error(forbidden, 403, "FORBIDDEN")


async def test_replay_one_dead_letter(
    app_client: TestClient, core_db: asyncpg.Pool, tokens: Tokens
) -> None:
    message_id = await dead_letter(core_db)
    replayed = await app_client.post(
        f"/api/v1/outbox/dead-letters/{message_id}/replay", headers=auth(tokens.support)
    )
    body = await replayed.json()
    assert replayed.status == 200, body
    assert body["id"] == message_id and body["status"] == "pending" and body["attempts"] == 0
    row = await core_db.fetchrow("SELECT status, attempts FROM outbox WHERE id = $1", message_id)
    assert (row["status"], row["attempts"]) == ("pending", 0)
    assert await audit_count(core_db, "outbox.replayed", str(message_id)) == 1

    # No longer dead: a second replay is a conflict and changes nothing.
    again = await app_client.post(
        f"/api/v1/outbox/dead-letters/{message_id}/replay", headers=auth(tokens.support)
    )
    body = await assert_error(again, 409, "CONFLICT")
    assert body["details"]["status"] == "pending"
    for raw in ("999999999999", "abc"):
        unknown = await app_client.post(
            f"/api/v1/outbox/dead-letters/{raw}/replay", headers=auth(tokens.admin)
        )
        await assert_error(unknown, 404, "NOT_FOUND")
    other = await dead_letter(core_db)
    for token in (tokens.viewer, tokens.finance):  # reading is not replaying
        forbidden = await app_client.post(
            f"/api/v1/outbox/dead-letters/{other}/replay", headers=auth(token)
        )
        body = await assert_error(forbidden, 403, "FORBIDDEN")
        assert body["details"]["permission"] == "messages:replay"
    assert await core_db.fetchval("SELECT status FROM outbox WHERE id = $1", other) == "dead"


async def test_replay_all_dead_letters_of_a_channel(
    app_client: TestClient, core_db: asyncpg.Pool, tokens: Tokens
) -> None:
    email = [await dead_letter(core_db, "email") for _ in range(2)]
    push = await dead_letter(core_db, "push")
    done = await app_client.post(
        "/api/v1/outbox/dead-letters/replay",
        json={"channel": "email"},
        headers=auth(tokens.support),
    )
    body = await done.json()
    assert done.status == 200, body
    assert body["replayed"] >= 2
    statuses = await core_db.fetch(
        "SELECT id, status FROM outbox WHERE id = ANY($1)", [*email, push]
    )
    assert {r["id"]: r["status"] for r in statuses} == {
        email[0]: "pending",
        email[1]: "pending",
        push: "dead",
    }
    assert await audit_count(core_db, "outbox.replayed_all", "email") >= 1

    for payload, status in (({"channel": "fax"}, 422), ({"channel": "push", "x": 1}, 422)):
        bad = await app_client.post(
            "/api/v1/outbox/dead-letters/replay", json=payload, headers=auth(tokens.admin)
        )
        await assert_error(bad, status, "VALIDATION_ERROR")
    not_json = await app_client.post(
        "/api/v1/outbox/dead-letters/replay",
        data="{",
        headers={**auth(tokens.admin), "Content-Type": "application/json"},
    )
    await assert_error(not_json, 400, "INVALID_JSON")
    assert await core_db.fetchval("SELECT status FROM outbox WHERE id = $1", push) == "dead"

    everything = await app_client.post(
        "/api/v1/outbox/dead-letters/replay", json={}, headers=auth(tokens.admin)
    )
    assert everything.status == 200 and (await everything.json())["replayed"] >= 1
    assert await core_db.fetchval("SELECT status FROM outbox WHERE id = $1", push) == "pending"


# --- tier limits and tariffs -------------------------------------------------------------------

LIMITS = {
    "max_balance_minor": 200_000_00,
    "per_transaction_minor": 50_000_00,
    "daily_debit_minor": 100_000_00,
    "monthly_debit_minor": 400_000_00,
}


async def test_read_and_change_tier_limits(
    app_client: TestClient, core_db: asyncpg.Pool, tokens: Tokens
) -> None:
    listed = await app_client.get("/api/v1/limits", headers=auth(tokens.viewer))
    body = await listed.json()
    assert listed.status == 200, body
    basic = next(x for x in body["limits"] if (x["tier"], x["currency"]) == ("Basic", "KES"))
    assert basic["max_balance_minor"] > 0

    currency = await private_currency(core_db)
    path = f"/api/v1/limits/standard/{currency}"
    created = await app_client.put(path, json=LIMITS, headers=auth(tokens.finance))
    got = await created.json()
    assert created.status == 200, got
    assert got == {"tier": "Standard", "currency": currency, **LIMITS}
    changed = await app_client.put(
        path, json=dict(LIMITS, daily_debit_minor=90_000_00), headers=auth(tokens.finance)
    )
    assert (await changed.json())["daily_debit_minor"] == 90_000_00
    row = await core_db.fetchrow(
        "SELECT details FROM audit_log WHERE action = 'limits.changed' AND target = $1 "
        "ORDER BY id DESC LIMIT 1",
        f"Standard/{currency}",
    )
    details = json.loads(row["details"])
    assert details["before"]["daily_debit_minor"] == 100_000_00
    assert details["after"]["daily_debit_minor"] == 90_000_00


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"per_transaction_minor": 100_000_01}, "per_transaction_minor"),  # > daily cap
        ({"daily_debit_minor": 400_000_01}, "daily_debit_minor"),  # > monthly cap
        ({"max_balance_minor": 40_000_00}, "per_transaction_minor"),  # one txn > max balance
        ({"max_balance_minor": 0}, None),
        ({"monthly_debit_minor": 1.5}, None),
        ({"daily_debit_minor": "100"}, None),
        ({"extra": 1}, None),
    ],
)
async def test_tier_limits_refused(
    app_client: TestClient,
    core_db: asyncpg.Pool,
    tokens: Tokens,
    change: dict[str, object],
    field: str | None,
) -> None:
    currency = await private_currency(core_db)
    resp = await app_client.put(
        f"/api/v1/limits/Premium/{currency}", json=LIMITS | change, headers=auth(tokens.finance)
    )
    body = await assert_error(resp, 422, "VALIDATION_ERROR")
    if field is not None:
        assert body["details"]["field"] == field
    assert (
        await core_db.fetchval("SELECT count(*) FROM tier_limits WHERE currency = $1", currency)
        == 0
    )


async def test_tier_limits_unknown_malformed_forbidden(
    app_client: TestClient, core_db: asyncpg.Pool, tokens: Tokens
) -> None:
    unknown = await app_client.put(
        "/api/v1/limits/Gold/KES", json=LIMITS, headers=auth(tokens.admin)
    )
    await assert_error(unknown, 404, "TIER_NOT_FOUND")
    bad_currency = await app_client.put(
        "/api/v1/limits/Basic/kes", json=LIMITS, headers=auth(tokens.admin)
    )
    body = await assert_error(bad_currency, 422, "VALIDATION_ERROR")
    assert body["details"]["field"] == "currency"
    not_json = await app_client.put(
        "/api/v1/limits/Basic/KES",
        data="not json",
        headers={**auth(tokens.admin), "Content-Type": "application/json"},
    )
    await assert_error(not_json, 400, "INVALID_JSON")
    before = await core_db.fetchrow(
        "SELECT * FROM tier_limits WHERE tier = 'Basic' AND currency = 'KES'"
    )
    for token in (tokens.support, tokens.viewer):
        forbidden = await app_client.put(
            "/api/v1/limits/Basic/KES", json=LIMITS, headers=auth(token)
        )
        body = await assert_error(forbidden, 403, "FORBIDDEN")
        assert body["details"]["permission"] == "pricing:write"
    reads = await app_client.get("/api/v1/limits", headers=auth(tokens.support))
    await assert_error(reads, 403, "FORBIDDEN")
    after = await core_db.fetchrow(
        "SELECT * FROM tier_limits WHERE tier = 'Basic' AND currency = 'KES'"
    )
    assert dict(after) == dict(before)


BANDS = [
    {"min_minor": 1_00, "max_minor": 100_00, "fee_minor": 0},
    {"min_minor": 100_01, "max_minor": 1_000_00, "fee_minor": 10_00, "commission_minor": 2_00},
]


async def test_read_and_change_a_tariff(
    app_client: TestClient, core_db: asyncpg.Pool, tokens: Tokens
) -> None:
    demo = await app_client.get("/api/v1/tariffs/p2p", headers=auth(tokens.viewer))
    body = await demo.json()
    assert demo.status == 200, body
    assert body["kind"] == "p2p" and body["currency"] == "KES" and body["bands"]

    currency = await private_currency(core_db)
    put = await app_client.put(
        "/api/v1/tariffs/cash_out",
        json={"currency": currency, "bands": list(reversed(BANDS))},
        headers=auth(tokens.finance),
    )
    got = await put.json()
    assert put.status == 200, got
    assert got["bands"] == [
        {"min_minor": 1_00, "max_minor": 100_00, "fee_minor": 0, "commission_minor": 0},
        {"min_minor": 100_01, "max_minor": 1_000_00, "fee_minor": 10_00, "commission_minor": 2_00},
    ]
    read = await app_client.get(
        f"/api/v1/tariffs/cash_out?currency={currency}", headers=auth(tokens.finance)
    )
    assert (await read.json())["bands"] == got["bands"]
    # The money path reads the same table: the quote for 500.00 is the new band's fee.
    fee = await core_db.fetchval("SELECT o_fee FROM ledger_tariff('cash_out', $1, 50000)", currency)
    assert fee == 10_00
    assert await audit_count(core_db, "tariff.changed", f"cash_out/{currency}") == 1


OVERLAPPING = [
    {"min_minor": 1_00, "max_minor": 500_00, "fee_minor": 1},
    {"min_minor": 400_00, "max_minor": 600_00, "fee_minor": 1},
]
COMMISSION_OVER_FEE = {"min_minor": 1_00, "max_minor": 100_00, "fee_minor": 1_00}


@pytest.mark.parametrize(
    ("bands", "problem"),
    [
        (OVERLAPPING, "overlap"),
        ([{"min_minor": 500_00, "max_minor": 100_00, "fee_minor": 1}], "overlap"),
        ([COMMISSION_OVER_FEE | {"commission_minor": 2_00}], "commission"),
        ([{"min_minor": 0, "max_minor": 100_00, "fee_minor": 1}], None),
        ([{"min_minor": 1, "max_minor": 100_00, "fee_minor": -1}], None),
        ([{"min_minor": 1, "max_minor": 100_00}], None),
        ([{"min_minor": 1, "max_minor": 10**14, "fee_minor": 0}], None),
    ],
)
async def test_tariff_refused(
    app_client: TestClient,
    core_db: asyncpg.Pool,
    tokens: Tokens,
    bands: list[dict[str, int]],
    problem: str | None,
) -> None:
    currency = await private_currency(core_db)
    resp = await app_client.put(
        "/api/v1/tariffs/cash_out",
        json={"currency": currency, "bands": bands},
        headers=auth(tokens.finance),
    )
    body = await assert_error(resp, 422, "VALIDATION_ERROR")
    if problem is not None:
        assert problem in body["message"].lower()
    assert await core_db.fetchval("SELECT count(*) FROM tariffs WHERE currency = $1", currency) == 0


async def test_tariff_unknown_malformed_forbidden(
    app_client: TestClient, core_db: asyncpg.Pool, tokens: Tokens
) -> None:
    for method in ("get", "put"):
        unknown = await getattr(app_client, method)(
            "/api/v1/tariffs/loan", json={"bands": BANDS}, headers=auth(tokens.admin)
        )
        await assert_error(unknown, 404, "TARIFF_NOT_FOUND")
    bad_currency = await app_client.get(
        "/api/v1/tariffs/p2p?currency=k", headers=auth(tokens.admin)
    )
    await assert_error(bad_currency, 422, "VALIDATION_ERROR")
    before = await core_db.fetchval("SELECT count(*) FROM tariffs WHERE currency = 'KES'")
    forbidden = await app_client.put(
        "/api/v1/tariffs/p2p", json={"bands": BANDS}, headers=auth(tokens.support)
    )
    body = await assert_error(forbidden, 403, "FORBIDDEN")
    assert body["details"]["permission"] == "pricing:write"
    wrong_shape = await app_client.put(
        "/api/v1/tariffs/p2p", json={"bands": "cheap"}, headers=auth(tokens.finance)
    )
    await assert_error(wrong_shape, 422, "VALIDATION_ERROR")
    assert await core_db.fetchval("SELECT count(*) FROM tariffs WHERE currency = 'KES'") == before
