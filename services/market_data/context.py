"""Market context from the index: a bull, bear or sideways trend and a volatility regime, with the numbers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import talib

TRADING_DAYS_PER_YEAR = 252
RETURN_WINDOW = 20
VOLATILITY_WINDOW = 20
MINIMUM_BARS = 200 + 1


class NotEnoughHistory(ValueError):
    pass


def market_context(
    times: list[str],
    close: np.ndarray,
    *,
    trend_return_threshold: float,
    low_volatility: float,
    high_volatility: float,
) -> dict[str, Any]:
    """The context from the index's complete daily closes (oldest first) and their keys.

    Trend: SMA 50 vs SMA 200 for the structure, the 20-day return for momentum.

    bull: SMA 50 above SMA 200 and the 20-day return not below -threshold; bear: the mirror image;
    sideways: the two disagree. Volatility: annualised standard deviation of the last 20 daily log
    returns, low / normal / high against the two thresholds.
    """
    if len(close) < MINIMUM_BARS:
        raise NotEnoughHistory(f"market context needs {MINIMUM_BARS} sessions of the index, has {len(close)}")
    sma50 = float(talib.SMA(close, timeperiod=50)[-1])
    sma200 = float(talib.SMA(close, timeperiod=200)[-1])
    return_20d = float(close[-1] / close[-1 - RETURN_WINDOW] - 1.0)
    log_returns = np.diff(np.log(close[-VOLATILITY_WINDOW - 1 :]))
    volatility = float(np.std(log_returns, ddof=1) * math.sqrt(TRADING_DAYS_PER_YEAR))

    structure_up = sma50 > sma200
    if structure_up and return_20d >= -trend_return_threshold:
        regime = "bull"
    elif not structure_up and return_20d <= trend_return_threshold:
        regime = "bear"
    else:
        regime = "sideways"
    volatility_regime = (
        "low" if volatility < low_volatility else "high" if volatility > high_volatility else "normal"
    )
    reason = (
        f"SMA 50 {sma50:.1f} {'above' if structure_up else 'below'} SMA 200 {sma200:.1f}, "
        f"20-day return {return_20d:+.2%}; realised volatility {volatility:.1%} a year"
    )
    return {
        "regime": regime,
        "volatility_regime": volatility_regime,
        "reason": reason,
        "as_of": times[-1],
        "close": float(close[-1]),
        "sma_50": sma50,
        "sma_200": sma200,
        "sma_50_vs_200": sma50 / sma200 - 1.0,
        "return_20d": return_20d,
        "realised_volatility_20d": volatility,
        "thresholds": {
            "trend_return": trend_return_threshold,
            "low_volatility": low_volatility,
            "high_volatility": high_volatility,
        },
    }
