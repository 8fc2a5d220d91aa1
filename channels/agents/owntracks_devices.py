"""Which OwnTracks devices each agent has: learnt from the topics they report on
(`owntracks/{code}/{device}`), so the gateway knows where `owntracks/{code}/{device}/cmd` goes.

Redis hash `{prefix}agent:{code}:owntracks`, device -> last seen (epoch seconds), kept
`TTL_S` after the last write. An instance writes a device at most once per `REFRESH_S` (a local
memo), so the hot path costs one Redis round trip per device per ten minutes, not per fix. The
hash holds at most `MAX_DEVICES` devices (the least recently seen go): an agent's credentials may
publish under any device name, and that must not grow Redis without bound.

A device whose waypoint push failed is forgotten (`forget`): its next report is then a first
sighting again, which sends it the agent's zones. The local memo forgets it too; another
instance's memo may still hold it for up to `REFRESH_S`, and that instance's share of the
device's reports then does not count as a sighting until the memo runs out.

Beside it, `{prefix}agent:{code}:owntracks:sent` keeps, per device, the fence ids of the last
zones the device's broker took: what the phone may still hold, so a later push can remove the
ones it lost (geofence.waypoints.device_commands). Forgetting a device keeps this record (its
phone still holds those zones).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

from redis.asyncio import Redis

REFRESH_S = 600.0
TTL_S = 90 * 86400
MAX_DEVICES = 16
MEMO_MAX = 100_000
# A topic level the gateway will publish under: no control characters, no wildcards.
DEVICE_RE = re.compile(r"^[^\x00-\x1f\x7f+#/]{1,64}$")


def valid_device(name: str) -> bool:
    return DEVICE_RE.fullmatch(name) is not None


class OwnTracksDevices:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._written: dict[tuple[str, str], float] = {}

    def key(self, agent_code: str) -> str:
        return f"{self.prefix}agent:{agent_code}:owntracks"

    def sent_key(self, agent_code: str) -> str:
        return f"{self.prefix}agent:{agent_code}:owntracks:sent"

    async def seen(
        self, pairs: Iterable[tuple[str, str]], now: float | None = None
    ) -> list[tuple[str, str]]:
        """Record (agent code, device) pairs seen now (skipping those written recently); the
        pairs that were not in the registry before (new devices, or back after expiry)."""
        at = time.time() if now is None else now
        due = [
            p
            for p in dict.fromkeys(pairs)
            if valid_device(p[1]) and at - self._written.get(p, -1e18) >= REFRESH_S
        ]
        if not due:
            return []
        if len(self._written) > MEMO_MAX:
            self._written.clear()
        async with self.redis.pipeline(transaction=False) as pipe:
            for code, device in due:
                pipe.hset(self.key(code), device, str(int(at)))
                pipe.expire(self.key(code), TTL_S)
                pipe.hlen(self.key(code))
            results = await pipe.execute()
        for (code, _), size in zip(due, results[2::3], strict=True):
            if int(size) > MAX_DEVICES:
                await self._trim(code)
        for pair in due:
            self._written[pair] = at
        return [p for p, added in zip(due, results[0::3], strict=True) if int(added) == 1]

    async def _trim(self, agent_code: str) -> None:
        known = await self.devices(agent_code, limit=None)
        stale = known[MAX_DEVICES:]
        if stale:
            await self.redis.hdel(self.key(agent_code), *stale)
            await self.redis.hdel(self.sent_key(agent_code), *stale)

    async def forget(self, agent_code: str, devices: Iterable[str]) -> None:
        """Drop devices from the registry, so each one's next report counts as new."""
        names = list(dict.fromkeys(devices))
        if not names:
            return
        await self.redis.hdel(self.key(agent_code), *names)
        for device in names:
            self._written.pop((agent_code, device), None)

    async def devices(self, agent_code: str, limit: int | None = MAX_DEVICES) -> list[str]:
        """The agent's devices, most recently seen first."""
        return _ordered(await self.redis.hgetall(self.key(agent_code)), limit)

    async def devices_of(self, agent_codes: Iterable[str]) -> dict[str, list[str]]:
        """Each agent's devices (most recently seen first), in one Redis round trip; agents
        with none are left out."""
        codes = list(dict.fromkeys(agent_codes))
        if not codes:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for code in codes:
                pipe.hgetall(self.key(code))
            results = await pipe.execute()
        found = {code: _ordered(raw, MAX_DEVICES) for code, raw in zip(codes, results, strict=True)}
        return {code: names for code, names in found.items() if names}

    async def sent_of(self, agent_codes: Iterable[str]) -> dict[str, dict[str, frozenset[int]]]:
        """Per agent, per device, the fence ids last sent to it (one Redis round trip);
        devices never sent any are left out."""
        codes = list(dict.fromkeys(agent_codes))
        if not codes:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for code in codes:
                pipe.hgetall(self.sent_key(code))
            results = await pipe.execute()
        return {code: _sent(raw) for code, raw in zip(codes, results, strict=True)}

    async def record_sent(self, agent_code: str, held: dict[str, frozenset[int]]) -> None:
        """What each of these devices now holds, after its broker took the commands."""
        if not held:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for device, ids in held.items():
                pipe.hset(self.sent_key(agent_code), device, ",".join(str(i) for i in sorted(ids)))
            pipe.expire(self.sent_key(agent_code), TTL_S)
            await pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _sent(raw: dict[bytes | str, bytes | str]) -> dict[str, frozenset[int]]:
    found: dict[str, frozenset[int]] = {}
    for name, value in raw.items():
        parts = [p for p in _text(value).split(",") if p]
        if all(p.isdigit() for p in parts):  # anything else was not written by us: skipped
            found[_text(name)] = frozenset(int(p) for p in parts)
    return found


def _ordered(raw: dict[bytes | str, bytes | str], limit: int | None) -> list[str]:
    pairs: list[tuple[float, str]] = []
    for name, when in raw.items():
        device = name.decode() if isinstance(name, bytes) else str(name)
        try:
            pairs.append((float(when), device))
        except (TypeError, ValueError):
            continue
    ordered = [d for _, d in sorted(pairs, key=lambda p: (-p[0], p[1]))]
    return ordered if limit is None else ordered[:limit]
