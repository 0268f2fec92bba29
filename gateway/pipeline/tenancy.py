"""Tenancy: ``X-Project-Id`` selects a project of the key's workspace (default: the key's
project, else the workspace default); ``X-Namespace`` (name or ``ns_…`` id), else
``?namespace=``, selects a namespace of the workspace. A selector given twice (two headers, two
query values, or a header and a query value that disagree) is refused, 400 ``validation_error``:
the one authorised and the one the upstream reads could differ (README "Security and
reliability")."""

from __future__ import annotations

from collections.abc import Awaitable

from aiohttp import web
from multidict import istr

from gateway.config import RouteConfig
from gateway.errors import (
    NAMESPACE_NOT_FOUND,
    PROJECT_NOT_FOUND,
    VALIDATION_ERROR,
    GatewayError,
    StoreUnavailable,
)
from gateway.exchange import Check, Exchange
from gateway.keys.tenancy_cache import TenancyCache, WorkspaceView
from gateway.services import Services

PROJECT_HEADER, NAMESPACE_HEADER = istr("X-Project-Id"), istr("X-Namespace")  # looked up as is


def single_header(request: web.Request, name: str) -> str | None:
    if name not in request.headers:  # the common case, without building a list
        return None
    values = request.headers.getall(name)
    if len(values) > 1:
        raise GatewayError(VALIDATION_ERROR, f"at most one {name} header is allowed")
    return values[0].strip()


def namespace_selector(request: web.Request, header: str | None) -> str | None:
    """The namespace asked for: the header, else ``?namespace=``; never two different ones."""
    values = request.query.getall("namespace", ())
    if len(values) > 1:
        raise GatewayError(VALIDATION_ERROR, "at most one namespace query parameter is allowed")
    if not values:
        return header
    if header is not None and header != values[0].strip():
        raise GatewayError(VALIDATION_ERROR, "X-Namespace and ?namespace= disagree")
    return values[0].strip()


async def select_project(cache: TenancyCache, view: WorkspaceView, wanted: str) -> str:
    if wanted not in view.project_ids:
        view = await cache.refreshed(view)
        if wanted not in view.project_ids:
            raise GatewayError(PROJECT_NOT_FOUND, "no such project in this key's workspace")
    return wanted


async def select_namespace(
    cache: TenancyCache, view: WorkspaceView, ref: str
) -> tuple[str, str]:
    found = view.namespace(ref)
    if found is None:
        found = (await cache.refreshed(view)).namespace(ref)
        if found is None:
            raise GatewayError(NAMESPACE_NOT_FOUND, "no such namespace in this key's workspace")
    return found


def build(route: RouteConfig, services: Services) -> Check | None:
    if route.auth == "none":
        return None
    cache = services.tenancy
    metrics = services.metrics

    async def resolve(
        exchange: Exchange, wanted_project: str | None, namespace_ref: str | None
    ) -> None:
        key = exchange.key
        assert key is not None and key.workspace_id is not None  # ensured by authenticate
        try:
            view = await cache.view(key.workspace_id)
            if wanted_project:
                exchange.project_id = await select_project(cache, view, wanted_project)
            else:
                exchange.project_id = key.project_id or view.default_project_id
            if namespace_ref:
                exchange.namespace_id, exchange.namespace_name = await select_namespace(
                    cache, view, namespace_ref
                )
        except StoreUnavailable:
            metrics.count_store_error("tenancy")
            raise  # answered by the proxy (gateway.pipeline.failure)

    def tenancy(exchange: Exchange) -> Awaitable[None] | None:
        key = exchange.key
        assert key is not None  # authenticate runs first on every auth route
        request = exchange.request
        wanted_project = single_header(request, PROJECT_HEADER)
        namespace_ref = single_header(request, NAMESPACE_HEADER)
        if exchange.query:  # parse the query only when there is one
            namespace_ref = namespace_selector(request, namespace_ref)
        if wanted_project is None and namespace_ref is None and key.project_id is not None:
            exchange.project_id = key.project_id  # the common case: no lookup, no waiting
            return None
        return resolve(exchange, wanted_project, namespace_ref)  # the driver awaits it

    return tenancy
