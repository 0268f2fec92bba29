"""Every metric the gateway keeps, declared once, with bounded labels (error code, limiter
policy). Plain counters for now; ``/metrics`` renders them in Prometheus text format."""

from __future__ import annotations

import math
from collections import Counter

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, math.inf)


class Metrics:
    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()  # by error code
        self.limiter_errors: Counter[str] = Counter()  # by on_limiter_error policy
        # key change committed -> evicted from this node's cache (Postgres LISTEN/NOTIFY)
        self.lag_buckets = [0] * len(LAG_BUCKETS)
        self.lag_sum = 0.0
        self.lag_count = 0

    def observe_invalidation_lag(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.lag_sum += seconds
        self.lag_count += 1
        for index, bound in enumerate(LAG_BUCKETS):
            if seconds <= bound:
                self.lag_buckets[index] += 1

    def count_error(self, code: str) -> None:
        self.errors[code] += 1

    def count_limiter_error(self, policy: str) -> None:
        self.limiter_errors[policy] += 1

    def render(self) -> str:
        lines = [
            "# HELP gateway_errors_total Requests answered with a gateway error, by code.",
            "# TYPE gateway_errors_total counter",
        ]
        lines += [f'gateway_errors_total{{code="{c}"}} {n}' for c, n in sorted(self.errors.items())]
        lines += [
            "# HELP gateway_limiter_errors_total Limiter failures, by the policy applied.",
            "# TYPE gateway_limiter_errors_total counter",
        ]
        lines += [
            f'gateway_limiter_errors_total{{policy="{p}"}} {n}'
            for p, n in sorted(self.limiter_errors.items())
        ]
        lines += self._render_lag()
        return "\n".join(lines) + "\n"

    def _render_lag(self) -> list[str]:
        name = "gateway_invalidation_lag_seconds"
        lines = [
            f"# HELP {name} From a key change's commit to its eviction from this node's cache.",
            f"# TYPE {name} histogram",
        ]
        for bound, count in zip(LAG_BUCKETS, self.lag_buckets, strict=True):
            label = "+Inf" if math.isinf(bound) else repr(bound)
            lines.append(f'{name}_bucket{{le="{label}"}} {count}')
        lines += [f"{name}_sum {self.lag_sum}", f"{name}_count {self.lag_count}"]
        return lines
