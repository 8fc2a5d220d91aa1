"""Geofence tables: fences from GeoJSON, the three-state decision, the index, invalid input."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence.decision import Zone, decide, decide_one
from geofence.fences import GEOD, FenceError, fence_feature, fence_from_geojson
from geofence.index import FenceCatalog, FenceIndex

# A 0.02-degree square in Nairobi with a 0.01-degree hole in the middle.
OUTER = [[36.80, -1.30], [36.82, -1.30], [36.82, -1.28], [36.80, -1.28], [36.80, -1.30]]
HOLE = [[36.805, -1.295], [36.805, -1.285], [36.815, -1.285], [36.815, -1.295], [36.805, -1.295]]
SQUARE_WITH_HOLE = {"type": "Polygon", "coordinates": [OUTER, HOLE]}
FAR_SQUARE = [[37.00, -1.10], [37.01, -1.10], [37.01, -1.09], [37.00, -1.09], [37.00, -1.10]]
MULTI = {"type": "MultiPolygon", "coordinates": [[OUTER], [FAR_SQUARE]]}


def feature(geometry: dict[str, Any], **props: Any) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry, "properties": props}


def circle(lon: float, lat: float, radius_m: float) -> dict[str, Any]:
    return feature({"type": "Point", "coordinates": [lon, lat]}, radius_m=radius_m)


def offset(lon: float, lat: float, azimuth: float, metres: float) -> tuple[float, float]:
    lon2, lat2, _ = GEOD.fwd(lon, lat, azimuth, metres)
    return lon2, lat2


POLYGON_CASES = [
    # label, geometry, lon, lat, accuracy, zone
    ("inside", SQUARE_WITH_HOLE, 36.8025, -1.2975, 20, Zone.INSIDE),
    ("outside", SQUARE_WITH_HOLE, 36.79, -1.29, 20, Zone.OUTSIDE),
    ("on the outer boundary", SQUARE_WITH_HOLE, 36.80, -1.29, 5, Zone.UNCERTAIN),
    ("on a vertex", SQUARE_WITH_HOLE, 36.80, -1.30, 5, Zone.UNCERTAIN),
    ("in the hole", SQUARE_WITH_HOLE, 36.81, -1.29, 20, Zone.OUTSIDE),
    ("on the hole's edge", SQUARE_WITH_HOLE, 36.805, -1.29, 5, Zone.UNCERTAIN),
    ("55 m inside, accuracy 20", SQUARE_WITH_HOLE, 36.8005, -1.2975, 20, Zone.INSIDE),
    ("55 m inside, accuracy 100", SQUARE_WITH_HOLE, 36.8005, -1.2975, 100, Zone.UNCERTAIN),
    ("55 m outside, accuracy 100", SQUARE_WITH_HOLE, 36.7995, -1.2975, 100, Zone.UNCERTAIN),
    ("55 m outside, accuracy 20", SQUARE_WITH_HOLE, 36.7995, -1.2975, 20, Zone.OUTSIDE),
    ("second part of a multipolygon", MULTI, 37.005, -1.095, 20, Zone.INSIDE),
    ("between the parts", MULTI, 36.9, -1.2, 20, Zone.OUTSIDE),
]


@pytest.mark.parametrize(
    ("geometry", "lon", "lat", "acc", "zone"),
    [c[1:] for c in POLYGON_CASES],
    ids=[c[0] for c in POLYGON_CASES],
)
def test_polygon_decisions(
    geometry: dict[str, Any], lon: float, lat: float, acc: float, zone: Zone
) -> None:
    fence = fence_from_geojson(1, 3, feature(geometry))
    decision = decide([fence], lon, lat, acc)
    assert decision.zone is zone
    assert (decision.fence_id, decision.fence_version) == (1, 3)


def test_distance_to_edge_is_in_metres() -> None:
    fence = fence_from_geojson(1, 1, feature(SQUARE_WITH_HOLE))
    # 0.0005 degrees of longitude at 1.3 degrees south is 55.6 m (geodesic).
    _, _, expected = GEOD.inv(36.80, -1.2975, 36.8005, -1.2975)
    inside, distance = fence.measure(36.8005, -1.2975)
    assert inside
    assert distance == pytest.approx(expected, abs=0.1)


@pytest.mark.parametrize("lat", [0.0, 60.0], ids=["equator", "60 north"])
@pytest.mark.parametrize("azimuth", [0.0, 90.0, 180.0, 270.0], ids=["N", "E", "S", "W"])
def test_circle_radius_holds_in_metres(lat: float, azimuth: float) -> None:
    """200 m means 200 m in every direction: 190 m away is inside, 210 m is outside, even
    east-west at 60 degrees north where a buffer in degrees would be half as wide."""
    fence = fence_from_geojson(7, 1, circle(10.0, lat, 200))
    lon_in, lat_in = offset(10.0, lat, azimuth, 190)
    lon_out, lat_out = offset(10.0, lat, azimuth, 210)
    lon_edge, lat_edge = offset(10.0, lat, azimuth, 199)
    assert decide_one(fence, lon_in, lat_in, 5).zone is Zone.INSIDE
    assert decide_one(fence, lon_out, lat_out, 5).zone is Zone.OUTSIDE
    assert decide_one(fence, lon_edge, lat_edge, 5).zone is Zone.UNCERTAIN
    assert fence.measure(lon_in, lat_in)[1] == pytest.approx(10.0, abs=1e-6)


def test_circle_uncertain_with_large_accuracy() -> None:
    fence = fence_from_geojson(7, 1, circle(36.8, -1.29, 200))
    lon, lat = offset(36.8, -1.29, 45, 150)  # 50 m inside the edge
    assert decide_one(fence, lon, lat, 30).zone is Zone.INSIDE
    assert decide_one(fence, lon, lat, 80).zone is Zone.UNCERTAIN


@settings(max_examples=60, deadline=None)
@given(
    lat=st.floats(-70, 70),
    azimuth=st.floats(0, 360),
    fraction=st.floats(0.2, 1.8),
)
def test_polygon_distance_matches_geodesic(lat: float, azimuth: float, fraction: float) -> None:
    """A 64-gon inscribed in a 1 km geodesic circle: the distance to its edge, measured in the
    fence's plane, matches the geodesic |R - r| within the polygon's chord sag and 0.5%."""
    radius = 1000.0
    ring = [list(offset(20.0, lat, a * 360 / 64, radius)) for a in range(64)]
    fence = fence_from_geojson(
        1, 1, feature({"type": "Polygon", "coordinates": [[*ring, ring[0]]]})
    )
    lon_p, lat_p = offset(20.0, lat, azimuth, radius * fraction)
    inside, distance = fence.measure(lon_p, lat_p)
    sag = radius * (1 - math.cos(math.pi / 64))
    expected = abs(radius - radius * fraction)
    assert distance == pytest.approx(expected, abs=sag + 0.005 * expected + 0.5)
    if abs(fraction - 1) > 0.01:
        assert inside == (fraction < 1)


def test_several_fences_prefer_inside_then_uncertain_then_nearest() -> None:
    a = fence_from_geojson(1, 1, circle(36.8, -1.29, 100))
    b = fence_from_geojson(2, 4, circle(36.9, -1.29, 100))
    lon, lat = offset(36.9, -1.29, 0, 10)
    decision = decide([a, b], lon, lat, 10)
    assert (decision.zone, decision.fence_id, decision.fence_version) == (Zone.INSIDE, 2, 4)
    lon, lat = offset(36.9, -1.29, 0, 105)
    decision = decide([a, b], lon, lat, 10)
    assert (decision.zone, decision.fence_id) == (Zone.UNCERTAIN, 2)
    lon, lat = offset(36.8, -1.29, 0, 300)
    decision = decide([a, b], lon, lat, 10)
    assert (decision.zone, decision.fence_id) == (Zone.OUTSIDE, 1)
    assert decide([], 36.8, -1.29, 10).zone is Zone.OUTSIDE


def bowtie() -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}


def big_square(size: float) -> dict[str, Any]:
    return {
        "type": "Polygon",
        "coordinates": [[[0, 0], [size, 0], [size, size], [0, size], [0, 0]]],
    }


INVALID = [
    ("not an object", [1, 2], "Feature"),
    ("no geometry", {"type": "Feature", "properties": {}}, "geometry"),
    ("a line", feature({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}), "Polygon"),
    ("ring not closed", feature({"type": "Polygon", "coordinates": [[*OUTER[:-1], OUTER[1]]]}),
     "end where it starts"),
    ("too few positions", feature({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0]]]}),
     "at least 4"),
    ("latitude 91",
     feature({"type": "Polygon", "coordinates": [[[0, 0], [1, 91], [1, 0], [0, 0]]]}),
     "latitude"),
    ("longitude 200", circle(200, 0, 10), "longitude"),
    ("string coordinate", feature({"type": "Point", "coordinates": ["1", 2]}, radius_m=5),
     "finite numbers"),
    ("boolean coordinate", feature({"type": "Point", "coordinates": [True, 2]}, radius_m=5),
     "finite numbers"),
    ("NaN coordinate", circle(math.nan, 0, 10), "finite numbers"),
    ("self-intersecting", feature(bowtie()), "not a valid polygon"),
    ("no area", feature({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [2, 0], [0, 0]]]}),
     "valid polygon"),
    ("circle without radius", feature({"type": "Point", "coordinates": [0, 0]}), "radius"),
    ("negative radius", circle(0, 0, -5), "between"),
    ("radius too large", circle(0, 0, 1e7), "between"),
    ("radius as text", circle(0, 0, "50"), "radius"),  # type: ignore[arg-type]
    ("larger than 200 km", feature(big_square(3.0)), "larger than"),
    ("across the antimeridian",
     feature({"type": "Polygon", "coordinates": [[[179.9, 0], [-179.9, 0], [-179.9, 0.1],
                                                 [179.9, 0.1], [179.9, 0]]]}), "antimeridian"),
    ("properties not an object", {"type": "Feature", "geometry": bowtie(), "properties": [1]},
     "properties"),
    ("circle at the pole", circle(0, 89.5, 100), "pole"),
]  # fmt: skip


@pytest.mark.parametrize(("value", "words"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_fences_are_refused(value: Any, words: str) -> None:
    with pytest.raises(FenceError, match=words):
        fence_from_geojson(1, 1, value)


def test_feature_round_trip() -> None:
    poly = fence_from_geojson(5, 2, feature(SQUARE_WITH_HOLE))
    again = fence_from_geojson(5, 2, fence_feature(poly))
    assert again.geometry_json() == poly.geometry_json()
    circ = fence_feature(fence_from_geojson(6, 1, circle(1.5, 2.5, 30)), {"name": "shop"})
    assert circ == {
        "type": "Feature",
        "id": 6,
        "geometry": {"type": "Point", "coordinates": [1.5, 2.5]},
        "properties": {"name": "shop", "radius_m": 30.0, "version": 1},
    }


def _grid_fences() -> list[Any]:
    fences = []
    for i in range(5):
        for j in range(4):
            lon, lat = 36.7 + i * 0.01, -1.3 + j * 0.01
            if (i + j) % 2:
                fences.append(fence_from_geojson(len(fences) + 1, 1, circle(lon, lat, 600)))
            else:
                sq = [[lon, lat], [lon + 0.008, lat], [lon + 0.008, lat + 0.008],
                      [lon, lat + 0.008], [lon, lat]]  # fmt: skip
                fences.append(
                    fence_from_geojson(
                        len(fences) + 1, 1, feature({"type": "Polygon", "coordinates": [sq]})
                    )
                )
    return fences


GRID = _grid_fences()
INDEX = FenceIndex(GRID)


@settings(max_examples=200, deadline=None)
@given(lon=st.floats(36.69, 36.76), lat=st.floats(-1.31, -1.26))
def test_index_finds_exactly_the_containing_fences(lon: float, lat: float) -> None:
    brute = sorted(f.id for f in GRID if f.measure(lon, lat)[0])
    assert [f.id for f in INDEX.containing(lon, lat)] == brute


def test_catalog_keeps_each_agents_fences() -> None:
    catalog = FenceCatalog.build(GRID[:3], {"AG1": [1, 3, 99], "AG2": []})
    assert [f.id for f in catalog.fences_for("AG1")] == [1, 3]  # 99 is unknown: ignored
    assert catalog.fences_for("AG2") == [] and catalog.fences_for("nobody") == []
    assert len(catalog.index) == 3
