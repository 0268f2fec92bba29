"""What README "Leaked keys" publishes for scanners is what the gateway checks: the regular
expression finds every key it makes, and the checksum rule, computed here from its wording
alone, agrees with ``gateway.keys.model.checksum``."""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from gateway.config import KeysConfig
from gateway.keys.model import (
    BASE62,
    checksum,
    generate_key,
    is_well_formed,
    random_base62,
    scanner_pattern,
)

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def published_pattern() -> str:
    section = README.split("## Leaked keys", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```\n(\\b\(\?:sk_live.*)\n```", section)
    assert found is not None, "README \"Leaked keys\" must show the regular expression"
    return found.group(1)


def readme_checksum(body: str) -> str:
    """The rule as README words it: CRC-32 (zlib, IEEE) of the UTF-8 bytes before the checksum,
    written in base62 (0-9, A-Z, a-z), most significant digit first, zero-padded to 6."""
    n = zlib.crc32(body.encode())
    digits = ""
    for _ in range(6):
        n, digit = divmod(n, 62)
        digits = BASE62[digit] + digits
    return digits


def published_check() -> Callable[[str], bool]:
    section = README.split("## Leaked keys", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(def is_ours.*?)```", section, re.S)
    assert found is not None, "README \"Leaked keys\" must show the checksum in Python"
    namespace: dict[str, Any] = {"zlib": zlib}
    exec(found.group(1), namespace)
    return cast(Callable[[str], bool], namespace["is_ours"])


def test_the_published_python_check_accepts_our_keys_and_refuses_a_changed_one() -> None:
    is_ours = published_check()
    for _ in range(300):
        key = generate_key("sk_live")
        assert is_ours(key)
        changed = key[:10] + ("a" if key[10] != "a" else "b") + key[11:]
        assert is_ours(changed) == is_well_formed(changed, frozenset({"sk_live"}))


def test_the_published_pattern_is_the_one_for_the_default_prefixes() -> None:
    prefixes = KeysConfig().prefixes.values()
    assert published_pattern() == scanner_pattern(prefixes)


def test_the_pattern_finds_every_key_in_text_and_nothing_around_it() -> None:
    pattern = re.compile(published_pattern())
    for prefix in ("sk_live", "sk_test"):
        for _ in range(200):
            key = generate_key(prefix)
            text = f'API_KEY="{key}"\nother={random_base62(40)}'
            assert pattern.findall(text) == [key]
    assert not pattern.search("xsk_live_" + "a" * 32)  # glued to a word before it
    assert not pattern.search("sk_live_" + "a" * 33)  # too long


def test_the_published_checksum_rule_is_the_one_checked() -> None:
    for prefix in ("sk_live", "sk_test", "acme_prod"):
        for _ in range(500):
            key = generate_key(prefix)
            assert key[-6:] == readme_checksum(key[:-6])
            assert is_well_formed(key, frozenset({prefix}))
    for body in ("sk_live_" + "0" * 26, "sk_live_" + "z" * 26, "é_" + "A" * 26):
        assert readme_checksum(body) == checksum(body)
