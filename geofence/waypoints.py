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
