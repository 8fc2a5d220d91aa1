"""The OsmAnd protocol of Traccar Client, for devices without MQTT: `GET` or `POST
/agents/osmand` with query or form fields.

    id (or deviceid)   the agent code
    lat, lon           degrees (or location=lat,lon)
    timestamp          unix seconds, milliseconds (above 2^31), or ISO-8601 / "YYYY-MM-DD HH:MM:SS"
                       (UTC when no offset is given)
    accuracy           metres; 0 means unknown (Traccar Client sends 0 for GPS fixes)
    speed, bearing, altitude, batt   optional numbers
    mock               "true" when Android reports a mock provider
    token              the device token

Any other field is ignored, as Traccar does. Only the wire format lives here; the token is
checked by the caller against the stored hash.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from channels.agents.fixes import FixLimits, check_fix, malformed
from core.devices import AGENT_CODE_RE
from geofence.fix import Fix

MS_THRESHOLD = 2**31
MAX_FIELD_CHARS = 128
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True, slots=True)
class OsmAndReport:
    agent_code: str
    token: str
    fix: Fix


def _field(params: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = params.get(name)
        if value is not None:
            if len(value) > MAX_FIELD_CHARS:
                raise malformed(f"{name!r} is too long")
            return value.strip()
    return None


def _float(params: Mapping[str, str], name: str, raw: str | None = None) -> float | None:
    value = _field(params, name) if raw is None else raw.strip()
    if value is None or value == "":
        return None
    if not _NUMBER.match(value):
        raise malformed(f"{name!r} must be a number")
    result = float(value)
    if not math.isfinite(result):
        raise malformed(f"{name!r} must be a finite number")
    return result


def parse_timestamp(raw: str | None) -> float:
    """Seconds since the epoch from any of the forms Traccar Client and OsmAnd send."""
    if raw is None or raw == "":
        raise malformed("'timestamp' is required")
    if _NUMBER.match(raw):
        value = float(raw)
        return value / 1000.0 if value > MS_THRESHOLD else value
    try:
        parsed = datetime.fromisoformat(raw.replace(" ", "T", 1) if "T" not in raw else raw)
    except ValueError:
        raise malformed("'timestamp' must be unix seconds, milliseconds or ISO-8601") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _position(params: Mapping[str, str]) -> tuple[float, float]:
    location = _field(params, "location")
    if location is not None and "lat" not in params:
        lat_raw, sep, lon_raw = location.partition(",")
        if not sep:
            raise malformed("'location' must be lat,lon")
        lat, lon = _float(params, "location", lat_raw), _float(params, "location", lon_raw)
    else:
        lat, lon = _float(params, "lat"), _float(params, "lon")
    if lat is None or lon is None:
        raise malformed("'lat' and 'lon' are required")
    return lat, lon


def parse_osmand(params: Mapping[str, str], now: float, limits: FixLimits) -> OsmAndReport:
    code = _field(params, "id", "deviceid")
    if not code or not AGENT_CODE_RE.fullmatch(code):
        raise malformed("'id' must be the agent code")
    token = _field(params, "token") or ""
    lat, lon = _position(params)
    for optional in ("speed", "bearing", "altitude", "batt"):
        _float(params, optional)
    mock = (_field(params, "mock") or "false").lower()
    if mock not in ("true", "false", "1", "0"):
        raise malformed("'mock' must be true or false")
    fix = check_fix(
        lat=lat,
        lon=lon,
        ts=parse_timestamp(_field(params, "timestamp")),
        accuracy_m=_float(params, "accuracy"),
        mock=mock in ("true", "1"),
        source="osmand",
        now=now,
        limits=limits,
    )
    return OsmAndReport(code, token, fix)
