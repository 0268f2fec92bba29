"""Every metric the gateway exports, declared once (prometheus-client), with bounded labels:
route name (or ``none``), method (a fixed set, else ``OTHER``), status class, error code, limiter
policy, store operation, cache result. Never a key, a path or an address.

Each ``Metrics`` has its own registry, so several gateways in one process (the tests) never
share a series. Two ways numbers get in:

- **tallied**: what every request adds (``observe_request``; the upstream latency, through the
  ``Tally`` from ``upstream_latency``) goes into plain numbers first — an int increment and a
  bucket found by bisection, no lock and no file write — and reaches prometheus-client's children
  in ``sample()``, like the sampled values below (README "Metrics and logs");
- **observed**: what happens once per event (``count_error``, ...) calls a bound child at once;
- **sampled**: what the gateway already counts in plain numbers (key-cache stats, in-flight
  requests, upstream pool sizes, upstream targets in service and their ejections) is copied in
  by ``sample()``: before every render and, with workers, every second. It costs the request
  path nothing.

With ``workers: N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start:
prometheus-client then keeps every value in a per-process file there, and ``render()`` in any
worker reads all the files (``MultiProcessCollector``), so each scrape shows the totals of all
workers. Observed values are exact at once; tallied and sampled ones of the other workers are up
to ``SAMPLE_INTERVAL`` old; gauges are summed over live workers (``livesum``).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.errors import (
    CONCURRENCY_LIMITED,
    DISABLED_API_KEY,
    EXPIRED_API_KEY,
    INSUFFICIENT_PERMISSIONS,
    INVALID_API_KEY,
    IP_NOT_ALLOWED,
    MISSING_API_KEY,
    ORIGIN_NOT_ALLOWED,
    RATE_LIMITED,
    RESOURCE_FORBIDDEN,
    REVOKED_API_KEY,
)
from gateway.periodic import Periodic

if TYPE_CHECKING:
    from gateway.health import TargetHealth
    from gateway.keys.cache import KeyCache
    from gateway.limiter.base import RateLimiter
    from gateway.upstream import UpstreamGroup

# ``*_created`` series double the series count and say nothing a restart does not
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    math.inf,
)
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, math.inf)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT",
                     "TRACE"})
STATUS_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")
NO_ROUTE = "none"  # the route label of a request no route matched
# 401 and 403: the refusals that name what is wrong with the key or the caller
AUTH_FAILURE_CODES = frozenset(
    kind.code
    for kind in (MISSING_API_KEY, INVALID_API_KEY, REVOKED_API_KEY, EXPIRED_API_KEY,
                 DISABLED_API_KEY,
                 INSUFFICIENT_PERMISSIONS, RESOURCE_FORBIDDEN, ORIGIN_NOT_ALLOWED,
                 IP_NOT_ALLOWED)
)
SAMPLE_INTERVAL = 1.0  # seconds, with workers: how old another worker's sampled values may be


def is_multiprocess() -> bool:
    """Whether prometheus-client keeps values in ``PROMETHEUS_MULTIPROC_DIR`` files (decided
    when it was first imported, from the environment)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def status_class(status: int) -> str:
    hundreds = status // 100
    return STATUS_CLASSES[hundreds] if 1 <= hundreds <= 5 else "other"


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.multiprocess = is_multiprocess()
        self._render_registry = registry
        if self.multiprocess:
            self._render_registry = CollectorRegistry()
            MultiProcessCollector(self._render_registry)  # type: ignore[no-untyped-call]
        self.in_flight = 0  # requests being handled: the driver adds and removes, sample() reads
        self._declare_requests(registry)
        self._declare_refusals(registry)
        self._declare_dependencies(registry)
        self._declare_secret_scanning(registry)
        self._request_tallies: dict[tuple[str, str, int], RequestTally] = {}
        self._histogram_tallies: dict[int, Tally] = {}  # by id() of the child they feed
        self._error_children: dict[tuple[str, str], tuple[Counter, ...]] = {}
        self._shadow_children: dict[str, Counter] = {}
        self._cache: KeyCache | None = None
        self._limiter: RateLimiter | None = None
        self._upstreams: Mapping[str, UpstreamGroup] = {}
        self._pool_routes: set[str] = set()  # routes whose pool gauges were last set
        # (route, target) -> the health last sampled and its ejections then
        self._targets: dict[tuple[str, str], tuple[TargetHealth, int]] = {}
        self._sampled: dict[str, float] = {}
        self._sampler = Periodic(SAMPLE_INTERVAL, self._sample_tick)

    # -- declarations -----------------------------------------------------------------------

    def _declare_requests(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "gateway_requests", "Requests on the public listener, by route, method and status "
            "class (499: the client left first).", ("route", "method", "status_class"),
            registry=registry,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds", "From the request's arrival to its response "
            "(streamed bodies: to the last byte).", ("route",), buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds", "From sending the request upstream to the "
            "upstream's response head (answered requests only).", ("route",),
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.in_flight_gauge = Gauge(
            "gateway_requests_in_flight", "Requests being handled now.",
            multiprocess_mode="livesum", registry=registry,
        )
        self.upstream_connections = Gauge(
            "gateway_upstream_connections", "Upstream connections open, busy (a request on "
            "them) or idle (kept alive for reuse).", ("route", "state"),
            multiprocess_mode="livesum", registry=registry,
        )
        self.upstream_up = Gauge(
            "gateway_upstream_up", "1 while a route's upstream target is in service, 0 while "
            "it is ejected (README \"Upstream health\"); with workers, the lowest of theirs.",
            ("route", "target"), multiprocess_mode="livemin", registry=registry,
        )
        self.upstream_ejections = Counter(
            "gateway_upstream_ejections", "Times a route's upstream target was ejected for "
            "failing (README \"Upstream health\").", ("route", "target"), registry=registry,
        )

    def _declare_refusals(self, registry: CollectorRegistry) -> None:
        self.errors = Counter(
            "gateway_errors", "Requests answered with a gateway error (problem+json), by code.",
            ("code",), registry=registry,
        )
        self.auth_failures = Counter(
            "gateway_auth_failures", "Requests refused with 401 or 403, by code.", ("code",),
            registry=registry,
        )
        self.rate_limited = Counter(
            "gateway_rate_limited", "Requests refused with 429 rate_limited, by route.",
            ("route",), registry=registry,
        )
        self.concurrency_limited = Counter(
            "gateway_concurrency_limited", "Requests refused with 429 concurrency_limited, by "
            "route.", ("route",), registry=registry,
        )
        self.shadow_refusals = Counter(
            "gateway_shadow_refusals", "Requests a shadow rule would have refused and that were "
            "forwarded, by the code it would have answered (README \"Shadow mode\").",
            ("rule",), registry=registry,
        )
        self.connections_closed = Counter(
            "gateway_connections_closed", "Public-listener connections the gateway closed "
            "unanswered, by reason (max_connections: over the cap at once; header_timeout: no "
            "byte of a request within limits.header_timeout).", ("reason",), registry=registry,
        )

    def _declare_dependencies(self, registry: CollectorRegistry) -> None:
        self.limiter_errors = Counter(
            "gateway_limiter_errors", "Rate-limit backend calls that failed.", registry=registry,
        )
        self.limiter_degraded = Counter(
            "gateway_limiter_degraded_decisions", "Decisions taken without the rate-limit "
            "backend, by the on_limiter_error policy applied (open, closed, local).",
            ("policy",), registry=registry,
        )
        self.limiter_round_trips = Counter(
            "gateway_limiter_round_trips", "Batches of limiter commands sent to Redis (each one "
            "write and one read, for every decision asked for in one event-loop tick).",
            registry=registry,
        )
        self.limiter_commands = Counter(
            "gateway_limiter_commands", "Commands sent to Redis by the limiter (an EVALSHA per "
            "decision, a ZREM per batch of slots given back).", registry=registry,
        )
        self.store_errors = Counter(
            "gateway_store_errors", "Key-store calls that failed, by operation (key_lookup, "
            "tenancy).", ("operation",), registry=registry,
        )
        self.usage_dropped = Counter(
            "gateway_usage_dropped", "Requests whose usage was never written: the key store was "
            "still down at shutdown (README \"Security and reliability\").", registry=registry,
        )
        self.usage_buckets_dropped = Counter(
            "gateway_usage_buckets_dropped", "Usage buckets (one key, one minute) never written: "
            "past usage.max_pending_buckets while the store was down, or still unwritten at "
            "shutdown (README \"Usage over time\").", registry=registry,
        )
        self.usage_pending = Gauge(
            "gateway_usage_pending_buckets", "Usage buckets (one key, one minute) counted and "
            "not yet written.", multiprocess_mode="livesum", registry=registry,
        )
        self.usage_flush = Histogram(
            "gateway_usage_flush_seconds", "Time to write one batch of usage buckets.",
            buckets=LAG_BUCKETS, registry=registry,
        )
        self.key_cache_lookups = Counter(
            "gateway_key_cache_lookups", "Key-cache lookups, by result (hit, negative_hit: a "
            "known-unknown key, miss: the store was asked).", ("result",), registry=registry,
        )
        self.key_cache_stale = Counter(
            "gateway_key_cache_stale_served", "Keys served from an expired cache entry because "
            "the store was down (stale_if_error).", registry=registry,
        )
        self.key_cache_entries = Gauge(
            "gateway_key_cache_entries", "Entries in the key cache (known and unknown keys).",
            multiprocess_mode="livesum", registry=registry,
        )
        self.invalidation_lag = Histogram(
            "gateway_invalidation_lag_seconds", "From a key change's commit to its eviction "
            "from this node's cache.", buckets=LAG_BUCKETS, registry=registry,
        )

    def _declare_secret_scanning(self, registry: CollectorRegistry) -> None:
        self.leaked_tokens = Counter(
            "gateway_secret_scanning_tokens", "Tokens in signed secret-scanning reports, by the "
            "label answered (true_positive: one of our keys, revoked now if it was not yet; "
            "false_positive) (README \"Leaked keys\").", ("label",), registry=registry,
        )
        self.refused_reports = Counter(
            "gateway_secret_scanning_refused_reports", "Secret-scanning reports refused with "
            "401 invalid_signature: unsigned, or not signed by a listed public key.",
            registry=registry,
        )
        self.signing_key_fetches = Counter(
            "gateway_secret_scanning_key_fetches", "Fetches of the public keys URL of "
            "secret-scanning reports, by result (ok, failed).", ("result",), registry=registry,
        )

    # -- observed: called by the request path -----------------------------------------------

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Once per request, from the driver: tallied (see the module docstring), the tallies
        made once per (route, method, status) and kept."""
        if method not in METHODS:
            method = "OTHER"
        tally = self._request_tallies.get((route, method, status))
        if tally is None:
            tally = self._bind_request(route, method, status)
        tally.count += 1
        tally.duration.observe(seconds)

    def _bind_request(self, route: str, method: str, status: int) -> RequestTally:
        duration = self._tally_of(self.request_duration.labels(route))
        tally = RequestTally(self.requests.labels(route, method, status_class(status)), duration)
        self._request_tallies[(route, method, status)] = tally
        return tally

    def upstream_latency(self, route: str) -> Tally:
        """The upstream-latency tally of ``route``, bound once when the route is built."""
        return self._tally_of(self.upstream_duration.labels(route))

    def _tally_of(self, child: Histogram) -> Tally:
        """One tally per histogram child, however many callers bind it."""
        tally = self._histogram_tallies.get(id(child))
        if tally is None:
            tally = self._histogram_tallies[id(child)] = Tally(child)
        return tally

    def count_error(self, code: str, route: str = NO_ROUTE) -> None:
        """One problem+json answer: by code, plus the refusal counter the code belongs to."""
        children = self._error_children.get((code, route))
        if children is None:
            children = self._bind_error(code, route)
        for child in children:
            child.inc()

    def _bind_error(self, code: str, route: str) -> tuple[Counter, ...]:
        children = [self.errors.labels(code)]
        if code in AUTH_FAILURE_CODES:
            children.append(self.auth_failures.labels(code))
        elif code == RATE_LIMITED.code:
            children.append(self.rate_limited.labels(route))
        elif code == CONCURRENCY_LIMITED.code:
            children.append(self.concurrency_limited.labels(route))
        self._error_children[(code, route)] = bound = tuple(children)
        return bound

    def count_shadow_refusal(self, rule: str) -> None:
        """A request forwarded although a shadow rule would have answered ``rule`` (an error
        code of the authorize or rate_limit stage: a bounded set)."""
        child = self._shadow_children.get(rule)
        if child is None:
            child = self._shadow_children[rule] = self.shadow_refusals.labels(rule)
        child.inc()

    def count_limiter_error(self, policy: str) -> None:
        """The limiter failed and ``policy`` (open, closed, local) decided instead."""
        self.limiter_errors.inc()
        self.limiter_degraded.labels(policy).inc()

    def count_store_error(self, operation: str) -> None:
        self.store_errors.labels(operation).inc()

    def observe_invalidation_lag(self, seconds: float) -> None:
        self.invalidation_lag.observe(max(0.0, seconds))  # negative: clock skew, counted as 0

    # -- sampled: plain numbers copied in ---------------------------------------------------

    def watch(
        self,
        cache: KeyCache,
        upstreams: Mapping[str, UpstreamGroup],
        limiter: RateLimiter | None = None,
    ) -> None:
        """What ``sample()`` reads: the key cache's stats, each route's upstream pools and the
        limiter's ``stats()`` (None from the in-process limiter: it makes no round trips)."""
        self._cache = cache
        self._upstreams = upstreams
        self._limiter = limiter

    def sample(self) -> None:
        for request in self._request_tallies.values():
            request.flush()
        for tally in self._histogram_tallies.values():
            tally.flush()
        self.in_flight_gauge.set(self.in_flight)
        for route, group in self._upstreams.items():
            open_, idle = group.usage()
            self.upstream_connections.labels(route, "busy").set(open_ - idle)
            self.upstream_connections.labels(route, "idle").set(idle)
        for route in self._pool_routes - self._upstreams.keys():  # gone with a reload
            for state in ("busy", "idle"):
                self.upstream_connections.labels(route, state).set(0)  # workers' files keep it
                self.upstream_connections.remove(route, state)
        self._pool_routes = set(self._upstreams)
        self._sample_targets()
        cache = self._cache
        if cache is not None:
            stats = cache.stats
            lookups = self.key_cache_lookups
            self._advance("hit", lookups.labels("hit"), stats.hits)
            self._advance("negative_hit", lookups.labels("negative_hit"), stats.negative_hits)
            self._advance("miss", lookups.labels("miss"), stats.misses)
            self._advance("stale", self.key_cache_stale, stats.stale_served)
            self._advance("store", self.store_errors.labels("key_lookup"), stats.store_errors)
            self.key_cache_entries.set(len(cache))
        counts = self._limiter.stats() if self._limiter is not None else None
        if counts is not None:
            self._advance("round_trips", self.limiter_round_trips, counts.batches)
            self._advance("commands", self.limiter_commands, counts.commands)

    def _sample_targets(self) -> None:
        """Each target's up/down gauge and ejections; a reload's new group counts from 0."""
        targets: dict[tuple[str, str], tuple[TargetHealth, int]] = {}
        for route, group in self._upstreams.items():
            for pool in group.pools:
                labels = (route, pool.url)
                health = pool.health
                self.upstream_up.labels(*labels).set(1 if health.up else 0)
                seen, last = self._targets.get(labels, (health, 0))
                if seen is not health:
                    last = 0
                if health.ejections > last:
                    self.upstream_ejections.labels(*labels).inc(health.ejections - last)
                targets[labels] = (health, health.ejections)
        for labels in self._targets.keys() - targets.keys():  # gone with a reload
            self.upstream_up.remove(*labels)
        self._targets = targets

    def _advance(self, name: str, counter: Counter, total: float) -> None:
        """Move ``counter`` up to ``total`` (a running count kept elsewhere)."""
        last = self._sampled.get(name, 0.0)
        if total > last:
            counter.inc(total - last)
        self._sampled[name] = total

    async def _sample_tick(self) -> None:
        self.sample()

    def start(self) -> None:
        """With workers, sample every SAMPLE_INTERVAL so other workers' scrapes see ours."""
        if self.multiprocess:
            self._sampler.start()

    async def stop(self) -> None:
        await self._sampler.stop()
        self.sample()  # the last counts reach the files before the worker exits

    # -- export -----------------------------------------------------------------------------

    def render(self) -> str:
        """Prometheus text format: this process, or with workers all of them."""
        self.sample()
        return generate_latest(self._render_registry).decode()

    def sample_value(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """One sample of this process (0 if absent), e.g. ``gateway_errors_total``."""
        self.sample()
        value = self.registry.get_sample_value(name, dict(labels or {}))
        return 0.0 if value is None else value


class Tally:
    """A histogram child's observations in plain numbers until ``flush`` adds them to it (its
    bucket and sum values: prometheus-client has no call that adds many observations at once).
    Not thread-safe, and needs not be: the event loop is the only caller."""

    __slots__ = ("_child", "_counts", "_sum", "bounds")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self.bounds = tuple(child._upper_bounds)  # ends with +Inf: every value has a bucket
        self._counts = [0] * len(self.bounds)
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        # a bucket counts the values <= its bound: bisect_left finds the first such bound
        self._counts[bisect_left(self.bounds, seconds)] += 1
        self._sum += seconds

    def flush(self) -> None:
        counts = self._counts
        if not any(counts):
            return
        buckets = self._child._buckets
        for i, count in enumerate(counts):
            if count:
                buckets[i].inc(count)
                counts[i] = 0
        self._child._sum.inc(self._sum)
        self._sum = 0.0


class RequestTally:
    """The requests of one (route, method, status): a count, and the route's duration tally."""

    __slots__ = ("_child", "count", "duration")

    def __init__(self, child: Counter, duration: Tally) -> None:
        self._child = child
        self.count = 0
        self.duration = duration

    def flush(self) -> None:
        if self.count:
            self._child.inc(self.count)
            self.count = 0
