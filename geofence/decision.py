"""The three-state decision: inside, outside or uncertain.

GPS accuracy is a radius around the reported point, so a fix closer to a fence's edge than its
accuracy cannot say which side the device is on. With d the distance in metres from the fix to
the edge and acc the fix's accuracy: INSIDE if the fence contains the fix and d >= acc, OUTSIDE if
it does not and d >= acc, UNCERTAIN otherwise (a fix exactly on the edge is always uncertain).

Against several fences (an agent may have more than one): inside any of them is INSIDE (the fence
with the most margin is the evidence); outside all of them is OUTSIDE (the nearest is named);
anything else is UNCERTAIN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from geofence.fences import Fence


class Zone(StrEnum):
    INSIDE = "inside"
    OUTSIDE = "outside"
    UNCERTAIN = "uncertain"


@dataclass(frozen=True, slots=True)
class Decision:
    zone: Zone
    accuracy_m: float
    fence_id: int | None = None
    fence_version: int | None = None
    distance_m: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "zone": self.zone.value,
            "accuracy_m": self.accuracy_m,
            "fence_id": self.fence_id,
            "fence_version": self.fence_version,
            "distance_m": None if self.distance_m is None else round(self.distance_m, 2),
        }


def classify(inside: bool, distance_m: float, accuracy_m: float) -> Zone:
    if distance_m < accuracy_m or distance_m == 0.0:
        return Zone.UNCERTAIN
    return Zone.INSIDE if inside else Zone.OUTSIDE


def decide_one(fence: Fence, lon: float, lat: float, accuracy_m: float) -> Decision:
    inside, distance = fence.measure(lon, lat)
    zone = classify(inside, distance, accuracy_m)
    return Decision(zone, accuracy_m, fence.id, fence.version, distance)


def decide(fences: Sequence[Fence], lon: float, lat: float, accuracy_m: float) -> Decision:
    """The decision for a fix against an agent's fences (OUTSIDE, naming none, if it has none)."""
    if len(fences) == 1:  # the common case, kept free of the loop below
        return decide_one(fences[0], lon, lat, accuracy_m)
    best_inside: Decision | None = None
    nearest_uncertain: Decision | None = None
    nearest_outside: Decision | None = None
    for fence in fences:
        d = decide_one(fence, lon, lat, accuracy_m)
        assert d.distance_m is not None
        if d.zone is Zone.INSIDE:
            if best_inside is None or d.distance_m > (best_inside.distance_m or 0.0):
                best_inside = d
        elif d.zone is Zone.UNCERTAIN:
            if nearest_uncertain is None or d.distance_m < (nearest_uncertain.distance_m or 0.0):
                nearest_uncertain = d
        elif nearest_outside is None or d.distance_m < (nearest_outside.distance_m or 0.0):
            nearest_outside = d
    return best_inside or nearest_uncertain or nearest_outside or Decision(Zone.OUTSIDE, accuracy_m)
