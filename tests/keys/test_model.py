import hashlib
import hmac
import zlib

from gateway.keys.model import (
    CHECKSUM_LEN,
    RANDOM_LEN,
    KeyHasher,
    checksum,
    display_parts,
    generate_key,
    is_well_formed,
)

PREFIXES = frozenset({"sk_live", "sk_test"})


def test_format_and_checksum() -> None:
    key = generate_key("sk_live")
    assert key.startswith("sk_live_")
    assert len(key) == len("sk_live_") + RANDOM_LEN + CHECKSUM_LEN == 40
    assert is_well_formed(key, PREFIXES)
    assert checksum(key[:-CHECKSUM_LEN]) == key[-CHECKSUM_LEN:]


def test_typos_and_guesses_fail_the_checksum() -> None:
    key = generate_key("sk_test")
    flipped = key[:10] + ("A" if key[10] != "A" else "B") + key[11:]
    assert not is_well_formed(flipped, PREFIXES)
    assert not is_well_formed(key[:-1], PREFIXES)
    assert not is_well_formed(key + "x", PREFIXES)
    assert not is_well_formed("sk_prod_" + key[8:], PREFIXES)
    assert not is_well_formed(key.replace(key[12], "-"), PREFIXES)
    assert not is_well_formed("", PREFIXES)


def test_checksum_is_crc32_in_six_base62_digits_most_significant_first() -> None:
    """Keys already issued must keep validating: the encoding is fixed by SPEC §3."""
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    for body in ("sk_live_", "sk_live_0000000000000000000000000", "x" * 40, "é"):
        n = zlib.crc32(body.encode())
        expected = "".join(digits[n // 62**power % 62] for power in range(5, -1, -1))
        assert checksum(body) == expected


def test_only_ascii_letters_and_digits_pass() -> None:
    key = generate_key("sk_live")
    for foreign in ("\u0663", "\u00e9", "\uff21"):  # an Arabic-Indic digit, é, a fullwidth A
        body = key[:12] + foreign + key[13 : -CHECKSUM_LEN]
        assert not is_well_formed(body + checksum(body), PREFIXES)


def test_keys_are_random() -> None:
    assert len({generate_key("sk_live") for _ in range(1000)}) == 1000


def test_hashing_plain_and_peppered() -> None:
    key = generate_key("sk_live")
    assert KeyHasher(None)(key) == hashlib.sha256(key.encode()).hexdigest()
    peppered = KeyHasher("pepper")(key)
    assert peppered == hmac.new(b"pepper", key.encode(), hashlib.sha256).hexdigest()
    assert peppered != KeyHasher(None)(key)


def test_display_parts() -> None:
    key = generate_key("sk_live")
    prefix, hint = display_parts(key)
    assert prefix == key[: len("sk_live_") + 4]
    assert hint == key[-4:]


def test_the_key_hash_is_sha256_whichever_implementation_computes_it() -> None:
    for key in (generate_key("sk_live"), generate_key("sk_test"), "é-not-ascii"):
        assert KeyHasher(None)(key) == hashlib.sha256(key.encode()).hexdigest()  # stored hashes
        peppered = hmac.new(b"pepper", key.encode(), hashlib.sha256).hexdigest()
        assert KeyHasher("pepper")(key) == peppered


def test_a_records_identity_headers_follow_its_fields() -> None:
    from datetime import UTC, datetime

    from gateway.keys.model import KeyRecord

    record = KeyRecord(key_id="key_1", key_hash="h", key_prefix="sk_live_abcd", hint="wxyz",
                       name="k", workspace_id="ws_1", project_id=None, user_id=None,
                       created_at=datetime.now(UTC), permissions=("read", "write"))
    assert record.identity == (("X-Api-Key-Id", "key_1"), ("X-Api-Key-Permissions", "read,write"))
    changed = record.with_changes(permissions=("read",), user_id="u_1", principal_id="u_1")
    assert changed.identity == (("X-Api-Key-Id", "key_1"), ("X-Api-Key-Permissions", "read"),
                                ("X-User-Id", "u_1"), ("X-Principal-Id", "u_1"))
    assert changed == record.with_changes(permissions=("read",), user_id="u_1")  # not compared
