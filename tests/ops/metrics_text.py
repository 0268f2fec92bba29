"""Reading ``/metrics`` in tests: scrape it, look samples up, count the series."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


async def scrape(http: aiohttp.ClientSession, admin_url: str) -> str:
    async with http.get(f"{admin_url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return await response.text()


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels``; 0 when absent (a series not yet counted)."""
    for sample in samples(text):
        if sample.name == name and sample.labels == labels:
            return sample.value
    return 0.0


def total(text: str, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    return sum(
        s.value for s in samples(text)
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )
