"""Answers shaped like the market data, sentiment and ML services give them, for prediction tests."""

from __future__ import annotations

from typing import Any


def market_data_answer(
    *,
    rsi: float = 50.0,
    histogram: float = 0.0,
    crossover: str | None = None,
    percent_b: float = 0.5,
    vs_sma50: float = 0.01,
    vs_sma200: float = 0.02,
    volume_ratio: float = 1.0,
    change_percent: float = 0.0,
    price: float = 100.0,
    price_time: str = "2026-11-19",
    sessions_behind: int = 0,
) -> dict[str, Any]:
    return {
        "symbol": "CBA.AX",
        "price": price,
        "price_time": price_time,
        "change_percent": change_percent,
        "indicators": {
            "rsi": {"value": rsi},
            "macd": {"histogram": histogram, "crossover": crossover},
            "bollinger": {"percent_b": percent_b},
            "moving_averages": {"price_vs_sma_50": vs_sma50, "price_vs_sma_200": vs_sma200},
        },
        "volume": {"available": True, "ratio_to_average": volume_ratio, "unusual": volume_ratio >= 2.0},
        "stale": sessions_behind > 0,
        "sessions_behind": sessions_behind,
    }


BULLISH_TECHNICALS = {
    "rsi": 28.0,
    "crossover": "bullish",
    "histogram": 0.2,
    "percent_b": -0.1,
    "vs_sma50": 0.02,
    "vs_sma200": 0.05,
    "volume_ratio": 2.5,
    "change_percent": 1.5,
}
BEARISH_TECHNICALS = {
    "rsi": 78.0,
    "crossover": "bearish",
    "histogram": -0.2,
    "percent_b": 1.1,
    "vs_sma50": -0.02,
    "vs_sma200": -0.05,
    "volume_ratio": 2.5,
    "change_percent": -1.5,
}


def sentiment_answer(score: float = 0.0, confidence: float = 0.5, **extra: Any) -> dict[str, Any]:
    return {
        "symbol": "CBA.AX",
        "score": score,
        "label": "positive" if score > 0.24 else "negative" if score < -0.24 else "neutral",
        "confidence": confidence,
        "article_count": 6,
        "source": "marketaux",
        "computed_at": "2026-11-19T22:00:00Z",
        "stale": False,
        "reason": None,
        **extra,
    }


def ml_answer(p_up: float = 0.5, agreement: float = 1.0) -> dict[str, Any]:
    return {
        "probability_up": p_up,
        "agreement": agreement,
        "confidence": abs(2 * p_up - 1) * agreement,
        "as_of": "2026-11-19",
        "horizon_days": 5,
    }


def context_answer(regime: str = "bull", volatility: str = "normal") -> dict[str, Any]:
    return {
        "regime": regime,
        "volatility_regime": volatility,
        "reason": "test context",
        "as_of": "2026-11-19",
        "stale": False,
    }
