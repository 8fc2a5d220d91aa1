"""Prometheus metrics with a registry per app (tests build many apps in one process).

Every HTTP request and every USSD step is counted and timed, so observing must be cheap.
prometheus_client's own Counter and Histogram take a lock per increment (a histogram: one for
its sum and one for its bucket) and cost ~10 us of CPU per request and per step, a few percent
of a USSD step (bench/ussd.py, measured with callgrind). The gateway observes from its one
event-loop thread, so the hot families are plain counts here (a dict of label values -> count,
a bisect into the bucket bounds) and reach prometheus_client as a custom collector: the
exposition format, names and labels are prometheus_client's, built when `/metrics` is read.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from core import outbox
from core.pg import Db

log = logging.getLogger("gateway.metrics")

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BOUNDS_TEXT = [*(repr(float(b)) for b in LATENCY_BUCKETS_S), "+Inf"]


class _Histogram:
    """Counts per bucket (not cumulative; the last is +Inf) and the sum, for one label set."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS_S, value)] += 1  # le: first bound >= value
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip(_BOUNDS_TEXT, self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


@dataclass(frozen=True)
class _Family:
    name: str
    doc: str
    labels: tuple[str, ...]
    histogram: bool
    values: dict[tuple[str, ...], object] = field(default_factory=dict)

    def metric(self) -> Metric:
        if self.histogram:
            family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
            for key, hist in list(self.values.items()):
                assert isinstance(hist, _Histogram)
                family.add_metric(list(key), hist.buckets(), hist.total)
            return family
        counter = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, count in list(self.values.items()):
            assert isinstance(count, int)
            counter.add_metric(list(key), float(count))
        return counter


class _Families(Collector):
    def __init__(self, families: list[_Family]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.metric()


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    # Awaited by /metrics before it renders: collectors whose figures need a query.
    refreshers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._requests = _Family(
            "gateway_http_requests_total",
            "HTTP requests by route and status",
            ("method", "route", "status"),
            histogram=False,
        )
        self._latency = _Family(
            "gateway_http_request_duration_seconds",
            "HTTP request latency by route",
            ("method", "route"),
            histogram=True,
        )
        self._ussd_steps = _Family(
            "gateway_ussd_steps_total",
            "USSD steps by provider and outcome (ok, end, invalid, replay, busy, error ...)",
            ("provider", "outcome"),
            histogram=False,
        )
        self._ussd_latency = _Family(
            "gateway_ussd_step_duration_seconds",
            "USSD step latency by provider",
            ("provider",),
            histogram=True,
        )
        self._ussd_takeovers = _Family(
            "gateway_ussd_claim_takeovers_total",
            "USSD hops that took over a dead claim, by why it was dead (own: this instance's "
            "step ended without clearing it; instance: its instance's liveness key is gone; "
            "stale: older than the deadline plus the grace period)",
            ("reason",),
            histogram=False,
        )
        self._ussd_final_writes = _Family(
            "gateway_ussd_final_writes_total",
            "USSD steps whose last session write failed and was held to send again, by what "
            "became of it (stored; lost: the session changed meanwhile; expired: not stored "
            "within the claim's grace; dropped: too many held; left: unstored at a stop; error)",
            ("outcome",),
            histogram=False,
        )
        families = [
            self._requests,
            self._latency,
            self._ussd_steps,
            self._ussd_latency,
            self._ussd_takeovers,
            self._ussd_final_writes,
        ]
        self.registry.register(_Families(families))

    @staticmethod
    def _count(family: _Family, key: tuple[str, ...]) -> None:
        values = family.values
        values[key] = values.get(key, 0) + 1  # type: ignore[operator]

    @staticmethod
    def _time(family: _Family, key: tuple[str, ...], elapsed_s: float) -> None:
        hist = family.values.get(key)
        if hist is None:
            hist = family.values[key] = _Histogram()
        hist.observe(elapsed_s)  # type: ignore[attr-defined]

    def observe_ussd(self, provider: str, outcome: str, elapsed_s: float) -> None:
        self._count(self._ussd_steps, (provider, outcome))
        self._time(self._ussd_latency, (provider,), elapsed_s)

    def observe_takeover(self, reason: str) -> None:
        self._count(self._ussd_takeovers, (reason,))

    def observe_final_write(self, outcome: str) -> None:
        self._count(self._ussd_final_writes, (outcome,))

    def observe(self, method: str, route: str, status: int, elapsed_s: float) -> None:
        self._count(self._requests, (method, route, str(status)))
        self._time(self._latency, (method, route), elapsed_s)

    async def refresh(self) -> None:
        for refresh in list(self.refreshers):
            await refresh()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class OutboxCollector(Collector):
    """The outbox for Prometheus: what this process's dispatcher did with each message (sent,
    retry, dead, released) and, read at each scrape, the messages waiting per channel and how
    late the most overdue is (the alert to set: receipts stuck). The backlog query reads the
    partial index on pending rows (core.outbox.backlog); if it fails, its gauges are left out
    and `gateway_outbox_backlog_readable` is 0."""

    def __init__(self, dispatcher: outbox.Dispatcher, db: Db) -> None:
        self.dispatcher = dispatcher
        self.db = db
        self._backlog: list[outbox.Backlog] | None = None

    async def refresh(self) -> None:
        try:
            self._backlog = await outbox.backlog(self.db)
        except Exception:  # a scrape must still answer (the counters, and that this failed)
            log.warning("outbox backlog not readable for /metrics", exc_info=True)
            self._backlog = None

    def collect(self) -> Iterator[Metric]:
        messages = CounterMetricFamily(
            "gateway_outbox_messages",
            "outbox messages this process's dispatcher handled, by channel and outcome (sent; "
            "retry: a temporary failure, tried again later; dead: dead-lettered; released: "
            "claimed too late in its lease, handed back)",
            labels=("channel", "outcome"),
        )
        for (channel, outcome), count in sorted(self.dispatcher.outcomes.items()):
            messages.add_metric([channel, outcome], float(count))
        yield messages
        readable = self._backlog is not None
        yield GaugeMetricFamily(
            "gateway_outbox_backlog_readable",
            "1 when the pending messages could be counted at this scrape",
            value=1.0 if readable else 0.0,
        )
        if self._backlog is None:
            return
        pending = GaugeMetricFamily(
            "gateway_outbox_pending", "outbox messages waiting to be sent", labels=("channel",)
        )
        overdue = GaugeMetricFamily(
            "gateway_outbox_overdue_seconds",
            "how long the most overdue waiting message is past its due time",
            labels=("channel",),
        )
        for row in self._backlog:
            pending.add_metric([row.channel], float(row.pending))
            overdue.add_metric([row.channel], row.overdue_s)
        yield pending
        yield overdue
