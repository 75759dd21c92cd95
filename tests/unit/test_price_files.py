"""Price files as Yahoo and yfinance write them all read into the same bars; a file that cannot be read
is one error (``CsvFormatError``) naming the file and the problem."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from services.asx.calendar import AsxCalendar
from services.market_data.csv_files import (
    ClockedCsvSource,
    CsvDirectory,
    CsvFormatError,
    CsvSource,
    read_price_csv,
)
from services.market_data.sources import DataUnavailable

PRICES = Path(__file__).resolve().parents[3] / "shared" / "data" / "prices"

# CBA.AX as in the shared CBA.AX.csv: date, open, high, low, close, adj close, volume. 13 February 2019
# was the ex-dividend day of a $2.00 dividend; daylight saving in Sydney ended on 7 April 2019.
CBA = [
    ("2019-02-12", "73.79000091552734", "74.12999725341797", "73.1500015258789", "73.33000183105469",
     "61.899662017822266", "3431996"),
    ("2019-02-13", "71.75", "71.75", "70.94999694824219", "71.20999908447266",
     "61.79551696777344", "6133536"),
    ("2019-02-14", "71.20999908447266", "71.33999633789062", "70.55000305175781", "70.58999633789062",
     "61.25748825073242", "2787802"),
    ("2019-04-05", "71.05999755859375", "71.25", "70.62999725341797", "70.88999938964844",
     "61.517826080322266", "2601681"),
    ("2019-04-08", "71.01000213623047", "71.06999969482422", "70.5", "70.66999816894531",
     "61.326908111572266", "2086127"),
]  # fmt: skip
OFFSET = {"2019-02-12": "+11:00", "2019-02-13": "+11:00", "2019-02-14": "+11:00", "2019-04-05": "+11:00",
          "2019-04-08": "+10:00"}  # fmt: skip
DIVIDEND = {"2019-02-13": "2.0"}


def lines(*rows: str) -> str:
    return "".join(f"{row}\n" for row in rows)


def yahoo() -> str:
    """Yahoo's download: Date,Open,High,Low,Close,Adj Close,Volume, oldest first."""
    return lines("Date,Open,High,Low,Close,Adj Close,Volume", *(",".join(row) for row in CBA))


def yfinance_history(*, adjusted_column: bool = False, capital_gains: bool = False) -> str:
    """``Ticker.history().to_csv()``: midnight in Sydney with its offset, Dividends and Stock Splits;
    an Adj Close only with auto_adjust=False, Capital Gains for funds."""
    names = ["Open", "High", "Low", "Close", *(["Adj Close"] * adjusted_column), "Volume", "Dividends",
             "Stock Splits", *(["Capital Gains"] * capital_gains)]  # fmt: skip
    out = []
    for day, o, h, low, c, adj, v in CBA:
        extra = [DIVIDEND.get(day, "0.0"), "0.0", *(["0.0"] * capital_gains)]
        out.append(
            ",".join([f"{day} 00:00:00{OFFSET[day]}", o, h, low, c, *([adj] * adjusted_column), v, *extra])
        )
    return lines(",".join(["Date", *names]), *out)


def yfinance_download(*, adjusted_column: bool = False) -> str:
    """``yf.download("CBA.AX").to_csv()``: a Price row (alphabetical columns), a Ticker row, a Date row."""
    names = [*(["Adj Close"] * adjusted_column), "Close", "High", "Low", "Open", "Volume"]
    out = []
    for day, o, h, low, c, adj, v in CBA:
        out.append(",".join([day, *([adj] * adjusted_column), c, h, low, o, v]))
    return lines(
        ",".join(["Price", *names]),
        ",".join(["Ticker"] + ["CBA.AX"] * len(names)),
        "Date" + "," * len(names),
        *out,
    )


def yfinance_download_by_ticker() -> str:
    """``yf.download("CBA.AX", group_by="ticker", auto_adjust=False).to_csv()``: the Ticker row first."""
    names = ["Open", "High", "Low", "Close", "Adj Close", "Volume"]
    return lines(
        ",".join(["Ticker"] + ["CBA.AX"] * len(names)),
        ",".join(["Price", *names]),
        "Date" + "," * len(names),
        *(",".join(row) for row in CBA),
    )


def newest_first_with_blank_lines() -> str:
    """Sorted newest first in a spreadsheet, with blank lines left in."""
    rows = [",".join(row) for row in reversed(CBA)]
    return lines("Date,Open,High,Low,Close,Adj Close,Volume", *rows[:2], "", *rows[2:], ",,,,,,")


def write(directory: Path, text: str, name: str = "CBA.AX.csv", encoding: str = "utf-8") -> Path:
    path = directory / name
    path.write_bytes(text.encode(encoding))
    return path


@pytest.fixture
def plain(tmp_path: Path) -> pd.DataFrame:
    (tmp_path / "plain").mkdir()
    return read_price_csv(write(tmp_path / "plain", yahoo()))


def without_adj_close(bars: pd.DataFrame) -> pd.DataFrame:
    """What a file without Adj Close reads as: the same bars, adj_close NaN (unknown, not close)."""
    return bars.assign(adj_close=math.nan)


def test_the_recorded_rows_are_the_shared_files_rows(plain: pd.DataFrame) -> None:
    if not (PRICES / "CBA.AX.csv").is_file():
        pytest.skip(f"shared price data not found in {PRICES}")
    shared = read_price_csv(PRICES / "CBA.AX.csv")
    pd.testing.assert_frame_equal(plain, shared.loc[list(plain.index)])


def test_plain_yahoo_file(plain: pd.DataFrame) -> None:
    assert list(plain.index) == [row[0] for row in CBA]
    assert list(plain.columns) == ["open", "high", "low", "close", "adj_close", "volume"]
    assert plain.at["2019-02-13", "close"] == 71.20999908447266
    assert plain.at["2019-02-13", "adj_close"] == 61.79551696777344


@pytest.mark.parametrize(
    ("make", "has_adj_close"),
    [
        pytest.param(lambda: yfinance_history(adjusted_column=True), True, id="history-auto_adjust-false"),
        pytest.param(yfinance_history, False, id="history-default"),
        pytest.param(lambda: yfinance_history(capital_gains=True), False, id="history-capital-gains"),
        pytest.param(lambda: yfinance_download(adjusted_column=True), True, id="download-auto_adjust-false"),
        pytest.param(yfinance_download, False, id="download-default"),
        pytest.param(yfinance_download_by_ticker, True, id="download-group-by-ticker"),
        pytest.param(newest_first_with_blank_lines, True, id="newest-first-blank-lines"),
        pytest.param(lambda: yahoo().replace("\n", "\r\n"), True, id="crlf"),
    ],
)
def test_variant_reads_as_the_plain_file(
    tmp_path: Path, plain: pd.DataFrame, make: Callable[[], str], has_adj_close: bool
) -> None:
    bars = read_price_csv(write(tmp_path, make()))
    pd.testing.assert_frame_equal(bars, plain if has_adj_close else without_adj_close(plain))


def test_utf8_bom_as_excel_saves_it(tmp_path: Path, plain: pd.DataFrame) -> None:
    bars = read_price_csv(write(tmp_path, yahoo(), encoding="utf-8-sig"))
    pd.testing.assert_frame_equal(bars, plain)


def test_timezone_dates_keep_the_date_as_written(tmp_path: Path) -> None:
    # 2019-04-08 00:00+10:00 is 2019-04-07 in UTC: the key must be the Sydney date written.
    bars = read_price_csv(write(tmp_path, yfinance_history()))
    assert bars.index[-1] == "2019-04-08"
    assert bars.index[0] == "2019-02-12"


# Errors: one exception type, the file named, the problem said ------------------------------------

HEADER = "Date,Open,High,Low,Close,Adj Close,Volume"
ROW1 = ",".join(CBA[0])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("", ": empty file, expected a header", id="empty"),
        pytest.param("\n\n", ": empty file, expected a header", id="blank-lines-only"),
        pytest.param(lines(HEADER), ": no price rows after the header", id="header-only"),
        pytest.param(
            lines(
                "Price,Close,High,Low,Open,Volume", "Ticker,CBA.AX,CBA.AX,CBA.AX,CBA.AX,CBA.AX", "Date,,,,,"
            ),
            ": no price rows after the header",
            id="yfinance-failed-download",
        ),
        pytest.param(
            lines("Open,High,Low,Close,Adj Close,Volume", ",".join(CBA[0][1:])),
            ": no Date column (columns: open, high, low, close, adj_close, volume)",
            id="no-date",
        ),
        pytest.param(
            lines("Date;Open;High;Low;Close;Volume", "2019-02-19;70.72;71.85;70.72;71.67;2952891"),
            ": no Date column (columns: date;open;high;low;close;volume)",
            id="semicolons",
        ),
        pytest.param(
            lines("Date,Open,High,Low,Adj Close,Volume", "2019-02-19,70.72,71.85,70.72,62.19,2952891"),
            ": missing column(s) close",
            id="no-close",
        ),
        pytest.param(
            lines(
                "Date,Open,High,Low,Close,Close,Volume", "2019-02-19,70.72,71.85,70.72,71.67,71.67,2952891"
            ),
            ": column(s) close appear more than once",
            id="close-twice",
        ),
        pytest.param(
            lines(
                "Price,Close,Close,High,High,Low,Low,Open,Open,Volume,Volume",
                "Ticker,ANZ.AX,CBA.AX,ANZ.AX,CBA.AX,ANZ.AX,CBA.AX,ANZ.AX,CBA.AX,ANZ.AX,CBA.AX",
                "Date,,,,,,,,,,",
                "2019-02-19,27.35,71.67,27.39,71.85,26.75,70.72,26.81,70.72,5406497,2952891",
            ),
            ": holds several tickers (ANZ.AX, CBA.AX), expected one per file",
            id="several-tickers",
        ),
        pytest.param(
            lines(
                "Price,Close,High,Low,Open,Volume", "Date,,,,,", "2019-02-19,71.67,71.85,70.72,70.72,2952891"
            ),
            ": a yfinance header needs 'Price' and 'Ticker' rows, then a 'Date' row",
            id="yfinance-header-without-ticker-row",
        ),
        pytest.param(
            lines(HEADER, ROW1, "20/02/2019,71.5,72.19,71.17,71.66,62.19,2514470"),
            ":3: cannot read date '20/02/2019'",
            id="day-first-date",
        ),
        pytest.param(
            lines(HEADER, ROW1, '2019-02-20,71.5,72.19,71.17,"71,66",62.19,2514470'),
            ":3: column close: cannot read '71,66' as a number",
            id="decimal-comma",
        ),
        pytest.param(
            lines(HEADER, ROW1, "", "2019-02-20,71.5,72.19,71.17,71.66,62.19,2.5M"),
            ":4: column volume: cannot read '2.5M' as a number",
            id="volume-with-suffix",
        ),
        pytest.param(
            lines(HEADER, ROW1, "2019-02-20,71.5,inf,71.17,71.66,62.19,2514470"),
            ":3: column high: 'inf' is not a finite number",
            id="infinite",
        ),
        pytest.param(
            lines(HEADER, ROW1, "2019-02-20,71.5,72.19"), ":3: expected 7 fields, found 3", id="short-row"
        ),
        pytest.param(
            lines(
                "Price,Close,High,Low,Open,Volume",
                "Ticker,CBA.AX,CBA.AX,CBA.AX,CBA.AX,CBA.AX",
                "Date,,,,,",
                "2019-02-19,71.67,71.85,70.72,70.72,2952891",
                "2019-02-20,71.66,72.19,71.17,n.a.,2514470",
            ),
            ":5: column open: cannot read 'n.a.' as a number",
            id="yfinance-header-line-numbers",
        ),
    ],
)
def test_bad_file_names_the_file_and_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CsvFormatError) as caught:
        read_price_csv(path)
    assert str(caught.value).startswith(f"{path}{problem}")


def test_utf16_file_names_the_file_and_the_encoding(tmp_path: Path) -> None:
    # Excel's "Unicode text" saves UTF-16.
    path = write(tmp_path, yahoo(), encoding="utf-16")
    with pytest.raises(CsvFormatError, match=r"cannot be read: 'utf-8' codec can't decode") as caught:
        read_price_csv(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_missing_file_is_the_same_error(tmp_path: Path) -> None:
    path = tmp_path / "CBA.AX.csv"
    with pytest.raises(CsvFormatError) as caught:
        read_price_csv(path)
    assert str(caught.value).startswith(f"{path}: cannot be read: ")


# The sources over a price directory ---------------------------------------------------------------


async def test_csv_source_reads_a_yfinance_download(tmp_path: Path, plain: pd.DataFrame) -> None:
    write(tmp_path, yfinance_download(adjusted_column=True))
    source = CsvSource(tmp_path)
    bars = await source.fetch("CBA.AX", "1d", date(2019, 1, 1), datetime(2019, 12, 31, tzinfo=UTC))
    pd.testing.assert_frame_equal(bars, plain)


def test_clocked_source_sees_a_yfinance_history_file_through_the_clock(
    tmp_path: Path, plain: pd.DataFrame
) -> None:
    write(tmp_path, yfinance_history())
    calendar = AsxCalendar()
    session = calendar.session(date(2019, 4, 8))
    assert session is not None
    source = ClockedCsvSource(tmp_path, calendar, lambda: session.close)

    during = source.visible("CBA.AX", session.close - timedelta(seconds=1))
    assert list(during.index) == list(plain.index)
    assert during.at["2019-04-08", "open"] == plain.at["2019-04-08", "open"]
    assert math.isnan(during.at["2019-04-08", "close"])

    after = source.visible("CBA.AX", session.close)
    pd.testing.assert_frame_equal(after, without_adj_close(plain))


def test_bad_file_through_the_directory_is_data_unavailable_naming_it(tmp_path: Path) -> None:
    path = write(
        tmp_path, lines("Price,Close,High,Low,Open,Volume", "Ticker,CBA.AX,CBA.AX,CBA.AX,CBA.AX,CBA.AX")
    )
    with pytest.raises(DataUnavailable) as caught:
        CsvDirectory(tmp_path).bars("CBA.AX", "csv")
    assert (
        caught.value.message
        == f"{path}: a yfinance header needs 'Price' and 'Ticker' rows, then a 'Date' row"
    )
