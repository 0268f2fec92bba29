"""The ``gateway`` command: thin commands -> library calls -> named exit codes.

Every failure is one line on stderr (``gateway: <file>: <path>: <problem>, got <value>`` for
config errors) and a non-zero exit; never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import orjson

from gateway.config import Config, load_config
from gateway.errors import (
    ConfigError,
    Conflict,
    KeyLimitReached,
    NotFound,
    StoreUnavailable,
    ValidationError,
)
from gateway.keys.model import GRANULARITIES, OUTCOMES, ROLES, KeyRecord, utcnow
from gateway.keys.service import KeyService
from gateway.keys.usage_report import parse_window
from gateway.services import open_store

EXIT_OK = 0
EXIT_FAILURE = 1  # the store or another dependency failed
EXIT_USAGE = 2  # bad arguments or config
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4  # a name is taken or a limit reached

# How a failure ends a command: its exit code, and what the one line on stderr says before its
# message. The first class that matches wins; anything else is a bug and keeps its traceback.
EXIT_CODES: tuple[tuple[type[Exception], int, str], ...] = (
    (ConfigError, EXIT_USAGE, ""),
    (ValidationError, EXIT_USAGE, "invalid input: "),
    (NotFound, EXIT_NOT_FOUND, ""),
    (KeyLimitReached, EXIT_CONFLICT, "key limit reached: "),
    (Conflict, EXIT_CONFLICT, "conflict: "),
    (StoreUnavailable, EXIT_FAILURE, "key store unavailable: "),
    (OSError, EXIT_FAILURE, ""),  # e.g. the listen address is taken
)
EXITING = tuple(cls for cls, _code, _prefix in EXIT_CODES)

Command = Callable[[argparse.Namespace, Config], Coroutine[Any, Any, int]]


def default_config_path() -> str:
    return os.environ.get("GATEWAY_CONFIG", "config/gateway.yaml")


def emit(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def fail(message: str, code: int) -> int:
    sys.stderr.write(f"gateway: {message}\n")
    return code


def exit_for(exc: Exception) -> int:
    """The one line on stderr and the exit code ``EXIT_CODES`` gives ``exc``."""
    for cls, code, prefix in EXIT_CODES:
        if isinstance(exc, cls):
            message = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
            return fail(prefix + message, code)
    raise exc


async def with_service(config: Config, action: Callable[[KeyService], Awaitable[int]]) -> int:
    async with open_store(config) as store:
        return await action(KeyService(store, config))


# commands ------------------------------------------------------------------------------------
async def cmd_migrate(args: argparse.Namespace, config: Config) -> int:
    async with open_store(config):
        pass
    sys.stdout.write(f"migrations applied to {config.database.split('@')[-1]}\n")
    return EXIT_OK


async def cmd_config_check(args: argparse.Namespace, config: Config) -> int:
    sys.stdout.write(f"{config.source}: ok ({len(config.routes)} routes)\n")
    return EXIT_OK


async def cmd_admin_key_create(args: argparse.Namespace, config: Config) -> int:
    body: dict[str, Any] = {"name": args.name, "key_type": "admin"}
    return await _create_key(config, args.workspace, body)


async def cmd_keys_create(args: argparse.Namespace, config: Config) -> int:
    body: dict[str, Any] = {"name": args.name, "permissions": args.permission or []}
    optional = {
        "description": args.description,
        "user_id": args.user_id,
        "user_email": args.user_email,
        "rate_limit_override": args.rate_limit,
        "concurrency_limit": args.concurrency,
        "expires_at": args.expires_at,
        "environment": args.environment,
        "project_id": args.project,
        "allowed_origins": args.allowed_origin,
        "scopes": [_scope(s) for s in args.scope] if args.scope else None,
        "key_type": "admin" if args.admin else None,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return await _create_key(config, args.workspace, body)


def _scope(text: str) -> dict[str, Any]:
    resource_id, _, operations = text.partition(":")
    return {"resource_id": resource_id, "operations": [o for o in operations.split(",") if o]}


async def _create_key(config: Config, workspace_id: str | None, body: dict[str, Any]) -> int:
    async def action(service: KeyService) -> int:
        record, plaintext = await service.create_key(workspace_id, body, "cli")
        emit(record.to_public(utcnow()))
        sys.stdout.write(plaintext + "\n")  # the plaintext key: last line, shown once
        return EXIT_OK

    return await with_service(config, action)


async def cmd_keys_list(args: argparse.Namespace, config: Config) -> int:
    async def action(service: KeyService) -> int:
        page = await service.list_keys(
            args.workspace, include_revoked=args.include_revoked, user_id=args.user_id,
            resource_id=args.resource_id, limit=args.limit, cursor=args.cursor,
        )
        now = utcnow()
        emit({"results": [r.to_public(now) for r in page.results], "total": page.total,
              "next_cursor": page.next_cursor})
        return EXIT_OK

    return await with_service(config, action)


def _key_command(act: Callable[[KeyService, str], Awaitable[KeyRecord]]) -> Command:
    """A command on one key (``KEY_ID``) that prints the key object afterwards."""

    async def command(args: argparse.Namespace, config: Config) -> int:
        async def action(service: KeyService) -> int:
            emit((await act(service, args.key_id)).to_public(utcnow()))
            return EXIT_OK

        return await with_service(config, action)

    return command


cmd_keys_show = _key_command(lambda service, key_id: service.get_key(key_id))
cmd_keys_revoke = _key_command(lambda service, key_id: service.revoke_key(key_id, "cli"))
cmd_keys_disable = _key_command(lambda service, key_id: service.disable_key(key_id, "cli"))
cmd_keys_enable = _key_command(lambda service, key_id: service.enable_key(key_id, "cli"))


async def cmd_keys_rotate(args: argparse.Namespace, config: Config) -> int:
    async def action(service: KeyService) -> int:
        _old, new, plaintext = await service.rotate_key(args.key_id, args.grace_period, "cli")
        emit(new.to_public(utcnow()))
        sys.stdout.write(plaintext + "\n")
        return EXIT_OK

    return await with_service(config, action)


async def cmd_keys_usage(args: argparse.Namespace, config: Config) -> int:
    window_args = {"from": args.from_, "to": args.to, "granularity": args.granularity}
    window = parse_window({k: v for k, v in window_args.items() if v is not None}, time.time())

    async def action(service: KeyService) -> int:
        sys.stdout.write(usage_table(await service.key_usage(args.key_id, window)))
        return EXIT_OK

    return await with_service(config, action)


def usage_table(usage: dict[str, Any]) -> str:
    """A key's usage as a text table: one row per bucket, then the totals."""
    header = ["start", *OUTCOMES]
    rows = [[entry["start"], *(str(entry[name]) for name in OUTCOMES)]
            for entry in usage["series"]]
    rows.append(["total", *(str(usage["totals"][name]) for name in OUTCOMES)])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [f"{usage['key_id']}: by {usage['granularity']} from {usage['from']} to {usage['to']}"]
    for row in [header, *rows]:
        lines.append("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    lines.append(f"last used {usage['last_used_at'] or 'never'}; lifetime: {usage['requests']} "
                 f"requests, {usage['rate_limited']} rate limited")
    return "\n".join(lines) + "\n"


async def cmd_workspaces_create(args: argparse.Namespace, config: Config) -> int:
    async def action(service: KeyService) -> int:
        emit((await service.create_workspace(args.name, "cli")).to_public())
        return EXIT_OK

    return await with_service(config, action)


async def cmd_workspaces_list(args: argparse.Namespace, config: Config) -> int:
    async def action(service: KeyService) -> int:
        workspaces = await service.list_workspaces()
        emit({"results": [w.to_public() for w in workspaces], "total": len(workspaces)})
        return EXIT_OK

    return await with_service(config, action)


async def cmd_members_add(args: argparse.Namespace, config: Config) -> int:
    async def action(service: KeyService) -> int:
        body = {"email": args.email, "role": args.role}
        emit((await service.members.add(args.workspace, body, "cli")).to_public())
        return EXIT_OK

    return await with_service(config, action)


async def cmd_members_list(args: argparse.Namespace, config: Config) -> int:
    async def action(service: KeyService) -> int:
        members = await service.members.all(args.workspace)
        emit({"results": [m.to_public() for m in members], "total": len(members)})
        return EXIT_OK

    return await with_service(config, action)


async def cmd_members_set_role(args: argparse.Namespace, config: Config) -> int:
    async def action(service: KeyService) -> int:
        member = await service.members.set_role(
            args.workspace, args.user_id, {"role": args.role}, "cli"
        )
        emit(member.to_public())
        return EXIT_OK

    return await with_service(config, action)


async def cmd_members_remove(args: argparse.Namespace, config: Config) -> int:
    async def action(service: KeyService) -> int:
        member, revoked = await service.members.remove(args.workspace, args.user_id, "cli")
        emit({**member.to_public(), "revoked_keys": [k.key_id for k in revoked]})
        return EXIT_OK

    return await with_service(config, action)


# parser --------------------------------------------------------------------------------------
CONFIG_HELP = "config file (default: $GATEWAY_CONFIG, else config/gateway.yaml)"


class _Parser(argparse.ArgumentParser):
    """Every (sub)command accepts -c/--config, before or after its name (README "CLI")."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("-c", "--config", default=argparse.SUPPRESS, help=CONFIG_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gateway", description="API-key gateway")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("serve", help="run the gateway")
    sub.add_parser("migrate", help="apply key-store migrations")
    config_cmd = sub.add_parser("config").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    config_cmd.add_parser("check", help="validate the config file and exit")
    echo = sub.add_parser("echo-upstream", help="run a demo upstream that echoes requests")
    echo.add_argument("--listen", default="127.0.0.1:9000")
    admin = sub.add_parser("admin-key").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    admin_create = admin.add_parser("create", help="create an admin key (plaintext: last line)")
    admin_create.add_argument("--name", required=True)
    admin_create.add_argument("--workspace", default=None,
                              help="make a workspace admin key instead of an operator key")
    _keys_parser(sub)
    _members_parser(sub)
    workspaces = sub.add_parser("workspaces").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    workspaces.add_parser("create").add_argument("--name", required=True)
    workspaces.add_parser("list")
    return parser


def _keys_parser(sub: Any) -> None:
    keys = sub.add_parser("keys").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    create = keys.add_parser("create", help="create a key (plaintext: last line)")
    create.add_argument("--workspace", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--description")
    create.add_argument("--user-id", help="the owner: a member's usr_ id, or any other string "
                                           "for a service key")
    create.add_argument("--user-email", help="the owner: the member with this email")
    create.add_argument("--permission", action="append", help="repeatable")
    create.add_argument("--scope", action="append", help="RESOURCE:op1,op2 (repeatable)")
    create.add_argument("--allowed-origin", action="append", help="repeatable")
    create.add_argument("--rate-limit", type=int, help="requests per minute")
    create.add_argument("--concurrency", type=int)
    create.add_argument("--expires-at", help="RFC 3339")
    create.add_argument("--environment", choices=("live", "test"))
    create.add_argument("--project")
    create.add_argument("--admin", action="store_true", help="a workspace admin key")
    list_ = keys.add_parser("list")
    list_.add_argument("--workspace", required=True)
    list_.add_argument("--include-revoked", action="store_true")
    list_.add_argument("--user-id")
    list_.add_argument("--resource-id")
    list_.add_argument("--limit", type=int, default=50)
    list_.add_argument("--cursor")
    for name, text in (("show", "show a key"), ("revoke", "revoke a key (final)"),
                       ("disable", "disable a key until enabled (401 disabled_api_key)"),
                       ("enable", "enable a disabled key")):
        keys.add_parser(name, help=text).add_argument("key_id", help="the key's key_id")
    usage = keys.add_parser("usage", help="a key's usage over time, by outcome")
    usage.add_argument("key_id", help="the key's key_id")
    usage.add_argument("--from", dest="from_", help="RFC 3339 (default: 24 hours before --to)")
    usage.add_argument("--to", help="RFC 3339, excluded (default: now)")
    usage.add_argument("--granularity", choices=tuple(GRANULARITIES), help="default: hour")
    rotate = keys.add_parser("rotate")
    rotate.add_argument("key_id")
    rotate.add_argument("--grace-period", type=int, default=0, help="seconds (default 0)")


def _members_parser(sub: Any) -> None:
    members = sub.add_parser("members", help="members of a workspace and their roles")
    members = members.add_subparsers(dest="action", required=True, parser_class=_Parser)
    add = members.add_parser("add", help="add a member")
    list_ = members.add_parser("list", help="list a workspace's members, oldest first")
    set_role = members.add_parser("set-role", help="change a member's role")
    remove = members.add_parser("remove", help="remove a member and revoke its active keys")
    for parser in (add, list_, set_role, remove):
        parser.add_argument("--workspace", required=True, help="the workspace id")
    for parser in (set_role, remove):
        parser.add_argument("user_id", help="the member's usr_ id")
    add.add_argument("--email", required=True, help="unique in the workspace (any case)")
    for parser in (add, set_role):
        parser.add_argument("--role", required=True, choices=ROLES, help="what the member may do")


COMMANDS: dict[tuple[str, str | None], Command] = {
    ("migrate", None): cmd_migrate,
    ("config", "check"): cmd_config_check,
    ("admin-key", "create"): cmd_admin_key_create,
    ("keys", "create"): cmd_keys_create,
    ("keys", "list"): cmd_keys_list,
    ("keys", "show"): cmd_keys_show,
    ("keys", "revoke"): cmd_keys_revoke,
    ("keys", "rotate"): cmd_keys_rotate,
    ("keys", "disable"): cmd_keys_disable,
    ("keys", "enable"): cmd_keys_enable,
    ("keys", "usage"): cmd_keys_usage,
    ("members", "add"): cmd_members_add,
    ("members", "list"): cmd_members_list,
    ("members", "set-role"): cmd_members_set_role,
    ("members", "remove"): cmd_members_remove,
    ("workspaces", "create"): cmd_workspaces_create,
    ("workspaces", "list"): cmd_workspaces_list,
}


def run_echo_upstream(listen: str) -> int:
    from aiohttp import web

    from gateway.echo import create_echo_app

    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        return fail(f"--listen: expected host:port, got {listen!r}", EXIT_USAGE)
    web.run_app(create_echo_app(), host=host or "127.0.0.1", port=int(port), print=None)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "echo-upstream":
        return run_echo_upstream(args.listen)
    path = getattr(args, "config", None) or default_config_path()
    try:
        config = load_config(path)
        if args.command == "serve":
            from gateway.launch import run
            from gateway.logs import configure_logging

            configure_logging(config)  # workers, fresh interpreters, do it again for themselves
            return run(config)
        command = COMMANDS[(args.command, getattr(args, "action", None))]
        return asyncio.run(command(args, config))
    except EXITING as exc:
        return exit_for(exc)

