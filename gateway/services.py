"""Resolve where PostgreSQL, Redis and the MQTT broker are: the URLs from Settings, or embedded
engines started for this process. Used by `serve` (through the app's cleanup context) and by the
one-shot CLI commands alike."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from config.settings import Settings
from gateway import reach
from gateway.embedded import EmbeddedMqtt, EmbeddedPostgres, EmbeddedRedis


@dataclass
class Endpoints:
    database_url: str
    redis_url: str
    mqtt_url: str | None = None
    embedded: tuple[str, ...] = field(default=())


@contextlib.asynccontextmanager
async def storage_endpoints(
    settings: Settings, wait_s: float = 0.0, say: Callable[[str], None] = reach.to_stderr
) -> AsyncIterator[Endpoints]:
    """PostgreSQL and Redis URLs, starting the embedded engines the settings leave unnamed,
    once PostgreSQL answers: `gateway.reach.DependencyDown` if it does not within `wait_s`
    (each wait told to `say`). Redis may be down: /readyz says so until it answers."""
    pg = EmbeddedPostgres(settings.data_dir) if settings.database_url is None else None
    rd = EmbeddedRedis(settings.data_dir) if settings.redis_url is None else None
    try:
        database_url = settings.database_url if pg is None else await asyncio.to_thread(pg.start)
        redis_url = settings.redis_url if rd is None else await asyncio.to_thread(rd.start)
        assert database_url is not None and redis_url is not None
        await reach.postgres(database_url, wait_s=wait_s, say=say)
        embedded = tuple(n for n, e in (("postgresql", pg), ("redis", rd)) if e is not None)
        yield Endpoints(database_url, redis_url, settings.mqtt_url, embedded)
    finally:
        for engine in (rd, pg):
            if engine is not None:
                await asyncio.to_thread(engine.stop)


@contextlib.asynccontextmanager
async def mqtt_endpoint(
    settings: Settings, broker_config: dict[str, Any] | None = None
) -> AsyncIterator[str]:
    """The broker URL: MQTT_URL, or an embedded amqtt broker living as long as the context
    (`broker_config` is merged into its amqtt config: plugins, auth)."""
    if settings.mqtt_url is not None:
        yield settings.mqtt_url
        return
    broker = EmbeddedMqtt(settings.data_dir, settings.embedded_mqtt_port)
    try:
        yield await broker.start(broker_config)
    finally:
        await broker.stop()
