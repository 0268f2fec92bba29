"""The gateway's version, as installed (``gateway --version``, the start-up line)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def gateway_version() -> str:
    """The installed distribution's version; ``unknown`` when run from a bare source tree."""
    try:
        return version("apikey-gateway")
    except PackageNotFoundError:
        return "unknown"
