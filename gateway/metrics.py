"""Prometheus metrics with a registry per app (tests build many apps in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field

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

    def observe_ussd(self, provider: str, outcome: str, elapsed_s: float) -> None:
        self.ussd_steps.labels(provider, outcome).inc()
        self.ussd_latency.labels(provider).observe(elapsed_s)

    def observe(self, method: str, route: str, status: int, elapsed_s: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(elapsed_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
