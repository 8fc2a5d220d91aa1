"""`create_app()`: the only composition root.

Every shared resource is built here, each in its own `cleanup_ctx` entry so it is torn down in
reverse order: engines (embedded when no URL names one) -> database (migrated) -> Redis ->
keys and tokens -> MQTT broker and channels. Nothing is created at import time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from redis.asyncio import Redis

from config.settings import Settings, load_settings
from core.crypto import FieldCipher
from gateway import db as dbmod
from gateway.admin import ROUTE_GROUPS
from gateway.admin.system import add_system_routes
from gateway.agents import add_agent_routes, agents_ctx, agents_mqtt_ctx
from gateway.api import add_routes
from gateway.auth import TokenService
from gateway.broker_auth import (
    GATEWAY_USER,
    embedded_broker_config,
    gateway_password,
    with_credentials,
)
from gateway.keys import (
    BACKGROUND,
    CIPHER,
    ENDPOINTS,
    ENGINE,
    METRICS,
    PG_POOL,
    REDIS,
    ROUTE_SPECS,
    SESSIONMAKER,
    SETTINGS,
    TOKENS,
)
from gateway.metrics import Metrics
from gateway.middlewares import MIDDLEWARES
from gateway.secrets import resolve_secret
from gateway.services import mqtt_endpoint, storage_endpoints

log = logging.getLogger("gateway.app")

REDIS_SOCKET_TIMEOUT_S = 5.0
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_MAX_CONNECTIONS = 256


def make_redis(url: str) -> Redis:
    return Redis.from_url(
        url,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        max_connections=REDIS_MAX_CONNECTIONS,
        health_check_interval=30,
    )


async def _engines(app: web.Application) -> AsyncIterator[None]:
    async with storage_endpoints(app[SETTINGS]) as endpoints:
        app[ENDPOINTS] = endpoints
        yield


def _database(run_migrations: bool) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        url = app[ENDPOINTS].database_url
        if run_migrations:
            await dbmod.migrate(url)
        engine = dbmod.make_engine(url)
        pool = await dbmod.make_pool(url)
        app[ENGINE] = engine
        app[SESSIONMAKER] = dbmod.make_sessionmaker(engine)
        app[PG_POOL] = pool
        try:
            yield
        finally:
            await pool.close()
            await engine.dispose()

    return ctx


async def _redis(app: web.Application) -> AsyncIterator[None]:
    client = make_redis(app[ENDPOINTS].redis_url)
    app[REDIS] = client
    try:
        yield
    finally:
        await client.aclose()


async def _security(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    secret = resolve_secret(settings)
    app[CIPHER] = FieldCipher(secret)
    app[TOKENS] = TokenService(
        secret,
        app[REDIS],
        prefix=settings.redis_prefix,
        access_ttl_s=settings.access_token_ttl_s,
        refresh_ttl_s=settings.refresh_token_ttl_s,
    )
    yield


async def _mqtt(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # The embedded broker checks device logins and topics (issue 6); the gateway logs in to it.
    secret = resolve_secret(settings)
    auth = embedded_broker_config(secret, app[ENDPOINTS].database_url)
    async with mqtt_endpoint(settings, auth) as url:
        embedded = settings.mqtt_url is None
        password = gateway_password(secret)
        app[ENDPOINTS].mqtt_url = with_credentials(url, GATEWAY_USER, password) if embedded else url
        yield


def create_app(
    settings: Settings | None = None,
    *,
    run_migrations: bool = True,
    start_channels: bool = True,
) -> web.Application:
    """Build the application. `start_channels=False` leaves out the MQTT broker and channel
    workers (tests of the admin API alone)."""
    settings = settings or load_settings()
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[BACKGROUND] = {}
    app.cleanup_ctx.extend([_engines, _database(run_migrations), _redis, _security])
    app.cleanup_ctx.append(agents_ctx)
    if start_channels:
        app.cleanup_ctx.append(_mqtt)
        app.cleanup_ctx.append(agents_mqtt_ctx)
    add_system_routes(app)
    add_agent_routes(app)
    app[ROUTE_SPECS] = add_routes(app, ROUTE_GROUPS)
    return app
