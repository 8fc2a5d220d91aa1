"""Admin API for geofences, assignments, credentials, positions, events and the map; the OsmAnd
endpoint with device tokens (never logged)."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from core.identity import create_admin, load_principal
from gateway.keys import CIPHER, PG_POOL, SESSIONMAKER, TOKENS
from gateway.logs import JsonFormatter
from tests.helpers import PASSWORD, assert_error, auth, eventually
from tests.integration.agent_support import SQUARE, make_agent

CIRCLE: dict[str, Any] = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [36.9, -1.2]},
    "properties": {"radius_m": 250, "name": "Shop"},
}


async def agent(app_client: TestClient) -> str:
    """A registered agent (the device tables name real agents)."""
    app = app_client.server.app
    assert app is not None
    return await make_agent(app[PG_POOL])


async def token_for(app_client: TestClient, role: str = "admin") -> str:
    """A token issued directly, not through the login route: the suite's many logins would
    trip the per-address login rate limit (the login itself is tested elsewhere)."""
    app = app_client.server.app
    assert app is not None
    async with app[SESSIONMAKER].begin() as db:
        created = await create_admin(
            db, app[CIPHER], username=f"adm{secrets.token_hex(5)}", password=PASSWORD,
            role=role, password_rounds=4,
        )  # fmt: skip
        principal = await load_principal(db, created.user_id)
    return str(app[TOKENS].issue(principal).access_token)


@pytest.fixture(scope="module")
async def admin(app_client: TestClient) -> dict[str, str]:
    return auth(await token_for(app_client))


async def test_geofence_create_read_update(app_client: TestClient, admin: dict[str, str]) -> None:
    resp = await app_client.post("/api/v1/geofences", json=SQUARE, headers=admin)
    body = await resp.json()
    assert resp.status == 201, body
    assert body["type"] == "Feature" and isinstance(body["id"], int)
    assert body["properties"] == {"name": "Gikomba market", "version": 1}
    assert body["geometry"] == SQUARE["geometry"]
    fence_id = body["id"]
    got = await (await app_client.get(f"/api/v1/geofences/{fence_id}", headers=admin)).json()
    assert got == body
    moved = {**SQUARE, "properties": {"name": "Gikomba (moved)"}}
    resp = await app_client.put(f"/api/v1/geofences/{fence_id}", json=moved, headers=admin)
    assert (await resp.json())["properties"]["version"] == 2
    circle = await (await app_client.post("/api/v1/geofences", json=CIRCLE, headers=admin)).json()
    assert circle["properties"]["radius_m"] == 250
    listed = await app_client.get(f"/api/v1/geofences?after_id={fence_id - 1}", headers=admin)
    ids = [f["id"] for f in (await listed.json())["features"]]
    assert ids[:2] == [fence_id, circle["id"]]


BAD_FENCES = [
    ("self-intersecting", {"type": "Feature", "geometry": {"type": "Polygon", "coordinates":
        [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}}, 422, "VALIDATION_ERROR"),
    ("circle without radius", {"type": "Feature", "geometry": {"type": "Point",
                                                               "coordinates": [1, 2]}},
     422, "VALIDATION_ERROR"),
    ("not a Feature", {"type": "Polygon", "coordinates": []}, 422, "VALIDATION_ERROR"),
    ("unknown member", {**CIRCLE, "colour": "red"}, 422, "VALIDATION_ERROR"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "error"), [c[1:] for c in BAD_FENCES], ids=[c[0] for c in BAD_FENCES]
)
async def test_bad_geofences(
    app_client: TestClient, admin: dict[str, str], body: Any, status: int, error: str
) -> None:
    resp = await app_client.post("/api/v1/geofences", json=body, headers=admin)
    await assert_error(resp, status, error)


async def test_geofence_errors_and_permissions(
    app_client: TestClient, admin: dict[str, str]
) -> None:
    resp = await app_client.post(
        "/api/v1/geofences",
        data=b"{not json",
        headers={**admin, "Content-Type": "application/json"},
    )
    await assert_error(resp, 400, "INVALID_JSON")
    await assert_error(await app_client.post("/api/v1/geofences", json=CIRCLE), 401)
    viewer = auth(await token_for(app_client, "viewer"))
    await assert_error(await app_client.post("/api/v1/geofences", json=CIRCLE, headers=viewer), 403)
    assert (await app_client.get("/api/v1/geofences", headers=viewer)).status == 200
    await assert_error(await app_client.get("/api/v1/geofences/999999999", headers=admin), 404)
    await assert_error(await app_client.get("/api/v1/geofences/abc", headers=admin), 422)
    await assert_error(await app_client.get("/api/v1/agent-events?limit=0", headers=admin), 422)


async def test_assignment(app_client: TestClient, admin: dict[str, str]) -> None:
    code = await agent(app_client)
    fence = await (await app_client.post("/api/v1/geofences", json=CIRCLE, headers=admin)).json()
    url = f"/api/v1/agents/{code.lower()}/geofences"  # codes are case-insensitive
    window = {"days": ["mon", "tue"], "start": "08:00", "end": "17:00"}
    schedule = {"timezone": "Africa/Nairobi", "windows": [window]}
    resp = await app_client.put(
        url, json={"geofence_ids": [fence["id"]], "schedule": schedule}, headers=admin
    )
    assert await resp.json() == {
        "agent_code": code,
        "geofence_ids": [fence["id"]],
        "schedule": schedule,
        "waypoint_push": {"agents": 0, "devices": 0},  # no phone has reported
    }
    assert (await (await app_client.get(url, headers=admin)).json())["geofence_ids"] == [
        fence["id"]
    ]
    missing = await app_client.put(url, json={"geofence_ids": [987654321]}, headers=admin)
    assert (await assert_error(missing, 404))["details"]["missing"] == [987654321]
    bad = await app_client.put(
        "/api/v1/agents/x/geofences", json={"geofence_ids": []}, headers=admin
    )
    await assert_error(bad, 422)
    typo = await app_client.put(url, json={"geofences": [1]}, headers=admin)
    await assert_error(typo, 422, "VALIDATION_ERROR")
    # No such agent in the core: 404, for zones and for credentials alike.
    unknown = await app_client.put(
        "/api/v1/agents/NOSUCH9/geofences", json={"geofence_ids": [fence["id"]]}, headers=admin
    )
    await assert_error(unknown, 404, "AGENT_NOT_FOUND")
    creds = await app_client.post("/api/v1/agents/NOSUCH9/credentials", headers=admin)
    await assert_error(creds, 404, "AGENT_NOT_FOUND")


async def test_credentials_and_osmand(
    app_client: TestClient, admin: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    code = await agent(app_client)
    fence = await (await app_client.post("/api/v1/geofences", json=CIRCLE, headers=admin)).json()
    await app_client.put(
        f"/api/v1/agents/{code}/geofences", json={"geofence_ids": [fence["id"]]}, headers=admin
    )
    viewer = auth(await token_for(app_client, "viewer"))
    await assert_error(
        await app_client.post(f"/api/v1/agents/{code}/credentials", headers=viewer), 403
    )
    first = await (
        await app_client.post(f"/api/v1/agents/{code}/credentials", headers=admin)
    ).json()
    assert set(first) == {"mqtt_username", "mqtt_password", "device_token"}
    assert first["mqtt_username"] == code
    second = await (
        await app_client.post(f"/api/v1/agents/{code}/credentials", headers=admin)
    ).json()
    token = second["device_token"]
    assert token != first["device_token"]

    now = int(time.time())
    fix = {"id": code, "lat": "-1.2", "lon": "36.9", "timestamp": str(now - 2), "accuracy": "8"}
    ok = await app_client.get("/agents/osmand", params={**fix, "token": token})
    assert ok.status == 200 and (await ok.json()) == {"accepted": True}
    old = await app_client.get("/agents/osmand", params={**fix, "token": first["device_token"]})
    await assert_error(old, 401, "INVALID_DEVICE_TOKEN")
    form = {**fix, "timestamp": str(now - 1), "token": token}
    posted = await app_client.post("/agents/osmand", data=form)
    assert posted.status == 200
    malformed = await app_client.get("/agents/osmand", params={**fix, "lat": "x", "token": token})
    await assert_error(malformed, 400, "MALFORMED_FIX")
    future = await app_client.get(
        "/agents/osmand", params={**fix, "timestamp": str(now + 3600), "token": token}
    )
    await assert_error(future, 400, "FUTURE_FIX")
    stale = await app_client.get(
        "/agents/osmand", params={**fix, "timestamp": str(now - 10 * 86400), "token": token}
    )
    assert stale.status == 200 and (await stale.json())["accepted"] is False
    json_body = await app_client.post("/agents/osmand", json=fix)
    await assert_error(json_body, 400, "INVALID_CONTENT_TYPE")

    position = await (await app_client.get(f"/api/v1/agents/{code}/position", headers=admin)).json()
    assert position["presence"] == "online" and position["zone"] == "inside"
    assert position["fix"]["ts"] == now - 1 and position["fix"]["src"] == "osmand"
    events = await (await app_client.get(f"/api/v1/agents/{code}/events", headers=admin)).json()
    assert [e["kind"] for e in events["events"]] == ["enter", "online"]
    assert events["events"][0]["fence_id"] == fence["id"]

    async def latest() -> list[Any]:
        resp = await app_client.get(f"/api/v1/agent-positions?codes={code}", headers=admin)
        return list((await resp.json())["positions"])

    rows = await eventually(latest)
    assert rows and rows[0]["fix"]["lat"] == -1.2
    collection = await (await app_client.get("/api/v1/map", headers=admin)).json()
    kinds = {f["id"]: f["properties"]["kind"] for f in collection["features"]}
    assert kinds[f"agent-{code}"] == "agent" and kinds[f"geofence-{fence['id']}"] == "geofence"

    formatter = JsonFormatter()
    logged = "\n".join(formatter.format(r) for r in caplog.records)
    for secret in (token, first["device_token"], second["mqtt_password"]):
        assert secret not in logged


async def test_openapi_lists_agent_routes(app_client: TestClient) -> None:
    doc = await (await app_client.get("/api/v1/openapi.json")).json()
    assert doc["paths"]["/api/v1/geofences"]["post"]["x-permission"] == "geofences:write"
    assert "/api/v1/agents/{code}/credentials" in doc["paths"]


async def test_agent_language(app_client: TestClient, admin: dict[str, str]) -> None:
    code = await agent(app_client)
    got = await (await app_client.get(f"/api/v1/agents/{code}", headers=admin)).json()
    assert got["language"] == "en"  # agents made before the column keep English
    url = f"/api/v1/agents/{code.lower()}/language"
    resp = await app_client.put(url, json={"language": "sw"}, headers=admin)
    assert resp.status == 200 and (await resp.json())["language"] == "sw"
    got = await (await app_client.get(f"/api/v1/agents/{code}", headers=admin)).json()
    assert got["language"] == "sw"
    for bad in ({"language": "de"}, {"language": None}, {}, {"language": "sw", "x": 1}):
        await assert_error(await app_client.put(url, json=bad, headers=admin), 422)
    await assert_error(
        await app_client.put(url, data=b"{", headers={**admin, "Content-Type": "application/json"}),
        400,
        "INVALID_JSON",
    )
    viewer = auth(await token_for(app_client, "viewer"))
    await assert_error(await app_client.put(url, json={"language": "fr"}, headers=viewer), 403)
    unknown = await app_client.put(
        "/api/v1/agents/NOSUCH9/language", json={"language": "fr"}, headers=admin
    )
    await assert_error(unknown, 404, "AGENT_NOT_FOUND")
    app = app_client.server.app
    assert app is not None
    audit = await app[PG_POOL].fetchval(
        "SELECT details FROM audit_log WHERE action = 'agent.language' AND target = $1", code
    )
    assert '"to": "sw"' in audit


async def test_register_an_agent_with_a_language(
    app_client: TestClient, admin: dict[str, str]
) -> None:
    code = f"L{secrets.token_hex(4).upper()}"
    body = {"code": code, "msisdn": "+254711000999", "name": "Duka", "pin": "4821"}
    resp = await app_client.post("/api/v1/agents", json={**body, "language": "fr"}, headers=admin)
    assert resp.status == 201 and (await resp.json())["language"] == "fr"
    bad = {**body, "code": f"M{secrets.token_hex(4).upper()}", "language": "xx"}
    await assert_error(await app_client.post("/api/v1/agents", json=bad, headers=admin), 422)
