"""The CLI through its entry point: output, one-line errors, named exit codes."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import EXIT_CONFLICT, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, build_parser, main


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


def test_keys_credits(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """README "Credits": create with credits and a refill, top up, one-line errors."""
    c = ("-c", str(config))
    ws = json.loads(run(capsys, "workspaces", "create", "--name", "acme", *c)[1])["id"]
    out = run(capsys, "keys", "create", "--workspace", ws, "--name", "k", "--credits", "5",
              "--refill", "20/month", *c)[1]
    created = json.loads("\n".join(out.strip().splitlines()[:-1]))
    assert created["credits"] == {"remaining": 5, "refill": {"amount": 20, "interval": "month"}}
    code, out, _ = run(capsys, "keys", "credits", created["key_id"], "--add", "3", *c)
    assert code == EXIT_OK and json.loads(out)["credits"]["remaining"] == 8
    code, out, _ = run(capsys, "keys", "credits", created["key_id"], "--set", "0", *c)
    assert code == EXIT_OK and json.loads(out)["credits"]["remaining"] == 0
    code, _, err = run(capsys, "keys", "credits", created["key_id"], "--add", "0", *c)
    assert code != EXIT_OK and err.count("\n") == 1 and "add" in err
    code, _, err = run(capsys, "keys", "create", "--workspace", ws, "--name", "x", "--credits",
                       "1", "--refill", "3/week", *c)
    assert code != EXIT_OK and err.count("\n") == 1 and "credits" in err and "interval" in err


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


# ---- SPEC §13: help everywhere, --version, admin keys, projects, namespaces, the store line ----


def _actions(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, Any]]:
    """Every (command path, argparse action) of ``parser``, sub-commands included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, child in action.choices.items():
                yield f"{path} {name}", helps.get(name)
                yield from _actions(child, f"{path} {name}")
        else:
            yield path, action


def test_every_command_and_flag_has_help() -> None:
    missing = []
    for path, action in _actions(build_parser(), "gateway"):
        text = action if isinstance(action, str | None) else action.help
        if not text:
            missing.append(f"{path} {getattr(action, 'option_strings', '') or ''}".strip())
    assert missing == []
    commands = {path for path, action in _actions(build_parser(), "gateway")
                if isinstance(action, str | None)}
    assert {"gateway admin-key list", "gateway admin-key revoke", "gateway projects create",
            "gateway projects list", "gateway namespaces create",
            "gateway namespaces list"} <= commands


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert re.fullmatch(r"gateway \S+\n", capsys.readouterr().out)


@pytest.mark.parametrize(
    "argv",
    [["keys", "create"], ["frob"], ["keys", "list", "--workspace", "w", "--limit", "x"],
     ["admin-key", "revoke"]],
)
def test_usage_errors_are_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == EXIT_USAGE
    assert err.count("\n") == 1 and err.startswith("gateway") and "--help" in err


def test_config_check_prints_the_route_table(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config.write_text(config.read_text() + """\
  - name: pub
    path: /pub/
    upstream: ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    auth: none
    rate_limit: {requests: 5, window: 60}
    timeout: 2.5
  - {name: perms, path: /p/, upstream: "http://h:1", permissions: {GET: [read], POST: [write]}}
  - {name: check, path: /_verify/, mode: verify}
""")
    code, out, _ = run(capsys, "config", "check", "-c", str(config))
    head, columns, *rows = out.splitlines()
    assert code == EXIT_OK and head == f"{config}: ok (4 routes)"
    assert columns.split() == ["ROUTE", "PATH", "UPSTREAM", "AUTH", "PERMISSIONS", "RATE",
                               "LIMIT", "TIMEOUT"]
    assert [row.split() for row in rows] == [
        ["api", "/api/", "http://127.0.0.1:9000", "required", "any", "key", "-", "30s"],
        ["pub", "/pub/", "http://127.0.0.1:9001,http://127.0.0.1:9002", "none", "-", "5/60s",
         "2.5s"],
        ["perms", "/p/", "http://h:1", "required", "GET:read", "POST:write", "-", "30s"],
        ["check", "/_verify/", "(forward", "auth)", "-", "-", "-", "-"],
    ]


def test_admin_keys_list_and_revoke(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = ("-c", str(config))
    ws = json.loads(run(capsys, "workspaces", "create", "--name", "acme", *c)[1])["id"]
    operator = json.loads("\n".join(
        run(capsys, "admin-key", "create", "--name", "ops", *c)[1].splitlines()[:-1]))
    scoped = json.loads("\n".join(run(capsys, "admin-key", "create", "--name", "ws-ops",
                                      "--workspace", ws, *c)[1].splitlines()[:-1]))
    standard = json.loads("\n".join(
        run(capsys, "keys", "create", "--workspace", ws, "--name", "k", *c)[1].splitlines()[:-1]))
    code, out, _ = run(capsys, "admin-key", "list", *c)
    listed = json.loads(out)
    assert code == EXIT_OK and listed["total"] == 2
    assert {k["key_id"] for k in listed["results"]} == {operator["key_id"], scoped["key_id"]}
    assert "key_hash" not in out
    code, out, _ = run(capsys, "admin-key", "list", "--workspace", ws, *c)
    assert [k["key_id"] for k in json.loads(out)["results"]] == [scoped["key_id"]]
    code, _, err = run(capsys, "admin-key", "revoke", standard["key_id"], *c)
    assert code == EXIT_NOT_FOUND and err.count("\n") == 1 and "keys revoke" in err
    code, out, _ = run(capsys, "admin-key", "revoke", operator["key_id"], *c)
    assert code == EXIT_OK and json.loads(out)["status"] == "revoked"
    code, out, _ = run(capsys, "admin-key", "list", *c)
    assert [k["key_id"] for k in json.loads(out)["results"]] == [scoped["key_id"]]
    code, out, _ = run(capsys, "admin-key", "list", "--include-revoked", *c)
    assert json.loads(out)["total"] == 2


def test_projects_and_namespaces(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = ("-c", str(config))
    ws = json.loads(run(capsys, "workspaces", "create", "--name", "acme", *c)[1])
    code, out, _ = run(capsys, "projects", "create", "--workspace", ws["id"], "--name", "prod",
                       *c)
    project = json.loads(out)
    assert code == EXIT_OK and project["id"].startswith("proj_")
    assert project["workspace_id"] == ws["id"] and project["name"] == "prod"
    listed = json.loads(run(capsys, "projects", "list", "--workspace", ws["id"], *c)[1])
    assert {p["id"] for p in listed["results"]} == {ws["default_project_id"], project["id"]}
    code, out, _ = run(capsys, "namespaces", "create", "--workspace", ws["id"], "--name", "eu",
                       *c)
    namespace = json.loads(out)
    assert code == EXIT_OK and namespace["id"].startswith("ns_")
    listed = json.loads(run(capsys, "namespaces", "list", "--workspace", ws["id"], *c)[1])
    assert listed == {"results": [namespace], "total": 1}
    code, _, err = run(capsys, "namespaces", "create", "--workspace", ws["id"], "--name", "eu",
                       *c)
    assert code == EXIT_CONFLICT and err.count("\n") == 1 and "key store" not in err
    code, _, err = run(capsys, "projects", "list", "--workspace", "ws_nope", *c)
    assert code == EXIT_NOT_FOUND and err.count("\n") == 1


def test_a_writing_command_names_its_store_relative_to_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "etc"
    directory.mkdir()
    config = directory / "gateway.yaml"
    config.write_text("database: sqlite:///./data.db\n"
                      "routes: [{name: a, path: /a/, upstream: 'http://127.0.0.1:9'}]\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = run(capsys, "workspaces", "create", "--name", "x", "-c", str(config))
    assert code == EXIT_OK and err == f"gateway: wrote to key store sqlite:///{directory}/data.db\n"
    assert (directory / "data.db").exists() and not list(elsewhere.iterdir())
    code, _, err = run(capsys, "workspaces", "list", "-c", str(config))  # reads: no line
    assert code == EXIT_OK and err == ""


def test_console_link(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """README "Web console": the sign-in URL alone on the last line; strangers exit 3."""
    code, out, _ = run(capsys, "workspaces", "create", "--name", "acme", "-c", str(config))
    workspace = json.loads(out)["id"]
    run(capsys, "members", "add", "--workspace", workspace, "--email", "a@example.com",
        "--role", "viewer", "-c", str(config))
    code, out, err = run(capsys, "console-link", "--workspace", workspace, "--email",
                         "A@example.com", "-c", str(config))
    assert code == EXIT_OK
    assert re.fullmatch(r"http://127\.0\.0\.1:18081/console/sign-in/[A-Za-z0-9_-]{43}",
                        out.strip().splitlines()[-1])
    assert "wrote to key store" in err
    code, out, err = run(capsys, "console-link", "--workspace", workspace, "--email",
                         "nobody@example.com", "-c", str(config))
    assert code == EXIT_NOT_FOUND and out == ""
    assert err.count("\n") == 1 and "nobody@example.com" in err
    with config.open("a") as more:
        more.write("console: {public_url: 'https://admin.example.com/'}\n")
    code, out, _ = run(capsys, "console-link", "--workspace", workspace, "--email",
                       "a@example.com", "-c", str(config))
    assert out.strip().startswith("https://admin.example.com/console/sign-in/")
