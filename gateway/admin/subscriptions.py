"""A workspace's subscription (its plan) and its live quota counters (README "Rate limits",
plans and quotas).

Design decision: ``GET …/subscription`` of a workspace without one answers 200 with
``subscription_id: null``, ``started_at: null`` and ``plan`` = ``default_plan`` (null when there
is none): what is in force, never a 404 for a workspace that exists.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.admin.handler import actor, json_response, read_json, visible_workspace
from gateway.admin.route import BAD, Route, returns
from gateway.admin.state import KEY_SERVICE, SERVICES
from gateway.keys.model import Subscription
from gateway.keys.service import KeyService
from gateway.services import Services

SUBSCRIPTION = "/admin/v1/workspaces/{workspace_id}/subscription"
QUOTA = "/admin/v1/workspaces/{workspace_id}/quota"


def _public(request: web.Request, workspace_id: str, found: Subscription | None) -> dict[str, Any]:
    if found is not None:
        return found.to_public()
    default = request.app[SERVICES].config.default_plan
    return {"subscription_id": None, "workspace_id": workspace_id, "plan": default,
            "started_at": None}


async def put_subscription(request: web.Request) -> web.Response:
    workspace_id = visible_workspace(request)
    body = await read_json(request)
    subscription = await request.app[KEY_SERVICE].put_subscription(
        workspace_id, body, actor(request)
    )
    return json_response(subscription.to_public())


async def get_subscription(request: web.Request) -> web.Response:
    workspace_id = visible_workspace(request)
    found = await request.app[KEY_SERVICE].get_subscription(workspace_id)
    return json_response(_public(request, workspace_id, found))


async def get_quota(request: web.Request) -> web.Response:
    workspace_id = visible_workspace(request)
    return json_response({"workspace_id": workspace_id, **await quota_of(request, workspace_id)})


async def quota_of(request: web.Request, workspace_id: str) -> dict[str, Any]:
    return await plan_quota(request.app[SERVICES], request.app[KEY_SERVICE], workspace_id)


async def plan_quota(
    services: Services, key_service: KeyService, workspace_id: str
) -> dict[str, Any]:
    """The plan in force with the live counters of the limiter (every node's, on Redis); the
    console's Plan page shows the same."""
    found = await key_service.get_subscription(workspace_id)
    name = found.plan if found is not None else services.config.default_plan
    plan = services.config.plans.get(name) if name is not None else None
    usage = await services.limiter.quota_usage(workspace_id)
    day = plan.quota.day if plan else None
    month = plan.quota.month if plan else None
    return {
        "plan": name,
        "day": {"limit": day, "used": usage.day, "reset": max(0, round(usage.day_reset))},
        "month": {"limit": month, "used": usage.month, "reset": max(0, round(usage.month_reset))},
        "shadow": plan.quota.shadow if plan else False,
    }


ROUTES = (
    Route("PUT", SUBSCRIPTION, put_subscription, "Set subscription", returns(200, "Subscription"),
          body="SubscriptionPut", errors=BAD),
    Route("GET", SUBSCRIPTION, get_subscription, "Get subscription",
          returns(200, "Subscription")),
    Route("GET", QUOTA, get_quota, "Get quota", returns(200, "Quota")),
)
