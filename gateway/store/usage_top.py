"""A workspace's top keys over a window (README "Usage over time"), without reading every bucket
of every key in it: the whole days inside the window come from each key's running totals
(``usage_key_running``: two lookups per key, whatever the number of days), the edges from the
hour buckets, and minute buckets only where an hour is not whole or not yet rolled up.

The window is cut at the roll-up's mark ``rolled_to``: before it, days and hours hold every
count; from it, only minute buckets do."""

from __future__ import annotations

from gateway.keys.model import GRANULARITIES, REQUEST_OUTCOMES, TopKey
from gateway.store.db import Conn

MINUTE, HOUR, DAY = GRANULARITIES["minute"], GRANULARITIES["hour"], GRANULARITIES["day"]
# every request of a bucket row (SQL): shadow_refused is counted under a real outcome too
TOTAL = " + ".join(REQUEST_OUTCOMES)

WHOLE_DAYS = (  # per key of $1: its total over the days of [$2, $3)
    "SELECT k.key_id, k.name, "
    "COALESCE((SELECT r.through FROM usage_key_running AS r WHERE r.key_id = k.key_id "
    "AND r.day < $3 ORDER BY r.day DESC LIMIT 1), 0) - "
    "COALESCE((SELECT r.through FROM usage_key_running AS r WHERE r.key_id = k.key_id "
    "AND r.day < $2 ORDER BY r.day DESC LIMIT 1), 0) FROM api_keys AS k WHERE k.workspace_id = $1"
)

Tile = tuple[int, int, int]  # granularity, start, end (epoch seconds)


def tiles(start: int, end: int, sizes: tuple[int, ...]) -> list[Tile]:
    """[start, end) as aligned buckets, the largest of ``sizes`` in the middle, smaller ones at
    the edges (``start`` and ``end`` are whole minutes)."""
    if start >= end:
        return []
    size, smaller = sizes[0], sizes[1:]
    low, high = start + (-start % size), end - end % size
    if not smaller:
        return [(size, start, end)]
    if low >= high:
        return tiles(start, end, smaller)
    return [*tiles(start, low, smaller), (size, low, high), *tiles(high, end, smaller)]


def edge_sums(parts: list[Tile]) -> str:
    """Per key of $1: its total over the buckets ``parts`` name ($2, $3 … their bounds)."""
    branches = [
        f"SELECT key_id, {TOTAL} AS n FROM usage_key_buckets WHERE workspace_id = $1 "
        f"AND granularity = {size} AND start >= ${2 * i + 2} AND start < ${2 * i + 3}"
        for i, (size, _, _) in enumerate(parts)
    ]
    return (  # summed per key first, then the names
        "SELECT t.key_id, k.name, t.n FROM (SELECT key_id, SUM(n) AS n FROM ("
        + " UNION ALL ".join(branches)
        + ") AS u GROUP BY key_id) AS t JOIN api_keys AS k ON k.key_id = t.key_id"
    )


async def top_keys(
    conn: Conn, workspace_id: str, start: int, end: int, rolled_to: int, limit: int
) -> list[TopKey]:
    """The ``limit`` keys with the most requests in [start, end), busiest first (ties: key id)."""
    rolled_end = max(start, min(end, rolled_to))
    days = (start + (-start % DAY), rolled_end - rolled_end % DAY)
    found: dict[str, tuple[str, int]] = {}
    parts: list[Tile] = []
    if days[0] < days[1]:
        for row in await conn.fetch(WHOLE_DAYS, workspace_id, *days):
            found[str(row[0])] = (str(row[1]), int(row[2]))
        parts += tiles(start, days[0], (HOUR, MINUTE)) + tiles(days[1], rolled_end, (HOUR, MINUTE))
    else:
        parts += tiles(start, rolled_end, (HOUR, MINUTE))
    parts += tiles(max(start, rolled_to), end, (MINUTE,))  # not rolled up yet
    if parts:
        bounds = [bound for _, low, high in parts for bound in (low, high)]
        for row in await conn.fetch(edge_sums(parts), workspace_id, *bounds):
            _, before = found.get(str(row[0]), ("", 0))
            found[str(row[0])] = (str(row[1]), before + int(row[2]))
    ranked = sorted(((-total, key_id, name) for key_id, (name, total) in found.items() if total))
    return [TopKey(key_id, name, -total) for total, key_id, name in ranked[:limit]]
