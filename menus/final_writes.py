"""A step's last session write that Redis did not take, kept and written again in the background.

A step with side effects claims its session (`menus.service`) and ends with one compare-and-set
that stores its reply and clears the claim. When that write fails (a Redis blip), the step is
over but the claim stays in Redis, and its instance is alive (its liveness key fresh): another
instance cannot tell it from a slow step and would make the provider's retry wait out the
grace period. So the instance keeps the write (`hold`) and sends it again after short pauses
(doubling, with jitter, so that many held writes do not hit a recovering Redis in step) until
Redis answers: the session is then released with the step's reply, and the retried hop gets
that reply without running the step again.

Each try is the same compare-and-set against the version the claim wrote: if another writer
changed the session meanwhile (a takeover of a claim taken for dead, the provider's end notice
on an instance that could not see this one), the write gives up and says so; the record
stored wins. A write the store applied whose answer was lost counts as done (the store
recognises its own version and content). Tries stop at the write's `until` (the claim's grace
period or the session's TTL, whichever ends first): past it the claim is stale anyway.

At most `limit` writes are held (each is a session's record, a few KB): past it, the oldest is
dropped (logged at error, counted): its claim is then dead for this instance, as before this
module, and waits out the grace period elsewhere. A stop tries every held write once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import RedisError

from menus.session import SessionStore

log = logging.getLogger("menus.final_writes")

MAX_HELD = 1000  # writes held at once (one per session whose last write failed)
FIRST_PAUSE_S = 0.05  # before the first try again: a blip is often over by then
MAX_PAUSE_S = 1.0  # Redis back, a held write lands within about this
WRITE_FAILURES = (RedisError, OSError, TimeoutError)

# Outcomes counted: stored (it landed), lost (another writer changed the session), expired
# (tried until `until`), dropped (over `limit`), left (a stop's last try failed), error (a
# bug: the try raised something other than a Redis failure).
Observer = Callable[[str], None]


@dataclass(slots=True)
class FinalWrite:
    """A step's last write: `raw` as version `expected` + 1 if the stored version is still
    `expected` (the claim's). `token` names the claim it clears."""

    key: str
    expected: int
    raw: str
    ttl_s: int
    token: str
    until: float  # monotonic: no try after this
    task: asyncio.Task[None] | None = None


def _left(write: FinalWrite) -> None:
    log.warning(
        "ussd: stopping with a session write unstored; its claim is left",
        extra={"key": write.key, "claim": write.token},
    )


class FinalWrites:
    """The held writes of this process, one per session key, oldest first."""

    def __init__(
        self,
        store: SessionStore,
        *,
        limit: int = MAX_HELD,
        first_pause_s: float = FIRST_PAUSE_S,
        max_pause_s: float = MAX_PAUSE_S,
        observe: Observer | None = None,
    ) -> None:
        assert limit >= 0 and 0 < first_pause_s <= max_pause_s
        self.store = store
        self.limit = limit
        self.first_pause_s, self.max_pause_s = first_pause_s, max_pause_s
        self.observe = observe
        self._held: OrderedDict[str, FinalWrite] = OrderedDict()
        self._tokens: set[str] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._held)

    def holds(self, token: object) -> bool:
        """Whether the claim named `token` is cleared by a write held here (its step is over,
        but the claim is not dead: its release is on its way)."""
        return token in self._tokens

    def held(self, key: str) -> FinalWrite | None:
        return self._held.get(key)

    def hold(self, write: FinalWrite) -> None:
        """Keep `write` and send it again in the background until it lands or gives up."""
        if self._closed:  # a step that outlived the stop's wait: no background tries now
            _left(write)
            self._count("left")
            return
        previous = self._held.get(write.key)
        if previous is not None:  # cannot land any more: the session moved past its version
            self._end(previous, "lost")
        while self._held and len(self._held) >= self.limit:
            _, oldest = next(iter(self._held.items()))
            log.error(
                "ussd: too many unstored session writes; the oldest is dropped",
                extra={"key": oldest.key, "claim": oldest.token},
            )
            self._end(oldest, "dropped")
        if self.limit == 0:
            log.error("ussd: an unstored session write is dropped", extra={"key": write.key})
            self._count("dropped")
            return
        self._held[write.key] = write
        self._tokens.add(write.token)
        write.task = asyncio.create_task(self._retry(write), name=f"ussd-final-write:{write.key}")

    async def flush(self, key: str) -> None:
        """One try now of the write held for `key`, if any (a hop for that session arrived:
        its release comes first). Failures are left to the background tries."""
        write = self._held.get(key)
        if write is not None:
            with contextlib.suppress(*WRITE_FAILURES):
                await self._try(write)

    async def close(self) -> int:
        """A stop: the background tries end and every held write is tried once more, all at
        once (each bounded by the store's I/O timeout). Returns how many did not land (their
        claims stay: with this instance's liveness key gone, they are dead at once)."""
        self._closed = True
        writes = list(self._held.values())
        for write in writes:
            if write.task is not None:
                write.task.cancel()
        await asyncio.gather(
            *(w.task for w in writes if w.task is not None), return_exceptions=True
        )
        results = await asyncio.gather(*(self._try(w) for w in writes), return_exceptions=True)
        left = 0
        for write, result in zip(writes, results, strict=True):
            if isinstance(result, BaseException) and self._held.get(write.key) is write:
                _left(write)
                self._end(write, "left")
                left += 1
        return left

    async def _retry(self, write: FinalWrite) -> None:
        pause = self.first_pause_s
        while True:
            # Half to all of the pause: held writes spread out instead of retrying in step.
            delay = pause * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret
            delay = min(delay, write.until - time.monotonic())  # the last try at `until`
            if delay <= 0:
                break
            await asyncio.sleep(delay)  # the backoff between tries, not a synchronisation
            if self._held.get(write.key) is not write:
                return  # a hop's flush, or a stop, finished it meanwhile
            try:
                await self._try(write)
                return
            except WRITE_FAILURES:
                pause = min(pause * 2, self.max_pause_s)
            except Exception:
                # A bug, not an outage: trying again would fail the same way.
                log.exception("ussd: an unstored session write failed", extra={"key": write.key})
                self._end(write, "error", cancel=False)
                return
        log.warning(
            "ussd: a session write was not stored in time; its claim waits out the grace",
            extra={"key": write.key, "claim": write.token},
        )
        self._end(write, "expired", cancel=False)

    async def _try(self, write: FinalWrite) -> None:
        """One compare-and-set of `write` (Redis errors raise); landed or lost, it ends."""
        if self._held.get(write.key) is not write:
            return
        ok, current = await self.store.save(write.key, write.expected, write.raw, write.ttl_s)
        if self._held.get(write.key) is not write:
            return  # another try of the same write ended it while this one was out
        if ok:
            log.info("ussd: a session write is stored late", extra={"key": write.key})
            self._end(write, "stored")
            return
        log.warning(
            "ussd: an unstored session write gives up: the session changed meanwhile",
            extra={
                "key": write.key,
                "claim": write.token,
                "stored": None if current is None else current.version,
            },
        )
        self._end(write, "lost")

    def _end(self, write: FinalWrite, outcome: str, *, cancel: bool = True) -> None:
        if self._held.get(write.key) is write:
            del self._held[write.key]
        self._tokens.discard(write.token)
        task = write.task
        if cancel and task is not None and task is not asyncio.current_task():
            task.cancel()
        self._count(outcome)

    def _count(self, outcome: str) -> None:
        if self.observe is not None:
            self.observe(outcome)
