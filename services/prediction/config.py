"""The ``[prediction]`` config section: input weights, thresholds per market regime, buy-rate alert.

Every input is a score from -1 (bearish) to +1 (bullish) with a confidence from 0 to 1. The
combined score is the mean of the available inputs weighted by ``weights`` x confidence. It is a
BUY at or above ``buy_threshold[regime]``, a SELL at or below ``-sell_threshold[regime]``, the
regime being the market context's (bull, sideways, bear).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.base.config import register_section

BIG4 = ("CBA.AX", "WBC.AX", "ANZ.AX", "NAB.AX")
INPUTS = ("technical", "sentiment", "ml")
REGIMES = ("bull", "sideways", "bear")
TECHNICAL_PARTS = ("rsi", "macd", "bollinger", "trend", "volume")


@dataclass(frozen=True, slots=True, kw_only=True)
class PredictionConfig:
    symbols: tuple[str, ...] = BIG4
    # Weights and BUY thresholds as `tradingctl tune` chose them on the shared 2010-2022 prices
    # (README, "Tuning"): chosen, not an edge; out of sample nothing beat buy-and-hold.
    weights: Mapping[str, float] = field(
        default_factory=lambda: {"technical": 0.50, "sentiment": 0.20, "ml": 0.10}
    )
    technical_weights: Mapping[str, float] = field(
        default_factory=lambda: {"rsi": 0.25, "macd": 0.25, "bollinger": 0.15, "trend": 0.25, "volume": 0.10}
    )
    # Stricter in a bear market; the service refuses to start if a BUY is unreachable in a regime
    # (decision.check_reachable).
    buy_threshold: Mapping[str, float] = field(
        default_factory=lambda: {"bull": 0.10, "sideways": 0.15, "bear": 0.25}
    )
    sell_threshold: Mapping[str, float] = field(
        default_factory=lambda: {"bull": 0.25, "sideways": 0.25, "bear": 0.20}
    )
    # A stale input (market data ``stale_after_sessions`` or more sessions behind, a stale
    # sentiment result) counts at this share of its confidence; high market volatility multiplies
    # the prediction's confidence by ``high_volatility_confidence``.
    stale_after_sessions: int = 2
    stale_confidence: float = 0.5
    # A market context this many days older than a symbol's price describes another market.
    max_context_lag_days: int = 7
    high_volatility_confidence: float = 0.5
    cache_ttl_s: float = 300.0
    input_timeout_s: float = 20.0
    buy_rate_threshold: float = 0.70
    buy_rate_hysteresis: float = 0.10
    buy_rate_window: int = 40
    history_limit: int = 500

    def __post_init__(self) -> None:
        _same_keys("weights", self.weights, INPUTS)
        _same_keys("technical_weights", self.technical_weights, TECHNICAL_PARTS)
        _same_keys("buy_threshold", self.buy_threshold, REGIMES)
        _same_keys("sell_threshold", self.sell_threshold, REGIMES)
        if any(w < 0 for w in (*self.weights.values(), *self.technical_weights.values())):
            raise ValueError("weights must be >= 0")
        if self.weights["technical"] <= 0 or sum(self.technical_weights.values()) <= 0:
            raise ValueError(
                "the technical input needs a weight above 0: it is the one input always required"
            )
        for regime in REGIMES:
            if not 0 < self.buy_threshold[regime] < 1 or not 0 < self.sell_threshold[regime] < 1:
                raise ValueError(f"thresholds for {regime} must be between 0 and 1")
        if (
            not 0 < self.buy_rate_threshold <= 1
            or not 0 <= self.buy_rate_hysteresis < self.buy_rate_threshold
        ):
            raise ValueError("buy_rate_threshold in (0, 1], hysteresis in [0, threshold)")
        if self.buy_rate_window < 1 or self.cache_ttl_s < 0 or self.history_limit < 1:
            raise ValueError("buy_rate_window and history_limit >= 1, cache_ttl_s >= 0")
        if not 0 < self.stale_confidence <= 1 or not 0 < self.high_volatility_confidence <= 1:
            raise ValueError("stale_confidence and high_volatility_confidence must be in (0, 1]")
        if not self.symbols or self.input_timeout_s <= 0:
            raise ValueError("symbols must name at least one symbol; input_timeout_s must be > 0")
        if self.stale_after_sessions < 1 or self.max_context_lag_days < 0:
            raise ValueError("stale_after_sessions >= 1 and max_context_lag_days >= 0")


def _same_keys(name: str, mapping: Mapping[str, float], wanted: tuple[str, ...]) -> None:
    if set(mapping) != set(wanted):
        raise ValueError(f"{name} must have exactly the keys {', '.join(wanted)}")


register_section("prediction", PredictionConfig)
