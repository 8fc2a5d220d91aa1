"""Fences from GeoJSON: polygons (holes and multipolygons allowed) and circles in metres.

Polygon fences keep their WGS84 geometry for the index and a copy projected once, at load, into a
local azimuthal-equidistant (AEQD) plane in metres. A fix is projected into the same plane (one
pyproj call) and tested there: containment against the prepared projected polygon, distance to
its boundary (holes included) in metres. Edges are densified before projection so a straight
edge in degrees (what GeoJSON means) stays straight enough in metres.

Building a pyproj transformer costs ~6 ms, so fences share one per half-degree cell: the plane is
centred on the grid point nearest the fence's centroid. With fences at most 200 km across, every
point tested is within ~135 km of its plane's centre, where AEQD distorts distances by less than
0.01% ((d/R)^2 / 6).

A circle is its centre and radius; a fix is inside when its geodesic distance to the centre on the
WGS84 ellipsoid (pyproj.Geod) is at most the radius. It is never a buffer in degrees, which would
shrink east-west by cos(latitude).

Fences are limited in size (`MAX_FENCE_EXTENT_M`) and vertex count so one projection per fence
stays accurate and a check stays in microseconds; a polygon crossing the antimeridian shows up as
a fence spanning the globe and is refused by the same limit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from pyproj import Geod, Transformer
from shapely.geometry.base import BaseGeometry

GEOD = Geod(ellps="WGS84")

MAX_VERTICES = 10_000
MAX_FENCE_EXTENT_M = 200_000.0
MIN_RADIUS_M = 1.0
MAX_RADIUS_M = 100_000.0
DENSIFY_DEG = 0.005  # ~550 m: edges longer than this gain vertices before projection
MAX_NAME_CHARS = 200


class FenceError(ValueError):
    """A fence definition that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True, eq=False)
class CircleFence:
    id: int
    version: int
    lon: float
    lat: float
    radius_m: float
    kind: str = field(default="circle", init=False)

    def measure(self, lon: float, lat: float) -> tuple[bool, float]:
        """(inside, distance in metres to the circle's edge)."""
        _, _, dist = GEOD.inv(self.lon, self.lat, lon, lat)
        return dist <= self.radius_m, abs(self.radius_m - dist)

    def envelope(self) -> BaseGeometry:
        """A WGS84 box holding the circle (for the STRtree; never for decisions)."""
        lons, lats, _ = GEOD.fwd(
            [self.lon] * 4, [self.lat] * 4, [0.0, 90.0, 180.0, 270.0], [self.radius_m * 1.01] * 4
        )
        return shapely.box(min(lons), min(lats), max(lons), max(lats))

    def geometry_json(self) -> dict[str, Any]:
        return {"type": "Point", "coordinates": [self.lon, self.lat]}


@dataclass(frozen=True, slots=True, eq=False)
class PolygonFence:
    id: int
    version: int
    geometry: BaseGeometry  # WGS84 lon/lat
    projected: BaseGeometry  # metres in the fence's own AEQD plane, prepared
    boundary: BaseGeometry  # boundary of `projected` (outer rings and holes)
    to_plane: Transformer
    kind: str = field(default="polygon", init=False)

    def measure(self, lon: float, lat: float) -> tuple[bool, float]:
        """(inside, distance in metres to the nearest edge, holes included)."""
        x, y = self.to_plane.transform(lon, lat)
        point = shapely.Point(x, y)
        return bool(self.projected.contains(point)), float(self.boundary.distance(point))

    def envelope(self) -> BaseGeometry:
        return self.geometry

    def geometry_json(self) -> dict[str, Any]:
        listed: dict[str, Any] = _listify(shapely.geometry.mapping(self.geometry))
        return listed


Fence = CircleFence | PolygonFence


def _listify(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_listify(v) for v in value]
    if isinstance(value, dict):
        return {k: _listify(v) for k, v in value.items()}
    return value


def _position(value: Any, where: str) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) not in (2, 3):
        raise FenceError(f"{where}: a position is [longitude, latitude]")
    lon, lat = value[0], value[1]
    for v in (lon, lat):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise FenceError(f"{where}: coordinates must be finite numbers")
    if not -180.0 <= lon <= 180.0 or not -90.0 <= lat <= 90.0:
        raise FenceError(f"{where}: longitude must be in [-180, 180] and latitude in [-90, 90]")
    return float(lon), float(lat)


def _ring(value: Any, where: str) -> list[tuple[float, float]]:
    if not isinstance(value, list) or len(value) < 4:
        raise FenceError(f"{where}: a linear ring needs at least 4 positions")
    ring = [_position(p, where) for p in value]
    if ring[0] != ring[-1]:
        raise FenceError(f"{where}: a linear ring must end where it starts")
    return ring


def _polygon_rings(value: Any, where: str) -> list[list[tuple[float, float]]]:
    if not isinstance(value, list) or not value:
        raise FenceError(f"{where}: a polygon is a list of linear rings")
    return [_ring(r, f"{where}[{i}]") for i, r in enumerate(value)]


def _parse_polygonal(geometry: dict[str, Any]) -> BaseGeometry:
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        rings = _polygon_rings(coords, "coordinates")
        parts = [rings]
    elif kind == "MultiPolygon":
        if not isinstance(coords, list) or not coords:
            raise FenceError("coordinates: a multipolygon is a list of polygons")
        parts = [_polygon_rings(p, f"coordinates[{i}]") for i, p in enumerate(coords)]
    else:
        raise FenceError("geometry: expected a Polygon, a MultiPolygon or a Point with radius_m")
    if sum(len(r) for rings in parts for r in rings) > MAX_VERTICES:
        raise FenceError(f"geometry: more than {MAX_VERTICES} vertices")
    polys = [shapely.Polygon(rings[0], rings[1:]) for rings in parts]
    geom: BaseGeometry = polys[0] if kind == "Polygon" else shapely.MultiPolygon(polys)
    if not shapely.is_valid(geom):
        raise FenceError(f"geometry: not a valid polygon ({shapely.is_valid_reason(geom)})")
    if geom.area == 0:
        raise FenceError("geometry: the polygon has no area")
    return geom


def _check_extent(geom: BaseGeometry) -> None:
    minx, miny, maxx, maxy = geom.bounds
    _, _, diagonal = GEOD.inv(minx, miny, maxx, maxy)
    if maxx - minx > 180.0 or diagonal > MAX_FENCE_EXTENT_M:
        raise FenceError(
            f"geometry: larger than {MAX_FENCE_EXTENT_M / 1000:.0f} km across "
            "(or crossing the antimeridian)"
        )


PLANE_CELL_DEG = 0.5


@functools.lru_cache(maxsize=1024)
def plane_for_cell(lat0: float, lon0: float) -> Transformer:
    """The WGS84 -> AEQD (metres) transformer centred on one grid point (memoised: pure)."""
    plane = f"+proj=aeqd +lat_0={lat0:.6f} +lon_0={lon0:.6f} +datum=WGS84 +units=m +no_defs"
    return Transformer.from_crs("EPSG:4326", plane, always_xy=True)


def _plane_near(lon: float, lat: float) -> Transformer:
    cell = PLANE_CELL_DEG
    return plane_for_cell(round(lat / cell) * cell, round(lon / cell) * cell)


def polygon_fence(fence_id: int, version: int, geometry: dict[str, Any]) -> PolygonFence:
    geom = _parse_polygonal(geometry)
    _check_extent(geom)
    centre = geom.centroid
    to_plane = _plane_near(centre.x, centre.y)
    dense = shapely.segmentize(geom, DENSIFY_DEG)
    projected = shapely.transform(dense, lambda xy: _project_array(to_plane, xy), include_z=False)
    boundary = projected.boundary
    shapely.prepare(projected)
    return PolygonFence(fence_id, version, geom, projected, boundary, to_plane)


def _project_array(to_plane: Transformer, xy: Any) -> Any:
    x, y = to_plane.transform(xy[:, 0], xy[:, 1])
    return np.column_stack([x, y])


def circle_fence(
    fence_id: int, version: int, geometry: dict[str, Any], radius_m: Any
) -> CircleFence:
    lon, lat = _position(geometry.get("coordinates"), "coordinates")
    if isinstance(radius_m, bool) or not isinstance(radius_m, int | float):
        raise FenceError("properties.radius_m: a circle needs a radius in metres")
    if not math.isfinite(radius_m) or not MIN_RADIUS_M <= radius_m <= MAX_RADIUS_M:
        raise FenceError(
            f"properties.radius_m: must be between {MIN_RADIUS_M:g} and {MAX_RADIUS_M:g} metres"
        )
    if abs(lat) > 89.0:
        raise FenceError("coordinates: circles closer than 1 degree to a pole are not supported")
    return CircleFence(fence_id, version, lon, lat, float(radius_m))


def fence_from_geojson(fence_id: int, version: int, feature: Any) -> Fence:
    """A fence from a GeoJSON Feature (or a bare geometry). A Point needs `properties.radius_m`."""
    if not isinstance(feature, dict):
        raise FenceError("expected a GeoJSON Feature object")
    if feature.get("type") == "Feature":
        geometry = feature.get("geometry")
        properties = feature.get("properties") or {}
        if not isinstance(properties, dict):
            raise FenceError("properties: must be an object")
    else:
        geometry, properties = feature, {}
    if not isinstance(geometry, dict):
        raise FenceError("geometry: missing")
    if geometry.get("type") == "Point":
        return circle_fence(fence_id, version, geometry, properties.get("radius_m"))
    return polygon_fence(fence_id, version, geometry)


def fence_feature(fence: Fence, properties: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fence as a GeoJSON Feature, `id` and `version` included."""
    props = dict(properties or {})
    if isinstance(fence, CircleFence):
        props["radius_m"] = fence.radius_m
    props["version"] = fence.version
    return {
        "type": "Feature",
        "id": fence.id,
        "geometry": fence.geometry_json(),
        "properties": props,
    }


def fences_by_id(fences: Sequence[Fence]) -> dict[int, Fence]:
    return {f.id: f for f in fences}
