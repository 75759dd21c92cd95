"""JSON-lines log format, trace ids, secret redaction and the file handler."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from datetime import datetime
from typing import Any

import orjson
import pytest

from services.base.config import TradingHome
from services.base.logs import MASK, JsonFormatter, Redactor, configure_logging, trace_var

pytestmark = pytest.mark.usefixtures("restore_root_logger")


def make_record(
    msg: str = "hello %s",
    args: Any = ("world",),
    *,
    level: int = logging.INFO,
    exc_info: Any = None,
    **extra: Any,
) -> logging.LogRecord:
    record = logging.getLogger("test.logs").makeRecord(
        "test.logs", level, __file__, 10, msg, args, exc_info, extra=extra or None
    )
    return record


def format_record(record: logging.LogRecord, redactor: Redactor | None = None) -> dict[str, Any]:
    line = JsonFormatter("quotes", redactor).format(record)
    assert "\n" not in line  # one JSON text per line
    entry = orjson.loads(line)
    assert isinstance(entry, dict)
    return entry


def test_formatter_has_the_standard_fields() -> None:
    record = make_record(level=logging.WARNING)
    entry = format_record(record)
    assert entry["level"] == "WARNING"
    assert entry["service"] == "quotes"
    assert entry["msg"] == "hello world"
    assert entry["trace"] is None
    assert entry["logger"] == "test.logs"
    ts = datetime.fromisoformat(entry["ts"])
    assert ts.utcoffset() is not None
    assert ts.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs(ts.timestamp() - record.created) < 0.001
    assert "exc" not in entry
    # Standard LogRecord attributes are not copied into the line.
    for noise in ("args", "levelno", "pathname", "lineno", "msecs", "thread", "process", "exc_info"):
        assert noise not in entry


def test_a_synthetic_home_labels_every_line() -> None:
    plain = orjson.loads(JsonFormatter("quotes").format(make_record()))
    assert "synthetic" not in plain
    labelled = orjson.loads(JsonFormatter("quotes", synthetic=True).format(make_record()))
    assert labelled["synthetic"] is True


def test_trace_comes_from_context_variable() -> None:
    token = trace_var.set("trace-abc")
    try:
        entry = format_record(make_record())
    finally:
        trace_var.reset(token)
    assert entry["trace"] == "trace-abc"
    assert format_record(make_record())["trace"] is None


def test_trace_from_extra_wins_over_context() -> None:
    token = trace_var.set("from-context")
    try:
        entry = format_record(make_record(trace="from-extra"))
    finally:
        trace_var.reset(token)
    assert entry["trace"] == "from-extra"


def test_extra_fields_appear() -> None:
    entry = format_record(
        make_record(symbol="BHP", quantity=100, price=45.5, tags=["a", "b"], when=datetime(2024, 1, 2))
    )
    assert entry["symbol"] == "BHP"
    assert entry["quantity"] == 100
    assert entry["price"] == 45.5
    assert entry["tags"] == ["a", "b"]
    assert entry["when"].startswith("2024-01-02T00:00:00")


def test_extra_object_that_json_cannot_encode_is_stringified() -> None:
    class Thing:
        def __str__(self) -> str:
            return "a thing"

    assert format_record(make_record(thing=Thing()))["thing"] == "a thing"


def test_exception_gives_exc_field() -> None:
    try:
        raise ValueError("bad quantity 7")
    except ValueError:
        record = make_record("order failed", None, level=logging.ERROR, exc_info=sys.exc_info())
    entry = format_record(record)
    assert entry["msg"] == "order failed"
    assert "Traceback" in entry["exc"]
    assert "ValueError: bad quantity 7" in entry["exc"]


def test_logger_exception_through_handler() -> None:
    redactor = Redactor()
    records: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = ListHandler()
    handler.setFormatter(JsonFormatter("svc", redactor))
    logger = logging.getLogger("test.logs.handler")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            _ = {}["missing"]
        except KeyError:
            logger.exception("lookup failed", extra={"key": "missing"})
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    entry = orjson.loads(records[0])
    assert entry["level"] == "ERROR"
    assert entry["key"] == "missing"
    assert "KeyError" in entry["exc"]


# --- redaction ----------------------------------------------------------------------------


def test_redactor_masks_secret_in_message() -> None:
    redactor = Redactor()
    redactor.add("s3cr3t-token-value")
    entry = format_record(make_record("connecting with %s now", ("s3cr3t-token-value",)), redactor)
    assert entry["msg"] == f"connecting with {MASK} now"


def test_redactor_masks_secret_in_extra_values() -> None:
    redactor = Redactor()
    redactor.add("pa55word!")
    record = make_record(
        "x",
        None,
        url="https://user:pa55word!@host/",
        nested={"inner": "pa55word! here"},
        items=["ok", "pa55word!"],
    )
    line = JsonFormatter("svc", redactor).format(record)
    assert "pa55word!" not in line
    entry = orjson.loads(line)
    assert entry["url"] == f"https://user:{MASK}@host/"
    assert entry["nested"] == {"inner": f"{MASK} here"}
    assert entry["items"] == ["ok", MASK]


def test_redactor_masks_secret_in_traceback() -> None:
    redactor = Redactor()
    redactor.add("tok-987654321")
    try:
        raise RuntimeError("auth failed for tok-987654321")
    except RuntimeError:
        record = make_record("failed", None, level=logging.ERROR, exc_info=sys.exc_info())
    line = JsonFormatter("svc", redactor).format(record)
    assert "tok-987654321" not in line
    entry = orjson.loads(line)
    assert f"RuntimeError: auth failed for {MASK}" in entry["exc"]


@pytest.mark.parametrize(
    "key",
    ["api_token", "password", "db_password", "client_secret", "API_KEY", "apikey", "Authorization", "Token"],
)
def test_redactor_masks_values_under_secret_looking_keys(key: str) -> None:
    entry = format_record(make_record("x", None, **{key: "visible-value"}))
    assert entry[key] == MASK


def test_redactor_masks_secret_keys_inside_nested_values() -> None:
    entry = format_record(make_record("x", None, request={"symbol": "BHP", "api_token": "abc123", "n": 3}))
    assert entry["request"] == {"symbol": "BHP", "api_token": MASK, "n": 3}


def test_redactor_leaves_ordinary_fields_alone() -> None:
    entry = format_record(make_record("x", None, symbol="BHP", tokens_used=None, count=3))
    assert entry["symbol"] == "BHP"
    assert entry["count"] == 3


def test_redactor_ignores_tiny_secrets() -> None:
    redactor = Redactor()
    redactor.add("abc")
    assert redactor.text("abc and abcd") == "abc and abcd"


def test_redactor_masks_every_occurrence_and_every_secret() -> None:
    redactor = Redactor()
    redactor.add("alpha-secret")
    redactor.add("beta-secret")
    assert redactor.text("alpha-secret beta-secret alpha-secret") == f"{MASK} {MASK} {MASK}"


@pytest.mark.parametrize("order", [("short", "long"), ("long", "short")])
def test_redactor_masks_a_secret_that_contains_another(order: tuple[str, str]) -> None:
    secrets = {"short": "hunter22", "long": "hunter22-and-more"}
    redactor = Redactor()
    for name in order:
        redactor.add(secrets[name])
    masked = redactor.text("x hunter22-and-more y hunter22 z")
    assert "-and-more" not in masked
    assert "hunter22" not in masked
    assert masked == f"x {MASK} y {MASK} z"


# --- configure_logging --------------------------------------------------------------------


def test_configure_logging_writes_json_lines_to_service_log(home: TradingHome) -> None:
    redactor = configure_logging("quotes", home.logs, level="DEBUG", to_stderr=False)
    redactor.add("very-secret-key")
    logger = logging.getLogger("test.logs.file")
    logger.debug("debug line", extra={"symbol": "CBA"})
    logger.info("key is very-secret-key")
    for handler in logging.getLogger().handlers:
        handler.flush()

    path = home.logs / "quotes.log"
    lines = path.read_text(encoding="utf-8").splitlines()
    entries = [orjson.loads(line) for line in lines]
    assert [e["msg"] for e in entries] == ["debug line", f"key is {MASK}"]
    assert entries[0]["level"] == "DEBUG"
    assert entries[0]["service"] == "quotes"
    assert entries[0]["symbol"] == "CBA"
    assert "very-secret-key" not in path.read_text(encoding="utf-8")


def test_configure_logging_rotates_at_midnight_keeping_seven(home: TradingHome) -> None:
    configure_logging("paper_trading", home.logs, to_stderr=False)
    root = logging.getLogger()
    file_handlers = [h for h in root.handlers if isinstance(h, logging.handlers.TimedRotatingFileHandler)]
    assert len(file_handlers) == 1
    handler = file_handlers[0]
    assert handler.when == "MIDNIGHT"
    assert handler.backupCount == 7
    assert handler.baseFilename == str(home.logs / "paper_trading.log")
    assert isinstance(handler.formatter, JsonFormatter)
    assert handler.formatter.service == "paper_trading"
    assert root.level == logging.INFO


def test_configure_logging_keep_days_and_stderr(home: TradingHome) -> None:
    redactor = Redactor()
    returned = configure_logging("svc", home.logs, level="WARNING", keep_days=3, redactor=redactor)
    assert returned is redactor
    root = logging.getLogger()
    kinds = sorted(type(h).__name__ for h in root.handlers)
    assert kinds == ["StreamHandler", "TimedRotatingFileHandler"]
    file_handler = next(h for h in root.handlers if isinstance(h, logging.handlers.TimedRotatingFileHandler))
    assert file_handler.backupCount == 3
    assert root.level == logging.WARNING
    for handler in root.handlers:
        assert isinstance(handler.formatter, JsonFormatter)
        assert handler.formatter.redactor is redactor


def test_configure_logging_replaces_previous_handlers(home: TradingHome) -> None:
    configure_logging("one", home.logs, to_stderr=False)
    configure_logging("two", home.logs, to_stderr=False)
    root = logging.getLogger()
    assert len(root.handlers) == 1
    handler = root.handlers[0]
    assert isinstance(handler, logging.handlers.TimedRotatingFileHandler)
    assert handler.baseFilename.endswith("two.log")


def test_configure_logging_without_directory(home: TradingHome) -> None:
    configure_logging("svc", None, to_stderr=False)
    assert logging.getLogger().handlers == []
    assert list(home.logs.iterdir()) == []
