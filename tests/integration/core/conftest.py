"""Fixtures for the banking core tests: system accounts and demo tariffs for KES, customers and
agents with unique numbers and codes, admin tokens per role (one set per module), and the ledger
check after every test (autouse here)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from core.agents import register_agent
from core.crypto import FieldCipher
from core.customers import register_customer, set_tier
from core.fees import seed_demo_tariffs
from core.ledger import check_ledger, ensure_system_accounts
from core.transfers import deposit, float_topup
from gateway.keys import CIPHER
from tests.helpers import new_msisdn, token_for

PIN = "2580"
AGENT_PIN = "4826"


@pytest.fixture(scope="session")
async def core_db(pg_pool: asyncpg.Pool) -> asyncpg.Pool:
    """The app's pool, with KES system accounts and the demo tariff bands in place."""
    await ensure_system_accounts(pg_pool, "KES")
    await seed_demo_tariffs(pg_pool, "KES")
    return pg_pool


@pytest.fixture(scope="session")
def cipher(app: web.Application) -> FieldCipher:
    return app[CIPHER]


@pytest.fixture(autouse=True)
async def ledger_ok(core_db: asyncpg.Pool) -> AsyncIterator[None]:
    """Every test in this package moves money: the invariants must hold after each one."""
    yield
    report = await check_ledger(core_db)
    assert report.ok, "\n".join(report.lines())


@dataclass(frozen=True)
class Tokens:
    """Bearer tokens of admins in each role the admin API tests act as."""

    admin: str
    finance: str
    support: str
    viewer: str


@pytest.fixture(scope="module")
async def tokens(app_client: TestClient) -> Tokens:
    return Tokens(
        await token_for(app_client, "admin"),
        await token_for(app_client, "finance"),
        await token_for(app_client, "support"),
        await token_for(app_client, "viewer"),
    )


def new_key(prefix: str = "k") -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


async def make_customer(
    db: asyncpg.Pool,
    cipher: FieldCipher,
    balance_minor: int = 0,
    *,
    tier: str = "Basic",
    language: str = "en",
) -> str:
    """A registered customer (PIN 2580) with `balance_minor` deposited; returns the MSISDN."""
    msisdn = new_msisdn()
    await register_customer(
        db,
        cipher,
        msisdn=msisdn,
        first_name="Test",
        last_name="Customer",
        national_id="ID" + secrets.token_hex(5).upper(),
        pin=PIN,
        language=language,
        channel="test",
        pin_rounds=4,
    )
    if tier != "Basic":
        await set_tier(db, msisdn, tier, actor="test")
    if balance_minor:
        await deposit(
            db,
            msisdn=msisdn,
            amount_minor=balance_minor,
            idempotency_key=new_key("seed"),
            channel="test",
        )
    return msisdn


async def make_agent(db: asyncpg.Pool, float_minor: int = 0) -> str:
    code = "AG" + secrets.token_hex(4).upper()
    await register_agent(
        db,
        code=code,
        msisdn=new_msisdn(),
        name="Test Agent",
        pin=AGENT_PIN,
        pin_rounds=4,
        actor="test",
    )
    if float_minor:
        await float_topup(
            db,
            agent_code=code,
            amount_minor=float_minor,
            idempotency_key=new_key("float"),
            channel="test",
        )
    return code
