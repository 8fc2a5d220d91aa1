"""Device state in real Redis: presence and zone events exactly once, out-of-order fixes
dropped, heartbeat expiry, concurrent instances; the command dispatcher's idempotency and gate."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from redis.asyncio import Redis

from geofence.fences import GEOD, fence_from_geojson
from geofence.fix import Fix
from geofence.gating import GatePolicy
from geofence.index import FenceCatalog
from geofence.schedule import parse_schedule
from geofence.tracker import TrackPolicy
from menus.agent_commands import (
    Command,
    CommandContext,
    CommandDispatcher,
    PendingCoreExecutor,
    refuse_unless_allowed,
)
from menus.device import DeviceEngine, EngineConfig, FixInput, PresenceInput

CENTRE = (36.8, -1.29)
SHOP = fence_from_geojson(
    501, 2, {"type": "Feature", "geometry": {"type": "Point", "coordinates": list(CENTRE)},
             "properties": {"radius_m": 200}}
)  # fmt: skip


def code() -> str:
    return f"AG{secrets.token_hex(4)}"


def at(metres: float, ts: float, acc: float | None = 10.0) -> Fix:
    lon, lat, _ = GEOD.fwd(CENTRE[0], CENTRE[1], 60, metres)
    return Fix(lat=lat, lon=lon, ts=ts, accuracy_m=acc)


def make_engine(redis: Redis, prefix: str, agents: list[str], **kw: Any) -> DeviceEngine:
    catalog = FenceCatalog.build([SHOP], {a: [SHOP.id] for a in agents}, kw.pop("schedules", {}))
    config = EngineConfig(prefix, TrackPolicy(2, 60), 30.0, kw.pop("timeout", 600.0))
    return DeviceEngine(redis, config, catalog)


async def test_enter_exit_and_history(redis: Redis, redis_prefix: str) -> None:
    agent = code()
    engine = make_engine(redis, redis_prefix, [agent])
    now = time.time()
    first = await engine.apply([FixInput(agent, at(20, now - 50), now)])
    assert [e.kind for e in first.events] == ["online", "enter"]
    enter = first.events[1]
    assert (enter.fence_id, enter.fence_version) == (501, 2)
    assert enter.details is not None and enter.details["decision"]["zone"] == "inside"
    assert [(r.zone, r.fence_id) for r in first.locations] == [("inside", 501)]
    # An older fix (another instance delivered it late) changes nothing.
    late = await engine.apply([FixInput(agent, at(900, now - 60), now)])
    assert late.events == [] and late.dropped_out_of_order == 1 and late.locations == []
    one_out = await engine.apply([FixInput(agent, at(500, now - 40), now)])
    assert one_out.events == []
    assert (await engine.state(agent))["zone"]["zone"] == "exiting"
    two_out = await engine.apply([FixInput(agent, at(600, now - 30), now)])
    assert [e.kind for e in two_out.events] == ["exit"]
    latest = await engine.latest_fix(agent)
    assert latest is not None and latest.ts == now - 30


async def test_agent_without_fences_keeps_fixes_but_no_zone(
    redis: Redis, redis_prefix: str
) -> None:
    agent = code()
    engine = make_engine(redis, redis_prefix, [])
    now = time.time()
    result = await engine.apply([FixInput(agent, at(20, now), now)])
    assert [e.kind for e in result.events] == ["online"]
    assert result.locations[0].zone is None
    assert (await engine.state(agent))["zone"]["zone"] == "unknown"


async def test_breach_during_schedule(redis: Redis, redis_prefix: str) -> None:
    agent = code()
    always = parse_schedule(
        {"timezone": "UTC", "windows": [{"days": ["mon", "tue", "wed", "thu", "fri", "sat",
                                                  "sun"], "start": "00:00", "end": "23:59"}]}
    )  # fmt: skip
    engine = make_engine(redis, redis_prefix, [agent], schedules={agent: always})
    now = time.time()
    kinds = []
    for n, metres in enumerate([20, 500, 500, 500]):
        result = await engine.apply([FixInput(agent, at(metres, now - 50 + n), now)])
        kinds += [e.kind for e in result.events]
    assert kinds == ["online", "enter", "exit", "breach"]


async def test_presence_will_and_heartbeat(redis: Redis, redis_prefix: str) -> None:
    agent = code()
    engine = make_engine(redis, redis_prefix, [agent], timeout=100.0)
    now = time.time()
    result = await engine.apply([PresenceInput(agent, True, now)])
    assert [e.kind for e in result.events] == ["online"]
    again = await engine.apply([PresenceInput(agent, True, now + 1)])
    assert again.events == []
    will = await engine.apply([PresenceInput(agent, False, now + 2, "will")])
    assert [(e.kind, e.details) for e in will.events] == [("offline", {"reason": "will"})]
    await engine.apply([FixInput(agent, at(20, now + 3), now + 3)])
    early = await engine.expire(now + 50)
    assert [e for e in early.events if e.agent_code == agent] == []  # within the timeout
    expired = await engine.expire(now + 104)
    # (agents of other tests share the sweep list; only this one is looked at)
    assert [e.kind for e in expired.events if e.agent_code == agent] == ["offline"]
    later = await engine.expire(now + 200)
    assert [e for e in later.events if e.agent_code == agent] == []  # gone from the sweep list
    assert await redis.zscore(engine.seen_key, agent) is None


async def test_two_instances_emit_each_event_once(redis: Redis, redis_prefix: str) -> None:
    """Shared subscriptions split one agent's fixes between instances: interleave them."""
    agent = code()
    a = make_engine(redis, redis_prefix, [agent])
    b = make_engine(redis, redis_prefix, [agent])
    now = time.time()
    fixes = [at(20 if n < 10 else 700, now - 100 + n) for n in range(20)]
    results = await asyncio.gather(
        *[(a if n % 2 else b).apply([FixInput(agent, f, now)]) for n, f in enumerate(fixes)]
    )
    kinds = sorted(e.kind for r in results for e in r.events)
    assert kinds.count("online") == 1 and kinds.count("enter") == 1
    assert kinds.count("exit") <= 1
    accepted = sum(r.accepted for r in results)
    dropped = sum(r.dropped_out_of_order for r in results)
    assert accepted + dropped == 20
    state = await a.state(agent)
    assert state["fix"]["ts"] == max(f.ts for f in fixes)  # the newest always wins


# --- commands ---------------------------------------------------------------------------------

POLICY = GatePolicy(max_fix_age_s=120, max_accuracy_m=50, unknown_accuracy_m=30)


class CountingExecutor:
    def __init__(self) -> None:
        self.calls: list[tuple[str, CommandContext]] = []
        self.fail_next = False

    async def execute(self, command: Command, context: CommandContext) -> dict[str, Any]:
        self.calls.append((command.id, context))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("database went away")
        refuse_unless_allowed(context)
        return {"reference": f"T{len(self.calls)}"}


def cash_in(command_id: str, amount: int = 5000, pin: str = "2468") -> dict[str, Any]:
    return {"id": command_id, "op": "cash_in", "msisdn": "+254712000111",
            "amount_minor": amount, "pin": pin}  # fmt: skip


async def test_gate_refusals_reach_the_reply(redis: Redis, redis_prefix: str) -> None:
    agent = code()
    engine = make_engine(redis, redis_prefix, [agent])
    dispatcher = CommandDispatcher(redis, redis_prefix, engine, PendingCoreExecutor(), POLICY)
    now = time.time()
    reply = await dispatcher.handle(agent, cash_in("c1"), now)
    assert reply is not None and reply["error"]["code"] == "NO_LOCATION"
    await engine.apply([FixInput(agent, at(20, now - 5), now)])
    reply = await dispatcher.handle(agent, cash_in("c2"), now)
    assert reply is not None and reply["error"]["code"] == "NOT_AVAILABLE"
    reply = await dispatcher.handle(agent, cash_in("c3"), now + 200)
    assert reply is not None and reply["error"]["code"] == "STALE_LOCATION"
    await engine.apply([FixInput(agent, at(900, now), now)])
    reply = await dispatcher.handle(agent, cash_in("c4"), now + 1)
    assert reply == {
        "id": "c4",
        "ok": False,
        "error": {"code": "OUTSIDE_GEOFENCE", "message": "The agent is outside its permitted zone"},
    }
    balance = await dispatcher.handle(agent, {"id": "b1", "op": "balance", "pin": "2468"}, now)
    assert balance is not None and balance["error"]["code"] == "NOT_AVAILABLE"


async def test_repeated_id_same_reply_one_execution(redis: Redis, redis_prefix: str) -> None:
    agent = code()
    engine = make_engine(redis, redis_prefix, [agent])
    executor = CountingExecutor()
    dispatcher = CommandDispatcher(redis, redis_prefix, engine, executor, POLICY)
    now = time.time()
    await engine.apply([FixInput(agent, at(20, now - 5), now)])
    first = await dispatcher.handle(agent, cash_in("x1"), now)
    assert first == {"id": "x1", "ok": True, "result": {"reference": "T1"}}
    again = await dispatcher.handle(agent, cash_in("x1", pin="1357"), now + 1)
    assert again == first and len(executor.calls) == 1
    gate = executor.calls[0][1].gate
    assert gate is not None and gate.allowed and gate.evidence["decision"]["fence_id"] == 501
    conflict = await dispatcher.handle(agent, cash_in("x1", amount=5001), now + 2)
    assert conflict is not None and conflict["error"]["code"] == "IDEMPOTENCY_CONFLICT"
    assert len(executor.calls) == 1
    # The same id from another agent is another command.
    other = code()
    assert (await dispatcher.handle(other, cash_in("x1"), now))["error"]["code"] == "NO_LOCATION"  # type: ignore[index]
    stored = await redis.get(dispatcher.key(agent, "x1"))
    assert stored is not None and b"2468" not in stored


async def test_unexpected_failure_lets_a_retry_run(redis: Redis, redis_prefix: str) -> None:
    agent = code()
    engine = make_engine(redis, redis_prefix, [agent])
    executor = CountingExecutor()
    dispatcher = CommandDispatcher(redis, redis_prefix, engine, executor, POLICY)
    now = time.time()
    await engine.apply([FixInput(agent, at(20, now - 5), now)])
    executor.fail_next = True
    failed = await dispatcher.handle(agent, cash_in("y1"), now)
    assert failed is not None and failed["error"]["code"] == "INTERNAL_ERROR"
    retried = await dispatcher.handle(agent, cash_in("y1"), now)
    assert retried is not None and retried["ok"] is True and len(executor.calls) == 2


async def test_invalid_command_reply_names_no_secret(redis: Redis, redis_prefix: str) -> None:
    agent = code()
    dispatcher = CommandDispatcher(
        redis, redis_prefix, make_engine(redis, redis_prefix, [agent]), CountingExecutor(), POLICY
    )
    reply = await dispatcher.handle(agent, {**cash_in("z1"), "pin": "24x8"})
    assert reply is not None and reply["id"] == "z1"
    assert reply["error"]["code"] == "VALIDATION_ERROR" and "24x8" not in str(reply)
