"""A config section is a frozen dataclass whose fields declare its YAML keys, once:

    ttl: float = option(60.0, parsers.positive_number)      # optional key: default + parser
    name: str = required(route_name)                        # a key that must be present
    upstreams: tuple[str, ...] = required(upstream_urls, key="upstream")  # YAML name differs
    implies: Mapping[...] = option({}, parsers.implications, key="permissions.implies")
    key_cache: KeyCacheConfig = subsection(KeyCacheConfig)  # a nested section, all optional

``section(cls)`` is the parser of a YAML mapping into ``cls``: its keys are the fields' (an
unknown key: "did you mean"), each value is read by the field's parser at its dotted path, a
missing key takes the field's default, and ``null`` is ``{}`` when no key is required. Rules
that span fields are explicit ``check(ctx, data, path, built) -> built`` functions.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, field, fields
from typing import TYPE_CHECKING, Any, TypeVar, cast

from gateway.config.parsers import Ctx, Parser, join, mapping, nullable

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")
S = TypeVar("S", bound="DataclassInstance")
Check = Callable[[Ctx, Mapping[str, object], str, S], S]


def option(default: T, parse: Parser[T], *, key: str | None = None) -> T:
    """A key that may be left out; with a default of None it may also be ``null``."""
    metadata = {"parse": parse if default is not None else nullable(parse), "key": key}
    if isinstance(default, dict):  # mutable: every instance gets its own copy
        return field(default_factory=functools.partial(copy.copy, default), metadata=metadata)
    return field(default=default, metadata=metadata)


def required(parse: Parser[T], *, key: str | None = None, kw_only: bool = False) -> T:
    """A key that must be present (``kw_only``: a required field after optional ones)."""
    return cast(T, field(kw_only=kw_only, metadata={"parse": parse, "key": key}))


def subsection(cls: type[S]) -> S:
    """A nested section that may be left out (or null): then every key takes its default."""
    return option(cls(), section(cls))


def section(cls: type[S], check: Check[S] | None = None) -> Parser[S]:
    def parse(ctx: Ctx, value: object, path: str) -> S:
        return build(ctx, cls, value, path, check=check)

    return parse


def build(
    ctx: Ctx, cls: type[S], value: object, path: str, *, check: Check[S] | None = None,
    **given: object,
) -> S:
    """``cls`` read from the mapping ``value`` at ``path``, except the ``given`` fields."""
    values: dict[str, object] = {}
    data = _read(ctx, value, path, _keys(cls), values)
    built = cls(**values, **given)
    return built if check is None else check(ctx, data, path, built)


def keys_of(ctx: Ctx, cls: type[S], value: object, path: str) -> dict[str, object]:
    """Only the shape: ``value`` is a mapping of keys of ``cls``, none of them missing."""
    return _read(ctx, value, path, _keys(cls), None)


@functools.cache
def _keys(cls: type[DataclassInstance]) -> dict[str, Field[Any]]:
    """YAML key (dotted when it is in a sub-mapping) -> its field, in declaration order."""
    return {f.metadata["key"] or f.name: f for f in fields(cls) if "parse" in f.metadata}


def _read(
    ctx: Ctx, value: object, path: str, keys: dict[str, Field[Any]], out: dict[str, object] | None
) -> dict[str, object]:
    """Check the mapping at ``path`` against ``keys``, then parse its values into ``out``."""
    heads = tuple(dict.fromkeys(key.partition(".")[0] for key in keys))  # permissions.implies
    needed = tuple(key for key, f in keys.items() if "." not in key and _is_required(f))
    data = {} if value is None and not needed else mapping(ctx, value, path, heads, needed)
    if out is None:
        return data
    for head in heads:  # in declaration order, so that the first error is always the same one
        if head not in data:
            continue
        if head in keys:
            out[keys[head].name] = keys[head].metadata["parse"](ctx, data[head], join(path, head))
        else:  # the head of dotted keys: a mapping of its own
            inner = {k.partition(".")[2]: f for k, f in keys.items() if k.startswith(head + ".")}
            _read(ctx, data[head], join(path, head), inner, out)
    return data


def _is_required(f: Field[Any]) -> bool:
    return f.default is MISSING and f.default_factory is MISSING
