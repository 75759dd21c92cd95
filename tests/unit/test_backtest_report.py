"""The report of a run through history: figures against hand-made books, the interval of the
excess return, and the files written."""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from services.asx.calendar import AsxCalendar
from services.backtest.report import (
    BLOCK_DAYS,
    History,
    build_report,
    excess,
    read_prices,
    trade_rows,
    write_report,
)
from services.market_data.synthetic import write_synthetic_market

SYMBOLS = ("CBA.AX", "WBC.AX")
START, END = date(2019, 1, 1), date(2019, 6, 28)


@pytest.fixture(scope="module")
def prices(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("prices")
    write_synthetic_market(directory, date(2018, 6, 1), END, SYMBOLS)
    return directory


def fill(
    id: int, side: str, value: int, commission: int, realised: int = 0, entry: int = 0
) -> dict[str, Any]:
    return {
        "id": id,
        "order_id": id,
        "symbol": "CBA.AX",
        "side": side,
        "quantity": 10,
        "price": "100.0500",
        "market_price": "100.0000",
        "price_time": "2019-01-03",
        "value_cents": value,
        "commission_cents": commission,
        "cost_cents": 0,
        "realised_cents": realised,
        "entry_commission_cents": entry,
        "reason": "signal",
        "filled_at": f"2019-01-0{id + 2}T23:00:00Z",
    }


def history(prices: Path, equity: list[int], fills: list[dict[str, Any]], **changes: Any) -> History:
    days = AsxCalendar().sessions_between(START, END)[: len(equity)]
    fields: dict[str, Any] = {
        "kind": "backtest",
        "start": START,
        "end": END,
        "symbols": SYMBOLS,
        "prices": prices,
        "synthetic": True,
        "predictions": [],
        "fills": fills,
        "equity": [
            {"day": d.isoformat(), "equity_cents": e, "cash_cents": e, "market_value_cents": 0}
            for d, e in zip(days, equity, strict=True)
        ],
        "starting_cents": 10_000_000,
        "cash_cents": equity[-1],
        "open_positions": {},
        "pending_orders": 0,
        "reconciled": {"a": equity[-1], "b": equity[-1]},
        "run": {"wall_s": 1.0},
    }
    return History(**(fields | changes))


def test_performance_of_a_known_curve(prices: Path) -> None:
    # Up 10%, down to 8% under the start, then back to 5% up: the drawdown is from the 110 peak.
    curve = [10_500_000, 11_000_000, 9_200_000, 10_500_000]
    sell = fill(1, "SELL", 104_000, 1100, realised=4000, entry=1000)
    report = build_report(
        history(prices, curve, [fill(0, "BUY", 100_000, 1100), sell]), read_prices(prices, SYMBOLS)
    )
    perf = report["performance"]
    assert perf["total_return"] == pytest.approx(0.05)
    assert perf["max_drawdown"] == pytest.approx(1 - 92 / 110, abs=1e-6)
    assert perf["closed_trades"] == 1
    assert perf["win_rate"] == 1.0  # 40.00 realised less 11.00 and 10.00 of commissions
    assert perf["commissions"] == 22.0
    returns = np.array([105 / 100, 110 / 105, 92 / 110, 105 / 92]) - 1
    assert perf["sharpe"] == pytest.approx(returns.mean() / returns.std(ddof=1) * np.sqrt(252), abs=1e-4)
    assert report["trades"] == 2
    assert report["period"]["sessions"] == 4


def test_equal_weight_buy_and_hold_is_the_mean_of_each_symbols_open_to_close(prices: Path) -> None:
    bars = read_prices(prices, SYMBOLS)
    report = build_report(history(prices, [10_000_000] * 3, []), bars)
    day = AsxCalendar().sessions_between(START, END)[2].isoformat()
    growth = [
        float(bars[s].loc[day, "close"]) / float(bars[s]["open"][bars[s].index >= START.isoformat()].iloc[0])
        for s in SYMBOLS
    ]
    assert report["benchmarks"]["equal_weight"]["total_return"] == pytest.approx(
        sum(growth) / 2 - 1, abs=1e-6
    )
    assert [b["symbol"] for b in report["benchmarks"]["symbols"]] == list(SYMBOLS)
    assert report["benchmarks"]["index"]["symbol"] == "^AXJO"


def test_the_excess_interval_is_of_the_daily_difference_annualised() -> None:
    rng = np.random.default_rng(1)
    benchmark = list(0.01 * rng.standard_normal(250))
    ahead = excess([b + 0.001 for b in benchmark], benchmark)
    assert ahead["annualised"] == pytest.approx(0.252)
    assert ahead["ci95"] == pytest.approx([0.252, 0.252])  # a constant difference has no spread
    assert "beat" in ahead["reading"]
    noisy = excess(list(0.01 * rng.standard_normal(250)), benchmark)
    low, high = noisy["ci95"]
    assert low < noisy["annualised"] < high
    assert low < 0 < high
    assert "no difference" in noisy["reading"]


def test_too_few_sessions_for_an_interval_say_so() -> None:
    short = excess([0.01] * (2 * BLOCK_DAYS - 1), [0.0] * (2 * BLOCK_DAYS - 1))
    assert short["ci95"] is None
    assert "too few sessions" in short["reading"]


def test_trades_csv_has_a_row_per_fill_with_the_cash_after_it(prices: Path) -> None:
    fills = [fill(0, "BUY", 100_000, 1100), fill(1, "SELL", 104_000, 1104, realised=4000)]
    rows = trade_rows(history(prices, [10_000_000], fills))
    assert [r["cash"] for r in rows] == ["98989.00", "100017.96"]  # 100,000 - 1,000 - 11; + 1,040 - 11.04
    assert rows[1]["commission"] == "11.04"


def test_the_report_files_are_written_and_labelled_synthetic(prices: Path, tmp_path: Path) -> None:
    h = history(prices, [10_000_000] * 3, [fill(0, "BUY", 100_000, 1100)])
    bars = read_prices(prices, SYMBOLS)
    report = build_report(h, bars)
    out = write_report(tmp_path / "report", h, report, bars)
    assert orjson.loads((out / "report.json").read_bytes())["synthetic"] is True
    assert (out / "report.md").read_text().startswith("# SYNTHETIC market")
    with (out / "trades.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert list(row)[:7] == ["time", "symbol", "side", "quantity", "price", "commission", "reason"]
    assert row["data"] == "SYNTHETIC"
    assert "<svg" in (out / "equity.html").read_text()


def test_a_run_without_trades_says_why(prices: Path) -> None:
    report = build_report(history(prices, [10_000_000] * 3, []), read_prices(prices, SYMBOLS))
    assert report["trades"] == 0
    from services.backtest.report import report_markdown

    assert "No trade" in report_markdown(report)


def test_the_reliability_table_says_whether_the_probability_matches_what_happened() -> None:
    from datetime import date, timedelta

    from services.backtest.report import reliability

    def signal(action: str, probability: float | None, week: int, combined: float = 0.1) -> dict[str, Any]:
        day = date(2019, 1, 7) + timedelta(weeks=week)
        return {
            "signal": action,
            "probability": probability,
            "combined": combined,
            "price_time": day.isoformat(),
        }

    # Said 0.70, right 28 times in 40 (a week each): consistent. Said 0.90, right 4 in 40: not.
    # A HOLD counts the way its score leans; uncalibrated and unjudged signals are left out.
    judged: list[tuple[dict[str, Any], float | None]] = [
        *((signal("BUY", 0.7, i), 0.01 if i % 10 < 7 else -0.01) for i in range(40)),
        *((signal("SELL", 0.9, i), -0.01 if i % 10 == 0 else 0.01) for i in range(40)),
        *((signal("HOLD", 0.9, i, combined=-0.2), -0.01 if i % 10 == 0 else 0.01) for i in range(40)),
        (signal("BUY", None, 1), 0.02),
        (signal("BUY", 0.75, 2), None),
    ]
    table = orjson.loads(orjson.dumps(reliability(judged)))  # as report.json holds it
    seventy, ninety = table["bins"]
    assert (seventy["from"], seventy["count"], seventy["weeks"], seventy["hit_rate"]) == (0.7, 40, 40, 0.7)
    assert seventy["consistent"]
    assert seventy["ci95"][0] < 0.7 < seventy["ci95"][1]
    assert (ninety["count"], ninety["hit_rate"], ninety["mean_probability"], ninety["consistent"]) == (
        80,
        0.1,
        0.9,
        False,
    )
    # Resampling whole weeks (two signals share each) gives a wider interval than counting each alone.
    width = ninety["ci95"][1] - ninety["ci95"][0]
    assert width > ninety["ci95_independent"][1] - ninety["ci95_independent"][0]
    assert (table["consistent_bins"], table["uncalibrated"]) == (1, 1)
