"""Case tables for the agent location payloads: OwnTracks, native JSON and OsmAnd.

Each row: a label, the payload, and either the fix expected or the rejection code. The clock is
fixed so "stale" and "future" are exact.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from channels.agents.fixes import FixLimits
from channels.agents.native import parse_native_location
from channels.agents.osmand import parse_osmand
from channels.agents.owntracks import (
    OwnTracksLocation,
    OwnTracksLwt,
    OwnTracksOther,
    parse_owntracks,
)
from core.errors import FixRejected

NOW = 1_800_000_000.0
LIMITS = FixLimits(future_skew_s=60, max_backlog_s=3600)


def js(**kw: Any) -> bytes:
    return json.dumps(kw).encode()


OT = {"_type": "location", "lat": -1.2921, "lon": 36.8219, "tst": int(NOW) - 5}

OWNTRACKS_GOOD = [
    ("minimal", js(**OT), (-1.2921, 36.8219, NOW - 5, None, False)),
    ("with accuracy", js(**OT, acc=12), (-1.2921, 36.8219, NOW - 5, 12.0, False)),
    ("acc 0 is unknown", js(**OT, acc=0), (-1.2921, 36.8219, NOW - 5, None, False)),
    ("app extras ignored", js(**OT, batt=80, conn="m", t="u", tid="JJ", inregions=["shop"]),
     (-1.2921, 36.8219, NOW - 5, None, False)),
    ("mock flagged", js(**OT, mock=True), (-1.2921, 36.8219, NOW - 5, None, True)),
    ("skew tolerated", js(**{**OT, "tst": NOW + 59}), (-1.2921, 36.8219, NOW + 59, None, False)),
    ("poles and antimeridian", js(**{**OT, "lat": -90, "lon": 180}),
     (-90.0, 180.0, NOW - 5, None, False)),
]  # fmt: skip

OWNTRACKS_BAD = [
    ("not JSON", b"{lat: 1", "MALFORMED_FIX"),
    ("not an object", b"[1, 2]", "MALFORMED_FIX"),
    ("no _type", js(lat=1, lon=2, tst=NOW), "MALFORMED_FIX"),
    ("no tst", js(_type="location", lat=1, lon=2), "MALFORMED_FIX"),
    ("lat as text", js(**{**OT, "lat": "-1.29"}), "MALFORMED_FIX"),
    ("lat as boolean", js(**{**OT, "lat": True}), "MALFORMED_FIX"),
    ("NaN", b'{"_type": "location", "lat": NaN, "lon": 1, "tst": 1800000000}', "MALFORMED_FIX"),
    ("mock as text", js(**OT, mock="yes"), "MALFORMED_FIX"),
    ("oversized", js(**OT, pad="x" * 5000), "MALFORMED_FIX"),
    ("not UTF-8", b'{"_type": "location", "lat": \xff}', "MALFORMED_FIX"),
    ("lat 91", js(**{**OT, "lat": 91}), "FIX_OUT_OF_RANGE"),
    ("lon -180.5", js(**{**OT, "lon": -180.5}), "FIX_OUT_OF_RANGE"),
    ("negative accuracy", js(**OT, acc=-3), "FIX_OUT_OF_RANGE"),
    ("stale", js(**{**OT, "tst": NOW - 3601}), "STALE_FIX"),
    ("from the future", js(**{**OT, "tst": NOW + 61}), "FUTURE_FIX"),
]


@pytest.mark.parametrize(
    ("payload", "expected"), [c[1:] for c in OWNTRACKS_GOOD], ids=[c[0] for c in OWNTRACKS_GOOD]
)
def test_owntracks_good(payload: bytes, expected: tuple[Any, ...]) -> None:
    message = parse_owntracks(payload, NOW, LIMITS)
    assert isinstance(message, OwnTracksLocation)
    fix = message.fix
    assert (fix.lat, fix.lon, fix.ts, fix.accuracy_m, fix.mock) == expected
    assert fix.source == "owntracks"


@pytest.mark.parametrize(
    ("payload", "code"), [c[1:] for c in OWNTRACKS_BAD], ids=[c[0] for c in OWNTRACKS_BAD]
)
def test_owntracks_bad(payload: bytes, code: str) -> None:
    with pytest.raises(FixRejected) as err:
        parse_owntracks(payload, NOW, LIMITS)
    assert err.value.error_code == code


def test_owntracks_other_types() -> None:
    assert isinstance(parse_owntracks(js(_type="lwt", tst=1), NOW, LIMITS), OwnTracksLwt)
    other = parse_owntracks(js(_type="transition", event="enter"), NOW, LIMITS)
    assert other == OwnTracksOther("transition")


NATIVE = {"lat": 0.5, "lon": -0.5, "ts": NOW - 1.5}

NATIVE_GOOD = [
    ("minimal", js(**NATIVE), (0.5, -0.5, NOW - 1.5, None, False)),
    ("accuracy", js(**NATIVE, acc=7.5), (0.5, -0.5, NOW - 1.5, 7.5, False)),
    ("acc 0 is unknown", js(**NATIVE, acc=0), (0.5, -0.5, NOW - 1.5, None, False)),
    ("mock", js(**NATIVE, mock=True), (0.5, -0.5, NOW - 1.5, None, True)),
    ("optional numbers", js(**NATIVE, alt=1600, speed=1.2, bearing=90, batt=55),
     (0.5, -0.5, NOW - 1.5, None, False)),
]  # fmt: skip

NATIVE_BAD = [
    ("not JSON", b"lat=1", "MALFORMED_FIX"),
    ("missing ts", js(lat=1, lon=1), "MALFORMED_FIX"),
    ("unknown field", js(**NATIVE, latitude=1), "MALFORMED_FIX"),
    ("speed as text", js(**NATIVE, speed="fast"), "MALFORMED_FIX"),
    ("lat -90.01", js(**{**NATIVE, "lat": -90.01}), "FIX_OUT_OF_RANGE"),
    ("accuracy too large", js(**NATIVE, acc=2e6), "FIX_OUT_OF_RANGE"),
    ("stale", js(**{**NATIVE, "ts": NOW - 7200}), "STALE_FIX"),
    ("from the future", js(**{**NATIVE, "ts": NOW + 3600}), "FUTURE_FIX"),
]


@pytest.mark.parametrize(
    ("payload", "expected"), [c[1:] for c in NATIVE_GOOD], ids=[c[0] for c in NATIVE_GOOD]
)
def test_native_good(payload: bytes, expected: tuple[Any, ...]) -> None:
    fix = parse_native_location(payload, NOW, LIMITS)
    assert (fix.lat, fix.lon, fix.ts, fix.accuracy_m, fix.mock) == expected
    assert fix.source == "native"


@pytest.mark.parametrize(
    ("payload", "code"), [c[1:] for c in NATIVE_BAD], ids=[c[0] for c in NATIVE_BAD]
)
def test_native_bad(payload: bytes, code: str) -> None:
    with pytest.raises(FixRejected) as err:
        parse_native_location(payload, NOW, LIMITS)
    assert err.value.error_code == code


OSM = {"id": "AG001", "lat": "-1.2921", "lon": "36.8219", "timestamp": str(int(NOW) - 10),
       "token": "tok"}  # fmt: skip

OSMAND_GOOD = [
    ("seconds", OSM, (-1.2921, 36.8219, NOW - 10, None, False)),
    ("milliseconds", {**OSM, "timestamp": str(int(NOW) * 1000 - 10_500)},
     (-1.2921, 36.8219, NOW - 10.5, None, False)),
    ("ISO-8601 with Z", {**OSM, "timestamp": "2027-01-15T08:00:00Z"},
     (-1.2921, 36.8219, NOW, None, False)),
    ("ISO-8601 with offset", {**OSM, "timestamp": "2027-01-15T11:00:00+03:00"},
     (-1.2921, 36.8219, NOW, None, False)),
    ("date and time, UTC", {**OSM, "timestamp": "2027-01-15 08:00:00"},
     (-1.2921, 36.8219, NOW, None, False)),
    ("accuracy 0 (GPS) is unknown", {**OSM, "accuracy": "0"},
     (-1.2921, 36.8219, NOW - 10, None, False)),
    ("accuracy", {**OSM, "accuracy": "14.5"}, (-1.2921, 36.8219, NOW - 10, 14.5, False)),
    ("deviceid and location=", {"deviceid": "AG001", "location": "-1.2921,36.8219",
                                "timestamp": str(int(NOW) - 10)},
     (-1.2921, 36.8219, NOW - 10, None, False)),
    ("mock", {**OSM, "mock": "true"}, (-1.2921, 36.8219, NOW - 10, None, True)),
    ("extras", {**OSM, "speed": "3.5", "bearing": "120", "altitude": "1650", "batt": "77",
                "charge": "true", "alarm": "sos"},
     (-1.2921, 36.8219, NOW - 10, None, False)),
]  # fmt: skip

OSMAND_BAD = [
    ("no id", {k: v for k, v in OSM.items() if k != "id"}, "MALFORMED_FIX"),
    ("id with a slash", {**OSM, "id": "AG/1"}, "MALFORMED_FIX"),
    ("no lat", {k: v for k, v in OSM.items() if k != "lat"}, "MALFORMED_FIX"),
    ("lat as words", {**OSM, "lat": "north"}, "MALFORMED_FIX"),
    ("lat inf", {**OSM, "lat": "1e999"}, "MALFORMED_FIX"),
    ("location without comma", {"id": "AG001", "location": "1.5", "timestamp": "1"},
     "MALFORMED_FIX"),
    ("no timestamp", {k: v for k, v in OSM.items() if k != "timestamp"}, "MALFORMED_FIX"),
    ("timestamp junk", {**OSM, "timestamp": "yesterday"}, "MALFORMED_FIX"),
    ("speed junk", {**OSM, "speed": "12km/h"}, "MALFORMED_FIX"),
    ("mock junk", {**OSM, "mock": "maybe"}, "MALFORMED_FIX"),
    ("overlong field", {**OSM, "lat": "1" * 200}, "MALFORMED_FIX"),
    ("lon 181", {**OSM, "lon": "181"}, "FIX_OUT_OF_RANGE"),
    ("negative accuracy", {**OSM, "accuracy": "-1"}, "FIX_OUT_OF_RANGE"),
    ("stale", {**OSM, "timestamp": str(int(NOW) - 3601)}, "STALE_FIX"),
    ("future", {**OSM, "timestamp": str(int(NOW) + 120)}, "FUTURE_FIX"),
    ("future in ms", {**OSM, "timestamp": str((int(NOW) + 120) * 1000)}, "FUTURE_FIX"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("params", "expected"), [c[1:] for c in OSMAND_GOOD], ids=[c[0] for c in OSMAND_GOOD]
)
def test_osmand_good(params: dict[str, str], expected: tuple[Any, ...]) -> None:
    report = parse_osmand(params, NOW, LIMITS)
    fix = report.fix
    assert report.agent_code == "AG001"
    assert (fix.lat, fix.lon, fix.ts, fix.accuracy_m, fix.mock) == expected
    assert fix.source == "osmand"


@pytest.mark.parametrize(
    ("params", "code"), [c[1:] for c in OSMAND_BAD], ids=[c[0] for c in OSMAND_BAD]
)
def test_osmand_bad(params: dict[str, str], code: str) -> None:
    with pytest.raises(FixRejected) as err:
        parse_osmand(params, NOW, LIMITS)
    assert err.value.error_code == code
    assert "tok" not in err.value.message
