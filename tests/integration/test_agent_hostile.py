"""Hostile device payloads in a batch: each bad message costs itself only. The MQTT drain hands
the channel up to 100 messages at once; a payload that broke the parser used to raise out of
the batch and every other agent's fixes in it were dropped."""

from __future__ import annotations

import json
import time

import asyncpg
from redis.asyncio import Redis

from channels.agents.mqtt import Message
from config.settings import Settings
from tests.integration.agent_support import AGENT_PIN, native, zoned_agent
from tests.ussd_support import RedisProcess, own_redis

__all__ = ["own_redis"]

DEEP = b"[" * 2000 + b"]" * 2000  # under the 4 KB limit; json recurses once per level


async def test_a_deeply_nested_payload_costs_only_itself(
    settings: Settings, redis: Redis, pg_pool: asyncpg.Pool
) -> None:
    runtime, agent, _ = await zoned_agent(settings, redis, pg_pool)
    channel = runtime.channel
    now = time.time()
    good = json.dumps(native(20, now - 5)).encode()
    await channel.handle(
        [
            Message(f"agents/{agent}/location", DEEP),
            Message(
                f"owntracks/{agent}/phone", b'{"_type": "location", "x": ' + DEEP[30:-30] + b"}"
            ),
            Message(f"agents/{agent}/cmd", DEEP),
            Message(f"agents/{agent}/location", good),
        ]
    )
    assert channel.stats["rejected:MALFORMED_FIX"] == 2
    assert channel.stats["accepted"] == 1  # the good fix in the same batch went in
    assert (await runtime.engine.state(agent))["fix"]["ts"] == now - 5
    assert channel.stats["commands"] == 1  # answered (MALFORMED_COMMAND), not raised


async def test_a_redis_outage_while_fixes_go_in_still_answers_the_batchs_commands(
    settings: Settings, pg_pool: asyncpg.Pool, own_redis: RedisProcess
) -> None:
    """The fixes of a batch go in first (a command's geofence gate wants the newest fix); when
    that fails, the batch's commands are still answered, not dropped with the fixes."""
    redis = Redis.from_url(own_redis.url)
    try:
        runtime, agent, _ = await zoned_agent(settings, redis, pg_pool)
        channel = runtime.channel
        own_redis.stop()
        command = {"id": "c1", "op": "balance", "pin": AGENT_PIN}
        await channel.handle(
            [
                Message(f"agents/{agent}/location", json.dumps(native(20, time.time())).encode()),
                Message(f"agents/{agent}/cmd", json.dumps(command).encode()),
            ]
        )
    finally:
        await redis.aclose()
    assert channel.stats["ingest_failed"] == 1
    assert channel.stats["commands"] == 1  # answered (the reply says what went wrong)
