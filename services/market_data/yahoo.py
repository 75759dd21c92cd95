"""Yahoo Finance through yfinance: the real client behind a small seam, with limits and retries.

``YahooClient`` is the seam: one blocking call that returns yfinance's DataFrame. ``YFinanceClient``
is the real one. ``YahooSource`` runs it on worker threads with a bounded wait, at most one request
per ``min_request_interval_s``, retries temporary errors with back-off, and turns an empty frame or
any yfinance/curl exception into ``DataUnavailable`` with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Protocol

import pandas as pd

from services.asx.calendar import SYDNEY
from services.market_data.bars import DAILY, INTERVALS, make_bars
from services.market_data.config import YahooConfig
from services.market_data.sources import DataUnavailable, canonical_column

log = logging.getLogger("services.market_data.yahoo")

# How far back Yahoo serves each intraday interval.
MAX_LOOKBACK = {"1h": timedelta(days=729), "15m": timedelta(days=59), "5m": timedelta(days=59)}
# Exception classes (by name, anywhere in the class's MRO) worth retrying.
_TEMPORARY_NAMES = (
    "timeout",
    "timedout",
    "connectionerror",
    "ratelimit",
    "toomanyrequests",
    "incompleteread",
)


class YahooClient(Protocol):
    def history(
        self, symbol: str, interval: str, start: datetime, end: datetime, timeout: float
    ) -> pd.DataFrame: ...


class YFinanceClient:
    """yfinance itself. Its caches go under ``cache_dir``, never the user's home or /tmp."""

    def __init__(self, cache_dir: Path) -> None:
        import yfinance

        cache_dir.mkdir(parents=True, exist_ok=True)
        yfinance.set_tz_cache_location(str(cache_dir))
        # Raise errors instead of logging them and returning an empty frame.
        yfinance.config.debug.hide_exceptions = False
        self._yfinance = yfinance

    def history(
        self, symbol: str, interval: str, start: datetime, end: datetime, timeout: float
    ) -> pd.DataFrame:
        ticker = self._yfinance.Ticker(symbol)
        frame: pd.DataFrame = ticker.history(
            start=start, end=end, interval=interval, auto_adjust=False, actions=True, timeout=timeout
        )
        return frame


def is_temporary(exc: BaseException) -> bool:
    """Timeouts, connection failures, rate limits and server errors are worth retrying; a bad symbol,
    a bad URL or an answer that cannot be parsed is not."""
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    names = [cls.__name__.lower() for cls in type(exc).__mro__]
    if any(part in name for name in names for part in _TEMPORARY_NAMES):
        return True
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        return status == 429 or status >= 500
    # libcurl's own errors (a reset connection, a failed lookup) come as a bare CurlError.
    return type(exc).__name__ == "CurlError" and type(exc).__module__.startswith("curl_cffi")


def frame_to_bars(frame: pd.DataFrame, interval: str) -> pd.DataFrame:
    """yfinance's frame (exchange-time index, ``Adj Close``, ``Dividends``...) as bars."""
    frame = frame.rename(columns=canonical_column)
    index = pd.DatetimeIndex(frame.index)
    if index.tz is None:
        index = index.tz_localize("Australia/Sydney")
    if interval == DAILY:
        keys = list(index.tz_convert("Australia/Sydney").strftime("%Y-%m-%d"))
    else:
        keys = list(index.tz_convert(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00"))
    return make_bars(keys, {name: frame[name].to_numpy() for name in frame.columns})


class RateLimiter:
    """At most one request per ``interval`` seconds."""

    def __init__(
        self,
        interval: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.interval = interval
        self._monotonic = monotonic
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._next = 0.0

    async def wait(self) -> None:
        async with self._lock:
            delay = self._next - self._monotonic()
            if delay > 0:
                await self._sleep(delay)
            self._next = self._monotonic() + self.interval


class YahooSource:
    name = "yahoo"
    intervals = frozenset(INTERVALS)
    local = False

    def __init__(
        self,
        config: YahooConfig,
        client: YahooClient,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.client = client
        self._sleep = sleep
        self._limiter = RateLimiter(config.min_request_interval_s, monotonic=monotonic, sleep=sleep)
        self._threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="yahoo")
        self.requests = 0

    async def fetch(self, symbol: str, interval: str, start: date | datetime, end: datetime) -> pd.DataFrame:
        if interval not in self.intervals:
            raise DataUnavailable(f"Yahoo has no {interval} bars", source=self.name, symbol=symbol)
        begin = _as_utc(start)
        if interval in MAX_LOOKBACK:
            begin = max(begin, end - MAX_LOOKBACK[interval])
        # Yahoo's end is exclusive; ask through the end of the day so today's bar comes too.
        until = end + timedelta(days=1) if interval == DAILY else end
        frame = await self._with_retries(symbol, interval, begin, until)
        if frame.empty:
            raise DataUnavailable(
                f"Yahoo returned no {interval} bars for {symbol} between {begin:%Y-%m-%d} and {end:%Y-%m-%d}",
                source=self.name,
                symbol=symbol,
            )
        return frame_to_bars(frame, interval)

    async def _with_retries(self, symbol: str, interval: str, start: datetime, end: datetime) -> pd.DataFrame:
        loop = asyncio.get_running_loop()
        attempts = self.config.retries + 1
        for attempt in range(1, attempts + 1):
            await self._limiter.wait()
            self.requests += 1
            call = loop.run_in_executor(
                self._threads, self.client.history, symbol, interval, start, end, self.config.timeout_s
            )
            try:
                # yfinance has its own timeout; this bound covers everything around the request.
                return await asyncio.wait_for(call, self.config.timeout_s * 2)
            except Exception as exc:
                reason = _describe(exc, self.config.timeout_s * 2)
                if not is_temporary(exc) or attempt == attempts:
                    tries = f" after {attempt} attempts" if attempt > 1 else ""
                    raise DataUnavailable(
                        f"Yahoo Finance unavailable for {symbol} {interval}{tries}: {reason}",
                        source=self.name,
                        symbol=symbol,
                    ) from exc
                delay = self.config.retry_backoff_s * 2 ** (attempt - 1)
                log.warning("Yahoo %s %s: %s; retrying in %.1fs", symbol, interval, reason, delay)
                await self._sleep(delay)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


def _describe(exc: BaseException, bound: float) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no answer within {bound:g}s"
    return f"{type(exc).__name__}: {exc}"[:300]


def _as_utc(when: date | datetime) -> datetime:
    if isinstance(when, datetime):
        return when.astimezone(UTC)
    # A date means that day on the exchange, from its midnight.
    return datetime.combine(when, datetime.min.time(), SYDNEY).astimezone(UTC)
