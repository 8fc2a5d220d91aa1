"""Promised late results, kept in Redis until kept: "the result will come by SMS" survives the
instance that said it.

When a USSD money action outlives its deadline or its outcome is lost (`menus.engine`), or a
balance, a statement, a registration or a PIN change outlives its deadline, the engine
answers "the result will come by SMS" and writes a record here before it does:
`{prefix}ussd:pending:{idempotency key}`, a hash of `owner` (the instance that asks, by its
liveness id; "" once released) and `data` (JSON: the key, the action, the phone, the language,
the menu, version and screen, when it was promised and until when the money may still move).
An index, the sorted set `{prefix}ussd:pending`, lists records oldest first. Writing a record
and finishing one each touch both in one script, so the index never names a record that was
never written, nor keeps one that was finished.

The record holds no input and no secret: nobody runs the action again from it. Whoever
finishes a record that its owner could not (the owner gone: its liveness key expired or
deleted at a stop; the owner released it; or it outlived its limit) settles or abandons the
movement under its key (`Settler`; core.transfers.abandon, or for a loan application or
repayment core.loans.store.abandon_request, for a registration or a PIN change
core.customers.abandon_request): the movement, whose receipt or loan notice was queued with
it (the change, told by an SMS queued with the settling), or the key abandoned for good and
the customer told nothing moved (nothing changed), in one transaction. A read (balance,
statement) is not done again (that needs the PIN): the customer is told it could not be
completed, nothing changed, to try again. So a PIN is never needed, and never stored, to
keep the promise.

Every instance runs a `PendingSweeper`. A record is taken by a compare-and-set of its owner
(the owner it read -> this instance), so one instance finishes it; finishing twice would still
be harmless (the ledger answers the same, and the result SMS's dedupe key queues one). A
record that does not parse is logged, taken out of the index, and kept a while for an
operator; it never stops the sweep.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from redis.exceptions import NoScriptError, RedisError

from core.errors import CoreError, Unavailable
from core.transfers import MAX_KEY_CHARS
from menus.liveness import Liveness
from menus.redis_link import RedisLink

log = logging.getLogger("menus.pending")

RECORD_VERSION = 1
SWEEP_INTERVAL_S = 5.0  # how often each instance looks for records to take over
SWEEP_BATCH = 100  # records read per round trip of the index, oldest first
SWEEP_MAX_RECORDS = 2000  # looked at per sweep: the rest wait for the next one
# A record whose owner still lives is taken this long after its limit: the owner settles it
# itself at the limit, so this is for an owner whose late task is gone (a bug, an overload).
TAKEOVER_GRACE_S = 30.0
# A settling that fails with an unforeseen error (not Unavailable, not a refusal) is tried at
# every sweep until this long past the promise's limit, then the record is set aside.
GIVE_UP_AFTER_S = 3600.0
BAD_RECORD_KEEP_S = 7 * 24 * 3600  # a record that does not parse, kept for an operator
REDIS_TIMEOUT_S = 2.0
MAX_FIELD_CHARS = 256

# KEYS: record, index; ARGV: owner, data, score.
PUT_SCRIPT = """
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'data', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
return 1
"""
# KEYS: record; ARGV: the owner read, the new owner. 1 when taken.
CLAIM_SCRIPT = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'owner', ARGV[2])
  return 1
end
return 0
"""
# KEYS: record, index.
DONE_SCRIPT = """
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
return 1
"""


class BadRecord(ValueError):
    """A pending record that is not one this code wrote. `owner`: the instance that wrote it,
    when that much could be read (a newer release's record, during a rolling upgrade, is left
    to its owner while the owner lives)."""

    def __init__(self, reason: str, owner: str | None = None) -> None:
        super().__init__(reason)
        self.owner = owner


class _NotNow(Exception):
    """A record could not be settled now (the database away): this pass ends."""


@dataclass(frozen=True, slots=True)
class Pending:
    """One promised result: what finishing it needs (no input, no secret)."""

    key: str  # the action's idempotency key
    action: str
    msisdn: str
    language: str
    menu: str
    version: int
    screen: str
    promised_at: float  # epoch seconds
    until: float  # epoch seconds: no money moves under the key after this

    def to_json(self) -> str:
        return json.dumps({"v": RECORD_VERSION, **asdict(self)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Pending:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadRecord("not JSON") from None
        if not isinstance(data, dict) or data.get("v") != RECORD_VERSION:
            raise BadRecord("not a version 1 record")
        texts = ("key", "action", "msisdn", "language", "menu", "screen")
        for name in texts:
            value = data.get(name)
            if not isinstance(value, str) or not 1 <= len(value) <= MAX_FIELD_CHARS:
                raise BadRecord(f"bad {name}")
        if len(data["key"]) > MAX_KEY_CHARS:  # no ledger key: nothing to settle under it
            raise BadRecord("bad key")
        for name in ("version", "promised_at", "until"):
            value = data.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BadRecord(f"bad {name}")
        if not isinstance(data["version"], int):
            raise BadRecord("bad version")
        return cls(
            **{n: data[n] for n in texts},
            version=data["version"],
            promised_at=float(data["promised_at"]),
            until=float(data["until"]),
        )


class Settler(Protocol):
    """Settles or abandons a promised action under its key (bound by `menus.bindings`)."""

    def settles(self, action: str) -> bool:
        """Whether a promise of this action's result is kept on record (settled here)."""
        ...

    def changes(self, action: str) -> bool:
        """Whether this action changes something under its key (money, a registration, a PIN):
        a late `Unavailable` may have applied it, so its owner asks again under the key. A
        read (balance, statement) does not."""
        ...

    async def settle_or_abandon(self, pending: Pending) -> bool:
        """True: it was done under the key (its receipt, or a result SMS queued here, is the
        result). False: nothing was done, the key is abandoned (for a read: nothing to
        abandon) and the customer told so. Raises when it could not tell."""
        ...


class _Scripts:
    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self._sha: dict[str, str] = {}

    async def run(self, script: str, keys: tuple[str, ...], *args: str | int | float) -> Any:
        sha = self._sha.get(script)
        if sha is None:
            sha = self._sha[script] = hashlib.sha1(script.encode()).hexdigest()  # noqa: S324
        argv = [str(a) for a in args]
        try:
            return await self.link.command("EVALSHA", sha, len(keys), *keys, *argv)
        except NoScriptError:
            return await self.link.command("EVAL", script, len(keys), *keys, *argv)


class PendingStore:
    """The records of one gateway (its Redis prefix), written as this instance (`instance`)."""

    def __init__(self, link: RedisLink, prefix: str, instance: str) -> None:
        self.link = link
        self.prefix = prefix
        self.instance = instance
        self.index = f"{prefix}ussd:pending"
        self._scripts = _Scripts(link)

    def record_key(self, idempotency_key: str) -> str:
        return f"{self.index}:{idempotency_key}"

    async def put(self, pending: Pending) -> None:
        """Write the record, owned by this instance (errors raise)."""
        await self._run(
            PUT_SCRIPT,
            (self.record_key(pending.key), self.index),
            self.instance,
            pending.to_json(),
            pending.promised_at,
        )

    async def claim(self, record: str, owner: str) -> bool:
        """Take `record` (a record key) from `owner` (as read) for this instance."""
        return bool(await self._run(CLAIM_SCRIPT, (record,), owner, self.instance))

    async def release(self, record: str) -> bool:
        """Give a record this instance owns to whichever sweeper comes next."""
        return bool(await self._run(CLAIM_SCRIPT, (record,), self.instance, ""))

    async def done(self, record: str) -> None:
        await self._run(DONE_SCRIPT, (record, self.index))

    async def oldest(self, count: int = SWEEP_BATCH, start: int = 0) -> list[str]:
        found = await self._command("ZRANGE", self.index, start, start + count - 1)
        return [m.decode() if isinstance(m, bytes) else str(m) for m in found or ()]

    async def read(self, record: str) -> tuple[str, Pending] | None:
        """(owner, record), or None when it is gone; BadRecord when it does not parse."""
        try:
            flat = await self._command("HGETALL", record)
        except RedisError as exc:  # another type of key under the name: WRONGTYPE
            if "WRONGTYPE" in str(exc):
                raise BadRecord("not a hash") from None
            raise
        if not flat:
            return None
        fields: Mapping[bytes, bytes] = dict(zip(flat[::2], flat[1::2], strict=True))
        owner, data = fields.get(b"owner"), fields.get(b"data")
        if owner is None or data is None:
            raise BadRecord("owner or data missing")
        try:
            who = owner.decode()
        except UnicodeDecodeError:
            raise BadRecord("owner is not text") from None
        try:
            return who, Pending.from_json(data)
        except BadRecord as exc:
            raise BadRecord(str(exc), owner=who) from None

    async def set_aside(self, record: str) -> None:
        """Out of the index; the key itself kept a while for an operator to read."""
        await self._command("ZREM", self.index, record)
        await self._command("EXPIRE", record, BAD_RECORD_KEEP_S)

    async def _run(self, script: str, keys: tuple[str, ...], *args: str | int | float) -> Any:
        return await asyncio.wait_for(self._scripts.run(script, keys, *args), REDIS_TIMEOUT_S)

    async def _command(self, *args: str | int) -> Any:
        return await asyncio.wait_for(self.link.command(*args), REDIS_TIMEOUT_S)


class PendingSweeper:
    """Takes over promised results whose owner is gone, or that outlived their limit, and
    settles or abandons each (see the module docstring). `sweep()` is one pass."""

    def __init__(
        self,
        store: PendingStore,
        liveness: Liveness,
        settler: Settler,
        *,
        interval_s: float = SWEEP_INTERVAL_S,
        grace_s: float = TAKEOVER_GRACE_S,
    ) -> None:
        self.store = store
        self.liveness = liveness
        self.settler = settler
        self.interval_s = interval_s
        self.grace_s = grace_s
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ussd-pending-sweeper")

    async def stop(self) -> None:
        """End the sweeps; a record being finished stays claimed by this instance, whose
        liveness key goes next, so another instance takes it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)  # the sweep cadence, not a synchronisation
            try:
                await self.sweep()
            except (RedisError, OSError, TimeoutError):
                if not self._failing:  # once per outage
                    log.warning("ussd pending: Redis did not answer the sweep", exc_info=True)
                self._failing = True
                continue
            except Exception:  # a bug must not end the sweeps of this instance for good
                log.exception("ussd pending: the sweep failed")
                continue
            self._failing = False

    async def sweep(self) -> int:
        """One pass over the records, oldest first (at most SWEEP_MAX_RECORDS); how many were
        finished here. Records finished meanwhile shift the index: one skipped is seen at the
        next pass."""
        finished = 0
        alive: dict[str, bool] = {}  # owner -> whether its liveness key exists, this pass
        for start in range(0, SWEEP_MAX_RECORDS, SWEEP_BATCH):
            records = await self.store.oldest(SWEEP_BATCH, start)
            for record in records:
                try:
                    finished += await self._one(record, alive)
                except _NotNow:
                    return finished  # the ledger does not answer: the others would wait too
                except BadRecord as exc:
                    if await self._owner_alive(exc.owner, alive):
                        # Maybe a newer release's record (a rolling upgrade): its owner keeps it.
                        log.warning(
                            "ussd pending: a record this release cannot read; its owner lives",
                            extra={"record": record, "problem": str(exc)},
                        )
                        continue
                    log.error(
                        "ussd pending: a record that does not parse was set aside: %s",
                        exc,
                        extra={"record": record},
                    )
                    await self.store.set_aside(record)
            if len(records) < SWEEP_BATCH:
                break
        return finished

    async def _one(self, record: str, alive: dict[str, bool]) -> int:
        read = await self.store.read(record)
        if read is None:
            log.error(
                "ussd pending: an index entry without its record was set aside",
                extra={"record": record},
            )
            await self.store.set_aside(record)
            return 0
        owner, pending = read
        if not self.settler.settles(pending.action):
            raise BadRecord(f"no settling of {pending.action[:64]!r} here", owner=owner)
        if not await self._orphaned(owner, pending, alive):
            return 0
        if not await self.store.claim(record, owner):
            return 0  # another instance took it (or its owner finished it) first
        if not await finish(self.store, self.settler, record, pending):
            raise _NotNow
        return 1

    async def _owner_alive(self, owner: str | None, alive: dict[str, bool]) -> bool:
        """Another instance that wrote a record and still runs."""
        if not owner or owner == self.store.instance:
            return False
        if owner not in alive:
            alive[owner] = await self.liveness.alive(owner)
        return alive[owner]

    async def _orphaned(self, owner: str, pending: Pending, alive: dict[str, bool]) -> bool:
        if not owner:
            return True
        if time.time() > pending.until + self.grace_s:
            return True
        if owner == self.store.instance:
            return False  # this process runs: its late task has the record (or released it)
        if owner not in alive:
            alive[owner] = await self.liveness.alive(owner)
        return not alive[owner]


async def finish(store: PendingStore, settler: Settler, record: str, pending: Pending) -> bool:
    """Settle or abandon a record this instance owns, then drop it; released for the next
    sweeper when the ledger cannot answer now (False). A refusal that asking again would not
    change (a key the ledger does not take, say) makes it a bad record."""
    extra = {"action": pending.action, "key": pending.key}
    try:
        moved = await settler.settle_or_abandon(pending)
    except Unavailable:
        log.warning(
            "ussd pending: not settled now; left for the next sweep", extra=extra, exc_info=True
        )
        await store.release(record)
        return False
    except CoreError as exc:  # a refusal: asking again would get the same
        raise BadRecord(f"the settling was refused: {exc.error_code}") from exc
    except Exception as exc:
        # Not a refusal: a database error no list foresaw (a failover's), or a bug. Setting the
        # record aside would break the promise for good; it is asked again at the next sweeps,
        # and set aside only once it is long overdue (a bug, not an outage).
        if time.time() > pending.until + GIVE_UP_AFTER_S:
            raise BadRecord(f"the settling kept failing: {type(exc).__name__}") from exc
        log.error(
            "ussd pending: the settling failed; left for the next sweep", extra=extra, exc_info=True
        )
        await store.release(record)
        return False
    if moved:
        log.info("ussd pending: done under its key; its notice is the result", extra=extra)
    else:
        log.warning("ussd pending: abandoned; the customer is told nothing was done", extra=extra)
    await store.done(record)
    return True
