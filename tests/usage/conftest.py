"""Usage tests share the limiter tests' Redis key prefix fixture (a fresh prefix per test)."""

from tests.limiter.conftest import redis_prefix

__all__ = ["redis_prefix"]
