"""Signals through the stream into the paper ledger, against the ledger alone, in the same run.

    .venv/bin/python bench/paper_trading_bench.py [--signals 10000]

A stand-in market data service answers prices on its socket; the paper trading service runs on a
clock stopped inside a session, consumes ``--signals`` BUY/SELL signals (alternating per symbol)
from the ``trading:signals`` stream, fills each against the price, and publishes
``trade_executed``. Measured: fills per second, and the time from a signal's XADD to its
``trade_executed`` event (which follows the fill's commit), p50 and p99. Baseline: the same
fills applied straight to the ledger functions on one SQLite connection (no Redis, no RPC, no
rules), so the ratio is the cost of the service around the ledger.

The signals and prices are generated benchmark input in a temporary TRADING_HOME.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
import redis.asyncio as aioredis

from services.base.clock import SimulatedClock
from services.base.config import TradingHome, load_settings
from services.base.db import connect, migrate, transaction
from services.base.events import CHANNEL_PREFIX
from services.base.redis_server import EmbeddedRedis
from services.paper_trading import ledger
from services.paper_trading.paper_trading_service import PaperTradingService
from services.paper_trading.schema import MIGRATIONS
from tests.paper_fakes import PriceBoard, send, signal_event

NOW = datetime(2026, 11, 20, 0, 30, tzinfo=UTC)
SYMBOLS = ("CBA.AX", "WBC.AX", "ANZ.AX", "NAB.AX")
PRICES = {"CBA.AX": 101.37, "WBC.AX": 27.91, "ANZ.AX": 25.13, "NAB.AX": 33.08}
ALONE = 200
# No costs, so 5,000 round trips leave the account as it was and every signal fills.
CONFIG = """
[paper_trading]
max_daily_loss = 1000000000.0
commission_fixed = 0.0
commission_rate = 0.0
slippage_bps = 0.0
check_interval_s = 3600.0
"""


def direct_ledger(root: Path, count: int) -> float:
    """Fills per second applying the same alternating buys and sells to the ledger directly."""
    conn = connect(root / "direct.db", synchronous="FULL")
    migrate(conn, MIGRATIONS)
    with transaction(conn):
        ledger.open_account(conn, 10_000_000, NOW)
    started = time.perf_counter()
    for n in range(count):
        symbol = SYMBOLS[n % 4]
        price = Decimal(str(PRICES[symbol]))
        with transaction(conn):
            side = "BUY" if (n // 4) % 2 == 0 else "SELL"
            order = ledger.new_order(conn, symbol=symbol, side=side, quantity=40, origin="signal", now=NOW)
            common = {"order_id": order, "symbol": symbol, "quantity": 40, "price": price,
                      "market_price": price, "price_time": "2026-11-20", "commission": 1000,
                      "reason": "signal", "now": NOW}  # fmt: skip
            if side == "BUY":
                ledger.buy(conn, stop_loss=Decimal("0.05"), take_profit=Decimal("0.1"), **common)
            else:
                ledger.sell(conn, **common)
    rate = count / (time.perf_counter() - started)
    conn.close()
    return rate


async def main(count: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="pb-", dir="/tmp"))
    home = TradingHome(root)
    home.create()
    home.config_file.write_text(CONFIG)
    redis = EmbeddedRedis(home)
    try:
        redis.start()
        settings = load_settings(home, env={"REDIS_URL": redis.url})
        PriceBoard.prices = {s: (p, "2026-11-20") for s, p in PRICES.items()}
        board = PriceBoard(settings)
        service = PaperTradingService(settings, clock=SimulatedClock(NOW))
        await board.start()
        await service.start()
        listener = aioredis.Redis.from_url(redis.url)
        pubsub = listener.pubsub()
        await pubsub.subscribe(f"{CHANNEL_PREFIX}trade_executed")
        await pubsub.get_message(timeout=1.0)
        try:
            events = [
                signal_event(n, SYMBOLS[n % 4], "BUY" if (n // 4) % 2 == 0 else "SELL") for n in range(count)
            ]
            sent: dict[str, float] = {}
            latencies: list[float] = []
            started = time.perf_counter()
            for start in range(0, count, 500):
                chunk = events[start : start + 500]
                now = time.perf_counter()
                sent.update((e.id, now) for e in chunk)
                await send(listener, chunk)
            while len(latencies) < count:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=30)
                if message is None:
                    break
                data = orjson.loads(message["data"])["data"]
                latencies.append(time.perf_counter() - sent[data["signal_id"]])
            elapsed = time.perf_counter() - started
            # One at a time: the latency of a signal with nothing queued before it.
            alone: list[float] = []
            for n in range(count, count + ALONE):
                event = signal_event(n, SYMBOLS[n % 4], "BUY" if (n // 4) % 2 == 0 else "SELL")
                begun = time.perf_counter()
                await send(listener, [event])
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=30)
                if message is None:
                    break
                alone.append(time.perf_counter() - begun)
        finally:
            await pubsub.aclose()
            await listener.aclose()
            await service.stop()
            await board.stop()
        with sqlite3.connect(home.database("paper_trading")) as conn:
            ledger.reconcile(conn)
            fills = conn.execute("SELECT count(*) FROM fills").fetchone()[0] - len(alone)
        direct = direct_ledger(root, count)
        latencies.sort()
        print(f"{count} signals through trading:signals -> {fills} fills in {elapsed:.1f} s")
        print(f"  through the service   {fills / elapsed:8.0f} fills/s")
        print(
            f"  signal -> fill p50    {statistics.median(latencies) * 1e3:8.1f} ms (XADD to trade_executed)"
        )
        print(f"  signal -> fill p99    {latencies[int(len(latencies) * 0.99) - 1] * 1e3:8.1f} ms")
        print(f"  ledger alone          {direct:8.0f} fills/s (same fills, one connection, synchronous=FULL)")
        print(f"  ratio                 {direct / (fills / elapsed):8.1f}x (ledger alone / service)")
        print("  (p50/p99 above include the wait behind earlier signals: all are sent at once)")
        alone.sort()
        print(f"  one signal at a time ({len(alone)}): p50 {statistics.median(alone) * 1e3:.1f} ms, "
              f"p99 {alone[int(len(alone) * 0.99) - 1] * 1e3:.1f} ms")  # fmt: skip
    finally:
        redis.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--signals", type=int, default=10_000)
    asyncio.run(main(parser.parse_args().signals))
