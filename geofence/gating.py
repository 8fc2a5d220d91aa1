"""Transaction gating: may this agent move money here and now?

A pure function of the agent's latest fix, its fences and the clock. It allows only when the fix
is real (not a mock location), fresh (at most `max_fix_age_s` old), accurate enough (at most
`max_accuracy_m`, an unknown accuracy counting as `unknown_accuracy_m`) and the decision on it is
INSIDE one of the agent's fences. Otherwise it refuses with a reason code that the device sees
verbatim. Either way the evidence (the fix, the decision, the fence id and version, the policy)
goes with the transaction record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from geofence.decision import Zone, decide
from geofence.fences import Fence
from geofence.fix import Fix


class Refusal(StrEnum):
    NO_LOCATION = "NO_LOCATION"
    MOCK_LOCATION = "MOCK_LOCATION"
    STALE_LOCATION = "STALE_LOCATION"
    INACCURATE_LOCATION = "INACCURATE_LOCATION"
    NO_GEOFENCE = "NO_GEOFENCE"
    OUTSIDE_GEOFENCE = "OUTSIDE_GEOFENCE"
    LOCATION_UNCERTAIN = "LOCATION_UNCERTAIN"


MESSAGES = {
    Refusal.NO_LOCATION: "No location has been received from this device",
    Refusal.MOCK_LOCATION: "The device reports a mock location",
    Refusal.STALE_LOCATION: "The latest location is too old; wait for a fresh fix",
    Refusal.INACCURATE_LOCATION: "The location is not accurate enough; wait for a better fix",
    Refusal.NO_GEOFENCE: "No permitted zone is assigned to this agent",
    Refusal.OUTSIDE_GEOFENCE: "The agent is outside its permitted zone",
    Refusal.LOCATION_UNCERTAIN: "Too close to the zone's edge to tell; move inside and retry",
}


@dataclass(frozen=True, slots=True)
class GatePolicy:
    max_fix_age_s: float = 120.0
    max_accuracy_m: float = 50.0
    unknown_accuracy_m: float = 30.0


@dataclass(frozen=True, slots=True)
class GateDecision:
    allowed: bool
    reason: Refusal | None
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def message(self) -> str:
        return "Allowed" if self.reason is None else MESSAGES[self.reason]


def _precheck(
    fix: Fix | None, fences: Sequence[Fence], now: float, policy: GatePolicy
) -> Refusal | None:
    """The refusals that need no geometry, cheapest first."""
    if fix is None:
        return Refusal.NO_LOCATION
    if fix.mock:
        return Refusal.MOCK_LOCATION
    if now - fix.ts > policy.max_fix_age_s:
        return Refusal.STALE_LOCATION
    if fix.effective_accuracy_m(policy.unknown_accuracy_m) > policy.max_accuracy_m:
        return Refusal.INACCURATE_LOCATION
    if not fences:
        return Refusal.NO_GEOFENCE
    return None


_BY_ZONE = {Zone.OUTSIDE: Refusal.OUTSIDE_GEOFENCE, Zone.UNCERTAIN: Refusal.LOCATION_UNCERTAIN}


def gate(fix: Fix | None, fences: Sequence[Fence], now: float, policy: GatePolicy) -> GateDecision:
    """Allow, or refuse with a reason; the evidence says what the answer rests on."""
    evidence: dict[str, Any] = {
        "checked_at": now,
        "policy": asdict(policy),
        "fix": None if fix is None else fix.to_json(),
    }
    if fix is not None:
        evidence["fix_age_s"] = round(now - fix.ts, 3)
    reason = _precheck(fix, fences, now, policy)
    if reason is None:
        assert fix is not None
        accuracy = fix.effective_accuracy_m(policy.unknown_accuracy_m)
        decision = decide(fences, fix.lon, fix.lat, accuracy)
        evidence["decision"] = decision.to_json()
        reason = _BY_ZONE.get(decision.zone)
    if reason is None:
        return GateDecision(True, None, evidence)
    return GateDecision(False, reason, {**evidence, "reason": reason.value})
