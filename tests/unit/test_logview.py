"""Reading JSON-lines logs: tail (backwards, across rotation, merged), follow, formatting."""

from __future__ import annotations

import contextlib
import io
import logging
import logging.handlers
import random
import re
import threading
import time
from collections.abc import Callable, Generator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.base.config import TradingHome
from services.base.logs import configure_logging, trace_var
from services.management.logview import (
    LEVELS,
    LogRecord,
    follow,
    format_record,
    level_at_least,
    normalize_level,
    parse_line,
    reverse_lines,
    services_with_logs,
    tail,
)

T0 = datetime(2026, 11, 21, 3, 0, 0, tzinfo=UTC)


pytestmark = pytest.mark.usefixtures("restore_root_logger")


def entry(
    seconds: float, msg: str, *, service: str = "prediction", level: str = "INFO", **extra: Any
) -> bytes:
    ts = (T0 + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")
    fields = {"ts": ts, "level": level, "service": service, "msg": msg, "trace": None, "logger": "x"}
    return orjson.dumps({**fields, **extra}) + b"\n"


def write(path: Path, *lines: bytes, mode: str = "ab") -> None:
    with path.open(mode) as file:
        file.write(b"".join(lines))


def msgs(records: list[LogRecord]) -> list[str]:
    return [record.msg for record in records]


def collect(records: Iterator[LogRecord], count: int) -> list[LogRecord]:
    """The first ``count`` records (fewer if the follower's stop callback ends it first)."""
    got: list[LogRecord] = []
    for record in records:
        got.append(record)
        if len(got) == count:
            break
    return got


def deadline(seconds: float = 10.0) -> Callable[[], bool]:
    end = time.monotonic() + seconds
    return lambda: time.monotonic() > end


def in_thread(work: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=work, name="logview-test-writer")
    thread.start()
    return thread


def file_handler() -> logging.handlers.TimedRotatingFileHandler:
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, logging.handlers.TimedRotatingFileHandler)
    return handler


# -- parsing and levels ---------------------------------------------------------------------------


def test_records_written_by_the_real_formatter(home: TradingHome) -> None:
    configure_logging("prediction", home.logs, to_stderr=False, level="DEBUG")
    log = logging.getLogger("services.prediction.model")
    log.debug("warming up")
    token = trace_var.set("trace-1")
    try:
        log.warning("price stale for %s", "CBA.AX", extra={"symbol": "CBA.AX", "age_s": 12.5})
    finally:
        trace_var.reset(token)
    try:
        raise RuntimeError("model file missing")
    except RuntimeError:
        log.exception("cannot load model")

    records = tail(home, "prediction")

    assert msgs(records) == ["warming up", "price stale for CBA.AX", "cannot load model"]
    debug, warning, error = records
    assert debug.level == "DEBUG"
    assert debug.service == "prediction"
    assert debug.fields == {"logger": "services.prediction.model"}  # trace None is dropped
    assert warning.fields == {
        "trace": "trace-1",
        "logger": "services.prediction.model",
        "symbol": "CBA.AX",
        "age_s": 12.5,
    }
    assert warning.ts.tzinfo is not None
    assert abs((datetime.now(UTC) - warning.ts).total_seconds()) < 60
    assert error.level == "ERROR"
    assert "RuntimeError: model file missing" in error.fields["exc"]


def test_levels_and_filters() -> None:
    assert LEVELS == ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    assert normalize_level("warn") == "WARNING"
    assert normalize_level(" error ") == "ERROR"
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        normalize_level("loud")
    assert level_at_least("ERROR", "WARNING")
    assert level_at_least("WARNING", "WARNING")
    assert not level_at_least("INFO", "WARNING")
    assert level_at_least("DEBUG", None)
    assert level_at_least("Level 5", "CRITICAL")  # unknown levels are never hidden


def test_non_records_are_skipped_and_a_stub_before_a_record_is_recovered() -> None:
    assert parse_line(b"garbage") is None
    assert parse_line(b"[1, 2]") is None
    assert parse_line(b'{"level": "INFO", "msg": "no time"}') is None
    assert parse_line(b'{"ts": "yesterday", "msg": "bad time"}') is None
    assert parse_line(b"\xff\xfe{") is None
    stub = entry(1, "cut short by a crash")[:30]
    record = parse_line(stub + entry(2, "next process").rstrip(b"\n"))
    assert record is not None
    assert record.msg == "next process"
    naive = parse_line('{"ts": "2026-11-21T03:00:00", "msg": "m"}', "sentiment")
    assert naive is not None
    assert naive.ts == T0
    assert naive.service == "sentiment"  # from the file when the line names none
    assert naive.level == "INFO"


# -- tail -------------------------------------------------------------------------------------------


def test_tail_last_n_at_a_level(home: TradingHome) -> None:
    levels = ["DEBUG", "INFO", "WARNING", "ERROR"]
    write(
        home.logs / "prediction.log",
        *(entry(i, f"m{i}", level=levels[i % 4]) for i in range(100)),
    )
    assert msgs(tail(home, "prediction", lines=3)) == ["m97", "m98", "m99"]
    assert msgs(tail(home, "prediction", lines=5, level="warning")) == ["m91", "m94", "m95", "m98", "m99"]
    assert msgs(tail(home, "prediction", lines=2, level="ERROR")) == ["m95", "m99"]
    assert len(tail(home, "prediction", lines=1000)) == 100
    assert tail(home, "prediction", lines=0) == []
    assert tail(home, "nosuch") == []
    with pytest.raises(ValueError, match="unknown log level"):
        tail(home, "prediction", level="verbose")


def test_tail_of_all_services_is_merged_by_time(home: TradingHome) -> None:
    write(home.logs / "market_data.log", *(entry(s, f"md{s}", service="market_data") for s in (1, 3, 5, 7)))
    write(home.logs / "sentiment.log", *(entry(s, f"se{s}", service="sentiment") for s in (2, 4, 6, 8)))
    write(home.logs / "empty.log")

    records = tail(home, None, lines=5)

    assert msgs(records) == ["se4", "md5", "se6", "md7", "se8"]
    assert [r.ts for r in records] == sorted(r.ts for r in records)
    assert msgs(tail(home, None, lines=3, level="INFO")) == ["se6", "md7", "se8"]


def test_tail_falls_back_to_rotated_files(home: TradingHome) -> None:
    write(home.logs / "ml_model.log.2026-11-19", *(entry(i, f"old{i}", service="ml_model") for i in range(5)))
    write(
        home.logs / "ml_model.log.2026-11-20", *(entry(10 + i, f"y{i}", service="ml_model") for i in range(5))
    )
    write(home.logs / "ml_model.log", *(entry(20 + i, f"t{i}", service="ml_model") for i in range(3)))
    write(home.logs / "ml_model_extra.log.2026-11-20", entry(30, "another service", service="ml_model_extra"))

    assert msgs(tail(home, "ml_model", lines=2)) == ["t1", "t2"]
    assert msgs(tail(home, "ml_model", lines=5)) == ["y3", "y4", "t0", "t1", "t2"]
    assert msgs(tail(home, "ml_model", lines=10)) == [
        "old3",
        "old4",
        *(f"y{i}" for i in range(5)),
        "t0",
        "t1",
        "t2",
    ]
    (home.logs / "ml_model.log").unlink()  # rotated away, new file not written yet
    assert msgs(tail(home, "ml_model", lines=1)) == ["y4"]


def test_tail_after_a_real_rollover(home: TradingHome) -> None:
    configure_logging("scheduler", home.logs, to_stderr=False)
    log = logging.getLogger("services.scheduler")
    log.info("yesterday 1")
    log.info("yesterday 2")
    file_handler().doRollover()
    log.info("today 1")
    assert len(list(home.logs.glob("scheduler.log.*"))) == 1
    assert msgs(tail(home, "scheduler", lines=2)) == ["yesterday 2", "today 1"]
    assert services_with_logs(home) == ["scheduler"]


def test_garbage_and_a_partial_last_line_are_tolerated(home: TradingHome) -> None:
    write(
        home.logs / "paper_trading.log",
        entry(1, "first", service="paper_trading"),
        b"Traceback (most recent call last):\n",
        b"\n",
        b"\xff\xfe not utf-8\n",
        b"[1, 2, 3]\n",
        b'{"msg": "no timestamp"}\n',
        entry(2, "half a line from a crash")[:25] + entry(3, "recovered", service="paper_trading"),
        entry(4, "last", service="paper_trading"),
        entry(5, "being written", service="paper_trading")[:-1],  # no newline yet
    )
    assert msgs(tail(home, "paper_trading")) == ["first", "recovered", "last"]
    assert msgs(tail(home, None)) == ["first", "recovered", "last"]


def test_tail_of_a_big_file_reads_from_the_end(home: TradingHome) -> None:
    count = 200_000
    line = entry(0, "filler").replace(b"03:00:00.000", b"{stamp}")
    body = b"".join(
        line.replace(b"{stamp}", f"{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}.000".encode())
        for i in range(count)
    )
    write(
        home.logs / "market_data.log", body, entry(99_999, "the error", level="ERROR"), entry(99_999, "end")
    )
    big = home.logs / "market_data.log"
    assert big.stat().st_size > 20_000_000

    records = tail(home, "market_data", lines=50)

    assert len(records) == 50
    assert msgs(records)[-2:] == ["the error", "end"]
    assert msgs(tail(home, "market_data", lines=1, level="ERROR")) == ["the error"]


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64])
def test_reverse_lines_across_block_boundaries(block: int) -> None:
    generator = random.Random(block)
    lines = [
        "".join(generator.choice("ab\n") for _ in range(generator.randint(0, 40))).encode() for _ in range(30)
    ]
    text = b"".join(lines) + b"unterminated"
    expected = text.split(b"\n")[:-1]
    assert list(reverse_lines(io.BytesIO(text), block)) == expected[::-1]
    assert list(reverse_lines(io.BytesIO(b"no newline at all"), block)) == []
    assert list(reverse_lines(io.BytesIO(b""), block)) == []
    long_line = b"x" * 1000 + b"\n"
    assert list(reverse_lines(io.BytesIO(b"a\n" + long_line), block)) == [b"x" * 1000, b"a"]


def test_services_with_logs(home: TradingHome) -> None:
    for name in ("market_data.log", "sentiment.log.2026-11-20", "manager.stderr", "notes.log.old"):
        write(home.logs / name)
    (home.logs / "directory.log").mkdir()
    assert services_with_logs(home) == ["market_data", "sentiment"]


# -- follow -----------------------------------------------------------------------------------------


def test_follow_yields_appended_records_only(home: TradingHome) -> None:
    path = home.logs / "prediction.log"
    write(path, entry(1, "before"))
    records = follow(home, "prediction", poll_s=0.01, stop=deadline())
    write(path, entry(2, "written before the first poll"))

    def append() -> None:
        time.sleep(0.05)
        half = entry(3, "in two writes", level="ERROR")
        write(path, half[:20])
        time.sleep(0.05)
        write(path, half[20:], entry(4, "debug", level="DEBUG"), entry(5, "after"))

    thread = in_thread(append)
    with contextlib.closing(records):
        got = collect(records, 4)
    thread.join()
    assert msgs(got) == ["written before the first poll", "in two writes", "debug", "after"]


def test_follow_with_a_level_filter(home: TradingHome) -> None:
    path = home.logs / "prediction.log"
    write(path, entry(1, "old error", level="ERROR"))
    records = follow(home, "prediction", level="warning", poll_s=0.01, stop=deadline())
    thread = in_thread(
        lambda: write(
            path,
            entry(2, "info", level="INFO"),
            entry(3, "warning", level="WARNING"),
            entry(4, "critical", level="CRITICAL"),
        )
    )
    with contextlib.closing(records):
        got = collect(records, 2)
    thread.join()
    assert msgs(got) == ["warning", "critical"]


def test_follow_all_services_picks_up_new_files(home: TradingHome) -> None:
    write(home.logs / "market_data.log", entry(1, "old md", service="market_data"))
    records = follow(home, None, poll_s=0.01, stop=deadline())

    def append() -> None:
        write(home.logs / "market_data.log", entry(2, "md", service="market_data"))
        time.sleep(0.05)
        # A service that never ran before: its first lines are all new.
        write(home.logs / "prediction.log", entry(3, "p1"), entry(4, "p2"))

    thread = in_thread(append)
    with contextlib.closing(records):
        got = collect(records, 3)
    thread.join()
    assert msgs(got) == ["md", "p1", "p2"]
    assert [r.service for r in got] == ["market_data", "prediction", "prediction"]


def test_follow_a_service_whose_file_does_not_exist_yet(home: TradingHome) -> None:
    records = follow(home, "scheduler", poll_s=0.01, stop=deadline())
    thread = in_thread(
        lambda: write(home.logs / "scheduler.log", entry(1, "first ever", service="scheduler"))
    )
    with contextlib.closing(records):
        got = collect(records, 1)
    thread.join()
    assert msgs(got) == ["first ever"]


def test_follow_across_a_real_rollover(home: TradingHome) -> None:
    configure_logging("scheduler", home.logs, to_stderr=False)
    log = logging.getLogger("services.scheduler")
    log.info("before following")
    records = follow(home, "scheduler", poll_s=0.01, stop=deadline())

    def run() -> None:
        log.info("a1")
        time.sleep(0.05)
        log.info("a2")
        file_handler().doRollover()
        log.info("b1")
        time.sleep(0.05)
        log.info("b2")

    thread = in_thread(run)
    with contextlib.closing(records):
        got = collect(records, 4)
    thread.join()
    assert msgs(got) == ["a1", "a2", "b1", "b2"]
    assert len(list(home.logs.glob("scheduler.log.*"))) == 1


def test_follow_across_rename_with_a_gap_before_the_new_file(home: TradingHome) -> None:
    path = home.logs / "sentiment.log"
    write(path, entry(0, "old"))
    records = follow(home, "sentiment", poll_s=0.01, stop=deadline())

    def rotate() -> None:
        write(path, entry(1, "last of the day"))
        path.rename(home.logs / "sentiment.log.2026-11-20")
        time.sleep(0.05)  # the follower polls while there is no current file
        write(path, entry(2, "first of the day"))

    thread = in_thread(rotate)
    with contextlib.closing(records):
        got = collect(records, 2)
    thread.join()
    assert msgs(got) == ["last of the day", "first of the day"]


def test_follow_after_truncation(home: TradingHome) -> None:
    path = home.logs / "sentiment.log"
    write(path, *(entry(i, f"old{i}") for i in range(20)))
    records = follow(home, "sentiment", poll_s=0.01, stop=deadline())
    with contextlib.closing(records):
        write(path, entry(30, "appended"))
        assert next(records).msg == "appended"
        write(path, entry(40, "after truncation"), mode="wb")
        assert next(records).msg == "after truncation"


def test_follow_from_the_call_even_if_rotated_before_the_first_poll(home: TradingHome) -> None:
    path = home.logs / "sentiment.log"
    write(path, entry(0, "old"))
    records = follow(home, "sentiment", poll_s=0.01, stop=deadline())
    write(path, entry(1, "last of the day"))
    path.rename(home.logs / "sentiment.log.2026-11-20")
    write(path, entry(2, "first of the day"))
    with contextlib.closing(records):
        got = collect(records, 2)
    assert msgs(got) == ["last of the day", "first of the day"]


def test_follow_stops_when_told(home: TradingHome) -> None:
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    records: Generator[LogRecord, None, None] = follow(home, None, poll_s=0.001, stop=stop)
    assert list(records) == []
    assert len(calls) == 4


# -- formatting -------------------------------------------------------------------------------------


def test_format_record() -> None:
    ts = datetime(2026, 11, 21, 3, 0, 1, 123456, tzinfo=UTC)
    record = LogRecord(
        ts=ts,
        level="WARNING",
        service="prediction",
        msg="price stale",
        fields={
            "logger": "services.x",
            "symbol": "CBA.AX",
            "trace": "abc",
            "age_s": 12.5,
            "note": "two words",
        },
    )
    local = ts.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    expected = (
        f'{local}.123 WARNING  prediction    price stale trace=abc symbol=CBA.AX age_s=12.5 note="two words"'
    )
    assert format_record(record) == expected

    colored = format_record(record, color=True)
    assert "\x1b[33mWARNING" in colored
    assert re.sub(r"\x1b\[[0-9;]*m", "", colored) == expected


def test_format_record_with_a_traceback_and_odd_values() -> None:
    record = LogRecord(
        ts=T0,
        level="ERROR",
        service="paper_trading",
        msg="order failed",
        fields={
            "exc": 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: no\n',
            "order": {"id": 7},
            "empty": "",
            "nothing": None,
        },
    )
    first, *rest = format_record(record).split("\n")
    assert first.endswith('paper_trading order failed order={"id":7} empty="" nothing=null')
    assert rest == [
        "    Traceback (most recent call last):",
        '      File "x.py", line 1',
        "    ValueError: no",
    ]
