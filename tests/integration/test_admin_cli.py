"""`gateway admin reset | deactivate | unlock USERNAME`: the operator's way in when no admin can
log in. The same guard rails as the API, the CLI audited as the actor, the admin's sessions on
the running server ended, one line and exit 1 for each refusal."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from config.settings import Settings
from gateway import db as dbmod
from gateway.cli import main
from tests.admin_support import admin_id, audit_rows, ok
from tests.conftest import TEST_SECRET
from tests.helpers import PASSWORD, assert_error, login, make_admin
from tests.integration.test_admin_credentials import me_status, session


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings, data_dir: Path) -> None:
    """The environment `gateway` reads: the test server's database, Redis and secret, so the
    commands act on what the running app sees."""
    assert settings.database_url is not None and settings.redis_url is not None
    for name, value in {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "GATEWAY_SECRET_KEY": TEST_SECRET,
        "REDIS_PREFIX": settings.redis_prefix,
        "GATEWAY_DATA_DIR": str(data_dir),
        "PASSWORD_BCRYPT_ROUNDS": "4",
    }.items():
        monkeypatch.setenv(name, value)


async def gateway(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the `gateway` command (in a thread: it runs its own event loop)."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.usefixtures("cli_env")
async def test_reset_prints_a_token_the_admin_can_use(
    app_client: TestClient, pg_pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    staff = await make_admin(app_client.server.app, "viewer")  # type: ignore[arg-type]
    staff_id = await admin_id(pg_pool, staff.username)
    before = (await session(app_client, staff_id))["access_token"]

    code, out, err = await gateway(capsys, "admin", "reset", f" {staff.username.upper()} ")
    assert (code, err) == (0, "")
    token, expiry = out.splitlines()
    assert expiry.startswith("expires 20") and expiry.endswith("+00:00")
    assert await me_status(app_client, before) == 401  # the server's sessions ended
    [row] = await audit_rows(pg_pool, "admin.reset_issued", staff.username)
    assert (row["actor_type"], row["actor"]) == ("system", "cli")
    assert token not in row["details"]

    new = "Cli-reset-passw0rd"
    body = {"token": token, "new_password": new}
    done = await ok(await app_client.post("/api/v1/auth/reset", json=body))
    assert done["username"] == staff.username
    # A second reset from the CLI kills an unused one from before: one live token per admin.
    code, first, _ = await gateway(capsys, "admin", "reset", staff.username)
    code, second, _ = await gateway(capsys, "admin", "reset", staff.username)
    stale = {"token": first.splitlines()[0], "new_password": "An0ther-passw0rd"}
    await assert_error(
        await app_client.post("/api/v1/auth/reset", json=stale), 401, "INVALID_RESET_TOKEN"
    )
    assert first != second


@pytest.mark.usefixtures("cli_env")
async def test_deactivate_and_unlock(
    app_client: TestClient,
    pg_pool: asyncpg.Pool,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    staff = await make_admin(app_client.server.app, "support")  # type: ignore[arg-type]
    staff_id = await admin_id(pg_pool, staff.username)
    bad = {"username": staff.username, "password": "not-the-passw0rd", "otp": "000000"}
    for _ in range(settings.login_max_failures):
        await app_client.post("/api/v1/auth/login", json=bad)

    assert await gateway(capsys, "admin", "unlock", staff.username) == (
        0, f"{staff.username} unlocked\n", "",
    )  # fmt: skip
    assert await gateway(capsys, "admin", "unlock", staff.username) == (
        0, f"{staff.username} was not locked\n", "",
    )  # fmt: skip
    [row] = await audit_rows(pg_pool, "admin.unlocked", staff.username)
    assert (row["actor_type"], row["actor"]) == ("system", "cli")
    tokens = await login(app_client, staff)

    assert await gateway(capsys, "admin", "deactivate", staff.username) == (
        0, f"{staff.username} deactivated\n", "",
    )  # fmt: skip
    assert await me_status(app_client, tokens["access_token"]) == 401
    refreshed = await app_client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    await assert_error(refreshed, 401, "TOKEN_REVOKED")
    assert not await pg_pool.fetchval("SELECT is_active FROM admin_users WHERE id = $1", staff_id)
    assert await gateway(capsys, "admin", "deactivate", staff.username) == (
        0, f"{staff.username} was already deactivated\n", "",
    )  # fmt: skip
    [row] = await audit_rows(pg_pool, "admin.deactivated", staff.username)
    assert (row["actor_type"], row["actor"]) == ("system", "cli")

    # The API's guard rail: no reset for a deactivated admin.
    code, out, err = await gateway(capsys, "admin", "reset", staff.username)
    assert (code, out) == (1, "")
    assert err.startswith("gateway: ") and "deactivated" in err and err.count("\n") == 1
    assert await audit_rows(pg_pool, "admin.reset_issued", staff.username) == []

    # Reactivated: the credentials they had log in again; the old tokens stay revoked.
    assert await gateway(capsys, "admin", "reactivate", staff.username) == (
        0, f"{staff.username} reactivated\n", "",
    )  # fmt: skip
    assert await gateway(capsys, "admin", "reactivate", staff.username) == (
        0, f"{staff.username} was already active\n", "",
    )  # fmt: skip
    [row] = await audit_rows(pg_pool, "admin.reactivated", staff.username)
    assert (row["actor_type"], row["actor"]) == ("system", "cli")
    assert await me_status(app_client, tokens["access_token"]) == 401
    assert await me_status(app_client, (await login(app_client, staff))["access_token"]) == 200


@pytest.mark.usefixtures("cli_env")
async def test_unknown_admins_and_bad_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for verb in ("reset", "deactivate", "reactivate", "unlock"):
        assert await gateway(capsys, "admin", verb, "Nobody-Here") == (
            1, "", "gateway: No admin named 'nobody-here'\n",
        )  # fmt: skip
    huge = "x" * 5000
    code, out, err = await gateway(capsys, "admin", "reset", huge)
    assert (code, out) == (1, "") and len(err) < 120 and err.count("\n") == 1
    with pytest.raises(SystemExit) as caught:
        main(["admin", "reset"])
    assert caught.value.code == 2
    monkeypatch.setenv("ADMIN_RESET_TTL_S", "5")
    code, out, err = await gateway(capsys, "admin", "reset", "anyone")
    assert (code, out) == (2, "")
    assert err == "gateway: ADMIN_RESET_TTL_S: 5 is out of range [60, 604800]\n"


async def test_the_last_manager_cannot_be_deactivated(
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    empty_database: str,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """On a database of its own, where the only admin who may manage admins is known."""
    assert settings.redis_url is not None
    monkeypatch.setenv("DATABASE_URL", empty_database)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("GATEWAY_SECRET_KEY", TEST_SECRET)
    monkeypatch.setenv("REDIS_PREFIX", settings.redis_prefix + "cli:")
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(data_dir))
    monkeypatch.setenv("PASSWORD_BCRYPT_ROUNDS", "4")
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    code, out, _ = await gateway(capsys, "admin", "create", "solo")
    assert code == 0 and out.startswith("otpauth://")
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert (await gateway(capsys, "admin", "create", "clerk", "--role", "support"))[0] == 0

    code, out, err = await gateway(capsys, "admin", "deactivate", "solo")
    assert (code, out) == (1, "")
    assert err.startswith("gateway: 'solo' is the last active admin who may manage admins")
    assert err.count("\n") == 1
    # A reset is no deactivation: the last manager may get one (a bank locked out of its
    # gateway gets back in this way), and a non-manager may be deactivated.
    code, out, _ = await gateway(capsys, "admin", "reset", "solo")
    assert code == 0 and len(out.splitlines()) == 2
    assert (await gateway(capsys, "admin", "deactivate", "clerk"))[0] == 0
    conn = await asyncpg.connect(dbmod.asyncpg_url(empty_database))
    try:
        rows = await conn.fetch("SELECT username, is_active FROM admin_users ORDER BY username")
        audit = await conn.fetch("SELECT action, details FROM audit_log ORDER BY id")
    finally:
        await conn.close()
    assert [(r["username"], r["is_active"]) for r in rows] == [("clerk", False), ("solo", True)]
    assert [a["action"] for a in audit] == [
        "admin.create",
        "admin.create",
        "admin.reset_issued",
        "admin.deactivated",
    ]
    assert json.loads(audit[2]["details"])["revoked_earlier"] == 0
