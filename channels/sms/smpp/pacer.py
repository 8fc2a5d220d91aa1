"""Per-bind submit pacing: at most the operator's TPS, slower after the SMSC pushes back.

The pacer spaces submits by 1/rate seconds (virtual scheduling, no burst), so the SMSC never
sees more than the configured rate over any window. `ESME_RTHROTTLED` or `ESME_RMSGQFUL` halve
the rate (not below `MIN_RATE_FRACTION` of the configured one) and hold every submit back for a
pause (once for all the submits sent at the old rate: a window throttled at once is one
push-back); each accepted submit then wins a little of the rate back (additive increase,
multiplicative decrease), so the bind finds the rate the SMSC really allows.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

MIN_RATE_FRACTION = 0.1
RECOVERY_STEPS = 50  # accepted submits to climb from the floor back to the configured rate
ACHIEVED_WINDOW_S = 10.0


class Pacer:
    def __init__(self, tps: float) -> None:
        if tps <= 0:
            raise ValueError("tps must be positive")
        self.configured = tps
        self.rate = tps
        self._next_slot = 0.0
        self._epoch = 0
        self._recent: deque[float] = deque(maxlen=max(16, int(tps * ACHIEVED_WINDOW_S) + 1))

    async def wait(self) -> int:
        """Return when the next submit may go, with the pacer's epoch (pass it to `slow_down`
        if that submit is throttled)."""
        while True:
            epoch = self._epoch
            now = time.monotonic()
            slot = max(self._next_slot, now)
            self._next_slot = slot + 1.0 / self.rate
            if slot <= now:
                return epoch
            await asyncio.sleep(slot - now)
            if epoch == self._epoch:
                return epoch
            # A slow-down happened while we slept: our slot was booked at the old rate.

    def delay(self) -> float:
        """Seconds until a submit asked for now would go."""
        return max(0.0, self._next_slot - time.monotonic())

    def accepted(self) -> None:
        self._recent.append(time.monotonic())
        if self.rate < self.configured:
            step = self.configured * (1 - MIN_RATE_FRACTION) / RECOVERY_STEPS
            self.rate = min(self.configured, self.rate + step)

    def slow_down(self, pause_s: float, epoch: int | None = None) -> None:
        """Halve the rate and pause. `epoch` is what `wait` returned for the throttled submit:
        one sent before the last slow-down was paced at the old rate, and its answer is the
        same push-back again (a full window throttled at once halves the rate once)."""
        if epoch is not None and epoch != self._epoch:
            return
        self.rate = max(self.configured * MIN_RATE_FRACTION, self.rate / 2)
        self._next_slot = time.monotonic() + pause_s
        self._epoch += 1

    def achieved(self) -> float:
        """Accepted submits per second over the last ACHIEVED_WINDOW_S seconds."""
        cutoff = time.monotonic() - ACHIEVED_WINDOW_S
        count = sum(1 for t in self._recent if t >= cutoff)
        return round(count / ACHIEVED_WINDOW_S, 2)
