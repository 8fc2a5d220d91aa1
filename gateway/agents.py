"""Agent devices wired into the app: the device engine, the command dispatcher, the PostgreSQL
sink for events and location history, the MQTT client, the OsmAnd HTTP endpoint, and the
background tasks (fence catalog refresh, heartbeat sweep, history flush).

Location history is written in batches with COPY from a bounded queue: a slow or absent database
makes ingestion wait (and MQTT push back on the broker) rather than lose fixes or grow memory.
Events are written at once; past a short retry they wait in a bounded Redis stream (the spool,
gateway.event_spool; in memory while Redis is away too) that the background writer of any
instance stores when PostgreSQL is back, so a fix handler never waits out an outage for them and
a process that dies meanwhile loses none.
Fence and assignment changes bump `{prefix}geofences:gen` in Redis; every instance polls it and
swaps in a freshly loaded catalog.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

import asyncpg
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from redis.exceptions import RedisError

from channels.agents import topics
from channels.agents.fixes import FixLimits
from channels.agents.mqtt import MqttService, PublishFailed, Session
from channels.agents.osmand import parse_osmand
from channels.agents.owntracks_devices import OwnTracksDevices
from channels.agents.service import AgentChannel
from channels.http_body import read_within
from config.settings import DEVICES_RECIPIENT, Settings
from core import devices, geofences
from core.agent_transactions import DeviceGate
from core.crypto import FieldCipher
from core.devices import BreachAlerts, EventRow, LocationRow
from core.errors import AuthFailed, Conflict, FixRejected, NotFound, Unavailable
from core.pg import CONNECTION_LOST, through_outage
from core.tasks import raise_if_cancelled, stop_tasks
from gateway.api import HttpError, json_response
from gateway.event_spool import EventSpool, unspoolable
from gateway.keys import AGENTS, CIPHER, ENDPOINTS, METRICS, PG_POOL, REDIS, SETTINGS
from geofence.gating import GatePolicy
from geofence.tracker import TrackPolicy
from geofence.waypoints import device_commands, fence_id_of, waypoint
from menus.agent_commands import (
    CommandDispatcher,
    CommandExecutor,
    CoreCommandExecutor,
    CoreConfig,
)
from menus.device import DeviceEngine, EngineConfig, FixInput

log = logging.getLogger("gateway.agents")

CATALOG_POLL_S = 1.0
HISTORY_QUEUE_MAX = 50_000
# A COPY's rows are encoded on the event loop in one go, holding every other answer of this
# process (USSD included): a few hundred rows at a time, not thousands. A trickle waits
# HISTORY_FLUSH_S to become a batch; a backlog is written without pausing.
HISTORY_FLUSH_ROWS = 250
HISTORY_FLUSH_S = 0.1
HISTORY_RETRY_MAX_S = 30.0
# Events past the immediate retries (PostgreSQL away) wait in the spool, at most this many
# (~200 bytes each in Redis), and, with Redis away too, in memory, as many (~1 KB each): hours
# of breaches and fence crossings of a few thousand agents.
EVENT_BACKLOG_MAX = 10_000
EVENT_WRITE_ROWS = 250  # events per transaction (and spool batch) when deferred ones are written
EVENT_RETRY_FIRST_S = 0.5
EVENT_RETRY_MAX_S = 30.0
EVENT_FLUSH_S = 10.0  # how long a stop tries to save the memory backlog (spool or PostgreSQL)
# How often an idle writer looks at the spool (one XLEN): other instances' entries, and those
# of dead ones, are written within this of PostgreSQL coming back.
EVENT_SPOOL_POLL_S = 1.0
EVENT_SPOOL_FORGET_EVERY_S = 600.0  # how often an idle writer prunes the group's dead consumers
EVENT_PROBE_TIMEOUT_S = 5.0  # the `SELECT 1` before a spool batch is taken
# Redis away, as its client and our own timeouts say it.
_REDIS_AWAY: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
SWEEP_MAX_S = 30.0
MQTT_CONNECT_WAIT_S = 10.0
OSMAND_MAX_BODY = 8192
# Waypoint commands awaiting the broker's PUBACK at once, across all pushes: far below paho's
# queue (MAX_QUEUED_OUT) and its 16-bit message ids, which collide past ~65k un-acked.
PUSH_PUBLISHES_IN_FLIGHT = 200


def track_policy(s: Settings) -> TrackPolicy:
    return TrackPolicy(s.agent_exit_confirm_fixes, float(s.agent_exit_confirm_s))


def gate_policy(s: Settings) -> GatePolicy:
    return GatePolicy(
        float(s.agent_max_fix_age_s),
        float(s.agent_max_accuracy_m),
        float(s.agent_unknown_accuracy_m),
    )


def fix_limits(s: Settings) -> FixLimits:
    return FixLimits(float(s.agent_future_skew_s), float(s.agent_max_backlog_s))


class _Step(enum.Enum):
    """What one step of the events writer came to."""

    DONE = "done"  # it moved something on: the next step goes at once
    IDLE = "idle"  # nothing to do (or all claimed by live instances): wait for work
    BLOCKED = "blocked"  # PostgreSQL (or Redis) away: back off


class PgSink:
    """Events to PostgreSQL (a breach with its alerts to the admins, through the outbox, in
    the same transaction), at once or, while PostgreSQL is away, through the Redis spool
    (gateway.event_spool) or, with Redis away too, a bounded backlog in memory; location
    history through a bounded queue and COPY."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        alerts: BreachAlerts | None = None,
        spool: EventSpool | None = None,
    ) -> None:
        self.pool = pool
        self.alerts = alerts
        self.spool = spool
        self.queue: asyncio.Queue[LocationRow] = asyncio.Queue(HISTORY_QUEUE_MAX)
        self.written = 0
        self.refused = 0  # history rows the table refused as data, dropped
        self._held: list[LocationRow] = []  # taken off the queue, not yet written
        # Events deferred while Redis was away too, oldest first, and the batch taken from its
        # front that is being moved (to the spool or PostgreSQL) until it is stored: outside
        # the deque, so a full backlog's drops never take it, nor count it.
        self.backlog: collections.deque[EventRow] = collections.deque()
        self._memory_held: list[EventRow] = []
        self._events_waiting = asyncio.Event()
        # The batch taken from the spool and being written, its entries, and entries whose
        # events are stored but not yet acknowledged (Redis went away in between).
        self._spool_held: list[EventRow] = []
        self._spool_ids: list[bytes] = []
        self._spool_acks: list[bytes] = []
        # The last entry this process added, while it may still be in the stream: until it is
        # gone, new events go behind it, so one agent's events keep their order.
        self._spool_last: bytes | None = None
        self._forgot_at = 0.0
        self._deferrals = 0  # `_defer` calls under way
        self.spool_length = 0  # entries in the spool, as this process last saw
        self.events_deferred = 0  # events put in the spool or the memory backlog
        self.events_spooled = 0  # events put in the spool (from memory too)
        self.events_dropped = 0  # events a full backlog or spool let go
        # Events the table refused as data, or the spool could not hold while PostgreSQL was
        # away: dropped.
        self.events_refused = 0
        self.events_unreadable = 0  # spool entries no event could be read from, set aside
        self.events_written = 0  # deferred events the writer stored (or found stored)

    @property
    def events_pending(self) -> int:
        """Events only this process holds (in memory: lost if it dies)."""
        return len(self._memory_held) + len(self.backlog)

    @property
    def _in_memory(self) -> bool:
        return bool(self._memory_held or self.backlog)

    @property
    def _deferring(self) -> bool:
        # `_deferrals`: a first deferral still waiting on its XADD has no entry yet, and an
        # event written directly meanwhile would be stored ahead of it.
        return self._in_memory or self._spool_last is not None or self._deferrals > 0

    @property
    def _retry_max_s(self) -> float:
        # A held spool batch's claim is refreshed at every try: tries closer than its idle
        # time, or a live writer's batch would be taken over.
        if self.spool is None:
            return EVENT_RETRY_MAX_S
        return min(EVENT_RETRY_MAX_S, self.spool.claim_idle_s / 3)

    async def record_events(self, events: Sequence[EventRow]) -> int:
        """Store `events`, or defer them; returns how many were deferred (0, or all but
        those the spool cannot hold, see `_defer`).

        Tried again at once when the connection is lost (core.pg.through_outage, ~1.5 s): the
        events already happened (the device state in Redis moved on) and a pooled connection
        that died idle fails its next use while PostgreSQL is up. Past those retries they go to
        the spool (Redis), or with Redis away too to the memory backlog, which `run_events`
        writes when PostgreSQL is back; while either holds any of this process's events,
        later ones queue behind them without a try (in order, and without costing the caller,
        a fix handler, the retries again). Each try is idempotent (EventRow.event_id): an
        insert whose COMMIT answer was lost stores nothing twice when tried again."""
        if not events:
            return 0
        if not self._deferring:
            try:
                await through_outage(lambda: self._insert_events(events), what="agent events")
                return 0
            except (*CONNECTION_LOST, asyncpg.PostgresError) as exc:
                log.warning(
                    "agent events deferred: PostgreSQL unreachable (%s)",
                    type(exc).__name__,
                    extra={"events": len(events)},
                )
        return await self._defer(events)

    async def _defer(self, events: Sequence[EventRow]) -> int:
        self._deferrals += 1
        try:
            return await self._defer_now(events)
        finally:
            self._deferrals -= 1

    async def _defer_now(self, events: Sequence[EventRow]) -> int:
        """To the spool, unless Redis is away too or the memory backlog holds events (the
        new ones go behind them); how many were deferred. An event the spool cannot hold
        is written at once or dropped (`_write_unspoolable`): it would block the others."""
        if self.spool is not None:
            problems = [(e, unspoolable(e)) for e in events]
            if any(p is not None for _, p in problems):
                for event, problem in problems:
                    if problem is not None:
                        await self._write_unspoolable(event, problem)
                events = [e for e, p in problems if p is None]
                if not events:
                    return 0
        self.events_deferred += len(events)
        self._events_waiting.set()
        if self.spool is not None and not self._in_memory:
            try:
                await self._spool_add(events)
                return len(events)
            except _REDIS_AWAY as exc:
                log.warning(
                    "agent events kept in memory: Redis unreachable too (%s)",
                    type(exc).__name__,
                    extra={"events": len(events)},
                )
        self._keep(events)
        return len(events)

    async def _write_unspoolable(self, event: EventRow, problem: str) -> None:
        """One try, bounded (a fix handler waits): PostgreSQL may well be back while later
        events still queue behind earlier ones. Not stored, it is dropped, counted as refused."""
        try:
            async with asyncio.timeout(EVENT_PROBE_TIMEOUT_S):
                await self._insert_events([event])
        except Exception as exc:
            self.events_refused += 1
            log.error(
                "agent event the spool cannot hold, and PostgreSQL did not take; dropped",
                extra={"agent": event.agent_code, "problem": problem, "error": repr(exc)[:200]},
            )
            return
        self.events_written += 1

    async def _spool_add(self, events: Sequence[EventRow]) -> None:
        assert self.spool is not None
        added = await self.spool.add(events, EVENT_BACKLOG_MAX)
        self._spool_last = added.last_id
        self.spool_length = added.length
        self.events_spooled += len(events)
        if added.trimmed:
            self.events_dropped += added.trimmed
            log.error(
                "agent event spool full; oldest events dropped",
                extra={"dropped": added.trimmed, "dropped_total": self.events_dropped},
            )

    def _keep(self, events: Sequence[EventRow]) -> None:
        """Append to the memory backlog; past EVENT_BACKLOG_MAX the oldest waiting events go
        (not the batch being moved: the memory holds at most EVENT_WRITE_ROWS more).
        The newest are kept because they say where the agents are now: a breach alert from
        hours ago that nobody could act on matters less than the one happening."""
        self.backlog.extend(events)
        over = len(self.backlog) - EVENT_BACKLOG_MAX
        if over > 0:
            for _ in range(over):
                self.backlog.popleft()
            self.events_dropped += over
            log.error(
                "agent event backlog full; oldest events dropped",
                extra={"dropped": over, "dropped_total": self.events_dropped},
            )

    async def _insert_events(self, events: Sequence[EventRow]) -> None:
        stored = False
        try:
            async with self.pool.acquire() as conn:
                await devices.insert_events(conn, events, self.alerts)
                stored = True
        except CONNECTION_LOST:
            # Once stored, only the pool's reset of the connection failed (asyncpg raises it
            # out of the `async with`): not a reason to store the events again.
            if not stored:
                raise

    async def run_events(self) -> None:
        """Write what was deferred, oldest first, in batches of at most EVENT_WRITE_ROWS: the
        memory backlog into the spool whenever Redis answers, a spool batch this process
        holds, the memory backlog into PostgreSQL (Redis away), then the spool's entries, this
        process's and those of any other instance, live or dead. Backs off while PostgreSQL
        is away; polls the spool every EVENT_SPOOL_POLL_S while there is nothing to do."""
        delay = EVENT_RETRY_FIRST_S
        while True:
            step = await self._events_step(take=True)
            if step is _Step.DONE:
                delay = EVENT_RETRY_FIRST_S
            elif step is _Step.IDLE:
                delay = EVENT_RETRY_FIRST_S
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(EVENT_SPOOL_POLL_S):
                        await self._events_waiting.wait()
                self._events_waiting.clear()
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)

    async def _events_step(self, *, take: bool) -> _Step:
        """One move of the writer; `take`: new entries may be taken from the spool. Any
        failure is a BLOCKED step: raised out of here it would end `run_events` for good."""
        try:
            return await self._next_step(take=take)
        except _REDIS_AWAY as exc:  # expected while it is away: no traceback at every step
            raise_if_cancelled()
            log.warning("agent events writer: Redis unreachable (%s)", type(exc).__name__)
            return _Step.BLOCKED
        except Exception:
            raise_if_cancelled()
            log.exception("agent events writer: step failed; retrying")
            return _Step.BLOCKED

    async def _next_step(self, *, take: bool) -> _Step:
        if self._spool_acks:
            await self._ack()
            return _Step.DONE
        # Memory into the spool as soon as Redis answers, before a held batch is tried: that
        # batch waits for PostgreSQL, and behind it the memory (and every event deferred
        # after it, see `_defer`) would stay in this process for the whole outage.
        if self._in_memory and await self._memory_to_spool():
            return _Step.DONE
        if self._spool_held:
            return await self._write_spool_batch()
        if self._in_memory:
            return await self._memory_to_postgres()
        return await self._take_from_spool() if take else _Step.IDLE

    async def _ack(self) -> None:
        assert self.spool is not None
        await self.spool.done(self._spool_acks)
        self._spool_acks = []

    async def _write_spool_batch(self) -> _Step:
        assert self.spool is not None
        with contextlib.suppress(*_REDIS_AWAY):  # Redis away: the claim simply ages
            await self.spool.keep(self._spool_ids)
        if not await self._write_events(self._spool_held):
            return _Step.BLOCKED
        self._spool_acks, self._spool_ids = self._spool_ids, []
        await self._ack()
        return _Step.DONE

    async def _memory_to_spool(self) -> bool:
        """The memory backlog into the spool, when Redis answers (it is then as safe as any
        deferred event, and keeps its place behind this process's earlier entries): whether
        it went. Nothing leaves the backlog before it is stored."""
        if self.spool is None:
            return False
        try:
            while self._in_memory:
                self._hold_memory()
                await self._spool_add(self._memory_held)
                self._memory_held = []
        except _REDIS_AWAY:
            return False
        return True

    async def _memory_to_postgres(self) -> _Step:
        """A batch of the memory backlog into PostgreSQL (Redis away)."""
        self._hold_memory()
        # Loses each event as it is stored (or refused): a later try writes only the rest.
        done = await self._write_events(self._memory_held)
        return _Step.DONE if done else _Step.BLOCKED

    def _hold_memory(self) -> None:
        if not self._memory_held:
            count = min(EVENT_WRITE_ROWS, len(self.backlog))
            self._memory_held = [self.backlog.popleft() for _ in range(count)]

    async def _take_from_spool(self) -> _Step:
        """A batch from the spool, once PostgreSQL answers (taken while it is away, entries
        would only sit claimed); unusable entries set aside at once."""
        if self.spool is None:
            return _Step.IDLE
        # Cleared only if no event was spooled meanwhile (a handler's XADD may land while
        # this step waits on Redis): that one is still ahead of the next direct write.
        last = self._spool_last
        self.spool_length = await self.spool.length()
        if self.spool_length == 0:
            if self._spool_last == last:
                self._spool_last = None
            if time.monotonic() - self._forgot_at > EVENT_SPOOL_FORGET_EVERY_S:
                self._forgot_at = time.monotonic()
                await self.spool.forget_consumers()
            return _Step.IDLE
        gone = last is not None and not await self.spool.holds_up_to(last)
        if gone and self._spool_last == last:
            self._spool_last = None
        if not await self._postgres_answers():
            return _Step.BLOCKED
        entries = await self.spool.take(EVENT_WRITE_ROWS)
        good = [e for e in entries if e.event is not None]
        self._spool_held = [e.event for e in good if e.event is not None]
        self._spool_ids = [e.entry_id for e in good]
        later = [e for e in entries if e.later]
        if later:
            # Left pending, claimed by this consumer: a newer instance takes them over once
            # idle (CLAIM_IDLE_S), this one skips them and writes the rest.
            log.warning(
                "agent event spool: entries of a later format left for a newer release",
                extra={"entries": len(later), "problems": sorted({e.problem or "" for e in later})},
            )
        unusable = [e for e in entries if e.event is None and not e.later]
        if unusable:
            await self.spool.set_aside(unusable)
            self.events_unreadable += len(unusable)
            log.error(
                "agent event spool: unreadable entries set aside",
                extra={
                    "entries": len(unusable),
                    "problems": sorted({e.problem or "" for e in unusable}),
                    "stream": self.spool.unreadable_key,
                },
            )
        return _Step.DONE if entries else _Step.IDLE

    async def _postgres_answers(self) -> bool:
        try:
            async with self.pool.acquire(timeout=EVENT_PROBE_TIMEOUT_S) as conn:
                await conn.fetchval("SELECT 1", timeout=EVENT_PROBE_TIMEOUT_S)
        except Exception:
            return False
        return True

    async def _write_events(self, events: list[EventRow]) -> bool:
        """Insert `events`, one try (the caller backs off and tries again): True when all went
        in. Every try is idempotent, so a try interrupted anywhere is simply made again. A
        batch the table refuses as data goes in event by event, a refused one dropped: it
        would otherwise stall every later event. `events` loses each event as it is stored or
        dropped."""
        single = False
        while events:
            batch = events[:1] if single else events
            try:
                await self._insert_events(batch)
                self.events_written += len(batch)
                del events[: len(batch)]
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                if single:
                    self.events_refused += 1
                    log.error(
                        "agent event refused; dropped",
                        extra={"agent": events[0].agent_code, "error": str(exc)[:200]},
                    )
                    del events[0]
                single = True
            except Exception:
                # PostgreSQL away (core.pg.CONNECTION_LOST, a PostgresError) or anything else.
                raise_if_cancelled()
                log.exception("agent events write failed; retrying", extra={"events": len(events)})
                return False
        return True

    async def flush_events(self, timeout_s: float = EVENT_FLUSH_S) -> bool:
        """At stop, after `run_events`: the spool batch this process holds into PostgreSQL
        (one try: not written, it stays claimed in the spool, and another instance, or this
        one restarted, takes it over after the claim's idle time), and the memory backlog into
        the spool or PostgreSQL, for at most `timeout_s` (both may still be away, and a stop
        must end). True when no event is left in memory; what is left is logged at error and
        lost with the process."""
        deadline = time.monotonic() + timeout_s
        delay = EVENT_RETRY_FIRST_S
        while self._spool_acks or self._spool_held or self._in_memory:
            if await self._events_step(take=False) is not _Step.BLOCKED:
                continue
            # A spool batch is safe where it is: one try, and the stop goes on.
            if not self._in_memory or time.monotonic() + delay > deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, EVENT_RETRY_MAX_S)
        if self._spool_held or self._spool_acks:
            log.warning(
                "agent events left in the spool at stop; another instance writes them",
                extra={"events": len(self._spool_held) + len(self._spool_acks)},
            )
        elif self.spool is not None:
            with contextlib.suppress(Exception):  # the consumer is only bookkeeping
                await self.spool.forget_consumers()
        if self._in_memory:
            log.error(
                "agent events not written at stop; lost", extra={"events": self.events_pending}
            )
            return False
        return True

    async def record_locations(self, rows: Sequence[LocationRow]) -> None:
        for row in rows:
            await self.queue.put(row)  # waits when the database falls behind

    def _take(self, first: LocationRow | None = None) -> list[LocationRow]:
        rows = [first] if first is not None else []
        while len(rows) < HISTORY_FLUSH_ROWS and not self.queue.empty():
            rows.append(self.queue.get_nowait())
        return rows

    async def _write(self, rows: list[LocationRow]) -> None:
        """COPY `rows`, again until it goes through. `rows` is emptied as soon as the COPY is
        answered, before the connection goes back to the pool: the pool's reset may still fail
        there (asyncpg raises it out of the `async with`), or a stop land there, and the rows
        must not be written again for either."""
        delay = 0.5
        single = False  # after a refused COPY: one row per COPY, refused rows dropped
        while rows:
            batch = rows[:1] if single else rows
            try:
                async with self.pool.acquire() as conn:
                    self.written += await devices.insert_locations(conn, batch)
                    del rows[: len(batch)]
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                # A row the table refuses would fail its COPY for ever and stall every agent's
                # history behind it: the batch goes in row by row, and a refused row is dropped.
                if single:
                    self.refused += 1
                    log.error(
                        "location history row refused; dropped",
                        extra={"agent": rows[0].agent_code, "error": str(exc)[:200]},
                    )
                    del rows[0]
                single = True
            except (*CONNECTION_LOST, asyncpg.PostgresError):
                # All of core.pg.CONNECTION_LOST (asyncpg's InterfaceError and
                # InternalClientError too): one raised out of here would end `run` for good,
                # and ingestion would block once the queue is full.
                raise_if_cancelled()
                if not rows:
                    return
                log.exception("location history write failed; retrying", extra={"rows": len(rows)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, HISTORY_RETRY_MAX_S)

    async def run(self) -> None:
        """Write the queue in COPYs of at most HISTORY_FLUSH_ROWS. Rows taken off the queue
        are held until written, so a stop in between leaves them to `flush`."""
        while True:
            self._held = [await self.queue.get()]
            if self.queue.qsize() < HISTORY_FLUSH_ROWS - 1:
                await asyncio.sleep(HISTORY_FLUSH_S)  # gather a batch: one COPY for many fixes
            self._held = self._take(self._held[0])
            await self._write(self._held)
            self._held = []

    async def flush(self) -> None:
        """At stop, after `run` and `run_events`: the deferred events first (bounded in time,
        `flush_events`), then the history rows `run` held and everything queued. Rows whose
        COPY the stop interrupted are written again (the history may then hold them twice: a
        copy of a fix, never a lost one); events never twice (EventRow.event_id)."""
        await self.flush_events()
        held, self._held = self._held, []
        if held:
            await self._write(held)
        while not self.queue.empty():
            await self._write(self._take())


@dataclass(frozen=True, slots=True)
class WaypointPush:
    """One agent's push: the devices whose broker took the command, and those it did not
    (device, reason), which are retried on their next sighting."""

    agent_code: str
    devices: list[str]
    waypoints: list[dict[str, object]]
    failed: list[tuple[str, str]] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)  # fence ids taken off some device


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """The commands for one device, in order, and the fence ids it holds once they went
    through."""

    commands: list[bytes]
    holds: frozenset[int]
    removed: list[int]


def plan_devices(
    waypoints: Sequence[dict[str, object]],
    devices_: Sequence[str],
    sent: dict[str, frozenset[int]],
) -> dict[str, DevicePlan]:
    """Each device's commands: the zones, after a clear and with tombstones when the device
    may still hold zones it lost (geofence.waypoints.device_commands)."""
    holds = frozenset(fence_id_of(w) for w in waypoints)
    plans: dict[str, DevicePlan] = {}
    encoded: dict[tuple[int, ...], list[bytes]] = {}
    for device in devices_:
        commands, removed = device_commands(waypoints, sent.get(device))
        key = tuple(removed)
        if key not in encoded:  # devices in the same state share the encoded bytes
            encoded[key] = [_encode(c) for c in commands]
        plans[device] = DevicePlan(encoded[key], holds, removed)
    return plans


@dataclass(frozen=True, slots=True)
class QueuedPushes:
    """Pushes handed to the background after a change of zones."""

    agents: int
    devices: int


@dataclass
class AgentRuntime:
    settings: Settings
    redis: Redis
    engine: DeviceEngine
    dispatcher: CommandDispatcher
    channel: AgentChannel
    sink: PgSink
    pool: asyncpg.Pool
    owntracks: OwnTracksDevices
    mqtt: MqttService | None = None
    catalog_gen: bytes | str | None = None
    push_slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(PUSH_PUBLISHES_IN_FLIGHT)
    )
    # Each queued fan-out and the devices it has not reached yet.
    push_tasks: dict[asyncio.Task[None], dict[str, list[str]]] = field(default_factory=dict)

    @property
    def gen_key(self) -> str:
        return f"{self.settings.redis_prefix}geofences:gen"

    async def reload_catalog(self) -> None:
        async with self.pool.acquire() as conn:
            self.engine.catalog = await geofences.load_catalog(conn, self.engine.catalog)

    async def fences_changed(self) -> None:
        """Tell every instance (this one at once) that fences or assignments changed."""
        await self.redis.incr(self.gen_key)
        await self.reload_catalog()

    async def _publish_one(self, code: str, device: str, payload: bytes) -> str | None:
        """Publish to one device under the shared bound; None, or why the broker did not
        take it."""
        async with self.push_slots:
            mqtt = self.mqtt
            if mqtt is None:
                return "client not running"
            try:
                await mqtt.publish_acked(topics.owntracks_cmd_topic(code, device), payload)
            except PublishFailed as exc:
                return exc.reason
        return None

    async def _deliver(self, code: str, device: str, plan: DevicePlan) -> str | None:
        """One device's commands in order, each after the previous one's acknowledgement;
        None, or why the broker did not take one."""
        for payload in plan.commands:
            reason = await self._publish_one(code, device, payload)
            if reason is not None:
                return reason
        return None

    async def _send(
        self, code: str, plans: dict[str, DevicePlan]
    ) -> tuple[list[str], list[tuple[str, str]]]:
        """Each device's commands, all devices at once. What the taken ones now hold is
        recorded; the failed ones are forgotten by the registry, so each one's next report is
        a first sighting, which pushes again."""
        devices_ = list(plans)
        reasons = await asyncio.gather(*(self._deliver(code, d, plans[d]) for d in devices_))
        done = [d for d, r in zip(devices_, reasons, strict=True) if r is None]
        failed = [(d, r) for d, r in zip(devices_, reasons, strict=True) if r is not None]
        if done:
            await self.owntracks.record_sent(code, {d: plans[d].holds for d in done})
        if failed:
            log.warning(
                "waypoint push not taken; retried on the device's next report",
                extra={"agent": code, "failed": dict(failed)},
            )
            await self.owntracks.forget(code, [d for d, _ in failed])
        return done, failed

    async def push_waypoints(
        self, agent_code: str, only: Sequence[str] | None = None
    ) -> WaypointPush:
        """Send the agent's zones as an OwnTracks `setWaypoints` command to each OwnTracks
        device the gateway has seen for it, on `owntracks/{code}/{device}/cmd`, QoS 1, not
        retained, all devices at once, each waiting for the broker's acknowledgement; a device
        that may still hold zones it lost gets `clearWaypoints` first and tombstones for them
        (geofence.waypoints). AgentNotFound; Conflict NO_GEOFENCE (no zones, none to remove)
        or NO_OWNTRACKS_DEVICE; Unavailable MQTT_UNAVAILABLE when the MQTT client is not
        running. A device whose publish failed is in `failed` and gets the zones at its next
        report.

        Not retained: a command is an instruction, not state (a retained one would be re-run by
        every later subscriber, long after the zones changed again). An app with a persistent
        session (OwnTracks `cleanSession` false) gets the QoS 1 command from the broker when it
        reconnects; any other phone gets its zones when first seen (`greet_device`), at the next
        change, or from POST /api/v1/agents/{code}/waypoints/push."""
        async with self.pool.acquire() as conn:
            stored = await geofences.agent_fences(conn, agent_code)  # AgentNotFound
        code = agent_code  # as core.agents.check_code keeps it (upper case)
        devices_ = await self.owntracks.devices(code)
        if only is not None:
            devices_ = [d for d in devices_ if d in only]
        sent = (await self.owntracks.sent_of([code]))[code]
        if not stored and not any(sent.get(d) for d in devices_):
            raise Conflict(f"Agent {code} has no geofence", code="NO_GEOFENCE", agent_code=code)
        if not devices_:
            raise Conflict(
                f"No OwnTracks device has reported for agent {code}",
                code="NO_OWNTRACKS_DEVICE",
                agent_code=code,
            )
        if self.mqtt is None:
            raise Unavailable("The MQTT client is not running", code="MQTT_UNAVAILABLE")
        waypoints = [waypoint(s.fence, s.name) for s in sorted(stored, key=lambda s: s.fence.id)]
        plans = plan_devices(waypoints, devices_, sent)
        done, failed = await self._send(code, plans)
        removed = sorted({i for p in plans.values() for i in p.removed})
        log.info("waypoints pushed", extra={"agent": code, "devices": len(done)})
        return WaypointPush(code, done, waypoints, failed, removed)

    async def queue_waypoint_pushes(self, agent_codes: Sequence[str]) -> QueuedPushes:
        """After a change of zones: push to each of these agents' known devices in the
        background, so the admin request that changed the zones answers in the same time for
        one agent or ten thousand. Costs the request one Redis round trip (the devices);
        what is queued is counted. Agents with no device are skipped (a phone reporting later
        is greeted with the zones of that moment)."""
        targets = await self.owntracks.devices_of(agent_codes)
        if not targets:
            return QueuedPushes(0, 0)
        pending = dict(targets)
        task = asyncio.create_task(self._fan_out(targets, pending), name="waypoint-pushes")
        self.push_tasks[task] = pending
        task.add_done_callback(lambda t: self.push_tasks.pop(t, None))
        return QueuedPushes(len(targets), sum(len(d) for d in targets.values()))

    async def _fan_out(self, targets: dict[str, list[str]], pending: dict[str, list[str]]) -> None:
        """Every target device's push, at most PUSH_PUBLISHES_IN_FLIGHT awaiting their
        acknowledgement at once; the fences come in one read and what the devices were sent
        in one Redis round trip, each waypoint is built once. An agent left with no zones
        still has them removed from its devices. A failure stays with its device; devices not
        reached when the task is stopped (or the fences could not be read) are forgotten, so
        their next report brings the zones. `pending` loses each agent once it is done."""
        try:
            async with self.pool.acquire() as conn:
                held = await geofences.fences_of_agents(conn, list(targets))
            sent = await self.owntracks.sent_of(list(targets))
            built: dict[int, dict[str, object]] = {}
            for stored in {s.fence.id: s for fences in held.values() for s in fences}.values():
                built[stored.fence.id] = waypoint(stored.fence, stored.name)

            async def one(code: str) -> None:
                try:
                    waypoints = [built[s.fence.id] for s in held.get(code, [])]
                    plans = plan_devices(waypoints, targets[code], sent.get(code, {}))
                    if waypoints or any(p.removed for p in plans.values()):
                        await self._send(code, plans)
                    pending.pop(code, None)
                except Exception:  # this agent's devices stay pending; the others go on
                    log.exception("waypoint push failed", extra={"agent": code})

            await asyncio.gather(*(one(code) for code in targets))
            log.info("waypoint pushes done", extra={"agents": len(targets)})
        except Exception:
            log.exception("waypoint pushes failed", extra={"agents": len(pending)})
        finally:
            await self._forget_unreached(pending)

    async def _forget_unreached(self, pending: dict[str, list[str]]) -> None:
        try:
            while pending:
                code, devices_ = pending.popitem()
                await self.owntracks.forget(code, devices_)
        except Exception:
            log.exception("forgetting unreached devices failed", extra={"agents": len(pending)})

    async def stop_pushes(self) -> None:
        """Stop the queued pushes (at shutdown); their unreached devices are forgotten, also
        those of a fan-out cancelled before it began."""
        queued = dict(self.push_tasks)
        await stop_tasks(list(queued), "waypoint pushes")
        for pending in queued.values():
            await self._forget_unreached(pending)

    async def greet_device(self, agent_code: str, device: str) -> None:
        """A device the gateway had not seen gets the agent's zones at once (if any)."""
        try:
            await self.push_waypoints(agent_code, only=[device])
        except (Conflict, NotFound, Unavailable):
            return
        except Exception:
            log.exception("waypoint push to a new device failed", extra={"agent": agent_code})

    async def watch_catalog(self) -> None:
        while True:
            await asyncio.sleep(CATALOG_POLL_S)
            try:
                gen = await self.redis.get(self.gen_key)
                if gen != self.catalog_gen:
                    await self.reload_catalog()
                    self.catalog_gen = gen
            except Exception:
                log.exception("geofence catalog refresh failed")

    async def sweep_heartbeats(self) -> None:
        interval = min(SWEEP_MAX_S, self.settings.agent_heartbeat_timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                result = await self.engine.expire()
                if result.events:
                    self.channel.announce(result.events)
                    self.channel.stats["events_deferred"] += await self.sink.record_events(
                        result.events
                    )
            except Exception:
                log.exception("heartbeat sweep failed")


def _encode(command: dict[str, object]) -> bytes:
    return json.dumps(command, separators=(",", ":")).encode()


def spool_key(prefix: str) -> str:
    """The event spool's stream (its hash tag keeps the unreadable stream beside it)."""
    return f"{prefix}agents:events:{{spool}}"


def breach_alerts(settings: Settings) -> BreachAlerts | None:
    """Who hears of a stored breach (AGENT_ALERT_*), or None: nobody."""
    if settings.agent_alert_channel is None:
        return None
    recipients = settings.agent_alert_recipients
    return BreachAlerts(
        settings.agent_alert_channel,
        tuple(r for r in recipients if r != DEVICES_RECIPIENT),
        settings.agent_alert_language,
        devices=DEVICES_RECIPIENT in recipients,
    )


def build_runtime(
    settings: Settings,
    redis: Redis,
    pool: asyncpg.Pool,
    cipher: FieldCipher,
    executor: CommandExecutor | None = None,
) -> AgentRuntime:
    """The agent runtime; commands run through the banking core (core.agent_transactions,
    gated by this engine's device state) unless another `executor` is given."""
    config = EngineConfig(
        settings.redis_prefix,
        track_policy(settings),
        float(settings.agent_unknown_accuracy_m),
        float(settings.agent_heartbeat_timeout_s),
    )
    from geofence.index import FenceCatalog

    engine = DeviceEngine(redis, config, FenceCatalog.build([], {}))
    if executor is None:
        core_config = CoreConfig(
            settings.currency, settings.default_country_code, settings.pin_bcrypt_rounds
        )
        gate = DeviceGate(engine, gate_policy(settings))
        executor = CoreCommandExecutor(pool, cipher, gate, core_config)
    dispatcher = CommandDispatcher(redis, settings.redis_prefix, executor)
    alerts = breach_alerts(settings)
    sink = PgSink(pool, alerts, EventSpool(redis, spool_key(settings.redis_prefix)))
    owntracks = OwnTracksDevices(redis, settings.redis_prefix)
    channel = AgentChannel(engine, dispatcher, sink, fix_limits(settings), owntracks=owntracks)
    runtime = AgentRuntime(settings, redis, engine, dispatcher, channel, sink, pool, owntracks)
    channel.on_new_owntracks = runtime.greet_device
    return runtime


@contextlib.asynccontextmanager
async def running(runtime: AgentRuntime) -> AsyncIterator[AgentRuntime]:
    """The runtime's background tasks, live for the context; deferred events held in memory
    and the history flushed at the end."""
    try:
        runtime.catalog_gen = await runtime.redis.get(runtime.gen_key)
    except RedisError:
        log.warning("redis unavailable at start; the fence catalog refreshes when it is back")
    await runtime.reload_catalog()
    tasks = [
        asyncio.create_task(runtime.sink.run(), name="agents-history"),
        asyncio.create_task(runtime.sink.run_events(), name="agents-events"),
        asyncio.create_task(runtime.watch_catalog(), name="agents-catalog"),
        asyncio.create_task(runtime.sweep_heartbeats(), name="agents-heartbeat"),
    ]
    try:
        yield runtime
    finally:
        await stop_tasks(tasks, "agent runtime tasks")
        await runtime.stop_pushes()
        await runtime.channel.stop_background()
        await runtime.sink.flush()


@contextlib.asynccontextmanager
async def connected(runtime: AgentRuntime, url: str) -> AsyncIterator[MqttService]:
    """The MQTT client feeding the channel, live for the context."""
    settings = runtime.settings
    group = settings.mqtt_share_group
    session = None
    if settings.mqtt_client_id is not None:
        session = Session(settings.mqtt_client_id, settings.mqtt_session_expiry_s)
    service = MqttService(
        url,
        runtime.channel.handle,
        subscriptions=lambda mqtt5: topics.subscriptions(group if mqtt5 else None),
        client_id_prefix=f"gw-{group}",
        session=session,
    )
    await service.start()
    runtime.channel.mqtt = runtime.mqtt = service
    try:
        yield service
    finally:
        await runtime.stop_pushes()  # before the client goes: unreached devices are forgotten
        await runtime.channel.stop_background()
        runtime.channel.mqtt = runtime.mqtt = None
        await service.stop()


async def agents_ctx(app: web.Application) -> AsyncIterator[None]:
    runtime = build_runtime(app[SETTINGS], app[REDIS], app[PG_POOL], app[CIPHER])
    app[AGENTS] = runtime
    collector = AgentCollector(runtime)
    app[METRICS].registry.register(collector)
    try:
        async with running(runtime):
            yield
    finally:
        app[METRICS].registry.unregister(collector)


# channel.stats key -> (metric name, help); "rejected:<code>" keys go to one family by code.
_AGENT_COUNTERS = {
    "accepted": ("gateway_agent_fixes_accepted", "fixes that moved a device on"),
    "out_of_order": (
        "gateway_agent_fixes_out_of_order",
        "fixes no newer than the device's last accepted one (late, or sent again)",
    ),
    "ignored": ("gateway_agent_messages_ignored", "messages on no topic of ours, or snapshots"),
    "commands": ("gateway_agent_commands", "commands handled (answered on .../reply)"),
    "ingest_failed": (
        "gateway_agent_ingest_failures",
        "batches whose fixes were lost (Redis away) or whose events could not be stored or "
        "deferred (an error other than PostgreSQL's absence)",
    ),
    "events_deferred": (
        "gateway_agent_events_deferred",
        "events deferred past the immediate retries (PostgreSQL away): to the spool, or to "
        "memory with Redis away too",
    ),
    "unpublished": ("gateway_agent_replies_unpublished", "replies the broker did not take"),
}


class AgentCollector(Collector):
    """Agent devices and the MQTT client for Prometheus, read at scrape time: what came in and
    what became of it, and whether the broker link is up and keeping pace."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        stats = self.runtime.channel.stats
        for key, (name, doc) in _AGENT_COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=stats.get(key, 0))
        rejected = CounterMetricFamily(
            "gateway_agent_messages_rejected",
            "fixes and messages refused, by code",
            labels=("code",),
        )
        for key, count in sorted(stats.items()):
            if key.startswith("rejected:"):
                rejected.add_metric([key.removeprefix("rejected:")], count)
        yield rejected
        sink = self.runtime.sink
        yield CounterMetricFamily(
            "gateway_agent_history_refused",
            "location history rows PostgreSQL refused as data, dropped",
            value=sink.refused,
        )
        yield GaugeMetricFamily(
            "gateway_agent_events_backlog",
            "events waiting for PostgreSQL in this process's memory, Redis away too (lost if "
            "the process dies)",
            value=sink.events_pending,
        )
        yield GaugeMetricFamily(
            "gateway_agent_events_spooled",
            "events waiting for PostgreSQL in the Redis spool, all instances' (as this one "
            "last saw)",
            value=sink.spool_length,
        )
        yield CounterMetricFamily(
            "gateway_agent_events_dropped",
            "events dropped from a full spool or memory backlog (the oldest first)",
            value=sink.events_dropped,
        )
        yield CounterMetricFamily(
            "gateway_agent_events_written_late",
            "deferred events this instance's writer stored (or found stored)",
            value=sink.events_written,
        )
        yield CounterMetricFamily(
            "gateway_agent_events_unreadable",
            "spool entries no event could be read from (garbage), set aside",
            value=sink.events_unreadable,
        )
        yield CounterMetricFamily(
            "gateway_agent_events_refused",
            "events dropped as data: PostgreSQL refused them, or the spool could not hold them "
            "while PostgreSQL was away",
            value=sink.events_refused,
        )
        mqtt = self.runtime.mqtt
        if mqtt is None:
            return
        yield GaugeMetricFamily(
            "gateway_mqtt_connected",
            "1 while connected and subscribed",
            value=float(mqtt.subscribed),
        )
        yield CounterMetricFamily(
            "gateway_mqtt_connections", "CONNACKs (a reconnect adds one)", value=mqtt.connections
        )
        yield CounterMetricFamily(
            "gateway_mqtt_messages", "messages handed to the handler", value=mqtt.received
        )
        yield CounterMetricFamily(
            "gateway_mqtt_acknowledged",
            "messages acknowledged after handling (MQTT_CLIENT_ID set)",
            value=mqtt.acked,
        )
        yield GaugeMetricFamily(
            "gateway_mqtt_inbox",
            "messages taken from the broker, not yet handled",
            value=mqtt.pending,
        )


async def agents_mqtt_ctx(app: web.Application) -> AsyncIterator[None]:
    url = app[ENDPOINTS].mqtt_url
    if url is None:
        yield
        return
    async with connected(app[AGENTS], url):
        yield


# --- OsmAnd over HTTP ----------------------------------------------------------------------------


async def _osmand_params(request: web.Request) -> dict[str, str]:
    params = {k: v for k, v in request.query.items()}
    if request.method == "POST" and request.body_exists:
        if (request.content_length or 0) > OSMAND_MAX_BODY:
            raise HttpError(413, "PAYLOAD_TOO_LARGE", "The request body is too large")
        if request.content_type != "application/x-www-form-urlencoded":
            raise HttpError(400, "INVALID_CONTENT_TYPE", "Send the fields as a form or a query")
        try:
            form = await read_within(request.post(), request)
        except UnicodeDecodeError:  # aiohttp decodes the whole form strictly
            raise HttpError(400, "MALFORMED_FIX", "The form is not valid UTF-8") from None
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
    return params


async def osmand(request: web.Request) -> web.StreamResponse:
    """`GET` or `POST /agents/osmand`: one fix from Traccar Client (OsmAnd protocol)."""
    runtime = request.app[AGENTS]
    now = time.time()
    try:
        report = parse_osmand(await _osmand_params(request), now, runtime.channel.limits)
    except FixRejected as exc:
        if exc.error_code == "STALE_FIX":
            # Traccar Client retries anything but 200 forever, oldest first: a fix too old to
            # use would block every later one. It is acknowledged and not used.
            return json_response({"accepted": False, "reason": exc.error_code})
        raise HttpError(400, exc.error_code, exc.message) from None
    if not await devices.verify_device_token(runtime.pool, report.agent_code, report.token):
        raise AuthFailed("Unknown device or wrong token", code="INVALID_DEVICE_TOKEN")
    result = await runtime.channel.ingest([FixInput(report.agent_code, report.fix, now)])
    return json_response({"accepted": result.accepted == 1})


def add_agent_routes(app: web.Application) -> None:
    app.router.add_route("GET", "/agents/osmand", osmand)
    app.router.add_route("POST", "/agents/osmand", osmand)
