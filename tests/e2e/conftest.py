"""What the end-to-end tests share: a market of prices and a replay of the whole stack through it,
undisturbed, run once for the session (the replay tests and the back-test's parity tests use it)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.base.config import TradingHome
from services.market_data.synthetic import write_synthetic_market

ROOT = Path(__file__).resolve().parents[2]
SHARED_PRICES = ROOT.parent / "shared" / "data" / "prices"
SYMBOLS = ("CBA.AX", "WBC.AX", "ANZ.AX", "NAB.AX")
# A calibrated probability of 0.6 is rare on these banks: lower paper trading's bar so the ledgers
# have trades to compare, with the design's exits (5% and 10%), which a quarter's moves reach.
# Restarts are quick, and no number of them makes a service FATAL.
CONFIG = """
[paper_trading]
buy_confidence = 0.35
stop_loss = 0.05
take_profit = 0.10

[manager]
backoff_initial_s = 0.2
backoff_max_s = 1.0
max_failures = 1000
"""


@dataclass(frozen=True)
class Market:
    prices: Path
    start: date
    end: date


@pytest.fixture(scope="session")
def market() -> Iterator[Market]:
    if all((SHARED_PRICES / f"{s}.csv").is_file() for s in (*SYMBOLS, "^AXJO")):
        yield Market(SHARED_PRICES, date(2019, 1, 1), date(2019, 3, 31))
        return
    directory = Path(tempfile.mkdtemp(prefix="at-prices-", dir="/tmp"))
    write_synthetic_market(directory, date(2016, 1, 1), date(2019, 3, 31), SYMBOLS)
    yield Market(directory, date(2019, 1, 1), date(2019, 3, 31))
    shutil.rmtree(directory, ignore_errors=True)


def tradingctl(command: str, market: Market, *extra: str) -> list[str]:
    """The command line of ``tradingctl <command>`` over the market's prices and window."""
    window = ["--from", market.start.isoformat(), "--to", market.end.isoformat()]
    return [
        sys.executable,
        "-m",
        "services.management",
        command,
        *window,
        "--prices",
        str(market.prices),
        *extra,
    ]


def environment(trading_home: Path) -> dict[str, str]:
    """This environment, with a ``TRADING_HOME`` of its own and the project importable."""
    return dict(os.environ, TRADING_HOME=str(trading_home), PYTHONPATH=str(ROOT))


@dataclass
class Run:
    home: TradingHome
    returncode: int
    output: str
    report: dict[str, Any]

    def rows(self, service: str, query: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.home.database(service)) as conn:
            return conn.execute(query).fetchall()

    def ledger(self) -> dict[str, Any]:
        """What a paper trader owns and did, without when the processes happened to run."""
        tables = {
            "account": "starting_cents, cash_cents, realised_cents, commissions_cents FROM account",
            "fills": "symbol, side, quantity, price, market_price, price_time, value_cents, "
            "commission_cents, "
            "cost_cents, realised_cents, reason FROM fills ORDER BY id",
            "orders": "symbol, side, quantity, status, reason, origin, signal_id FROM orders ORDER BY id",
            "positions": "symbol, quantity, cost_cents, entry_price, stop_price FROM positions "
            "ORDER BY symbol",
            "equity": "day, equity_cents, cash_cents FROM equity ORDER BY day",
        }
        return {name: self.rows("paper_trading", f"SELECT {query}") for name, query in tables.items()}


def replay(
    market: Market, disturb: Callable[[TradingHome, subprocess.Popen[bytes]], None] | None = None
) -> Run:
    root = Path(tempfile.mkdtemp(prefix="at-e2e-", dir="/tmp"))
    home = TradingHome(root / "h")
    config = root / "extra.toml"
    config.write_text(CONFIG)
    command = tradingctl("replay", market, "--home", str(home.root), "--config", str(config))
    env = environment(root / "unused")
    log = root / "replay.out"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            if disturb is not None:
                disturb(home, process)
            process.wait(timeout=800)
        finally:
            if process.poll() is None:
                process.kill()
                subprocess.run([sys.executable, "-m", "services.management", "stop"], env=env | {
                    "TRADING_HOME": str(home.root)}, timeout=60, check=False)  # fmt: skip
    report_file = home.root / "report" / "report.json"
    report = orjson.loads(report_file.read_bytes()) if report_file.exists() else {}
    return Run(home, process.returncode, log.read_text(errors="replace"), report)


@pytest.fixture(scope="session")
def undisturbed(market: Market) -> Iterator[Run]:
    run = replay(market)
    yield run
    shutil.rmtree(run.home.root.parent, ignore_errors=True)
