"""THE request path, in order (README "The request path"). Read this file to know what runs
before what.

Every stage is a check built once at start-up: it refuses the request by raising
``GatewayError``, answers it itself by returning a response (a CORS preflight), or returns
None. Only when it has to wait (a key-cache miss, Redis) does it return an awaitable instead,
which the driver awaits, so the common request creates no coroutine per stage. A stage that
does not apply to a route (``auth: none``, no ``cors``) builds no check for it. One driver runs
the checks in order, the last of them ``forward``; it renders errors and runs the cleanups stages
registered (a concurrency slot given back) once the response is sent.

Checks run one after another rather than wrapping each other, so while ``forward`` waits on the
upstream only the driver's frame sits above it: every resumption of a deep chain of coroutines
costs time on each frame, and the request path resumes several times per request.

Everything built from one config is a ``Pipeline``; the driver reads the one in force from a
``PipelineHolder`` once per request, so a reload (``gateway.reload``) swaps it whole for new
requests while requests already running finish on the one they started with.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import perf_counter

from aiohttp import web

from gateway.config import RouteConfig
from gateway.exchange import Check, Exchange
from gateway.pipeline import (
    address_limit,
    authenticate,
    authorize,
    cors,
    failed_auth,
    failure,
    forward,
    match,
    rate_limit,
    request_id,
    tenancy,
    trace,
    verify,
)
from gateway.pipeline.record import build_recorder
from gateway.services import Services

FRONT_STAGES: tuple[Callable[[Services], Callable[[Exchange], None]], ...] = (
    request_id.build,  # X-Request-Id in and out
    match.build,  # 400 malformed path/headers, 404 route_not_found
)

ROUTE_STAGES: tuple[Callable[[RouteConfig, Services], Check | None], ...] = (
    cors.build,  # preflights answered here, never forwarded
    address_limit.build,  # auth: none routes: their rate_limit per client address (429)
    failed_auth.build,  # an address past its failed-auth budget: 429 before any key lookup
    authenticate.build,  # Bearer key -> key record (401, 503 auth_unavailable)
    authorize.build,  # permissions, resource scopes, allowed origins (403)
    tenancy.build,  # X-Project-Id, X-Namespace (404)
    rate_limit.build,  # sliding window + in-flight cap per key, one limiter call (429)
    forward.build,  # to the upstream, count usage: the last stage answers every request
)
# A verify route (README "Forward auth") runs, for the proxy route its original request
# matches, those same stages with the last one answering 200 instead of forwarding: built from
# ROUTE_STAGES, so a stage added there is checked by forward auth too.
VERIFY_STAGES: tuple[Callable[[RouteConfig, Services], Check | None], ...] = (
    *ROUTE_STAGES[:-1],
    verify.answer,  # 200, empty body, the identity headers the upstream would have received
)
# Failures from any of them: failure.build decides the answer (gateway.problem renders it),
# in the driver below; a 401 is counted against its address's failed-auth budget there.


class RoutePath:
    """One route's checks, built once; the last one (forward, or verify's) always answers."""

    __slots__ = ("checks",)

    def __init__(self, checks: tuple[Check, ...]) -> None:
        self.checks = checks


def build_checks(
    stages: tuple[Callable[[RouteConfig, Services], Check | None], ...],
    route: RouteConfig,
    services: Services,
) -> tuple[Check, ...]:
    checks = [(stage, c) for stage in stages if (c := stage(route, services))]
    if trace.is_wanted():  # debug: every verdict logged (decided here, once)
        checks = [(stage, trace.traced(trace.stage_name(stage), c)) for stage, c in checks]
    return tuple(c for _stage, c in checks)


def route_paths(services: Services) -> dict[str, RoutePath]:
    """Each route's checks by name; only a config with a verify route builds VERIFY_STAGES."""
    routes = services.config.routes
    proxied = [r for r in routes if r.mode == "proxy"]
    paths = {r.name: RoutePath(build_checks(ROUTE_STAGES, r, services)) for r in proxied}
    verifying = [r for r in routes if r.mode == "verify"]
    if verifying:
        chains = {r.name: build_checks(VERIFY_STAGES, r, services) for r in proxied}
        check = verify.build(proxied, chains, services)
        if trace.is_wanted():
            check = trace.traced("forward_auth", check)  # the inner answer is "verify"
        checking = RoutePath((check,))  # one for them all
        paths.update((r.name, checking) for r in verifying)
    return paths


class Pipeline:
    """Every stage built from one ``Services`` (one config), and how many requests run on it."""

    __slots__ = ("front", "handle_errors", "idle", "in_flight", "paths", "record")

    def __init__(self, services: Services) -> None:
        self.paths = route_paths(services)
        self.front = tuple(stage(services) for stage in FRONT_STAGES)
        if trace.is_wanted():
            names = (trace.stage_name(stage) for stage in FRONT_STAGES)
            self.front = tuple(trace.traced(n, c) for n, c in zip(names, self.front, strict=True))
        self.handle_errors = failure.build(services)
        self.record = build_recorder(services)  # metrics and access log, once per request
        self.in_flight = 0
        self.idle: asyncio.Event | None = None  # made by wait_idle, set by the driver

    async def wait_idle(self) -> None:
        """Return once no request runs on this pipeline (after it stopped getting new ones)."""
        if self.in_flight:
            if self.idle is None:
                self.idle = asyncio.Event()
            await self.idle.wait()


class PipelineHolder:
    """The pipeline in force; ``gateway.reload`` replaces it."""

    __slots__ = ("pipeline",)

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline


def build_pipeline(
    services: Services, holder: PipelineHolder | None = None
) -> Callable[[web.BaseRequest], object]:
    """The proxy's request handler, driving ``holder``'s pipeline (one is built if not given)."""
    current = holder or PipelineHolder(Pipeline(services))
    metrics = services.metrics  # one for the process: a reload keeps it

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        # one frame drives everything: see the module docstring for why nothing nests
        started = perf_counter()
        metrics.in_flight += 1
        exchange = Exchange(request)  # type: ignore[arg-type]
        pipeline = current.pipeline  # read once: no request mixes two configs
        pipeline.in_flight += 1
        response: web.StreamResponse | None = None  # still None in finally: cancelled
        try:
            for refuse in pipeline.front:
                refuse(exchange)  # front checks are plain functions that refuse by raising
            assert exchange.match is not None  # routing raised route_not_found otherwise
            path = pipeline.paths[exchange.match.route.name]
            for check in path.checks:
                answer = check(exchange)
                if answer is None:
                    continue
                if not isinstance(answer, web.StreamResponse):
                    answer = await answer  # a check that has to wait (the store, Redis)
                    if answer is None:
                        continue
                response = answer  # forward's answer, or a CORS preflight answered early
                break
        except Exception as exc:  # the one place a bare Exception is caught
            response = await pipeline.handle_errors(exchange, exc)
        finally:
            pipeline.in_flight -= 1  # done with its upstream: the response is sent or buffered
            metrics.in_flight -= 1
            if pipeline.idle is not None and not pipeline.in_flight:
                pipeline.idle.set()
            if exchange.cleanups is not None:
                run_cleanups(exchange)
            pipeline.record(exchange, response, perf_counter() - started)
        assert response is not None  # forward, the last stage, answers every request
        return response

    return handle


def run_cleanups(exchange: Exchange) -> None:
    """The response is already decided (often sent): a failing cleanup is logged, not raised."""
    for cleanup in exchange.cleanups or ():
        try:
            cleanup()
        except Exception:
            failure.log.exception("cleanup failed", extra={"request_id": exchange.request_id})
