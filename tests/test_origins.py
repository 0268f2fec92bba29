import pytest

from gateway.origins import is_origin_allowed, parse_pattern

PATTERNS = ("https://app.example.com", "https://*.example.com", "http://localhost:3000")


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("https://APP.Example.com", True),  # host compares case-insensitively
        ("HTTPS://app.example.com", True),
        ("https://app.example.com:443", True),  # default port implied
        ("https://a.example.com", True),
        ("https://a.b.example.com", True),  # one or more labels
        ("https://example.com", False),  # never the bare domain
        ("https://evil-example.com", False),
        ("https://evilexample.com", False),
        ("https://example.com.evil.net", False),
        ("http://app.example.com", False),  # scheme matters
        ("https://app.example.com:8443", False),  # port matters
        ("http://localhost:3000", True),
        ("http://localhost", False),
        ("null", False),
        ("", False),
        ("https://app.example.com/path", False),
        ("https://user@app.example.com", False),
        ("javascript:alert(1)", False),
    ],
)
def test_origin_matching(origin: str, allowed: bool) -> None:
    assert is_origin_allowed(origin, PATTERNS) is allowed


def test_star_matches_any_real_origin_but_not_null() -> None:
    assert is_origin_allowed("https://anything.test", ("*",))
    assert not is_origin_allowed("null", ("*",))


@pytest.mark.parametrize("bad", ["example.com", "ftp://x.com", "https://", "https://x.com/p"])
def test_bad_patterns(bad: str) -> None:
    assert parse_pattern(bad) is None
