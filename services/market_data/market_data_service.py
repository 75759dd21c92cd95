"""The market data service: prices from a source into the store, and analysis of what is stored.

Reads never wait on a slow source for long: a read of stale data starts a refresh of that symbol
(at most once per ``refresh_min_interval_s``), waits up to ``on_demand_timeout_s`` for it, and
otherwise answers from the store saying how stale the answer is. Answers are cached per symbol on
the series' revision (which every refresh that changes a bar bumps) and the last closed session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from services.asx.calendar import SYDNEY, AsxCalendar, local_day_end
from services.base.clock import utc_iso
from services.base.config import Settings
from services.base.db import migrate
from services.base.errors import ConfigError, InvalidParams, NotFound
from services.base.events import EventType
from services.base.rpc import rpc_method
from services.base.service import BaseService, Check
from services.market_data.bars import COLUMNS, DAILY, complete, key_date, to_columns, to_records
from services.market_data.config import MarketDataConfig
from services.market_data.context import NotEnoughHistory, market_context
from services.market_data.csv_files import ClockedCsvSource, CsvSource
from services.market_data.indicators import indicators, volume_figures
from services.market_data.quality import assess_quality
from services.market_data.schema import MIGRATIONS
from services.market_data.sources import DataUnavailable, PriceSource
from services.market_data.store import PriceStore, SeriesState
from services.market_data.yahoo import YahooSource, YFinanceClient

log = logging.getLogger("services.market_data")

# Sessions behind the calendar before health calls the data stale (one is normal just after a close).
STALE_AFTER_SESSIONS = 2
MAX_HISTORY_BARS = 50_000
CACHE_LIMIT = 1024


class MarketDataService(BaseService):
    name = "market_data"
    uses_database = True

    def __init__(
        self,
        settings: Settings,
        *,
        source: PriceSource | None = None,
        calendar: AsxCalendar | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(settings, **kwargs)
        self.config = settings.section("market_data", MarketDataConfig)
        self._given_source = source
        self.calendar = calendar or AsxCalendar()
        self.series: dict[tuple[str, str], SeriesState] = {}
        self._cache: dict[tuple[Any, ...], tuple[datetime, dict[str, Any]]] = {}
        self._refreshing: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self._building: dict[tuple[Any, ...], asyncio.Future[dict[str, Any]]] = {}
        self._windows: dict[str, Window] = {}

    # -- lifecycle ------------------------------------------------------------------------

    async def _start(self) -> None:
        assert self.db is not None
        await self.db.run(lambda conn: migrate(conn, MIGRATIONS))
        self.store = PriceStore(self.db)
        self.series = await self.store.load_series()
        # Analysis reads only memory: the newest bars of every symbol are loaded now and again
        # after each refresh that changes them.
        for symbol in self.config.universe:
            state = self.series.get((symbol, DAILY))
            if state is not None and state.bar_count:
                await self._load_window(symbol, state)
        self.source = self._given_source or self._build_source()
        log.info("price source %s for %s", self.source.name, ", ".join(self.config.universe))
        if self.config.refresh_on_start:
            self.spawn(self.refresh_all_data(), name="refresh-on-start", on_clock=True)

    def _build_source(self) -> PriceSource:
        if self.config.source == "yahoo":
            return YahooSource(self.config.yahoo, YFinanceClient(self.home.data / "yfinance-cache"))
        directory = Path(self.config.csv_dir).expanduser()
        if not directory.is_dir():
            raise ConfigError(f"market_data.csv_dir: {directory} is not a directory")
        if self.config.source == "csv":
            return CsvSource(directory)
        return ClockedCsvSource(directory, self.calendar, self.clock.now)

    async def _stop(self) -> None:
        for task in self._refreshing.values():
            task.cancel()
        self.source.close()

    # -- refresh --------------------------------------------------------------------------

    @rpc_method
    async def refresh_all_data(self, symbols: list[str] | None = None) -> dict[str, Any]:
        """Fetch what is missing for every symbol (or those named); the outcome per symbol."""
        wanted = self._symbols(symbols)
        # Shielded: a caller that gives up (a client timeout) leaves the refreshes running.
        outcomes = await asyncio.gather(*(asyncio.shield(self._refresh_once(symbol)) for symbol in wanted))
        by_symbol = dict(zip(wanted, outcomes, strict=True))
        return {
            "source": self.source.name,
            "outcomes": by_symbol,
            "updated": [s for s, o in by_symbol.items() if o["status"] == "updated"],
            "failed": [s for s, o in by_symbol.items() if o["status"] == "unavailable"],
        }

    def _refresh_once(self, symbol: str) -> asyncio.Task[dict[str, Any]]:
        """The refresh of ``symbol`` in progress, or a new one: callers share it, none cancels it."""
        task = self._refreshing.get(symbol)
        if task is None or task.done():
            task = asyncio.create_task(self._refresh_symbol(symbol), name=f"market_data:refresh:{symbol}")
            self._refreshing[symbol] = task
        return task

    async def _refresh_symbol(self, symbol: str) -> dict[str, Any]:
        results = {
            interval: await self._refresh_series(symbol, interval) for interval in self.config.intervals
        }
        changed = sum(result["bars_changed"] for result in results.values())
        errors = {interval: r["error"] for interval, r in results.items() if r["status"] == "unavailable"}
        daily = self.series.get((symbol, DAILY))
        if changed:
            self.stats.incr("refresh.updated")
            await self._publish_update(symbol, results)
        statuses = {result["status"] for result in results.values()}
        status = (
            "unavailable"
            if statuses == {"unavailable"}
            else "updated"
            if changed
            else "partly_unavailable"
            if errors
            else "unchanged"
        )
        if errors:
            self.stats.incr("refresh.failed")
        return {
            "status": status,
            "bars_changed": changed,
            "newest_bar": daily.newest if daily else None,
            "intervals": results,
            "errors": errors,
        }

    async def _refresh_series(self, symbol: str, interval: str) -> dict[str, Any]:
        key = (symbol, interval)
        state = self.series.get(key) or SeriesState(symbol, interval)
        now = self.clock.now()
        if interval not in self.source.intervals:
            error = f"the {self.source.name} source has no {interval} bars"
            return {"status": "unavailable", "bars_changed": 0, "error": error}
        if interval == DAILY and self._daily_up_to_date(state, now):
            return {"status": "up_to_date", "bars_changed": 0, "error": None}
        try:
            bars = await self.source.fetch(symbol, interval, self._fetch_start(state, interval, now), now)
        except DataUnavailable as exc:
            log.warning("refresh %s %s: %s", symbol, interval, exc.message)
            self.series[key] = await self.store.record_failure(state, exc.message, now)
            return {"status": "unavailable", "bars_changed": 0, "error": exc.message}
        changed, self.series[key] = await self.store.save(state, bars, self.source.name, now)
        if changed and interval == DAILY:
            await self._load_window(symbol, self.series[key])
        return {"status": "updated" if changed else "unchanged", "bars_changed": changed, "error": None}

    def _daily_up_to_date(self, state: SeriesState, now: datetime) -> bool:
        """Nothing can be missing: no session is open and the last one was fetched after it closed."""
        if state.newest is None or state.last_success is None or self.calendar.open_session(now):
            return False
        last = self.calendar.last_closed(now)
        if last is None:
            return True
        return state.newest >= last.date.isoformat() and state.last_success >= utc_iso(last.close)

    def _fetch_start(self, state: SeriesState, interval: str, now: datetime) -> date | datetime:
        if state.newest is not None:
            # Again from the newest bar: it may have been a session still in progress.
            return key_date(state.newest) if interval == DAILY else datetime.fromisoformat(state.newest)
        if self.source.local:
            return date(1900, 1, 1)
        return (now - timedelta(days=self.config.history_days)).astimezone(SYDNEY).date()

    async def _publish_update(self, symbol: str, results: dict[str, Any]) -> None:
        daily = self.series.get((symbol, DAILY))
        window = self._windows.get(symbol)
        price = _latest_price(window.bars)[0] if window is not None and len(window.close) else None
        await self.bus.publish(
            EventType.MARKET_DATA_UPDATED,
            {
                "symbol": symbol,
                "intervals": [interval for interval, r in results.items() if r["bars_changed"]],
                "bars_changed": sum(r["bars_changed"] for r in results.values()),
                "newest_bar": daily.newest if daily else None,
                "price": price,
                "source": self.source.name,
            },
        )

    async def _fresh(self, symbol: str) -> SeriesState:
        """The daily series of ``symbol``, refreshed first if it is stale and may have news."""
        now = self.clock.now()
        state = self.series.get((symbol, DAILY)) or SeriesState(symbol, DAILY)
        throttle = timedelta(seconds=self.config.refresh_min_interval_s)
        recently = (
            state.last_attempt is not None and datetime.fromisoformat(state.last_attempt) > now - throttle
        )
        if not self._daily_up_to_date(state, now) and not recently:
            task = self._refresh_once(symbol)
            try:
                await asyncio.wait_for(asyncio.shield(task), self.config.on_demand_timeout_s)
            except TimeoutError:
                log.warning("refresh of %s still running; answering from the store", symbol)
        state = self.series.get((symbol, DAILY)) or state
        if not state.bar_count:
            reason = state.last_error or "no refresh has finished yet"
            raise DataUnavailable(
                f"no price data for {symbol}: {reason}", source=self.source.name, symbol=symbol
            )
        return state

    # -- reads ----------------------------------------------------------------------------

    def _symbols(self, symbols: list[str] | None) -> list[str]:
        if symbols is None:
            return list(self.config.universe)
        for symbol in symbols:
            self._check_symbol(symbol)
        return list(dict.fromkeys(symbols))

    def _check_symbol(self, symbol: str) -> None:
        if symbol not in self.config.universe:
            raise NotFound(
                f"unknown symbol {symbol!r}; this service watches {', '.join(self.config.universe)}",
                symbol=symbol,
            )

    async def _cached(
        self, kind: str, symbol: str, state: SeriesState, build: Callable[[], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        """``build()``'s answer, shared by concurrent callers and kept for ``cache_ttl_s``."""
        now = self.clock.now()
        last = self.calendar.last_closed(now)
        key = (kind, symbol, state.revision, state.last_success, last.date if last else None)
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            self.stats.incr("cache.hits")
            return hit[1]
        building = self._building.get(key)
        if building is not None:  # another call is computing this very answer: wait for it
            return await asyncio.shield(building)
        self.stats.incr("cache.misses")
        building = self._building[key] = asyncio.get_running_loop().create_future()
        try:
            value = await build()
        except BaseException as exc:
            building.set_exception(exc)
            building.exception()  # the waiters get it; nobody else needs to
            raise
        else:
            building.set_result(value)
        finally:
            del self._building[key]
        if len(self._cache) >= CACHE_LIMIT:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._cache[key] = (now + timedelta(seconds=self.config.cache_ttl_s), value)
        return value

    async def _load_window(self, symbol: str, state: SeriesState) -> Window:
        size = max(self.config.analysis_bars, self.config.quality_window_sessions + 30)
        window = Window.of(state.revision, await self.store.bars(symbol, DAILY, last=size))
        self._windows[symbol] = window
        self.stats.incr("window.loads")
        return window

    async def _window(self, symbol: str, state: SeriesState) -> Window:
        """The newest daily bars of ``symbol``, from memory (read again if the series changed)."""
        window = self._windows.get(symbol)
        if window is None or window.revision != state.revision:
            window = await self._load_window(symbol, state)
        if len(window.close) == 0:
            raise DataUnavailable(
                f"no complete daily bar for {symbol}", source=self.source.name, symbol=symbol
            )
        return window

    def _indicators(self, window: Window) -> dict[str, Any]:
        n = self.config.analysis_bars
        return indicators(window.times[-1], window.close[-n:], window.high[-n:], window.low[-n:])

    @rpc_method(idempotent=True)
    async def get_market_data(self, symbol: str, bars: int = 20) -> dict[str, Any]:
        """Latest price and change, the last ``bars`` daily bars, indicators, volume, quality and age."""
        self._check_symbol(symbol)
        if not 0 <= bars <= 1000:
            raise InvalidParams("bars must be between 0 and 1000", field="bars")
        state = await self._fresh(symbol)

        async def build() -> dict[str, Any]:
            window = await self._window(symbol, state)
            price, price_time, price_kind = _latest_price(window.bars)
            # A close compares with the close before it; a session's open with the last close.
            before = -2 if price_kind == "close" else -1
            previous = float(window.close[before]) if len(window.close) >= -before else None
            return {
                "symbol": symbol,
                "is_index": symbol == self.config.context_symbol,
                "price": price,
                "price_time": price_time,
                "price_kind": price_kind,
                "previous_close": previous,
                "change": None if previous is None else price - previous,
                "change_percent": None if not previous else (price / previous - 1.0) * 100.0,
                "recent_bars": to_records(window.bars.iloc[-self.config.recent_bars :]),
                "indicators": self._indicators(window),
                "volume": volume_figures(window.volume, self.config.unusual_volume_ratio),
                "quality": assess_quality(
                    window.bars,
                    calendar=self.calendar,
                    now=self.clock.now(),
                    is_index=symbol == self.config.context_symbol,
                    window_sessions=self.config.quality_window_sessions,
                    spike_threshold=self.config.spike_threshold,
                ),
            }

        answer = dict(await self._cached("market_data", symbol, state, build))
        answer["recent_bars"] = answer["recent_bars"][-bars:] if bars else []
        answer.update(self._freshness(state))
        return answer

    @rpc_method(idempotent=True)
    async def get_technical_analysis(self, symbol: str) -> dict[str, Any]:
        """RSI, MACD, Bollinger Bands, SMAs, EMAs, ATR and volume analysis from the latest daily bars."""
        self._check_symbol(symbol)
        state = await self._fresh(symbol)

        async def build() -> dict[str, Any]:
            window = await self._window(symbol, state)
            return {
                "symbol": symbol,
                **self._indicators(window),
                "volume": volume_figures(window.volume, self.config.unusual_volume_ratio),
            }

        answer = dict(await self._cached("technical", symbol, state, build))
        answer.update(self._freshness(state))
        return answer

    @rpc_method(idempotent=True)
    async def get_market_context(self) -> dict[str, Any]:
        """Bull, bear or sideways and a volatility regime from the index, with the numbers behind them."""
        symbol = self.config.context_symbol
        state = await self._fresh(symbol)

        async def build() -> dict[str, Any]:
            window = await self._window(symbol, state)
            try:
                context = market_context(
                    window.times,
                    window.close[-self.config.analysis_bars :],
                    trend_return_threshold=self.config.trend_return_threshold,
                    low_volatility=self.config.low_volatility,
                    high_volatility=self.config.high_volatility,
                )
            except NotEnoughHistory as exc:
                raise DataUnavailable(str(exc), source=self.source.name, symbol=symbol) from exc
            return {"symbol": symbol, **context}

        answer = dict(await self._cached("context", symbol, state, build))
        answer.update(self._freshness(state))
        return answer

    @rpc_method(idempotent=True)
    async def get_history(
        self,
        symbol: str,
        start: date | None = None,
        end: date | None = None,
        interval: str = DAILY,
        max_bars: int = 10_000,
    ) -> dict[str, Any]:
        """Stored bars from ``start`` to ``end`` (dates in Sydney, both included), as columns."""
        self._check_symbol(symbol)
        if interval not in self.config.intervals:
            raise InvalidParams(
                f"interval {interval!r} is not kept; configured: {', '.join(self.config.intervals)}",
                field="interval",
            )
        if start is not None and end is not None and start > end:
            raise InvalidParams("start is after end", field="start")
        if not 1 <= max_bars <= MAX_HISTORY_BARS:
            raise InvalidParams(f"max_bars must be between 1 and {MAX_HISTORY_BARS}", field="max_bars")
        state = await self._fresh(symbol)
        first, last = _key_range(start, end, interval)
        bars = await self.store.bars(symbol, interval, start=first, end=last)
        truncated = len(bars) > max_bars
        if truncated:
            bars = bars.iloc[:max_bars]
        return {
            "symbol": symbol,
            "interval": interval,
            "count": len(bars),
            "truncated": truncated,
            "bars": to_columns(bars),
            **self._freshness(state),
        }

    @rpc_method(idempotent=True)
    def list_symbols(self) -> dict[str, Any]:
        """The symbols served, their role, and what the store holds of each."""
        return {
            "source": self.source.name,
            "symbols": [
                {
                    "symbol": symbol,
                    "role": "context" if symbol == self.config.context_symbol else "watched",
                    "series": {
                        interval: _describe_state(self.series.get((symbol, interval)))
                        for interval in self.config.intervals
                    },
                }
                for symbol in self.config.universe
            ],
        }

    def _freshness(self, state: SeriesState) -> dict[str, Any]:
        """How old the stored data is and how the last fetch went; computed per call, never cached."""
        now = self.clock.now()
        newest = state.newest
        as_of = None
        behind = None
        if newest is not None:
            day = key_date(newest)
            session = self.calendar.session(day) if self.calendar.first <= day <= self.calendar.last else None
            closes = session.close if session else local_day_end(day)
            fetched = datetime.fromisoformat(state.last_success) if state.last_success else closes
            as_of = min(closes, fetched)
            behind = self.calendar.sessions_after(day, now)
        return {
            "source": self.source.name,
            "synthetic": False,
            "newest_bar": newest,
            "data_as_of": utc_iso(as_of) if as_of else None,
            "age_s": round((now - as_of).total_seconds(), 1) if as_of else None,
            "sessions_behind": behind,
            "stale": bool(behind) if behind is not None else True,
            "last_fetch": {
                "attempt": state.last_attempt,
                "success": state.last_success,
                "error": state.last_error,
            },
        }

    # -- health ---------------------------------------------------------------------------

    def health_checks(self) -> dict[str, Check]:
        checks = super().health_checks()
        if not hasattr(self, "source"):
            return checks
        failing = {
            f"{symbol} {interval}": state.last_error
            for (symbol, interval), state in sorted(self.series.items())
            if state.last_error
        }
        if failing:
            detail = "; ".join(f"{name}: {error}" for name, error in failing.items())
            checks["source"] = {"status": "degraded", "detail": f"{self.source.name}: {detail}"[:1000]}
        else:
            checks["source"] = {"status": "ok", "detail": f"{self.source.name}: last fetches succeeded"}
        now = self.clock.now()
        stale = []
        for symbol in self.config.universe:
            state = self.series.get((symbol, DAILY))
            behind = None
            if state is not None and state.newest is not None:
                behind = self.calendar.sessions_after(key_date(state.newest), now)
            if behind is None or behind >= STALE_AFTER_SESSIONS:
                stale.append(f"{symbol} ({'no data' if behind is None else f'{behind} sessions behind'})")
        checks["data"] = (
            {"status": "degraded", "detail": "stale: " + ", ".join(stale)}
            if stale
            else {"status": "ok", "detail": "every symbol is up to date with the ASX calendar"}
        )
        return checks

    def health_figures(self) -> dict[str, Any]:
        if not hasattr(self, "source"):
            return {}
        symbols = {}
        for symbol in self.config.universe:
            state = self.series.get((symbol, DAILY)) or SeriesState(symbol, DAILY)
            freshness = self._freshness(state)
            symbols[symbol] = {
                **_describe_state(state),
                "age_s": freshness["age_s"],
                "sessions_behind": freshness["sessions_behind"],
            }
        return {"source": self.source.name, "symbols": symbols, "cache_size": len(self._cache)}


@dataclass(frozen=True, slots=True)
class Window:
    """The newest stored daily bars of one symbol, kept in memory until the series changes."""

    revision: int
    bars: pd.DataFrame  # every stored row, for recent bars and data quality
    # The complete bars (those with a close) as contiguous arrays, for TA-Lib.
    times: list[str]
    close: np.ndarray
    high: np.ndarray
    low: np.ndarray
    volume: np.ndarray

    @classmethod
    def of(cls, revision: int, bars: pd.DataFrame) -> Window:
        # The store's frames have exactly COLUMNS, in order (reindexing by name costs ~0.5 ms).
        assert tuple(bars.columns) == COLUMNS
        values = bars.to_numpy(dtype=float)
        usable = ~np.isnan(values[:, COLUMNS.index("close")])

        def column(name: str) -> np.ndarray:
            return np.ascontiguousarray(values[usable, COLUMNS.index(name)])

        return cls(
            revision,
            bars,
            [str(key) for key in bars.index[usable]],
            column("close"),
            column("high"),
            column("low"),
            column("volume"),
        )


def _latest_price(bars: pd.DataFrame) -> tuple[float, str, str]:
    """The latest traded price known: the last close, or the open of a session still in progress."""
    last = bars.iloc[-1]
    if last["close"] == last["close"]:
        return float(last["close"]), str(bars.index[-1]), "close"
    if last["open"] == last["open"]:
        return float(last["open"]), str(bars.index[-1]), "open"
    usable = complete(bars)
    if usable.empty:
        raise ValueError("no price in these bars")
    return float(usable["close"].iloc[-1]), str(usable.index[-1]), "close"


def _key_range(start: date | None, end: date | None, interval: str) -> tuple[str | None, str | None]:
    if interval == DAILY:
        return (start.isoformat() if start else None, end.isoformat() if end else None)
    first = utc_iso(datetime.combine(start, datetime.min.time(), SYDNEY)) if start else None
    last = utc_iso(local_day_end(end) - timedelta(microseconds=1)) if end else None
    return first, last


def _describe_state(state: SeriesState | None) -> dict[str, Any]:
    if state is None:
        return {"bars": 0, "newest_bar": None, "last_success": None, "last_error": None}
    return {
        "bars": state.bar_count,
        "newest_bar": state.newest,
        "last_success": state.last_success,
        "last_error": state.last_error,
    }
