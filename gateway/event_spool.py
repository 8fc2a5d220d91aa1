"""The agent event spool: events PostgreSQL could not take, kept in a Redis stream until any
gateway instance writes them.

A process that dies while PostgreSQL is away would lose events it only held in memory; in the
stream they outlive it, and every instance's writer (gateway.agents.PgSink.run_events) reads
them through one consumer group:

    XADD (one entry per event, trimmed to a bound)   -> entries, oldest first
    XREADGROUP >  / XAUTOCLAIM after CLAIM_IDLE_S    -> a batch claimed by one instance
    INSERT ... ON CONFLICT (event_id) DO NOTHING     -> stored once, however often written
    XACK + XDEL                                      -> gone from the stream

An instance that dies holding a claimed batch leaves it in the group's pending list; another
instance claims it once it has been idle for CLAIM_IDLE_S (a live holder refreshes its claim
while it retries). A batch may so be written twice, and the events' ids (migration
0780_agent_event_ids) store it once: at least once into the stream's readers, exactly once in
the table.

An entry is `{v: format version, d: msgpack}`. A reader that cannot use one (bytes that are
not an event) moves it aside to a second, bounded stream with the reason, acknowledged, so it
never holds up the entries after it. An entry of a later format (a newer release wrote it
during a rolling upgrade) is no garbage: the reader leaves it pending, skipped, and a newer
instance takes it over once it has been idle for CLAIM_IDLE_S (older instances take it over
too, and leave it again, until then).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgpack
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from core import devices
from core.devices import EVENT_KINDS, BreachAlerts, EventRow

log = logging.getLogger("gateway.agents")

FORMAT = 1
GROUP = "writers"
# A claimed batch idle this long belongs to a dead instance (a live one refreshes its claim at
# every try, at most a third of this apart): another instance takes it over.
CLAIM_IDLE_S = 60.0
REDIS_TIMEOUT_S = 2.0  # any one spool call; the fix handler waits on XADD
UNREADABLE_MAX = 1_000  # entries set aside, newest kept
MAX_ENTRY_BYTES = 64 * 1024
MAX_AGENT_CODE = 64
# Times PostgreSQL and Python both take (datetime.fromtimestamp fails far past year 9999).
_MAX_TS = 253_402_300_799.0
# A consumer with nothing pending, unseen this long, is a process that ended: forgotten.
CONSUMER_FORGET_S = 3600.0
# Pending entries of this consumer looked at when a claim hands over deleted ones (Redis 6.2).
_PENDING_SCAN = 1_000


# KEYS[1] the stream; ARGV group, this consumer, idle limit (ms). XINFO CONSUMERS answers each
# consumer as a flat list of field names and values.
_FORGET = """
local removed = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f.pending == 0 and (f.name == ARGV[2] or f.idle > tonumber(ARGV[3])) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f.name)
    removed = removed + 1
  end
end
return removed
"""


class EntryUnusable(Exception):
    """A stream entry that is not an event this release can write; the reason says why."""


class EntryLater(Exception):
    """A stream entry of a format version later than this release's: a newer one writes it."""


def encode(event: EventRow) -> dict[bytes, bytes]:
    """The entry for `event`: the format version beside a msgpack array (no field names in
    each entry; ~50 bytes for a presence event, under 200 for a breach with its fix)."""
    body = [
        event.agent_code,
        event.kind,
        event.at,
        event.fix_ts,
        event.fence_id,
        event.fence_version,
        event.details,
        event.event_id.bytes,
    ]
    return {b"v": str(FORMAT).encode(), b"d": msgpack.packb(body, use_bin_type=True)}


def unspoolable(event: EventRow) -> str | None:
    """Why `event` cannot go through the spool (None: it can): its entry would not encode
    (an integer past 64 bits, a value msgpack has no type for) or would not read back (a
    key that is no string, a time no database takes); such an entry would otherwise fail
    every move of the memory backlog, or be set aside as unreadable."""
    try:
        decode(encode(event))
    except (TypeError, ValueError, OverflowError, EntryUnusable) as exc:
        return f"{type(exc).__name__}: {exc}"[:200]
    return None


def decode(fields: dict[bytes, bytes]) -> EventRow:
    """The event of an entry, read by the reader of its format version; EntryLater when that
    version is later than this release's, EntryUnusable when it is no event (checked as far
    as writing it needs: a value the INSERT could not even encode would otherwise be retried
    for ever). A release that changes the format adds its reader
    and keeps the older ones, so entries written before an upgrade are still written after."""
    version = fields.get(b"v")
    reader = _READERS.get(version) if isinstance(version, bytes) else None
    if reader is None:
        if _later(version):
            raise EntryLater(f"format version {version!r} is later than this release's")
        raise EntryUnusable(f"format version {version!r} unknown")
    data = fields.get(b"d")
    if not isinstance(data, bytes) or len(data) > MAX_ENTRY_BYTES:
        raise EntryUnusable("no payload, or an oversized one")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise EntryUnusable(f"not msgpack ({type(exc).__name__})") from None
    return reader(body)


def _later(version: object) -> bool:
    # Versions are small decimal numbers; anything else is garbage, not the future.
    return (
        isinstance(version, bytes)
        and 0 < len(version) <= 9
        and version.isdigit()
        and int(version) > FORMAT
    )


def _read_v1(body: Any) -> EventRow:
    if not isinstance(body, list) or len(body) != 8:
        raise EntryUnusable("not an event array")
    code, kind, at, fix_ts, fence_id, fence_version, details, event_id = body
    if not isinstance(code, str) or not 0 < len(code) <= MAX_AGENT_CODE:
        raise EntryUnusable("agent code")
    if kind not in EVENT_KINDS:
        raise EntryUnusable("kind")
    for value in (fence_id, fence_version):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise EntryUnusable("fence")
    if details is not None and not _json_object(details):
        raise EntryUnusable("details")
    if not isinstance(event_id, bytes) or len(event_id) != 16:
        raise EntryUnusable("event id")
    return EventRow(
        agent_code=code,
        kind=kind,
        at=_time(at),
        fix_ts=None if fix_ts is None else _time(fix_ts),
        fence_id=fence_id,
        fence_version=fence_version,
        details=details,
        event_id=uuid.UUID(bytes=event_id),
    )


_READERS: dict[bytes, Callable[[Any], EventRow]] = {b"1": _read_v1}


def _time(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise EntryUnusable("time")
    if not math.isfinite(value) or not 0 <= value <= _MAX_TS:
        raise EntryUnusable("time out of range")
    datetime.fromtimestamp(value, UTC)  # the INSERT converts it so
    return float(value)


def _json_object(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry taken from the stream: its event, or why it has none."""

    entry_id: bytes
    event: EventRow | None
    problem: str | None = None
    fields: dict[bytes, bytes] | None = None  # kept for an unusable entry, to set it aside
    later: bool = False  # of a later format: left pending for a newer release


@dataclass(frozen=True, slots=True)
class Added:
    last_id: bytes  # the last entry added
    trimmed: int  # entries the bound let go (the oldest)
    length: int  # entries in the stream after


def consumer_name() -> str:
    """Unique per process and spool: a restarted process is a new consumer, and what the old
    one held is taken over by idle time like any dead instance's."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class EventSpool:
    """The stream under `key` and its consumer group, as this process's consumer."""

    def __init__(
        self,
        redis: Redis,
        key: str,
        *,
        consumer: str | None = None,
        claim_idle_s: float = CLAIM_IDLE_S,
    ) -> None:
        self.redis = redis
        self.key = key
        self.unreadable_key = f"{key}:unreadable"  # the same hash tag: one slot for both
        self.consumer = consumer or consumer_name()
        self.claim_idle_s = claim_idle_s
        self._cursor = b"0-0"  # where XAUTOCLAIM goes on through the pending list
        self._forget = redis.register_script(_FORGET)

    async def add(self, events: Sequence[EventRow], max_len: int) -> Added:
        """Append `events` in order and trim the stream to its newest `max_len` entries, in
        one transaction (one round trip). The trim may take entries a writer holds: it still
        writes them (it holds their data), and they are counted as let go all the same."""
        assert events
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            async with self.redis.pipeline(transaction=True) as pipe:
                for event in events:
                    pipe.xadd(self.key, encode(event))  # type: ignore[arg-type]
                pipe.xtrim(self.key, maxlen=max_len, approximate=False)
                pipe.xlen(self.key)
                answers = await pipe.execute()
        return Added(_as_bytes(answers[len(events) - 1]), int(answers[-2]), int(answers[-1]))

    async def length(self) -> int:
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            return int(await self.redis.xlen(self.key))

    async def holds_up_to(self, entry_id: bytes) -> bool:
        """Whether any entry at or before `entry_id` is still in the stream."""
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            return bool(await self.redis.xrange(self.key, "-", entry_id, count=1))

    async def take(self, count: int) -> list[Entry]:
        """Up to `count` entries for this consumer, oldest first: those of dead consumers idle
        past `claim_idle_s`, then new ones."""
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            try:
                return await self._take(count)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
            await self._create_group()  # the stream was new, or lost with Redis's data
            return await self._take(count)

    async def _take(self, count: int) -> list[Entry]:
        answer = await self.redis.xautoclaim(
            self.key,
            GROUP,
            self.consumer,
            min_idle_time=int(self.claim_idle_s * 1000),
            start_id=self._cursor,
            count=count,
        )
        start, self._cursor = self._cursor, _as_bytes(answer[0])
        entries = [_entry(i, f) for i, f in answer[1] if i is not None and f]
        # Redis 6.2 (the embedded engine) hands over entries deleted meanwhile (trimmed) as
        # nil, without even their id; 7 drops them from the pending list itself. Left there
        # they would be claimed again at every idle time, for ever.
        gone = len(answer[1]) - len(entries)
        if gone:
            await self._ack_deleted(start, self._cursor, {e.entry_id for e in entries})
        if len(entries) < count:
            # RESP2: [[stream, [(id, fields), ...]]], or None when nothing is new.
            fresh: Any = await self.redis.xreadgroup(
                GROUP, self.consumer, {self.key: ">"}, count=count - len(entries)
            )
            for _, items in fresh or []:
                entries.extend(_entry(i, f) for i, f in items)
        if len(answer[1]) > gone:
            log.warning(
                "agent event spool: entries of a silent writer taken over",
                extra={"entries": len(answer[1]) - gone, "consumer": self.consumer},
            )
        return entries

    async def _ack_deleted(self, start: bytes, cursor: bytes, kept: set[bytes]) -> None:
        """Acknowledge the entries this consumer claimed between `start` and `cursor` (the
        XAUTOCLAIM's range; all that follows when it went round) that are no longer in the
        stream. Its pending ones there are those just claimed, or entries it leaves pending
        on purpose (a later format), which are still in the stream."""
        end = b"+" if cursor == b"0-0" else b"(" + cursor
        pending: list[dict[str, Any]] = await self.redis.xpending_range(
            self.key, GROUP, min=start, max=end, count=_PENDING_SCAN, consumername=self.consumer
        )
        ids = [i for i in (_as_bytes(p["message_id"]) for p in pending) if i not in kept]
        if not ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xrange(self.key, entry_id, entry_id, count=1)
            found = await pipe.execute()
        deleted = [i for i, there in zip(ids, found, strict=True) if not there]
        if deleted:
            await self.redis.xack(self.key, GROUP, *deleted)

    async def _create_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # another instance made it first
                raise

    async def keep(self, entry_ids: Sequence[bytes]) -> None:
        """Refresh this consumer's claim on entries it is still trying to write, so no other
        instance takes them over while this one lives."""
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            await self.redis.xclaim(
                self.key, GROUP, self.consumer, min_idle_time=0, message_ids=list(entry_ids),
                justid=True,
            )  # fmt: skip

    async def done(self, entry_ids: Sequence[bytes]) -> None:
        """Acknowledge and delete entries whose events are stored (after the COMMIT)."""
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(self.key, GROUP, *entry_ids)
                pipe.xdel(self.key, *entry_ids)
                await pipe.execute()

    async def set_aside(self, entries: Sequence[Entry]) -> None:
        """Move unusable entries to the unreadable stream (their fields, where from and why),
        acknowledged and deleted here, in one transaction."""
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            async with self.redis.pipeline(transaction=True) as pipe:
                for entry in entries:
                    # Cut to the bound: garbage may be of any size.
                    fields = {k: v[:MAX_ENTRY_BYTES] for k, v in (entry.fields or {}).items()}
                    fields[b"spool_id"] = entry.entry_id
                    fields[b"problem"] = (entry.problem or "").encode()
                    pipe.xadd(
                        self.unreadable_key, fields,  # type: ignore[arg-type]
                        maxlen=UNREADABLE_MAX, approximate=False,
                    )  # fmt: skip
                ids = [e.entry_id for e in entries]
                pipe.xack(self.key, GROUP, *ids)
                pipe.xdel(self.key, *ids)
                await pipe.execute()

    async def forget_consumers(self) -> int:
        """Remove consumers holding nothing that are this one or unseen for
        CONSUMER_FORGET_S: each process is a new consumer, and the group would otherwise keep
        every one that ever ran. Checked and removed in one script: a consumer that claimed
        entries between a check and its removal would lose them from the pending list, where
        nobody could take them over. How many were removed."""
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            try:
                return int(
                    await self._forget(
                        keys=[self.key],
                        args=[GROUP, self.consumer, int(CONSUMER_FORGET_S * 1000)],
                    )
                )
            except ResponseError as exc:
                if "NOGROUP" in str(exc) or "no such key" in str(exc).lower():
                    return 0  # no stream or no group: nothing to forget
                raise


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _entry(entry_id: bytes | str, fields: dict[bytes, bytes]) -> Entry:
    key = _as_bytes(entry_id)
    try:
        return Entry(key, decode(fields))
    except EntryLater as exc:
        return Entry(key, None, str(exc), later=True)
    except EntryUnusable as exc:
        return Entry(key, None, str(exc), fields)


# --- the unreadable entries, read back ---------------------------------------------------------

REPLAY_PAGE = 100  # unreadable entries read (and their events written) at a time
_PROBLEM_CHARS = 200  # a reason as shown: the stream may hold anything anyone wrote


@dataclass(frozen=True, slots=True)
class Unreadable:
    """An entry of the unreadable stream: why it was set aside, and what this release reads
    in it now (its event, or its problem)."""

    entry_id: bytes
    spool_id: bytes | None
    problem: str  # as recorded when it was set aside
    event: EventRow | None
    problem_now: str | None  # None: this release reads it


@dataclass(frozen=True, slots=True)
class SpoolCounts:
    spool: int  # entries waiting to be written
    pending: int  # of those, claimed by a writer and not acknowledged yet
    unreadable: int  # entries set aside
    readable_now: int  # of those, entries this release reads
    problems: dict[str, int]  # entries set aside, by the reason recorded, most first


@dataclass(slots=True)
class Replayed:
    total: int = 0  # unreadable entries when the replay began
    read: int = 0  # unreadable entries looked at
    written: int = 0  # events this replay stored
    already: int = 0  # events stored before (a replay that died before its XDEL, a copy)
    kept: int = 0  # entries still unreadable, left where they are
    problems: dict[str, int] = field(default_factory=dict)  # the kept, by today's reason


def shown(problem: bytes | str | None) -> str:
    """A reason fit for one line of a terminal or a log."""
    text = problem.decode(errors="replace") if isinstance(problem, bytes) else problem or ""
    text = "".join(c if c.isprintable() else "?" for c in text[:_PROBLEM_CHARS])
    return text or "(no reason recorded)"


def read_unreadable(entry_id: bytes | str, fields: dict[bytes, bytes]) -> Unreadable:
    """An unreadable entry as this release reads it. Its fields are the entry's own with the
    spool id and reason added (EventSpool.set_aside); the reader looks only at its own."""
    recorded = shown(fields.get(b"problem"))
    try:
        event: EventRow | None = decode(fields)
        now = None
    except (EntryUnusable, EntryLater) as exc:
        event, now = None, shown(str(exc))
    return Unreadable(_as_bytes(entry_id), fields.get(b"spool_id"), recorded, event, now)


async def unreadable_page(
    spool: EventSpool, after: bytes | None, count: int = REPLAY_PAGE
) -> list[Unreadable]:
    """The unreadable entries after `after` (from the first: None), oldest first."""
    start = b"-" if after is None else b"(" + after
    async with _away("Redis"), asyncio.timeout(REDIS_TIMEOUT_S):
        items: Any = await spool.redis.xrange(spool.unreadable_key, start, b"+", count=count)
    return [read_unreadable(i, f) for i, f in items or []]


async def counts(spool: EventSpool) -> SpoolCounts:
    """The spool's entries, those claimed, and the unreadable ones by reason (all of them read:
    the stream is bounded at UNREADABLE_MAX)."""
    async with _away("Redis"), asyncio.timeout(REDIS_TIMEOUT_S):
        length = int(await spool.redis.xlen(spool.key))
        try:
            pending = int((await spool.redis.xpending(spool.key, GROUP))["pending"])
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            pending = 0  # no writer ever read this spool
    problems: dict[str, int] = {}
    total = readable = 0
    after: bytes | None = None
    while page := await unreadable_page(spool, after):
        after = page[-1].entry_id
        for entry in page:
            total += 1
            readable += entry.problem_now is None
            problems[entry.problem] = problems.get(entry.problem, 0) + 1
    ordered = dict(sorted(problems.items(), key=lambda p: (-p[1], p[0])))
    return SpoolCounts(length, pending, total, readable, ordered)


async def replay_unreadable(
    spool: EventSpool,
    pool: asyncpg.Pool,
    alerts: BreachAlerts | None = None,
    progress: Callable[[Replayed], None] | None = None,
    page_size: int = REPLAY_PAGE,
) -> Replayed:
    """Read each unreadable entry again with this release's reader: the events it now reads
    are stored as the writer stores them (`ON CONFLICT (event_id) DO NOTHING`, a breach's
    alerts with its first store, one transaction a page) and only then deleted from the
    unreadable stream, so a replay that dies anywhere, or two at once, store each event once.
    Entries still unreadable (or that PostgreSQL refuses as data) stay where they are, with
    the reason they were set aside. `progress` hears after every page."""
    async with _away("Redis"), asyncio.timeout(REDIS_TIMEOUT_S):
        done = Replayed(total=int(await spool.redis.xlen(spool.unreadable_key)))
    after: bytes | None = None
    while page := await unreadable_page(spool, after, page_size):
        after = page[-1].entry_id
        readable = [e for e in page if e.event is not None]
        kept = [(e, e.problem_now or "") for e in page if e.event is None]
        stored, refused = await _store_replayed(pool, readable, alerts)
        kept += refused
        refused_ids = {r.entry_id for r, _ in refused}
        gone = [e.entry_id for e in readable if e.entry_id not in refused_ids]
        if gone:
            async with _away("Redis"), asyncio.timeout(REDIS_TIMEOUT_S):
                await spool.redis.xdel(spool.unreadable_key, *gone)
        done.read += len(page)
        done.written += stored
        done.already += len(gone) - stored
        done.kept += len(kept)
        for _, problem in kept:
            done.problems[problem] = done.problems.get(problem, 0) + 1
        if progress is not None:
            progress(done)
    return done


async def _store_replayed(
    pool: asyncpg.Pool, entries: Sequence[Unreadable], alerts: BreachAlerts | None
) -> tuple[int, list[tuple[Unreadable, str]]]:
    """Store the entries' events: how many were new, and the entries PostgreSQL refused as
    data, with why (a page refused goes in entry by entry, as the writer's batches do)."""
    events = [e.event for e in entries if e.event is not None]
    if not events:
        return 0, []
    try:
        async with _away("PostgreSQL"), pool.acquire() as conn:
            return len(await devices.insert_events(conn, events, alerts)), []
    except _REFUSED as exc:
        if len(entries) == 1:
            return 0, [(entries[0], shown(f"PostgreSQL refused it: {exc}"))]
    stored, refused = 0, list[tuple[Unreadable, str]]()
    for entry in entries:
        n, no = await _store_replayed(pool, [entry], alerts)
        stored, refused = stored + n, refused + no
    return stored, refused


_REFUSED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


class Away(Exception):
    """Redis or PostgreSQL stopped answering during a replay (`service` says which); what was
    stored so far stays stored, and a replay run again goes on from there."""

    def __init__(self, service: str, exc: BaseException) -> None:
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        self.detail = f"stopped answering ({type(exc).__name__}{': ' + text if text else ''})"
        super().__init__(f"{service} {self.detail}")
        self.service = service


@contextlib.asynccontextmanager
async def _away(service: str) -> AsyncIterator[None]:
    errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
    if service == "Redis":
        errors += (RedisError,)
    else:
        errors += (asyncpg.PostgresError, asyncpg.InterfaceError)
    try:
        yield
    except _REFUSED:
        raise  # data, not an outage: the caller's
    except errors as exc:
        raise Away(service, exc) from exc
