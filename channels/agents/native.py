"""Our own device app's location message on `agents/{agent_code}/location`:

    {"lat": -1.2921, "lon": 36.8219, "ts": 1767225600, "acc": 12, "mock": false}

`ts` is epoch seconds of the fix (fractions allowed); `acc` metres (0 or absent: unknown);
`mock` true when Android reports a mock provider. Unknown keys are refused so a typo in the app
(`"latitude"`) shows up at once instead of as a missing fix.
"""

from __future__ import annotations

from channels.agents.fixes import FixLimits, check_fix, flag, load_json_object, malformed, number
from geofence.fix import Fix

KEYS = frozenset({"lat", "lon", "ts", "acc", "mock", "alt", "speed", "bearing", "batt"})


def parse_native_location(payload: bytes, now: float, limits: FixLimits) -> Fix:
    data = load_json_object(payload)
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise malformed(f"Unknown field(s): {', '.join(k[:32] for k in unknown[:5])}")
    for optional in ("alt", "speed", "bearing", "batt"):
        number(data, optional, required=False)
    lat, lon, ts = number(data, "lat"), number(data, "lon"), number(data, "ts")
    assert lat is not None and lon is not None and ts is not None
    return check_fix(
        lat=lat,
        lon=lon,
        ts=ts,
        accuracy_m=number(data, "acc", required=False),
        mock=flag(data, "mock"),
        source="native",
        now=now,
        limits=limits,
    )
