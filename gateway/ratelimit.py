"""Fixed-window rate limits in Redis: one pipelined round trip per check."""

from __future__ import annotations

import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.errors import RateLimited, Unavailable


async def hit(redis: Redis, key: str, limit: int, window_s: int) -> None:
    """Count one attempt under `key`; raise RateLimited past `limit` in the current window."""
    window = int(time.time()) // window_s
    full_key = f"{key}:{window}"
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.incr(full_key)
            pipe.expire(full_key, window_s + 1)
            count, _ = await pipe.execute()
    except (RedisError, OSError) as exc:
        raise Unavailable("Rate limiting is temporarily unavailable") from exc
    if int(count) > limit:
        retry = window_s - int(time.time()) % window_s
        raise RateLimited("Too many attempts; try again later", retry_after_s=retry)
