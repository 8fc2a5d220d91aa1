"""Agent devices as sessions: presence and zone state per agent in Redis, updated atomically.

Each agent's state is one versioned JSON record (`{version}|{json}`) under
`{prefix}agent:{code}`:

    {"presence": "online", "last_seen": 1767225600.0,
     "fix": {"lat": .., "lon": .., "ts": .., "acc": .., "mock": false, "src": "owntracks"},
     "decision": {"zone": "inside", "fence_id": 3, "fence_version": 2, ...},
     "zone": {"zone": "inside", "out_n": 0, "out_since": null, "breached": false, ...}}

MQTT 5 shared subscriptions hand one agent's fixes to whichever gateway instance is next, so two
instances can hold fixes of the same agent at once. A batch is read with one MGET, advanced in
memory, and written back with one Lua compare-and-set on the versions; an agent whose record
changed underneath is re-read and re-run (its events are only kept from the run that won), so
every enter / exit / breach / online / offline is emitted exactly once. A fix older than the last
accepted one is dropped: instances can deliver out of order.

Two shared `transitions` machines, built once per engine (never per message), interpret the
data: presence here (offline <-> online) and the zone tracker from `geofence.tracker`. The state
is plain JSON so it can move onto the shared session engine unchanged.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from transitions import Machine

from core.devices import EventRow, LocationRow
from geofence.decision import decide
from geofence.fix import Fix
from geofence.index import FenceCatalog
from geofence.tracker import TrackPolicy, ZoneTracker, initial_zone_state

STATE_TTL_S = 30 * 24 * 3600
MAX_CAS_ROUNDS = 32
CAS_BACKOFF_S = 0.002  # times the round, jittered: contenders stop colliding
MAX_BATCH = 1000
EXPIRE_BATCH = 500

PRESENCE_STATES = ["offline", "online"]
PRESENCE_TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "seen", "source": "offline", "dest": "online", "after": "emit_online"},
    {"trigger": "seen", "source": "online", "dest": None},
    {"trigger": "gone", "source": "online", "dest": "offline", "after": "emit_offline"},
    {"trigger": "gone", "source": "offline", "dest": None},
]

# KEYS: the agents' state keys, then the last-seen sorted set. ARGV[1]: ttl; ARGV[2]: one record
# per key, separated by \x1e, each "expected version \x1f new value \x1f last seen ('' = forget)
# \x1f agent code" (JSON escapes control characters, so the separators never occur in a value).
# One packed argument instead of four per agent: redis-py packs each argument separately.
_CAS = r"""
local n = #KEYS - 1
local ttl = tonumber(ARGV[1])
local out = {}
local i = 0
for rec in string.gmatch(ARGV[2], '([^\30]+)') do
  i = i + 1
  local want, value, seen, code = string.match(rec, '^(%d+)\31([^\31]*)\31([^\31]*)\31(.*)$')
  local cur = redis.call('GET', KEYS[i])
  local v = 0
  if cur then v = tonumber(string.match(cur, '^(%d+)|')) or 0 end
  if v == tonumber(want) then
    redis.call('SET', KEYS[i], value, 'EX', ttl)
    if seen == '' then
      redis.call('ZREM', KEYS[n + 1], code)
    else
      redis.call('ZADD', KEYS[n + 1], seen, code)
    end
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""


@dataclass(frozen=True, slots=True)
class FixInput:
    agent_code: str
    fix: Fix
    received_at: float


@dataclass(frozen=True, slots=True)
class PresenceInput:
    agent_code: str
    online: bool
    at: float
    reason: str = "status"


DeviceInput = FixInput | PresenceInput


@dataclass
class EngineResult:
    events: list[EventRow] = field(default_factory=list)
    locations: list[LocationRow] = field(default_factory=list)
    accepted: int = 0
    dropped_out_of_order: int = 0
    cas_retries: int = 0


def initial_state() -> dict[str, Any]:
    return {
        "presence": "offline",
        "last_seen": None,
        "fix": None,
        "decision": None,
        "zone": initial_zone_state(),
    }


def decode(raw: bytes | str | None) -> tuple[int, dict[str, Any]]:
    if raw is None:
        return 0, initial_state()
    text = raw.decode() if isinstance(raw, bytes) else raw
    version, _, body = text.partition("|")
    return int(version), json.loads(body)


class _Presence:
    state: str
    trigger: Any  # bound by the machine

    def __init__(self) -> None:
        self.emitted: list[str] = []

    def emit_online(self) -> None:
        self.emitted.append("online")

    def emit_offline(self) -> None:
        self.emitted.append("offline")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    prefix: str
    track: TrackPolicy = field(default_factory=TrackPolicy)
    unknown_accuracy_m: float = 30.0
    heartbeat_timeout_s: float = 600.0


class DeviceEngine:
    """Advances agents' device state. One per process (it owns the shared machines)."""

    def __init__(self, redis: Redis, config: EngineConfig, catalog: FenceCatalog) -> None:
        self.redis = redis
        self.config = config
        self.catalog = catalog  # replaced whole when fences change
        self.seen_key = f"{config.prefix}agents:seen"
        self._tracker = ZoneTracker(config.track)
        self._presence = _Presence()
        self._machine = Machine(
            model=self._presence,
            states=PRESENCE_STATES,
            transitions=PRESENCE_TRANSITIONS,
            initial="offline",
            auto_transitions=False,
            send_event=False,
        )
        self._cas = redis.register_script(_CAS)

    def key(self, agent_code: str) -> str:
        return f"{self.config.prefix}agent:{agent_code}"

    async def state(self, agent_code: str) -> dict[str, Any]:
        return decode(await self.redis.get(self.key(agent_code)))[1]

    async def latest_fix(self, agent_code: str) -> Fix | None:
        fix = (await self.state(agent_code)).get("fix")
        return None if fix is None else Fix.from_json(fix)

    # --- pure steps on one agent's state ------------------------------------------------------

    def _presence_step(
        self, state: dict[str, Any], code: str, online: bool, at: float, reason: str
    ) -> list[EventRow]:
        if online and state["presence"] == "online":  # already online: nothing to trigger
            state["last_seen"] = max(at, state["last_seen"] or 0.0)
            return []
        p = self._presence
        p.state, p.emitted = state["presence"], []
        p.trigger("seen" if online else "gone")
        state["presence"] = p.state
        if online:
            state["last_seen"] = max(at, state["last_seen"] or 0.0)
        return [EventRow(code, kind, at, details={"reason": reason}) for kind in p.emitted]

    def _fix_step(
        self, state: dict[str, Any], item: FixInput, result: EngineResult
    ) -> list[EventRow]:
        code, fix = item.agent_code, item.fix
        events = self._presence_step(state, code, True, item.received_at, "fix")
        last = state["fix"]
        if last is not None and fix.ts <= last["ts"]:
            result.dropped_out_of_order += 1
            return events
        result.accepted += 1
        state["fix"] = fix.to_json()
        fences = self.catalog.fences_for(code)
        zone, fence_id = None, None
        if fences:
            accuracy = fix.effective_accuracy_m(self.config.unknown_accuracy_m)
            decision = decide(fences, fix.lon, fix.lat, accuracy)
            schedule = self.catalog.schedule_for(code)
            scheduled = schedule is not None and schedule.covers(fix.ts)
            state["zone"], zone_events = self._tracker.step(
                state["zone"], decision, fix.ts, scheduled
            )
            state["decision"] = decision.to_json()
            zone, fence_id = decision.zone.value, decision.fence_id
            details = {"fix": state["fix"], "decision": state["decision"]}
            events += [
                EventRow(code, e["kind"], item.received_at, fix.ts, e["fence_id"],
                         e["fence_version"], details)
                for e in zone_events
            ]  # fmt: skip
        result.locations.append(
            LocationRow(code, fix.ts, item.received_at, fix.lat, fix.lon, fix.accuracy_m,
                        fix.mock, fix.source, zone, fence_id)
        )  # fmt: skip
        return events

    def _run(
        self, state: dict[str, Any], items: Sequence[DeviceInput], result: EngineResult
    ) -> list[EventRow]:
        events: list[EventRow] = []
        for item in items:
            if isinstance(item, FixInput):
                events += self._fix_step(state, item, result)
            else:
                if not item.online and item.reason == "heartbeat":
                    deadline = item.at - self.config.heartbeat_timeout_s
                    if (state["last_seen"] or 0.0) > deadline:
                        continue  # seen again since the sweep picked it: still alive
                events += self._presence_step(
                    state, item.agent_code, item.online, item.at, item.reason
                )
        return events

    # --- the batch: one MGET, one compare-and-set per round ----------------------------------

    async def apply(self, items: Sequence[DeviceInput]) -> EngineResult:
        assert len(items) <= MAX_BATCH
        by_agent: dict[str, list[DeviceInput]] = {}
        for item in items:
            by_agent.setdefault(item.agent_code, []).append(item)
        result = EngineResult()
        pending = list(by_agent)
        for round_no in range(MAX_CAS_ROUNDS):
            if not pending:
                return result
            if round_no:
                await asyncio.sleep(random.uniform(0, CAS_BACKOFF_S * round_no))  # noqa: S311
            raws = await self.redis.mget([self.key(c) for c in pending])
            records: list[str] = []
            runs: list[tuple[list[EventRow], EngineResult]] = []
            for code, raw in zip(pending, raws, strict=True):
                version, state = decode(raw)
                one = EngineResult()
                events = self._run(state, by_agent[code], one)
                runs.append((events, one))
                seen = "" if state["presence"] == "offline" else repr(state["last_seen"])
                body = json.dumps(state, separators=(",", ":"))
                records.append(f"{version}\x1f{version + 1}|{body}\x1f{seen}\x1f{code}")
            keys = [self.key(c) for c in pending] + [self.seen_key]
            won = await self._cas(keys=keys, args=[STATE_TTL_S, "\x1e".join(records)])
            retry = []
            for code, ok, (events, one) in zip(pending, won, runs, strict=True):
                if ok:
                    result.events += events
                    result.locations += one.locations
                    result.accepted += one.accepted
                    result.dropped_out_of_order += one.dropped_out_of_order
                else:
                    retry.append(code)
            result.cas_retries += len(retry)
            pending = retry
        if not pending:
            return result
        raise RuntimeError(f"device state kept changing under {len(pending)} agent(s)")

    async def expire(self, now: float | None = None) -> EngineResult:
        """Agents not heard from within the heartbeat timeout go offline (one sweep)."""
        now = time.time() if now is None else now
        deadline = now - self.config.heartbeat_timeout_s
        codes = await self.redis.zrangebyscore(
            self.seen_key, "-inf", deadline, start=0, num=EXPIRE_BATCH
        )
        items = [
            PresenceInput(c.decode() if isinstance(c, bytes) else str(c), False, now, "heartbeat")
            for c in codes
        ]
        return await self.apply(items) if items else EngineResult()
