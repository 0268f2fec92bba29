import pytest

from gateway.config import RouteConfig
from gateway.routing import BadPath, RouteTable, normalize_path


def route(name: str, path: str) -> RouteConfig:
    return RouteConfig(name=name, path=path, upstreams=("http://127.0.0.1:9",))


TABLE = RouteTable(
    [
        route("api", "/api/"),
        route("models", "/api/ai/"),
        route("retrievers", "/v1/retrievers/{retriever_id}/"),
        route("retriever-keys", "/v1/retrievers/{retriever_id}/api-keys/"),
        route("public", "/public/"),
    ]
)


@pytest.mark.parametrize(
    ("raw", "path", "query"),
    [
        ("/api/ai/models", "/api/ai/models", ""),
        ("/api/ai/models?x=1&y=%2F", "/api/ai/models", "x=1&y=%2F"),
        ("/api/ai/%6dodels", "/api/ai/models", ""),  # unreserved escapes decoded
        ("/api/ai/a%2cb", "/api/ai/a%2Cb", ""),  # other escapes upper-cased, kept
        ("/api/ai/x/../models", "/api/ai/models", ""),
        ("/api/ai/./models", "/api/ai/models", ""),
        ("/api/ai/models/.", "/api/ai/models/", ""),
        ("/api/ai/%2e%2e/ai/x", "/api/ai/x", ""),  # encoded dots are dots
    ],
)
def test_normalize(raw: str, path: str, query: str) -> None:
    normalized = normalize_path(raw)
    assert (normalized.path, normalized.query) == (path, query)


@pytest.mark.parametrize(
    "raw",
    [
        "/api/ai/..%2f..%2fadmin",
        "/api/ai/%2F",
        "/api/ai/%5c",
        "/api/ai/%00",
        "/api/ai/a\\b",
        "/../etc/passwd",
        "/api/../../x",
        "/api/ai/%zz",
        "/api/ai/%4",
        "api/ai",
        "http://evil/api/ai/",
    ],
)
def test_normalize_refuses(raw: str) -> None:
    with pytest.raises(BadPath):
        normalize_path(raw)


@pytest.mark.parametrize(
    ("path", "name", "params", "remainder"),
    [
        ("/api/ai/models", "models", {}, "models"),
        ("/api/ai", "models", {}, ""),
        ("/api/other", "api", {}, "other"),
        ("/v1/retrievers/r1/search", "retrievers", {"retriever_id": "r1"}, "search"),
        ("/v1/retrievers/r1/api-keys/k", "retriever-keys", {"retriever_id": "r1"}, "k"),
        ("/v1/retrievers/r1", "retrievers", {"retriever_id": "r1"}, ""),
    ],
)
def test_longest_prefix_wins(path: str, name: str, params: dict[str, str], remainder: str) -> None:
    found = TABLE.match(path)
    assert found is not None
    assert (found.route.name, found.params, found.remainder) == (name, params, remainder)


@pytest.mark.parametrize(
    "path", ["/", "/apix", "/publicity", "/v1/retrievers/", "/v1/retrievers//x"]
)
def test_no_route(path: str) -> None:
    assert TABLE.match(path) is None


@pytest.mark.parametrize(
    "raw",
    [
        "/public/../api/ai/models",  # lands in another route via dot segments
        "/api/ai/../ai/models",  # climbed into the prefix, even if it came back
        "/v1/retrievers/r1/../r2/search",  # swaps the authorized resource id
        "/public/../secret",  # climbs out of a route into no route at all
    ],
)
def test_dot_segments_may_not_leave_the_prefix(raw: str) -> None:
    with pytest.raises(BadPath):
        TABLE.resolve(normalize_path(raw))


def test_dot_segments_inside_the_route_are_fine() -> None:
    found = TABLE.resolve(normalize_path("/api/ai/a/b/../c"))
    assert found is not None and found.route.name == "models" and found.remainder == "a/c"
