"""The gateway's metrics: counts and latency buckets as Prometheus reads them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Metrics


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counts_buckets_and_sums() -> None:
    m = Metrics()
    for elapsed in (0.001, 0.002, 0.003, 0.2, 20.0):
        m.observe("POST", "/ussd/{provider}", 200, elapsed)
    m.observe("GET", "/healthz", 404, 0.01)
    m.observe_ussd("africastalking", "end", 0.004)
    m.observe_ussd("africastalking", "end", 0.004)
    m.observe_ussd("hubtel", "replay", 3.0)
    s = _samples(m)
    post = (("method", "POST"), ("route", "/ussd/{provider}"))
    assert s[("gateway_http_requests_total", (*post, ("status", "200")))] == 5
    assert (
        s[
            (
                "gateway_http_requests_total",
                (("method", "GET"), ("route", "/healthz"), ("status", "404")),
            )
        ]
        == 1
    )
    bucket = "gateway_http_request_duration_seconds_bucket"
    # le is "less than or equal": 0.002 falls in the 0.002 bucket; buckets are cumulative.
    assert s[(bucket, (("le", "0.002"), *post))] == 2
    assert s[(bucket, (("le", "0.005"), *post))] == 3
    assert s[(bucket, (("le", "0.25"), *post))] == 4
    assert s[(bucket, (("le", "10.0"), *post))] == 4
    assert s[(bucket, (("le", "+Inf"), *post))] == 5
    assert s[("gateway_http_request_duration_seconds_count", post)] == 5
    assert abs(s[("gateway_http_request_duration_seconds_sum", post)] - 20.206) < 1e-9
    at = (("provider", "africastalking"),)
    assert s[("gateway_ussd_steps_total", (("outcome", "end"), *at))] == 2
    assert s[("gateway_ussd_steps_total", (("outcome", "replay"), ("provider", "hubtel")))] == 1
    assert s[("gateway_ussd_step_duration_seconds_bucket", (("le", "0.005"), *at))] == 2
    assert (
        s[("gateway_ussd_step_duration_seconds_bucket", (("le", "2.5"), ("provider", "hubtel")))]
        == 0
    )
    assert (
        s[("gateway_ussd_step_duration_seconds_bucket", (("le", "5.0"), ("provider", "hubtel")))]
        == 1
    )


def test_two_apps_keep_their_own_counts() -> None:
    a, b = Metrics(), Metrics()
    a.observe("GET", "/x", 200, 0.1)
    assert (
        "gateway_http_requests_total",
        (("method", "GET"), ("route", "/x"), ("status", "200")),
    ) in _samples(a)
    assert not any(name == "gateway_http_requests_total" for name, _ in _samples(b))


def test_claim_takeovers_count_by_reason() -> None:
    m = Metrics()
    assert not any(name == "gateway_ussd_claim_takeovers_total" for name, _ in _samples(m))
    for reason in ("instance", "instance", "own", "stale"):
        m.observe_takeover(reason)
    s = _samples(m)
    assert s[("gateway_ussd_claim_takeovers_total", (("reason", "instance"),))] == 2
    assert s[("gateway_ussd_claim_takeovers_total", (("reason", "own"),))] == 1
    assert s[("gateway_ussd_claim_takeovers_total", (("reason", "stale"),))] == 1


def test_held_final_writes_count_by_outcome() -> None:
    m = Metrics()
    assert not any(name == "gateway_ussd_final_writes_total" for name, _ in _samples(m))
    for outcome in ("stored", "stored", "lost", "dropped"):
        m.observe_final_write(outcome)
    s = _samples(m)
    assert s[("gateway_ussd_final_writes_total", (("outcome", "stored"),))] == 2
    assert s[("gateway_ussd_final_writes_total", (("outcome", "lost"),))] == 1
    assert s[("gateway_ussd_final_writes_total", (("outcome", "dropped"),))] == 1
