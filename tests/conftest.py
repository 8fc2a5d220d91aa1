"""Shared fixtures: real PostgreSQL, Redis and MQTT for the whole run.

`DATABASE_URL` / `REDIS_URL` / `MQTT_URL` name the machine's services when set (CI points them
at the local ones); otherwise the embedded engines start under a temporary folder. Each run gets
its own database (created here, dropped at the end) and its own Redis key prefix, so runs on one
machine never collide.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from config.settings import Settings, load_settings
from gateway import db as dbmod
from gateway.app import create_app, make_redis
from gateway.embedded import EmbeddedMqtt, EmbeddedPostgres, EmbeddedRedis
from gateway.http_server import GatewayRunner
from gateway.keys import PG_POOL, SESSIONMAKER

RUN_ID = uuid.uuid4().hex[:10]
TEST_SECRET = "test-secret-" + "x" * 40


def open_tmp_dir(prefix: str) -> Path:
    """A temporary folder other users can traverse: pgserver runs PostgreSQL as its own user
    when we are root, and pytest's tmp folders are 0700."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@pytest.fixture
def serve_dir() -> Iterator[Path]:
    """A data folder for one `gateway serve` process with embedded engines."""
    path = open_tmp_dir("gw-serve-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    path = open_tmp_dir("gwdata-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def server_database_url(data_dir: Path) -> Iterator[str]:
    """A PostgreSQL server URL: DATABASE_URL's, or an embedded one for this run."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    pg = EmbeddedPostgres(data_dir / "embedded")
    try:
        yield pg.start()
    finally:
        pg.stop()


@contextlib.asynccontextmanager
async def scratch_database(server_url: str, name: str) -> AsyncIterator[str]:
    """A new, empty database `name` on the server (its URL), dropped on the way out whatever
    connections are still open to it."""
    admin = await asyncpg.connect(dbmod.asyncpg_url(server_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield dbmod.with_database(server_url, name)
    finally:
        admin = await asyncpg.connect(dbmod.asyncpg_url(server_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="session")
async def database_url(server_database_url: str) -> AsyncIterator[str]:
    """A fresh database for this run on that server, migrated to head."""
    async with scratch_database(server_database_url, f"gw_test_{RUN_ID}") as url:
        await dbmod.migrate(url)
        yield url


@pytest.fixture
async def empty_database(server_database_url: str) -> AsyncIterator[str]:
    """A database of the test's own, not migrated (for tests that migrate up and down or
    start the app on a blank schema); dropped after the test."""
    async with scratch_database(server_database_url, f"gw_scratch_{uuid.uuid4().hex[:8]}") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url(data_dir: Path) -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    rd = EmbeddedRedis(data_dir / "embedded")
    try:
        yield rd.start()
    finally:
        rd.stop()


@pytest.fixture(scope="session")
async def mqtt_url(data_dir: Path) -> AsyncIterator[str]:
    url = os.environ.get("MQTT_URL")
    if url:
        yield url
        return
    broker = EmbeddedMqtt(data_dir / "embedded-mqtt", preferred_port=0)
    try:
        yield await broker.start()
    finally:
        await broker.stop()


@pytest.fixture(scope="session")
def redis_prefix() -> str:
    return f"gwtest:{RUN_ID}:"


@pytest.fixture(scope="session")
async def settings(
    database_url: str, redis_url: str, redis_prefix: str, data_dir: Path
) -> Settings:
    base = load_settings({})
    return replace(
        base,
        database_url=database_url,
        redis_url=redis_url,
        data_dir=data_dir,
        secret_key=TEST_SECRET,
        redis_prefix=redis_prefix,
        password_bcrypt_rounds=4,
        pin_bcrypt_rounds=4,
        # The whole suite logs in from one address; the limit itself has its own test.
        login_rate_per_minute=100_000,
    )


@pytest.fixture(scope="session")
async def redis(redis_url: str, redis_prefix: str) -> AsyncIterator[Redis]:
    client = make_redis(redis_url)
    try:
        yield client
    finally:
        keys = [k async for k in client.scan_iter(match=f"{redis_prefix}*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
        await client.aclose()


class GatewayTestServer(TestServer):
    """TestServer on `gateway serve`'s own runner: its protocol options, its access log and
    its answers to what the HTTP parser refuses."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return GatewayRunner(self.app, **kwargs)


@contextlib.asynccontextmanager
async def running_app(app: web.Application) -> AsyncIterator[TestClient]:
    server = GatewayTestServer(app)
    await server.start_server()
    client = TestClient(server)
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(scope="session")
async def app_client(settings: Settings) -> AsyncIterator[TestClient]:
    """One app for the session (admin API, no channels), on a real socket."""
    async with running_app(
        create_app(settings, run_migrations=False, start_channels=False)
    ) as client:
        yield client


@pytest.fixture(scope="session")
def app(app_client: TestClient) -> web.Application:
    return app_client.server.app  # type: ignore[return-value]


@pytest.fixture(scope="session")
def sessionmaker(app: web.Application):  # type: ignore[no-untyped-def]
    return app[SESSIONMAKER]


@pytest.fixture(scope="session")
def pg_pool(app: web.Application) -> asyncpg.Pool:
    return app[PG_POOL]


def unique(prefix: str = "u") -> str:
    return f"{prefix}{secrets.token_hex(4)}"
