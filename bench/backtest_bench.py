"""The fast back-test against the stack replay and against a floor, measured in one run.

    .venv/bin/python bench/backtest_bench.py [--prices DIR] [--quick]

Prints, on the shared prices (a generated, SYNTHETIC market without them):

- the back-test of 2010-01-01..2022-09-20 on the Big 4 with the default config: its time with the
  models from the cache (training, done first, reported on its own line);
- the stack replay (``tradingctl replay``, every service a process) of 2019 Q1, per session;
- the floor: TA-Lib's indicators and one ``predict_proba`` over the same rows, which any
  back-test of these signals must do;
- the back-test's growth with the universe: 4, 50 and 200 symbols of a generated market over
  2019-2021 (one pooled logistic model serves them all; its training is not counted), per symbol.

Ratios: the replay's time per session over the back-test's; the back-test's time over the floor.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.backtest.fast import BacktestPlan, read_prices, run_backtest, trained_models  # noqa: E402
from services.market_data.indicators import indicator_series  # noqa: E402
from services.market_data.synthetic import write_synthetic_market  # noqa: E402
from services.ml_model.features import FEATURE_NAMES, feature_frame  # noqa: E402
from services.ml_model.ml_model_service import model_probabilities  # noqa: E402

BIG4 = ("CBA.AX", "WBC.AX", "ANZ.AX", "NAB.AX")
SHARED = ROOT.parent / "shared" / "data" / "prices"
LONG = (date(2010, 1, 1), date(2022, 9, 20))
REPLAY = (date(2019, 1, 1), date(2019, 3, 31))


def timed_backtest(plan: BacktestPlan) -> tuple[float, int, float]:
    """(seconds without training, sessions, training seconds) of a back-test whose models are
    trained first into the plan's cache."""
    config = plan.settings().ml_model
    started = time.perf_counter()
    bars = read_prices(plan.prices, (*plan.symbols, config.market_symbol), plan.end)
    trained_models(plan, config, bars)
    training = time.perf_counter() - started
    started = time.perf_counter()
    run = run_backtest(plan)
    return time.perf_counter() - started, len(run.sessions), training


def floor(plan: BacktestPlan) -> float:
    """TA-Lib's indicators and features over every row, and one predict_proba over them."""
    config = plan.settings().ml_model
    bars = read_prices(plan.prices, (*plan.symbols, config.market_symbol), plan.end)
    models, _ = trained_models(plan, config, bars)
    started = time.perf_counter()
    for symbol in plan.symbols:
        frame = bars[symbol]
        done = frame[frame["close"].notna()]
        indicator_series(*(done[c].to_numpy(float) for c in ("close", "high", "low")))
        rows = feature_frame(frame, bars[config.market_symbol])[list(FEATURE_NAMES)].dropna().to_numpy(float)
        for member in models[symbol].members:
            model_probabilities(member, rows)
    return time.perf_counter() - started


def replay_per_session(prices: Path, workdir: Path) -> float:
    home = workdir / "replay"
    command = [
        sys.executable,
        "-m",
        "services.management",
        "replay",
        "--from",
        REPLAY[0].isoformat(),
        "--to",
        REPLAY[1].isoformat(),
        "--prices",
        str(prices),
        "--home",
        str(home),
    ]
    env = dict(os.environ, TRADING_HOME=str(workdir / "unused"), PYTHONPATH=str(ROOT))
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(
            f"the replay failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    run = orjson.loads((home / "report" / "report.json").read_bytes())["run"]
    return float(run["wall_s"]) / float(run["sessions"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prices", type=Path)
    parser.add_argument("--quick", action="store_true", help="leave out the replay and the 200 symbols")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="at-bench-", dir="/tmp") as temp:
        workdir = Path(temp)
        prices, label = args.prices or SHARED, ""
        if not (prices / "CBA.AX.csv").is_file():
            prices, label = workdir / "prices", " (SYNTHETIC market)"
            write_synthetic_market(prices, date(2005, 1, 1), LONG[1], BIG4)
        plan = BacktestPlan(start=LONG[0], end=LONG[1], prices=prices, model_cache=workdir / "cache")
        seconds, sessions, training = timed_backtest(plan)
        floor_s = floor(plan)
        print(f"back-test {LONG[0]} to {LONG[1]}, Big 4{label}, default config")
        print(f"  training (once, then cached):  {training:6.2f} s")
        print(
            f"  back-test, models cached:      {seconds:6.2f} s  ({sessions} sessions, "
            f"{seconds / sessions * 1000:.2f} ms a session)"
        )
        ratio = seconds / floor_s
        print(f"  floor (TA-Lib + predict_proba): {floor_s:5.2f} s  -> back-test / floor = {ratio:.1f}x")
        if not args.quick:
            per_session = replay_per_session(prices, workdir)
            print(
                f"  stack replay {REPLAY[0]} to {REPLAY[1]}: {per_session * 1000:.0f} ms a session "
                f"-> {per_session / (seconds / sessions):.0f}x the back-test's time a session"
            )
        print("growth with the universe (generated market, 2019-2021, one pooled logistic model, one fold):")
        for count in (4, 50) if args.quick else (4, 50, 200):
            symbols = tuple(f"S{i:03d}.AX" for i in range(count))
            market = workdir / f"market-{count}"
            write_synthetic_market(market, date(2016, 1, 1), date(2021, 12, 31), symbols)
            wide = BacktestPlan(
                start=date(2019, 1, 1),
                end=date(2021, 12, 31),
                prices=market,
                symbols=symbols,
                model_cache=workdir / "cache",
                overrides={"ml_model": {"folds": 1, "per_symbol": False}},
            )
            seconds, sessions, training = timed_backtest(wide)
            print(
                f"  {count:4d} symbols: {seconds:6.2f} s ({seconds / count * 1000:.0f} ms a symbol; "
                f"training {training:.1f} s, not counted)"
            )


if __name__ == "__main__":
    main()
