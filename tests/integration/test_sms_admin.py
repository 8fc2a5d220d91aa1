"""The SMS channel inside the app (started only when SMPP_URL names binds) and the admin API
over it: masked messages with search and paging, one message with its parts, the binds."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from aiohttp.test_utils import TestClient

from config.settings import Settings
from gateway.app import create_app
from gateway.keys import PG_POOL, SMS_CHANNEL, SMS_SENDER
from gateway.sms import sms_channel
from tests.conftest import running_app
from tests.helpers import assert_error, auth, eventually, scrape, token_for
from tests.sms_helpers import bind_for, peer_per_module  # noqa: F401 (the `peer` fixture)
from tests.smsc_peer import SmscPeer


def with_binds(settings: Settings, port: int | SmscPeer) -> Settings:
    return replace(
        settings,
        smpp_binds=(bind_for(port, tps=100),),
        login_rate_per_minute=10_000,  # these logins must not eat the suite's shared budget
    )


@pytest.fixture(scope="module")
async def sms_client(settings: Settings, peer: SmscPeer) -> AsyncIterator[TestClient]:
    # The channels' MQTT broker is not needed here: mount the app's own SMS entry alone.
    app = create_app(with_binds(settings, peer), run_migrations=False, start_channels=False)
    app.cleanup_ctx.append(sms_channel)
    async with running_app(app) as client:
        assert await app[SMS_CHANNEL].sessions[0].wait_bound(10)
        yield client


@pytest.fixture(scope="module")
async def token(sms_client: TestClient) -> str:
    return await token_for(sms_client, role="support")


def local(msisdn: str) -> str:
    return "0" + msisdn[3:]


async def test_channel_runs_only_when_smpp_is_configured(
    sms_client: TestClient, app_client: TestClient, token: str, settings: Settings
) -> None:
    assert sms_channel in create_app(with_binds(settings, 2775)).cleanup_ctx
    assert sms_channel not in create_app(settings).cleanup_ctx
    assert (
        sms_channel not in create_app(with_binds(settings, 2775), start_channels=False).cleanup_ctx
    )
    assert sms_client.server.app is not None and app_client.server.app is not None
    assert SMS_CHANNEL in sms_client.server.app
    assert SMS_SENDER in sms_client.server.app
    assert SMS_CHANNEL not in app_client.server.app
    resp = await app_client.get("/api/v1/sms/binds", headers=auth(token))
    assert resp.status == 200
    assert await resp.json() == {"enabled": False, "binds": []}


async def test_the_store_pool_runs_generic_plans_and_the_app_pool_does_not(
    sms_client: TestClient,
) -> None:
    """The SMS store's few hot statements are never planned again; the admin's searches
    (optional filters, on the app's pool) still get a plan for their values."""
    app = sms_client.server.app
    assert app is not None
    store_pool = app[SMS_CHANNEL].store._pool
    assert await store_pool.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
    assert await app[PG_POOL].fetchval("SHOW plan_cache_mode") == "auto"


async def test_binds_show_their_state(sms_client: TestClient, token: str, peer: SmscPeer) -> None:
    resp = await sms_client.get("/api/v1/sms/binds", headers=auth(token))
    body = await resp.json()
    assert resp.status == 200, body
    (bind,) = body["binds"]
    assert body["enabled"] is True
    assert (bind["state"], bind["bind_type"], bind["port"]) == ("bound", "trx", peer.port)
    assert (bind["window_size"], bind["tps_configured"]) == (10, 100.0)
    assert bind["window_in_use"] == 0 and bind["since"].endswith("+00:00")
    assert "password" not in str(body) and "secret" not in str(body)


async def test_mo_reply_and_the_message_list(
    sms_client: TestClient, token: str, peer: SmscPeer
) -> None:
    msisdn = "2547" + "".join(secrets.choice("0123456789") for _ in range(8))
    await peer.mo(source=msisdn, text="BAL 4321")
    await peer.mo(source=msisdn, text="help")

    async def listed() -> list[dict[str, object]]:
        resp = await sms_client.get(
            "/api/v1/sms/messages", params={"msisdn": local(msisdn)}, headers=auth(token)
        )
        assert resp.status == 200
        return list((await resp.json())["items"])

    items = await eventually(
        listed, lambda rows: len(rows) == 4 and all(r["status"] != "processing" for r in rows)
    )
    by_direction = {(r["direction"], r["body"].split()[0]) for r in items}
    assert ("mo", "BAL") in by_direction and ("mo", "help") in by_direction
    mo = next(r for r in items if r["direction"] == "mo" and r["body"].startswith("BAL"))
    assert mo["body"] == "BAL ****" and mo["status"] == "processed"
    assert mo["msisdn"] == "+" + msisdn and mo["short_code"] == "12345"
    assert all("4321" not in r["body"] for r in items)
    mts = [r for r in items if r["direction"] == "mt"]
    assert {r["status"] for r in mts} == {"submitted"}

    # The number in any form the core reads: with the international prefix 00 too (it was
    # read as a local number, 2540254..., and found nothing).
    for form in ("00" + msisdn, local(msisdn), msisdn, "+" + msisdn):
        resp = await sms_client.get(
            "/api/v1/sms/messages", params={"msisdn": form}, headers=auth(token)
        )
        assert len((await resp.json())["items"]) == 4, form

    # Search, filters and keyset paging.
    resp = await sms_client.get(
        "/api/v1/sms/messages",
        params={"msisdn": "+" + msisdn, "direction": "mo", "q": "bal"},
        headers=auth(token),
    )
    assert [r["id"] for r in (await resp.json())["items"]] == [mo["id"]]
    seen = []
    before = None
    while True:
        params = {"msisdn": msisdn, "limit": "1"}
        if before is not None:
            params["before"] = str(before)
        page = await (
            await sms_client.get("/api/v1/sms/messages", params=params, headers=auth(token))
        ).json()
        seen += [r["id"] for r in page["items"]]
        before = page["next_before"]
        if before is None:
            break
    assert seen == [r["id"] for r in items]

    # One MT with the SMSC id of its part.
    resp = await sms_client.get(f"/api/v1/sms/messages/{mts[0]['id']}", headers=auth(token))
    detail = await resp.json()
    assert resp.status == 200, detail
    (part,) = detail["submitted_parts"]
    assert part["part_no"] == 1 and part["message_id"] and part["status"] == "submitted"


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1000"},
        {"limit": "many"},
        {"direction": "sideways"},
        {"status": "lost"},
        {"msisdn": "not-a-number"},
        {"msisdn": "\u0660\u0667\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668"},  # Arabic-Indic
        {"msisdn": "+"},
        {"before": "-4"},
        {"q": ""},
        {"q": "x" * 200},
        {"colour": "blue"},
    ],
)
async def test_bad_queries_are_422(
    sms_client: TestClient, token: str, params: dict[str, str]
) -> None:
    resp = await sms_client.get("/api/v1/sms/messages", params=params, headers=auth(token))
    await assert_error(resp, 422, "VALIDATION_ERROR")


async def test_message_lookups(sms_client: TestClient, token: str) -> None:
    resp = await sms_client.get("/api/v1/sms/messages/abc", headers=auth(token))
    await assert_error(resp, 422, "VALIDATION_ERROR")
    resp = await sms_client.get("/api/v1/sms/messages/99999999999999", headers=auth(token))
    await assert_error(resp, 404, "NOT_FOUND")
    resp = await sms_client.get(f"/api/v1/sms/messages/{2**70}", headers=auth(token))
    await assert_error(resp, 422, "VALIDATION_ERROR")


async def test_permissions(sms_client: TestClient) -> None:
    for path in ("/api/v1/sms/messages", "/api/v1/sms/binds", "/api/v1/sms/messages/1"):
        await assert_error(await sms_client.get(path), 401)
    viewer = await token_for(sms_client, role="viewer")  # no messages:read
    for path in ("/api/v1/sms/messages", "/api/v1/sms/binds"):
        await assert_error(await sms_client.get(path, headers=auth(viewer)), 403, "FORBIDDEN")


async def test_metrics_count_the_channel_and_its_binds(
    sms_client: TestClient, token: str, peer: SmscPeer
) -> None:
    app = sms_client.server.app
    assert app is not None
    bind = app[SMS_CHANNEL].sessions[0].name
    before = await scrape(sms_client)
    msisdn = "2547" + "".join(secrets.choice("0123456789") for _ in range(8))
    await peer.mo(source=msisdn, text="help")

    async def replied() -> bool:
        resp = await sms_client.get(
            "/api/v1/sms/messages",
            params={"msisdn": msisdn, "direction": "mt"},
            headers=auth(token),
        )
        return bool((await resp.json())["items"])

    await eventually(replied)
    after = await scrape(sms_client)

    def grew(name: str, labels: dict[str, str] | None = None) -> float:
        key = (name, tuple(sorted((labels or {}).items())))
        return after[key] - before.get(key, 0.0)

    on_bind = {"bind": bind}
    assert grew("gateway_sms_mo_total") == 1 and grew("gateway_sms_mt_total") == 1
    assert grew("gateway_smpp_submitted_total", on_bind) == 1
    assert grew("gateway_smpp_received_total", on_bind) == 1
    assert grew("gateway_smpp_deliver_ack_seconds_count", on_bind) == 1
    assert 0 < grew("gateway_smpp_deliver_ack_seconds_sum", on_bind) < 5
    assert grew("gateway_sms_mo_duplicates_total") == 0
    states = {
        labels[1][1]: value
        for (name, labels), value in after.items()
        if name == "gateway_smpp_bind_state" and dict(labels)["bind"] == bind
    }
    assert states["bound"] == 1 and sum(states.values()) == 1 and "backing_off" in states
    assert after[("gateway_smpp_window_size", (("bind", bind),))] == 10
    assert ("gateway_sms_mo_waiting", ()) in after
