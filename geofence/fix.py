"""A location fix as every channel hands it to the geofence: WGS84 degrees, the fix's own time,
its accuracy in metres (None when the device did not say: never read as "perfect"), and whether
the device flagged it as a mock location."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Fix:
    lat: float
    lon: float
    ts: float  # epoch seconds of the fix itself (not of its arrival)
    accuracy_m: float | None = None
    mock: bool = False
    source: str = "native"

    def effective_accuracy_m(self, unknown_accuracy_m: float) -> float:
        """The accuracy decisions use: the reported one, or an assumed one when unknown."""
        return self.accuracy_m if self.accuracy_m is not None else unknown_accuracy_m

    def to_json(self) -> dict[str, Any]:
        return {
            "lat": self.lat,
            "lon": self.lon,
            "ts": self.ts,
            "acc": self.accuracy_m,
            "mock": self.mock,
            "src": self.source,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fix:
        acc = data.get("acc")
        return cls(
            lat=float(data["lat"]),
            lon=float(data["lon"]),
            ts=float(data["ts"]),
            accuracy_m=None if acc is None else float(acc),
            mock=bool(data.get("mock", False)),
            source=str(data.get("src", "native")),
        )
