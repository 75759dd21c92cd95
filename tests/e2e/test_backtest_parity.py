"""Parity: ``tradingctl backtest`` (one process, no services) makes the same decisions and the same
fills as ``tradingctl replay`` (the whole stack on a simulated clock) on the same prices, config
and window: each signal's symbol, time, signal, calibrated probability, cases, confidence and score,
each fill's time, quantity, price, commission and the cash after it. A difference fails with the
first row that differs.

Both run with paper trading's bar lowered so that fills happen, and with the calibration the
stack uses (the shipped one): on 2019 Q1 of the shared prices (the replay the other acceptance
tests share), and on a generated market.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.market_data.synthetic import write_synthetic_market
from tests.e2e.conftest import CONFIG, ROOT, SYMBOLS, Market, Run, environment, replay, tradingctl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SIGNAL_FIELDS = ("time", "symbol", "price_time", "signal", "probability", "cases", "calibration")
SIGNAL_FIELDS += ("regime", "price", "degraded")
TRADE_FIELDS = ("time", "symbol", "side", "quantity", "price", "commission", "reason", "cash")


def backtest(market: Market, workdir: Path) -> Path:
    """The back-test's report directory for ``market`` with the replay's config."""
    config = workdir / "extra.toml"
    config.write_text(CONFIG)
    out = workdir / "report"
    command = tradingctl(
        "backtest", market, "--config", str(config), "--out", str(out), "--calibration", "shipped"
    )
    env = environment(workdir / "home")
    done = subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_rows(
    what: str,
    stack: Sequence[Mapping[str, str]],
    fast: Sequence[Mapping[str, str]],
    fields: Sequence[str],
    close: Sequence[str] = (),
) -> None:
    """Row by row: ``fields`` equal as written, ``close`` equal as numbers to 1e-9."""
    for i, (a, b) in enumerate(zip(stack, fast, strict=False)):
        same = all(a[f] == b[f] for f in fields) and all(
            abs(float(a[f]) - float(b[f])) <= 1e-9 for f in close
        )
        if not same:
            shown = (*fields, *close)
            pytest.fail(
                f"{what} row {i} differs:\n  replay:    {[a[f] for f in shown]}\n"
                f"  back-test: {[b[f] for f in shown]}"
            )
    assert len(stack) == len(fast), f"{what}: the replay has {len(stack)} rows, the back-test {len(fast)}"


def assert_parity(replayed: Path, tested: Path) -> dict[str, Any]:
    assert_same_rows(
        "signals.csv",
        rows(replayed / "signals.csv"),
        rows(tested / "signals.csv"),
        SIGNAL_FIELDS,
        close=("confidence", "combined"),
    )
    assert_same_rows("trades.csv", rows(replayed / "trades.csv"), rows(tested / "trades.csv"), TRADE_FIELDS)
    stack = orjson.loads((replayed / "report.json").read_bytes())
    fast = orjson.loads((tested / "report.json").read_bytes())
    for part in (
        "signals",
        "trades",
        "portfolio",
        "performance",
        "benchmarks",
        "excess",
        "predictions",
        "reliability",
        "calibration",
    ):
        assert stack[part] == fast[part], part
    return fast


def test_the_backtest_makes_the_replays_decisions_and_fills(market: Market, undisturbed: Run) -> None:
    with tempfile.TemporaryDirectory(prefix="at-parity-", dir="/tmp") as temp:
        report = assert_parity(undisturbed.home.root / "report", backtest(market, Path(temp)))
    assert report["trades"] > 0, "no fill to compare"
    assert report["signals"]["BUY"] > 0
    # The shipped calibration was fitted on 2010-2022, these days included: the report says so.
    assert report["calibration"]["in_sample"] is True


@pytest.fixture(scope="module")
def generated() -> Iterator[tuple[Market, Run]]:
    directory = Path(tempfile.mkdtemp(prefix="at-generated-", dir="/tmp"))
    write_synthetic_market(directory / "prices", date(2015, 6, 1), date(2019, 6, 30), SYMBOLS, seed=11)
    # 2019 Q1 of this market has signal fills, a stop-loss and a take-profit.
    market = Market(directory / "prices", date(2019, 1, 1), date(2019, 3, 31))
    run = replay(market)
    assert run.returncode == 0, run.output[-3000:]
    yield market, run
    shutil.rmtree(run.home.root.parent, ignore_errors=True)
    shutil.rmtree(directory, ignore_errors=True)


def test_parity_on_a_generated_market(generated: tuple[Market, Run]) -> None:
    market, run = generated
    with tempfile.TemporaryDirectory(prefix="at-parity-", dir="/tmp") as temp:
        tested = backtest(market, Path(temp))
        report = assert_parity(run.home.root / "report", tested)
        reasons = {row["reason"] for row in rows(tested / "trades.csv")}
    assert report["trades"] > 0, "no fill to compare"
    assert {"signal", "stop_loss", "take_profit"} <= reasons  # every kind of fill is compared
