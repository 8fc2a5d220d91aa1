"""`make run` demo data: the app seeds customers with money, an agent with float and the tariff
bands at start; a second instance (or a restart) seeds nothing twice."""

from __future__ import annotations

from dataclasses import replace

import asyncpg
from aiohttp.test_utils import TestClient

from config.settings import Settings
from core.agents import agent_balances
from core.demo import DEMO_AGENT, DEMO_CUSTOMERS
from core.pins import verify_pin
from core.transfers import balance
from gateway.app import create_app
from tests.conftest import running_app
from tests.helpers import auth, token_for


async def test_demo_data_is_seeded_once(settings: Settings, core_db: asyncpg.Pool) -> None:
    demo = replace(settings, demo_data=True)
    async with (
        running_app(create_app(demo, run_migrations=False, start_channels=False)) as one,
        running_app(create_app(demo, run_migrations=False, start_channels=False)) as two,
    ):
        await _check(one, core_db)
        await _check(two, core_db)
    for customer in DEMO_CUSTOMERS:
        assert await balance(core_db, customer.msisdn) == customer.balance_minor
        await verify_pin(core_db, customer.msisdn, customer.pin)
    code, _, _, _, float_minor = DEMO_AGENT
    assert (await agent_balances(core_db, code)).float_minor == float_minor


async def _check(client: TestClient, db: asyncpg.Pool) -> None:
    token = await token_for(client, "viewer")
    first = DEMO_CUSTOMERS[0]
    resp = await client.get(f"/api/v1/customers/{first.msisdn}", headers=auth(token))
    body = await resp.json()
    assert resp.status == 200, body
    assert body["wallets"] == [{"currency": "KES", "balance_minor": first.balance_minor}]
    assert await db.fetchval("SELECT count(*) FROM tariffs WHERE currency = 'KES'") > 0
