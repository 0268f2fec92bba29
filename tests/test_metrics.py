"""The Metrics object on its own: bounded labels, what each counting method counts, sampling."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import HealthConfig
from gateway.health import TargetHealth
from gateway.keys.cache import CacheStats
from gateway.metrics import Metrics, status_class


def families(metrics: Metrics) -> dict[str, str]:
    """name -> type, as a scraper sees them."""
    return {f.name: f.type for f in text_string_to_metric_families(metrics.render())}


def test_every_metric_is_declared_even_before_it_counts() -> None:
    names = families(Metrics())
    assert names == {
        "gateway_requests": "counter",
        "gateway_request_duration_seconds": "histogram",
        "gateway_upstream_duration_seconds": "histogram",
        "gateway_requests_in_flight": "gauge",
        "gateway_upstream_connections": "gauge",
        "gateway_upstream_up": "gauge",
        "gateway_upstream_ejections": "counter",
        "gateway_errors": "counter",
        "gateway_auth_failures": "counter",
        "gateway_rate_limited": "counter",
        "gateway_concurrency_limited": "counter",
        "gateway_shadow_refusals": "counter",
        "gateway_connections_closed": "counter",
        "gateway_limiter_errors": "counter",
        "gateway_limiter_degraded_decisions": "counter",
        "gateway_limiter_round_trips": "counter",
        "gateway_limiter_commands": "counter",
        "gateway_store_errors": "counter",
        "gateway_usage_dropped": "counter",
        "gateway_usage_buckets_dropped": "counter",
        "gateway_usage_pending_buckets": "gauge",
        "gateway_usage_flush_seconds": "histogram",
        "gateway_key_cache_lookups": "counter",
        "gateway_key_cache_stale_served": "counter",
        "gateway_key_cache_entries": "gauge",
        "gateway_invalidation_lag_seconds": "histogram",
        "gateway_secret_scanning_tokens": "counter",
        "gateway_secret_scanning_refused_reports": "counter",
        "gateway_secret_scanning_key_fetches": "counter",
    }


def test_two_instances_never_share_a_series() -> None:
    first, second = Metrics(), Metrics()
    first.count_error("route_not_found")
    assert first.sample_value("gateway_errors_total", {"code": "route_not_found"}) == 1
    assert second.sample_value("gateway_errors_total", {"code": "route_not_found"}) == 0


def test_requests_by_route_method_and_status_class() -> None:
    metrics = Metrics()
    for method, status in [("GET", 200), ("GET", 204), ("BREW", 404), ("get", 500), ("GET", 99)]:
        metrics.observe_request("models", method, status, 0.002)
    value = metrics.sample_value

    def requests(method: str, status_class: str) -> float:
        labels = {"route": "models", "method": method, "status_class": status_class}
        return value("gateway_requests_total", labels)

    assert requests("GET", "2xx") == 2
    assert requests("OTHER", "4xx") == 1  # an unknown method is never a label value
    assert requests("OTHER", "5xx") == 1  # methods are case-sensitive (RFC 9110 §9.1)
    assert requests("GET", "other") == 1
    assert value("gateway_request_duration_seconds_count", {"route": "models"}) == 5
    assert value("gateway_request_duration_seconds_bucket",
                 {"route": "models", "le": "0.0025"}) == 5


def test_status_classes() -> None:
    assert [status_class(s) for s in (100, 204, 302, 499, 504, 600, 0)] == [
        "1xx", "2xx", "3xx", "4xx", "5xx", "other", "other"
    ]


def test_errors_feed_the_refusal_counters() -> None:
    metrics = Metrics()
    for code, route in [("invalid_api_key", "none"), ("insufficient_permissions", "models"),
                        ("rate_limited", "models"), ("concurrency_limited", "models"),
                        ("upstream_timeout", "models"), ("rate_limited", "models")]:
        metrics.count_error(code, route)
    metrics.count_error("route_not_found")  # the route argument is optional
    value = metrics.sample_value
    assert value("gateway_errors_total", {"code": "rate_limited"}) == 2
    assert value("gateway_errors_total", {"code": "route_not_found"}) == 1
    assert value("gateway_auth_failures_total", {"code": "invalid_api_key"}) == 1
    assert value("gateway_auth_failures_total", {"code": "insufficient_permissions"}) == 1
    assert value("gateway_auth_failures_total", {"code": "upstream_timeout"}) == 0
    assert value("gateway_rate_limited_total", {"route": "models"}) == 2
    assert value("gateway_concurrency_limited_total", {"route": "models"}) == 1


def test_a_limiter_error_is_also_a_degraded_decision() -> None:
    metrics = Metrics()
    for policy in ("open", "local", "local", "closed"):
        metrics.count_limiter_error(policy)
    assert metrics.sample_value("gateway_limiter_errors_total") == 4
    for policy, count in (("open", 1), ("local", 2), ("closed", 1)):
        labels = {"policy": policy}
        assert metrics.sample_value("gateway_limiter_degraded_decisions_total", labels) == count


def test_invalidation_lag_histogram_is_cumulative() -> None:
    metrics = Metrics()
    for seconds in (0.001, 0.02, 0.3, 7.0, -0.5):  # negative: clock skew, counted as 0
        metrics.observe_invalidation_lag(seconds)
    text = metrics.render()
    assert 'gateway_invalidation_lag_seconds_bucket{le="0.005"} 2.0' in text
    assert 'gateway_invalidation_lag_seconds_bucket{le="0.025"} 3.0' in text
    assert 'gateway_invalidation_lag_seconds_bucket{le="0.5"} 4.0' in text
    assert 'gateway_invalidation_lag_seconds_bucket{le="+Inf"} 5.0' in text
    assert "gateway_invalidation_lag_seconds_count 5.0" in text


@dataclass
class FakeCache:
    stats: CacheStats = field(default_factory=CacheStats)
    entries: int = 0

    def __len__(self) -> int:
        return self.entries


@dataclass
class FakePool:
    url: str
    health: TargetHealth = field(default_factory=lambda: TargetHealth(HealthConfig(failures=1)))


@dataclass
class FakeGroup:
    open: int = 0
    idle: int = 0
    pools: list[FakePool] = field(default_factory=list)

    def usage(self) -> tuple[int, int]:
        return self.open, self.idle


def test_sampled_counters_follow_the_running_counts() -> None:
    metrics = Metrics()
    cache = FakeCache()
    group = FakeGroup(open=5, idle=3)
    metrics.watch(cache, {"models": group})  # type: ignore[arg-type, dict-item]
    cache.stats.hits, cache.stats.misses, cache.stats.negative_hits = 10, 2, 1
    cache.stats.store_errors, cache.stats.stale_served, cache.entries = 1, 1, 3
    metrics.in_flight = 4
    value = metrics.sample_value
    assert value("gateway_key_cache_lookups_total", {"result": "hit"}) == 10
    cache.stats.hits = 15
    assert value("gateway_key_cache_lookups_total", {"result": "hit"}) == 15
    assert value("gateway_key_cache_lookups_total", {"result": "miss"}) == 2
    assert value("gateway_key_cache_lookups_total", {"result": "negative_hit"}) == 1
    assert value("gateway_store_errors_total", {"operation": "key_lookup"}) == 1
    assert value("gateway_key_cache_stale_served_total") == 1
    assert value("gateway_key_cache_entries") == 3
    assert value("gateway_requests_in_flight") == 4
    assert value("gateway_upstream_connections", {"route": "models", "state": "busy"}) == 2
    assert value("gateway_upstream_connections", {"route": "models", "state": "idle"}) == 3


def test_each_targets_health_is_sampled_and_a_new_group_counts_from_zero() -> None:
    metrics = Metrics()
    a, b = FakePool("http://a:1"), FakePool("http://b:1")
    metrics.watch(FakeCache(), {"r": FakeGroup(pools=[a, b])})  # type: ignore[arg-type, dict-item]
    value = metrics.sample_value
    a.health.failed("connect failed")
    labels = {"route": "r", "target": "http://a:1"}
    assert value("gateway_upstream_up", labels) == 0
    assert value("gateway_upstream_up", {"route": "r", "target": "http://b:1"}) == 1
    assert value("gateway_upstream_ejections_total", labels) == 1
    a.health.succeeded()
    assert value("gateway_upstream_up", labels) == 1
    # a reload: a new group for the route, its own health; b is gone
    fresh = FakePool("http://a:1")
    metrics.watch(FakeCache(), {"r": FakeGroup(pools=[fresh])})  # type: ignore[arg-type, dict-item]
    fresh.health.failed("reset")
    assert value("gateway_upstream_ejections_total", labels) == 2
    assert "http://b:1" not in metrics.render()


def test_tallied_durations_match_what_prometheus_client_would_have_counted() -> None:
    """Request and upstream durations are tallied in plain numbers and added at sample time:
    the buckets (a value equal to a bound counts in that bound's bucket), the sum and the count
    must be those of observing each value on the histogram itself."""
    from prometheus_client import CollectorRegistry, Histogram

    metrics = Metrics()
    bounds = metrics.request_duration.labels("api")._upper_bounds  # the same bounds
    reference = Histogram("ref_seconds", "reference", registry=CollectorRegistry(),
                          buckets=bounds)
    upstream = metrics.upstream_latency("api")
    values = [0.0, 0.0005, 0.001, 0.0011, 0.005, 0.25, 1.0, 7.5, 1e6]
    for value in values:
        metrics.observe_request("api", "GET", 200, value)
        upstream.observe(value)
        reference.observe(value)
    metrics.observe_request("api", "GET", 200, 0.002)  # two flushes add up
    metrics.sample()
    metrics.observe_request("api", "GET", 200, 0.003)
    reference.observe(0.002)
    reference.observe(0.003)

    expected = {s.labels.get("le"): s.value for s in reference.collect()[0].samples
                if s.name == "ref_seconds_bucket"}
    assert len(expected) > 5
    for le, value in expected.items():
        assert metrics.sample_value("gateway_request_duration_seconds_bucket",
                                    {"route": "api", "le": le}) == value, le
    assert metrics.sample_value("gateway_request_duration_seconds_sum", {"route": "api"}) == \
        pytest.approx(sum(values) + 0.005)
    assert metrics.sample_value("gateway_requests_total", {
        "route": "api", "method": "GET", "status_class": "2xx"}) == len(values) + 2
    assert metrics.sample_value("gateway_upstream_duration_seconds_count",
                                {"route": "api"}) == len(values)
