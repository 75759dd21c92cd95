"""Price sources: reading Yahoo-format CSV files, the CSV and clocked CSV sources, Yahoo through its seam."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from curl_cffi.requests import exceptions as curl_exceptions
from yfinance.exceptions import YFRateLimitError, YFTickerMissingError

from services.asx.calendar import SYDNEY, AsxCalendar
from services.base.config import TradingHome, load_settings
from services.base.errors import ConfigError, ErrorCode, code_for
from services.market_data.bars import COLUMNS
from services.market_data.config import MarketDataConfig, YahooConfig
from services.market_data.csv_files import (
    ClockedCsvSource,
    CsvDirectory,
    CsvFormatError,
    CsvSource,
    read_price_csv,
)
from services.market_data.sources import DataUnavailable
from services.market_data.yahoo import MAX_LOOKBACK, YahooSource, is_temporary

PRICES = Path(__file__).resolve().parents[3] / "shared" / "data" / "prices"
HEADER = "Date,Open,High,Low,Close,Adj Close,Volume\n"
YF_COLUMNS = ["Open", "High", "Low", "Close", "Adj Close", "Volume", "Dividends", "Stock Splits"]


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def shared_prices() -> Path:
    if not (PRICES / "CBA.AX.csv").is_file():
        pytest.skip(f"shared price data not found in {PRICES}")
    return PRICES


def row(bars: pd.DataFrame, key: str) -> dict[str, float]:
    return {name: float(bars.at[key, name]) for name in COLUMNS}


def all_nan(values: dict[str, float]) -> bool:
    return all(math.isnan(v) for v in values.values())


# read_price_csv -----------------------------------------------------------------------------------


def test_read_standard_yahoo_export(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "CBA.AX.csv",
        HEADER
        + "2024-01-02,100.5,102.0,99.75,101.25,95.1,1200300\n"
        + "2024-01-03,101.0,101.5,100.0,100.25,94.2,980000\n",
    )
    bars = read_price_csv(path)
    assert list(bars.index) == ["2024-01-02", "2024-01-03"]
    assert bars.index.name == "time"
    assert list(bars.columns) == list(COLUMNS)
    assert row(bars, "2024-01-02") == {
        "open": 100.5,
        "high": 102.0,
        "low": 99.75,
        "close": 101.25,
        "adj_close": 95.1,
        "volume": 1200300.0,
    }
    assert bars.at["2024-01-03", "close"] == 100.25


def test_read_dates_with_timezone_keep_the_written_date(tmp_path: Path) -> None:
    # Converting 2024-01-02 00:00+11:00 to UTC would give 2024-01-01; the key must not move.
    path = write(
        tmp_path,
        "CBA.AX.csv",
        HEADER
        + "2024-01-02 00:00:00+11:00,1,2,0.5,1.5,1.4,100\n"
        + "2024-01-03 00:00:00+11:00,2,3,1.5,2.5,2.4,200\n",
    )
    bars = read_price_csv(path)
    assert list(bars.index) == ["2024-01-02", "2024-01-03"]
    assert bars.at["2024-01-03", "close"] == 2.5


def test_read_without_adj_close_gives_nan_adj_close(tmp_path: Path) -> None:
    path = write(tmp_path, "X.csv", "Date,Open,High,Low,Close,Volume\n2024-01-02,1,2,0.5,1.5,100\n")
    bars = read_price_csv(path)
    values = row(bars, "2024-01-02")
    assert math.isnan(values.pop("adj_close"))
    assert values == {"open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 100.0}


def test_read_ignores_dividends_and_stock_splits(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "X.csv",
        "Date,Open,High,Low,Close,Adj Close,Volume,Dividends,Stock Splits\n"
        "2024-02-14,110,112,109,111,105,3000000,2.25,0.0\n"
        "2024-02-15,111,113,110,112,106,2000000,0.0,2.0\n",
    )
    bars = read_price_csv(path)
    assert list(bars.columns) == list(COLUMNS)
    assert row(bars, "2024-02-14") == {
        "open": 110.0,
        "high": 112.0,
        "low": 109.0,
        "close": 111.0,
        "adj_close": 105.0,
        "volume": 3000000.0,
    }
    assert row(bars, "2024-02-15")["volume"] == 2000000.0


def test_read_keeps_null_rows_as_all_nan_bars(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "^AXJO.csv",
        HEADER
        + "1992-12-24,1,2,0.5,1.5,1.5,0\n"
        + "1992-12-25,null,null,null,null,null,null\n"
        + "1992-12-29,2,3,1.5,2.5,2.5,0\n",
    )
    bars = read_price_csv(path)
    assert list(bars.index) == ["1992-12-24", "1992-12-25", "1992-12-29"]
    assert all_nan(row(bars, "1992-12-25"))
    assert bars.at["1992-12-29", "close"] == 2.5


def test_read_yfinance_multi_index_header_puts_values_in_their_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "CBA.AX.csv",
        "Price,Close,High,Low,Open,Volume\n"
        "Ticker,CBA.AX,CBA.AX,CBA.AX,CBA.AX,CBA.AX\n"
        "Date,,,,,\n"
        "2024-01-02,101.25,102.0,99.75,100.5,1200300\n"
        "2024-01-03,100.25,101.5,100.0,101.0,980000\n",
    )
    bars = read_price_csv(path)
    assert list(bars.index) == ["2024-01-02", "2024-01-03"]
    values = row(bars, "2024-01-02")
    assert math.isnan(values.pop("adj_close"))
    assert values == {"open": 100.5, "high": 102.0, "low": 99.75, "close": 101.25, "volume": 1200300.0}
    assert bars.at["2024-01-03", "open"] == 101.0


def test_read_newest_first_comes_out_oldest_first(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "X.csv",
        HEADER + "2024-01-04,3,3,3,3,3,3\n2024-01-03,2,2,2,2,2,2\n2024-01-02,1,1,1,1,1,1\n",
    )
    bars = read_price_csv(path)
    assert list(bars.index) == ["2024-01-02", "2024-01-03", "2024-01-04"]
    assert list(bars["close"]) == [1.0, 2.0, 3.0]


def test_read_duplicate_dates_keep_the_last_row(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "X.csv",
        HEADER + "2024-01-02,1,1,1,1,1,1\n2024-01-03,2,2,2,2,2,2\n2024-01-02,9,9,9,9,9,9\n",
    )
    bars = read_price_csv(path)
    assert list(bars.index) == ["2024-01-02", "2024-01-03"]
    assert bars.at["2024-01-02", "close"] == 9.0


def test_read_missing_close_column_names_file_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "X.csv", "Date,Open,High,Low,Adj Close,Volume\n2024-01-02,1,2,0.5,1.4,100\n")
    with pytest.raises(CsvFormatError) as caught:
        read_price_csv(path)
    message = str(caught.value)
    assert str(path) in message
    assert "missing column(s) close" in message


def test_read_unreadable_date_names_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "X.csv",
        HEADER + "2024-01-02,1,2,0.5,1.5,1.4,100\n2024-13-45,1,2,0.5,1.5,1.4,100\n",
    )
    with pytest.raises(CsvFormatError) as caught:
        read_price_csv(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:3: ")
    assert "'2024-13-45'" in message


def test_read_non_numeric_price_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "X.csv",
        HEADER
        + "2024-01-02,1,2,0.5,1.5,1.4,100\n"
        + "2024-01-03,1,2,0.5,1.5,1.4,100\n"
        + "2024-01-04,1,abc,0.5,1.5,1.4,100\n",
    )
    with pytest.raises(CsvFormatError) as caught:
        read_price_csv(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:4: ")
    assert "column high" in message
    assert "'abc'" in message


def test_read_multi_index_error_counts_the_header_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "X.csv",
        "Price,Close,High,Low,Open,Volume\nTicker,X,X,X,X,X\nDate,,,,,\n"
        "2024-01-02,1,2,0.5,1,100\n2024-01-03,abc,2,0.5,1,100\n",
    )
    with pytest.raises(CsvFormatError, match=r":5: column close: cannot read 'abc'"):
        read_price_csv(path)


def test_read_error_line_number_counts_blank_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "X.csv",
        HEADER + "2024-01-02,1,2,0.5,1.5,1.4,100\n\n2024-01-03,1,2,0.5,abc,1.4,100\n",
    )
    with pytest.raises(CsvFormatError) as caught:
        read_price_csv(path)
    # 'abc' is on the file's line 4 (header, a row, a blank line, then it).
    assert str(caught.value).startswith(f"{path}:4: ")


def test_read_short_row_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "X.csv", HEADER + "2024-01-02,1,2,0.5,1.5,1.4,100\n2024-01-03,1,2\n")
    with pytest.raises(CsvFormatError, match=r":3: expected 7 fields, found 3"):
        read_price_csv(path)


def test_read_empty_file_is_a_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path, "X.csv", "")
    with pytest.raises(CsvFormatError) as caught:
        read_price_csv(path)
    assert str(caught.value).startswith(f"{path}: empty file")


def test_read_real_anz_file() -> None:
    bars = read_price_csv(shared_prices() / "ANZ.AX.csv")
    assert len(bars) == 5754  # one per data line after the header
    assert bars.index.is_monotonic_increasing
    assert bars.index[0] == "2000-01-03"
    assert bars.at["2000-01-03", "close"] == pytest.approx(10.586787223815918)
    assert all_nan(row(bars, "2000-11-12"))
    assert bars.at["2000-11-13", "close"] == pytest.approx(14.006163597106934)


# CsvDirectory and CsvSource -----------------------------------------------------------------------


def test_missing_file_is_data_unavailable_naming_the_file(tmp_path: Path) -> None:
    directory = CsvDirectory(tmp_path)
    with pytest.raises(DataUnavailable) as caught:
        directory.bars("XYZ.AX", "csv")
    assert code_for(caught.value) == ErrorCode.DEPENDENCY_UNAVAILABLE == -32000
    assert "XYZ.AX.csv" in caught.value.message
    assert str(tmp_path) in caught.value.message
    assert caught.value.data == {"source": "csv", "symbol": "XYZ.AX"}


def test_file_name_matches_case_insensitively(tmp_path: Path) -> None:
    write(tmp_path, "cba.ax.CSV", HEADER + "2024-01-02,1,2,0.5,1.5,1.4,100\n")
    directory = CsvDirectory(tmp_path)
    assert directory.path_for("CBA.AX") == tmp_path / "cba.ax.CSV"
    bars, _ = directory.bars("CBA.AX", "csv")
    assert bars.at["2024-01-02", "close"] == 1.5


def test_bad_file_is_data_unavailable_with_the_line(tmp_path: Path) -> None:
    write(tmp_path, "X.csv", HEADER + "2024-13-45,1,2,0.5,1.5,1.4,100\n")
    with pytest.raises(DataUnavailable, match=r"X\.csv:2: cannot read date"):
        CsvDirectory(tmp_path).bars("X", "csv")


def test_file_is_read_again_only_after_it_changes(tmp_path: Path) -> None:
    write(tmp_path, "X.csv", HEADER + "2024-01-02,1,2,0.5,1.5,1.4,100\n")
    directory = CsvDirectory(tmp_path)
    first, fresh = directory.bars("X", "csv")
    assert fresh
    again, fresh = directory.bars("X", "csv")
    assert not fresh
    assert again is first

    write(tmp_path, "X.csv", HEADER + "2024-01-02,1,2,0.5,7.25,1.4,100\n2024-01-03,1,2,0.5,8.5,1.4,100\n")
    # The size differs, so the change is seen even if the clock did not tick between the two writes.
    changed, fresh = directory.bars("X", "csv")
    assert fresh
    assert list(changed["close"]) == [7.25, 8.5]


async def test_csv_fetch_returns_bars_between_start_and_end_inclusive(tmp_path: Path) -> None:
    lines = [f"2024-01-0{d},{d},{d},{d},{d},{d},{d}\n" for d in range(2, 9)]
    write(tmp_path, "X.csv", HEADER + "".join(lines))
    source = CsvSource(tmp_path)
    # 2024-01-05 20:00 UTC is already 2024-01-06 07:00 in Sydney: the end is a Sydney date.
    bars = await source.fetch("X", "1d", date(2024, 1, 3), datetime(2024, 1, 5, 20, 0, tzinfo=UTC))
    assert list(bars.index) == ["2024-01-03", "2024-01-04", "2024-01-05", "2024-01-06"]
    bars = await source.fetch("X", "1d", date(2024, 1, 4), datetime(2024, 1, 4, 12, 0, tzinfo=SYDNEY))
    assert list(bars.index) == ["2024-01-04"]
    source.close()


async def test_csv_source_has_daily_bars_only(tmp_path: Path) -> None:
    write(tmp_path, "X.csv", HEADER + "2024-01-02,1,2,0.5,1.5,1.4,100\n")
    source = CsvSource(tmp_path)
    with pytest.raises(DataUnavailable, match="daily bars only, not 1h"):
        await source.fetch("X", "1h", date(2024, 1, 1), datetime(2024, 1, 3, tzinfo=UTC))


# ClockedCsvSource -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calendar() -> AsxCalendar:
    return AsxCalendar()


class Now:
    def __init__(self, when: datetime) -> None:
        self.when = when

    def __call__(self) -> datetime:
        return self.when


@pytest.fixture
def clocked(calendar: AsxCalendar) -> tuple[ClockedCsvSource, Now]:
    now = Now(datetime(2019, 9, 29, tzinfo=UTC))
    return ClockedCsvSource(shared_prices(), calendar, now), now


async def visible(source: ClockedCsvSource, symbol: str, now: datetime) -> pd.DataFrame:
    # An end far after now: what is visible must depend on the clock, not on the end asked for.
    return await source.fetch(symbol, "1d", now.date() - timedelta(days=20), now + timedelta(days=30))


def cba_row(key: str) -> dict[str, float]:
    return row(read_price_csv(shared_prices() / "CBA.AX.csv"), key)


async def test_clocked_before_the_open_shows_the_previous_session(
    clocked: tuple[ClockedCsvSource, Now],
) -> None:
    source, now = clocked
    now.when = datetime(2019, 9, 29, 23, 59, 59, tzinfo=UTC)  # 09:59:59 on 30 September in Sydney
    bars = await visible(source, "CBA.AX", now.when)
    assert bars.index[-1] == "2019-09-27"
    assert row(bars, "2019-09-27") == cba_row("2019-09-27")


async def test_clocked_during_the_session_shows_only_the_open(clocked: tuple[ClockedCsvSource, Now]) -> None:
    source, now = clocked
    expected = cba_row("2019-09-30")
    for when in (datetime(2019, 9, 30, 0, 0, tzinfo=UTC), datetime(2019, 9, 30, 1, 0, tzinfo=UTC)):
        now.when = when
        bars = await visible(source, "CBA.AX", when)
        assert bars.index[-1] == "2019-09-30", when
        partial = row(bars, "2019-09-30")
        assert partial.pop("open") == expected["open"]
        assert all_nan(partial), when
        # The session before is complete.
        assert row(bars, "2019-09-27") == cba_row("2019-09-27")


async def test_clocked_at_and_after_the_close_shows_the_whole_bar(
    clocked: tuple[ClockedCsvSource, Now],
) -> None:
    source, now = clocked
    now.when = datetime(2019, 9, 30, 5, 59, 59, tzinfo=UTC)
    assert math.isnan((await visible(source, "CBA.AX", now.when)).at["2019-09-30", "close"])
    for when in (datetime(2019, 9, 30, 6, 0, tzinfo=UTC), datetime(2019, 9, 30, 9, 0, tzinfo=UTC)):
        now.when = when
        bars = await visible(source, "CBA.AX", when)
        assert bars.index[-1] == "2019-09-30"
        assert row(bars, "2019-09-30") == cba_row("2019-09-30")
        assert bars.at["2019-09-30", "close"] == pytest.approx(80.83000183105469)


async def test_clocked_early_close(clocked: tuple[ClockedCsvSource, Now]) -> None:
    source, now = clocked  # 24 December 2019 closed at 14:10 in Sydney (AEDT), 03:10 UTC
    now.when = datetime(2019, 12, 24, 3, 0, tzinfo=UTC)
    bars = await visible(source, "CBA.AX", now.when)
    assert bars.index[-1] == "2019-12-24"
    assert math.isnan(bars.at["2019-12-24", "close"])
    assert bars.at["2019-12-24", "open"] == cba_row("2019-12-24")["open"]

    now.when = datetime(2019, 12, 24, 3, 10, tzinfo=UTC)
    bars = await visible(source, "CBA.AX", now.when)
    assert row(bars, "2019-12-24") == cba_row("2019-12-24")


async def test_clocked_row_on_a_non_session_day_shows_at_the_end_of_that_day(
    clocked: tuple[ClockedCsvSource, Now],
) -> None:
    source, now = clocked  # ANZ has a blank row dated Sunday 12 November 2000 (AEDT, UTC+11)
    now.when = datetime(2000, 11, 12, 12, 59, 59, tzinfo=UTC)
    bars = await visible(source, "ANZ.AX", now.when)
    assert bars.index[-1] == "2000-11-10"

    now.when = datetime(2000, 11, 12, 13, 0, tzinfo=UTC)  # midnight in Sydney
    bars = await visible(source, "ANZ.AX", now.when)
    assert bars.index[-1] == "2000-11-12"
    assert all_nan(row(bars, "2000-11-12"))
    assert not math.isnan(bars.at["2000-11-10", "close"])


@pytest.mark.parametrize(
    ("symbol", "first"),
    [
        ("CBA.AX", datetime(2019, 9, 26, 12, 0, tzinfo=UTC)),  # across the start of daylight saving
        ("CBA.AX", datetime(2019, 12, 21, 0, 0, tzinfo=UTC)),  # Christmas: an early close, holidays
        ("ANZ.AX", datetime(2000, 11, 9, 0, 0, tzinfo=UTC)),  # the row dated on a Sunday
    ],
)
async def test_clocked_never_shows_the_future(
    clocked: tuple[ClockedCsvSource, Now], calendar: AsxCalendar, symbol: str, first: datetime
) -> None:
    source, now = clocked
    seen = set()
    for step in range(48):
        now.when = first + timedelta(minutes=157 * step)
        bars = await visible(source, symbol, now.when)
        today = now.when.astimezone(SYDNEY).date().isoformat()
        assert bars.index[-1] <= today, now.when
        for key in bars.index[:-1]:
            assert not math.isnan(bars.at[key, "close"]) or all_nan(row(bars, key)), (now.when, key)
        last = date.fromisoformat(bars.index[-1])
        session = calendar.session(last)
        if session is not None and not math.isnan(bars.iloc[-1]["close"]):
            assert session.close <= now.when
        if session is not None and math.isnan(bars.iloc[-1]["close"]):
            assert session.open <= now.when < session.close
        seen.add(bars.index[-1])
    assert len(seen) >= 3  # the sweep really moved through several sessions


# Yahoo --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    symbol: str
    interval: str
    start: datetime
    end: datetime
    timeout: float


class FakeYahoo:
    """A YahooClient that answers from a script: each call takes the next frame or raises the next error."""

    def __init__(self, *outcomes: pd.DataFrame | BaseException) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[Call] = []

    def history(
        self, symbol: str, interval: str, start: datetime, end: datetime, timeout: float
    ) -> pd.DataFrame:
        self.calls.append(Call(symbol, interval, start, end, timeout))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class RateLimitError(Exception):
    """Named like yfinance's rate-limit error, but not it."""


def yf_frame(index: pd.DatetimeIndex, closes: list[float]) -> pd.DataFrame:
    data = {
        "Open": [c - 0.5 for c in closes],
        "High": [c + 1.0 for c in closes],
        "Low": [c - 1.0 for c in closes],
        "Close": closes,
        "Adj Close": [c * 0.9 for c in closes],
        "Volume": [1_000_000 + i for i in range(len(closes))],
        "Dividends": [0.0] * len(closes),
        "Stock Splits": [0.0] * len(closes),
    }
    return pd.DataFrame(data, index=index, columns=YF_COLUMNS)


def daily_frame(days: list[str], closes: list[float]) -> pd.DataFrame:
    index = pd.DatetimeIndex([pd.Timestamp(day, tz="Australia/Sydney") for day in days], name="Date")
    return yf_frame(index, closes)


def hourly_frame(first: str, closes: list[float]) -> pd.DataFrame:
    index = pd.date_range(first, periods=len(closes), freq="h", tz="Australia/Sydney", name="Datetime")
    return yf_frame(index, closes)


def empty_frame() -> pd.DataFrame:
    return daily_frame([], [])


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


@pytest.fixture
def yahoo(clock: FakeTime) -> Iterator[Callable[..., YahooSource]]:
    made: list[YahooSource] = []

    def make(
        client: FakeYahoo,
        *,
        min_request_interval_s: float = 0.0,
        retries: int = 2,
        retry_backoff_s: float = 1.5,
    ) -> YahooSource:
        config = YahooConfig(
            timeout_s=1,
            min_request_interval_s=min_request_interval_s,
            retries=retries,
            retry_backoff_s=retry_backoff_s,
        )
        source = YahooSource(config, client, sleep=clock.sleep, monotonic=clock.monotonic)
        made.append(source)
        return source

    yield make
    for source in made:
        source.close()


END = datetime(2024, 1, 4, 6, 0, tzinfo=UTC)  # 17:00 on 4 January in Sydney


async def test_yahoo_daily_bars_keyed_by_sydney_date(yahoo: Callable[..., YahooSource]) -> None:
    client = FakeYahoo(daily_frame(["2024-01-02", "2024-01-03", "2024-01-04"], [100.0, 101.0, 102.0]))
    bars = await yahoo(client).fetch("CBA.AX", "1d", date(2024, 1, 2), END)
    assert list(bars.index) == ["2024-01-02", "2024-01-03", "2024-01-04"]
    assert row(bars, "2024-01-03") == {
        "open": 100.5,
        "high": 102.0,
        "low": 100.0,
        "close": 101.0,
        "adj_close": pytest.approx(90.9),
        "volume": 1_000_001.0,
    }
    [call] = client.calls
    assert (call.symbol, call.interval, call.timeout) == ("CBA.AX", "1d", 1)
    # From midnight on 2 January in Sydney; Yahoo's end is exclusive, so one day past the end.
    assert call.start == datetime(2024, 1, 1, 13, 0, tzinfo=UTC)
    assert call.end == END + timedelta(days=1)


async def test_yahoo_intraday_bars_keyed_by_utc_start(yahoo: Callable[..., YahooSource]) -> None:
    client = FakeYahoo(hourly_frame("2024-01-03 10:00", [100.0, 101.0, 102.0]))
    bars = await yahoo(client).fetch("CBA.AX", "1h", datetime(2024, 1, 2, 23, 0, tzinfo=UTC), END)
    # 10:00 AEDT on 3 January is 23:00 UTC on 2 January.
    assert list(bars.index) == [
        "2024-01-02T23:00:00.000000+00:00",
        "2024-01-03T00:00:00.000000+00:00",
        "2024-01-03T01:00:00.000000+00:00",
    ]
    assert bars.at["2024-01-03T00:00:00.000000+00:00", "close"] == 101.0
    assert client.calls[0].end == END  # no extra day for intraday


async def test_yahoo_empty_frame_is_unavailable_without_retry(
    yahoo: Callable[..., YahooSource], clock: FakeTime
) -> None:
    client = FakeYahoo(empty_frame(), empty_frame())
    with pytest.raises(DataUnavailable, match=r"no 1d bars for CBA\.AX") as caught:
        await yahoo(client).fetch("CBA.AX", "1d", date(2024, 1, 2), END)
    assert caught.value.data == {"source": "yahoo", "symbol": "CBA.AX"}
    assert len(client.calls) == 1
    assert clock.sleeps == []


@pytest.mark.parametrize(
    "make_error", [TimeoutError, YFRateLimitError, RateLimitError], ids=["timeout", "yfinance", "named"]
)
async def test_yahoo_temporary_errors_are_retried_with_doubling_backoff(
    yahoo: Callable[..., YahooSource],
    clock: FakeTime,
    caplog: pytest.LogCaptureFixture,
    make_error: Callable[[], BaseException],
) -> None:
    client = FakeYahoo(make_error(), make_error(), make_error(), daily_frame(["2024-01-02"], [1.0]))
    source = yahoo(client, retry_backoff_s=1.5)
    with (
        caplog.at_level(logging.WARNING, "services.market_data.yahoo"),
        pytest.raises(DataUnavailable, match="after 3 attempts") as caught,
    ):
        await source.fetch("CBA.AX", "1d", date(2024, 1, 2), END)
    assert len(client.calls) == 3  # the first try and retries=2
    assert source.requests == 3
    assert clock.sleeps == [1.5, 3.0]
    assert type(caught.value.__cause__) is make_error
    assert caplog.text.count("retrying in") == 2


async def test_yahoo_backoff_doubles_on_every_retry(
    yahoo: Callable[..., YahooSource], clock: FakeTime
) -> None:
    client = FakeYahoo(*(ConnectionResetError() for _ in range(4)))
    with pytest.raises(DataUnavailable, match="after 4 attempts: ConnectionResetError"):
        await yahoo(client, retries=3, retry_backoff_s=0.25).fetch("CBA.AX", "1d", date(2024, 1, 2), END)
    assert len(client.calls) == 4
    assert clock.sleeps == [0.25, 0.5, 1.0]


async def test_yahoo_retries_wait_for_the_rate_limiter_too(
    yahoo: Callable[..., YahooSource], clock: FakeTime
) -> None:
    # Back-off 0.1s is shorter than the 0.5s request spacing: the limiter makes up the difference.
    client = FakeYahoo(TimeoutError(), daily_frame(["2024-01-02"], [1.0]))
    source = yahoo(client, min_request_interval_s=0.5, retry_backoff_s=0.1)
    await source.fetch("CBA.AX", "1d", date(2024, 1, 2), END)
    assert clock.sleeps == pytest.approx([0.1, 0.4])


async def test_yahoo_timeout_without_message_says_how_long_it_waited(
    yahoo: Callable[..., YahooSource],
) -> None:
    client = FakeYahoo(TimeoutError(), TimeoutError(), TimeoutError())
    with pytest.raises(DataUnavailable, match=r"after 3 attempts: no answer within 2s"):
        await yahoo(client).fetch("CBA.AX", "1d", date(2024, 1, 2), END)


@pytest.mark.parametrize(
    "error",
    [YFTickerMissingError("XXX", "no timezone"), ValueError("bad period")],
    ids=["ticker-missing", "value-error"],
)
async def test_yahoo_permanent_errors_are_not_retried(
    yahoo: Callable[..., YahooSource], clock: FakeTime, error: Exception
) -> None:
    client = FakeYahoo(error, daily_frame(["2024-01-02"], [1.0]))
    with pytest.raises(DataUnavailable) as caught:
        await yahoo(client).fetch("XXX", "1d", date(2024, 1, 2), END)
    assert len(client.calls) == 1
    assert clock.sleeps == []
    assert caught.value.__cause__ is error
    assert "attempts" not in caught.value.message
    assert f"{type(error).__name__}: {error}" in caught.value.message


async def test_yahoo_success_after_one_temporary_failure(
    yahoo: Callable[..., YahooSource], clock: FakeTime
) -> None:
    client = FakeYahoo(YFRateLimitError(), daily_frame(["2024-01-02", "2024-01-03"], [100.0, 101.0]))
    bars = await yahoo(client, retry_backoff_s=2.0).fetch("CBA.AX", "1d", date(2024, 1, 2), END)
    assert list(bars["close"]) == [100.0, 101.0]
    assert len(client.calls) == 2
    assert clock.sleeps == [2.0]


@pytest.mark.parametrize("interval", ["1h", "15m", "5m"])
async def test_yahoo_intraday_start_is_clamped_to_what_yahoo_serves(
    yahoo: Callable[..., YahooSource], interval: str
) -> None:
    client = FakeYahoo(hourly_frame("2024-01-03 10:00", [1.0]), hourly_frame("2024-01-03 10:00", [1.0]))
    source = yahoo(client)
    await source.fetch("CBA.AX", interval, date(2015, 1, 1), END)
    assert client.calls[0].start == END - MAX_LOOKBACK[interval]
    # A start inside the window is kept.
    recent = END - timedelta(days=3)
    await source.fetch("CBA.AX", interval, recent, END)
    assert client.calls[1].start == recent


async def test_yahoo_daily_start_is_not_clamped(yahoo: Callable[..., YahooSource]) -> None:
    client = FakeYahoo(daily_frame(["2015-01-02"], [1.0]))
    await yahoo(client).fetch("CBA.AX", "1d", date(2015, 1, 2), END)
    assert client.calls[0].start == datetime(2015, 1, 1, 13, 0, tzinfo=UTC)


async def test_yahoo_unknown_interval_is_unavailable_without_a_request(
    yahoo: Callable[..., YahooSource],
) -> None:
    client = FakeYahoo()
    with pytest.raises(DataUnavailable, match="no 1wk bars"):
        await yahoo(client).fetch("CBA.AX", "1wk", date(2024, 1, 2), END)
    assert client.calls == []


async def test_yahoo_rate_limiter_spaces_requests(yahoo: Callable[..., YahooSource], clock: FakeTime) -> None:
    client = FakeYahoo(*(daily_frame(["2024-01-02"], [1.0]) for _ in range(3)))
    source = yahoo(client, min_request_interval_s=0.5)
    await source.fetch("CBA.AX", "1d", date(2024, 1, 2), END)
    assert clock.sleeps == []
    await source.fetch("WBC.AX", "1d", date(2024, 1, 2), END)
    assert clock.sleeps == [0.5]
    clock.now += 10  # long after: no wait
    await source.fetch("NAB.AX", "1d", date(2024, 1, 2), END)
    assert clock.sleeps == [0.5]
    assert [call.symbol for call in client.calls] == ["CBA.AX", "WBC.AX", "NAB.AX"]


class ReadTimeout(Exception):
    pass


class CurlError(Exception):
    pass


CurlError.__module__ = "curl_cffi.curl"


@pytest.mark.parametrize(
    ("error", "temporary"),
    [
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (YFRateLimitError(), True),
        (RateLimitError(), True),
        (ReadTimeout(), True),
        (CurlError(), True),
        (curl_exceptions.DNSError("Could not resolve host"), True),
        (curl_exceptions.InvalidURL("bad url"), False),
        (curl_exceptions.JSONDecodeError("bad json", "", 0), False),
        (YFTickerMissingError("XXX", "no timezone"), False),
        (ValueError("bad"), False),
        (KeyError("Close"), False),
        (RuntimeError("boom"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_is_temporary(error: BaseException, temporary: bool) -> None:
    assert is_temporary(error) is temporary


# MarketDataConfig ---------------------------------------------------------------------------------


def test_config_rejects_unknown_interval() -> None:
    with pytest.raises(ValueError, match=r"unknown \['2h'\]"):
        MarketDataConfig(intervals=("1d", "2h"))


def test_config_requires_daily_interval() -> None:
    with pytest.raises(ValueError, match="must include '1d'"):
        MarketDataConfig(intervals=("1h",))


@pytest.mark.parametrize("source", ["csv", "clocked_csv"])
def test_config_file_sources_need_csv_dir(source: str) -> None:
    with pytest.raises(ValueError, match="needs csv_dir"):
        MarketDataConfig(source=source)  # type: ignore[arg-type]
    assert MarketDataConfig(source=source, csv_dir="/data").csv_dir == "/data"  # type: ignore[arg-type]


def test_universe_appends_the_context_symbol_once() -> None:
    assert MarketDataConfig(symbols=("CBA.AX", "ANZ.AX")).universe == ("CBA.AX", "ANZ.AX", "^AXJO")
    assert MarketDataConfig(symbols=("^AXJO", "CBA.AX")).universe == ("^AXJO", "CBA.AX")


def test_settings_read_market_data_from_the_environment(home: TradingHome) -> None:
    settings = load_settings(
        home,
        env={
            "TRADING__MARKET_DATA__SYMBOLS": '["CBA.AX"]',
            "TRADING__MARKET_DATA__INTERVALS": '["1d", "1h"]',
        },
    )
    config = settings.section("market_data", MarketDataConfig)
    assert config.symbols == ("CBA.AX",)
    assert config.intervals == ("1d", "1h")
    assert config.universe == ("CBA.AX", "^AXJO")


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("INTERVALS", '["1h"]', "must include '1d'"),
        ("SOURCE", "csv", "needs csv_dir"),
        ("SYMBOLS", "[]", "at least one symbol"),
    ],
)
def test_settings_bad_market_data_value_is_a_config_error(
    home: TradingHome, key: str, value: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(home, env={f"TRADING__MARKET_DATA__{key}": value})
    assert "[market_data]" in caught.value.message
    assert reason in caught.value.message
