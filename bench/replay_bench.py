"""Simulated trading days per second for the Big 4 through the whole stack, against the same
decision logic called in one process, in the same run.

    .venv/bin/python bench/replay_bench.py [--from 2019-01-01] [--to 2019-03-31] [--prices DIR]

The stack: ``tradingctl replay`` (manager, Redis, every service as its own process, signals over
the stream, the driver stepping every timer). Its days/s are the sessions replayed over the time
the driver ran (start-up, training and the report are not counted).

The baseline: for every session, the two daily prediction rounds (09:30 on the last close, 17:00
on the day's close) for each symbol, called directly: the replay source's visibility, market
data's indicators, volume figures and market context, the ML ensemble of the models the stack
trained (features on the closed sessions, each model's P(up), the ensemble's answer), and
prediction's inputs (sentiment as a replay's sentiment service answers: no news) and decision.
No RPC, no Redis, no SQLite, no scheduler and no paper ledger: the baseline does less than the
stack, so the ratio is an upper bound of what the architecture costs. Its signals count each
decision once, as the stack stores a repeat on the same inputs once: the two counts agree when
both made the same decisions. Without ``--prices`` (and the shared data absent) both run on a
generated, SYNTHETIC market.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.asx.calendar import SYDNEY, AsxCalendar  # noqa: E402
from services.asx.market_hours import sydney_time  # noqa: E402
from services.base.errors import InvalidParams  # noqa: E402
from services.market_data.config import MarketDataConfig  # noqa: E402
from services.market_data.context import market_context as context_figures  # noqa: E402
from services.market_data.csv_files import ClockedCsvSource  # noqa: E402
from services.market_data.indicators import indicators, volume_figures  # noqa: E402
from services.market_data.synthetic import write_synthetic_market  # noqa: E402
from services.ml_model.config import MlModelConfig  # noqa: E402
from services.ml_model.features import check_row, feature_frame, latest_row  # noqa: E402
from services.ml_model.ml_model_service import ensemble_answer, model_probabilities  # noqa: E402
from services.ml_model.registry import POOLED, LoadedModel, ModelRegistry  # noqa: E402
from services.prediction.config import PredictionConfig  # noqa: E402
from services.prediction.decision import (  # noqa: E402
    Input,
    context_for,
    decide,
    market_context,
    ml_input,
    sentiment_input,
    technical_input,
    unavailable,
)

SYMBOLS = ("CBA.AX", "WBC.AX", "ANZ.AX", "NAB.AX")
SHARED = ROOT.parent / "shared" / "data" / "prices"
ROUNDS = ("09:30", "17:00")
# What the sentiment service answers in a replay, which has no news source.
NO_NEWS = {"source": "none", "confidence": 0.0, "reason": "no news source in a replay"}


def serving_models(models: Path, symbol: str, ml: MlModelConfig) -> tuple[str, list[LoadedModel]]:
    """The models the ml_model service would serve ``symbol`` with: its own, else the pooled ones."""
    registry = ModelRegistry(models)
    label = {"horizon_days": ml.horizon, "threshold": ml.threshold}
    for scope in (symbol, POOLED):
        if scope in registry.scopes():
            return scope, [registry.load(scope, name, label=label) for name in registry.model_names(scope)]
    raise SystemExit(f"no model for {symbol} in {models}")


def ml_answer(
    source: ClockedCsvSource, calendar: AsxCalendar, ml: MlModelConfig, symbol: str, now: datetime,
    models: tuple[str, list[LoadedModel]],
) -> dict[str, Any]:  # fmt: skip
    """What ``get_ensemble_prediction`` answers: features of the last closed session's bars."""
    session = calendar.last_closed(now)
    assert session is not None
    since = (now.astimezone(SYDNEY).date() - timedelta(days=ml.history_days)).isoformat()

    def closed(name: str) -> pd.DataFrame:
        bars = source.visible(name, now)
        return bars[(bars.index >= since) & (bars.index <= session.date.isoformat())]

    as_of, features = latest_row(feature_frame(closed(symbol), closed(ml.market_symbol)))
    row = check_row(features)[None, :]
    scope, members = models
    p_up = [float(model_probabilities(m, row)[0]) for m in members]
    return ensemble_answer(symbol, scope, date.fromisoformat(as_of), members, p_up, ml.horizon)


def ml_or_unavailable(
    source: ClockedCsvSource, calendar: AsxCalendar, ml: MlModelConfig, symbol: str, now: datetime,
    models: tuple[str, list[LoadedModel]],
) -> Input:  # fmt: skip
    """The ML input, or none when the bars give no usable features (as ml_model refuses then)."""
    try:
        return ml_input(ml_answer(source, calendar, ml, symbol, now, models))
    except (ValueError, InvalidParams) as exc:
        return unavailable("ml", f"ml unavailable: {exc}")


def in_process(prices: Path, models: Path, first: date, last: date) -> tuple[int, float, dict[str, int]]:
    calendar = AsxCalendar()
    now = [datetime.now()]
    source = ClockedCsvSource(prices, calendar, lambda: now[0])
    md, pred, ml = MarketDataConfig(), PredictionConfig(), MlModelConfig()
    serving = {symbol: serving_models(models, symbol, ml) for symbol in SYMBOLS}
    sessions = calendar.sessions_between(first, last)
    counts = {"BUY": 0, "HOLD": 0, "SELL": 0}
    seen: set[tuple[Any, ...]] = set()
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
                    "sessions_behind": calendar.sessions_after(date.fromisoformat(bars.index[-1]), now[0]),
                }
                inputs = {
                    "technical": technical_input(answer, pred),
                    "sentiment": sentiment_input(NO_NEWS, pred),
                    "ml": ml_or_unavailable(source, calendar, ml, symbol, now[0], serving[symbol]),
                }
                decision = decide(inputs, context_for(context, answer["price_time"], pred), pred)
                made = (symbol, answer["price_time"], inputs["ml"].at, decision.signal, decision.combined)
                if made not in seen:
                    seen.add(made)
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
        base_sessions, base_s, base_signals = in_process(
            prices, workdir / "h" / "models", args.first, args.last
        )
    stack_rate, base_rate = sessions / stack_s, base_sessions / base_s
    print(f"replay {args.first} to {args.last}, {sessions} sessions, Big 4{label}")
    print(f"  whole stack:  {stack_rate:7.2f} days/s  ({stack_s:.1f} s)  signals {stack_signals}")
    print(
        f"  in process:   {base_rate:7.2f} days/s  ({base_s:.1f} s)  signals {base_signals} (technicals, ML)"
    )
    print(f"  ratio: the stack takes {base_rate / stack_rate:.2f}x the time of the same decisions in-process")


if __name__ == "__main__":
    main()
