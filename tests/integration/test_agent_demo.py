"""`make run` demo data: the demo agent gets one permitted zone (a 500 m circle in central
Nairobi), once however many instances start, and the map shows it."""

from __future__ import annotations

from dataclasses import replace

import asyncpg

from config.settings import Settings
from core import geofences
from core.demo import DEMO_AGENT, DEMO_GEOFENCE
from gateway.app import create_app
from gateway.keys import AGENTS
from geofence.fences import CircleFence
from tests.conftest import running_app
from tests.helpers import auth, token_for


async def test_demo_agent_has_a_zone_on_the_map(settings: Settings, pg_pool: asyncpg.Pool) -> None:
    demo = replace(settings, demo_data=True)
    code = DEMO_AGENT[0]
    async with (
        running_app(create_app(demo, run_migrations=False, start_channels=False)) as one,
        running_app(create_app(demo, run_migrations=False, start_channels=False)) as two,
    ):
        async with pg_pool.acquire() as conn:
            [fence_id] = await geofences.agent_fence_ids(conn, code)
            stored = await geofences.get_fence(conn, fence_id)
        assert isinstance(stored.fence, CircleFence) and stored.fence.radius_m == 500
        assert stored.name == DEMO_GEOFENCE["properties"]["name"]
        for client in (one, two):
            app = client.server.app
            assert app is not None
            assert [f.id for f in app[AGENTS].engine.catalog.fences_for(code)] == [fence_id]
        token = await token_for(one, "viewer")
        collection = await (await one.get("/api/v1/map", headers=auth(token))).json()
        ids = {f["id"] for f in collection["features"]}
        assert f"geofence-{fence_id}" in ids
