"""Usage over time as the admin API and the CLI show it (README "Usage over time"): the window
asked for (``from``, ``to``, ``granularity``), validated, and a series with one entry per bucket,
zeros included."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.errors import ValidationError
from gateway.keys.model import GRANULARITIES, OUTCOMES, UsagePoint, rfc3339
from gateway.keys.validation import parse_timestamp

MAX_BUCKETS = 1440
DEFAULT_GRANULARITY = "hour"
DEFAULT_SPAN = 24 * 3600  # the last 24 hours


@dataclass(frozen=True, slots=True)
class Window:
    """Buckets of ``seconds`` from ``start`` (included) to ``end`` (excluded), epoch seconds."""

    granularity: str
    seconds: int
    start: int
    end: int

    def starts(self) -> range:
        return range(self.start, self.end, self.seconds)


def parse_window(query: Mapping[str, str], now: float) -> Window:
    """``from``/``to`` (RFC 3339) and ``granularity`` (minute, hour, day), each optional:
    ``to`` defaults to now, ``from`` to 24 hours before ``to``, the granularity to hour. The
    window is widened to whole buckets (``from`` down, ``to`` up); more than 1440 of them is a
    validation error."""
    errors: dict[str, str] = {}
    granularity = query.get("granularity", DEFAULT_GRANULARITY)
    seconds = GRANULARITIES.get(granularity)
    if seconds is None:
        errors["granularity"] = f"must be one of {', '.join(GRANULARITIES)}"
        seconds = GRANULARITIES[DEFAULT_GRANULARITY]
    end = _instant(query, "to", errors)
    end = int(now) if end is None else end
    end += -end % seconds
    start = _instant(query, "from", errors)
    start = end - DEFAULT_SPAN if start is None else start - start % seconds
    if errors:
        raise ValidationError(errors)
    if end <= start:
        raise ValidationError({"from": "must be before to"})
    if (end - start) // seconds > MAX_BUCKETS:
        raise ValidationError({"granularity": f"the window holds {(end - start) // seconds} "
                               f"{granularity} buckets; at most {MAX_BUCKETS}"})
    return Window(granularity, seconds, start, end)


def _instant(query: Mapping[str, str], name: str, errors: dict[str, str]) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        return int(parse_timestamp(value).timestamp())
    except (ValueError, OverflowError):
        errors[name] = "must be an RFC 3339 date-time with a time zone"
        return None


def report(window: Window, points: Sequence[UsagePoint]) -> dict[str, Any]:
    """``{granularity, from, to, series, totals}``: one series entry per bucket of the window."""
    found = {point.start: point.counts for point in points}
    zeros = (0,) * len(OUTCOMES)
    series = [_entry(start, found.get(start, zeros)) for start in window.starts()]
    totals = {name: sum(found_counts[i] for found_counts in found.values())
              for i, name in enumerate(OUTCOMES)}
    return {
        "granularity": window.granularity,
        "from": iso(window.start),
        "to": iso(window.end),
        "series": series,
        "totals": totals,
    }


def _entry(start: int, counts: Sequence[int]) -> dict[str, Any]:
    return {"start": iso(start), **dict(zip(OUTCOMES, counts, strict=True))}


def iso(timestamp: int) -> str:
    return str(rfc3339(datetime.fromtimestamp(timestamp, UTC)))
