"""Fast look-ups over many fences.

`FenceIndex` answers "which fences contain this point" with an STRtree over the fences' WGS84
envelopes, then the exact test on the few candidates. `FenceCatalog` is what the ingest path
holds: every fence by id, each agent's assigned fences and optional schedule, and the index; it is
built once from the store and replaced whole when fences or assignments change, so a reader never
sees half an update.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely

from geofence.fences import Fence
from geofence.schedule import Schedule


class FenceIndex:
    def __init__(self, fences: Sequence[Fence]) -> None:
        self._fences = list(fences)
        self._tree = shapely.STRtree([f.envelope() for f in self._fences])

    def __len__(self) -> int:
        return len(self._fences)

    def candidates(self, lon: float, lat: float) -> list[Fence]:
        """Fences whose envelope holds the point (a superset of those containing it)."""
        hits = self._tree.query(shapely.Point(lon, lat))
        return [self._fences[i] for i in np.sort(hits)]

    def containing(self, lon: float, lat: float) -> list[Fence]:
        """Fences that contain the point (boundary excluded), in id order."""
        found = [f for f in self.candidates(lon, lat) if f.measure(lon, lat)[0]]
        return sorted(found, key=lambda f: f.id)


@dataclass(frozen=True)
class FenceCatalog:
    fences: Mapping[int, Fence] = field(default_factory=dict)
    assignments: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    schedules: Mapping[str, Schedule] = field(default_factory=dict)
    index: FenceIndex = field(default_factory=lambda: FenceIndex([]))

    @classmethod
    def build(
        cls,
        fences: Iterable[Fence],
        assignments: Mapping[str, Sequence[int]],
        schedules: Mapping[str, Schedule] | None = None,
    ) -> FenceCatalog:
        by_id = {f.id: f for f in fences}
        assigned = {code: tuple(i for i in ids if i in by_id) for code, ids in assignments.items()}
        return cls(by_id, assigned, dict(schedules or {}), FenceIndex(list(by_id.values())))

    def fences_for(self, agent_code: str) -> list[Fence]:
        return [self.fences[i] for i in self.assignments.get(agent_code, ())]

    def schedule_for(self, agent_code: str) -> Schedule | None:
        return self.schedules.get(agent_code)
