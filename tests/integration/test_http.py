"""Every error leaves in the standard JSON; headers, request ids, metrics and readiness."""

from __future__ import annotations

import io
import time
from dataclasses import replace

from aiohttp import web
from aiohttp.test_utils import TestClient

from config.settings import Settings
from gateway.app import create_app
from tests.conftest import running_app
from tests.helpers import assert_error, auth, token_for
from tests.tcp_proxy import postgres_proxy


async def test_unknown_route_is_404_with_or_without_token(app_client: TestClient) -> None:
    await assert_error(await app_client.get("/api/v1/nothing-here"), 404, "NOT_FOUND")
    token = await token_for(app_client)
    await assert_error(await app_client.get("/api/v1/nothing-here", headers=auth(token)), 404)


async def test_wrong_method_is_405(app_client: TestClient) -> None:
    resp = await app_client.delete("/api/v1/auth/login")
    body = await assert_error(resp, 405, "METHOD_NOT_ALLOWED")
    assert body["details"]["allowed"] == ["POST"]
    assert resp.headers["Allow"] == "POST"


async def test_malformed_json_and_wrong_content_type(app_client: TestClient) -> None:
    bad = await app_client.post(
        "/api/v1/auth/login", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    await assert_error(bad, 400, "INVALID_JSON")
    form = await app_client.post("/api/v1/auth/login", data={"username": "a"})
    await assert_error(form, 400, "INVALID_CONTENT_TYPE")
    wrong_shape = await app_client.post("/api/v1/auth/login", json=["a", "b"])
    await assert_error(wrong_shape, 422, "VALIDATION_ERROR")
    extra = await app_client.post(
        "/api/v1/auth/login", json={"username": "a", "password": "b", "otp": "1", "x": 1}
    )
    body = await assert_error(extra, 422, "VALIDATION_ERROR")
    assert {"field": "x", "problem": "Extra inputs are not permitted"} in body["details"]["errors"]


async def test_oversized_body_is_413(app_client: TestClient, settings: Settings) -> None:
    huge = b'{"username": "' + b"a" * (settings.max_body_bytes + 10) + b'"}'
    resp = await app_client.post(
        "/api/v1/auth/login", data=io.BytesIO(huge), headers={"Content-Type": "application/json"}
    )
    await assert_error(resp, 413, "PAYLOAD_TOO_LARGE")


async def test_permission_denied_is_403(app_client: TestClient) -> None:
    token = await token_for(app_client, role="viewer")
    resp = await app_client.get("/api/v1/auth/me", headers=auth(token))
    assert resp.status == 200
    assert "deposits:create" not in (await resp.json())["permissions"]


async def test_unexpected_exception_is_500_with_request_id(settings: Settings) -> None:
    app = create_app(replace(settings), run_migrations=False, start_channels=False)

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    app.router.add_get("/boom", boom)
    async with running_app(app) as client:
        resp = await client.get("/boom", headers={"X-Request-Id": "req-12345678"})
        body = await assert_error(resp, 500, "INTERNAL_ERROR")
        assert body["details"] == {"request_id": "req-12345678"}
        assert "secret internals" not in await resp.text()
        assert "Traceback" not in await resp.text()


async def test_headers_request_id_and_metrics(app_client: TestClient) -> None:
    resp = await app_client.get("/healthz")
    assert resp.status == 200 and (await resp.json()) == {"status": "ok"}
    assert len(resp.headers["X-Request-Id"]) == 32
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Frame-Options"] == "DENY"
    # A hostile request id is replaced, not echoed.
    resp = await app_client.get("/healthz", headers={"X-Request-Id": "<script>"})
    assert resp.headers["X-Request-Id"] != "<script>"
    await app_client.get("/api/v1/nothing")
    metrics = await (await app_client.get("/metrics")).text()
    assert 'gateway_http_requests_total{method="GET",route="/healthz",status="200"}' in metrics
    assert 'route="unmatched",status="404"' in metrics
    assert "gateway_http_request_duration_seconds_bucket" in metrics


async def test_readyz(app_client: TestClient) -> None:
    resp = await app_client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["checks"] == {"postgresql": "ok", "redis": "ok"}


async def test_readyz_reports_a_dead_redis(settings: Settings) -> None:
    dead = replace(settings, redis_url="redis://127.0.0.1:1/0")
    async with running_app(create_app(dead, run_migrations=False, start_channels=False)) as c:
        resp = await c.get("/readyz")
        body = await resp.json()
        assert resp.status == 503
        assert body["checks"]["postgresql"] == "ok"
        assert body["checks"]["redis"].startswith("down")
        # Token checks need Redis: a clear 503, not a 500.
        me = await c.get("/api/v1/auth/me", headers=auth("x.y.z"))
        assert me.status == 401  # a garbage token fails before any Redis call


async def test_a_database_lost_under_a_handlers_own_query_is_a_503(
    settings: Settings, database_url: str
) -> None:
    """A handler's own query (the OsmAnd endpoint's device-token check, not through
    core.pg.call) whose connection is lost answers 503 SERVICE_UNAVAILABLE, "try again", not
    the 500 of a bug (Traccar retries either way; an operator's alerts tell them apart)."""
    proxy, via = postgres_proxy(database_url)
    port = await proxy.start()
    app = create_app(
        replace(settings, database_url=via(port)), run_migrations=False, start_channels=False
    )
    fix = {"id": "A1", "lat": "-1.2", "lon": "36.9", "timestamp": str(int(time.time()))}
    login = {"username": "nobody", "password": "x" * 12, "otp": "123456"}
    try:
        async with running_app(app) as client:
            proxy.cut(refuse=1_000)
            resp = await client.get("/agents/osmand", params={**fix, "token": "t" * 24})
            await assert_error(resp, 503, "SERVICE_UNAVAILABLE")
            # The admin API's SQLAlchemy sessions too (its errors wrap asyncpg's).
            resp = await client.post("/api/v1/auth/login", json=login)
            await assert_error(resp, 503, "SERVICE_UNAVAILABLE")
            proxy.restore()
            resp = await client.get("/agents/osmand", params={**fix, "token": "t" * 24})
            assert resp.status in (401, 403), await resp.text()  # back: an unknown device
    finally:
        await proxy.close()
