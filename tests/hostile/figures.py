"""The one-line figure each hostile family prints at the end of the run (``-q`` included):
``record("PATH", "64 variants, 0 forwarded outside prefix")``; ``conftest.py`` prints them."""

from __future__ import annotations

FIGURES: dict[str, str] = {}


def record(family: str, line: str) -> None:
    FIGURES[family] = line
