"""The CLI through its entry point: output, one-line errors, named exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import EXIT_CONFLICT, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, main


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"""
listen: 127.0.0.1:18080
admin_listen: 127.0.0.1:18081
database: sqlite:///{tmp_path}/cli.db
keys: {{max_active_per_user: 2}}
routes:
  - {{name: api, path: /api/, upstream: "http://127.0.0.1:9000"}}
"""
    )
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_config_check(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "config", "check", "-c", str(config))[0] == EXIT_OK
    assert run(capsys, "-c", str(config), "config", "check")[0] == EXIT_OK


def test_config_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  - {name: a, path: /a/, upstream: 'ftp://x'}\n")
    code, _, err = run(capsys, "config", "check", "-c", str(bad))
    assert code == EXIT_USAGE
    assert err.count("\n") == 1 and str(bad) in err and "routes[0].upstream" in err
    code, _, err = run(capsys, "serve", "-c", str(tmp_path / "missing.yaml"))
    assert code == EXIT_USAGE and "missing.yaml" in err and "Traceback" not in err


def test_gateway_config_env_default(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_CONFIG", str(config))
    assert run(capsys, "config", "check")[0] == EXIT_OK


def test_key_lifecycle(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = ("-c", str(config))
    assert run(capsys, "migrate", *c)[0] == EXIT_OK
    code, out, _ = run(capsys, "workspaces", "create", "--name", "acme", *c)
    workspace = json.loads(out)
    assert code == EXIT_OK and workspace["default_project_id"].startswith("proj_")
    code, out, _ = run(
        capsys, "keys", "create", "--workspace", workspace["id"], "--name", "ci",
        "--permission", "read", "--scope", "r1:read,write", "--user-id", "u@example.com", *c,
    )
    assert code == EXIT_OK
    *body, plaintext = out.strip().splitlines()
    record = json.loads("\n".join(body))
    assert plaintext.startswith("sk_live_") and plaintext not in "\n".join(body)
    assert record["scopes"] == [{"resource_id": "r1", "operations": ["read", "write"]}]
    code, out, _ = run(capsys, "keys", "list", "--workspace", workspace["id"], *c)
    assert json.loads(out)["total"] == 1 and plaintext not in out
    code, out, _ = run(capsys, "keys", "rotate", record["key_id"], "--grace-period", "0", *c)
    assert code == EXIT_OK and out.strip().splitlines()[-1].startswith("sk_live_")
    code, out, _ = run(capsys, "keys", "show", record["key_id"], *c)
    assert json.loads(out)["status"] == "revoked"
    code, out, _ = run(capsys, "keys", "list", "--workspace", workspace["id"],
                       "--include-revoked", *c)
    assert json.loads(out)["total"] == 2


def test_errors_have_exit_codes(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = ("-c", str(config))
    code, _, err = run(capsys, "keys", "show", "key_nope", *c)
    assert code == EXIT_NOT_FOUND and err.startswith("gateway: ")
    _, out, _ = run(capsys, "workspaces", "create", "--name", "acme", *c)
    ws = json.loads(out)["id"]
    code, _, err = run(capsys, "keys", "create", "--workspace", ws, "--name", "x",
                       "--rate-limit", "0", *c)
    assert code == EXIT_USAGE and "rate_limit_override" in err
    for _ in range(2):
        assert run(capsys, "keys", "create", "--workspace", ws, "--name", "k",
                   "--user-id", "u", *c)[0] == EXIT_OK
    code, _, err = run(capsys, "keys", "create", "--workspace", ws, "--name", "k",
                       "--user-id", "u", *c)
    assert code == EXIT_CONFLICT and "limit" in err


def test_admin_key_create_prints_key_last(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "admin-key", "create", "--name", "ops", "-c", str(config))
    *body, plaintext = out.strip().splitlines()
    record = json.loads("\n".join(body))
    assert code == EXIT_OK and record["key_type"] == "admin" and record["workspace_id"] is None
    assert plaintext.startswith("sk_live_")


def test_members_and_their_keys(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = ("-c", str(config))
    ws = json.loads(run(capsys, "workspaces", "create", "--name", "acme", *c)[1])["id"]
    code, out, _ = run(capsys, "members", "add", "--workspace", ws, "--email", "A@Example.com",
                       "--role", "admin", *c)
    alice = json.loads(out)
    assert code == EXIT_OK and alice["email"] == "a@example.com"
    assert alice["user_id"].startswith("usr_")
    code, _, err = run(capsys, "members", "add", "--workspace", ws, "--email", "a@example.com",
                       "--role", "viewer", *c)
    assert code == EXIT_CONFLICT and err.count("\n") == 1
    code, out, _ = run(capsys, "members", "set-role", "--workspace", ws, alice["user_id"],
                       "--role", "viewer", *c)
    assert code == EXIT_OK and json.loads(out)["role"] == "viewer"
    code, out, _ = run(capsys, "keys", "create", "--workspace", ws, "--name", "k",
                       "--user-email", "a@example.com", *c)
    key = json.loads("\n".join(out.strip().splitlines()[:-1]))
    assert code == EXIT_OK and key["user_id"] == key["principal_id"] == alice["user_id"]
    code, _, err = run(capsys, "keys", "create", "--workspace", ws, "--name", "k",
                       "--user-email", "ghost@example.com", *c)
    assert code == EXIT_NOT_FOUND and "ghost@example.com" in err
    code, out, _ = run(capsys, "members", "list", "--workspace", ws, *c)
    assert json.loads(out)["results"] == [{**alice, "role": "viewer"}]
    code, out, _ = run(capsys, "members", "remove", "--workspace", ws, alice["user_id"], *c)
    assert code == EXIT_OK and json.loads(out)["revoked_keys"] == [key["key_id"]]
    code, out, _ = run(capsys, "keys", "show", key["key_id"], *c)
    assert json.loads(out)["status"] == "revoked" and json.loads(out)["revoked_by"] == "cli"
    code, _, _ = run(capsys, "members", "remove", "--workspace", ws, alice["user_id"], *c)
    assert code == EXIT_NOT_FOUND


def test_keys_disable_and_enable(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = ("-c", str(config))
    ws = json.loads(run(capsys, "workspaces", "create", "--name", "acme", *c)[1])["id"]
    out = run(capsys, "keys", "create", "--workspace", ws, "--name", "k", *c)[1]
    key_id = json.loads("\n".join(out.strip().splitlines()[:-1]))["key_id"]
    code, out, _ = run(capsys, "keys", "disable", key_id, *c)
    assert code == EXIT_OK and json.loads(out)["status"] == "disabled"
    code, out, _ = run(capsys, "keys", "enable", key_id, *c)
    assert code == EXIT_OK and json.loads(out)["status"] == "active"
    assert run(capsys, "keys", "revoke", key_id, *c)[0] == EXIT_OK
    code, _, err = run(capsys, "keys", "enable", key_id, *c)
    assert code == EXIT_CONFLICT and "revoked" in err


def test_member_commands_have_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["members", "--help"], ["members", "add", "--help"],
                 ["members", "set-role", "--help"], ["keys", "disable", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "usage:" in out
    with pytest.raises(SystemExit):
        main(["members", "add", "--help"])
    out = capsys.readouterr().out
    assert "unique in the workspace" in out and "what the member may do" in out
