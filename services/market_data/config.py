"""The ``[market_data]`` config section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from services.base.config import register_section
from services.market_data.bars import INTERVALS


@dataclass(frozen=True, slots=True, kw_only=True)
class YahooConfig:
    # Seconds for one HTTP request to Yahoo; a fetch gives up after its retries.
    timeout_s: float = 10.0
    # At most one request per this many seconds, across all symbols (Yahoo rate-limits hard).
    min_request_interval_s: float = 0.5
    # Attempts after the first for temporary errors (timeouts, connection errors, rate limits).
    retries: int = 2
    retry_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.min_request_interval_s < 0 or self.retries < 0:
            raise ValueError("yahoo: timeout_s must be positive, min_request_interval_s and retries >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class MarketDataConfig:
    # yahoo: live from Yahoo Finance. csv: files in csv_dir. clocked_csv: csv_dir seen through the clock
    # (a bar's open from its session's open, the rest from its close), for running history.
    source: Literal["yahoo", "csv", "clocked_csv"] = "yahoo"
    csv_dir: str = ""
    symbols: tuple[str, ...] = ("CBA.AX", "WBC.AX", "ANZ.AX", "NAB.AX")
    context_symbol: str = "^AXJO"
    # Bar intervals kept in the store; "1d" always. Yahoo also offers 1h, 15m and 5m.
    intervals: tuple[str, ...] = ("1d",)
    # Calendar days of daily bars fetched the first time a symbol is seen (SMA 200 needs ~300).
    history_days: int = 1100
    cache_ttl_s: float = 300.0
    refresh_on_start: bool = True
    # A read of stale data triggers a refresh of that symbol at most this often.
    refresh_min_interval_s: float = 60.0
    # A refresh caused by a read gives up after this long and answers with the stored data.
    on_demand_timeout_s: float = 8.0
    # Daily bars the indicators are computed over: enough for SMA 200 and for every smoothed
    # indicator to forget its seed (their values then match a computation over all history).
    analysis_bars: int = 400
    recent_bars: int = 20
    quality_window_sessions: int = 260
    # A close-to-close move at least this large that reverses the next day is a bad tick.
    spike_threshold: float = 0.15
    unusual_volume_ratio: float = 2.0
    # Market context thresholds (annualised realised volatility, 20-day index return).
    low_volatility: float = 0.12
    high_volatility: float = 0.25
    trend_return_threshold: float = 0.02
    yahoo: YahooConfig = field(default_factory=YahooConfig)

    def __post_init__(self) -> None:
        if not self.symbols:
            raise ValueError("symbols must name at least one symbol")
        unknown = [interval for interval in self.intervals if interval not in INTERVALS]
        if unknown:
            raise ValueError(f"intervals: unknown {unknown}; choose from {sorted(INTERVALS)}")
        if "1d" not in self.intervals:
            raise ValueError("intervals must include '1d'")
        if self.source in ("csv", "clocked_csv") and not self.csv_dir:
            raise ValueError(f"source {self.source!r} needs csv_dir, the directory of <SYMBOL>.csv files")
        if self.analysis_bars < 250:
            raise ValueError("analysis_bars must be at least 250 (SMA 200 plus warm-up)")
        if not 0 < self.low_volatility < self.high_volatility:
            raise ValueError("volatility thresholds must satisfy 0 < low_volatility < high_volatility")

    @property
    def universe(self) -> tuple[str, ...]:
        """Every symbol served: the watched ones and the market-context index."""
        if self.context_symbol in self.symbols:
            return self.symbols
        return (*self.symbols, self.context_symbol)


register_section("market_data", MarketDataConfig)
