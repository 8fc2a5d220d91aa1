"""`/api/v1/permissions` and `/api/v1/roles`: an operator with `admins:manage` lists the
permissions, and lists, creates, changes and deletes roles. Taking permissions from a role ends
the sessions of its holders at once; a superuser role cannot change; the guard rails keep at
least one active admin who may manage admins, even when changes race."""

from __future__ import annotations

import json
import secrets
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from config.settings import Settings
from core.roles import MAX_PERMISSIONS, MAX_ROLES
from gateway.app import create_app
from gateway.auth import CUT_BATCH
from gateway.keys import PG_POOL, SETTINGS, TOKENS
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
from tests.helpers import assert_error, auth, login, make_admin, token_for

ROLES = "/api/v1/roles"
PERMISSIONS = "/api/v1/permissions"
MANAGE = "admins:manage"
ME = "/api/v1/auth/me"


def role_name() -> str:
    """A role of the test's own: tests share the database."""
    return f"r-{secrets.token_hex(5)}"


async def create(client: TestClient, token: str, name: str, permissions: list[str]) -> None:
    body = {"name": name, "description": f"{name} staff", "permissions": permissions}
    await ok(await client.post(ROLES, json=body, headers=auth(token)), 201)


async def put(
    client: TestClient, token: str, name: str, permissions: list[str], **more: Any
) -> dict[str, Any]:
    body = {"permissions": permissions, **more}
    return await ok(await client.put(f"{ROLES}/{name}", json=body, headers=auth(token)))


def json_headers(token: str) -> dict[str, str]:
    return {**auth(token), "Content-Type": "application/json"}


async def me(client: TestClient, token: str) -> dict[str, Any]:
    return await ok(await client.get(ME, headers=auth(token)))


async def snapshot(pool: asyncpg.Pool) -> tuple[Any, ...]:
    """Every role with its permissions, and the role audit rows: what a refused call must not
    change."""
    roles = await pool.fetch(
        "SELECT r.name, r.description, r.is_superuser, "
        "array(SELECT permission_code FROM role_permissions WHERE role_id = r.id ORDER BY 1) "
        "FROM roles r ORDER BY r.name"
    )
    audited = await pool.fetchval("SELECT count(*) FROM audit_log WHERE action LIKE 'role.%'")
    return tuple(tuple(r) for r in roles), audited


async def test_permissions_are_listed_with_their_descriptions(
    app_client: TestClient, pg_pool: asyncpg.Pool
) -> None:
    _, token = await manager(app_client)
    body = await ok(await app_client.get(PERMISSIONS, headers=auth(token)))
    stored = await pg_pool.fetch("SELECT code, description FROM permissions ORDER BY code")
    assert body == {"items": [dict(r) for r in stored]}
    codes = [p["code"] for p in body["items"]]
    assert MANAGE in codes and "pricing:write" in codes  # from 0001 and from a later migration
    manage = next(p for p in body["items"] if p["code"] == MANAGE)
    assert manage["description"] == "Create admins and change their roles"


async def test_a_role_is_created_read_listed_changed_and_deleted(
    app_client: TestClient, pg_pool: asyncpg.Pool
) -> None:
    boss, token = await manager(app_client)
    name = role_name()
    created = await ok(
        await app_client.post(
            ROLES,
            json={
                "name": name,
                "description": "Branch tellers",
                "permissions": ["customers:read", "audit:read", "customers:read"],
            },
            headers=auth(token),
        ),
        201,
    )
    assert created == {
        "name": name,
        "description": "Branch tellers",
        "is_superuser": False,
        "permissions": ["audit:read", "customers:read"],
        "active_admins": 0,
        "admins": 0,
    }
    [row] = await audit_rows(pg_pool, "role.created", name)
    assert (row["actor_type"], row["actor"]) == ("admin", boss.username)
    assert json.loads(row["details"]) == {
        "description": "Branch tellers",
        "permissions": ["audit:read", "customers:read"],
    }

    # Two holders, one of them deactivated: counted apart.
    holder = await make_admin(app_client.server.app, name)  # type: ignore[arg-type]
    gone = await make_admin(app_client.server.app, name)  # type: ignore[arg-type]
    gone_id = await admin_id(pg_pool, gone.username)
    await ok(await app_client.post(f"/api/v1/admins/{gone_id}/deactivate", headers=auth(token)))
    one = await ok(await app_client.get(f"{ROLES}/{name}", headers=auth(token)))
    assert one == {**created, "active_admins": 1, "admins": 2}
    listed = await ok(await app_client.get(ROLES, headers=auth(token)))
    names = [r["name"] for r in listed["items"]]
    assert names == sorted(names) and {"admin", "support", name} <= set(names)
    assert next(r for r in listed["items"] if r["name"] == name) == one
    # The holder can do what the role grants, and nothing else.
    holder_token = (await login(app_client, holder))["access_token"]
    assert (await app_client.get("/api/v1/audit-log", headers=auth(holder_token))).status == 200

    changed = await put(
        app_client, token, name, ["customers:read", "messages:read"], description="Tellers"
    )
    assert changed == {
        **one,
        "description": "Tellers",
        "permissions": ["customers:read", "messages:read"],
    }
    [row] = await audit_rows(pg_pool, "role.updated", name)
    assert row["actor"] == boss.username
    assert json.loads(row["details"]) == {
        "before": ["audit:read", "customers:read"],
        "after": ["customers:read", "messages:read"],
        "description": {"before": "Branch tellers", "after": "Tellers"},
    }

    # Held (even by a deactivated admin): not deleted.
    refused = await app_client.delete(f"{ROLES}/{name}", headers=auth(token))
    error = await assert_error(refused, 409, "ROLE_IN_USE")
    assert error["details"] == {"admins": 2}
    for admin in (holder.username, gone.username):
        target = await admin_id(pg_pool, admin)
        roles = {"roles": ["viewer"]}
        await ok(
            await app_client.put(f"/api/v1/admins/{target}/roles", json=roles, headers=auth(token))
        )
    resp = await app_client.delete(f"{ROLES}/{name}", headers=auth(token))
    assert resp.status == 204, await resp.text()
    await assert_error(
        await app_client.get(f"{ROLES}/{name}", headers=auth(token)), 404, "NOT_FOUND"
    )
    [row] = await audit_rows(pg_pool, "role.deleted", name)
    assert row["actor"] == boss.username
    assert json.loads(row["details"]) == {
        "description": "Tellers",
        "permissions": ["customers:read", "messages:read"],
    }
    assert await pg_pool.fetchval("SELECT count(*) FROM roles WHERE name = $1", name) == 0
    # Gone: deleting again is 404, and the name is free for a new role.
    resp = await app_client.delete(f"{ROLES}/{name}", headers=auth(token))
    await assert_error(resp, 404, "NOT_FOUND")
    await create(app_client, token, name, [])


async def test_a_superuser_role_cannot_change(
    app_client: TestClient, pg_pool: asyncpg.Pool
) -> None:
    _, token = await manager(app_client)
    before = await snapshot(pg_pool)
    admin = await ok(await app_client.get(f"{ROLES}/admin", headers=auth(token)))
    codes = [r["code"] for r in await pg_pool.fetch("SELECT code FROM permissions ORDER BY code")]
    assert admin["is_superuser"] is True and admin["permissions"] == codes
    refused = await app_client.put(
        f"{ROLES}/admin", json={"permissions": ["customers:read"]}, headers=auth(token)
    )
    await assert_error(refused, 409, "SUPERUSER_ROLE")
    await assert_error(
        await app_client.delete(f"{ROLES}/admin", headers=auth(token)), 409, "SUPERUSER_ROLE"
    )
    # And none is made here: the body has no such field.
    hopeful = {"name": role_name(), "permissions": [], "is_superuser": True}
    await assert_error(
        await app_client.post(ROLES, json=hopeful, headers=auth(token)), 422, "VALIDATION_ERROR"
    )
    assert await snapshot(pg_pool) == before


async def test_taking_permissions_away_ends_the_holders_sessions(
    app_client: TestClient, pg_pool: asyncpg.Pool
) -> None:
    boss, token = await manager(app_client)
    name = role_name()
    await create(app_client, token, name, ["customers:read", "audit:read"])
    holder = await make_admin(app_client.server.app, name)  # type: ignore[arg-type]
    tokens = await login(app_client, holder)
    bystander = await token_for(app_client, "support")  # holds audit:read through another role

    # Added only: no session ends; the holder gets it at the next refresh.
    await put(app_client, token, name, ["customers:read", "audit:read", "messages:read"])
    assert "messages:read" not in (await me(app_client, tokens["access_token"]))["permissions"]
    tokens = await ok(
        await app_client.post(
            "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
    )
    assert "messages:read" in (await me(app_client, tokens["access_token"]))["permissions"]
    # The description alone: no session ends either.
    await put(
        app_client,
        token,
        name,
        ["customers:read", "audit:read", "messages:read"],
        description="renamed",
    )
    assert (await app_client.get(ME, headers=auth(tokens["access_token"]))).status == 200

    # Taken away: every holder's access and refresh tokens stop at once.
    await put(app_client, token, name, ["customers:read", "messages:read"])
    old = await app_client.get(ME, headers=auth(tokens["access_token"]))
    await assert_error(old, 401, "TOKEN_REVOKED")
    refreshed = await app_client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    await assert_error(refreshed, 401, "TOKEN_REVOKED")
    for still in (bystander, token):  # other roles' admins, and the manager, are untouched
        assert (await app_client.get(ME, headers=auth(still))).status == 200
    again = (await login(app_client, holder))["access_token"]
    assert "audit:read" not in (await me(app_client, again))["permissions"]
    resp = await app_client.get("/api/v1/audit-log", headers=auth(again))
    await assert_error(resp, 403, "FORBIDDEN")
    rows = await audit_rows(pg_pool, "role.updated", name)
    assert [json.loads(r["details"])["after"] for r in rows] == [
        ["audit:read", "customers:read", "messages:read"],
        ["audit:read", "customers:read", "messages:read"],
        ["customers:read", "messages:read"],
    ]
    assert {r["actor"] for r in rows} == {boss.username}

    # The same request again changes nothing and audits nothing, but ends the sessions again:
    # it may be the retry of a removal whose cut-off failed after the commit (a 503).
    await put(app_client, token, name, ["customers:read", "messages:read"])
    assert len(await audit_rows(pg_pool, "role.updated", name)) == 3
    await assert_error(await app_client.get(ME, headers=auth(again)), 401, "TOKEN_REVOKED")


async def test_only_admin_managers_may_call(app_client: TestClient, pg_pool: asyncpg.Pool) -> None:
    _, token = await manager(app_client)
    name = role_name()
    await create(app_client, token, name, ["customers:read"])
    support = await token_for(app_client, "support")  # audit:read, customers:write; not this
    before = await snapshot(pg_pool)
    calls = [
        ("GET", PERMISSIONS, None),
        ("GET", ROLES, None),
        ("GET", f"{ROLES}/{name}", None),
        ("POST", ROLES, {"name": role_name(), "permissions": [MANAGE]}),
        ("PUT", f"{ROLES}/{name}", {"permissions": [MANAGE]}),
        ("PUT", f"{ROLES}/support", {"permissions": [MANAGE]}),
        ("DELETE", f"{ROLES}/{name}", None),
    ]
    for method, path, body in calls:
        resp = await app_client.request(method, path, json=body)
        await assert_error(resp, 401, "UNAUTHORIZED")
        resp = await app_client.request(method, path, json=body, headers=auth(support))
        error = await assert_error(resp, 403, "FORBIDDEN")
        assert error["details"]["permission"] == MANAGE
    assert await snapshot(pg_pool) == before


# Names that are no role: unknown, or breaking the rules (upper case, look-alike letters,
# invisible characters, too long). Percent-encoded in the path. (label, raw, status, code)
BAD_NAMES = [
    ("unknown", "no-such-role", 404, "NOT_FOUND"),
    ("upper case", "ADMIN", 404, "NOT_FOUND"),
    ("capitalised", "Support", 404, "NOT_FOUND"),
    ("fullwidth a", "%EF%BD%81dmin", 404, "NOT_FOUND"),
    ("Cyrillic a", "%D0%B0dmin", 404, "NOT_FOUND"),
    ("dotless i", "adm%C4%B1n", 404, "NOT_FOUND"),
    ("zero-width space", "admin%E2%80%8B", 404, "NOT_FOUND"),
    ("one char", "a", 404, "NOT_FOUND"),
    ("65 chars", "x" * 65, 404, "NOT_FOUND"),
    ("5000 chars", "9" * 5000, 404, "NOT_FOUND"),
    ("not UTF-8", "adm%FFin", 404, "NOT_FOUND"),
    ("a NUL", "admin%00", 400, "BAD_REQUEST"),  # refused for every URL by the middleware
]


@pytest.mark.parametrize("case", BAD_NAMES, ids=[c[0] for c in BAD_NAMES])
async def test_unknown_and_hostile_names_are_refused(
    app_client: TestClient, pg_pool: asyncpg.Pool, case: tuple[str, str, int, str]
) -> None:
    _, raw, status, code = case
    _, token = await manager(app_client)
    before = await snapshot(pg_pool)
    path = f"{ROLES}/{raw}"
    for method, body in (("GET", None), ("PUT", {"permissions": []}), ("DELETE", None)):
        resp = await app_client.request(method, path, json=body, headers=auth(token))
        error = await assert_error(resp, status, code)
        assert len(error["message"]) < 100
    assert await snapshot(pg_pool) == before


def _new(**fields: Any) -> dict[str, Any]:
    return {"name": role_name(), "description": "", "permissions": ["customers:read"], **fields}


TOO_MANY = ["customers:read"] * (MAX_PERMISSIONS + 1)

# (label, body, field named in details.errors or None to skip)
BAD_NEW: list[tuple[str, Any, str | None]] = [
    ("unknown field", _new(owner="x"), "owner"),
    ("name a number", _new(name=123), "name"),
    ("name null", _new(name=None), "name"),
    ("name missing", {"permissions": []}, "name"),
    ("permissions missing", {"name": "r-missing"}, "permissions"),
    ("name upper case", _new(name="Tellers"), "name"),
    ("name one char", _new(name="t"), "name"),
    ("name 65 chars", _new(name="t" * 65), "name"),
    ("name very long", _new(name="t" * 100_000), "name"),
    ("name with a space", _new(name="branch tellers"), "name"),
    ("name with a dot", _new(name="branch.tellers"), "name"),
    ("name with a newline", _new(name="tellers\n"), "name"),
    ("name fullwidth", _new(name="ｔｅｌｌｅｒｓ"), "name"),
    ("name Cyrillic e", _new(name="tеllers"), "name"),
    ("name zero-width", _new(name="tel\u200blers"), "name"),
    ("name combining", _new(name="tellérs"), "name"),
    ("name NUL", _new(name="tel\x00lers"), "name"),
    ("name lone surrogate", _new(name="tel\ud800"), "name"),
    ("permissions a string", _new(permissions="customers:read"), "permissions"),
    ("permissions an object", _new(permissions={"customers:read": True}), "permissions"),
    ("permission a number", _new(permissions=["customers:read", 7]), "permissions.1"),
    ("permission empty", _new(permissions=[""]), "permissions.0"),
    ("permission unknown", _new(permissions=["customers:read", "money:print"]), "permissions.1"),
    ("permission upper case", _new(permissions=["CUSTOMERS:READ"]), "permissions.0"),
    ("permission long", _new(permissions=["c" * 65]), "permissions.0"),
    ("permissions too many", _new(permissions=TOO_MANY), "permissions"),
    ("description a number", _new(description=5), "description"),
    ("description too long", _new(description="d" * 501), "description"),
    ("description escape", _new(description="Tellers\x1b[2J"), "description"),
    ("description newline", _new(description="Tellers\nand more"), "description"),
    ("description bidi override", _new(description="Tellers \u202etxt.exe"), "description"),
    ("description zero-width", _new(description="Tel\u200dlers"), "description"),
    ("is_superuser", _new(is_superuser=True), "is_superuser"),
    ("a list", [_new()], None),
    ("null", None, None),
    ("a string", "tellers", None),
]


@pytest.mark.parametrize("case", BAD_NEW, ids=[c[0] for c in BAD_NEW])
async def test_bad_new_roles_are_422_and_change_nothing(
    app_client: TestClient, pg_pool: asyncpg.Pool, case: tuple[str, Any, str | None]
) -> None:
    _, token = await manager(app_client)
    _, body, field = case
    before = await snapshot(pg_pool)
    resp = await app_client.post(ROLES, data=json.dumps(body), headers=json_headers(token))
    error = await assert_error(resp, 422, "VALIDATION_ERROR")
    if field is not None:
        assert field in [e["field"] for e in error["details"]["errors"]], error
    assert await snapshot(pg_pool) == before


BAD_CHANGES: list[tuple[str, Any, str | None]] = [
    ("unknown field", {"permissions": [], "name": "other"}, "name"),
    ("permissions missing", {"description": "x"}, "permissions"),
    ("permissions null", {"permissions": None}, "permissions"),
    ("permission unknown", {"permissions": ["audit:read", "audit:write"]}, "permissions.1"),
    ("permission a list", {"permissions": [["audit:read"]]}, "permissions.0"),
    ("permissions too many", {"permissions": TOO_MANY}, "permissions"),
    ("description a list", {"permissions": [], "description": ["x"]}, "description"),
    ("description escape", {"permissions": [], "description": "\x07"}, "description"),
    ("description too long", {"permissions": [], "description": "é" * 501}, "description"),
    ("a string", "audit:read", None),
]


@pytest.mark.parametrize("case", BAD_CHANGES, ids=[c[0] for c in BAD_CHANGES])
async def test_bad_changes_are_422_and_change_nothing(
    app_client: TestClient, pg_pool: asyncpg.Pool, case: tuple[str, Any, str | None]
) -> None:
    _, token = await manager(app_client)
    name = role_name()
    await create(app_client, token, name, ["audit:read"])
    holder = await make_admin(app_client.server.app, name)  # type: ignore[arg-type]
    holder_token = (await login(app_client, holder))["access_token"]
    _, body, field = case
    before = await snapshot(pg_pool)
    resp = await app_client.put(
        f"{ROLES}/{name}", data=json.dumps(body), headers=json_headers(token)
    )
    error = await assert_error(resp, 422, "VALIDATION_ERROR")
    if field is not None:
        assert field in [e["field"] for e in error["details"]["errors"]], error
    assert await snapshot(pg_pool) == before
    assert (await app_client.get(ME, headers=auth(holder_token))).status == 200


async def test_not_json_and_a_taken_name(app_client: TestClient, pg_pool: asyncpg.Pool) -> None:
    _, token = await manager(app_client)
    name = role_name()
    await create(app_client, token, name, ["audit:read"])
    before = await snapshot(pg_pool)
    json_type = json_headers(token)
    for method, path in (("POST", ROLES), ("PUT", f"{ROLES}/{name}")):
        resp = await app_client.request(method, path, data=b'{"name": ', headers=json_type)
        await assert_error(resp, 400, "INVALID_JSON")
        resp = await app_client.request(
            method, path, data=b"name=x", headers={**auth(token), "Content-Type": "text/plain"}
        )
        await assert_error(resp, 400, "INVALID_CONTENT_TYPE")
    for taken in (name, "support", "admin"):
        resp = await app_client.post(
            ROLES, json={"name": taken, "permissions": [MANAGE]}, headers=auth(token)
        )
        await assert_error(resp, 409, "ALREADY_EXISTS")
    assert await snapshot(pg_pool) == before


async def test_a_role_being_deleted_cannot_gain_a_holder_meanwhile(
    app_client: TestClient, pg_pool: asyncpg.Pool
) -> None:
    """Deleting a role and giving it to an admin, at once: either the admin gets it and the
    deletion is refused, or the role goes and the assignment finds no such role; never an
    admin whose new role vanished under them."""
    _, token = await manager(app_client)
    name = role_name()
    await create(app_client, token, name, ["audit:read"])
    staff_id = await admin_id(pg_pool, (await make_admin(app_client.server.app, "viewer")).username)  # type: ignore[arg-type]
    answers = await race(
        app_client,
        pg_pool,
        app_client.delete(f"{ROLES}/{name}", headers=auth(token)),
        app_client.put(
            f"/api/v1/admins/{staff_id}/roles", json={"roles": [name]}, headers=auth(token)
        ),
    )
    deleted, assigned = answers
    roles = await pg_pool.fetchval(
        "SELECT array_agg(r.name) FROM admin_user_roles ur JOIN roles r ON r.id = ur.role_id "
        "WHERE ur.user_id = $1",
        staff_id,
    )
    if deleted.status == 204:
        await assert_error(assigned, 404, "NOT_FOUND")
        assert roles == ["viewer"]
    else:
        await assert_error(deleted, 409, "ROLE_IN_USE")
        assert assigned.status == 200 and roles == [name]


async def test_sessions_are_cut_in_batches(app: web.Application, redis: Redis) -> None:
    """`cut_sessions_of` ends every admin's sessions, past one pipeline's worth."""
    tokens = app[TOKENS]
    user_ids = [10**12 + secrets.randbelow(10**9) * 1000 + i for i in range(2 * CUT_BATCH + 7)]
    prefix = app[SETTINGS].redis_prefix
    before = await redis.mget([f"{prefix}auth:user:{i}:gen" for i in user_ids])
    await tokens.cut_sessions_of(user_ids)
    after = await redis.mget([f"{prefix}auth:user:{i}:gen" for i in user_ids])
    assert all(int(a) > int(b or 0) for a, b in zip(after, before, strict=True))
    await tokens.cut_sessions_of([])  # nothing to do, and no error


# --- the last manager, raced: an app on a database of its own, where the managers are known ---

ACTIVE_MANAGERS = """
SELECT count(DISTINCT u.id) FROM admin_users u
JOIN admin_user_roles ur ON ur.user_id = u.id JOIN roles r ON r.id = ur.role_id
WHERE u.is_active AND (r.is_superuser OR EXISTS (SELECT 1 FROM role_permissions rp
      WHERE rp.role_id = r.id AND rp.permission_code = 'admins:manage'))
"""


async def test_role_changes_cannot_together_leave_nobody_to_manage_admins(
    settings: Settings, empty_database: str
) -> None:
    own = replace(
        settings, database_url=empty_database, redis_prefix=settings.redis_prefix + "roles:"
    )
    async with running_app(create_app(own, start_channels=False)) as client:
        app = client.server.app
        assert app is not None
        pool = app[PG_POOL]
        boss, boss_token = await manager(client)
        for name in ("mgr-a", "mgr-b"):
            await create(client, boss_token, name, [MANAGE, "audit:read"])
        a, a_token = await manager(client, "mgr-a")
        b, b_token = await manager(client, "mgr-b")
        ids = {
            a.username: await admin_id(pool, a.username),
            b.username: await admin_id(pool, b.username),
        }
        # The superuser leaves: A and B manage admins only through their own roles.
        boss_id = await admin_id(pool, boss.username)
        await ok(await client.post(f"/api/v1/admins/{boss_id}/deactivate", headers=auth(a_token)))
        assert await pool.fetchval(ACTIVE_MANAGERS) == 2

        # Nobody takes admins:manage from the only role that gives it to them.
        refused = await client.put(
            f"{ROLES}/mgr-a", json={"permissions": ["audit:read"]}, headers=auth(a_token)
        )
        await assert_error(refused, 409, "CANNOT_DEMOTE_SELF")

        # Each takes it from the other's role at once: one wins, the other meets the guard.
        answers = await race(
            client,
            pool,
            client.put(
                f"{ROLES}/mgr-b", json={"permissions": ["audit:read"]}, headers=auth(a_token)
            ),
            client.put(
                f"{ROLES}/mgr-a", json={"permissions": ["audit:read"]}, headers=auth(b_token)
            ),
        )
        assert sorted(r.status for r in answers) == [200, 409], [r.status for r in answers]
        await assert_error(next(r for r in answers if r.status == 409), 409, "LAST_ADMIN_MANAGER")
        assert await pool.fetchval(ACTIVE_MANAGERS) == 1
        a_won = answers[0].status == 200
        (winner, winner_token, winner_role), (loser, loser_role) = (
            ((a, a_token, "mgr-a"), (b, "mgr-b"))
            if a_won
            else ((b, b_token, "mgr-b"), (a, "mgr-a"))
        )
        [row] = await audit_rows(pool, "role.updated", loser_role)
        assert row["actor"] == winner.username
        assert await audit_rows(pool, "role.updated", winner_role) == []

        # The loser manages again (an addition ends no session, but the removal ended theirs).
        await put(client, winner_token, loser_role, [MANAGE, "audit:read"])
        loser_token = (await login(client, loser))["access_token"]
        assert await pool.fetchval(ACTIVE_MANAGERS) == 2
        # A role change and an admin change at once: the winner deactivates the loser while the
        # loser takes admins:manage from the winner's role. Either alone is fine; not both.
        answers = await race(
            client,
            pool,
            client.post(
                f"/api/v1/admins/{ids[loser.username]}/deactivate", headers=auth(winner_token)
            ),
            client.put(
                f"{ROLES}/{winner_role}",
                json={"permissions": ["audit:read"]},
                headers=auth(loser_token),
            ),
        )
        assert sorted(r.status for r in answers) == [200, 409], [r.status for r in answers]
        await assert_error(next(r for r in answers if r.status == 409), 409, "LAST_ADMIN_MANAGER")
        assert await pool.fetchval(ACTIVE_MANAGERS) == 1


async def test_redis_down_at_the_cut_off_saves_nothing(
    settings: Settings, pg_pool: asyncpg.Pool
) -> None:
    """The holders' sessions cannot be ended: taking permissions away is refused (503) and
    rolled back, rather than saved while the holders' tokens still grant them."""
    proxy, via = await redis_proxy(settings)
    app = create_app(replace(settings, redis_url=via), run_migrations=False, start_channels=False)
    try:
        async with running_app(app) as client:
            _, token = await manager(client)
            name = role_name()
            await create(client, token, name, ["audit:read", "customers:read"])
            holders = [await make_admin(app, name) for _ in range(3)]
            holder_tokens = [(await login(client, h))["access_token"] for h in holders]
            before = await snapshot(pg_pool)

            proxy.cut_on(b"EVALSHA", refuse=OUTAGE)
            resp = await client.put(
                f"{ROLES}/{name}", json={"permissions": ["customers:read"]}, headers=auth(token)
            )
            await assert_error(resp, 503, "SERVICE_UNAVAILABLE")
            assert proxy.tripped == 1
            proxy.restore()
            assert await snapshot(pg_pool) == before
            for holder_token in holder_tokens:  # still granted audit:read, as the database says
                assert (
                    await client.get("/api/v1/audit-log", headers=auth(holder_token))
                ).status == 200

            await put(client, token, name, ["customers:read"])
            for holder_token in holder_tokens:
                gone = await client.get(ME, headers=auth(holder_token))
                await assert_error(gone, 401, "TOKEN_REVOKED")
    finally:
        await proxy.close()


async def test_roles_are_bounded(settings: Settings, empty_database: str) -> None:
    """GET /api/v1/roles answers every role at once: their number is bounded."""
    own = replace(
        settings, database_url=empty_database, redis_prefix=settings.redis_prefix + "cap:"
    )
    async with running_app(create_app(own, start_channels=False)) as client:
        app = client.server.app
        assert app is not None
        pool = app[PG_POOL]
        _, token = await manager(client)
        room = MAX_ROLES - await pool.fetchval("SELECT count(*) FROM roles")
        await pool.executemany(
            "INSERT INTO roles (name) VALUES ($1)", [(f"filler-{i}",) for i in range(room - 1)]
        )
        await create(client, token, "the-last-one", [])
        resp = await client.post(
            ROLES, json={"name": "one-too-many", "permissions": []}, headers=auth(token)
        )
        await assert_error(resp, 409, "TOO_MANY_ROLES")
        listed = await ok(await client.get(ROLES, headers=auth(token)))
        assert len(listed["items"]) == MAX_ROLES
        resp = await client.delete(f"{ROLES}/filler-0", headers=auth(token))
        assert resp.status == 204
        await create(client, token, "one-too-many", [])
