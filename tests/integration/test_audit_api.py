"""`GET /api/v1/audit-log`: the audit log for a person to read, newest first and paged, filtered
by actor, action, target and time; `audit:read` only; bad queries refused with 422."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from core.audit import record
from tests.helpers import assert_error, auth, token_for

URL = "/api/v1/audit-log"


async def entries(pool: asyncpg.Pool, actor: str, n: int) -> None:
    for i in range(n):
        await record(
            pool,
            actor_type="admin",
            actor=actor,
            action="customer.unlocked" if i % 2 else "customer.locked",
            target=f"+2547000000{i:02d}",
            details={"n": i},
        )


async def test_the_log_newest_first_paged_and_filtered(
    app_client: TestClient, pg_pool: asyncpg.Pool
) -> None:
    token = await token_for(app_client, "support")
    actor = "adm" + secrets.token_hex(4)
    await entries(pg_pool, actor, 5)
    resp = await app_client.get(URL, params={"actor": actor, "limit": "2"}, headers=auth(token))
    page = await resp.json()
    assert resp.status == 200, page
    assert [e["details"]["n"] for e in page["items"]] == [4, 3]
    assert page["items"][0]["actor"] == actor and page["items"][0]["actor_type"] == "admin"
    assert datetime.fromisoformat(page["items"][0]["at"]).tzinfo is not None
    rest = await app_client.get(
        URL,
        params={"actor": actor, "before": str(page["next_before"]), "limit": "10"},
        headers=auth(token),
    )
    body = await rest.json()
    assert [e["details"]["n"] for e in body["items"]] == [2, 1, 0]
    assert body["next_before"] is None
    by_action = await app_client.get(
        URL, params={"actor": actor, "action": "customer.unlocked"}, headers=auth(token)
    )
    assert [e["details"]["n"] for e in (await by_action.json())["items"]] == [3, 1]
    by_target = await app_client.get(
        URL, params={"action": "customer.locked", "target": "+254700000002"}, headers=auth(token)
    )
    assert actor in [e["actor"] for e in (await by_target.json())["items"]]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    later = await app_client.get(URL, params={"actor": actor, "since": future}, headers=auth(token))
    assert (await later.json())["items"] == []
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    window = await app_client.get(
        URL, params={"actor": actor, "since": past, "until": future}, headers=auth(token)
    )
    assert len((await window.json())["items"]) == 5


async def test_only_audit_readers_see_the_log(app_client: TestClient) -> None:
    await assert_error(await app_client.get(URL), 401)
    viewer = await token_for(app_client, "viewer")
    await assert_error(await app_client.get(URL, headers=auth(viewer)), 403)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"before": "abc"}, "before"),
        ({"before": "0"}, "before"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-11-29T10:00:00"}, "since"),  # no time zone
        ({"since": "2026-11-29T10:00:00Z", "until": "2026-11-29T09:00:00Z"}, "until"),
        ({"actor": "x" * 129}, "actor"),
        ({"who": "me"}, "who"),
    ],
)
async def test_bad_queries_are_422(
    app_client: TestClient, params: dict[str, str], field: str
) -> None:
    token = await token_for(app_client, "support")
    error = await assert_error(
        await app_client.get(URL, params=params, headers=auth(token)), 422, "VALIDATION_ERROR"
    )
    assert field in str(error["details"]), error
