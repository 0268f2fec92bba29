"""The Grafana dashboard (deploy/grafana/gateway-dashboard.json) queries only metrics that a
running gateway exports: every metric name in every PromQL expression must have a TYPE line in
``/metrics``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import Gateway, bearer
from tests.ops.metrics_text import scrape

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "gateway-dashboard.json"
IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
# what, in a PromQL expression, is not a metric name
NOT_METRICS = re.compile(
    r'"(?:[^"\\]|\\.)*"'  # strings: label values, regexes
    r"|\{[^}]*\}"  # label matchers
    r"|\[[^\]]*\]"  # range selectors
    r"|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"  # label lists
    r"|\$\w+"  # dashboard variables
    r"|\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b"  # numbers
)
LABEL_VALUES = re.compile(r"\blabel_values\((.*),\s*\w+\s*\)")  # Grafana's: (metric, label)
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "rate", "irate", "increase", "delta", "idelta", "histogram_quantile", "clamp_min",
    "clamp_max", "abs", "ceil", "floor", "round", "label_values", "and", "or", "unless",
    "offset", "bool", "vector", "scalar", "time", "absent", "sort", "sort_desc",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def expressions(dashboard: dict[str, Any]) -> Iterator[str]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            yield query["query"] if isinstance(query, dict) else query


def metric_names(expr: str) -> set[str]:
    bare = NOT_METRICS.sub(" ", LABEL_VALUES.sub(r"(\1)", expr))
    return {name for name in IDENTIFIER.findall(bare) if name not in PROMQL_WORDS}


def exported(text: str) -> dict[str, str]:
    """name -> type, from the ``# TYPE`` lines."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


def is_exported(name: str, types: dict[str, str]) -> bool:
    if name in types:
        return True
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and types.get(base) in ("histogram", "summary"):
            return True
    return False


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (route, le) (rate(gateway_x_seconds_bucket'
        '{job=~"$job",code="rate_limited"}[$__rate_interval]))) / sum(gateway_y_total) '
        'and on (route) label_values(gateway_z, job)'
    )
    assert metric_names(expr) == {"gateway_x_seconds_bucket", "gateway_y_total", "gateway_z"}
    types = {"gateway_x_seconds": "histogram", "gateway_y_total": "counter"}
    assert is_exported("gateway_x_seconds_bucket", types)
    assert is_exported("gateway_y_total", types)
    assert not is_exported("gateway_y_total_count", types)  # only histograms have buckets
    assert not is_exported("gateway_y", types)


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        for target in panel.get("targets", []):
            assert target["expr"].count("(") == target["expr"].count(")")


async def test_every_metric_the_dashboard_queries_is_exported(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    key = await gateway.key()
    for path in ("/api/ai/models", "/nowhere"):
        async with http.get(f"{gateway.url}{path}", headers=bearer(key)) as response:
            assert response.status in (200, 404)
    types = exported(await scrape(http, gateway.admin_url))
    dashboard = json.loads(DASHBOARD.read_text())
    queried = set().union(*(metric_names(e) for e in expressions(dashboard)))
    assert len(queried) >= 15
    missing = sorted(name for name in queried if not is_exported(name, types))
    assert not missing, f"queried by the dashboard, not in /metrics: {missing}"
