"""Instance liveness in Redis: whether the gateway instance that claimed a USSD hop still runs.

A step with side effects claims its session before the action (`menus.service`). When the
process dies mid-step the claim stays, and another instance cannot tell a dead claim from a slow
one by its age alone. So every instance keeps a key, `{prefix}ussd:live:{instance}`, with a
short TTL that a background task refreshes; a crashed (or OOM-killed) instance stops refreshing
and its key expires within `ttl_s`. A hop meeting another instance's claim asks whether that
key exists (one EXISTS, only on that busy path): no key, no process, so the claim is dead and
the hop may take it over through the session's compare-and-set.

"No key" must imply "its step is over", also for an instance that is alive but cut off from
Redis (its refresher failing): a claim therefore first makes sure the key outlives the step's
deadline (`cover`), extending it when the last refresh does not reach that far. The key's
expiry only ever grows (the script never shortens it), so a refresh cannot undo a cover.
What this cannot rule out is a process paused (a stop signal, a swap storm) for longer than the
TTL in the middle of an action: the action's idempotency key is what keeps that from moving
money twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import secrets
import time
from typing import Any

from redis.exceptions import NoScriptError, RedisError

from menus.redis_link import RedisLink

log = logging.getLogger("menus.liveness")

LIVENESS_TTL_S = 10.0  # a dead instance's claims block its sessions at most this long
REFRESHES_PER_TTL = 3  # so two refreshes in a row may fail before the key expires
COVER_MARGIN_S = 1.0  # kept on top of a step's deadline (clock rates, the final write)

# KEYS[1] = liveness key; ARGV = value, ttl in ms. Sets the key unless it already lives longer.
EXTEND_SCRIPT = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
"""


def liveness_key(prefix: str, instance: str) -> str:
    return f"{prefix}ussd:live:{instance}"


class Liveness:
    """This instance's liveness key, its refresher, and the check on other instances' keys.

    `start()` sets the key and refreshes it every `ttl_s / REFRESHES_PER_TTL`; `stop()` ends
    the refresher and deletes the key (call it once no step of this instance runs: a key
    deleted under a running step lets another instance run that step again)."""

    def __init__(
        self,
        link: RedisLink,
        prefix: str,
        *,
        ttl_s: float = LIVENESS_TTL_S,
        instance: str | None = None,
    ) -> None:
        assert ttl_s > 0
        self.link = link
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.refresh_s = ttl_s / REFRESHES_PER_TTL
        self.instance = instance or secrets.token_hex(6)
        self.key = liveness_key(prefix, self.instance)
        self._sha = hashlib.sha1(EXTEND_SCRIPT.encode()).hexdigest()  # noqa: S324 - script id
        # Until when (monotonic) the key is known to exist: when the last extension that
        # succeeded was sent, plus the time it set. Sent, not answered: Redis set it later.
        self._vouched = -math.inf
        self._failing = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Set the key now (best effort: Redis may be down at start-up) and keep it fresh."""
        if self._task is not None:
            return
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="ussd-liveness")

    async def stop(self, *, delete: bool = True) -> None:
        """End the refresher; with `delete`, remove the key so that claims left behind by
        this instance are known dead at once (best effort: otherwise it expires)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if delete:
            try:
                await self.link.command("DEL", self.key)
            except (RedisError, OSError, TimeoutError):
                log.warning("ussd liveness: the key was not deleted; it expires by its TTL")
        self._vouched = -math.inf

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def alive(self, instance: str) -> bool:
        """Whether `instance`'s key exists (one round trip; Redis errors raise)."""
        return bool(await self.link.command("EXISTS", liveness_key(self.prefix, instance)))

    def covers(self, until: float) -> bool:
        """Whether the last refresh already keeps the key until `until` plus the margin."""
        return self._vouched >= until + COVER_MARGIN_S

    async def cover(self, until: float) -> None:
        """Make sure the key exists at least until `until` (monotonic) plus a margin: a claim's
        step must be over before its instance can be taken for dead. Costs nothing while the
        last refresh reaches that far; otherwise one extension (errors raise)."""
        if self.covers(until):
            return
        await self._extend(max(self.ttl_s, until + COVER_MARGIN_S - time.monotonic()))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)  # the refresh cadence, not a synchronisation
            await self.refresh()

    async def refresh(self) -> None:
        """Extend the key by the TTL now (what the refresher does; failures are logged)."""
        try:
            await self._extend(self.ttl_s)
        except (RedisError, OSError, TimeoutError):
            if not self._failing:  # once per outage, not every few seconds
                log.warning("ussd liveness: the key could not be refreshed", exc_info=True)
            self._failing = True
            return
        if self._failing:
            log.warning("ussd liveness: the key is refreshed again")
        self._failing = False

    async def _extend(self, ttl_s: float) -> None:
        sent = time.monotonic()
        ttl_ms = math.ceil(ttl_s * 1000)
        args: tuple[str | int, ...] = (self.key, str(time.time()), ttl_ms)
        try:
            await self._command("EVALSHA", self._sha, 1, *args)
        except NoScriptError:
            await self._command("EVAL", EXTEND_SCRIPT, 1, *args)
        self._vouched = max(self._vouched, sent + ttl_ms / 1000)

    async def _command(self, *args: str | int) -> Any:
        return await self.link.command(*args)
