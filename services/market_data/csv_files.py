"""Daily price files in Yahoo's export format, and the CSV-directory and clocked CSV sources over them.

The files users have vary: dates with a timezone, no ``Adj Close`` (its column is then NaN), extra
``Dividends``, ``Stock Splits`` and ``Capital Gains`` columns, ``null`` and blank rows, yfinance's
three-line multi-index header (``Price`` or ``Ticker`` row first), newest first. All of those read
the same; anything else (a missing or repeated price column, a date or number that cannot be read,
no rows, several tickers in one file) is a ``CsvFormatError`` naming the file, and the line and the
column where there is one.
"""

from __future__ import annotations

import asyncio
import bisect
import csv
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from services.asx.calendar import AsxCalendar, local_day_end
from services.market_data.bars import COLUMNS, DAILY, bar_key, make_bars
from services.market_data.sources import DataUnavailable, canonical_column

NULL_TOKENS = frozenset({"", "null", "nan", "none", "n/a", "na", "-"})
REQUIRED = ("open", "high", "low", "close")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


class CsvFormatError(ValueError):
    """A price file that cannot be read; the message names the file and where."""


def read_price_csv(path: Path) -> pd.DataFrame:
    """Read one daily price file into bars (oldest first)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            return _read_rows(path, csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CsvFormatError(f"{path}: cannot be read: {exc}") from exc


def _read_rows(path: Path, reader: Iterator[list[str]]) -> pd.DataFrame:
    line = 0

    def fail(message: str) -> CsvFormatError:
        return CsvFormatError(f"{path}:{line}: {message}")

    names = _read_header(path, reader)
    line = getattr(reader, "line_num", 0)
    date_at = next((names.index(name) for name in ("date", "datetime") if name in names), None)
    if date_at is None:
        raise CsvFormatError(f"{path}: no Date column (columns: {', '.join(names)})")
    missing = [name for name in REQUIRED if name not in names]
    if missing:
        raise CsvFormatError(f"{path}: missing column(s) {', '.join(missing)}")
    repeated = [name for name in (names[date_at], *COLUMNS) if names.count(name) > 1]
    if repeated:
        raise CsvFormatError(f"{path}: column(s) {', '.join(repeated)} appear more than once")
    wanted = [(name, names.index(name)) for name in COLUMNS if name in names]

    keys: list[str] = []
    values: dict[str, list[float]] = {name: [] for name, _ in wanted}
    for row in reader:
        line = getattr(reader, "line_num", line + 1)
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        if len(row) != len(names):
            raise fail(f"expected {len(names)} fields, found {len(row)}")
        text = row[date_at].strip()
        try:
            if not _DATE.match(text):
                raise ValueError
            date.fromisoformat(text[:10])
        except ValueError:
            raise fail(f"cannot read date {text!r}") from None
        # The date as written is the exchange's own date, whatever time or offset follows it.
        keys.append(text[:10])
        for name, at in wanted:
            cell = row[at].strip()
            if cell.lower() in NULL_TOKENS:
                values[name].append(math.nan)
                continue
            try:
                number = float(cell)
            except ValueError:
                raise fail(f"column {name}: cannot read {cell!r} as a number") from None
            if not math.isfinite(number):
                raise fail(f"column {name}: {cell!r} is not a finite number")
            values[name].append(number)
    if not keys:
        raise CsvFormatError(f"{path}: no price rows after the header")
    return make_bars(keys, values)


def _read_header(path: Path, reader: Iterator[list[str]]) -> list[str]:
    # Blank lines before the header are skipped, as they are between rows.
    header = next((row for row in reader if any(cell.strip() for cell in row)), None)
    if header is None:
        raise CsvFormatError(f"{path}: empty file, expected a header such as Date,Open,High,Low,Close,Volume")
    names = [canonical_column(cell) for cell in header]
    if names[0] not in ("price", "ticker"):
        return names
    # yfinance's multi-index export: "Price,Close,..." and "Ticker,CBA.AX,..." (in that order, or the
    # other with group_by="ticker"), then "Date,,,,".
    second, date_row = next(reader, []), next(reader, [])
    rows = {names[0]: header, canonical_column(second[0]) if second else "": second}
    if rows.keys() != {"price", "ticker"} or not date_row:
        raise CsvFormatError(f"{path}: a yfinance header needs 'Price' and 'Ticker' rows, then a 'Date' row")
    tickers = sorted({cell.strip() for cell in rows["ticker"][1:] if cell.strip()})
    if len(tickers) > 1:
        raise CsvFormatError(f"{path}: holds several tickers ({', '.join(tickers)}), expected one per file")
    return [canonical_column(date_row[0]) or "date", *(canonical_column(cell) for cell in rows["price"][1:])]


@dataclass(slots=True)
class _Cached:
    stamp: tuple[int, int]
    bars: pd.DataFrame


class CsvDirectory:
    """``<SYMBOL>.csv`` files in one directory, each read again only when it changes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cache: dict[str, _Cached] = {}

    def path_for(self, symbol: str) -> Path | None:
        exact = self.directory / f"{symbol}.csv"
        if exact.is_file():
            return exact
        wanted = f"{symbol}.csv".lower()
        try:
            names = os.listdir(self.directory)
        except OSError:
            return None
        return next((self.directory / name for name in names if name.lower() == wanted), None)

    def bars(self, symbol: str, source: str) -> tuple[pd.DataFrame, bool]:
        """The file's bars, and whether they were read anew (the file changed since the last read)."""
        path = self.path_for(symbol)
        if path is None:
            raise DataUnavailable(
                f"no price file {symbol}.csv in {self.directory}", source=source, symbol=symbol
            )
        try:
            info = path.stat()
        except OSError as exc:
            raise DataUnavailable(f"{path}: {exc.strerror}", source=source, symbol=symbol) from exc
        stamp = (info.st_mtime_ns, info.st_size)
        cached = self._cache.get(symbol)
        if cached is not None and cached.stamp == stamp:
            return cached.bars, False
        try:
            bars = read_price_csv(path)
        except CsvFormatError as exc:
            raise DataUnavailable(str(exc), source=source, symbol=symbol) from exc
        self._cache[symbol] = _Cached(stamp, bars)
        return bars, True


def _check_daily(source: str, symbol: str, interval: str) -> None:
    if interval != DAILY:
        raise DataUnavailable(
            f"the {source} source has daily bars only, not {interval}", source=source, symbol=symbol
        )


def _between(bars: pd.DataFrame, start: date | datetime, end: datetime) -> pd.DataFrame:
    first, last = bar_key(start, DAILY), bar_key(end, DAILY)
    keys = bars.index
    lo = int(keys.searchsorted(first, side="left"))
    hi = int(keys.searchsorted(last, side="right"))
    return bars.iloc[lo:hi]


class CsvSource:
    """Daily bars from a directory of price files, as they are on disk."""

    name = "csv"
    intervals = frozenset({DAILY})
    local = True

    def __init__(self, directory: Path) -> None:
        self.files = CsvDirectory(directory)

    async def fetch(self, symbol: str, interval: str, start: date | datetime, end: datetime) -> pd.DataFrame:
        _check_daily(self.name, symbol, interval)
        # Reading a changed file takes tens of milliseconds: not on the event loop.
        bars, _ = await asyncio.to_thread(self.files.bars, symbol, self.name)
        return _between(bars, start, end)

    def close(self) -> None:
        pass


@dataclass(slots=True)
class _Timeline:
    bars: pd.DataFrame
    open_known: list[datetime]  # when each bar's open became known
    all_known: list[datetime]  # when its high, low, close and volume did


class ClockedCsvSource:
    """A price directory seen through the clock: only what was known at ``now()`` is visible.

    A session's bar shows its open from the session's open, and its high, low, close and volume
    only from the session's close (early closes included). A row dated on a day without a session
    (a bad row in the file) becomes visible at the end of that day in Sydney.
    """

    name = "clocked_csv"
    intervals = frozenset({DAILY})
    local = True

    def __init__(self, directory: Path, calendar: AsxCalendar, now: Callable[[], datetime]) -> None:
        self.files = CsvDirectory(directory)
        self.calendar = calendar
        self.now = now
        self._timelines: dict[str, _Timeline] = {}

    def _timeline(self, symbol: str) -> _Timeline:
        bars, fresh = self.files.bars(symbol, self.name)
        timeline = self._timelines.get(symbol)
        if timeline is None or fresh:
            opens, closes = [], []
            for key in bars.index:
                day = date.fromisoformat(key)
                in_range = self.calendar.first <= day <= self.calendar.last
                session = self.calendar.session(day) if in_range else None
                if session is None:
                    opens.append(local_day_end(day))
                    closes.append(local_day_end(day))
                else:
                    opens.append(session.open)
                    closes.append(session.close)
            timeline = self._timelines[symbol] = _Timeline(bars, opens, closes)
        return timeline

    def visible(self, symbol: str, now: datetime) -> pd.DataFrame:
        timeline = self._timeline(symbol)
        known = bisect.bisect_right(timeline.all_known, now)
        bars = timeline.bars.iloc[:known]
        if known < len(timeline.bars) and timeline.open_known[known] <= now:
            partial = timeline.bars.iloc[known : known + 1].copy()
            partial.loc[:, [name for name in COLUMNS if name != "open"]] = np.nan
            bars = pd.concat([bars, partial])
        return bars

    async def fetch(self, symbol: str, interval: str, start: date | datetime, end: datetime) -> pd.DataFrame:
        _check_daily(self.name, symbol, interval)
        now = self.now()
        # A changed file is read and its timeline built off the event loop.
        visible = await asyncio.to_thread(self.visible, symbol, min(now, end))
        return _between(visible, start, end)

    def close(self) -> None:
        pass
