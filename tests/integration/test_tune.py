"""Walk-forward tuning: folds, grids and settings checked, the deflated Sharpe ratio, and a sweep
that gives the same results serially and on a real Dask LocalCluster of 2 workers."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest
from dask.distributed import Client, LocalCluster

from services.backtest import tune as tuning
from services.backtest.fast import BacktestPlan, prepare
from services.backtest.report import read_prices
from services.base.errors import ConfigError
from services.market_data.synthetic import write_synthetic_market
from services.prediction.config import PredictionConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SYMBOLS = ("CBA.AX", "WBC.AX")
# The BUY bar is a calibrated probability; each ML weight has calibrations of its own.
GRID = {"paper_trading.buy_confidence": [0.50, 0.55], "prediction.weights.ml": [0.3, 0.5]}


def test_anchored_and_rolling_folds() -> None:
    anchored = tuning.folds(date(2010, 1, 1), date(2013, 6, 30), 2, 1, "anchored")
    assert [(f.train.start, f.train.end, f.test.start, f.test.end) for f in anchored] == [
        (date(2010, 1, 1), date(2011, 12, 31), date(2012, 1, 1), date(2012, 12, 31)),
        (date(2010, 1, 1), date(2012, 12, 31), date(2013, 1, 1), date(2013, 6, 30)),
    ]
    rolling = tuning.folds(date(2010, 1, 1), date(2013, 6, 30), 2, 1, "rolling")
    assert [f.train.start for f in rolling] == [date(2010, 1, 1), date(2011, 1, 1)]
    with pytest.raises(ConfigError, match="shorter than one training window"):
        tuning.folds(date(2010, 1, 1), date(2011, 6, 30), 2, 1, "anchored")


def test_a_grid_sweeps_only_what_it_may_and_each_setting_is_checked() -> None:
    assert len(tuning.grid_settings(tuning.DEFAULT_GRID)) == 288
    with pytest.raises(ConfigError, match=r"cannot sweep 'prediction\.technical_weights\.rsi'"):
        tuning.grid_settings({"prediction.technical_weights.rsi": [0.1]})
    with pytest.raises(ConfigError, match="buy_confidence must be in"):
        tuning.configs({}, {"paper_trading.buy_confidence": 1.5})
    # Volume alone reaches 65 points of 100, a score of 0.6: a bear BUY at 0.7 would never come.
    volume_only = {
        "prediction": {"technical_weights": {"rsi": 0, "macd": 0, "bollinger": 0, "trend": 0, "volume": 1}}
    }
    with pytest.raises(ConfigError, match="unreachable"):
        tuning.configs(volume_only, {"prediction.buy_threshold.bear": 0.7})
    # One regime's threshold changes that one; the others stay as configured.
    prediction, _paper = tuning.configs({}, {"prediction.buy_threshold.bull": 0.15})
    defaults = PredictionConfig().buy_threshold
    assert dict(prediction.buy_threshold) == {**defaults, "bull": 0.15}


def test_the_deflated_sharpe_ratio_falls_with_the_settings_tried() -> None:
    returns = list(np.random.default_rng(3).normal(0.0008, 0.01, 750))
    alone = tuning.deflated_sharpe(returns, trials=1, trial_variance=0.0)["value"]
    many = tuning.deflated_sharpe(returns, trials=1000, trial_variance=0.002)["value"]
    assert 0.5 < alone <= 1.0
    assert many < alone
    assert tuning.deflated_sharpe([0.0] * 10, trials=5, trial_variance=0.1)["value"] is None


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> tuple[BacktestPlan, Path]:
    root = tmp_path_factory.mktemp("tune")
    write_synthetic_market(root / "prices", date(2015, 1, 1), date(2019, 6, 28), SYMBOLS, seed=5)
    plan = BacktestPlan(
        start=date(2017, 1, 1),
        end=date(2019, 6, 28),
        prices=root / "prices",
        symbols=SYMBOLS,
        model_cache=root / "cache",
    )
    return plan, root


def test_a_sweep_on_a_local_dask_cluster_equals_the_serial_one(market: tuple[BacktestPlan, Path]) -> None:
    plan, _root = market
    prepared = prepare(plan, plan.settings())
    prices = read_prices(plan.prices, plan.symbols)
    cuts = tuning.folds(plan.start, plan.end, 1, 1, "anchored")
    alone = tuning.tune(plan, prepared, GRID, cuts, prices)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        spread = tuning.tune(plan, prepared, GRID, cuts, prices, tuning.on_dask(client))
    assert spread == alone
    assert len(alone.folds) == 2
    assert [f["test_window"] for f in alone.folds] == [
        ["2018-01-01", "2018-12-31"],
        ["2019-01-01", "2019-06-28"],
    ]
    assert all(fold["chosen"] in alone.settings for fold in alone.folds)
    out = alone.out_of_sample
    assert out["from"] >= "2018-01-02"  # nothing of the training window is reported
    tested = sum(len(prepared.calendar.sessions_between(f.test.start, f.test.end)) for f in cuts)
    assert out["sessions"] == tested  # every session of the test windows, and only those
    assert out["deflated_sharpe"]["trials"] == 4
    assert out["reading"]
    assert alone.adopt == alone.folds[-1]["chosen"]
