"""Admins' phones for push (core.push_devices, `/api/v1/push-devices`): registered, listed and
removed by their own admin only, with bad input refused and nothing changed; breach alerts to
`devices` reach the enabled phones of the admins who may read agents; a token FCM reports gone
(through the real dispatcher, against tests/fcm_peer.py) is disabled and left out of the next
alert, and enabled again when the app registers it again."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from channels.base import SendFailed
from channels.push import PushSender
from config.settings import Settings
from core import push_devices
from core.outbox import Dispatcher, DispatchPolicy, OutboundMessage
from gateway.senders import build_senders, close_senders
from tests.fcm_peer import FakeFcm, fcm_fixture, push_settings_fixture  # noqa: F401 (fixtures)
from tests.helpers import assert_error, auth, login, make_admin
from tests.integration.agent_support import outbox_rows, walk_out, zoned_agent

FAST = DispatchPolicy(poll_interval_s=0.01, backoff_base_s=0.0, backoff_max_s=0.0, max_attempts=3)
URL = "/api/v1/push-devices"


def new_token() -> str:
    """The shape of a registration token, unique to the test."""
    return f"{secrets.token_urlsafe(11)}:APA91b" + secrets.token_urlsafe(105)


@dataclass
class Staff:
    token: str  # the admin's access token
    user_id: int


async def staff(client: TestClient, role: str = "admin") -> Staff:
    app = client.server.app
    assert app is not None
    access = str((await login(client, await make_admin(app, role)))["access_token"])
    me = await (await client.get("/api/v1/auth/me", headers=auth(access))).json()
    return Staff(access, int(me["user_id"]))


async def register(
    client: TestClient, who: Staff, token: str, platform: str = "android", label: str = ""
) -> tuple[int, dict[str, object]]:
    resp = await client.post(
        URL, json={"token": token, "platform": platform, "label": label}, headers=auth(who.token)
    )
    return resp.status, await resp.json()


async def listed(client: TestClient, who: Staff) -> list[dict[str, object]]:
    resp = await client.get(URL, headers=auth(who.token))
    assert resp.status == 200
    body = await resp.json()
    assert body["max_devices"] == push_devices.MAX_DEVICES
    return list(body["devices"])


async def rows_of(pool: asyncpg.Pool, admin_id: int) -> list[dict[str, object]]:
    rows = await pool.fetch(
        "SELECT token, platform, label, disabled_reason FROM admin_push_devices "
        "WHERE admin_id = $1 ORDER BY id",
        admin_id,
    )
    return [dict(r) for r in rows]


async def audit_actions(pool: asyncpg.Pool, username_of: Staff, client: TestClient) -> list[str]:
    me = await (await client.get("/api/v1/auth/me", headers=auth(username_of.token))).json()
    rows = await pool.fetch(
        "SELECT action FROM audit_log WHERE actor = $1 AND action LIKE 'push_device.%' ORDER BY id",
        me["username"],
    )
    return [r["action"] for r in rows]


# --- the API -----------------------------------------------------------------------------------


async def test_an_admin_registers_lists_and_removes_a_phone(
    app_client: TestClient, pg_pool: asyncpg.Pool
) -> None:
    who = await staff(app_client, "viewer")
    token = new_token()
    status, device = await register(app_client, who, token, "ios", "my iPhone")
    assert status == 201, device
    assert device["enabled"] is True and device["platform"] == "ios"
    assert device["label"] == "my iPhone" and device["token_start"] == token[:12]
    assert token not in str(device)  # the admin sees the token's start only

    # The app registers again (every sign-in): the same device, 200, nothing new.
    status, again = await register(app_client, who, token, "ios", "my iPhone")
    assert (status, again["id"]) == (200, device["id"])
    assert [d["id"] for d in await listed(app_client, who)] == [device["id"]]

    resp = await app_client.delete(f"{URL}/{device['id']}", headers=auth(who.token))
    assert resp.status == 204
    assert await listed(app_client, who) == []
    assert await rows_of(pg_pool, who.user_id) == []
    assert await audit_actions(pg_pool, who, app_client) == [
        "push_device.registered",
        "push_device.removed",
    ]


async def test_an_admin_cannot_see_or_remove_anothers_phone(
    app_client: TestClient, pg_pool: asyncpg.Pool
) -> None:
    owner, other = await staff(app_client, "viewer"), await staff(app_client, "admin")
    _, device = await register(app_client, owner, new_token())
    assert await listed(app_client, other) == []
    resp = await app_client.delete(f"{URL}/{device['id']}", headers=auth(other.token))
    await assert_error(resp, 404, "NOT_FOUND")
    assert [d["id"] for d in await listed(app_client, owner)] == [device["id"]]


async def test_a_phone_signed_in_by_another_admin_moves_to_them(
    app_client: TestClient, pg_pool: asyncpg.Pool
) -> None:
    first, second = await staff(app_client, "viewer"), await staff(app_client, "support")
    token = new_token()
    _, device = await register(app_client, first, token)
    status, moved = await register(app_client, second, token, "android", "shared phone")
    assert (status, moved["id"]) == (201, device["id"])
    assert await listed(app_client, first) == []
    assert [d["label"] for d in await listed(app_client, second)] == ["shared phone"]
    row = await pg_pool.fetchrow(
        "SELECT details FROM audit_log WHERE action = 'push_device.registered' AND target = $1 "
        "ORDER BY id DESC LIMIT 1",
        str(device["id"]),
    )
    assert row is not None and f'"from_admin_id": {first.user_id}' in row["details"]


async def test_past_the_limit_the_phone_registered_longest_ago_goes(
    app_client: TestClient, pg_pool: asyncpg.Pool
) -> None:
    who = await staff(app_client, "viewer")
    tokens = [new_token() for _ in range(push_devices.MAX_DEVICES + 1)]
    for n, token in enumerate(tokens):
        status, _ = await register(app_client, who, token, label=f"phone {n}")
        assert status == 201
    labels = [d["label"] for d in await listed(app_client, who)]
    assert len(labels) == push_devices.MAX_DEVICES
    assert "phone 0" not in labels and labels[0] == f"phone {push_devices.MAX_DEVICES}"
    assert (await audit_actions(pg_pool, who, app_client)).count("push_device.replaced") == 1


async def test_disabled_phones_are_kept_to_the_same_limit(
    app_client: TestClient, pg_pool: asyncpg.Pool
) -> None:
    who = await staff(app_client, "viewer")
    dead = [new_token() for _ in range(push_devices.MAX_DEVICES + 2)]
    for token in dead:
        await register(app_client, who, token)
        assert await push_devices.disable_token(pg_pool, token, "FCM UNREGISTERED")
    assert not await push_devices.disable_token(pg_pool, dead[-1], "again")  # already disabled
    await register(app_client, who, new_token(), label="the new phone")
    phones = await listed(app_client, who)
    assert [p["enabled"] for p in phones] == [True] + [False] * push_devices.MAX_DEVICES
    assert phones[0]["label"] == "the new phone"
    kept = {p["token_start"] for p in phones[1:]}
    assert kept == {t[:12] for t in dead[2:]}  # the two disabled longest ago went


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"token": "has a space", "platform": "android"}, "token"),
        ({"token": "tab\there", "platform": "android"}, "token"),
        ({"token": "é" * 20, "platform": "android"}, "token"),
        ({"token": "x" * (push_devices.MAX_TOKEN_CHARS + 1), "platform": "android"}, "token"),
        ({"token": "", "platform": "android"}, "token"),
        ({"platform": "android"}, "token"),
        ({"token": "abc", "platform": "symbian"}, "platform"),
        ({"token": "abc", "platform": "android", "label": "x" * 65}, "label"),
        ({"token": "abc", "platform": "android", "admin_id": 1}, "admin_id"),
        ({"token": ["abc"], "platform": "android"}, "token"),
    ],
)
async def test_bad_registrations_are_refused_and_change_nothing(
    app_client: TestClient, pg_pool: asyncpg.Pool, body: dict[str, object], field: str
) -> None:
    who = await staff(app_client, "viewer")
    resp = await app_client.post(URL, json=body, headers=auth(who.token))
    error = await assert_error(resp, 422, "VALIDATION_ERROR")
    assert field in str(error), error
    assert await rows_of(pg_pool, who.user_id) == []


async def test_no_sign_in_no_phones(app_client: TestClient) -> None:
    resp = await app_client.post(URL, json={"token": new_token(), "platform": "android"})
    await assert_error(resp, 401)
    await assert_error(await app_client.get(URL), 401)
    await assert_error(await app_client.delete(f"{URL}/1"), 401)
    who = await staff(app_client, "viewer")
    for raw in ("abc", "²", "1" * 40, "-1"):
        resp = await app_client.delete(f"{URL}/{raw}", headers=auth(who.token))
        await assert_error(resp, 404, "NOT_FOUND")
    resp = await app_client.post(URL, data=b"{not json", headers=auth(who.token))
    await assert_error(resp, 400)


# --- breach alerts to the registered phones, and tokens FCM reports gone -----------------------


async def breach_recipients(
    settings: Settings, redis: Redis, pool: asyncpg.Pool
) -> list[dict[str, object]]:
    runtime, agent, _ = await zoned_agent(
        settings,
        redis,
        pool,
        agent_alert_channel="push",
        agent_alert_recipients=("topic:agent-alerts", "devices"),
    )
    assert [e.kind for e in await walk_out(runtime, agent)][-1] == "breach"
    return await outbox_rows(pool, agent)


async def test_breach_alerts_reach_the_phones_of_admins_who_may_read_agents(
    app_client: TestClient, push_settings: Settings, redis: Redis, pg_pool: asyncpg.Pool
) -> None:
    reader, officer, gone = (
        await staff(app_client, "viewer"),  # agents:read
        await staff(app_client, "loan_officer"),  # no agents:read
        await staff(app_client, "admin"),  # a superuser role, deactivated below
    )
    tokens = {"reader": new_token(), "officer": new_token(), "gone": new_token()}
    second = new_token()
    for who, name in ((reader, "reader"), (officer, "officer"), (gone, "gone")):
        assert (await register(app_client, who, tokens[name]))[0] == 201
    assert (await register(app_client, reader, second, "ios"))[0] == 201
    await pg_pool.execute("UPDATE admin_users SET is_active = false WHERE id = $1", gone.user_id)

    recipients = [r["recipient"] for r in await breach_recipients(push_settings, redis, pg_pool)]
    assert recipients[0] == "topic:agent-alerts"
    assert tokens["reader"] in recipients and second in recipients
    assert tokens["officer"] not in recipients and tokens["gone"] not in recipients
    assert len(recipients) == len(set(recipients))  # each phone once


async def test_a_token_fcm_reports_gone_is_disabled_until_registered_again(
    app_client: TestClient,
    push_settings: Settings,
    redis: Redis,
    pg_pool: asyncpg.Pool,
    fcm: FakeFcm,
) -> None:
    who = await staff(app_client, "viewer")
    lost, kept = new_token(), new_token()
    await register(app_client, who, kept)
    await register(app_client, who, lost)  # the newer: listed first while both are enabled
    assert (await listed(app_client, who))[0]["token_start"] == lost[:12]
    fcm.fail(lost, "UNREGISTERED")
    senders = build_senders(push_settings, pg_pool)
    assert isinstance(senders["push"], PushSender)
    try:
        alerts = await breach_recipients(push_settings, redis, pg_pool)
        dispatcher = Dispatcher(pg_pool, {"push": senders["push"]}, FAST)
        ids = {r["recipient"]: r["id"] for r in alerts}
        for _ in range(20):
            statuses = await pg_pool.fetch(
                "SELECT recipient, status FROM outbox WHERE id = ANY($1::bigint[])",
                list(ids.values()),
            )
            if all(r["status"] in ("sent", "dead") for r in statuses):
                break
            await dispatcher.dispatch_once()
        final = {r["recipient"]: r["status"] for r in statuses}
        assert (final[lost], final[kept]) == ("dead", "sent")
    finally:
        await close_senders(senders)

    phones = {d["token_start"]: d for d in await listed(app_client, who)}
    assert phones[lost[:12]]["enabled"] is False
    assert str(phones[lost[:12]]["disabled_reason"]).startswith("FCM UNREGISTERED (HTTP 404)")
    assert phones[kept[:12]]["enabled"] is True
    # The enabled phone is listed first.
    assert (await listed(app_client, who))[0]["token_start"] == kept[:12]

    recipients = [r["recipient"] for r in await breach_recipients(push_settings, redis, pg_pool)]
    assert kept in recipients and lost not in recipients

    # The app signs in again with the same token (FCM gave it back): enabled again.
    status, device = await register(app_client, who, lost)
    assert (status, device["enabled"], device["disabled_reason"]) == (200, True, None)
    recipients = [r["recipient"] for r in await breach_recipients(push_settings, redis, pg_pool)]
    assert lost in recipients


async def test_a_failing_disable_does_not_stop_the_dead_letter(
    push_settings: Settings, fcm: FakeFcm
) -> None:
    token = new_token()
    fcm.fail(token, "SENDER_ID_MISMATCH")
    heard: list[tuple[str, str]] = []

    async def broken(gone: str, reason: str) -> None:
        heard.append((gone, reason))
        raise asyncpg.exceptions.ConnectionDoesNotExistError("the database went away")

    senders = build_senders(push_settings)
    push = senders["push"]
    assert isinstance(push, PushSender)
    push.on_token_gone = broken
    try:
        with pytest.raises(SendFailed) as caught:
            await push.send(OutboundMessage(1, "push", token, "x", "test", 0, "en"))
        assert caught.value.temporary is False  # dead-lettered all the same
        assert heard and heard[0][0] == token and heard[0][1].startswith("FCM SENDER_ID_MISMATCH")
        # A topic FCM refuses is no phone: nothing is told.
        fcm.fail("agent-alerts", "UNREGISTERED")
        with pytest.raises(SendFailed):
            await push.send(OutboundMessage(2, "push", "topic:agent-alerts", "x", "test", 0, "en"))
        assert len(heard) == 1
    finally:
        await close_senders(senders)
