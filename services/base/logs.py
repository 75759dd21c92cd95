"""JSON-lines logging: ``ts, level, service, msg, trace`` plus any ``extra`` fields.

Nothing is configured at import time; ``configure_logging`` is called once by the process runner.
The trace id of the request being handled travels in a context variable, so every line logged
while serving a call carries it without being passed around.
"""

from __future__ import annotations

import contextvars
import logging
import logging.handlers
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

trace_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace", default=None)

# Keys whose values are masked wherever they appear in a log record's extra fields.
SECRET_KEY_PARTS = ("token", "password", "secret", "api_key", "apikey", "authorization")
MASK = "***"

# Attributes every LogRecord has; anything else on a record came in through ``extra``.
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class Redactor:
    """Masks known secret values, and values under secret-looking keys."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        # Longest first, so a secret that contains another is masked whole, not in part.
        self._ordered: tuple[str, ...] = ()

    def add(self, value: str) -> None:
        if len(value) >= 4 and value not in self._values:  # a tiny "secret" would mask ordinary words
            self._values.add(value)
            self._ordered = tuple(sorted(self._values, key=len, reverse=True))

    def text(self, text: str) -> str:
        for value in self._ordered:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def value(self, key: str, value: Any) -> Any:
        if any(part in key.lower() for part in SECRET_KEY_PARTS):
            return MASK
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(key, v) for v in value]
        return value


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, redactor: Redactor | None = None, *, synthetic: bool = False) -> None:
        super().__init__()
        self.service = service
        self.synthetic = synthetic
        self.redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "msg": self.redactor.text(record.getMessage()),
            "trace": getattr(record, "trace", None) or trace_var.get(),
            "logger": record.name,
        }
        if self.synthetic:
            entry["synthetic"] = True
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and key not in entry:
                entry[key] = self.redactor.value(key, value)
        if record.exc_info:
            entry["exc"] = self.redactor.text("".join(traceback.format_exception(*record.exc_info)))
        return orjson.dumps(entry, default=str).decode()


class RootLogRedaction:
    """A ``SecretSink`` for secrets loaded after logging is set up: hands each one to the redactor
    of every JSON handler on the root logger."""

    def add(self, value: str) -> None:
        for handler in logging.getLogger().handlers:
            if isinstance(handler.formatter, JsonFormatter):
                handler.formatter.redactor.add(value)


def configure_logging(
    service: str,
    logs_dir: Path | None,
    *,
    level: str = "INFO",
    keep_days: int = 7,
    to_stderr: bool = True,
    redactor: Redactor | None = None,
    synthetic: bool = False,
) -> Redactor:
    """Send the root logger to ``logs/<service>.log`` (rotated at midnight) and stderr.
    ``synthetic``: every line says so (a demo on generated prices)."""
    redactor = redactor or Redactor()
    formatter = JsonFormatter(service, redactor, synthetic=synthetic)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    if logs_dir is not None:
        logs_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.TimedRotatingFileHandler(
            logs_dir / f"{service}.log", when="midnight", backupCount=keep_days, encoding="utf-8"
        )
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    if to_stderr:
        stream_handler = logging.StreamHandler(sys.stderr)
        stream_handler.setFormatter(formatter)
        root.addHandler(stream_handler)
    root.setLevel(level)
    return redactor
