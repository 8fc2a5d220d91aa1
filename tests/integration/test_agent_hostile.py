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
from tests.integration.agent_support import native, zoned_agent

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
