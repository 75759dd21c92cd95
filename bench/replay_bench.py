"""Simulated trading days per second for the Big 4 through the whole stack, against the same
decision logic called in one process, in the same run.

    .venv/bin/python bench/replay_bench.py [--from 2019-01-01] [--to 2019-03-31] [--prices DIR]

The stack: ``tradingctl replay`` (manager, Redis, every service as its own process, signals over
the stream, the driver stepping every timer). Its days/s are the sessions replayed over the time
the driver ran (start-up, training and the report are not counted).

The baseline: for every session, the two daily prediction rounds (09:30 on the last close, 17:00
on the day's close) for each symbol, called directly: the replay source's visibility, market
data's indicators, volume figures and market context, prediction's technical input and decision.
No RPC, no Redis, no SQLite, no ML and no paper ledger: the baseline does less than the stack, so
the ratio is an upper bound of what the architecture costs. Without ``--prices`` (and the shared
data absent) both run on a generated, SYNTHETIC market.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.asx.calendar import AsxCalendar  # noqa: E402
from services.asx.market_hours import sydney_time  # noqa: E402
from services.market_data.config import MarketDataConfig  # noqa: E402
from services.market_data.context import market_context as context_figures  # noqa: E402
from services.market_data.csv_files import ReplaySource  # noqa: E402
from services.market_data.indicators import indicators, volume_figures  # noqa: E402
from services.market_data.synthetic import write_synthetic_market  # noqa: E402
from services.prediction.config import PredictionConfig  # noqa: E402
from services.prediction.decision import context_for, decide, market_context, technical_input  # noqa: E402

SYMBOLS = ("CBA.AX", "WBC.AX", "ANZ.AX", "NAB.AX")
SHARED = ROOT.parent / "shared" / "data" / "prices"
ROUNDS = ("09:30", "17:00")


def in_process(prices: Path, first: date, last: date) -> tuple[int, float, dict[str, int]]:
    calendar = AsxCalendar()
    now = [datetime.now()]
    source = ReplaySource(prices, calendar, lambda: now[0])
    md, pred = MarketDataConfig(), PredictionConfig()
    sessions = calendar.sessions_between(first, last)
    counts = {"BUY": 0, "HOLD": 0, "SELL": 0}
    started = time.perf_counter()
    for day in sessions:
        for wall in ROUNDS:
            now[0] = sydney_time(day, datetime.strptime(wall, "%H:%M").time())
            index = source.visible("^AXJO", now[0]).dropna(subset=["close"])
            figures = context_figures(
                list(index.index), index["close"].to_numpy(float),
                trend_return_threshold=md.trend_return_threshold, low_volatility=md.low_volatility,
                high_volatility=md.high_volatility,
            )  # fmt: skip
            context = market_context({**figures, "as_of": index.index[-1]})
            for symbol in SYMBOLS:
                bars = source.visible(symbol, now[0]).dropna(subset=["close"]).iloc[-md.analysis_bars :]
                close = bars["close"].to_numpy(float)
                answer = {
                    "price": float(close[-1]),
                    "price_time": bars.index[-1],
                    "change_percent": (close[-1] / close[-2] - 1) * 100,
                    "indicators": indicators(
                        bars.index[-1], close, bars["high"].to_numpy(float), bars["low"].to_numpy(float)
                    ),
                    "volume": volume_figures(bars["volume"].to_numpy(float), md.unusual_volume_ratio),
                }
                technical = technical_input(answer, pred)
                decision = decide(
                    {"technical": technical}, context_for(context, answer["price_time"], pred), pred
                )
                counts[decision.signal] += 1
    return len(sessions), time.perf_counter() - started, counts


def through_stack(prices: Path, first: date, last: date, workdir: Path) -> tuple[int, float, dict[str, int]]:
    home = workdir / "h"
    command = [sys.executable, "-m", "services.management", "replay", "--from", first.isoformat(),
               "--to", last.isoformat(), "--prices", str(prices), "--home", str(home)]  # fmt: skip
    env = dict(os.environ, TRADING_HOME=str(workdir / "unused"), PYTHONPATH=str(ROOT))
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(
            f"the replay failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    report = orjson.loads((home / "report" / "report.json").read_bytes())
    run = report["run"]
    return run["sessions"], run["wall_s"], report["predictions"]["signals"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--from", dest="first", type=date.fromisoformat, default=date(2019, 1, 1))
    parser.add_argument("--to", dest="last", type=date.fromisoformat, default=date(2019, 3, 31))
    parser.add_argument("--prices", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="at-bench-", dir="/tmp") as temp:
        workdir = Path(temp)
        prices = args.prices or (SHARED if (SHARED / "CBA.AX.csv").exists() else None)
        label = ""
        if prices is None:
            prices, label = workdir / "prices", " (SYNTHETIC market)"
            write_synthetic_market(prices, date(args.first.year - 3, 1, 1), args.last, SYMBOLS)
        sessions, stack_s, stack_signals = through_stack(prices, args.first, args.last, workdir)
        base_sessions, base_s, base_signals = in_process(prices, args.first, args.last)
    stack_rate, base_rate = sessions / stack_s, base_sessions / base_s
    print(f"replay {args.first} to {args.last}, {sessions} sessions, Big 4{label}")
    print(f"  whole stack:  {stack_rate:7.2f} days/s  ({stack_s:.1f} s)  signals {stack_signals}")
    print(
        f"  in process:   {base_rate:7.2f} days/s  ({base_s:.1f} s)  signals {base_signals} (technicals only)"
    )
    print(f"  ratio: the stack takes {base_rate / stack_rate:.2f}x the time of the same decisions in-process")


if __name__ == "__main__":
    main()
