"""Every metric the gateway keeps, declared once, with bounded labels (error code, limiter
policy). Plain counters for now; ``/metrics`` renders them in Prometheus text format."""

from __future__ import annotations

from collections import Counter


class Metrics:
    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()  # by error code
        self.limiter_errors: Counter[str] = Counter()  # by on_limiter_error policy

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
        return "\n".join(lines) + "\n"
