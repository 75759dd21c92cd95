"""The market data service in-process with a simulated clock: history through the clock without
look-ahead, and Yahoo through its adapter seam (recorded-style frames, then an outage)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.asx.calendar import SYDNEY, AsxCalendar
from services.base.clock import SimulatedClock
from services.base.config import Settings, TradingHome, load_settings
from services.base.errors import DependencyUnavailable
from services.base.redis_server import EmbeddedRedis
from services.base.rpc.client import RpcClient
from services.market_data.config import YahooConfig
from services.market_data.market_data_service import MarketDataService
from services.market_data.yahoo import YahooSource

PRICES = Path(__file__).resolve().parents[3] / "shared" / "data" / "prices"
CALENDAR = AsxCalendar()


def settings_for(home: TradingHome, redis: EmbeddedRedis, **market_data: str) -> Settings:
    env = {"REDIS_URL": redis.url}
    env.update({f"TRADING__MARKET_DATA__{key.upper()}": value for key, value in market_data.items()})
    return load_settings(home, env=env)


@pytest.fixture
async def running() -> AsyncIterator[list[MarketDataService]]:
    services: list[MarketDataService] = []
    yield services
    for service in services:
        await service.stop()


@pytest.mark.skipif(not PRICES.is_dir(), reason="the shared price files are not here")
async def test_clocked_csv_shows_only_what_was_known(
    home: TradingHome, redis: EmbeddedRedis, tmp_path: Path, running: list[MarketDataService]
) -> None:
    prices = tmp_path / "prices"
    prices.mkdir()
    for name in ("CBA.AX.csv", "^AXJO.csv"):
        shutil.copy(PRICES / name, prices / name)
    # Monday 2019-09-30, 11:00 in Sydney: the session opened an hour ago.
    clock = SimulatedClock(datetime(2019, 9, 30, 1, 0, tzinfo=UTC))
    settings = settings_for(home, redis, source="clocked_csv", csv_dir=str(prices), symbols='["CBA.AX"]')
    service = MarketDataService(settings, clock=clock, calendar=CALENDAR)
    running.append(service)
    await service.start()
    async with RpcClient(home.socket_path("market_data")) as client:
        during = await client.call("get_market_data", {"symbol": "CBA.AX", "bars": 2})
        assert during["price_kind"] == "open"
        assert during["price_time"] == "2019-09-30"
        assert during["price"] == pytest.approx(81.51000213623047)
        assert during["recent_bars"][-1]["close"] is None  # the close is not known yet
        assert during["indicators"]["as_of"] == "2019-09-27"
        history = await client.call("get_history", {"symbol": "CBA.AX", "start": "2019-09-01"})
        assert history["bars"]["time"][-1] == "2019-09-30"
        assert max(history["bars"]["time"]) <= "2019-09-30"

        await clock.advance(timedelta(hours=5, minutes=1))  # 16:01 in Sydney: the session has closed
        outcome = await client.call("refresh_all_data")
        assert outcome["outcomes"]["CBA.AX"]["bars_changed"] == 1
        after = await client.call("get_market_data", {"symbol": "CBA.AX"})
        assert after["price_kind"] == "close"
        assert after["price"] == pytest.approx(80.83000183105469)
        assert after["indicators"]["as_of"] == "2019-09-30"
        assert after["quality"]["expected_last_session"] == "2019-09-30"
        assert after["sessions_behind"] == 0
        assert after["stale"] is False

        # A quiet evening: nothing can be missing, so a refresh does not even read the files.
        again = await client.call("refresh_all_data")
        assert again["outcomes"]["CBA.AX"]["intervals"]["1d"]["status"] == "up_to_date"


def yahoo_frame(days: list[date], closes: np.ndarray) -> pd.DataFrame:
    """A frame as yfinance's history(auto_adjust=False, actions=True) returns it for an ASX symbol."""
    index = pd.DatetimeIndex([pd.Timestamp(day, tz=SYDNEY) for day in days], name="Date")
    return pd.DataFrame(
        {
            "Open": closes * 0.995,
            "High": closes * 1.01,
            "Low": closes * 0.985,
            "Close": closes,
            "Adj Close": closes * 0.97,
            "Volume": np.full(len(days), 2_500_000, dtype=np.int64),
            "Dividends": 0.0,
            "Stock Splits": 0.0,
        },
        index=index,
    )


class RecordedYahoo:
    """The adapter seam: answers from frames shaped like yfinance's, or fails like it does offline."""

    def __init__(self, clock: SimulatedClock) -> None:
        self.clock = clock
        self.requests: list[tuple[str, str, datetime, datetime]] = []
        self.failure: Exception | None = None

    def history(
        self, symbol: str, interval: str, start: datetime, end: datetime, timeout: float
    ) -> pd.DataFrame:
        self.requests.append((symbol, interval, start, end))
        if self.failure is not None:
            raise self.failure
        first = start.astimezone(SYDNEY).date()
        last = (end.astimezone(SYDNEY) - timedelta(microseconds=1)).date()
        # Like Yahoo, nothing from the future: sessions that have opened by now.
        days = [
            day
            for day in CALENDAR.sessions_between(first, last)
            if CALENDAR.session(day).open <= self.clock.now()
        ]
        base = 100.0 if symbol == "CBA.AX" else 7000.0
        step = np.array([(day - date(2020, 1, 1)).days for day in days], dtype=float)
        return yahoo_frame(days, base + np.sin(step / 9.0) * base * 0.05 + step * base * 0.0002)


async def test_yahoo_through_the_seam_then_an_outage(
    home: TradingHome, redis: EmbeddedRedis, running: list[MarketDataService]
) -> None:
    # Wednesday 2026-11-18, 18:00 in Sydney: after the close.
    clock = SimulatedClock(datetime(2026, 11, 18, 7, 0, tzinfo=UTC))
    yahoo = RecordedYahoo(clock)
    fast = YahooConfig(timeout_s=1, min_request_interval_s=0, retries=1, retry_backoff_s=0)

    async def no_wait(seconds: float) -> None:
        return None

    source = YahooSource(fast, yahoo, sleep=no_wait)
    settings = settings_for(home, redis, symbols='["CBA.AX", "NAB.AX"]', refresh_on_start="false")
    service = MarketDataService(settings, clock=clock, calendar=CALENDAR, source=source)
    running.append(service)
    await service.start()
    async with RpcClient(home.socket_path("market_data")) as client:
        data = await client.call("get_market_data", {"symbol": "CBA.AX"})
        assert data["source"] == "yahoo"
        assert data["price_time"] == "2026-11-18"
        assert data["sessions_behind"] == 0
        assert data["quality"]["score"] == 100
        first_fetch = yahoo.requests[0]
        assert first_fetch[0] == "CBA.AX"
        assert first_fetch[1] == "1d"
        assert first_fetch[2] <= clock.now() - timedelta(days=1000)  # the first fetch backfills history
        context = await client.call("get_market_context")
        assert context["symbol"] == "^AXJO"
        assert context["regime"] in {"bull", "bear", "sideways"}

        # The next day's session closes, and Yahoo has gone away.
        await clock.advance(timedelta(days=1))
        yahoo.failure = ConnectionError("Could not resolve host: query2.finance.yahoo.com")
        fetched_before = len(yahoo.requests)
        stale = await client.call("get_market_data", {"symbol": "CBA.AX"})
        assert len(yahoo.requests) == fetched_before + 2  # one retry for a temporary error
        assert stale["price"] == data["price"]
        assert stale["sessions_behind"] == 1
        assert "Could not resolve host" in stale["last_fetch"]["error"]
        assert stale["quality"]["issues"][0]["kind"] == "stale"
        health = await client.call("health")
        assert health["status"] == "degraded"
        assert "Yahoo Finance unavailable for CBA.AX" in health["checks"]["source"]["detail"]
        assert health["symbols"]["CBA.AX"]["newest_bar"] == "2026-11-18"

        # A read soon after does not hammer Yahoo again.
        await client.call("get_market_data", {"symbol": "CBA.AX"})
        assert len(yahoo.requests) == fetched_before + 2

        # With nothing stored, there is nothing to answer with: -32000 with the reason.
        yahoo.failure = ValueError("No data found, symbol may be delisted")
        with pytest.raises(DependencyUnavailable, match="symbol may be delisted"):
            await client.call("get_market_data", {"symbol": "NAB.AX"})
