"""``secret_scanning.github`` in the config: a keys file relative to the config file, checked
when the config is read (one line naming file, field and value), a URL kept as written."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import load_config, parse_config
from gateway.errors import ConfigError
from tests.secret_scanning.conftest import Signer, keys_document

ROUTE = "routes: [{name: r, path: /r/, upstream: 'http://127.0.0.1:9000'}]\n"


def write_config(directory: Path, public_keys: str) -> Path:
    config = directory / "gateway.yaml"
    config.write_text(f"secret_scanning: {{github: {{public_keys: '{public_keys}'}}}}\n{ROUTE}")
    return config


def test_a_relative_file_is_read_from_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signer, rotated = Signer("k1"), Signer("k2")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "keys.json").write_bytes(keys_document(signer, rotated))
    config_file = write_config(tmp_path / "conf", "keys.json")
    monkeypatch.chdir("/")
    github = load_config(config_file).secret_scanning.github
    assert github is not None and not github.public_keys.is_url
    assert github.public_keys.location == str(tmp_path / "conf" / "keys.json")
    assert [identifier for identifier, _ in github.public_keys.keys] == ["k1", "k2"]
    assert (github.cache_ttl, github.fetch_timeout, github.refetch_interval) == (3600, 5, 60)
    assert pickle.loads(pickle.dumps(github)) == github  # workers get the config pickled


def test_a_url_is_kept_and_nothing_is_fetched_at_load(tmp_path: Path) -> None:
    url = "https://api.github.com/meta/public_keys/secret_scanning"
    github = load_config(write_config(tmp_path, url)).secret_scanning.github
    assert github is not None and github.public_keys.is_url
    assert (github.public_keys.location, github.public_keys.keys) == (url, ())


def test_absent_means_not_configured(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(ROUTE)
    assert load_config(config).secret_scanning.github is None


@pytest.mark.parametrize(("content", "what"), [
    (None, "cannot read {file}: No such file or directory"),
    (b"{}", '{file} is not a public keys document (no "public_keys" list with at least one '
            'key)'),
    (b"not json", "{file} is not a public keys document (not JSON)"),
    (b'{"public_keys": [{"key_identifier": "k", "key": "-----BEGIN PUBLIC KEY-----"}]}',
     "{file} is not a public keys document (public_keys[0].key: not a PEM public key)"),
    (b'{"public_keys": [{"key": "x"}]}',
     "{file} is not a public keys document (public_keys[0].key_identifier: not a non-empty "
     "string)"),
])
def test_a_bad_keys_file_is_one_line_naming_file_field_and_value(
    tmp_path: Path, content: bytes | None, what: str
) -> None:
    file = tmp_path / "keys.json"
    if content is not None:
        file.write_bytes(content)
    config = write_config(tmp_path, "keys.json")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value) == (f"{config}: secret_scanning.github.public_keys: "
                               f"{what.format(file=file)}, got 'keys.json'")


def test_a_key_on_another_curve_is_refused(tmp_path: Path) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    (tmp_path / "keys.json").write_text(
        json.dumps({"public_keys": [{"key_identifier": "k", "key": p384}]}))
    with pytest.raises(ConfigError, match=r"public_keys\[0\].key: not an ECDSA P-256 public key"):
        load_config(write_config(tmp_path, "keys.json"))


def test_the_examples_commented_section_parses_when_uncommented() -> None:
    lines = (Path(__file__).resolve().parents[2] / "config" / "gateway.yaml").read_text()
    block = lines.splitlines()
    start = block.index("# secret_scanning:")
    section = []
    for line in block[start:]:
        if not line.startswith("# "):
            break
        section.append(line[2:])
    data = {**yaml.safe_load("\n".join(section)),
            "routes": [{"name": "r", "path": "/r/", "upstream": "http://127.0.0.1:9000"}]}
    github = parse_config(data, "t.yaml", {}).secret_scanning.github
    assert github is not None and github.public_keys.is_url
    assert (github.cache_ttl, github.fetch_timeout, github.refetch_interval) == (3600, 5, 60)
