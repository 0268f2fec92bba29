"""The Plan page (README "Web console"): the workspace's subscription, its plan's limits, the
live quota counters and 30 days of the workspace's usage. Plans change through the admin API
(operators), so this page only reads."""

from __future__ import annotations

import time

from aiohttp import web

from gateway.admin.subscriptions import plan_quota
from gateway.console.chart import usage_chart
from gateway.console.page import Page, own_keys_only, render, services, session
from gateway.console.state import KEY_SERVICE
from gateway.keys.usage_report import Window

DAY = 86400


async def plan_page(request: web.Request) -> web.Response:
    me, key_service = session(request), request.app[KEY_SERVICE]
    quota = await plan_quota(services(request), key_service, me.workspace_id)
    config = services(request).config
    plan = config.plans.get(quota["plan"]) if quota["plan"] else None
    end = (int(time.time()) // DAY + 1) * DAY
    report = await key_service.workspace_usage(me.workspace_id,
                                               Window("day", DAY, end - 30 * DAY, end))
    return render(request, "plan.html", quota=quota, plan=plan, defaults=config.defaults,
                  subscription=await key_service.get_subscription(me.workspace_id),
                  chart=usage_chart(report),
                  top_keys=[] if own_keys_only(request) else report["top_keys"])


PAGES = (Page("GET", "/plan", plan_page, "viewer"),)
