"""``tradingctl backtest`` as a user runs it: price files written the ways Yahoo and yfinance write
them run, and a file or setting it cannot use stops it with a message naming it (exit 2)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import orjson
import pytest

from services.market_data.synthetic import write_synthetic_market

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("yahoo")
    write_synthetic_market(directory, date(2016, 1, 1), date(2019, 3, 29), ("CBA.AX",))
    return directory


def yahoo_rows(path: Path) -> Iterator[list[str]]:
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        next(reader)  # Date,Open,High,Low,Close,Adj Close,Volume
        yield from reader


def as_yfinance_download(source: Path, target: Path, ticker: str) -> None:
    """``yf.download(...).to_csv()``: a three-line header, its own column order, no Adj Close."""
    with target.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["Price", "Close", "High", "Low", "Open", "Volume"])
        out.writerow(["Ticker", ticker, ticker, ticker, ticker, ticker])
        out.writerow(["Date", "", "", "", "", ""])
        for day, o, h, low, c, _adj, v in yahoo_rows(source):
            out.writerow([day, c, h, low, o, v])


def as_yfinance_history(source: Path, target: Path) -> None:
    """``Ticker.history().to_csv()``: midnight in Sydney with its offset, Dividends, Stock Splits."""
    with target.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["Date", "Open", "High", "Low", "Close", "Volume", "Dividends", "Stock Splits"])
        for day, o, h, low, c, _adj, v in yahoo_rows(source):
            out.writerow([f"{day} 00:00:00+11:00", o, h, low, c, v, "0.0", "0.0"])


def backtest(tmp_path: Path, prices: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "services.management",
        "backtest",
        "--from",
        "2019-01-01",
        "--to",
        "2019-03-29",
        "--symbols",
        "CBA.AX",
        "--prices",
        str(prices),
        "--out",
        str(tmp_path / "report"),
        *extra,
    ]
    env = dict(os.environ, TRADING_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    return subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False
    )


def test_yfinance_files_run_and_give_the_same_back_test_as_yahoos(generated: Path, tmp_path: Path) -> None:
    variants = tmp_path / "yfinance"
    variants.mkdir()
    as_yfinance_download(generated / "CBA.AX.csv", variants / "CBA.AX.csv", "CBA.AX")
    as_yfinance_history(generated / "^AXJO.csv", variants / "^AXJO.csv")
    done = backtest(tmp_path / "a", variants, "--synthetic")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SYNTHETIC" in (tmp_path / "a" / "report" / "report.md").read_text()
    plain = backtest(tmp_path / "b", generated, "--synthetic")
    assert plain.returncode == 0, plain.stderr[-3000:]
    # Without Adj Close there is nothing to adjust by; these generated files adjust by nothing.
    same = [(tmp_path / run / "report" / "signals.csv").read_text() for run in ("a", "b")]
    assert same[0] == same[1]
    report = orjson.loads((tmp_path / "a" / "report" / "report.json").read_bytes())
    assert report["kind"] == "backtest"
    assert report["signals"]["HOLD"] > 0


def test_an_unreadable_price_file_is_named_with_its_line(generated: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "^AXJO.csv").write_text((generated / "^AXJO.csv").read_text())
    text = (generated / "CBA.AX.csv").read_text().splitlines()
    text[3] = "03/01/2016," + text[3].split(",", 1)[1]
    (broken / "CBA.AX.csv").write_text("\n".join(text) + "\n")
    done = backtest(tmp_path, broken)
    assert done.returncode == 2
    assert f"{broken / 'CBA.AX.csv'}:4: cannot read date '03/01/2016'" in done.stderr


def test_a_missing_price_file_and_a_bad_setting_are_named(generated: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    done = backtest(tmp_path / "a", empty)
    assert done.returncode == 2
    assert f"no price file for CBA.AX: {empty / 'CBA.AX.csv'} does not exist" in done.stderr
    config = tmp_path / "bad.toml"
    config.write_text("[paper_trading]\nbuy_confidence = 2.0\n")
    done = backtest(tmp_path / "b", generated, "--config", str(config))
    assert done.returncode == 2
    assert "[paper_trading]: buy_confidence must be in (0, 1]" in done.stderr
    config.write_text("[paper_trading\n")
    done = backtest(tmp_path / "c", generated, "--config", str(config))
    assert done.returncode == 2
    assert f"{config}: " in done.stderr  # the file, then what TOML could not read
