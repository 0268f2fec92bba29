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

from gateway import cli_args
from gateway.cli_args import build_parser
from gateway.config import Config, load_config
from gateway.config.parsers import display_url
from gateway.config.summary import route_table
from gateway.errors import (
    AddressInUse,
    ConfigError,
    Conflict,
    KeyLimitReached,
    NotFound,
    StoreUnavailable,
    ValidationError,
)
from gateway.keys.console import sign_in_url
from gateway.keys.model import OUTCOMES, KeyRecord, utcnow
from gateway.keys.service import KeyService
from gateway.keys.usage_report import parse_window
from gateway.services import open_store

EXIT_OK = 0
EXIT_FAILURE = 1  # the store or another dependency failed
EXIT_USAGE = cli_args.EXIT_USAGE  # bad arguments or config
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
    (AddressInUse, EXIT_FAILURE, ""),  # another gateway holds a port (gateway.launch)
    (OSError, EXIT_FAILURE, ""),  # e.g. a listen address this host does not have
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


def os_reason(exc: OSError) -> str:
    """The system's words for ``exc`` (``address already in use``), without the address tuple
    asyncio puts in front of them."""
    return os.strerror(exc.errno).lower() if exc.errno else (exc.strerror or str(exc))


def exit_for(exc: Exception) -> int:
    """The one line on stderr and the exit code ``EXIT_CODES`` gives ``exc``."""
    for cls, code, prefix in EXIT_CODES:
        if isinstance(exc, cls):
            message = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
            return fail(prefix + message, code)
    raise exc


async def with_service(
    config: Config, action: Callable[[KeyService], Awaitable[int]], *, writes: bool = False
) -> int:
    """``action`` on the store; a command that ``writes`` then names the store it wrote to in
    one line on stderr (README "Config-relative paths"): a key written to another file than
    the server reads is then plain to see. A failure stays the one line ``exit_for`` writes."""
    async with open_store(config) as store:
        code = await action(KeyService(store, config))
    if writes:
        sys.stderr.write(f"gateway: wrote to key store {display_url(config.database)}\n")
    return code


# commands ------------------------------------------------------------------------------------
async def cmd_migrate(args: argparse.Namespace, config: Config) -> int:
    async with open_store(config):
        pass
    sys.stdout.write(f"migrations applied to {display_url(config.database)}\n")
    return EXIT_OK


async def cmd_config_check(args: argparse.Namespace, config: Config) -> int:
    sys.stdout.write(f"{config.source}: ok ({len(config.routes)} routes)\n")
    sys.stdout.write("".join(line + "\n" for line in route_table(config)))
    return EXIT_OK


async def cmd_admin_key_create(args: argparse.Namespace, config: Config) -> int:
    body: dict[str, Any] = {"name": args.name, "key_type": "admin"}
    return await _create_key(config, args.workspace, body)


async def cmd_admin_key_list(args: argparse.Namespace, config: Config) -> int:
    async def action(service: KeyService) -> int:
        page = await service.list_keys(args.workspace, key_type="admin", limit=args.limit,
                                       include_revoked=args.include_revoked, cursor=args.cursor)
        now = utcnow()
        emit({"results": [r.to_public(now) for r in page.results], "total": page.total,
              "next_cursor": page.next_cursor})
        return EXIT_OK

    return await with_service(config, action)


async def _admin_key(service: KeyService, key_id: str) -> KeyRecord:
    """The admin key ``key_id``; another key is not found here (``keys revoke`` is for those)."""
    record = await service.get_key(key_id)
    if record.key_type != "admin":
        raise NotFound(f"no admin key {key_id} (a standard key: use gateway keys revoke)")
    return record


async def _revoke_admin_key(service: KeyService, key_id: str) -> KeyRecord:
    await _admin_key(service, key_id)
    return await service.revoke_key(key_id, "cli")


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
        "allowed_ips": args.allowed_ip,
        "enforcement": args.enforcement,
        "scopes": [_scope(s) for s in args.scope] if args.scope else None,
        "key_type": "admin" if args.admin else None,
        "credits": _credits(args.credits, args.refill),
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return await _create_key(config, args.workspace, body)


def _credits(remaining: int | None, refill: str | None) -> Any:
    """``--credits N [--refill M/day]`` as the create body's ``credits`` (validated there);
    a refill without credits, or not M/day or M/month, is the credits field's error."""
    if remaining is None and refill is None:
        return None
    if refill is None:
        return {"remaining": remaining}
    amount, _, interval = refill.partition("/")
    given: Any = int(amount) if amount.isdigit() else amount
    return {"remaining": remaining, "refill": {"amount": given, "interval": interval}}


def _scope(text: str) -> dict[str, Any]:
    resource_id, _, operations = text.partition(":")
    return {"resource_id": resource_id, "operations": [o for o in operations.split(",") if o]}


async def _create_key(config: Config, workspace_id: str | None, body: dict[str, Any]) -> int:
    async def action(service: KeyService) -> int:
        record, plaintext = await service.create_key(workspace_id, body, "cli")
        emit(record.to_public(utcnow()))
        sys.stdout.write(plaintext + "\n")  # the plaintext key: last line, shown once
        return EXIT_OK

    return await with_service(config, action, writes=True)


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


def _key_command(
    act: Callable[[KeyService, str], Awaitable[KeyRecord]], *, writes: bool = True
) -> Command:
    """A command on one key (``KEY_ID``) that prints the key object afterwards."""

    async def command(args: argparse.Namespace, config: Config) -> int:
        async def action(service: KeyService) -> int:
            emit((await act(service, args.key_id)).to_public(utcnow()))
            return EXIT_OK

        return await with_service(config, action, writes=writes)

    return command


cmd_keys_show = _key_command(lambda service, key_id: service.get_key(key_id), writes=False)
cmd_keys_revoke = _key_command(lambda service, key_id: service.revoke_key(key_id, "cli"))
cmd_keys_disable = _key_command(lambda service, key_id: service.disable_key(key_id, "cli"))
cmd_keys_enable = _key_command(lambda service, key_id: service.enable_key(key_id, "cli"))
cmd_admin_key_revoke = _key_command(_revoke_admin_key)


async def cmd_keys_update(args: argparse.Namespace, config: Config) -> int:
    body: dict[str, Any] = {"allowed_ips": [] if args.any_ip else args.allowed_ip,
                            "enforcement": args.enforcement}

    async def action(service: KeyService) -> int:
        changes = {k: v for k, v in body.items() if v is not None}
        emit((await service.update_key(args.key_id, changes, "cli")).to_public(utcnow()))
        return EXIT_OK

    return await with_service(config, action, writes=True)


async def cmd_keys_credits(args: argparse.Namespace, config: Config) -> int:
    """The store's balance is printed (README "Credits": the live one is the limiter's, which
    the admin API shows); every node applies the top-up within the revocation bound."""
    body = {"add": args.add} if args.add is not None else {"set": args.set}
    return await _key_command(
        lambda service, key_id: service.top_up_credits(key_id, body, "cli"))(args, config)


async def cmd_keys_rotate(args: argparse.Namespace, config: Config) -> int:
    async def action(service: KeyService) -> int:
        _old, new, plaintext = await service.rotate_key(args.key_id, args.grace_period, "cli")
        emit(new.to_public(utcnow()))
        sys.stdout.write(plaintext + "\n")
        return EXIT_OK

    return await with_service(config, action, writes=True)


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

    return await with_service(config, action, writes=True)


async def cmd_workspaces_list(args: argparse.Namespace, config: Config) -> int:
    async def action(service: KeyService) -> int:
        workspaces = await service.list_workspaces()
        emit({"results": [w.to_public() for w in workspaces], "total": len(workspaces)})
        return EXIT_OK

    return await with_service(config, action)


async def cmd_projects_create(args: argparse.Namespace, config: Config) -> int:
    async def action(service: KeyService) -> int:
        emit((await service.create_project(args.workspace, args.name, "cli")).to_public())
        return EXIT_OK

    return await with_service(config, action, writes=True)


async def cmd_projects_list(args: argparse.Namespace, config: Config) -> int:
    async def action(service: KeyService) -> int:
        projects = await service.list_projects(args.workspace)
        emit({"results": [p.to_public() for p in projects], "total": len(projects)})
        return EXIT_OK

    return await with_service(config, action)


async def cmd_namespaces_create(args: argparse.Namespace, config: Config) -> int:
    async def action(service: KeyService) -> int:
        emit((await service.create_namespace(args.workspace, args.name, "cli")).to_public())
        return EXIT_OK

    return await with_service(config, action, writes=True)


async def cmd_namespaces_list(args: argparse.Namespace, config: Config) -> int:
    async def action(service: KeyService) -> int:
        namespaces = await service.list_namespaces(args.workspace)
        emit({"results": [n.to_public() for n in namespaces], "total": len(namespaces)})
        return EXIT_OK

    return await with_service(config, action)


async def cmd_members_add(args: argparse.Namespace, config: Config) -> int:
    async def action(service: KeyService) -> int:
        body = {"email": args.email, "role": args.role}
        emit((await service.members.add(args.workspace, body, "cli")).to_public())
        return EXIT_OK

    return await with_service(config, action, writes=True)


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

    return await with_service(config, action, writes=True)


async def cmd_members_remove(args: argparse.Namespace, config: Config) -> int:
    async def action(service: KeyService) -> int:
        member, revoked = await service.members.remove(args.workspace, args.user_id, "cli")
        emit({**member.to_public(), "revoked_keys": [k.key_id for k in revoked]})
        return EXIT_OK

    return await with_service(config, action, writes=True)


async def cmd_console_link(args: argparse.Namespace, config: Config) -> int:
    """README "Web console": the URL is the last line of stdout, like a new key."""
    async def action(service: KeyService) -> int:
        token = await service.console.make_link(args.workspace, args.email, "cli")
        print(sign_in_url(config, token))
        return EXIT_OK

    return await with_service(config, action, writes=True)


COMMANDS: dict[tuple[str, str | None], Command] = {
    ("migrate", None): cmd_migrate,
    ("config", "check"): cmd_config_check,
    ("admin-key", "create"): cmd_admin_key_create,
    ("admin-key", "list"): cmd_admin_key_list,
    ("admin-key", "revoke"): cmd_admin_key_revoke,
    ("keys", "create"): cmd_keys_create,
    ("keys", "list"): cmd_keys_list,
    ("keys", "show"): cmd_keys_show,
    ("keys", "revoke"): cmd_keys_revoke,
    ("keys", "rotate"): cmd_keys_rotate,
    ("keys", "credits"): cmd_keys_credits,
    ("keys", "disable"): cmd_keys_disable,
    ("keys", "enable"): cmd_keys_enable,
    ("keys", "usage"): cmd_keys_usage,
    ("keys", "update"): cmd_keys_update,
    ("members", "add"): cmd_members_add,
    ("members", "list"): cmd_members_list,
    ("members", "set-role"): cmd_members_set_role,
    ("members", "remove"): cmd_members_remove,
    ("workspaces", "create"): cmd_workspaces_create,
    ("workspaces", "list"): cmd_workspaces_list,
    ("projects", "create"): cmd_projects_create,
    ("projects", "list"): cmd_projects_list,
    ("namespaces", "create"): cmd_namespaces_create,
    ("namespaces", "list"): cmd_namespaces_list,
    ("console-link", None): cmd_console_link,
}


def run_echo_upstream(listen: str) -> int:
    """The demo upstream. Once it listens it says so on stdout (``make run`` waits for that
    line); a taken port is one line on stderr and exit code 1, before anything else starts."""
    from aiohttp import web

    from gateway.echo import create_echo_app

    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        return fail(f"echo-upstream: --listen: expected host:port, got {listen!r}", EXIT_USAGE)
    url = f"http://{host or '127.0.0.1'}:{port}"

    def listening(_banner: str) -> None:
        sys.stdout.write(f"echo upstream listening on {url}\n")
        sys.stdout.flush()

    try:
        web.run_app(create_echo_app(), host=host or "127.0.0.1", port=int(port),
                    print=listening)
    except OSError as exc:
        return fail(f"echo-upstream: cannot listen on {host}:{port}: {os_reason(exc)}",
                    EXIT_FAILURE)
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

