"""Records to rows and back, for every table (after Kong's DB strategies: the mapping is
written once, from the entity's schema). A record is a frozen dataclass whose fields are its
table's columns, same names; ``kinds`` names the columns the database does not store as the
plain value, and the ``Dialect`` says how it stores each kind.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from gateway.errors import ValidationError
from gateway.keys.model import Credits, Scope
from gateway.store.db import Row
from gateway.store.dialect import Dialect

R = TypeVar("R")
Codec = Callable[[Any], Any]

TIMESTAMP = "timestamp"  # a datetime (read back aware, in UTC)
STRINGS = "strings"  # a tuple of strings
SCOPES = "scopes"  # a tuple of Scope, as JSON text
JSON = "json"  # a dict, as JSON text
CREDITS = "credits"  # a key's Credits, as a JSON list of its fields (text in both dialects)
MAX_PAGE = 1000  # the most rows one listing returns


class Rows(Generic[R]):
    """One table's rows as records, in one dialect: ``select`` and ``insert`` name every
    column; ``read`` makes a record of a row, ``params`` the insert's values of a record,
    ``value`` one column's stored value (for an update). ``derived`` maps the record's fields
    that are not columns to the SQL expression ``select`` reads them with (never written)."""

    def __init__(
        self, table: str, record: type[R], kinds: Mapping[str, str], dialect: Dialect,
        derived: Mapping[str, str] | None = None,
    ) -> None:
        """``derived``: fields read from another table or an expression (field -> SQL), never
        written: e.g. a key's principal and subscription, read in the same query as the key."""
        derived = derived or {}
        # a field derived by the record itself (not an __init__ argument) is neither read nor
        # written
        self.fields = tuple(
            f.name for f in dataclasses.fields(record) if f.init  # type: ignore[arg-type]
        )
        self.columns = tuple(name for name in self.fields if name not in derived)
        names = ", ".join(self.columns)
        reads = "".join(f", {expression} AS {name}" for name, expression in derived.items())
        self.select = f"SELECT {names}{reads} FROM {table}"
        params = ", ".join(f"${i}" for i in range(1, len(self.columns) + 1))
        self.insert = f"INSERT INTO {table} ({names}) VALUES ({params})"
        self._make: Callable[..., R] = record
        readers = _readers(dialect)
        # (position, reader) of the columns not stored as they are: the rest are copied as is
        self._readers = [(i, readers[kinds[c]]) for i, c in enumerate(self.fields) if c in kinds]
        self._writers = {c: _codec(kinds.get(c), _writers(dialect)) for c in self.columns}

    def read(self, row: Row) -> R:
        values = [row[name] for name in self.fields]
        for i, read in self._readers:
            if values[i] is not None:
                values[i] = read(values[i])
        return self._make(*values)

    def params(self, record: R) -> list[Any]:
        return [write(getattr(record, column)) for column, write in self._writers.items()]

    def value(self, column: str, value: Any) -> Any:
        return self._writers[column](value)


def _readers(dialect: Dialect) -> dict[str, Codec]:
    return {
        TIMESTAMP: dialect.read_timestamp,
        STRINGS: dialect.read_strings,
        SCOPES: scopes_from_json,
        JSON: json.loads,
        CREDITS: credits_from_json,
    }


def _writers(dialect: Dialect) -> dict[str, Codec]:
    return {
        TIMESTAMP: dialect.timestamp,
        STRINGS: dialect.strings,
        SCOPES: scopes_json,
        JSON: lambda value: json.dumps(value, default=json_default),
        CREDITS: lambda value: json.dumps(list(value)),
    }


def _codec(kind: str | None, codecs: dict[str, Codec]) -> Codec:
    if kind is None:
        return _same
    convert = codecs[kind]
    return lambda value: None if value is None else convert(value)


def _same(value: Any) -> Any:
    return value


def utc(value: datetime) -> datetime:
    """A naive datetime is taken to be UTC; every value leaves in UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def timestamp_text(value: datetime) -> str:
    """UTC ISO-8601 with microseconds: sorts as text in time order."""
    return utc(value).isoformat(timespec="microseconds")


def scopes_json(scopes: Iterable[Scope]) -> str:
    """Scopes as JSON text (SQLite TEXT, Postgres jsonb)."""
    return json.dumps(
        [{"resource_id": s.resource_id, "operations": list(s.operations)} for s in scopes]
    )


def scopes_from_json(text: str) -> tuple[Scope, ...]:
    return tuple(
        Scope(resource_id=str(item["resource_id"]), operations=tuple(item["operations"]))
        for item in json.loads(text)
    )


def credits_from_json(text: str) -> Credits:
    return Credits(*json.loads(text))


def json_default(value: object) -> Any:
    """``json.dumps`` default for audit changes: datetimes, dataclasses (scopes), sets."""
    if isinstance(value, datetime):
        return timestamp_text(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationError({"limit": f"must be between 1 and {MAX_PAGE}"})
