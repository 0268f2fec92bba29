"""The ``gateway`` command line: every command, flag and help text (README "CLI"). A usage
error is one line and exit code 2 (``EXIT_USAGE``), like every other failure of ``gateway.cli``.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from gateway.keys.model import GRANULARITIES, ROLES
from gateway.version import gateway_version

EXIT_USAGE = 2  # the same code as gateway.cli's for bad arguments or config

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
    link = _command(sub, "console-link", "print a single-use sign-in URL of the web console "
                    "for a member (last line of stdout; valid console.link_ttl, 15 minutes)")
    link.add_argument("--workspace", required=True, metavar="WS", help=WORKSPACE_HELP)
    link.add_argument("--email", required=True, help="the member's email (any case)")
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


def _ip_flags(parser: argparse.ArgumentParser) -> None:
    """README "IP allowlists" and "Shadow mode": the flags of keys create and keys update."""
    parser.add_argument("--allowed-ip", action="append", metavar="CIDR",
                        help="an address or CIDR the key may be used from (repeatable; "
                             "none: any address)")
    parser.add_argument("--enforcement", choices=("enforce", "shadow"),
                        help="shadow: the key's own rules refuse no one, would-be refusals "
                             "are counted (default enforce)")


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
    _ip_flags(create)
    create.add_argument("--rate-limit", type=int, metavar="N", help="requests per minute")
    create.add_argument("--concurrency", type=int, metavar="N", help="requests in flight")
    create.add_argument("--expires-at", metavar="TIME", help="RFC 3339")
    create.add_argument("--environment", choices=("live", "test"), help="selects the prefix")
    create.add_argument("--project", metavar="PROJECT", help="default: the workspace's own")
    create.add_argument("--admin", action="store_true", help="a workspace admin key")
    create.add_argument("--credits", type=int, metavar="N",
                        help="credits the key starts with (README \"Credits\")")
    create.add_argument("--refill", metavar="M/day|M/month",
                        help="with --credits: the balance set at each UTC day's (month's) start")
    list_ = _command(keys, "list", "list a workspace's keys (never a plaintext or a hash)")
    list_.add_argument("--workspace", required=True, metavar="WS", help=WORKSPACE_HELP)
    list_.add_argument("--user-id", help="only this owner's keys")
    list_.add_argument("--resource-id", help="only keys whose scopes cover this resource")
    _paging(list_)
    for name, text in (("show", "show a key"), ("revoke", "revoke a key (final)"),
                       ("disable", "disable a key until enabled (401 disabled_api_key)"),
                       ("enable", "enable a disabled key")):
        _command(keys, name, text).add_argument("key_id", help="the key's key_id")
    update = _command(keys, "update", "change a key's IP allowlist or enforcement")
    update.add_argument("key_id", help="the key's key_id")
    _ip_flags(update)
    update.add_argument("--any-ip", action="store_true",
                        help="empty the IP allowlist: any address may use the key")
    usage = _command(keys, "usage", "a key's usage over time, by outcome, as a table")
    usage.add_argument("key_id", help="the key's key_id")
    usage.add_argument("--from", dest="from_", metavar="TIME",
                       help="RFC 3339 start (default: 24 hours before --to)")
    usage.add_argument("--to", metavar="TIME", help="RFC 3339 end, excluded (default: now)")
    usage.add_argument("--granularity", choices=tuple(GRANULARITIES),
                       help="bucket length (default: hour); at most 1440 buckets")
    credits = _command(keys, "credits", "top up a key's credits (README \"Credits\")")
    credits.add_argument("key_id", help="the key's key_id")
    top_up = credits.add_mutually_exclusive_group(required=True)
    top_up.add_argument("--add", type=int, metavar="N", help="add N (>= 1) to the balance")
    top_up.add_argument("--set", type=int, metavar="N", help="set the balance to N (>= 0)")
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
