"""Log lines on stderr: JSON (one object per line, orjson) or text, for every logger; and the
access log, one line per proxied request.

Every line has ``ts`` (UTC, ms), ``level``, ``logger`` and ``message``; anything passed as
``extra`` (``request_id`` ...) becomes a field. Nothing secret is written: the access log has
the path without its query string (a query may carry secrets) and never a header value, and
every message, field and traceback goes through ``Redactor``, which replaces anything shaped
like an API key (a configured prefix, ``_`` and letters/digits) or a ``Bearer`` credential.

The access log does not go through ``logging``: a ``LogRecord`` costs about 6 µs, a line built
here about 1 µs. Lines are buffered and written every ``FLUSH_AFTER`` seconds (or at
``BUFFER_LIMIT``) in writes of at most ``PIPE_BUF`` bytes, cut at line ends, so workers sharing
one pipe never interleave inside a line.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from gateway.config import Config

if TYPE_CHECKING:
    from gateway.exchange import Exchange

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
REDACTED = "[redacted]"
FLUSH_AFTER = 0.25  # seconds an access line may wait in the buffer
BUFFER_LIMIT = 64 * 1024  # bytes buffered before a write regardless of the timer
PIPE_BUF = 4096  # POSIX: a pipe write up to this size is atomic
ACCESS_LOGGER = "gateway.access"
# the loggers of what the gateway is built on: at ``logging.libraries``, never the gateway's
# own level, so debug shows the gateway's decisions rather than every driver round trip
LIBRARY_LOGGERS = ("aiohttp", "aiosqlite", "asyncio", "asyncpg", "redis", "multipart")
_worker: int | None = None  # this process's worker number, under a supervisor
# what every LogRecord has: anything else on a record came in through ``extra``
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName",
}


class Redactor:
    """Replaces API keys (by their configured prefixes) and ``Bearer`` credentials in text."""

    def __init__(self, prefixes: Iterable[str]) -> None:
        names = "|".join(re.escape(p) for p in sorted(prefixes, key=len, reverse=True))
        self.pattern = re.compile(rf"(?:{names})_[A-Za-z0-9]+|(?i:bearer)\s+[^\s'\",]+")

    def __call__(self, text: str) -> str:
        return self.pattern.sub(REDACTED, text)


_last_ms = -1
_last_text = ""


def timestamp(now: float) -> str:
    """RFC 3339 UTC with milliseconds, formatted at most once a millisecond (the access log
    writes many lines a millisecond under load)."""
    global _last_ms, _last_text
    ms = int(now * 1000)
    if ms != _last_ms:
        second, fraction = divmod(ms, 1000)
        clock = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_ms, _last_text = ms, f"{clock}.{fraction:03d}Z"
    return _last_text


def _fields(record: logging.LogRecord, redact: Redactor) -> dict[str, Any]:
    line: dict[str, Any] = {
        "ts": timestamp(record.created),
        "level": record.levelname.lower(),
        "logger": record.name,
        "message": redact(record.getMessage()),
    }
    for name, value in vars(record).items():
        if name not in _RECORD_FIELDS and not name.startswith("_"):
            if not isinstance(value, int | float | bool | None):
                value = redact(str(value))
            line[name] = value
    return line


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line = _fields(record, self._redact)
        if record.exc_info:
            line["exc"] = self._redact(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = self._redact(self.formatStack(record.stack_info))
        return orjson.dumps(line).decode()


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger message key=value ...``: for a terminal."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        text = text_line(_fields(record, self._redact))
        if record.exc_info:
            text += "\n" + self._redact(self.formatException(record.exc_info))
        return text


def text_line(fields: dict[str, Any]) -> str:
    head = f"{fields.pop('ts')} {fields.pop('level').upper()} {fields.pop('logger')} "
    head += fields.pop("message")
    parts = [head]
    for name, value in fields.items():
        if value is None:
            continue
        shown = str(value)
        if not shown or any(c in shown for c in ' "=\\') or not shown.isprintable():
            shown = orjson.dumps(shown).decode()
        parts.append(f"{name}={shown}")
    return " ".join(parts)


def configure_logging(
    config: Config, stream: TextIO | None = None, *, worker: int | None = None
) -> logging.Handler:
    """Every logger writes through one handler on ``stream`` (stderr) in the configured format
    at the configured level; the libraries' loggers at ``logging.libraries``. A ``worker``
    number goes on every line, access lines included. Called again, it replaces the handler it
    installed before (and leaves any other handler alone)."""
    global _worker
    _worker = worker
    redact = Redactor(config.keys.prefixes.values())
    options = config.logging
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    formatter = JsonFormatter if options.format == "json" else TextFormatter
    handler.setFormatter(formatter(redact))
    handler.set_name("gateway")
    if worker is not None:
        handler.addFilter(WorkerField(worker))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "gateway"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[options.level])
    libraries = max(LEVELS[options.libraries], LEVELS[options.level])  # never below level
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(libraries)
    return handler


class WorkerField(logging.Filter):
    """Puts ``worker`` (its number) on every record the handler writes."""

    def __init__(self, number: int) -> None:
        super().__init__()
        self.number = number

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.number
        return True


class AccessLog:
    """One line per proxied request: request_id, route, method, path (no query), status,
    latency_ms, upstream_ms, key_id, workspace_id, client, error (the code, if any), and
    shadow (the code a shadow rule would have answered) when there is one."""

    def __init__(self, config: Config, stream: TextIO | None = None) -> None:
        self._json = config.logging.format == "json"
        self._worker = _worker  # set by configure_logging in this process, before services
        self._key = Redactor(config.keys.prefixes.values()).pattern
        self.stream = stream  # None: sys.stderr as it is at each write (it may be redirected)
        self._lines: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    @staticmethod
    def wanted(config: Config) -> bool:
        options = config.logging
        return options.access_log and LEVELS[options.level] <= logging.INFO

    def log(self, exchange: Exchange, status: int, seconds: float) -> None:
        request = exchange.request
        key = exchange.key
        match = exchange.match
        path = exchange.path or request.path
        if self._key.search(path):  # a key pasted into a path is still a key
            path = self._key.sub(REDACTED, path)
        upstream = exchange.upstream_seconds
        fields = {
            "ts": timestamp(time.time()),
            "level": "info",
            "logger": ACCESS_LOGGER,
            "message": "request",
            "request_id": exchange.request_id,
            "route": match.route.name if match is not None else None,
            "method": request.method,
            "path": path,
            "status": status,
            "latency_ms": int(seconds * 1_000_000) / 1000,  # µs precision, printed short
            "upstream_ms": None if upstream is None else int(upstream * 1_000_000) / 1000,
            "key_id": key.key_id if key is not None else None,
            "workspace_id": key.workspace_id if key is not None else None,
            "client": exchange.client or request.remote,
            "error": exchange.error_code,
        }
        if exchange.shadow is not None:  # README "Shadow mode": what a shadow rule would answer
            fields["shadow"] = exchange.shadow
        if self._worker is not None:
            fields["worker"] = self._worker
        line = orjson.dumps(fields) if self._json else text_line(fields).encode()
        self._lines.append(line)
        self._size += len(line) + 1
        if self._size >= BUFFER_LIMIT:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_AFTER, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines, self._lines, self._size = self._lines, [], 0
        if not lines:
            return
        stream = self.stream if self.stream is not None else sys.stderr
        stream.flush()  # whatever logging wrote before goes first
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) + 1 > PIPE_BUF:
                _write(stream, chunk)
                chunk, size = [], 0
            chunk.append(line)
            size += len(line) + 1
        _write(stream, chunk)

    def close(self) -> None:
        self.flush()


def _write(stream: TextIO, lines: list[bytes]) -> None:
    data = b"\n".join(lines) + b"\n"
    binary = getattr(stream, "buffer", None)
    if binary is not None:
        binary.write(data)
        binary.flush()
    else:
        stream.write(data.decode())
        stream.flush()
