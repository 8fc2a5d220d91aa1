"""Checks every location payload goes through, whatever its wire format.

A fix is refused (`core.errors.FixRejected`, the code says why) when it is malformed, when its
latitude, longitude or accuracy is out of range, when it was taken more than `max_backlog_s` ago
(stale) or more than `future_skew_s` ahead of our clock (from the future). An accuracy of 0 or no
accuracy at all means "unknown", never "perfect".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from core.errors import FixRejected
from geofence.fix import Fix

MAX_PAYLOAD_BYTES = 4096
MAX_ACCURACY_M = 1_000_000.0


@dataclass(frozen=True, slots=True)
class FixLimits:
    future_skew_s: float = 60.0
    max_backlog_s: float = 86_400.0


def malformed(message: str) -> FixRejected:
    return FixRejected(message, code="MALFORMED_FIX")


def out_of_range(message: str) -> FixRejected:
    return FixRejected(message, code="FIX_OUT_OF_RANGE")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def json_object_problem(payload: bytes | str, what: str) -> tuple[dict[str, Any] | None, str]:
    """(the JSON object in a device payload of bounded size, "") or (None, what is wrong with
    it, naming it `what`): NaN and Infinity refused, and nesting deep enough to exhaust json's
    recursion (4 KB of `[`) a problem, not a RecursionError."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None, f"The {what} is larger than {MAX_PAYLOAD_BYTES} bytes"
    try:
        data = json.loads(payload, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError):
        return None, f"The {what} is not valid JSON"
    except RecursionError:  # json recurses once per level of nesting
        return None, f"The {what} nests too deeply"
    if not isinstance(data, dict):
        return None, f"The {what} must be a JSON object"
    return data, ""


def load_json_object(payload: bytes | str) -> dict[str, Any]:
    """A location payload's JSON object; FixRejected (MALFORMED_FIX) saying what is wrong."""
    data, problem = json_object_problem(payload, "payload")
    if data is None:
        raise malformed(problem)
    return data


def number(data: dict[str, Any], key: str, *, required: bool = True) -> float | None:
    value = data.get(key)
    if value is None:
        if required:
            raise malformed(f"{key!r} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise malformed(f"{key!r} must be a number")
    return float(value)


def flag(data: dict[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise malformed(f"{key!r} must be true or false")
    return value


def check_fix(
    *,
    lat: float,
    lon: float,
    ts: float,
    accuracy_m: float | None,
    mock: bool,
    source: str,
    now: float,
    limits: FixLimits,
) -> Fix:
    if not -90.0 <= lat <= 90.0:
        raise out_of_range("Latitude must be between -90 and 90")
    if not -180.0 <= lon <= 180.0:
        raise out_of_range("Longitude must be between -180 and 180")
    if accuracy_m is not None and not 0.0 <= accuracy_m <= MAX_ACCURACY_M:
        raise out_of_range("Accuracy must be between 0 and 1,000,000 metres")
    if ts - now > limits.future_skew_s:
        raise FixRejected("The fix is timestamped in the future", code="FUTURE_FIX")
    if now - ts > limits.max_backlog_s:
        raise FixRejected("The fix is too old to use", code="STALE_FIX")
    return Fix(
        lat=lat,
        lon=lon,
        ts=ts,
        accuracy_m=accuracy_m if accuracy_m else None,  # 0 means unknown
        mock=mock,
        source=source,
    )
