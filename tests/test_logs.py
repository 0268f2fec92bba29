"""Log lines: the JSON and text formats, redaction, the access log's fields and its writes."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway import logs
from gateway.config import Config, LoggingConfig, parse_config
from gateway.exchange import Exchange
from gateway.keys.model import generate_key
from gateway.logs import (
    PIPE_BUF,
    REDACTED,
    AccessLog,
    JsonFormatter,
    Redactor,
    TextFormatter,
    configure_logging,
    timestamp,
)

KEY = generate_key("sk_live")


def config(**logging_options: Any) -> Config:
    return parse_config(
        {"logging": logging_options, "routes": [{"name": "r", "path": "/r/",
                                                  "upstream": "http://127.0.0.1:9"}]},
        "t.yaml", {},
    )


def record(message: str, *args: object, exc: BaseException | None = None,
           **extra: object) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    item = logging.LogRecord("gateway.test", logging.ERROR, __file__, 1, message, args, exc_info)
    item.__dict__.update(extra)
    return item


def test_json_lines_carry_the_extra_fields() -> None:
    line = JsonFormatter(Redactor(["sk_live"])).format(
        record("upstream %s failed", "api", request_id="r1", status=502)
    )
    data = json.loads(line)
    assert data["level"] == "error" and data["logger"] == "gateway.test"
    assert data["message"] == "upstream api failed"
    assert (data["request_id"], data["status"]) == ("r1", 502)
    assert data["ts"].endswith("Z") and len(data["ts"]) == len("2026-01-01T00:00:00.000Z")


def test_keys_and_bearer_values_are_redacted_everywhere() -> None:
    try:
        raise ValueError(f"bad header b'Authorization: Bearer {KEY}'")
    except ValueError as exc:
        caught = exc
    item = record("got %s", KEY, exc=caught, header=f"Bearer {KEY}")
    for formatter in (JsonFormatter(Redactor(["sk_live"])), TextFormatter(Redactor(["sk_live"]))):
        text = formatter.format(item)
        assert KEY not in text and KEY[8:] not in text
        assert REDACTED in text
    line = JsonFormatter(Redactor(["sk_live"])).format(record("token bearer abc.def"))
    assert "abc.def" not in line


def test_text_lines() -> None:
    text = TextFormatter(Redactor(["sk_live"])).format(
        record("cleanup failed", request_id="r1", detail="two words")
    )
    assert " ERROR gateway.test cleanup failed " in text
    assert 'request_id=r1 detail="two words"' in text


def test_timestamp() -> None:
    assert timestamp(0.0) == "1970-01-01T00:00:00.000Z"
    assert timestamp(1.2345) == "1970-01-01T00:00:01.234Z"


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    libraries = {name: logging.getLogger(name).level for name in logs.LIBRARY_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in libraries.items():
        logging.getLogger(name).setLevel(old)
    logs._worker = None


def test_libraries_log_at_their_own_level_and_workers_are_named(root_logging: None) -> None:
    out = io.StringIO()
    configure_logging(config(level="debug"), out, worker=3)
    logging.getLogger("asyncpg.pool").debug("driver chatter")
    logging.getLogger("aiohttp.access").info("aiohttp's access line")
    logging.getLogger("gateway.decision").debug("authenticate: pass")
    (line,) = [json.loads(text) for text in out.getvalue().splitlines()]
    assert (line["message"], line["worker"]) == ("authenticate: pass", 3)
    assert AccessLog(config())._worker == 3
    configure_logging(config(level="debug", libraries="debug"), out)
    logging.getLogger("asyncpg.pool").debug("driver chatter")
    assert "driver chatter" in out.getvalue()
    configure_logging(config(level="error"), out)  # libraries never below the level
    assert logging.getLogger("aiohttp").level == logging.ERROR


def test_configure_logging_replaces_only_its_own_handler(root_logging: None) -> None:
    root = logging.getLogger()
    before = len(root.handlers)
    first = io.StringIO()
    configure_logging(config(level="warning"), first)
    second = io.StringIO()
    configure_logging(config(level="debug", format="text"), second)
    assert len(root.handlers) == before + 1
    assert root.level == logging.DEBUG
    logging.getLogger("gateway.test").info("hello %s", KEY)
    assert first.getvalue() == ""
    assert " INFO gateway.test hello [redacted]" in second.getvalue()


def exchange(target: str = "/r/x?api_key=secret", **fields: Any) -> Exchange:
    item = Exchange(make_mocked_request("GET", target))
    item.request_id = "rid"
    item.path = target.partition("?")[0]
    for name, value in fields.items():
        setattr(item, name, value)
    return item


async def test_access_lines() -> None:
    out = io.StringIO()
    log = AccessLog(config(), out)
    key = SimpleNamespace(key_id="key_1", workspace_id="ws_1")
    route = SimpleNamespace(route=SimpleNamespace(name="r"))
    log.log(exchange(key=key, match=route, upstream_seconds=0.0012), 200, 0.0031234)
    log.log(exchange(f"/nowhere/{KEY}?key={KEY}", error_code="route_not_found"), 404, 0.0001)
    log.flush()
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first == {
        "ts": first["ts"], "level": "info", "logger": "gateway.access", "message": "request",
        "request_id": "rid", "route": "r", "method": "GET", "path": "/r/x", "status": 200,
        "latency_ms": 3.123, "upstream_ms": 1.2, "key_id": "key_1", "workspace_id": "ws_1",
        "client": first["client"], "error": None,
    }
    assert second["path"] == f"/nowhere/{REDACTED}"  # a key in a path is still a key
    assert (second["route"], second["error"]) == (None, "route_not_found")
    assert KEY not in out.getvalue() and "secret" not in out.getvalue()  # no query string


async def test_access_lines_as_text() -> None:
    out = io.StringIO()
    log = AccessLog(config(format="text"), out)
    log.log(exchange(), 200, 0.001)
    log.flush()
    assert " INFO gateway.access request request_id=rid method=GET path=/r/x status=200 " in (
        out.getvalue()
    )


class Writes(io.StringIO):
    """Records every write, as a pipe would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


async def test_access_lines_are_written_in_whole_lines_of_at_most_pipe_buf() -> None:
    out = Writes()
    log = AccessLog(config(), out)
    for _ in range(200):
        log.log(exchange("/r/" + "x" * 100), 200, 0.001)
    log.flush()
    assert len(out.getvalue().splitlines()) == 200
    assert len(out.writes) > 1
    for chunk in out.writes:
        assert len(chunk.encode()) <= PIPE_BUF and chunk.endswith("\n")


async def test_access_lines_are_written_within_a_quarter_second() -> None:
    out = io.StringIO()
    log = AccessLog(config(), out)
    log.log(exchange(), 200, 0.001)
    assert out.getvalue() == ""
    await asyncio.sleep(0.35)
    assert out.getvalue().count("\n") == 1


def test_access_log_follows_the_config() -> None:
    assert AccessLog.wanted(config())
    assert not AccessLog.wanted(config(access_log=False))
    assert not AccessLog.wanted(config(level="warning"))  # access lines are info lines
    assert LoggingConfig() == config().logging
