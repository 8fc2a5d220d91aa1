"""`/api/v1/admins`: an operator lists, creates, re-roles, deactivates, reactivates and unlocks
admins (`admins:manage`). A deactivation or a role change ends the admin's sessions at once;
the guard rails keep at least one active admin who may manage admins, even under a race."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import asyncpg
import pyotp
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from config.settings import Settings
from gateway.app import create_app
from gateway.keys import PG_POOL
from gateway.logs import JsonFormatter
from tests.admin_support import (
    OUTAGE,
    admin_id,
    audit_rows,
    manager,
    ok,
    race,
    redis_proxy,
)
from tests.conftest import running_app
from tests.helpers import PASSWORD, Admin, assert_error, auth, login, make_admin, token_for

URL = "/api/v1/admins"


async def test_create_get_and_list(app_client: TestClient, pg_pool: asyncpg.Pool) -> None:
    boss, token = await manager(app_client)
    created = await ok(
        await app_client.post(
            URL,
            json={"username": "  NewStaff.A1 ", "password": PASSWORD, "role": "support"},
            headers=auth(token),
        ),
        201,
    )
    name = created["username"]
    assert name == "newstaff.a1" and created["roles"] == ["support"] and created["active"]
    assert created["locked_until"] is None and created["failed_logins"] == 0
    assert created["provisioning_uri"].startswith("otpauth://totp/")
    assert not {"password_hash", "totp_secret_enc", "password"} & set(created)
    one = await ok(await app_client.get(f"{URL}/{created['id']}", headers=auth(token)))
    assert one == {k: v for k, v in created.items() if k != "provisioning_uri"}
    # The provisioning URI is the new admin's authenticator: they can log in with it.
    totp = pyotp.parse_uri(created["provisioning_uri"])
    assert isinstance(totp, pyotp.TOTP)
    newcomer = await login(app_client, Admin(name, PASSWORD, totp))
    me = await ok(await app_client.get("/api/v1/auth/me", headers=auth(newcomer["access_token"])))
    assert me["roles"] == ["support"]
    one = await ok(await app_client.get(f"{URL}/{created['id']}", headers=auth(token)))
    [row] = await audit_rows(pg_pool, "admin.create", name)
    assert (row["actor_type"], row["actor"]) == ("admin", boss.username)

    first = await ok(await app_client.get(URL, params={"limit": "1"}, headers=auth(token)))
    assert len(first["items"]) == 1 and first["next_before"] == first["items"][0]["id"]
    rest = await ok(
        await app_client.get(
            URL, params={"before": str(first["next_before"]), "limit": "100"}, headers=auth(token)
        )
    )
    ids = [a["id"] for a in first["items"] + rest["items"]]
    assert ids == sorted(ids, reverse=True) and created["id"] in ids
    listed = next(a for a in first["items"] + rest["items"] if a["id"] == created["id"])
    assert listed == one


async def test_create_refusals_and_no_password_in_logs(
    app_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    boss, token = await manager(app_client)
    secret = "Unlogged-Secret-42"
    caplog.set_level(logging.DEBUG)
    good = {"username": f"{boss.username}x", "password": secret, "role": "viewer"}
    await ok(await app_client.post(URL, json=good, headers=auth(token)), 201)
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({**good, "username": good["username"].upper()}, 409, "ALREADY_EXISTS"),
        ({**good, "username": "x!"}, 422, "VALIDATION_ERROR"),
        ({**good, "username": f"{boss.username}y", "password": "short1"}, 422, "VALIDATION_ERROR"),
        ({**good, "username": f"{boss.username}y", "password": "no-digits-here"}, 422, None),
        ({**good, "username": f"{boss.username}y", "role": "wizard"}, 404, "NOT_FOUND"),
        ({**good, "username": f"{boss.username}y", "is_active": True}, 422, "VALIDATION_ERROR"),
        ({"username": f"{boss.username}y", "password": secret}, 422, "VALIDATION_ERROR"),
    ]
    for body, status, code in cases:
        resp = await app_client.post(URL, json=body, headers=auth(token))
        await assert_error(resp, status, code or "VALIDATION_ERROR")
    refused = await app_client.post(
        URL, data=b"{not json", headers={**auth(token), "Content-Type": "application/json"}
    )
    await assert_error(refused, 400, "INVALID_JSON")
    text = "\n".join(JsonFormatter().format(r) for r in caplog.records) + caplog.text
    assert "admin created" in text and secret not in text


async def test_deactivation_ends_sessions_at_once(
    app_client: TestClient, pg_pool: asyncpg.Pool
) -> None:
    boss, token = await manager(app_client)
    staff = await make_admin(app_client.server.app, "support")  # type: ignore[arg-type]
    staff_id = await admin_id(pg_pool, staff.username)
    tokens = await login(app_client, staff)
    me = await app_client.get("/api/v1/auth/me", headers=auth(tokens["access_token"]))
    assert me.status == 200

    body = await ok(await app_client.post(f"{URL}/{staff_id}/deactivate", headers=auth(token)))
    assert body["active"] is False
    gone = await app_client.get("/api/v1/auth/me", headers=auth(tokens["access_token"]))
    await assert_error(gone, 401, "TOKEN_REVOKED")
    refreshed = await app_client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    await assert_error(refreshed, 401, "TOKEN_REVOKED")
    step = staff.next_step
    attempt = {"username": staff.username, "password": staff.password, "otp": staff.otp()}
    await assert_error(
        await app_client.post("/api/v1/auth/login", json=attempt), 401, "INVALID_CREDENTIALS"
    )
    staff.next_step = step  # the refused login spent no code: the next one may use it
    # A retry changes nothing and is not audited twice; the manager's own token still works.
    again = await ok(await app_client.post(f"{URL}/{staff_id}/deactivate", headers=auth(token)))
    assert again["active"] is False
    [row] = await audit_rows(pg_pool, "admin.deactivated", staff.username)
    assert row["actor"] == boss.username

    back = await ok(await app_client.post(f"{URL}/{staff_id}/reactivate", headers=auth(token)))
    assert back["active"] is True
    [row] = await audit_rows(pg_pool, "admin.reactivated", staff.username)
    assert row["actor"] == boss.username
    # Reactivated: a new login works; the tokens of before stay revoked.
    fresh = await login(app_client, staff)
    me = await app_client.get("/api/v1/auth/me", headers=auth(fresh["access_token"]))
    assert me.status == 200
    old = await app_client.get("/api/v1/auth/me", headers=auth(tokens["access_token"]))
    await assert_error(old, 401, "TOKEN_REVOKED")


async def test_role_change_ends_sessions_and_the_next_login_has_the_new_permissions(
    app_client: TestClient, pg_pool: asyncpg.Pool
) -> None:
    boss, token = await manager(app_client)
    staff = await make_admin(app_client.server.app, "viewer")  # type: ignore[arg-type]
    staff_id = await admin_id(pg_pool, staff.username)
    tokens = await login(app_client, staff)
    other = await login(app_client, await make_admin(app_client.server.app, "viewer"))  # type: ignore[arg-type]

    body = await ok(
        await app_client.put(
            f"{URL}/{staff_id}/roles",
            json={"roles": ["support", "loan_officer", "support"]},
            headers=auth(token),
        )
    )
    assert body["roles"] == ["loan_officer", "support"]
    old = await app_client.get("/api/v1/auth/me", headers=auth(tokens["access_token"]))
    await assert_error(old, 401, "TOKEN_REVOKED")
    refreshed = await app_client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    await assert_error(refreshed, 401, "TOKEN_REVOKED")
    new = await login(app_client, staff)
    me = await ok(await app_client.get("/api/v1/auth/me", headers=auth(new["access_token"])))
    assert {"loans:manage", "audit:read"} <= set(me["permissions"])
    assert "menus:read" not in me["permissions"]  # the viewer role is gone
    # Only that admin's sessions end: another admin's and the manager's still work.
    for still in (other["access_token"], token):
        assert (await app_client.get("/api/v1/auth/me", headers=auth(still))).status == 200
    [row] = await audit_rows(pg_pool, "admin.roles_changed", staff.username)
    assert row["actor"] == boss.username
    assert json.loads(row["details"]) == {
        "before": ["viewer"],
        "after": ["loan_officer", "support"],
    }
    # The same roles again: nothing changes and nothing is audited, but the sessions end
    # again (a retry after a 503 must be able to finish the cut-off).
    same = {"roles": ["support", "loan_officer"]}
    await ok(await app_client.put(f"{URL}/{staff_id}/roles", json=same, headers=auth(token)))
    assert len(await audit_rows(pg_pool, "admin.roles_changed", staff.username)) == 1
    again = await app_client.get("/api/v1/auth/me", headers=auth(new["access_token"]))
    await assert_error(again, 401, "TOKEN_REVOKED")


async def test_unlock_clears_a_lockout(
    app_client: TestClient, pg_pool: asyncpg.Pool, settings: Settings
) -> None:
    boss, token = await manager(app_client)
    staff = await make_admin(app_client.server.app, "viewer")  # type: ignore[arg-type]
    staff_id = await admin_id(pg_pool, staff.username)
    bad = {"username": staff.username, "password": "not-the-password1", "otp": "000000"}
    for _ in range(settings.login_max_failures):
        await app_client.post("/api/v1/auth/login", json=bad)
    locked = await ok(await app_client.get(f"{URL}/{staff_id}", headers=auth(token)))
    assert locked["locked_until"] is not None
    right = {"username": staff.username, "password": staff.password, "otp": staff.otp()}
    await assert_error(
        await app_client.post("/api/v1/auth/login", json=right), 403, "ACCOUNT_LOCKED"
    )

    body = await ok(await app_client.post(f"{URL}/{staff_id}/unlock", headers=auth(token)))
    assert body["locked_until"] is None and body["failed_logins"] == 0
    await login(app_client, staff)
    [row] = await audit_rows(pg_pool, "admin.unlocked", staff.username)
    assert row["actor"] == boss.username
    # Nothing left to clear: no second audit row.
    await ok(await app_client.post(f"{URL}/{staff_id}/unlock", headers=auth(token)))
    assert len(await audit_rows(pg_pool, "admin.unlocked", staff.username)) == 1


async def test_an_admin_cannot_cut_themselves_off(
    app_client: TestClient, pg_pool: asyncpg.Pool
) -> None:
    boss, token = await manager(app_client)
    me = await admin_id(pg_pool, boss.username)
    resp = await app_client.post(f"{URL}/{me}/deactivate", headers=auth(token))
    await assert_error(resp, 409, "CANNOT_DEACTIVATE_SELF")
    resp = await app_client.put(
        f"{URL}/{me}/roles", json={"roles": ["viewer"]}, headers=auth(token)
    )
    await assert_error(resp, 409, "CANNOT_DEMOTE_SELF")
    still = await ok(await app_client.get(f"{URL}/{me}", headers=auth(token)))
    assert still["roles"] == ["admin"] and still["active"]
    # Changing one's own roles while keeping admins:manage is allowed, and ends one's own
    # sessions like any role change.
    mine = await ok(
        await app_client.put(
            f"{URL}/{me}/roles", json={"roles": ["admin", "viewer"]}, headers=auth(token)
        )
    )
    assert mine["roles"] == ["admin", "viewer"]
    await assert_error(await app_client.get(URL, headers=auth(token)), 401, "TOKEN_REVOKED")


BAD_IDS = ["abc", "0", "-1", "1.5", "9" * 19, "²", "١", "99999999999999"]


@pytest.mark.parametrize("raw", BAD_IDS)
async def test_unknown_ids_are_404(app_client: TestClient, raw: str) -> None:
    _, token = await manager(app_client)
    requests = [
        app_client.get(f"{URL}/{raw}", headers=auth(token)),
        app_client.put(f"{URL}/{raw}/roles", json={"roles": ["viewer"]}, headers=auth(token)),
        *(
            app_client.post(f"{URL}/{raw}/{verb}", headers=auth(token))
            for verb in ("deactivate", "reactivate", "unlock")
        ),
    ]
    for request in requests:
        await assert_error(await request, 404, "NOT_FOUND")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"roles": []}, 422),
        ({}, 422),
        ({"roles": "admin"}, 422),
        ({"roles": [""]}, 422),
        ({"roles": ["viewer"], "active": False}, 422),
        ({"roles": ["viewer"] * 17}, 422),
        ({"roles": ["viewer", "wizard"]}, 404),
    ],
)
async def test_bad_role_bodies(
    app_client: TestClient, pg_pool: asyncpg.Pool, body: dict[str, Any], status: int
) -> None:
    _, token = await manager(app_client)
    staff = await make_admin(app_client.server.app, "support")  # type: ignore[arg-type]
    staff_id = await admin_id(pg_pool, staff.username)
    resp = await app_client.put(f"{URL}/{staff_id}/roles", json=body, headers=auth(token))
    error = await assert_error(resp, status)
    if status == 404:
        assert "wizard" in error["message"] and "loan_officer" in error["message"]
    unchanged = await ok(await app_client.get(f"{URL}/{staff_id}", headers=auth(token)))
    assert unchanged["roles"] == ["support"]


@pytest.mark.parametrize(
    "params", [{"limit": "0"}, {"limit": "101"}, {"before": "x"}, {"before": "0"}, {"page": "2"}]
)
async def test_bad_list_queries_are_422(app_client: TestClient, params: dict[str, str]) -> None:
    _, token = await manager(app_client)
    resp = await app_client.get(URL, params=params, headers=auth(token))
    await assert_error(resp, 422, "VALIDATION_ERROR")


async def test_only_admin_managers_may_call(app_client: TestClient, pg_pool: asyncpg.Pool) -> None:
    support = await token_for(app_client, "support")  # audit:read, customers:write; not this
    target = await admin_id(pg_pool, (await make_admin(app_client.server.app, "viewer")).username)  # type: ignore[arg-type]
    calls = [
        ("GET", URL, None),
        ("GET", f"{URL}/{target}", None),
        ("POST", URL, {"username": "someone-new", "password": PASSWORD, "role": "admin"}),
        ("PUT", f"{URL}/{target}/roles", {"roles": ["admin"]}),
        ("POST", f"{URL}/{target}/deactivate", None),
        ("POST", f"{URL}/{target}/reactivate", None),
        ("POST", f"{URL}/{target}/unlock", None),
    ]
    for method, path, body in calls:
        resp = await app_client.request(method, path, json=body)
        await assert_error(resp, 401, "UNAUTHORIZED")
        resp = await app_client.request(method, path, json=body, headers=auth(support))
        error = await assert_error(resp, 403, "FORBIDDEN")
        assert error["details"]["permission"] == "admins:manage"
    after = await pg_pool.fetchrow("SELECT is_active FROM admin_users WHERE id = $1", target)
    assert after is not None and after["is_active"]
    assert (
        await pg_pool.fetchval("SELECT count(*) FROM admin_users WHERE username = 'someone-new'")
        == 0
    )


# --- the last manager, raced: an app on a database of its own, where the managers are known ---


async def test_the_last_two_managers_cannot_both_go_at_once(
    settings: Settings, empty_database: str
) -> None:
    own = replace(
        settings, database_url=empty_database, redis_prefix=settings.redis_prefix + "admins:"
    )
    async with running_app(create_app(own, start_channels=False)) as client:
        app = client.server.app
        assert app is not None
        pool = app[PG_POOL]
        one, two = await make_admin(app, "admin"), await make_admin(app, "admin")
        await make_admin(app, "support")  # not a manager: does not count
        one_token = (await login(client, one))["access_token"]
        two_token = (await login(client, two))["access_token"]
        one_id, two_id = await admin_id(pool, one.username), await admin_id(pool, two.username)

        # Each deactivates the other: one wins, the other meets the guard.
        answers = await race(
            client,
            pool,
            client.post(f"{URL}/{two_id}/deactivate", headers=auth(one_token)),
            client.post(f"{URL}/{one_id}/deactivate", headers=auth(two_token)),
        )
        statuses = sorted(a.status for a in answers)
        assert statuses == [200, 409], statuses
        loser = next(a for a in answers if a.status == 409)
        await assert_error(loser, 409, "LAST_ADMIN_MANAGER")
        active = await pool.fetchval(
            "SELECT count(*) FROM admin_users WHERE is_active AND id = ANY($1)", [one_id, two_id]
        )
        assert active == 1
        survivor, survivor_token = (
            (one, one_token) if answers[0].status == 200 else (two, two_token)
        )

        # A new manager, then each takes admins:manage away from the other at once.
        created = await ok(
            await client.post(
                URL,
                json={"username": "third-manager", "password": PASSWORD, "role": "admin"},
                headers=auth(survivor_token),
            ),
            201,
        )
        totp = pyotp.parse_uri(created["provisioning_uri"])
        assert isinstance(totp, pyotp.TOTP)
        third_token = (await login(client, Admin("third-manager", PASSWORD, totp)))["access_token"]
        survivor_id = await admin_id(pool, survivor.username)
        answers = await race(
            client,
            pool,
            client.put(
                f"{URL}/{created['id']}/roles",
                json={"roles": ["viewer"]},
                headers=auth(survivor_token),
            ),
            client.put(
                f"{URL}/{survivor_id}/roles", json={"roles": ["viewer"]}, headers=auth(third_token)
            ),
        )
        statuses = sorted(a.status for a in answers)
        assert statuses == [200, 409], statuses
        await assert_error(next(a for a in answers if a.status == 409), 409, "LAST_ADMIN_MANAGER")
        managers = await pool.fetchval(
            "SELECT count(*) FROM admin_users u JOIN admin_user_roles ur ON ur.user_id = u.id "
            "JOIN roles r ON r.id = ur.role_id WHERE u.is_active AND r.name = 'admin'"
        )
        assert managers == 1


# --- Redis cut while a deactivation ends the sessions --------------------------------------


async def test_redis_down_at_the_cut_off_saves_nothing(settings: Settings) -> None:
    """The sessions cannot be ended: the deactivation is refused (503) and rolled back, rather
    than saved with the admin's tokens still working for up to an hour."""
    proxy, via = await redis_proxy(settings)
    app = create_app(replace(settings, redis_url=via), run_migrations=False, start_channels=False)
    try:
        async with running_app(app) as client:
            pool = app[PG_POOL]
            _, token = await manager(client)
            staff = await make_admin(app, "viewer")
            staff_id = await admin_id(pool, staff.username)
            staff_token = (await login(client, staff))["access_token"]

            proxy.cut_on(b"EVALSHA", refuse=OUTAGE)
            resp = await client.post(f"{URL}/{staff_id}/deactivate", headers=auth(token))
            await assert_error(resp, 503, "SERVICE_UNAVAILABLE")
            assert proxy.tripped == 1
            proxy.restore()
            assert await pool.fetchval("SELECT is_active FROM admin_users WHERE id = $1", staff_id)
            assert await audit_rows(pool, "admin.deactivated", staff.username) == []
            me = await client.get("/api/v1/auth/me", headers=auth(staff_token))
            assert me.status == 200  # still active, as the database says

            again = await ok(await client.post(f"{URL}/{staff_id}/deactivate", headers=auth(token)))
            assert again["active"] is False
            gone = await client.get("/api/v1/auth/me", headers=auth(staff_token))
            await assert_error(gone, 401, "TOKEN_REVOKED")
    finally:
        await proxy.close()


async def test_a_cut_revokes_even_after_the_generation_was_lost(
    app_client: TestClient, pg_pool: asyncpg.Pool, redis: Redis, settings: Settings
) -> None:
    """The generation only grows (it is at least Redis's clock), so a cut after the key
    expired or Redis lost it still revokes tokens that carry the generation from before."""
    _, token = await manager(app_client)
    staff = await make_admin(app_client.server.app, "viewer")  # type: ignore[arg-type]
    staff_id = await admin_id(pg_pool, staff.username)
    key = f"{settings.redis_prefix}auth:user:{staff_id}:gen"
    roles = {"roles": ["support"]}
    await ok(await app_client.put(f"{URL}/{staff_id}/roles", json=roles, headers=auth(token)))
    first = int(await redis.get(key))
    assert await redis.ttl(key) > settings.refresh_token_ttl_s
    tokens = await login(app_client, staff)
    assert await redis.delete(key) == 1  # expired, or lost with Redis
    await ok(await app_client.put(f"{URL}/{staff_id}/roles", json=roles, headers=auth(token)))
    assert int(await redis.get(key)) > first
    old = await app_client.get("/api/v1/auth/me", headers=auth(tokens["access_token"]))
    await assert_error(old, 401, "TOKEN_REVOKED")
