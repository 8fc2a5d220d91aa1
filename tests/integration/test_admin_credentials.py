"""Admin credentials over HTTP: an admin changes their own password (`POST /api/v1/auth/password`),
a manager issues a reset token for another admin (`POST /api/v1/admins/{id}/reset`) and that
admin uses it (`POST /api/v1/auth/reset`) for a new password and a new TOTP secret. Sessions end
at once, refusals change nothing, and two uses of one token at once: exactly one wins."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pyotp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from config.settings import Settings
from core import credentials
from core.clock import ManualClock
from core.identity import load_principal
from gateway.app import create_app
from gateway.keys import CIPHER, PG_POOL, SESSIONMAKER, TOKENS
from gateway.logs import JsonFormatter
from tests.admin_support import admin_id, audit_rows, manager, ok, redis_proxy
from tests.conftest import running_app
from tests.helpers import Admin, assert_error, auth, eventually, login, make_admin

PASSWORD_URL = "/api/v1/auth/password"
RESET_URL = "/api/v1/auth/reset"
NEW_PASSWORD = "Brand-new-passw0rd"


async def me_status(client: TestClient, token: str) -> int:
    return (await client.get("/api/v1/auth/me", headers=auth(token))).status


async def credentials_row(pool: asyncpg.Pool, user_id: int) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT password_hash, totp_secret_enc, totp_last_step, failed_logins, locked_until, "
        "updated_at FROM admin_users WHERE id = $1",
        user_id,
    )
    assert row is not None
    return row


async def staff_member(client: TestClient, role: str = "viewer") -> tuple[Admin, int]:
    """A new admin in `role`, and their id."""
    app = client.server.app
    assert app is not None
    staff = await make_admin(app, role)
    return staff, await admin_id(app[PG_POOL], staff.username)


async def session(client: TestClient, user_id: int) -> dict[str, Any]:
    """Tokens of a new session for the admin, as a login issues them but without spending a
    TOTP code: one admin has two codes per 30 s step, and these tests need more."""
    app = client.server.app
    assert app is not None
    generation = await app[TOKENS].generation(user_id)
    async with app[SESSIONMAKER].begin() as db:
        principal = await load_principal(db, user_id)
    return app[TOKENS].issue(principal, generation=generation).as_json()


def change(admin: Admin, new: str = NEW_PASSWORD, **over: Any) -> dict[str, Any]:
    return {"current_password": admin.password, "otp": admin.otp(), "new_password": new, **over}


# --- changing one's own password ----------------------------------------------------------------


async def test_change_password_ends_every_other_session_and_reissues_this_one(
    app_client: TestClient, pg_pool: asyncpg.Pool
) -> None:
    staff, staff_id = await staff_member(app_client)
    here = await session(app_client, staff_id)
    elsewhere = await session(app_client, staff_id)
    _, bystander = await manager(app_client)
    before = await credentials_row(pg_pool, staff_id)

    resp = await app_client.post(
        PASSWORD_URL, json=change(staff), headers=auth(here["access_token"])
    )
    new = await ok(resp)
    assert resp.headers["Cache-Control"] == "no-store"
    assert set(new) == {"access_token", "refresh_token", "token_type", "expires_in"}
    # Every token from before the change is dead, this session's own included...
    for old in (here, elsewhere):
        await assert_error(
            await app_client.get("/api/v1/auth/me", headers=auth(old["access_token"])),
            401,
            "TOKEN_REVOKED",
        )
        refreshed = await app_client.post(
            "/api/v1/auth/refresh", json={"refresh_token": old["refresh_token"]}
        )
        await assert_error(refreshed, 401, "TOKEN_REVOKED")
    # ... the re-issued ones work (refresh too), and another admin's session is untouched.
    assert await me_status(app_client, new["access_token"]) == 200
    assert await me_status(app_client, bystander) == 200
    again = await ok(
        await app_client.post("/api/v1/auth/refresh", json={"refresh_token": new["refresh_token"]})
    )
    assert await me_status(app_client, again["access_token"]) == 200

    after = await credentials_row(pg_pool, staff_id)
    assert after["password_hash"] != before["password_hash"]
    assert after["totp_secret_enc"] == before["totp_secret_enc"]  # same phone
    history = await pg_pool.fetch(
        "SELECT password_hash FROM admin_password_history WHERE admin_id = $1", staff_id
    )
    assert [h["password_hash"] for h in history] == [before["password_hash"]]
    [row] = await audit_rows(pg_pool, "admin.password_changed", staff.username)
    assert (row["actor_type"], row["actor"]) == ("admin", staff.username)
    assert json.loads(row["details"]) == {}

    old_password = staff.password
    staff.password = NEW_PASSWORD
    await login(app_client, staff)
    refused = {"username": staff.username, "password": old_password, "otp": staff.otp()}
    await assert_error(
        await app_client.post("/api/v1/auth/login", json=refused), 401, "INVALID_CREDENTIALS"
    )


async def test_change_password_refusals_change_nothing(
    app_client: TestClient, pg_pool: asyncpg.Pool
) -> None:
    staff, staff_id = await staff_member(app_client)
    token = (await login(app_client, staff))["access_token"]
    spent = staff.totp.generate_otp(staff.next_step - 1)  # the login's code
    # The next good code, not taken yet: a refusal must not spend it.
    good = staff.totp.generate_otp(max(staff.next_step, int(time.time()) // 30))
    before = await credentials_row(pg_pool, staff_id)
    right = {"current_password": staff.password, "otp": good, "new_password": NEW_PASSWORD}
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({**right, "current_password": "Not-the-passw0rd"}, 401, "INVALID_CREDENTIALS"),
        ({**right, "otp": "000000"}, 401, "INVALID_OTP"),
        ({**right, "otp": "12a456"}, 401, "INVALID_OTP"),
        ({**right, "otp": spent}, 401, "INVALID_OTP"),
        ({**right, "new_password": "short1A"}, 422, "VALIDATION_ERROR"),
        ({**right, "new_password": "no-digits-in-here"}, 422, "VALIDATION_ERROR"),
        ({**right, "new_password": "1234567890123"}, 422, "VALIDATION_ERROR"),
        ({**right, "new_password": "Ab1" + "é" * 40}, 422, "VALIDATION_ERROR"),  # > 72 bytes
        ({**right, "new_password": staff.password}, 422, "PASSWORD_REUSED"),
    ]
    for body, status, code in cases:
        resp = await app_client.post(PASSWORD_URL, json=body, headers=auth(token))
        error = await assert_error(resp, status, code)
        if status == 422:
            assert error["details"]["field"] == "new_password", error
    after = await credentials_row(pg_pool, staff_id)
    assert after["password_hash"] == before["password_hash"]
    assert after["totp_last_step"] == before["totp_last_step"]
    # Wrong passwords and codes count toward the login lockout, each audited as such.
    assert after["failed_logins"] == 4
    assert await audit_rows(pg_pool, "admin.password_changed", staff.username) == []
    failed = await pg_pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE actor = $1 AND action = "
        "'auth.password_change_failed'",
        staff.username,
    )
    assert failed == 4
    assert await me_status(app_client, token) == 200  # the session lives on
    # The good code was spent by none of them: the change goes through with it.
    await ok(await app_client.post(PASSWORD_URL, json=right, headers=auth(token)))
    assert (await credentials_row(pg_pool, staff_id))["failed_logins"] == 0


async def test_the_password_history_cannot_be_probed_without_the_code(
    app_client: TestClient,
) -> None:
    """A stolen session and password without the phone: a reused password is answered as a
    wrong code (and counted), never as PASSWORD_REUSED (found in review: the history was
    checked first, and its refusal counted nothing)."""
    staff, _ = await staff_member(app_client)
    token = (await login(app_client, staff))["access_token"]
    body = {"current_password": staff.password, "otp": "000000", "new_password": staff.password}
    resp = await app_client.post(PASSWORD_URL, json=body, headers=auth(token))
    await assert_error(resp, 401, "INVALID_OTP")


async def test_wrong_current_passwords_lock_the_account(
    app_client: TestClient, pg_pool: asyncpg.Pool, settings: Settings
) -> None:
    staff, staff_id = await staff_member(app_client)
    token = (await session(app_client, staff_id))["access_token"]
    wrong = {"current_password": "Wrong-passw0rd", "otp": "000000", "new_password": NEW_PASSWORD}
    for _ in range(settings.login_max_failures - 1):
        await assert_error(
            await app_client.post(PASSWORD_URL, json=wrong, headers=auth(token)), 401
        )
    locked = await app_client.post(PASSWORD_URL, json=wrong, headers=auth(token))
    await assert_error(locked, 403, "ACCOUNT_LOCKED")
    # Locked: the right password and code are refused too, here and at login.
    resp = await app_client.post(PASSWORD_URL, json=change(staff), headers=auth(token))
    await assert_error(resp, 403, "ACCOUNT_LOCKED")
    right = {"username": staff.username, "password": staff.password, "otp": staff.otp()}
    await assert_error(
        await app_client.post("/api/v1/auth/login", json=right), 403, "ACCOUNT_LOCKED"
    )


async def test_the_last_five_passwords_come_back_only_after_five_changes(
    app: web.Application, pg_pool: asyncpg.Pool
) -> None:
    """Five changes in a row need five TOTP steps: the core is driven by a clock that moves
    30 s per change (the HTTP route reads the real time)."""
    staff = await make_admin(app, "viewer")
    staff_id = await admin_id(pg_pool, staff.username)
    clock = ManualClock(datetime.now(UTC))
    sessionmaker, cipher = app[SESSIONMAKER], app[CIPHER]

    async def attempt(current: str, new: str) -> None:
        clock.advance(seconds=30)
        async with sessionmaker.begin() as db:
            outcome = await credentials.change_password(
                db,
                cipher,
                admin_id=staff_id,
                current_password=current,
                otp=staff.totp.at(clock.now()),
                new_password=new,
                password_rounds=4,
                max_failures=5,
                lockout_s=900,
                now=clock.now(),
            )
        assert outcome is None, outcome

    passwords = [staff.password, *(f"Rotation-{n}-passw0rd" for n in range(1, 6))]
    for old, new in itertools.pairwise(passwords[:5]):
        await attempt(old, new)
    # Current: passwords[4]; the four before it are kept. Each of the five is refused.
    for reused in passwords[:5]:
        with pytest.raises(credentials.PasswordReused):
            await attempt(passwords[4], reused)
    await attempt(passwords[4], passwords[5])
    kept = await pg_pool.fetchval(
        "SELECT count(*) FROM admin_password_history WHERE admin_id = $1", staff_id
    )
    assert kept == credentials.PASSWORD_HISTORY - 1
    # The oldest fell out of the last five: it may come back; the second oldest may not.
    with pytest.raises(credentials.PasswordReused):
        await attempt(passwords[5], passwords[1])
    await attempt(passwords[5], passwords[0])


# --- reset: issued by a manager, used by the admin -----------------------------------------------


async def issue(client: TestClient, manager_token: str, user_id: int) -> dict[str, Any]:
    resp = await client.post(f"/api/v1/admins/{user_id}/reset", headers=auth(manager_token))
    assert resp.headers.get("Cache-Control") == "no-store"
    return await ok(resp, 201)


async def test_reset_gives_a_new_password_and_a_new_phone(
    app_client: TestClient, pg_pool: asyncpg.Pool, settings: Settings
) -> None:
    boss, token = await manager(app_client)
    staff, staff_id = await staff_member(app_client, "support")
    sessions = [await session(app_client, staff_id), await session(app_client, staff_id)]
    bad = {"username": staff.username, "password": "not-the-passw0rd", "otp": "000000"}
    for _ in range(settings.login_max_failures):
        await app_client.post("/api/v1/auth/login", json=bad)
    assert (await credentials_row(pg_pool, staff_id))["locked_until"] is not None

    issued = await issue(app_client, token, staff_id)
    assert set(issued) == {"id", "username", "reset_token", "expires_at"}
    assert (issued["id"], issued["username"]) == (staff_id, staff.username)
    expires = datetime.fromisoformat(issued["expires_at"])
    expected = datetime.now(UTC) + timedelta(seconds=settings.admin_reset_ttl_s)
    assert abs((expires - expected).total_seconds()) < 60
    # The sessions end at issue, not at use.
    for old in sessions:
        assert await me_status(app_client, old["access_token"]) == 401
    # Only the token's hash is stored; the audit names the manager, never the token.
    secret = issued["reset_token"]
    stored = await pg_pool.fetchrow(
        "SELECT * FROM admin_reset_tokens WHERE admin_id = $1", staff_id
    )
    assert stored is not None and secret not in json.dumps(dict(stored), default=str)
    assert stored["token_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    [row] = await audit_rows(pg_pool, "admin.reset_issued", staff.username)
    assert (row["actor_type"], row["actor"]) == ("admin", boss.username)
    assert secret not in row["details"]

    resp = await app_client.post(RESET_URL, json={"token": secret, "new_password": NEW_PASSWORD})
    done = await ok(resp)
    assert resp.headers["Cache-Control"] == "no-store"
    assert done["username"] == staff.username
    totp = pyotp.parse_uri(done["provisioning_uri"])
    assert isinstance(totp, pyotp.TOTP) and totp.secret != staff.totp.secret
    after = await credentials_row(pg_pool, staff_id)
    assert after["failed_logins"] == 0 and after["locked_until"] is None

    # The old phone's codes no longer work; the new phone and password do.
    old_phone = {"username": staff.username, "password": NEW_PASSWORD, "otp": staff.totp.now()}
    await assert_error(
        await app_client.post("/api/v1/auth/login", json=old_phone), 401, "INVALID_OTP"
    )
    fresh = Admin(staff.username, NEW_PASSWORD, totp)
    assert await me_status(app_client, (await login(app_client, fresh))["access_token"]) == 200
    [row] = await audit_rows(pg_pool, "admin.reset_completed", staff.username)
    assert (row["actor_type"], row["actor"]) == ("admin", staff.username)
    assert json.loads(row["details"]) == {"issued_by": boss.username}

    # Used once: the same answer as a token that never existed.
    reused = await app_client.post(
        RESET_URL, json={"token": secret, "new_password": "An0ther-one-"}
    )
    first = await assert_error(reused, 401, "INVALID_RESET_TOKEN")
    unknown = await app_client.post(
        RESET_URL, json={"token": "A" * 43, "new_password": "An0ther-one-"}
    )
    assert await assert_error(unknown, 401, "INVALID_RESET_TOKEN") == first


async def test_a_reset_shuts_the_old_credentials_out_until_it_is_used(
    app_client: TestClient, pg_pool: asyncpg.Pool
) -> None:
    """A manager resets a stolen account: the thief's password and phone must not log straight
    back in after the reset cut the sessions (found in review: they did, for the token's
    whole life). Told only to whoever has both factors right; no failure counted."""
    _, token = await manager(app_client)
    staff, staff_id = await staff_member(app_client)
    secret = (await issue(app_client, token, staff_id))["reset_token"]
    right = {"username": staff.username, "password": staff.password, "otp": staff.otp()}
    await assert_error(
        await app_client.post("/api/v1/auth/login", json=right), 401, "RESET_PENDING"
    )
    wrong = {"username": staff.username, "password": "not-the-passw0rd", "otp": staff.otp()}
    await assert_error(
        await app_client.post("/api/v1/auth/login", json=wrong), 401, "INVALID_CREDENTIALS"
    )
    assert len(await audit_rows(pg_pool, "auth.reset_pending", staff.username)) == 1
    assert (await credentials_row(pg_pool, staff_id))["failed_logins"] == 1  # the wrong one

    body = {"token": secret, "new_password": NEW_PASSWORD}
    totp = pyotp.parse_uri(
        (await ok(await app_client.post(RESET_URL, json=body)))["provisioning_uri"]
    )
    assert isinstance(totp, pyotp.TOTP)
    fresh = Admin(staff.username, NEW_PASSWORD, totp)
    assert await me_status(app_client, (await login(app_client, fresh))["access_token"]) == 200


async def test_a_new_token_or_a_deactivation_voids_the_unused_one(
    app_client: TestClient, pg_pool: asyncpg.Pool
) -> None:
    _, token = await manager(app_client)
    staff, staff_id = await staff_member(app_client)
    first = (await issue(app_client, token, staff_id))["reset_token"]
    second = (await issue(app_client, token, staff_id))["reset_token"]
    body = {"token": first, "new_password": NEW_PASSWORD}
    await assert_error(await app_client.post(RESET_URL, json=body), 401, "INVALID_RESET_TOKEN")
    [_, later] = await audit_rows(pg_pool, "admin.reset_issued", staff.username)
    assert json.loads(later["details"])["revoked_earlier"] == 1

    await ok(await app_client.post(f"/api/v1/admins/{staff_id}/deactivate", headers=auth(token)))
    await ok(await app_client.post(f"/api/v1/admins/{staff_id}/reactivate", headers=auth(token)))
    body = {"token": second, "new_password": NEW_PASSWORD}
    await assert_error(await app_client.post(RESET_URL, json=body), 401, "INVALID_RESET_TOKEN")
    live = await pg_pool.fetchval(
        "SELECT count(*) FROM admin_reset_tokens WHERE admin_id = $1 AND used_at IS NULL "
        "AND revoked_at IS NULL",
        staff_id,
    )
    assert live == 0
    await login(app_client, staff)  # the old credentials were never replaced

    # A manager deactivated: the unused tokens they issued die with their access (they may
    # still hold them); the ones another manager issued live on.
    rogue, rogue_token = await manager(app_client)
    rogue_id = await admin_id(pg_pool, rogue.username)
    _, other_id = await staff_member(app_client)
    from_rogue = (await issue(app_client, rogue_token, staff_id))["reset_token"]
    from_boss = (await issue(app_client, token, other_id))["reset_token"]
    await ok(await app_client.post(f"/api/v1/admins/{rogue_id}/deactivate", headers=auth(token)))
    body = {"token": from_rogue, "new_password": NEW_PASSWORD}
    await assert_error(await app_client.post(RESET_URL, json=body), 401, "INVALID_RESET_TOKEN")
    body = {"token": from_boss, "new_password": NEW_PASSWORD}
    await ok(await app_client.post(RESET_URL, json=body))


async def test_an_expired_token_gets_the_same_answer(
    app: web.Application, app_client: TestClient
) -> None:
    """Issued by the core with a clock set back past the TTL: expired by the real time."""
    _, staff_id = await staff_member(app_client)
    ttl_s = 1800
    clock = ManualClock(datetime.now(UTC) - timedelta(seconds=ttl_s + 2))
    async with app[SESSIONMAKER].begin() as db:
        stale = await credentials.issue_reset(
            db, actor_id=None, actor_type="system", actor="test", admin_id=staff_id,
            ttl_s=ttl_s, now=clock.now(),
        )  # fmt: skip
    body = {"token": stale.token, "new_password": NEW_PASSWORD}
    await assert_error(await app_client.post(RESET_URL, json=body), 401, "INVALID_RESET_TOKEN")
    # One second before its end the same kind of token works (core, on the clock).
    async with app[SESSIONMAKER].begin() as db:
        fresh = await credentials.issue_reset(
            db, actor_id=None, actor_type="system", actor="test", admin_id=staff_id,
            ttl_s=ttl_s, now=clock.now(),
        )  # fmt: skip
    clock.advance(seconds=ttl_s - 1)
    async with app[SESSIONMAKER].begin() as db:
        done = await credentials.complete_reset(
            db, app[CIPHER], token=fresh.token, new_password=NEW_PASSWORD, password_rounds=4,
            now=clock.now(),
        )  # fmt: skip
    assert done.admin_id == staff_id
    clock.advance(seconds=2)
    async with app[SESSIONMAKER].begin() as db:
        late = await credentials.issue_reset(
            db, actor_id=None, actor_type="system", actor="test", admin_id=staff_id,
            ttl_s=1, now=clock.now() - timedelta(seconds=2),
        )  # fmt: skip
    with pytest.raises(credentials.TokenInvalid):
        async with app[SESSIONMAKER].begin() as db:
            await credentials.complete_reset(
                db, app[CIPHER], token=late.token, new_password="Yet-an0ther-one",
                password_rounds=4, now=clock.now(),
            )  # fmt: skip


async def test_a_refused_password_leaves_the_token_usable(
    app_client: TestClient, pg_pool: asyncpg.Pool
) -> None:
    _, token = await manager(app_client)
    staff, staff_id = await staff_member(app_client)
    secret = (await issue(app_client, token, staff_id))["reset_token"]
    before = await credentials_row(pg_pool, staff_id)
    for new, code in (
        (staff.password, "PASSWORD_REUSED"),
        ("short1", "VALIDATION_ERROR"),
        ("letters-only-here", "VALIDATION_ERROR"),
    ):
        resp = await app_client.post(RESET_URL, json={"token": secret, "new_password": new})
        error = await assert_error(resp, 422, code)
        assert error["details"]["field"] == "new_password"
    assert await credentials_row(pg_pool, staff_id) == before
    await ok(await app_client.post(RESET_URL, json={"token": secret, "new_password": NEW_PASSWORD}))


async def test_who_may_be_reset(app_client: TestClient, pg_pool: asyncpg.Pool) -> None:
    boss, token = await manager(app_client)
    boss_id = await admin_id(pg_pool, boss.username)
    await assert_error(
        await app_client.post(f"/api/v1/admins/{boss_id}/reset", headers=auth(token)),
        409,
        "CANNOT_RESET_SELF",
    )
    gone, gone_id = await staff_member(app_client)
    await ok(await app_client.post(f"/api/v1/admins/{gone_id}/deactivate", headers=auth(token)))
    error = await assert_error(
        await app_client.post(f"/api/v1/admins/{gone_id}/reset", headers=auth(token)),
        409,
        "ADMIN_INACTIVE",
    )
    assert gone.username in error["message"]
    for raw in ("abc", "0", "-1", "9" * 19, "²", "99999999999999"):
        resp = await app_client.post(f"/api/v1/admins/{raw}/reset", headers=auth(token))
        await assert_error(resp, 404, "NOT_FOUND")
    _, target = await staff_member(app_client)
    support = await login(app_client, (await staff_member(app_client, "support"))[0])
    resp = await app_client.post(
        f"/api/v1/admins/{target}/reset", headers=auth(support["access_token"])
    )
    assert (await assert_error(resp, 403, "FORBIDDEN"))["details"]["permission"] == "admins:manage"
    await assert_error(await app_client.post(f"/api/v1/admins/{target}/reset"), 401, "UNAUTHORIZED")
    # A manager deactivated while their request was on its way (past the token check): refused.
    app = app_client.server.app
    assert app is not None
    with pytest.raises(credentials.TokenInvalid):
        async with app[SESSIONMAKER].begin() as db:
            await credentials.issue_reset(
                db, actor_id=gone_id, actor_type="admin", actor=gone.username, admin_id=target,
                ttl_s=60,
            )  # fmt: skip
    issued = await pg_pool.fetchval(
        "SELECT count(*) FROM admin_reset_tokens WHERE admin_id = ANY($1)",
        [boss_id, gone_id, target],
    )
    assert issued == 0


# Sessions of this database waiting for a row lock on admin_users.
LOCK_WAITERS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%admin_users%'
"""


async def test_two_uses_of_one_token_at_once_exactly_one_wins(
    app_client: TestClient, pg_pool: asyncpg.Pool
) -> None:
    """The test holds the admin's row until both requests wait for it inside the database,
    then lets them go together: the worst case of a real race."""
    _, token = await manager(app_client)
    staff, staff_id = await staff_member(app_client)
    secret = (await issue(app_client, token, staff_id))["reset_token"]
    passwords = ["Racer-one-passw0rd", "Racer-two-passw0rd"]
    async with pg_pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM admin_users WHERE id = $1 FOR UPDATE", staff_id)
        tasks = [
            asyncio.ensure_future(
                app_client.post(RESET_URL, json={"token": secret, "new_password": p})
            )
            for p in passwords
        ]
        await eventually(lambda: pg_pool.fetchval(LOCK_WAITERS), until=lambda n: n == 2)
    answers = await asyncio.gather(*tasks)
    assert sorted(a.status for a in answers) == [200, 401]
    winner = passwords[[a.status for a in answers].index(200)]
    loser = next(a for a in answers if a.status == 401)
    await assert_error(loser, 401, "INVALID_RESET_TOKEN")
    done = await next(a for a in answers if a.status == 200).json()
    totp = pyotp.parse_uri(done["provisioning_uri"])
    assert isinstance(totp, pyotp.TOTP)
    await login(app_client, Admin(staff.username, winner, totp))
    assert len(await audit_rows(pg_pool, "admin.reset_completed", staff.username)) == 1
    used = await pg_pool.fetchval(
        "SELECT count(*) FROM admin_reset_tokens WHERE admin_id = $1 AND used_at IS NOT NULL",
        staff_id,
    )
    assert used == 1


# --- hostile bodies ------------------------------------------------------------------------------

HUGE = "A1" * 50_000

PASSWORD_BODIES: list[tuple[Any, int]] = [
    ({"current_password": "x", "otp": "123456"}, 422),
    ({"current_password": "x", "otp": "123456", "new_password": NEW_PASSWORD, "admin": 1}, 422),
    ({"current_password": HUGE, "otp": "123456", "new_password": NEW_PASSWORD}, 422),
    ({"current_password": "x", "otp": "1" * 11, "new_password": NEW_PASSWORD}, 422),
    ({"current_password": "x", "otp": "123456", "new_password": HUGE}, 422),
    ({"current_password": 12345678901, "otp": "123456", "new_password": NEW_PASSWORD}, 422),
    ({"current_password": "x", "otp": 123456, "new_password": NEW_PASSWORD}, 422),
    ({"current_password": "x", "otp": "123456", "new_password": None}, 422),
    ({"current_password": ["x"], "otp": "123456", "new_password": NEW_PASSWORD}, 422),
    ({"current_password": "", "otp": "", "new_password": ""}, 422),
    ([], 422),
    ("a string", 422),
]
RESET_BODIES: list[tuple[Any, int]] = [
    ({"token": "A" * 43}, 422),
    ({"token": "A" * 43, "new_password": NEW_PASSWORD, "username": "root"}, 422),
    ({"token": "A" * 129, "new_password": NEW_PASSWORD}, 422),
    ({"token": HUGE, "new_password": NEW_PASSWORD}, 422),
    ({"token": "A" * 43, "new_password": HUGE}, 422),
    ({"token": 43, "new_password": NEW_PASSWORD}, 422),
    ({"token": None, "new_password": NEW_PASSWORD}, 422),
    ({"token": {"$ne": ""}, "new_password": NEW_PASSWORD}, 422),
    ({"token": "", "new_password": NEW_PASSWORD}, 422),
]


async def test_hostile_bodies_are_refused_and_change_nothing(
    app_client: TestClient, pg_pool: asyncpg.Pool
) -> None:
    _, token = await manager(app_client)
    _, staff_id = await staff_member(app_client)
    staff_token = (await session(app_client, staff_id))["access_token"]
    secret = (await issue(app_client, token, staff_id))["reset_token"]
    before = await credentials_row(pg_pool, staff_id)
    for body, status in PASSWORD_BODIES:
        resp = await app_client.post(PASSWORD_URL, json=body, headers=auth(token))
        await assert_error(resp, status, "VALIDATION_ERROR")
    for body, status in RESET_BODIES:
        await assert_error(await app_client.post(RESET_URL, json=body), status, "VALIDATION_ERROR")
    for url in (PASSWORD_URL, RESET_URL):
        for raw in (b"{not json", b"", b"null", b'{"token": "\\u0000"}', b"[" * 100_000):
            resp = await app_client.post(
                url, data=raw, headers={**auth(token), "Content-Type": "application/json"}
            )
            assert resp.status in (400, 422), await resp.text()
            await assert_error(resp, resp.status)
    # Tokens that are no token: refused before the database is asked, with the one answer.
    for fake in ("A" * 42, "A" * 44, "!" * 43, secret[:-1] + "~", " " + secret[1:], "é" * 43):
        resp = await app_client.post(RESET_URL, json={"token": fake, "new_password": NEW_PASSWORD})
        await assert_error(resp, 401, "INVALID_RESET_TOKEN")
    assert await credentials_row(pg_pool, staff_id) == before
    # The session was cut by the issue; the live token still works after all of that.
    assert await me_status(app_client, staff_token) == 401
    await ok(await app_client.post(RESET_URL, json={"token": secret, "new_password": NEW_PASSWORD}))


async def test_password_change_needs_a_session(app_client: TestClient) -> None:
    body = {"current_password": "x", "otp": "123456", "new_password": NEW_PASSWORD}
    await assert_error(await app_client.post(PASSWORD_URL, json=body), 401, "UNAUTHORIZED")
    resp = await app_client.post(PASSWORD_URL, json=body, headers=auth("not.a.jwt"))
    await assert_error(resp, 401, "INVALID_TOKEN")


async def test_reset_is_rate_limited_like_login(settings: Settings) -> None:
    tight = replace(settings, login_rate_per_minute=3, redis_prefix=settings.redis_prefix + "rlr:")
    async with running_app(create_app(tight, run_migrations=False, start_channels=False)) as c:
        body = {"token": "A" * 43, "new_password": NEW_PASSWORD}
        statuses = [(await c.post(RESET_URL, json=body)).status for _ in range(3)]
        assert statuses == [401, 401, 401]
        resp = await c.post(RESET_URL, json=body)
        await assert_error(resp, 429, "RATE_LIMITED")
        assert int(resp.headers["Retry-After"]) >= 1


async def test_no_secret_reaches_the_logs(
    app_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    _, token = await manager(app_client)
    staff, staff_id = await staff_member(app_client)
    caplog.set_level(logging.DEBUG)
    session = (await login(app_client, staff))["access_token"]
    changed = "Logged-never-passw0rd"
    await ok(
        await app_client.post(PASSWORD_URL, json=change(staff, changed), headers=auth(session))
    )
    secret = (await issue(app_client, token, staff_id))["reset_token"]
    reset = "Reset-never-passw0rd"
    done = await ok(await app_client.post(RESET_URL, json={"token": secret, "new_password": reset}))
    text = "\n".join(JsonFormatter().format(r) for r in caplog.records) + caplog.text
    assert "admin password changed" in text and "admin reset completed" in text
    for value in (staff.password, changed, secret, reset, done["provisioning_uri"]):
        assert value not in text


async def test_the_new_routes_are_documented(app_client: TestClient) -> None:
    doc = await (await app_client.get("/api/v1/openapi.json")).json()
    reset = doc["paths"]["/api/v1/auth/reset"]["post"]
    assert "security" not in reset
    assert reset["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("ResetIn")
    change_op = doc["paths"]["/api/v1/auth/password"]["post"]
    assert change_op["security"] == [{"bearer": []}]
    issue_op = doc["paths"]["/api/v1/admins/{id}/reset"]["post"]
    assert issue_op["x-permission"] == "admins:manage" and "201" in issue_op["responses"]


# --- Redis cut while the sessions end -------------------------------------------------------------

OUTAGE = 1_000_000  # refusals: an outage that lasts until `restore()`


async def test_redis_down_at_the_cut_off_saves_nothing(
    settings: Settings, pg_pool: asyncpg.Pool
) -> None:
    """The sessions cannot be ended: each change is refused (503) and rolled back, rather
    than saved with the old tokens still working."""
    proxy, via = await redis_proxy(settings)
    app = create_app(replace(settings, redis_url=via), run_migrations=False, start_channels=False)
    try:
        async with running_app(app) as client:
            _, token = await manager(client)
            staff, staff_id = await staff_member(client)
            secret = (await issue(client, token, staff_id))["reset_token"]
            staff_token = (await session(client, staff_id))["access_token"]
            before = await credentials_row(pg_pool, staff_id)
            good = staff.totp.generate_otp(max(staff.next_step, int(time.time()) // 30))
            right = {"current_password": staff.password, "otp": good, "new_password": NEW_PASSWORD}

            proxy.cut_on(b"EVALSHA", refuse=OUTAGE)
            resp = await client.post(PASSWORD_URL, json=right, headers=auth(staff_token))
            await assert_error(resp, 503, "SERVICE_UNAVAILABLE")
            body = {"token": secret, "new_password": NEW_PASSWORD}
            await assert_error(await client.post(RESET_URL, json=body), 503, "SERVICE_UNAVAILABLE")
            resp = await client.post(f"/api/v1/admins/{staff_id}/reset", headers=auth(token))
            await assert_error(resp, 503, "SERVICE_UNAVAILABLE")
            proxy.restore()

            assert await credentials_row(pg_pool, staff_id) == before
            tokens = await pg_pool.fetch(
                "SELECT used_at, revoked_at FROM admin_reset_tokens WHERE admin_id = $1", staff_id
            )
            assert [tuple(t) for t in tokens] == [(None, None)]  # the first, still live
            for action in ("password_changed", "reset_completed"):
                assert await audit_rows(pg_pool, f"admin.{action}", staff.username) == []
            assert len(await audit_rows(pg_pool, "admin.reset_issued", staff.username)) == 1
            # Back: the same code and the same token work (neither was spent).
            new = await ok(await client.post(PASSWORD_URL, json=right, headers=auth(staff_token)))
            assert await me_status(client, new["access_token"]) == 200
            body = {"token": secret, "new_password": "After-the-0utage"}
            await ok(await client.post(RESET_URL, json=body))
    finally:
        await proxy.close()
