"""Walk-forward tuning's speed: the default grid over 2010-2022 on the Big 4, with one worker and
with a local Dask cluster, measured in one run.

    .venv/bin/python bench/tune_bench.py [--prices DIR] [--workers N]

One fold: trained on 2010-01-01..2018-12-31, tested on 2019-01-01..2022-09-20; each of the
default grid's 288 settings is one back-test of the training window (a Dask task), then the chosen
one is tested. The inputs (prices, models, each symbol's decision inputs) are prepared once,
before either timing. Prints settings a second for each and the speed-up, and checks that both
chose the same setting with the same results. Without the shared prices, a generated (SYNTHETIC)
market.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dask.distributed import Client, LocalCluster  # noqa: E402

from services.backtest import tune as tuning  # noqa: E402
from services.backtest.fast import BacktestPlan, prepare  # noqa: E402
from services.backtest.report import read_prices  # noqa: E402
from services.market_data.synthetic import write_synthetic_market  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "prices"
BIG4 = ("CBA.AX", "WBC.AX", "ANZ.AX", "NAB.AX")
START, END = date(2010, 1, 1), date(2022, 9, 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prices", type=Path)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="at-bench-", dir="/tmp") as temp:
        prices, label = args.prices or SHARED, ""
        if not (prices / "CBA.AX.csv").is_file():
            prices, label = Path(temp) / "prices", " (SYNTHETIC market)"
            write_synthetic_market(prices, date(2005, 1, 1), END, BIG4)
        plan = BacktestPlan(start=START, end=END, prices=prices, model_cache=Path(temp) / "cache")
        prepared = prepare(plan, plan.settings())
        bars = read_prices(plan.prices, plan.symbols)
        cuts = tuning.folds(START, END, 9, 4, "anchored")
        settings = len(tuning.grid_settings(tuning.DEFAULT_GRID))

        started = time.perf_counter()
        alone = tuning.tune(plan, prepared, tuning.DEFAULT_GRID, cuts, bars)
        serial_s = time.perf_counter() - started
        with (
            LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0")
            as cluster,
            Client(cluster) as client,
        ):  # fmt: skip
            started = time.perf_counter()
            spread = tuning.tune(plan, prepared, tuning.DEFAULT_GRID, cuts, bars, tuning.on_dask(client))
            cluster_s = time.perf_counter() - started
    print(f"walk-forward tuning {START} to {END}, Big 4{label}: {settings} settings, {len(cuts)} fold")
    print(f"  1 worker (serial):      {serial_s:6.1f} s  {settings / serial_s:5.2f} settings/s")
    print(
        f"  {args.workers} Dask workers (local): {cluster_s:6.1f} s  {settings / cluster_s:5.2f} settings/s"
    )
    print(f"  speed-up: {serial_s / cluster_s:.2f}x; same results: {spread == alone}")


if __name__ == "__main__":
    main()
