"""Zone tracking tables: enter, exit after confirmation, breach against a schedule; gating;
schedules."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from geofence.decision import Decision, Zone
from geofence.fences import GEOD, fence_from_geojson
from geofence.fix import Fix
from geofence.gating import GatePolicy, Refusal, gate
from geofence.schedule import ScheduleError, parse_schedule
from geofence.tracker import TrackPolicy, ZoneTracker

I, O, U = Zone.INSIDE, Zone.OUTSIDE, Zone.UNCERTAIN  # noqa: E741 short names keep the tables readable


DEFAULT_POLICY = TrackPolicy(2, 60)


def run(
    steps: list[tuple[Zone, float]] | list[Zone],
    policy: TrackPolicy = DEFAULT_POLICY,
    scheduled: bool = False,
) -> tuple[dict[str, Any], list[str]]:
    tracker = ZoneTracker(policy)
    state: dict[str, Any] | None = None
    kinds: list[str] = []
    for n, step in enumerate(steps):
        zone, ts = step if isinstance(step, tuple) else (step, float(n))
        decision = Decision(zone, 10.0, fence_id=9, fence_version=2)
        state, events = tracker.step(state, decision, ts, scheduled)
        kinds += [e["kind"] for e in events]
    assert state is not None
    return state, kinds


TRACK_CASES = [
    ("inside enters", [I], "inside", ["enter"]),
    ("inside twice enters once", [I, I], "inside", ["enter"]),
    ("one outside fix is not an exit", [I, O], "exiting", ["enter"]),
    ("two outside fixes exit", [I, O, O], "outside", ["enter", "exit"]),
    ("more outside fixes exit once", [I, O, O, O, O], "outside", ["enter", "exit"]),
    ("an inside fix cancels the exit", [I, O, I, O], "exiting", ["enter"]),
    ("uncertain fixes neither count nor cancel", [I, O, U, O], "outside", ["enter", "exit"]),
    ("uncertain alone never enters", [U, U], "uncertain", []),
    ("uncertain then inside enters", [U, I], "inside", ["enter"]),
    ("outside first is no exit", [O, O], "outside", []),
    ("re-entering after an exit", [I, O, O, I], "inside", ["enter", "exit", "enter"]),
    ("uncertain while inside stays inside", [I, U, U], "inside", ["enter"]),
]


@pytest.mark.parametrize(
    ("steps", "zone", "events"), [c[1:] for c in TRACK_CASES], ids=[c[0] for c in TRACK_CASES]
)
def test_zone_tracking(steps: list[Zone], zone: str, events: list[str]) -> None:
    state, kinds = run(steps)
    assert state["zone"] == zone
    assert kinds == events


def test_exit_confirmed_by_time_before_the_fix_count() -> None:
    policy = TrackPolicy(exit_confirm_fixes=5, exit_confirm_s=60)
    state, kinds = run([(I, 0), (O, 10), (O, 40)], policy)
    assert (state["zone"], kinds) == ("exiting", ["enter"])
    state, kinds = run([(I, 0), (O, 10), (O, 40), (O, 70)], policy)
    assert (state["zone"], kinds) == ("outside", ["enter", "exit"])


def test_one_fix_confirmation_exits_at_once() -> None:
    state, kinds = run([I, O], TrackPolicy(1, 60))
    assert (state["zone"], kinds) == ("outside", ["enter", "exit"])


def test_exit_names_the_fence_left() -> None:
    tracker = ZoneTracker(TrackPolicy(1, 60))
    state, _ = tracker.step(None, Decision(I, 5, 3, 7, 50), 0)
    state, events = tracker.step(state, Decision(O, 5, 4, 1, 500), 1)
    assert events == [{"kind": "exit", "fence_id": 3, "fence_version": 7}]


BREACH_CASES = [
    ("confirmed outside in schedule", [I, O, O], ["enter", "exit", "breach"]),
    ("only once per stay outside", [I, O, O, O, O], ["enter", "exit", "breach"]),
    ("again after coming back", [I, O, O, I, O, O],
     ["enter", "exit", "breach", "enter", "exit", "breach"]),
    ("outside from the start", [O], ["breach"]),
    ("not while the exit is unconfirmed", [I, O], ["enter"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("steps", "events"), [c[1:] for c in BREACH_CASES], ids=[c[0] for c in BREACH_CASES]
)
def test_breach_when_scheduled_inside(steps: list[Zone], events: list[str]) -> None:
    assert run(steps, scheduled=True)[1] == events
    assert "breach" not in run(steps, scheduled=False)[1]


def test_tracker_refuses_a_useless_policy() -> None:
    with pytest.raises(ValueError, match="at least one fix"):
        ZoneTracker(TrackPolicy(0, 60))


def test_state_is_plain_json_data() -> None:
    import json

    state, _ = run([I, O])
    assert json.loads(json.dumps(state)) == state
    assert state["out_n"] == 1 and state["fence_id"] == 9


# --- gating --------------------------------------------------------------------------------

NOW = 1_800_000_000.0
SHOP = fence_from_geojson(
    11, 3, {"type": "Feature", "geometry": {"type": "Point", "coordinates": [36.8, -1.29]},
            "properties": {"radius_m": 200}}
)  # fmt: skip
POLICY = GatePolicy(max_fix_age_s=120, max_accuracy_m=50, unknown_accuracy_m=30)


def at(metres: float, **kw: Any) -> Fix:
    lon, lat, _ = GEOD.fwd(36.8, -1.29, 30, metres)
    return Fix(lat=lat, lon=lon, ts=kw.pop("ts", NOW - 10), **kw)


GATE_CASES = [
    ("inside, fresh, accurate", at(50, accuracy_m=10), [SHOP], None),
    ("unknown accuracy counts as 30 m", at(50), [SHOP], None),
    ("no fix", None, [SHOP], Refusal.NO_LOCATION),
    ("mock location", at(50, accuracy_m=10, mock=True), [SHOP], Refusal.MOCK_LOCATION),
    ("stale fix", at(50, accuracy_m=10, ts=NOW - 121), [SHOP], Refusal.STALE_LOCATION),
    ("inaccurate fix", at(50, accuracy_m=51), [SHOP], Refusal.INACCURATE_LOCATION),
    ("no fence", at(50, accuracy_m=10), [], Refusal.NO_GEOFENCE),
    ("outside", at(400, accuracy_m=10), [SHOP], Refusal.OUTSIDE_GEOFENCE),
    ("near the edge", at(190, accuracy_m=20), [SHOP], Refusal.LOCATION_UNCERTAIN),
]


@pytest.mark.parametrize(
    ("fix", "fences", "reason"), [c[1:] for c in GATE_CASES], ids=[c[0] for c in GATE_CASES]
)
def test_gate(fix: Fix | None, fences: list[Any], reason: Refusal | None) -> None:
    result = gate(fix, fences, NOW, POLICY)
    assert result.allowed is (reason is None)
    assert result.reason == reason
    assert result.evidence["fix"] == (None if fix is None else fix.to_json())
    assert result.message


def test_gate_evidence_names_the_fence_and_version() -> None:
    result = gate(at(50, accuracy_m=10), [SHOP], NOW, POLICY)
    decision = result.evidence["decision"]
    assert (decision["zone"], decision["fence_id"], decision["fence_version"]) == ("inside", 11, 3)
    assert result.evidence["fix_age_s"] == 10
    refused = gate(at(400, accuracy_m=10), [SHOP], NOW, POLICY)
    assert refused.evidence["reason"] == "OUTSIDE_GEOFENCE"
    assert refused.evidence["decision"]["fence_id"] == 11


# --- schedules -----------------------------------------------------------------------------

WEEKDAYS = {
    "timezone": "Africa/Nairobi",
    "windows": [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:00", "end": "17:00"}],
}
NIGHTS = {"timezone": "UTC", "windows": [{"days": ["sat"], "start": "22:00", "end": "06:00"}]}


def ts(tz: str, *args: int) -> float:
    return datetime(*args, tzinfo=ZoneInfo(tz)).timestamp()  # type: ignore[misc]


SCHEDULE_CASES = [
    ("weekday morning", WEEKDAYS, ts("Africa/Nairobi", 2026, 3, 2, 9, 0), True),
    ("weekday evening", WEEKDAYS, ts("Africa/Nairobi", 2026, 3, 2, 17, 0), False),
    ("saturday", WEEKDAYS, ts("Africa/Nairobi", 2026, 3, 7, 10, 0), False),
    ("08:00 Nairobi is 05:00 UTC", WEEKDAYS, ts("UTC", 2026, 3, 2, 5, 30), True),
    ("saturday night", NIGHTS, ts("UTC", 2026, 3, 7, 23, 0), True),
    ("sunday early hours", NIGHTS, ts("UTC", 2026, 3, 8, 5, 59), True),
    ("sunday morning", NIGHTS, ts("UTC", 2026, 3, 8, 6, 0), False),
    ("friday night", NIGHTS, ts("UTC", 2026, 3, 6, 23, 0), False),
]


@pytest.mark.parametrize(
    ("raw", "when", "covered"), [c[1:] for c in SCHEDULE_CASES], ids=[c[0] for c in SCHEDULE_CASES]
)
def test_schedule_covers(raw: dict[str, Any], when: float, covered: bool) -> None:
    schedule = parse_schedule(raw)
    assert schedule.covers(when) is covered
    assert parse_schedule(schedule.to_json()) == schedule


BAD_SCHEDULES = [
    ("not an object", [], "object"),
    ("unknown zone", {"timezone": "Mars/Olympus", "windows": []}, "time zone"),
    ("no windows", {"timezone": "UTC", "windows": []}, "windows"),
    ("bad day", {"windows": [{"days": ["funday"], "start": "08:00", "end": "09:00"}]}, "days"),
    ("bad time", {"windows": [{"days": ["mon"], "start": "8am", "end": "09:00"}]}, "HH:MM"),
    ("24:00", {"windows": [{"days": ["mon"], "start": "08:00", "end": "24:00"}]}, "HH:MM"),
    ("empty window", {"windows": [{"days": ["mon"], "start": "08:00", "end": "08:00"}]}, "same"),
]


@pytest.mark.parametrize(
    ("raw", "words"), [c[1:] for c in BAD_SCHEDULES], ids=[c[0] for c in BAD_SCHEDULES]
)
def test_bad_schedules(raw: Any, words: str) -> None:
    with pytest.raises(ScheduleError, match=words):
        parse_schedule(raw)
