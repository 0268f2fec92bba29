"""Plans: the ``plans`` mapping (name -> plan) and the rule that ``default_plan`` names one."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.config.parsers import Ctx, Parser, join, pattern
from gateway.config.section import build

if TYPE_CHECKING:
    from gateway.config.model import Config, PlanConfig

_PLAN_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
plan_name = pattern(
    _PLAN_NAME_RE, "must be 1-64 of a-z 0-9 _ . - (starting with a letter or digit)"
)


def plan_table(cls: type[PlanConfig]) -> Parser[Mapping[str, PlanConfig]]:
    """``{name: {rate_limit, quota, max_concurrent, max_active_keys_per_user}}``; null is {}."""

    def parse(ctx: Ctx, value: object, path: str) -> Mapping[str, PlanConfig]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            ctx.fail(path, "must be a mapping of plan name to plan", value)
        plans: dict[str, PlanConfig] = {}
        for name, item in value.items():
            where = join(path, name)
            plans[plan_name(ctx, name, where)] = build(ctx, cls, item, where, name=name)
        return plans

    return parse


def default_plan_known(ctx: Ctx, top: Mapping[str, object], path: str, config: Config) -> Config:
    if config.default_plan is not None and config.default_plan not in config.plans:
        known = ", ".join(config.plans) or "none declared"
        ctx.fail("default_plan", f"must name a plan of 'plans' ({known})", config.default_plan)
    return config
