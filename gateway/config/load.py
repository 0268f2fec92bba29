"""The only reader of the YAML config and the environment: ``load_config(path)`` reads a file,
``parse_config(data, source, environ)`` an already-parsed tree; both return a ``Config`` or raise
one ConfigError line ``<file>: <dotted.path>: <what>, got <repr>``.

Order: the top level must be a mapping of known keys; GATEWAY_DATABASE_URL / GATEWAY_REDIS_URL
replace ``database`` / ``redis`` (never interpolated); every other string scalar is interpolated
(``${VAR}``, ``${VAR:-default}``, ``$$``); then ``model.Config`` is read section by section.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import replace

import yaml

from gateway.config.model import Config
from gateway.config.parsers import Ctx, anchored_database, database_url, join, redis_url
from gateway.config.plans import default_plan_known
from gateway.config.section import build, keys_of
from gateway.errors import ConfigError

_INTERPOLATION_RE = re.compile(r"\$\$|\$\{(?P<body>[^}]*)\}|\$\{")
_WHOLE_EXPRESSION_RE = re.compile(r"\$\{[^}]*\}")
_VARIABLE_RE = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate the YAML config at ``path``; ``environ`` defaults to
    ``os.environ``. Raises ConfigError (one line naming the file) on any problem."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as handle:
            text = handle.read()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not valid UTF-8 (byte offset {exc.start})") from None
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise ConfigError(f"{source}: cannot read config file: {reason}") from None
    data = _load_yaml(text, source)
    return parse_config(data, source, os.environ if environ is None else environ)


def parse_config(data: object, source: str, environ: Mapping[str, str]) -> Config:
    """Validate an already-parsed YAML tree (``source`` names it in messages)."""
    ctx = Ctx(source, environ)
    top = keys_of(ctx, Config, data, "")
    overrides = _env_overrides(ctx)  # replace the file's value, which is then not even read
    raw = {key: value for key, value in top.items() if key not in overrides}
    top = _interpolate_mapping(ctx, raw, "")
    return build(ctx, Config, top, "", check=_top_rules, source=source, **overrides)


def _top_rules(ctx: Ctx, top: Mapping[str, object], path: str, config: Config) -> Config:
    """The rules that span top-level keys."""
    config = default_plan_known(ctx, top, path, _separate_ports(ctx, top, path, config))
    return _config_relative(config)


def _config_relative(config: Config) -> Config:
    """A relative SQLite file is relative to the config file, whether it came from the file,
    the default or GATEWAY_DATABASE_URL (README "Config-relative paths")."""
    return replace(config, database=anchored_database(config.source, config.database))


def _separate_ports(ctx: Ctx, top: Mapping[str, object], path: str, config: Config) -> Config:
    if config.admin_listen.port == config.listen.port:
        ctx.fail(
            "admin_listen",
            f"must not use the public listener's port {config.listen.port} (the admin API is "
            "never exposed on the public port)",
            top.get("admin_listen", str(config.admin_listen)),
        )
    return config


class _StrictLoader(yaml.SafeLoader):
    """safe_load that also rejects a key repeated in one mapping (YAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = str(key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key, got {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return dict(super().construct_mapping(node, deep=deep))


def _load_yaml(text: str, source: str) -> object:
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(document)"
        problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        if problem.startswith("duplicate key"):
            raise ConfigError(f"{source}: {where}: {problem}") from None
        raise ConfigError(f"{source}: {where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None


def _env_overrides(ctx: Ctx) -> dict[str, str | None]:
    """GATEWAY_DATABASE_URL (ignored when empty) and GATEWAY_REDIS_URL ("" or "null": None)."""
    out: dict[str, str | None] = {}
    database = ctx.environ.get("GATEWAY_DATABASE_URL", "").strip()
    if database:
        out["database"] = database_url(ctx, database, "database (from GATEWAY_DATABASE_URL)")
    if "GATEWAY_REDIS_URL" in ctx.environ:
        redis = ctx.environ["GATEWAY_REDIS_URL"].strip()
        where = "redis (from GATEWAY_REDIS_URL)"
        out["redis"] = None if redis in ("", "null") else redis_url(ctx, redis, where)
    return out


def _interpolate_mapping(ctx: Ctx, data: Mapping[str, object], path: str) -> dict[str, object]:
    return {key: _interpolate(ctx, value, join(path, key)) for key, value in data.items()}


def _interpolate(ctx: Ctx, value: object, path: str) -> object:
    if isinstance(value, str):
        return _interpolate_scalar(ctx, value, path)
    if isinstance(value, dict):
        return _interpolate_mapping(ctx, value, path)
    if isinstance(value, list):
        return [_interpolate(ctx, item, f"{path}[{i}]") for i, item in enumerate(value)]
    return value


def _interpolate_scalar(ctx: Ctx, text: str, path: str) -> object:
    if "$" not in text:
        return text
    substituted = _INTERPOLATION_RE.sub(lambda match: _substitute(ctx, match, text, path), text)
    if not _WHOLE_EXPRESSION_RE.fullmatch(text):
        return substituted
    # exactly one ${...}: the value gets its YAML type (int, float, bool, null), else stays text
    try:
        typed = yaml.load(substituted, Loader=_StrictLoader)
    except yaml.YAMLError:
        return substituted
    if typed is None or isinstance(typed, bool | int | float):
        ctx.retyped[path] = substituted
        return typed
    return substituted


def _substitute(ctx: Ctx, match: re.Match[str], text: str, path: str) -> str:
    if match.group(0) == "$$":
        return "$"
    body = match.group("body")
    variable = _VARIABLE_RE.fullmatch(body) if body is not None else None
    if variable is None:
        ctx.fail(path, "bad ${...} expression (use ${VAR}, ${VAR:-default} or $$ for '$')", text)
    default = variable.group("default")
    if default is not None and "${" in default:
        ctx.fail(path, "nested ${...} in a default is not supported", text)
    name = variable.group("name")
    current = ctx.environ.get(name)
    if default is not None and not current:
        return default
    if current is None:
        ctx.fail(path, f"environment variable {name} is not set and has no ':-' default", text)
    return current
