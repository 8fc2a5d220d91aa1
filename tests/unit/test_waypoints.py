"""Zones as OwnTracks waypoints: circles as they are, polygons as their enclosing circle in
metres, identities (`tst`) unique and stable, names cleaned; device names the gateway would
publish under."""

from __future__ import annotations

import pytest

from channels.agents.owntracks_devices import valid_device
from geofence.fences import GEOD, fence_from_geojson
from geofence.waypoints import (
    CLEAR_WAYPOINTS,
    TST_BASE,
    device_commands,
    fence_id_of,
    set_waypoints,
    tombstone,
    waypoint,
)


def circle(fence_id: int, radius_m: float = 250.5) -> object:
    feature = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [36.9, -1.2]},
               "properties": {"radius_m": radius_m}}  # fmt: skip
    return fence_from_geojson(fence_id, 3, feature)


def test_a_circle_keeps_its_centre_and_rounds_its_radius_up() -> None:
    w = waypoint(circle(5), "  Duka \n Letu ")  # type: ignore[arg-type]
    assert w == {"_type": "waypoint", "desc": "Duka Letu", "lat": -1.2, "lon": 36.9, "rad": 251,
                 "tst": TST_BASE + 5, "rid": "fence-5"}  # fmt: skip
    assert waypoint(circle(6), "")["desc"] == "Zone 6"  # type: ignore[arg-type]
    assert len(waypoint(circle(7), "x" * 500)["desc"]) == 60  # type: ignore[arg-type]


@pytest.mark.parametrize("lat", [-1.3, 45.0, 60.0])
def test_a_polygon_becomes_the_smallest_circle_holding_it(lat: float) -> None:
    # A long thin triangle: its enclosing circle is not centred on its centroid.
    ring = [[10.0, lat], [10.05, lat], [10.0, lat + 0.005], [10.0, lat]]
    fence = fence_from_geojson(9, 1, {"type": "Polygon", "coordinates": [ring]})
    w = waypoint(fence, "Market")
    dists = [GEOD.inv(w["lon"], w["lat"], lon, la)[2] for lon, la in ring[:3]]
    assert max(dists) <= w["rad"] <= max(dists) + 2  # holds every corner, no slack
    # The two ends of the long edge are (nearly) on the circle: it is the minimal one.
    assert abs(dists[0] - dists[1]) < 2


def test_the_command_lists_every_fence_once_by_id() -> None:
    cmd = set_waypoints([(circle(12), "b"), (circle(3), "a")])  # type: ignore[list-item]
    assert (cmd["_type"], cmd["action"], cmd["waypoints"]["_type"]) == (
        "cmd", "setWaypoints", "waypoints",
    )  # fmt: skip
    assert [w["tst"] for w in cmd["waypoints"]["waypoints"]] == [TST_BASE + 3, TST_BASE + 12]
    assert set_waypoints([])["waypoints"]["waypoints"] == []


@pytest.mark.parametrize(
    ("name", "ok"),
    [("phone", True), ("Pixel 7 Pro", True), ("x" * 64, True), ("x" * 65, False), ("", False),
     ("a+b", False), ("a#", False), ("a/b", False), ("tab\there", False), ("nul\x00", False)],
)  # fmt: skip
def test_device_names_the_gateway_publishes_under(name: str, ok: bool) -> None:
    assert valid_device(name) is ok


def zone(fence_id: int) -> dict[str, object]:
    return waypoint(circle(fence_id), f"z{fence_id}")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("held", "sent_before", "removed"),
    [
        ([1, 2], None, []),  # never pushed: nothing known to remove, no clear
        ([1, 2], frozenset(), []),
        ([1, 2], frozenset({1, 2}), []),
        ([1, 2], frozenset({1}), []),  # only additions: one setWaypoints
        ([2], frozenset({1, 2, 3}), [1, 3]),
        ([], frozenset({4}), [4]),  # every zone gone
    ],
)  # fmt: skip
def test_a_device_that_lost_zones_gets_a_clear_then_the_set_with_tombstones(
    held: list[int], sent_before: frozenset[int] | None, removed: list[int]
) -> None:
    commands, gone = device_commands([zone(i) for i in held], sent_before)
    assert gone == removed
    if not removed:
        assert len(commands) == 1 and commands[0]["action"] == "setWaypoints"
        assert [fence_id_of(w) for w in commands[0]["waypoints"]["waypoints"]] == held
        return
    clear, full = commands
    assert clear == CLEAR_WAYPOINTS == {"_type": "cmd", "action": "clearWaypoints"}
    listed = full["waypoints"]["waypoints"]
    assert [fence_id_of(w) for w in listed] == held + removed
    assert listed[len(held) :] == [tombstone(i) for i in removed]


def test_a_tombstone_names_the_zone_and_is_out_of_range() -> None:
    t = tombstone(7)
    assert (t["rid"], t["tst"], fence_id_of(t)) == ("fence-7", TST_BASE + 7, 7)
    # Out of range for iOS' CLLocationCoordinate2DIsValid and Android's import filter.
    assert not -90 <= t["lat"] <= 90 and not -180 <= t["lon"] <= 180
    assert t["_type"] == "waypoint" and t["desc"]
