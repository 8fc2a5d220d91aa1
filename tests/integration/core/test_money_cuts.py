"""The money paths with their PostgreSQL connection cut at the network (tests/tcp_proxy.py
between the caller's pool and the server, which stays up): before the call reaches the server,
as its statement goes out, and with its answer lost after the server ran (and committed) it.
Each time the caller hears Unavailable (503 over HTTP), and the same request again with the
same idempotency key answers the first result: the money moved exactly once, one transfer,
its entries and its receipts once, and the ledger invariants hold (checked after every test).

Each movement is one statement (a ledger_* function), so its COMMIT is the statement's own:
"answer lost" is the COMMIT's answer lost. The server's answer is recognised by the transfer
type in its data row (the prepare's answer carries column names only)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from config.settings import Settings
from core import errors as E
from core.crypto import FieldCipher
from core.fees import quote
from core.pg import call, settle
from core.transfers import (
    TransferResult,
    balance,
    cash_in,
    cash_out,
    deposit,
    repay_loan,
    reverse,
    send_money,
)
from gateway import db as dbmod
from gateway.app import create_app
from tests.conftest import running_app
from tests.helpers import assert_error, auth
from tests.integration.core.conftest import Tokens, make_agent, make_customer, new_key
from tests.tcp_proxy import CuttableProxy, postgres_proxy

# How the connection is lost: (the cut's name, how to arm it given the transfer type).
CUTS: dict[str, Callable[[CuttableProxy, str], None]] = {
    # every pooled connection dies and the next one is refused: nothing reaches the server
    "refused": lambda proxy, _kind: proxy.cut(refuse=1),
    # the statement itself never reaches the server
    "statement_lost": lambda proxy, _kind: proxy.cut_on(b"SELECT * FROM ledger_"),
    # the server ran and committed it; its answer (the transfer's row) never comes back
    "answer_lost": lambda proxy, kind: proxy.cut_on(kind.encode(), from_server=True),
    # the answer came back; the connection dies as the pool resets it on release
    "reset_lost": lambda proxy, _kind: proxy.cut_on(b"RESET ALL"),
}
COMMITTED = {"refused": False, "statement_lost": False, "answer_lost": True, "reset_lost": True}


@dataclass
class Relay:
    proxy: CuttableProxy
    pool: asyncpg.Pool
    url: str


@pytest.fixture
async def relay(database_url: str) -> AsyncIterator[Relay]:
    """A money-path pool as the app makes it, every connection through the proxy."""
    proxy, via = postgres_proxy(database_url)
    url = via(await proxy.start())
    pool = await dbmod.make_pool(url, min_size=0, max_size=2)
    try:
        yield Relay(proxy, pool, url)
    finally:
        await pool.close()
        await proxy.close()


async def footprint(db: asyncpg.Pool, key: str) -> tuple[int, int, int]:
    """(transfers, entries, receipts) posted under `key`."""
    row = await db.fetchrow(
        "SELECT count(*) AS t, "
        "(SELECT count(*) FROM entries e WHERE e.transfer_id = ANY(array_agg(t.id))) AS e, "
        "(SELECT count(*) FROM outbox o WHERE o.transfer_id = ANY(array_agg(t.id))) AS o "
        "FROM transfers t WHERE t.idempotency_key = $1",
        key,
    )
    return row["t"], row["e"], row["o"]


async def day_debits(db: asyncpg.Pool, msisdn: str) -> int:
    return int(
        await db.fetchval(
            "SELECT w.day_debits FROM accounts w JOIN customers c ON c.id = w.customer_id "
            "WHERE c.msisdn = $1 AND w.kind = 'wallet'",
            msisdn,
        )
    )


Move = Callable[[Any, str], Awaitable[TransferResult]]


@dataclass(frozen=True)
class Path:
    """One money path: its transfer type, the customer whose balance it changes and how."""

    kind: str
    move: Move
    customer: str
    delta_minor: int
    # The wallet whose daily debit cap the movement counts towards, and by how much.
    debtor: str | None = None
    counted_minor: int = 0


async def p2p_path(core_db: asyncpg.Pool, cipher: FieldCipher) -> Path:
    alice = await make_customer(core_db, cipher, 5_000_00)
    bob = await make_customer(core_db, cipher)

    async def move(db: Any, key: str) -> TransferResult:
        return await send_money(
            db, sender=alice, recipient=bob, amount_minor=1_000_00, idempotency_key=key,
            channel="ussd",
        )  # fmt: skip

    return Path("p2p", move, bob, 1_000_00, alice, 1_000_00)


async def deposit_path(core_db: asyncpg.Pool, cipher: FieldCipher) -> Path:
    carol = await make_customer(core_db, cipher)

    async def move(db: Any, key: str) -> TransferResult:
        return await deposit(
            db, msisdn=carol, amount_minor=250_00, idempotency_key=key, channel="admin",
            reference="BANK-1",
        )  # fmt: skip

    return Path("deposit", move, carol, 250_00)


async def cash_in_path(core_db: asyncpg.Pool, cipher: FieldCipher) -> Path:
    agent = await make_agent(core_db, 10_000_00)
    dan = await make_customer(core_db, cipher)

    async def move(db: Any, key: str) -> TransferResult:
        return await cash_in(
            db, agent_code=agent, msisdn=dan, amount_minor=300_00, idempotency_key=key,
            channel="ussd",
        )  # fmt: skip

    return Path("cash_in", move, dan, 300_00)


async def cash_out_path(core_db: asyncpg.Pool, cipher: FieldCipher) -> Path:
    agent = await make_agent(core_db)
    erin = await make_customer(core_db, cipher, 2_000_00)

    async def move(db: Any, key: str) -> TransferResult:
        return await cash_out(
            db, agent_code=agent, msisdn=erin, amount_minor=500_00, idempotency_key=key,
            channel="ussd",
        )  # fmt: skip

    fee = (await quote(core_db, "cash_out", 500_00, "KES")).fee_minor
    return Path("cash_out", move, erin, -(500_00 + fee), erin, 500_00)


async def repayment_path(core_db: asyncpg.Pool, cipher: FieldCipher) -> Path:
    frank = await make_customer(core_db, cipher, 1_000_00)

    async def move(db: Any, key: str) -> TransferResult:
        return await repay_loan(
            db, msisdn=frank, amount_minor=400_00, interest_minor=40_00, idempotency_key=key,
            channel="loans", loan_reference="loan:cut",
        )  # fmt: skip

    return Path("loan_repayment", move, frank, -400_00, frank, 0)  # not capped


async def reversal_path(core_db: asyncpg.Pool, cipher: FieldCipher) -> Path:
    gina = await make_customer(core_db, cipher, 1_000_00)
    hugo = await make_customer(core_db, cipher)
    original = await send_money(
        core_db, sender=gina, recipient=hugo, amount_minor=600_00, idempotency_key=new_key(),
        channel="ussd",
    )  # fmt: skip

    async def move(db: Any, key: str) -> TransferResult:
        return await reverse(
            db, reference=original.reference, idempotency_key=key, channel="admin",
            reason="wrong number",
        )  # fmt: skip

    return Path("reversal", move, hugo, -600_00)


PATHS = {
    "p2p": p2p_path,
    "deposit": deposit_path,
    "cash_in": cash_in_path,
    "cash_out": cash_out_path,
    "loan_repayment": repayment_path,
    "reversal": reversal_path,
}


# A reversal reads its original first: the reset after that read is not after the money.
CASES = [
    (p, c) for p in sorted(PATHS) for c in sorted(CUTS) if (p, c) != ("reversal", "reset_lost")
]
HTTP_CUTS = sorted(set(CUTS) - {"reset_lost"})  # the app's pools run other statements too


@pytest.mark.parametrize(("path_name", "cut"), CASES)
async def test_a_cut_money_call_is_unavailable_and_its_retry_answers_the_first_result(
    relay: Relay, core_db: asyncpg.Pool, cipher: FieldCipher, path_name: str, cut: str
) -> None:
    path = await PATHS[path_name](core_db, cipher)
    before = await balance(core_db, path.customer)
    key = new_key(path_name)
    CUTS[cut](relay.proxy, path.kind)
    with pytest.raises(E.Unavailable) as lost:
        await path.move(relay.pool, key)
    assert "same idempotency key" in lost.value.message
    moved = COMMITTED[cut]
    assert await balance(core_db, path.customer) == before + moved * path.delta_minor
    posted_then = await footprint(core_db, key)
    assert posted_then[0] == moved

    first = await path.move(relay.pool, key)  # the caller's retry: same key, same request
    assert first.replayed is moved
    again = await path.move(relay.pool, key)
    assert again.replayed and again.as_json() == first.as_json()
    assert await balance(core_db, path.customer) == before + path.delta_minor
    after = await footprint(core_db, key)
    assert after[0] == 1 and after[1] >= 2
    if path.debtor is not None:  # the daily cap counted the movement once
        assert await day_debits(core_db, path.debtor) == path.counted_minor
    if moved:
        assert after == posted_then  # nothing more was written by the retries


# --- over HTTP: the admin deposit and reversal ----------------------------------------------


def arm_http(proxy: CuttableProxy, cut: str, kind: str) -> None:
    """As CUTS, but an outage refuses every connection until `proxy.restore()`: the app's
    pools keep a connection floor, whose reconnects would take a single refusal."""
    if cut == "refused":
        proxy.cut(refuse=10_000)
    else:
        CUTS[cut](proxy, kind)


@dataclass
class Api:
    proxy: CuttableProxy
    client: TestClient


@pytest.fixture
async def api(relay: Relay, settings: Settings) -> AsyncIterator[Api]:
    """The admin API on a database reached only through the relay."""
    app = create_app(
        replace(settings, database_url=relay.url), run_migrations=False, start_channels=False
    )
    async with running_app(app) as client:
        yield Api(relay.proxy, client)


@dataclass(frozen=True)
class Route:
    """An admin money route: its URL and body for a new movement, the transfer type."""

    url: str
    body: dict[str, Any]
    kind: str


async def admin_route(name: str, core_db: asyncpg.Pool, cipher: FieldCipher) -> Route:
    key = new_key(name)
    if name == "deposit":
        carol = await make_customer(core_db, cipher)
        body = {"msisdn": carol, "amount_minor": 777_00, "idempotency_key": key}
        return Route("/api/v1/deposits", body, "deposit")
    if name == "float":
        agent = await make_agent(core_db)
        body = {"amount_minor": 777_00, "idempotency_key": key}
        return Route(f"/api/v1/agents/{agent}/float", body, "float_topup")
    body = {"amount_minor": 777_00, "idempotency_key": key, "note": "cut"}
    return Route("/api/v1/loans/fund", body, "loan_fund_topup")


ROUTE_CASES = [(r, c) for r in ("deposit", "float", "loan_fund") for c in HTTP_CUTS]


@pytest.mark.parametrize("case", ROUTE_CASES, ids="-".join)
async def test_an_admin_money_route_cut_is_a_503_and_its_retry_answers_the_movement(
    api: Api, tokens: Tokens, core_db: asyncpg.Pool, cipher: FieldCipher, case: tuple[str, str]
) -> None:
    """A deposit, a float top-up, a loan fund top-up: the retry is 201 with the movement."""
    route_name, cut = case
    route = await admin_route(route_name, core_db, cipher)
    headers = auth(tokens.finance)
    arm_http(api.proxy, cut, route.kind)
    lost = await api.client.post(route.url, json=route.body, headers=headers)
    await assert_error(lost, 503, "SERVICE_UNAVAILABLE")
    api.proxy.restore()
    retry = await api.client.post(route.url, json=route.body, headers=headers)
    assert retry.status == 201, await retry.text()
    assert (retry.headers.get("Idempotent-Replayed") == "true") is COMMITTED[cut]
    first = await retry.json()
    assert (first["type"], first["amount_minor"]) == (route.kind, 777_00)
    again = await api.client.post(route.url, json=route.body, headers=headers)
    assert again.status == 201 and await again.json() == first
    transfers, entries, _ = await footprint(core_db, route.body["idempotency_key"])
    assert transfers == 1 and entries >= 2


@pytest.mark.parametrize("cut", HTTP_CUTS)
async def test_a_reversal_cut_is_a_503_and_its_retry_answers_the_reversal(
    api: Api,
    tokens: Tokens,
    core_db: asyncpg.Pool,
    cipher: FieldCipher,
    cut: str,
) -> None:
    """Not ALREADY_REVERSED (409) for the very reversal that went through."""
    gina = await make_customer(core_db, cipher, 1_000_00)
    hugo = await make_customer(core_db, cipher)
    original = await send_money(
        core_db, sender=gina, recipient=hugo, amount_minor=600_00, idempotency_key=new_key(),
        channel="ussd",
    )  # fmt: skip
    url = f"/api/v1/transfers/{original.reference}/reversal"
    body = {"idempotency_key": new_key("rev"), "reason": "wrong number"}
    headers = auth(tokens.admin)
    arm_http(api.proxy, cut, "reversal")
    lost = await api.client.post(url, json=body, headers=headers)
    await assert_error(lost, 503, "SERVICE_UNAVAILABLE")
    api.proxy.restore()
    retry = await api.client.post(url, json=body, headers=headers)
    assert retry.status == 201, await retry.text()
    assert (retry.headers.get("Idempotent-Replayed") == "true") is COMMITTED[cut]
    assert (await retry.json())["type"] == "reversal"
    assert await balance(core_db, hugo) == 0
    assert await balance(core_db, gina) == 1_000_00
    assert (await footprint(core_db, body["idempotency_key"]))[0] == 1


# --- core.pg.settle: what the channels' money actions ask again after ------------------------


async def test_settle_asks_again_after_a_lost_connection_only(
    relay: Relay, core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    path = await p2p_path(core_db, cipher)
    key = new_key("settle")
    tries: list[int] = []

    async def move() -> TransferResult:
        tries.append(1)
        return await path.move(relay.pool, key)

    relay.proxy.cut_on(b"p2p", from_server=True)  # committed, its answer lost
    settled = await settle(move, what="test")
    assert (len(tries), settled.replayed) == (2, True)  # the second try found the first

    tries.clear()

    async def slow() -> None:
        tries.append(1)
        await call(relay.pool, "SELECT pg_sleep(5)", timeout_s=0.05)

    with pytest.raises(E.Unavailable):
        await settle(slow, what="test")
    assert len(tries) == 1  # a database too slow to answer gets no more load

    tries.clear()

    async def not_configured() -> None:
        tries.append(1)
        raise E.Unavailable("Loans cannot move money until the banking core is connected")

    with pytest.raises(E.Unavailable):
        await settle(not_configured, what="test")
    assert len(tries) == 1  # asking again would not change it
