"""When an agent is expected to be inside its zone: weekly windows in a time zone.

    {"timezone": "Africa/Nairobi",
     "windows": [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:00", "end": "17:00"}]}

A window whose end is before its start runs past midnight into the next day. Being outside during
a window is a breach; outside a window it is only an exit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_WINDOWS = 28
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class ScheduleError(ValueError):
    """A schedule that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Window:
    days: frozenset[int]  # 0 = Monday
    start_min: int
    end_min: int

    def covers(self, weekday: int, minute: int) -> bool:
        if self.start_min < self.end_min:
            return weekday in self.days and self.start_min <= minute < self.end_min
        # Past midnight: the evening of a listed day, or the early hours of the day after one.
        return (weekday in self.days and minute >= self.start_min) or (
            (weekday - 1) % 7 in self.days and minute < self.end_min
        )


@dataclass(frozen=True, slots=True)
class Schedule:
    timezone: str
    windows: tuple[Window, ...]

    def covers(self, ts: float) -> bool:
        local = datetime.fromtimestamp(ts, ZoneInfo(self.timezone))
        minute = local.hour * 60 + local.minute
        return any(w.covers(local.weekday(), minute) for w in self.windows)

    def to_json(self) -> dict[str, Any]:
        return {
            "timezone": self.timezone,
            "windows": [
                {
                    "days": [DAYS[d] for d in sorted(w.days)],
                    "start": f"{w.start_min // 60:02d}:{w.start_min % 60:02d}",
                    "end": f"{w.end_min // 60:02d}:{w.end_min % 60:02d}",
                }
                for w in self.windows
            ],
        }


def _minutes(value: Any, where: str) -> int:
    match = _HHMM.match(value) if isinstance(value, str) else None
    if match is None:
        raise ScheduleError(f"{where}: expected HH:MM")
    return int(match.group(1)) * 60 + int(match.group(2))


def parse_schedule(data: Any) -> Schedule:
    if not isinstance(data, dict):
        raise ScheduleError("schedule: expected an object")
    tz = data.get("timezone", "UTC")
    try:
        ZoneInfo(tz) if isinstance(tz, str) and tz else None
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"schedule.timezone: unknown time zone {tz!r}") from None
    if not isinstance(tz, str) or not tz:
        raise ScheduleError("schedule.timezone: expected an IANA time zone name")
    raw = data.get("windows")
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_WINDOWS:
        raise ScheduleError(f"schedule.windows: expected 1 to {MAX_WINDOWS} windows")
    windows = []
    for i, w in enumerate(raw):
        where = f"schedule.windows[{i}]"
        if not isinstance(w, dict):
            raise ScheduleError(f"{where}: expected an object")
        days = w.get("days")
        if not isinstance(days, list) or not days or any(d not in DAYS for d in days):
            raise ScheduleError(f"{where}.days: a list of {', '.join(DAYS)}")
        start, end = (
            _minutes(w.get("start"), f"{where}.start"),
            _minutes(w.get("end"), f"{where}.end"),
        )
        if start == end:
            raise ScheduleError(f"{where}: start and end are the same")
        windows.append(Window(frozenset(DAYS.index(d) for d in days), start, end))
    return Schedule(tz, tuple(windows))
