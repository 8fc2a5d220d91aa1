"""Admin login with password and TOTP, tokens, logout, lockout and rate limits."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from aiohttp.test_utils import TestClient

from config.settings import Settings
from core.crypto import derive_key
from gateway.app import create_app
from gateway.logs import JsonFormatter
from tests.conftest import TEST_SECRET, running_app
from tests.helpers import Admin, assert_error, auth, login, make_admin


async def test_login_me_refresh_logout(app_client: TestClient) -> None:
    admin = await make_admin(app_client.server.app)  # type: ignore[arg-type]
    tokens = await login(app_client, admin)
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == 3600

    me = await app_client.get("/api/v1/auth/me", headers=auth(tokens["access_token"]))
    body = await me.json()
    assert me.status == 200
    assert body["username"] == admin.username and "admin" in body["roles"]
    assert "deposits:create" in body["permissions"]

    refreshed = await app_client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    new = await refreshed.json()
    assert refreshed.status == 200 and new["access_token"] != tokens["access_token"]

    # A refresh token is single-use; reusing it ends the whole session.
    again = await app_client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    await assert_error(again, 401, "TOKEN_REVOKED")
    gone = await app_client.get("/api/v1/auth/me", headers=auth(new["access_token"]))
    await assert_error(gone, 401, "TOKEN_REVOKED")


async def test_logout_kills_access_and_refresh(app_client: TestClient) -> None:
    admin = await make_admin(app_client.server.app)  # type: ignore[arg-type]
    tokens = await login(app_client, admin)
    out = await app_client.post("/api/v1/auth/logout", headers=auth(tokens["access_token"]))
    assert out.status == 204
    me = await app_client.get("/api/v1/auth/me", headers=auth(tokens["access_token"]))
    await assert_error(me, 401, "TOKEN_REVOKED")
    ref = await app_client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    await assert_error(ref, 401, "TOKEN_REVOKED")


async def test_totp_is_accepted_once(app_client: TestClient) -> None:
    admin = await make_admin(app_client.server.app)  # type: ignore[arg-type]
    code = admin.totp.now()
    body = {"username": admin.username, "password": admin.password, "otp": code}
    first = await app_client.post("/api/v1/auth/login", json=body)
    assert first.status == 200
    replay = await app_client.post("/api/v1/auth/login", json=body)
    await assert_error(replay, 401, "INVALID_OTP")


@pytest.mark.parametrize(
    ("password", "otp", "code"),
    [
        ("wrong-password-1", None, "INVALID_CREDENTIALS"),
        (None, "000000", "INVALID_OTP"),
        (None, "12ab56", "INVALID_OTP"),
    ],
)
async def test_wrong_password_or_otp(
    app_client: TestClient, password: str | None, otp: str | None, code: str
) -> None:
    admin = await make_admin(app_client.server.app)  # type: ignore[arg-type]
    resp = await app_client.post(
        "/api/v1/auth/login",
        json={
            "username": admin.username,
            "password": password or admin.password,
            "otp": otp or admin.otp(),
        },
    )
    await assert_error(resp, 401, code)


async def test_unknown_user_gets_the_same_answer(app_client: TestClient) -> None:
    resp = await app_client.post(
        "/api/v1/auth/login", json={"username": "nobody-here", "password": "x", "otp": "123456"}
    )
    await assert_error(resp, 401, "INVALID_CREDENTIALS")


async def test_lockout_after_repeated_failures(app_client: TestClient, settings: Settings) -> None:
    admin = await make_admin(app_client.server.app)  # type: ignore[arg-type]
    bad = {"username": admin.username, "password": "not-the-password1", "otp": "000000"}
    for _ in range(settings.login_max_failures - 1):
        await assert_error(await app_client.post("/api/v1/auth/login", json=bad), 401)
    locked = await app_client.post("/api/v1/auth/login", json=bad)
    body = await assert_error(locked, 403, "ACCOUNT_LOCKED")
    assert body["details"]["retry_after_s"] == settings.login_lockout_s
    # Even the right password and code are refused while locked.
    right = {"username": admin.username, "password": admin.password, "otp": admin.otp()}
    await assert_error(
        await app_client.post("/api/v1/auth/login", json=right), 403, "ACCOUNT_LOCKED"
    )


async def test_login_rate_limit(settings: Settings) -> None:
    tight = replace(settings, login_rate_per_minute=3, redis_prefix=settings.redis_prefix + "rl:")
    async with running_app(create_app(tight, run_migrations=False, start_channels=False)) as c:
        body = {"username": "rate-limited-user", "password": "whatever1", "otp": "123456"}
        statuses = [(await c.post("/api/v1/auth/login", json=body)).status for _ in range(4)]
        assert statuses[:3] == [401, 401, 401]
        resp = await c.post("/api/v1/auth/login", json=body)
        await assert_error(resp, 429, "RATE_LIMITED")
        assert int(resp.headers["Retry-After"]) >= 1


def _forge(claims: dict[str, object], key: bytes) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


async def test_forged_expired_and_wrong_type_tokens(app_client: TestClient) -> None:
    now = datetime.now(UTC)
    claims = {
        "sub": "1",
        "sid": "s",
        "jti": "j",
        "typ": "access",
        "iat": now,
        "exp": now + timedelta(hours=1),
        "su": True,
    }
    real_key = derive_key(TEST_SECRET, "jwt-hs256")
    cases = {
        "INVALID_TOKEN": _forge(claims, b"k" * 32),
        "TOKEN_EXPIRED": _forge({**claims, "exp": now - timedelta(minutes=5)}, real_key),
    }
    for code, token in cases.items():
        resp = await app_client.get("/api/v1/auth/me", headers=auth(token))
        await assert_error(resp, 401, code)
    refresh_as_access = _forge({**claims, "typ": "refresh"}, real_key)
    resp = await app_client.get("/api/v1/auth/me", headers=auth(refresh_as_access))
    await assert_error(resp, 401, "INVALID_TOKEN")
    for header in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}):
        resp = await app_client.get("/api/v1/auth/me", headers=header)
        await assert_error(resp, 401, "UNAUTHORIZED")
    alg_none = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
    await assert_error(await app_client.get("/api/v1/auth/me", headers=auth(alg_none)), 401)


async def test_password_never_logged(
    app_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    admin: Admin = await make_admin(app_client.server.app)  # type: ignore[arg-type]
    caplog.set_level(logging.DEBUG)
    await login(app_client, admin)
    await app_client.post(
        "/api/v1/auth/login",
        json={"username": admin.username, "password": "Secret-Wrong-99", "otp": "000000"},
    )
    assert caplog.records, "the login path logs nothing to check"
    text = "\n".join(JsonFormatter().format(r) for r in caplog.records) + caplog.text
    assert admin.password not in text and "Secret-Wrong-99" not in text


async def test_generation_claim(app_client: TestClient) -> None:
    """A token from before per-admin generations (no `gen`) counts as generation 0, so a
    deployment does not log everybody out; a `gen` that is not a whole number is refused."""
    app = app_client.server.app
    assert app is not None
    admin = await make_admin(app, "viewer")
    tokens = await login(app_client, admin)
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["gen"] == 0
    key = derive_key(TEST_SECRET, "jwt-hs256")
    old = _forge({k: v for k, v in claims.items() if k != "gen"}, key)
    assert (await app_client.get("/api/v1/auth/me", headers=auth(old))).status == 200
    for bad in ("1", 1.5, True, None):
        forged = _forge({**claims, "gen": bad}, key)
        resp = await app_client.get("/api/v1/auth/me", headers=auth(forged))
        await assert_error(resp, 401, "INVALID_TOKEN")
