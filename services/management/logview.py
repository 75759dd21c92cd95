"""Reading the services' JSON-lines logs for ``tradingctl logs [svc] [-f] [-n N] [--level L]``.

Each service writes one JSON object per line to ``logs/<service>.log`` (see
``services.base.logs``), rotated at midnight to ``logs/<service>.log.YYYY-MM-DD``.

What counts as a record:

- Only complete lines: a last line with no newline yet is a write in progress and is skipped
  (``follow`` waits for the rest of it).
- A line that is not a JSON object with a valid ``ts`` is skipped. These files are written only
  by the JSON formatter (a service's stray stdout/stderr goes to ``logs/<service>.stderr``), so
  such a line is damage, typically a line cut short by a crash. When the next process appended its
  first record to that stub, the record is recovered from the end of the line. Skipping, rather
  than showing "RAW" lines, keeps every record's time and level real, which merging by time and
  filtering by level rely on.

Log levels: ``LEVELS`` in increasing order; a level filter keeps records at that level or above.
A record with a level name outside ``LEVELS`` passes every filter: hiding a line is worse than
showing one too many.
"""

from __future__ import annotations

import heapq
import os
import re
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from services.base.config import TradingHome

LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}

_ROTATED = re.compile(r"(?P<service>.+)\.log\.(?P<day>\d{4}-\d{2}-\d{2})")
_BLOCK = 64 * 1024
# Where a record starts when a crash left a stub of a line in front of it.
_RECORD_START = b'{"ts":'

_SERVICE_WIDTH = 13  # "paper_trading"
_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_COLORS = {
    "DEBUG": "\x1b[2m",
    "INFO": "\x1b[32m",
    "WARNING": "\x1b[33m",
    "ERROR": "\x1b[31m",
    "CRITICAL": "\x1b[1;37;41m",
}


@dataclass(frozen=True, slots=True)
class LogRecord:
    ts: datetime  # aware, UTC
    level: str
    service: str
    msg: str
    # Every other key of the line (trace, logger, exc, extra fields); trace and logger only when set.
    fields: dict[str, Any]


# -- levels -------------------------------------------------------------------------------------


def normalize_level(level: str) -> str:
    """``warn`` -> ``WARNING``; raises ``ValueError`` for a name that is not a level."""
    name = level.strip().upper()
    name = _LEVEL_ALIASES.get(name, name)
    if name not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; choose one of {', '.join(LEVELS)}")
    return name


def level_at_least(level: str, minimum: str | None) -> bool:
    """Whether a record at ``level`` passes a ``--level minimum`` filter (``None``: no filter)."""
    if minimum is None:
        return True
    name = _LEVEL_ALIASES.get(level.upper(), level.upper())
    if name not in LEVELS:
        return True
    return LEVELS.index(name) >= LEVELS.index(normalize_level(minimum))


# -- parsing ------------------------------------------------------------------------------------


def parse_line(line: bytes | str, service: str = "") -> LogRecord | None:
    """One log line as a record, or ``None`` when it is not one (see the module docstring).

    ``service`` is used when the line itself does not name one.
    """
    raw = line.encode() if isinstance(line, str) else line
    record = _parse_json(raw, service)
    if record is None:
        start = raw.rfind(_RECORD_START)
        if start > 0:
            record = _parse_json(raw[start:], service)
    return record


def _parse_json(raw: bytes, service: str) -> LogRecord | None:
    try:
        entry = orjson.loads(raw.decode("utf-8", errors="replace"))
    except orjson.JSONDecodeError:
        return None
    if not isinstance(entry, dict):
        return None
    ts = _parse_ts(entry.pop("ts", None))
    if ts is None:
        return None
    level = entry.pop("level", None)
    name = entry.pop("service", None)
    msg = entry.pop("msg", "")
    for key in ("trace", "logger"):
        if key in entry and entry[key] is None:
            del entry[key]
    return LogRecord(
        ts=ts,
        level=level.upper() if isinstance(level, str) and level else "INFO",
        service=name if isinstance(name, str) and name else service,
        msg=msg if isinstance(msg, str) else str(msg),
        fields=entry,
    )


def _parse_ts(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


# -- files --------------------------------------------------------------------------------------


def current_log(home: TradingHome, service: str) -> Path:
    return home.logs / f"{service}.log"


def rotated_logs(home: TradingHome, service: str) -> list[Path]:
    """The service's rotated files, newest first."""
    found = []
    for path in _log_dir_entries(home):
        match = _ROTATED.fullmatch(path.name)
        if match and match["service"] == service:
            found.append(path)
    return sorted(found, key=lambda p: p.name, reverse=True)


def _log_dir_entries(home: TradingHome) -> list[Path]:
    if not home.logs.is_dir():
        return []
    return [path for path in home.logs.iterdir() if path.is_file()]


def services_with_logs(home: TradingHome) -> list[str]:
    """Every service that has a current or a rotated log file, sorted."""
    names: set[str] = set()
    for path in _log_dir_entries(home):
        if path.name.endswith(".log") and path.name != ".log":
            names.add(path.name.removesuffix(".log"))
        elif match := _ROTATED.fullmatch(path.name):
            names.add(match["service"])
    return sorted(names)


def reverse_lines(file: BinaryIO, block: int = _BLOCK) -> Iterator[bytes]:
    """The complete lines of ``file``, last first, without the newline; reads blocks from the end.

    The text after the last newline (empty, or a line still being written) is not a line.
    """
    segments = _reverse_segments(file, block)
    next(segments, None)
    yield from segments


def _reverse_segments(file: BinaryIO, block: int) -> Iterator[bytes]:
    position = file.seek(0, os.SEEK_END)
    # The end of a line whose start lies in a block not read yet, as blocks in reverse file order
    # (a list, so that a very long line costs linear, not quadratic, time).
    carry: list[bytes] = []
    while position > 0:
        size = min(block, position)
        position -= size
        file.seek(position)
        chunk = file.read(size)
        pieces = chunk.split(b"\n")
        if len(pieces) == 1:
            carry.append(chunk)
            continue
        yield pieces[-1] + b"".join(reversed(carry))
        yield from reversed(pieces[1:-1])
        carry = [pieces[0]]
    yield b"".join(reversed(carry))


# -- tail ---------------------------------------------------------------------------------------


def tail(
    home: TradingHome, service: str | None, *, lines: int = 50, level: str | None = None
) -> list[LogRecord]:
    """The last ``lines`` records at ``level`` or above, oldest first.

    For one service: from its current file, going on to the rotated files (newest first) while
    fewer than ``lines`` were found. For ``None``: every service's tail, merged by time.
    """
    if lines <= 0:
        return []
    minimum = None if level is None else normalize_level(level)
    if service is not None:
        return _service_tail(home, service, lines, minimum)
    tails = [_service_tail(home, name, lines, minimum) for name in services_with_logs(home)]
    merged = list(heapq.merge(*tails, key=lambda record: record.ts))
    return merged[-lines:]


def _service_tail(home: TradingHome, service: str, lines: int, minimum: str | None) -> list[LogRecord]:
    found: list[LogRecord] = []  # newest first
    for path in (current_log(home, service), *rotated_logs(home, service)):
        found.extend(_last_records(path, service, lines - len(found), minimum))
        if len(found) >= lines:
            break
    found.reverse()
    return found


def _last_records(path: Path, service: str, count: int, minimum: str | None) -> list[LogRecord]:
    """Up to ``count`` matching records from the end of ``path``, newest first."""
    records: list[LogRecord] = []
    try:
        file = path.open("rb")
    except FileNotFoundError:  # not created yet, or rotated away just now
        return records
    with file:
        for line in reverse_lines(file):
            record = parse_line(line, service)
            if record is not None and level_at_least(record.level, minimum):
                records.append(record)
                if len(records) >= count:
                    break
    return records


# -- follow -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where following a file starts: its identity and size when ``follow`` was called."""

    device: int
    inode: int
    size: int


class _FollowedFile:
    """One service's current log, read as it grows; survives rotation and truncation.

    It keeps the file open, so after the handler renames it away the lines written just before
    the rename are still read, and the inode cannot be reused while being compared.
    """

    def __init__(self, home: TradingHome, service: str, origin: _Origin | None) -> None:
        self.home = home
        self.service = service
        self.path = current_log(home, service)
        self._origin = origin  # None: everything in the file is new
        self._file: BinaryIO | None = None
        self._partial = b""

    def poll(self) -> list[bytes]:
        """Complete lines appended since the last poll, across a rotation if there was one."""
        if self._file is None and not self._open():
            return []
        # Decided before the last read of the old file: once the rename is seen, everything
        # the handler wrote to the old file is there to read.
        replaced = self._replaced()
        lines = self._read()
        if replaced:
            self.close()
            if self._open():
                lines += self._read()
        return lines

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._partial = b""

    def _open(self) -> bool:
        origin, self._origin = self._origin, None
        file = None if origin is None else self._reopen_origin(origin)
        if file is None:
            try:
                file = self.path.open("rb")  # a new file: read from its first byte
            except FileNotFoundError:
                return False
        self._file = file
        return True

    def _reopen_origin(self, origin: _Origin) -> BinaryIO | None:
        """The file that was current when ``follow`` was called, at the size it had then.

        It may have been rotated away before the first poll; its last lines still count. The
        rotated files are listed only after the current path was tried, so a rename between the
        two cannot hide the file.
        """
        file = _open_if_same(self.path, origin)
        if file is None:
            for path in rotated_logs(self.home, self.service):
                file = _open_if_same(path, origin)
                if file is not None:
                    break
        return file

    def _read(self) -> list[bytes]:
        assert self._file is not None
        if os.fstat(self._file.fileno()).st_size < self._file.tell():  # truncated in place
            self._file.seek(0)
            self._partial = b""
        data = self._partial + self._file.read()
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return lines

    def _replaced(self) -> bool:
        assert self._file is not None
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return False  # between the rename and the new file: keep reading the old one
        mine = os.fstat(self._file.fileno())
        return (stat.st_dev, stat.st_ino) != (mine.st_dev, mine.st_ino)


def _open_if_same(path: Path, origin: _Origin) -> BinaryIO | None:
    """``path`` opened at ``origin.size`` if it is still the file ``origin`` describes."""
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return None
    stat = os.fstat(file.fileno())
    if (stat.st_dev, stat.st_ino) != (origin.device, origin.inode):
        file.close()
        return None
    file.seek(min(origin.size, stat.st_size))
    return file


def follow(
    home: TradingHome,
    service: str | None,
    *,
    level: str | None = None,
    poll_s: float = 0.25,
    stop: Callable[[], bool] | None = None,
) -> Generator[LogRecord, None, None]:
    """Records appended from now on, as they come; ``service=None`` follows every service.

    "Now" is the call, not the first ``next()``: what is written in between is not missed.
    Log files that appear later (a service started for the first time) are followed from their
    first line. Records read in the same poll from several services are yielded in time order.
    Runs until ``stop()`` returns true, or for ever; closing the iterator closes the files.
    """
    minimum = None if level is None else normalize_level(level)
    names = [service] if service is not None else services_with_logs(home)
    origins = {name: _origin_of(current_log(home, name)) for name in names}
    return _follow(home, service, origins, minimum, poll_s, stop or _never)


def _never() -> bool:
    return False


def _origin_of(path: Path) -> _Origin | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return _Origin(device=stat.st_dev, inode=stat.st_ino, size=stat.st_size)


def _follow(
    home: TradingHome,
    service: str | None,
    origins: dict[str, _Origin | None],
    minimum: str | None,
    poll_s: float,
    stop: Callable[[], bool],
) -> Generator[LogRecord, None, None]:
    followed = {name: _FollowedFile(home, name, origin) for name, origin in origins.items()}
    try:
        while not stop():
            if service is None:
                _add_new_services(home, followed)
            yield from _poll_all(followed.values(), minimum)
            time.sleep(poll_s)
    finally:
        for file in followed.values():
            file.close()


def _add_new_services(home: TradingHome, followed: dict[str, _FollowedFile]) -> None:
    for path in _log_dir_entries(home):
        name = path.name.removesuffix(".log")
        if name and name != path.name and name not in followed:
            followed[name] = _FollowedFile(home, name, None)


def _poll_all(files: Iterable[_FollowedFile], minimum: str | None) -> list[LogRecord]:
    records = []
    for file in files:
        for line in file.poll():
            record = parse_line(line, file.service)
            if record is not None and level_at_least(record.level, minimum):
                records.append(record)
    records.sort(key=lambda record: record.ts)  # stable: one service's lines keep file order
    return records


# -- formatting ---------------------------------------------------------------------------------


def format_record(record: LogRecord, *, color: bool = False) -> str:
    """``2026-11-21 14:00:01.123 WARNING  prediction    msg trace=... key=value`` in local time.

    A traceback (``exc``) follows on indented lines. ``logger`` is left out: it is in the file
    for whoever needs it, and on every line it would be noise.
    """
    local = record.ts.astimezone()
    stamp = local.strftime("%Y-%m-%d %H:%M:%S.") + f"{local.microsecond // 1000:03d}"
    level = f"{record.level:<8}"
    service = f"{record.service:<{_SERVICE_WIDTH}}"
    msg = record.msg.replace("\n", "\n    ")
    extras = "".join(f" {key}={_format_value(value)}" for key, value in _shown_fields(record.fields))
    if color:
        tint = _COLORS.get(record.level, "")
        stamp = f"{_DIM}{stamp}{_RESET}"
        level = f"{tint}{level}{_RESET}" if tint else level
        extras = f"{_DIM}{extras}{_RESET}" if extras else ""
    line = f"{stamp} {level} {service} {msg}{extras}"
    exc = record.fields.get("exc")
    if isinstance(exc, str) and exc.strip():
        line += "\n" + "\n".join("    " + part for part in exc.rstrip("\n").splitlines())
    return line


def _shown_fields(fields: dict[str, Any]) -> list[tuple[str, Any]]:
    shown = [(key, value) for key, value in fields.items() if key not in ("trace", "logger", "exc")]
    if fields.get("trace") is not None:
        shown.insert(0, ("trace", fields["trace"]))
    return shown


def _format_value(value: Any) -> str:
    if isinstance(value, str):
        plain = value and not any(c.isspace() or c in "\"'=\\" or not c.isprintable() for c in value)
        return value if plain else orjson.dumps(value).decode()
    return orjson.dumps(value, default=str).decode()
