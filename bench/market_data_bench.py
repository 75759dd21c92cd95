"""Technical analysis through the market data service versus raw TA-Lib calls, in one run.

    .venv/bin/python bench/market_data_bench.py [--symbols 200] [--bars 5000]

The store of a temporary TRADING_HOME is filled with 200 symbols x 5,000 daily bars (a seeded
random walk: benchmark input only, never served as prices) ending at the last closed ASX session,
so no read triggers a refresh. A real service process (``python -m services.market_data``) then
answers ``get_technical_analysis`` for every symbol, one call at a time, over its Unix socket:

- cache off: ``cache_ttl_s = 0``, so every call runs TA-Lib;
- cached: the default 5-minute answer cache.

The service reads each symbol's newest bars from SQLite into memory at start-up (and again after a
refresh changes them), so no call reads the store; the start-up load is timed separately.

The baselines, measured in the same run on the same bars held in memory: the same TA-Lib calls
(RSI, MACD, Bollinger Bands, SMA x3, EMA x2, ATR) over all 5,000 bars, and over the last
``analysis_bars`` (400) bars the service computes over (its values equal those over the whole
history to 1e-8; tests check it). Service figures: the first call per symbol, then the median of
3 rounds with the answer cache off, and with it on. ``ratio`` lines divide the service's time per
symbol by a baseline's (target: <= 2.0 against raw TA-Lib).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import orjson
import pandas as pd
import talib

from services.asx.calendar import AsxCalendar
from services.base.config import TradingHome, load_settings
from services.base.db import Database, migrate
from services.base.redis_server import EmbeddedRedis
from services.base.rpc import RpcClient
from services.market_data.bars import make_bars
from services.market_data.config import MarketDataConfig
from services.market_data.schema import MIGRATIONS
from services.market_data.store import PriceStore, SeriesState

ROUNDS = 3
ROOT = Path(__file__).resolve().parents[1]


def random_walk(rng: np.random.Generator, days: list[str]) -> pd.DataFrame:
    n = len(days)
    close = 50.0 * np.exp(np.cumsum(rng.normal(0.0002, 0.015, n)))
    spread = np.abs(rng.normal(0, 0.008, n)) * close
    return make_bars(
        days,
        {
            "open": close * (1 + rng.normal(0, 0.004, n)),
            "high": close + spread,
            "low": close - spread,
            "close": close,
            "adj_close": close,
            "volume": rng.integers(1_000_000, 5_000_000, n).astype(float),
        },
    )


async def fill_store(home: TradingHome, symbols: list[str], days: list[str]) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(7)
    database = Database(home.database("market_data"))
    await database.run(lambda conn: migrate(conn, MIGRATIONS))
    store = PriceStore(database)
    frames = {}
    now = datetime.now(UTC)
    for symbol in symbols:
        frames[symbol] = random_walk(rng, days)
        await store.save(SeriesState(symbol, "1d"), frames[symbol], "csv", now)
    database.close()
    return frames


def raw_talib(close: np.ndarray, high: np.ndarray, low: np.ndarray) -> None:
    talib.RSI(close, timeperiod=14)
    talib.MACD(close, fastperiod=12, slowperiod=26, signalperiod=9)
    talib.BBANDS(close, timeperiod=20, nbdevup=2.0, nbdevdn=2.0)
    for period in (20, 50, 200):
        talib.SMA(close, timeperiod=period)
    for period in (12, 26):
        talib.EMA(close, timeperiod=period)
    talib.ATR(high, low, close, timeperiod=14)


def time_raw(frames: dict[str, pd.DataFrame], last: int | None) -> float:
    arrays = []
    for frame in frames.values():
        window = frame if last is None else frame.iloc[-last:]
        arrays.append(tuple(window[name].to_numpy() for name in ("close", "high", "low")))
    start = time.perf_counter()
    for close, high, low in arrays:
        raw_talib(close, high, low)
    return (time.perf_counter() - start) / len(arrays)


def median_round(measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(ROUNDS))


async def time_service(home: TradingHome, env: dict[str, str], symbols: list[str]) -> list[float]:
    """Seconds per symbol for each of ``ROUNDS + 1`` rounds over every symbol, against a fresh process."""
    spawned = time.perf_counter()
    service = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.market_data",
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    socket = home.socket_path("market_data")
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            if service.returncode is not None or time.monotonic() > deadline:
                log = (home.logs / "market_data.log").read_text()[-2000:]
                raise SystemExit(f"the service did not start: {log}")
            await asyncio.sleep(0.01)
        print(
            f"service start-up to listening, {len(symbols)} symbols loaded: "
            f"{time.perf_counter() - spawned:.2f}s"
        )
        per_symbol = []
        async with RpcClient(socket, timeout=30) as client:
            for _ in range(ROUNDS + 1):
                start = time.perf_counter()
                for symbol in symbols:
                    answer = await client.call("get_technical_analysis", {"symbol": symbol})
                    if answer["rsi"]["value"] is None or answer["stale"]:
                        raise SystemExit(f"unexpected answer: {answer}")
                per_symbol.append((time.perf_counter() - start) / len(symbols))
        return per_symbol
    finally:
        service.terminate()
        await service.wait()
        socket.unlink(missing_ok=True)


async def main(count: int, bars: int) -> None:
    calendar = AsxCalendar()
    last = calendar.last_closed(datetime.now(UTC))
    assert last is not None
    days = [
        d.isoformat() for d in calendar.sessions_between(last.date - timedelta(days=bars * 2), last.date)
    ][-bars:]
    root = Path(tempfile.mkdtemp(prefix="mdb-", dir="/tmp"))
    home = TradingHome(root)
    home.create()
    redis = EmbeddedRedis(home)
    redis.start()
    try:
        symbols = [f"S{i:03d}.AX" for i in range(count)]
        started = time.perf_counter()
        frames = await fill_store(home, symbols, days)
        print(f"store: {count} symbols x {bars} daily bars written in {time.perf_counter() - started:.1f}s")
        analysis_bars = MarketDataConfig().analysis_bars
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("TRADING")}
        base_env.update(
            {
                "TRADING_HOME": str(root),
                "REDIS_URL": redis.url,
                "PYTHONPATH": str(ROOT),
                "TRADING__MARKET_DATA__SOURCE": "csv",
                "TRADING__MARKET_DATA__CSV_DIR": str(root),
                "TRADING__MARKET_DATA__REFRESH_ON_START": "false",
                "TRADING__MARKET_DATA__SYMBOLS": orjson.dumps(symbols).decode(),
            }
        )
        load_settings(home, env=base_env)  # the same settings the service will read
        no_cache = {**base_env, "TRADING__MARKET_DATA__CACHE_TTL_S": "0"}
        uncached = await time_service(home, no_cache, symbols)
        cached = await time_service(home, base_env, symbols)
        raw_full = median_round(lambda: time_raw(frames, None))
        raw_window = median_round(lambda: time_raw(frames, analysis_bars))

        figures = {
            f"raw TA-Lib over all {bars} bars": raw_full,
            f"raw TA-Lib over the last {analysis_bars} bars": raw_window,
            "service, first call per symbol": uncached[0],
            "service, cache off": statistics.median(uncached[1:]),
            "service, cached answer": statistics.median(cached[1:]),
        }
        for label, seconds in figures.items():
            print(f"{label:<48} {seconds * 1e6:9.1f} us/symbol")
        for label in list(figures)[2:]:
            print(f"ratio {label} / raw TA-Lib over {bars} bars: {figures[label] / raw_full:.2f}")
        print(
            f"ratio service, cache off / raw TA-Lib over the same {analysis_bars} bars: "
            f"{statistics.median(uncached[1:]) / raw_window:.2f}"
        )
    finally:
        redis.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--bars", type=int, default=5000)
    args = parser.parse_args()
    asyncio.run(main(args.symbols, args.bars))
