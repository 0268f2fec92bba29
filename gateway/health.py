"""The health of one upstream target of a route (README "Upstream health").

Passive: a target whose requests fail ``failures`` times in a row (a connect error, a reset or
a timeout before the response head; a 5xx answer too with ``fail_on_5xx``) is ejected, and
``UpstreamGroup.pick`` skips it for ``eject_seconds``. Then one request is let through as a
probe: a success puts the target back in service, a failure ejects it again for twice as long
(at most ``max_eject_seconds``). A request whose client left gives no verdict and frees the
probe.

Active (``path`` set): the group GETs ``path`` on every target each ``interval`` seconds. A
2xx or 3xx answer puts an ejected target back at once; ``failures`` failed checks in a row
eject it, as failed requests do (the two counts are kept apart, so traffic that succeeds does
not hide a failing check, nor the reverse).

The request path pays little: ``pick`` reads one float of a target in service, and a success
reads one int (``failures``), writing nothing unless the target had failed before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from gateway.config import HealthConfig

__all__ = ["TargetHealth"]

log = logging.getLogger("gateway.health")


class TargetHealth:
    """Ejection state of one target; ``name`` (route and URL) is for the log lines."""

    __slots__ = (
        "backoff", "check_failures", "clock", "ejected_at", "ejected_until", "ejections",
        "failures", "name", "policy", "probing",
    )

    def __init__(
        self, policy: HealthConfig, name: str = "", clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy
        self.name = name
        self.clock = clock
        self.failures = 0  # requests failed in a row (kept while ejected)
        self.check_failures = 0  # active checks failed in a row
        self.ejected_until = 0.0  # 0.0: in service
        self.ejected_at = 0.0
        self.probing = False  # the one request let through after the time out is under way
        self.backoff = policy.eject_seconds  # how long the next ejection lasts
        self.ejections = 0  # since start, for the metrics

    @property
    def up(self) -> bool:
        return self.ejected_until == 0.0

    def usable(self) -> bool:
        """In service, or due for its probe (then the caller's request is the probe)."""
        if self.ejected_until == 0.0:
            return True
        if self.probing or self.clock() < self.ejected_until:
            return False
        self.probing = True
        return True

    def succeeded(self) -> None:
        """A request (or check) was answered: back in service. Callers skip the call when
        ``failures`` is 0 and the target is up, which is the usual case."""
        if self.ejected_until != 0.0:
            log.info("upstream %s is back in service", self.name)
        self.failures = 0
        self.ejected_until = 0.0
        self.probing = False
        self.backoff = self.policy.eject_seconds

    def failed(self, reason: str) -> None:
        """A request failed before its response head (or answered 5xx, with ``fail_on_5xx``)."""
        self.failures += 1
        if self.ejected_until == 0.0:
            if self.failures >= self.policy.failures:
                self._eject(f"{self.failures} failed requests in a row, the last: {reason}")
        elif self.probing:
            self.probing = False
            self.backoff = min(self.backoff * 2, self.policy.max_eject_seconds)
            self._eject(f"the probe failed: {reason}")

    def abandoned(self) -> None:
        """A request ended without a verdict (cancelled): free the probe if one was out."""
        self.probing = False

    def checked(self, reason: str | None) -> None:
        """An active check's outcome: None when it passed, else why it failed."""
        if reason is None:
            self.check_failures = 0
            if self.ejected_until != 0.0:
                self.succeeded()
            return
        self.check_failures += 1
        if self.ejected_until == 0.0 and self.check_failures >= self.policy.failures:
            self._eject(f"{self.check_failures} failed health checks in a row, the last: "
                        f"{reason}")

    def _eject(self, why: str) -> None:
        now = self.clock()
        self.ejected_at = now
        self.ejected_until = now + self.backoff
        self.ejections += 1
        log.warning("upstream %s ejected for %g s: %s", self.name, self.backoff, why)
