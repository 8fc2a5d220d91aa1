"""OwnTracks over MQTT: `owntracks/{agent_code}/{device}` carrying `_type: location` (and the
`_type: lwt` the app sets as its will).

Required: `lat`, `lon`, `tst` (epoch seconds of the fix). Optional: `acc` (metres; omitted or 0
when unknown), `mock` (our extension; the apps do not send it). Every other key (`batt`, `vel`,
`tid`, `conn`, `inregions` ...) is accepted and ignored: the phone's own view of its regions is
never trusted, the gateway decides itself. Other `_type`s are ignored, not errors.
"""

from __future__ import annotations

from dataclasses import dataclass

from channels.agents.fixes import FixLimits, check_fix, flag, load_json_object, malformed, number
from geofence.fix import Fix


@dataclass(frozen=True, slots=True)
class OwnTracksLocation:
    fix: Fix


@dataclass(frozen=True, slots=True)
class OwnTracksLwt:
    """The app's last will: the device went away."""


@dataclass(frozen=True, slots=True)
class OwnTracksOther:
    type: str


OwnTracksMessage = OwnTracksLocation | OwnTracksLwt | OwnTracksOther


def parse_owntracks(payload: bytes, now: float, limits: FixLimits) -> OwnTracksMessage:
    data = load_json_object(payload)
    kind = data.get("_type")
    if not isinstance(kind, str):
        raise malformed("'_type' is required")
    if kind == "lwt":
        return OwnTracksLwt()
    if kind != "location":
        return OwnTracksOther(kind[:32])
    lat, lon, tst = number(data, "lat"), number(data, "lon"), number(data, "tst")
    assert lat is not None and lon is not None and tst is not None
    fix = check_fix(
        lat=lat,
        lon=lon,
        ts=tst,
        accuracy_m=number(data, "acc", required=False),
        mock=flag(data, "mock"),
        source="owntracks",
        now=now,
        limits=limits,
    )
    return OwnTracksLocation(fix)
