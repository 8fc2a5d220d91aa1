"""Zone tracking with hysteresis: enter, exit and breach events from a stream of decisions.

One shared `transitions` machine (built once per tracker, never per fix) walks a plain JSON state:

    unknown --inside--> inside            (enter)
    unknown --uncertain--> uncertain --inside--> inside (enter)
    inside --outside--> exiting --outside...--> outside (exit, once confirmed)
    exiting --inside--> inside            (the excursion was noise: no event)
    outside --inside--> inside            (enter)

Enter needs an INSIDE decision; an UNCERTAIN one never enters and never leaves. An exit is
confirmed after `exit_confirm_fixes` consecutive OUTSIDE decisions or once `exit_confirm_s` have
passed since the first of them (fix time), whichever comes first; an INSIDE decision in between
cancels it and UNCERTAIN ones neither count nor cancel. A breach is reported once per stay
outside, when the agent is confirmed outside while its schedule says it should be inside.

The state is data (`ZoneState`, JSON-ready) so it can live in Redis and move to the shared session
engine unchanged; the machine only interprets it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transitions import Machine

from geofence.decision import Decision, Zone

ZONE_STATES = ["unknown", "inside", "exiting", "outside", "uncertain"]
ZONE_TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "fix_inside", "source": ["unknown", "uncertain", "outside"], "dest": "inside",
     "after": "emit_enter"},
    {"trigger": "fix_inside", "source": ["inside", "exiting"], "dest": "inside"},
    {"trigger": "fix_outside", "source": ["inside", "exiting"], "dest": "outside",
     "conditions": "exit_confirmed", "after": "emit_exit"},
    {"trigger": "fix_outside", "source": ["inside", "exiting"], "dest": "exiting"},
    {"trigger": "fix_outside", "source": ["unknown", "uncertain", "outside"], "dest": "outside"},
    {"trigger": "fix_uncertain", "source": ["unknown", "uncertain"], "dest": "uncertain"},
    {"trigger": "fix_uncertain", "source": ["inside", "exiting", "outside"], "dest": None},
]  # fmt: skip


# (state, decision) pairs the machine maps to the same state with no event but a breach check.
_STEADY = frozenset(
    {
        ("inside", Zone.INSIDE),
        ("outside", Zone.OUTSIDE),
        ("inside", Zone.UNCERTAIN),
        ("exiting", Zone.UNCERTAIN),
        ("outside", Zone.UNCERTAIN),
        ("uncertain", Zone.UNCERTAIN),
    }
)


@dataclass(frozen=True, slots=True)
class TrackPolicy:
    exit_confirm_fixes: int = 2
    exit_confirm_s: float = 60.0


def initial_zone_state() -> dict[str, Any]:
    return {
        "zone": "unknown",
        "out_n": 0,
        "out_since": None,
        "breached": False,
        "fence_id": None,
        "fence_version": None,
    }


class _Cursor:
    """The one model the shared machine drives; loaded from and dumped to plain data per step."""

    state: str
    trigger: Any  # bound by the machine

    def __init__(self, policy: TrackPolicy) -> None:
        self.policy = policy
        self.data: dict[str, Any] = initial_zone_state()
        self.decision: Decision | None = None
        self.fix_ts = 0.0
        self.events: list[dict[str, Any]] = []

    def exit_confirmed(self) -> bool:
        out_since = self.data["out_since"]
        return self.data["out_n"] >= self.policy.exit_confirm_fixes or (
            out_since is not None and self.fix_ts - out_since >= self.policy.exit_confirm_s
        )

    def emit_enter(self) -> None:
        assert self.decision is not None
        self.events.append(
            {
                "kind": "enter",
                "fence_id": self.decision.fence_id,
                "fence_version": self.decision.fence_version,
            }
        )

    def emit_exit(self) -> None:
        self.events.append(
            {
                "kind": "exit",
                "fence_id": self.data["fence_id"],
                "fence_version": self.data["fence_version"],
            }
        )


class ZoneTracker:
    """Applies one decision at a time to a zone state. Not thread-safe; one per event loop."""

    def __init__(self, policy: TrackPolicy) -> None:
        if policy.exit_confirm_fixes < 1 or policy.exit_confirm_s < 0:
            raise ValueError("exit confirmation needs at least one fix and a non-negative time")
        self.policy = policy
        self._cursor = _Cursor(policy)
        self._machine = Machine(
            model=self._cursor,
            states=ZONE_STATES,
            transitions=ZONE_TRANSITIONS,
            initial="unknown",
            auto_transitions=False,
            ignore_invalid_triggers=False,
            send_event=False,
        )

    def step(
        self,
        state: dict[str, Any] | None,
        decision: Decision,
        fix_ts: float,
        scheduled_inside: bool = False,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(new state, events) after `decision` on a fix taken at `fix_ts`."""
        if state and (state.get("zone"), decision.zone) in _STEADY:
            # A decision that only repeats the state (the common case: an agent at its shop)
            # is an internal transition; skipping the machine saves ~10 us per fix.
            return self._steady(dict(state), decision, scheduled_inside)
        cur = self._cursor
        cur.data = dict(state) if state else initial_zone_state()
        cur.state = cur.data["zone"] if cur.data.get("zone") in ZONE_STATES else "unknown"
        cur.decision, cur.fix_ts, cur.events = decision, fix_ts, []
        if decision.zone is Zone.OUTSIDE and cur.state in ("inside", "exiting"):
            if cur.data["out_n"] == 0:
                cur.data["out_since"] = fix_ts
            cur.data["out_n"] += 1
        cur.trigger(f"fix_{decision.zone.value}")
        data = cur.data
        data["zone"] = cur.state
        if cur.state == "inside":
            data.update(out_n=0, out_since=None, breached=False)
            data.update(fence_id=decision.fence_id, fence_version=decision.fence_version)
        elif cur.state == "outside":
            data.update(out_n=0, out_since=None)
            if scheduled_inside and not data["breached"]:
                data["breached"] = True
                cur.events.append(
                    {
                        "kind": "breach",
                        "fence_id": data["fence_id"],
                        "fence_version": data["fence_version"],
                    }
                )
        return data, cur.events

    @staticmethod
    def _steady(
        data: dict[str, Any], decision: Decision, scheduled_inside: bool
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        events: list[dict[str, Any]] = []
        if data["zone"] == "inside" and decision.zone is Zone.INSIDE:
            data.update(fence_id=decision.fence_id, fence_version=decision.fence_version)
        elif data["zone"] == "outside" and scheduled_inside and not data["breached"]:
            data["breached"] = True
            events.append(
                {
                    "kind": "breach",
                    "fence_id": data["fence_id"],
                    "fence_version": data["fence_version"],
                }
            )
        return data, events
