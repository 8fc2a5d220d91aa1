"""An agent's zones as OwnTracks waypoints, for the `setWaypoints` remote command.

OwnTracks regions are circles (`lat`, `lon`, `rad` in whole metres) keyed on the phone by `tst`,
"the time of waypoint creation", which the app keeps as the waypoint's identity: a waypoint sent
again with the same `tst` replaces the old one. So `tst` here is derived from the fence id
(`TST_BASE + id`), unique and stable across pushes and fence edits; a fence's creation second
would collide when fences are created in a batch, and two fences sharing a `tst` would overwrite
each other on the phone.

A polygon is sent as its minimum enclosing circle, computed in metres in the fence's own AEQD
plane and rounded up: the phone's region then covers the whole polygon, so it never announces
"left" while the agent is still inside; it may announce "entered" a little early. The phone's
regions are informational only: the gateway decides inside / outside / uncertain itself
(geofence.decision) on every fix.

Removing a zone from a phone (`device_commands`). `setWaypoints` only adds and replaces; what
the apps do about the rest (owntracks/ios `Settings.m` and `OwnTracksAppDelegate.m`,
owntracks/android `MessageProcessor.kt` and `WaypointsRepo.kt`, the booklet's
`docs/tech/json.md`):

- iOS: `clearWaypoints` removes every region of the device. In `setWaypoints` a waypoint is
  keyed by its `rid` (or, without one, by its `tst` and name); one whose `lat`/`lon` is out of
  range removes the region with that `rid`.
- Android 2.5 and later: `clearWaypoints` removes every waypoint; `setWaypoints` replaces by
  `tst` and skips a waypoint with out-of-range coordinates (so it cannot remove one). Android
  2.4 knows no `clearWaypoints` and cannot remove a waypoint remotely at all.

So when a device may still hold zones it lost, it gets `clearWaypoints` and then the full
set, the full set also carrying a tombstone (out-of-range coordinates, the zone's `rid` and
`tst`) for each lost zone: what removes it on an iOS app that missed or predates the clear, and
what the Android app skips. Both commands go on the device's own cmd topic at QoS 1, so they
arrive in order. A device whose earlier zones are not known (never pushed by the gateway) gets
no clear: it would also wipe regions the agent made by hand for no known reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import shapely
from pyproj.enums import TransformDirection

from geofence.fences import CircleFence, Fence, PolygonFence

TST_BASE = 1_000_000_000  # 2001-09-09: far below any real creation time the phone makes itself
MAX_DESC_CHARS = 60
# The booklet's own example of an out-of-range coordinate, which makes the iOS app remove the
# waypoint (and the Android app skip it).
INVALID_DEGREES = -1_000_000
CLEAR_WAYPOINTS: dict[str, Any] = {"_type": "cmd", "action": "clearWaypoints"}


def enclosing_circle(fence: PolygonFence) -> tuple[float, float, float]:
    """(lon, lat, radius in metres) of the smallest circle holding the polygon."""
    circle = shapely.minimum_bounding_circle(fence.projected)
    radius = float(shapely.minimum_bounding_radius(fence.projected))
    centre = circle.centroid
    lon, lat = fence.to_plane.transform(centre.x, centre.y, direction=TransformDirection.INVERSE)
    return float(lon), float(lat), radius


def waypoint(fence: Fence, name: str) -> dict[str, Any]:
    """One OwnTracks `_type=waypoint` for the fence (`desc` is its name, or "Zone {id}")."""
    if isinstance(fence, CircleFence):
        lon, lat, radius = fence.lon, fence.lat, fence.radius_m
    else:
        lon, lat, radius = enclosing_circle(fence)
    desc = " ".join(name.split())[:MAX_DESC_CHARS] or f"Zone {fence.id}"
    return {
        "_type": "waypoint",
        "desc": desc,
        "lat": round(lat, 6),
        "lon": round(lon, 6),
        "rad": max(1, math.ceil(radius)),
        "tst": TST_BASE + fence.id,
        "rid": f"fence-{fence.id}",
    }


def set_waypoints(fences: Sequence[tuple[Fence, str]]) -> dict[str, Any]:
    """The `cmd` that makes an OwnTracks app import these (fence, name) pairs as its regions."""
    return waypoints_command(
        [waypoint(f, name) for f, name in sorted(fences, key=lambda p: p[0].id)]
    )


def waypoints_command(waypoints: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """`setWaypoints` around waypoints already built (`waypoint`), in the order given."""
    return {
        "_type": "cmd",
        "action": "setWaypoints",
        "waypoints": {"_type": "waypoints", "waypoints": list(waypoints)},
    }


def fence_id_of(waypoint_: dict[str, Any]) -> int:
    """The fence a waypoint built by `waypoint` or `tombstone` stands for."""
    return int(waypoint_["tst"]) - TST_BASE


def tombstone(fence_id: int) -> dict[str, Any]:
    """A waypoint that removes the fence's region from an iOS app (see the module docstring)."""
    return {
        "_type": "waypoint",
        "desc": f"Zone {fence_id} removed",
        "lat": INVALID_DEGREES,
        "lon": INVALID_DEGREES,
        "rad": 0,
        "tst": TST_BASE + fence_id,
        "rid": f"fence-{fence_id}",
    }


def device_commands(
    waypoints: Sequence[dict[str, Any]], sent_before: frozenset[int] | None
) -> tuple[list[dict[str, Any]], list[int]]:
    """The commands, in order, that leave a device holding exactly `waypoints`, given the
    fence ids the gateway last sent it (None: unknown); and the fence ids removed."""
    current = {fence_id_of(w) for w in waypoints}
    removed = sorted((sent_before or frozenset()) - current)
    if not removed:
        return [waypoints_command(waypoints)], []
    full = waypoints_command([*waypoints, *(tombstone(i) for i in removed)])
    return [CLEAR_WAYPOINTS, full], removed
