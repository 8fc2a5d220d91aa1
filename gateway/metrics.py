"""Prometheus metrics with a registry per app (tests build many apps in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "gateway_http_requests_total",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gateway_http_request_duration_seconds",
            "HTTP request latency by route",
            ["method", "route"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )

        self.ussd_steps = Counter(
            "gateway_ussd_steps_total",
            "USSD steps by provider and outcome (ok, end, invalid, replay, busy, error ...)",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.ussd_latency = Histogram(
            "gateway_ussd_step_duration_seconds",
            "USSD step latency by provider",
            ["provider"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )

        # Labelled children by label values: `labels()` validates and locks on every call, which
        # cost a few percent of a USSD step. Label values are bounded (routes, statuses,
        # providers, outcomes), so are these.
        self._children: dict[tuple[object, ...], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def observe_ussd(self, provider: str, outcome: str, elapsed_s: float) -> None:
        self._child(self.ussd_steps, provider, outcome).inc()
        self._child(self.ussd_latency, provider).observe(elapsed_s)

    def observe(self, method: str, route: str, status: int, elapsed_s: float) -> None:
        self._child(self.requests, method, route, str(status)).inc()
        self._child(self.latency, method, route).observe(elapsed_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
