"""The ``gateway`` command: thin commands -> library calls -> named exit codes.

Every failure is one line on stderr (``gateway: <file>: <path>: <problem>, got <value>`` for
config errors) and a non-zero exit; never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, NoReturn

import orjson

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
from gateway.keys.model import ROLES, KeyRecord, utcnow
from gateway.keys.service import KeyService
from gateway.services import open_store
from gateway.version import gateway_version

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


async def cmd_keys_rotate(args: argparse.Namespace, config: Config) -> int:
    async def action(service: KeyService) -> int:
        _old, new, plaintext = await service.rotate_key(args.key_id, args.grace_period, "cli")
        emit(new.to_public(utcnow()))
        sys.stdout.write(plaintext + "\n")
        return EXIT_OK

    return await with_service(config, action, writes=True)


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


# parser --------------------------------------------------------------------------------------
CONFIG_HELP = "config file (default: $GATEWAY_CONFIG, else config/gateway.yaml)"
WORKSPACE_HELP = "the workspace id (ws_...)"


class _Parser(argparse.ArgumentParser):
    """Every (sub)command accepts -c/--config, before or after its name (README "CLI")."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("-c", "--config", default=argparse.SUPPRESS, help=CONFIG_HELP)

    def error(self, message: str) -> NoReturn:
        """One line, like every other failure, instead of the usage block."""
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _group(sub: Any, name: str, text: str) -> Any:
    """A command with actions of its own (``gateway keys create``)."""
    parser = sub.add_parser(name, help=text, description=text)
    return parser.add_subparsers(dest="action", required=True, parser_class=_Parser,
                                 metavar="ACTION")


def _command(sub: Any, name: str, text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=text, description=text)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gateway", description="API-key gateway: an async reverse proxy "
                     "that enforces API keys (README \"CLI\").")
    parser.add_argument("--version", action="version", version=f"gateway {gateway_version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                metavar="COMMAND")
    _command(sub, "serve", "run the gateway (both listeners) until SIGTERM; SIGHUP reloads")
    _command(sub, "migrate", "apply key-store migrations and exit")
    _group(sub, "config", "the config file").add_parser(
        "check", help="validate the config file and print the route table",
        description="validate the config file and print the route table")
    echo = _command(sub, "echo-upstream", "run a demo upstream that echoes requests as JSON")
    echo.add_argument("--listen", default="127.0.0.1:9000", metavar="HOST:PORT",
                      help="address to listen on (default 127.0.0.1:9000)")
    _admin_key_parser(sub)
    _keys_parser(sub)
    _tenancy_parser(sub)
    _members_parser(sub)
    return parser


def _admin_key_parser(sub: Any) -> None:
    admin = _group(sub, "admin-key", "admin keys: operator (no workspace) or workspace admins")
    create = _command(admin, "create", "create an admin key (plaintext: last line of stdout)")
    create.add_argument("--name", required=True, help="a name to recognise the key by")
    create.add_argument("--workspace", default=None, metavar="WS",
                        help="make a workspace admin key instead of an operator key")
    list_ = _command(admin, "list", "list admin keys (never a plaintext or a hash)")
    list_.add_argument("--workspace", default=None, metavar="WS",
                       help="only this workspace's admin keys (default: every admin key)")
    _paging(list_)
    revoke = _command(admin, "revoke", "revoke an admin key (final, on every node)")
    revoke.add_argument("key_id", help="the admin key's key_id")


def _paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--include-revoked", action="store_true",
                        help="also list revoked and expired keys")
    parser.add_argument("--limit", type=int, default=50, help="keys per page (default 50)")
    parser.add_argument("--cursor", help="next_cursor of the previous page")


def _keys_parser(sub: Any) -> None:
    keys = _group(sub, "keys", "API keys of a workspace")
    create = _command(keys, "create", "create a key (plaintext: last line of stdout)")
    create.add_argument("--workspace", required=True, metavar="WS", help=WORKSPACE_HELP)
    create.add_argument("--name", required=True, help="a name to recognise the key by")
    create.add_argument("--description", help="free text")
    create.add_argument("--user-id", help="the owner: a member's usr_ id, or any other string "
                                           "for a service key")
    create.add_argument("--user-email", help="the owner: the member with this email")
    create.add_argument("--permission", action="append", help="a permission (repeatable)")
    create.add_argument("--scope", action="append", metavar="RES:OP,OP",
                        help="RESOURCE:op1,op2 (repeatable); none: every resource")
    create.add_argument("--allowed-origin", action="append", metavar="ORIGIN",
                        help="scheme://host[:port] or scheme://*.domain (repeatable)")
    create.add_argument("--rate-limit", type=int, metavar="N", help="requests per minute")
    create.add_argument("--concurrency", type=int, metavar="N", help="requests in flight")
    create.add_argument("--expires-at", metavar="TIME", help="RFC 3339")
    create.add_argument("--environment", choices=("live", "test"), help="selects the prefix")
    create.add_argument("--project", metavar="PROJECT", help="default: the workspace's own")
    create.add_argument("--admin", action="store_true", help="a workspace admin key")
    list_ = _command(keys, "list", "list a workspace's keys (never a plaintext or a hash)")
    list_.add_argument("--workspace", required=True, metavar="WS", help=WORKSPACE_HELP)
    list_.add_argument("--user-id", help="only this owner's keys")
    list_.add_argument("--resource-id", help="only keys whose scopes cover this resource")
    _paging(list_)
    for name, text in (("show", "show a key"), ("revoke", "revoke a key (final)"),
                       ("disable", "disable a key until enabled (401 disabled_api_key)"),
                       ("enable", "enable a disabled key")):
        _command(keys, name, text).add_argument("key_id", help="the key's key_id")
    rotate = _command(keys, "rotate", "replace a key by a new one (plaintext: last line)")
    rotate.add_argument("key_id", help="the key's key_id")
    rotate.add_argument("--grace-period", type=int, default=0, metavar="SECONDS",
                        help="how long the old key keeps working (default 0: revoked now)")


def _tenancy_parser(sub: Any) -> None:
    """``workspaces``, and the ``projects`` and ``namespaces`` of a workspace."""
    workspaces = _group(sub, "workspaces", "workspaces (each comes with a default project)")
    _command(workspaces, "create", "create a workspace").add_argument(
        "--name", required=True, help="the workspace's name")
    _command(workspaces, "list", "list every workspace")
    for noun, text in (("projects", "projects of a workspace (X-Project-Id)"),
                       ("namespaces", "namespaces of a workspace (X-Namespace)")):
        group = _group(sub, noun, text)
        create = _command(group, "create", f"create a {noun[:-1]}")
        create.add_argument("--name", required=True, help=f"the {noun[:-1]}'s name")
        listed = _command(group, "list", f"list a workspace's {noun}")
        for parser in (create, listed):
            parser.add_argument("--workspace", required=True, metavar="WS", help=WORKSPACE_HELP)


def _members_parser(sub: Any) -> None:
    members = _group(sub, "members", "members of a workspace and their roles")
    add = _command(members, "add", "add a member")
    list_ = _command(members, "list", "list a workspace's members, oldest first")
    set_role = _command(members, "set-role", "change a member's role")
    remove = _command(members, "remove", "remove a member and revoke its active keys")
    for parser in (add, list_, set_role, remove):
        parser.add_argument("--workspace", required=True, metavar="WS", help=WORKSPACE_HELP)
    for parser in (set_role, remove):
        parser.add_argument("user_id", help="the member's usr_ id")
    add.add_argument("--email", required=True, help="unique in the workspace (any case)")
    for parser in (add, set_role):
        parser.add_argument("--role", required=True, choices=ROLES, help="what the member may do")


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
    ("keys", "disable"): cmd_keys_disable,
    ("keys", "enable"): cmd_keys_enable,
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

