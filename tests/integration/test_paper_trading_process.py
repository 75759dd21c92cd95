"""Killing the paper trading process mid-stream loses nothing and applies nothing twice: the ledger
after a SIGKILL and restart equals the ledger of an undisturbed run of the same signals."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from services.base.config import TradingHome
from services.base.redis_server import EmbeddedRedis
from tests.conftest import ROOT, ServiceProcess, service_env
from tests.paper_fakes import send, signal_event

FAKES = Path(__file__).resolve().parents[1] / "paper_fakes.py"
PRICES = {"CBA.AX": [101.37, "2026-11-20"], "WBC.AX": [27.91, "2026-11-20"],
          "ANZ.AX": [25.13, "2026-11-20"], "NAB.AX": [33.08, "2026-11-20"]}  # fmt: skip
NOW = "2026-11-20T00:30:00+00:00"  # the ASX is open
SIGNALS = [
    signal_event(n, symbol, "BUY" if (n // 4) % 2 == 0 else "SELL", 0.9)
    for n, symbol in enumerate(["CBA.AX", "WBC.AX", "ANZ.AX", "NAB.AX"] * 75)
]


def applied(home: TradingHome) -> int:
    try:
        with sqlite3.connect(f"file:{home.database('paper_trading')}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM applied_events").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def settled(home: TradingHome) -> bool:
    """Every signal applied, and no order still waiting for its fill."""
    if applied(home) < len(SIGNALS):
        return False
    with sqlite3.connect(f"file:{home.database('paper_trading')}?mode=ro", uri=True, timeout=5) as conn:
        return conn.execute("SELECT count(*) FROM orders WHERE status = 'pending'").fetchone()[0] == 0


def book(home: TradingHome) -> dict[str, Any]:
    with sqlite3.connect(home.database("paper_trading"), timeout=5) as conn:
        return {
            "account": conn.execute(
                "SELECT starting_cents, cash_cents, realised_cents, commissions_cents FROM account"
            ).fetchone(),
            "positions": conn.execute(
                "SELECT symbol, quantity, cost_cents, entry_price FROM positions ORDER BY symbol"
            ).fetchall(),
            "fills": conn.execute(
                "SELECT symbol, side, quantity, price, value_cents, commission_cents, realised_cents "
                "FROM fills ORDER BY id"
            ).fetchall(),
            "orders": conn.execute("SELECT status, count(*) FROM orders GROUP BY status").fetchall(),
            "reasons": conn.execute("SELECT reason, count(*) FROM orders GROUP BY reason").fetchall(),
            "applied": conn.execute("SELECT count(*) FROM applied_events").fetchone()[0],
        }  # fmt: skip


def start(home: TradingHome, redis: EmbeddedRedis) -> ServiceProcess:
    env = {"REDIS_URL": redis.url, "PAPER_ROLE": "paper_trading", "PAPER_NOW": NOW}
    service = ServiceProcess(home, FAKES, name="paper_trading", **env)
    service.wait_ready(timeout=60)
    return service


async def run(home: TradingHome, redis: EmbeddedRedis, *, kill_after: int | None) -> dict[str, Any]:
    board = ServiceProcess(home, FAKES, name="market_data", REDIS_URL=redis.url,
                           PAPER_PRICES=orjson.dumps(PRICES).decode())  # fmt: skip
    board.wait_ready()
    trader = start(home, redis)
    connection = aioredis.Redis.from_url(redis.url)
    try:
        await send(connection, SIGNALS)
        if kill_after is not None:
            deadline = time.monotonic() + 60
            while applied(home) < kill_after and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            trader.process.send_signal(signal.SIGKILL)
            trader.process.wait()
            trader = start(home, redis)
        deadline = time.monotonic() + 90
        while not settled(home) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return book(home)
    finally:
        await connection.aclose()
        trader.stop()
        board.stop()


async def test_a_killed_process_resumes_to_the_same_ledger(home: TradingHome, redis: EmbeddedRedis) -> None:
    killed = await run(home, redis, kill_after=len(SIGNALS) // 3)
    other = TradingHome(Path(tempfile.mkdtemp(prefix="at-", dir="/tmp")))
    other.create()
    other_redis = EmbeddedRedis(other)
    other_redis.start()
    try:
        undisturbed = await run(other, other_redis, kill_after=None)
    finally:
        other_redis.stop()
        shutil.rmtree(other.root, ignore_errors=True)
    assert undisturbed["applied"] == killed["applied"] == len(SIGNALS)
    # 75 round trips pay enough commission and slippage to reach the daily loss limit near the end.
    statuses = dict(undisturbed["orders"])
    assert statuses["filled"] > 280
    assert all(
        reason is None or reason.startswith("max_daily_loss: ") for reason, _n in undisturbed["reasons"]
    )
    assert killed == undisturbed
    starting, cash, realised, commissions = killed["account"]
    cost = sum(row[2] for row in killed["positions"])
    assert starting + realised - commissions == cash + cost


@pytest.mark.parametrize("damage", ["empty", "corrupt"])
def test_a_database_emptied_or_damaged_stops_start_up_naming_it_and_is_left_as_it_is(
    home: TradingHome, damage: str
) -> None:
    from services.base.storage import open_service_database

    open_service_database(home, "paper_trading").close()  # the first start made it
    path = home.database("paper_trading")
    path.write_bytes(b"" if damage == "empty" else b"garbage, not a database page " * 300)
    before = path.read_bytes()
    done = subprocess.run(
        [sys.executable, "-m", "services.paper_trading"],
        env=service_env(home),
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 3  # no restart can fix it: the manager goes FATAL at once
    said = done.stderr.decode()
    assert f"paper_trading could not start: {path}" in said
    assert str(home.backups) in said  # and what to do
    assert path.read_bytes() == before  # no fresh $100,000 account in its place
