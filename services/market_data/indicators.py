"""Technical indicators with TA-Lib, and volume analysis, over daily bars (oldest first).

Each function returns the latest values with the labels a reader wants (RSI zone, MACD crossover,
where the price sits in its Bollinger Bands). A value that needs more bars than there are is None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import talib

RSI_PERIOD = 14
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
BOLLINGER_PERIOD, BOLLINGER_DEVIATIONS = 20, 2.0
SMA_PERIODS = (20, 50, 200)
EMA_PERIODS = (12, 26)
ATR_PERIOD = 14
VOLUME_AVERAGE = 20
VOLUME_SHORT = 5
RSI_OVERBOUGHT, RSI_OVERSOLD = 70.0, 30.0


def value(x: float) -> float | None:
    """A float for the wire: NaN (not enough bars) becomes None."""
    return None if math.isnan(x) else float(x)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def technical_analysis(bars: pd.DataFrame) -> dict[str, Any]:
    """RSI(14), MACD(12,26,9), Bollinger(20,2), SMA 20/50/200, EMA 12/26 and ATR(14), latest values."""
    return indicators(
        str(bars.index[-1]) if len(bars) else "",
        np.ascontiguousarray(bars["close"].to_numpy(dtype=float)),
        np.ascontiguousarray(bars["high"].to_numpy(dtype=float)),
        np.ascontiguousarray(bars["low"].to_numpy(dtype=float)),
    )


def indicators(as_of: str, close: np.ndarray, high: np.ndarray, low: np.ndarray) -> dict[str, Any]:
    """``technical_analysis`` over arrays of complete bars, oldest first; ``as_of`` is the last bar's key."""
    if len(close) < 2:
        raise ValueError("technical analysis needs at least 2 bars")
    return indicators_at(indicator_series(close, high, low), len(close) - 1, as_of)


@dataclass(frozen=True, slots=True)
class IndicatorSeries:
    """Every indicator over a whole series of complete bars: one TA-Lib pass, read at any bar."""

    close: np.ndarray
    rsi: np.ndarray
    macd: np.ndarray
    macd_signal: np.ndarray
    histogram: np.ndarray
    upper: np.ndarray
    middle: np.ndarray
    lower: np.ndarray
    sma: dict[int, np.ndarray]
    ema: dict[int, np.ndarray]
    atr: np.ndarray
    # Derived, NaN where not available: what a reader of the labels needs, for every bar at once.
    crossover: np.ndarray  # +1 MACD crossed above its signal, -1 below, 0 neither
    percent_b: np.ndarray
    vs_sma: dict[int, np.ndarray]  # close over the SMA, less 1


def indicator_series(close: np.ndarray, high: np.ndarray, low: np.ndarray) -> IndicatorSeries:
    """The indicators of every bar, each from that bar and the ones before it.

    The moving averages and bands are exact at every bar; RSI, MACD, EMA and ATR are recursive, so
    their value at a bar depends a little on where the series starts: after 250 bars of warm-up the
    difference from a series started elsewhere is below 1e-8 of the value."""
    macd, signal, histogram = talib.MACD(
        close, fastperiod=MACD_FAST, slowperiod=MACD_SLOW, signalperiod=MACD_SIGNAL
    )
    upper, middle, lower = talib.BBANDS(
        close,
        timeperiod=BOLLINGER_PERIOD,
        nbdevup=BOLLINGER_DEVIATIONS,
        nbdevdn=BOLLINGER_DEVIATIONS,
    )  # the middle band is TA-Lib's default, a simple moving average
    sma = {period: talib.SMA(close, timeperiod=period) for period in SMA_PERIODS}
    before = np.concatenate([[np.nan], histogram[:-1]])
    width = upper - lower
    with np.errstate(invalid="ignore", divide="ignore"):
        crossover = np.where(
            (before <= 0) & (histogram > 0), 1, np.where((before >= 0) & (histogram < 0), -1, 0)
        )
        inside = np.where(width > 0, (close - lower) / width, 0.5)
        vs_sma = {p: np.where(values != 0, close / values - 1.0, np.nan) for p, values in sma.items()}
    bands = ~np.isnan(upper) & ~np.isnan(lower) & ~np.isnan(middle) & (middle != 0)
    return IndicatorSeries(
        close=close,
        rsi=talib.RSI(close, timeperiod=RSI_PERIOD),
        macd=macd,
        macd_signal=signal,
        histogram=histogram,
        upper=upper,
        middle=middle,
        lower=lower,
        sma=sma,
        ema={period: talib.EMA(close, timeperiod=period) for period in EMA_PERIODS},
        atr=talib.ATR(high, low, close, timeperiod=ATR_PERIOD),
        crossover=crossover,
        percent_b=np.where(bands, inside, np.nan),
        vs_sma=vs_sma,
    )


def indicators_at(series: IndicatorSeries, i: int, as_of: str) -> dict[str, Any]:
    """The indicators as of bar ``i`` (0-based, at least 1) of ``series``, with their labels."""
    sma = {period: value(values[i]) for period, values in series.sma.items()}
    ema = {period: value(values[i]) for period, values in series.ema.items()}
    atr = value(series.atr[i])
    price = float(series.close[i])

    rsi_now = value(series.rsi[i])
    hist_now = value(series.histogram[i])
    crossover = {1: "bullish", -1: "bearish"}.get(int(series.crossover[i]))
    band_top, band_mid, band_bottom = value(series.upper[i]), value(series.middle[i]), value(series.lower[i])
    percent_b = value(series.percent_b[i])
    bandwidth = None
    if percent_b is not None:  # the bands exist, and their middle is not 0
        assert band_top is not None
        assert band_bottom is not None
        assert band_mid
        bandwidth = (band_top - band_bottom) / band_mid

    missing = [f"SMA {p} needs {p} bars" for p in SMA_PERIODS if sma[p] is None]
    return {
        "as_of": as_of,
        "price": price,
        "bars_used": i + 1,
        "rsi": {"value": rsi_now, "period": RSI_PERIOD, "zone": _rsi_zone(rsi_now)},
        "macd": {
            "macd": value(series.macd[i]),
            "signal": value(series.macd_signal[i]),
            "histogram": hist_now,
            "momentum": None if hist_now is None else "bullish" if hist_now > 0 else "bearish",
            "crossover": crossover,
        },
        "bollinger": {
            "upper": band_top,
            "middle": band_mid,
            "lower": band_bottom,
            "percent_b": percent_b,
            "bandwidth": bandwidth,
            "position": _band_position(percent_b),
        },
        "moving_averages": {
            **{f"sma_{p}": sma[p] for p in SMA_PERIODS},
            **{f"ema_{p}": ema[p] for p in EMA_PERIODS},
            **{f"price_vs_sma_{p}": value(series.vs_sma[p][i]) for p in SMA_PERIODS},
        },
        "trend": _trend(price, sma[50], sma[200]),
        "atr": {"value": atr, "period": ATR_PERIOD, "percent_of_price": _ratio(atr, price)},
        "warnings": missing,
    }


def _rsi_zone(rsi: float | None) -> str | None:
    if rsi is None:
        return None
    if rsi >= RSI_OVERBOUGHT:
        return "overbought"
    if rsi <= RSI_OVERSOLD:
        return "oversold"
    return "neutral"


def _band_position(percent_b: float | None) -> str | None:
    if percent_b is None:
        return None
    if percent_b > 1:
        return "above_upper"
    if percent_b < 0:
        return "below_lower"
    return "upper_half" if percent_b >= 0.5 else "lower_half"


def _trend(price: float, sma50: float | None, sma200: float | None) -> str | None:
    """up: price above SMA 50 above SMA 200; down: the reverse; otherwise sideways."""
    if sma50 is None or sma200 is None:
        return None
    if price > sma50 > sma200:
        return "up"
    if price < sma50 < sma200:
        return "down"
    return "sideways"


def volume_analysis(bars: pd.DataFrame, unusual_ratio: float) -> dict[str, Any]:
    """The latest volume against the average of the 20 sessions before it, and the volume trend."""
    return volume_figures(bars["volume"].to_numpy(dtype=float), unusual_ratio)


def volume_figures(volume: np.ndarray, unusual_ratio: float) -> dict[str, Any]:
    """``volume_analysis`` over an array of volumes, oldest first (NaN volumes are skipped)."""
    volume = volume[~np.isnan(volume)]
    if len(volume) < VOLUME_AVERAGE + 1 or not volume[-VOLUME_AVERAGE - 1 :].any():
        return {
            "available": False,
            "reason": f"needs {VOLUME_AVERAGE + 1} sessions with volume (an index has none)",
            "latest": value(volume[-1]) if len(volume) else None,
        }
    latest = float(volume[-1])
    average = float(volume[-VOLUME_AVERAGE - 1 : -1].sum()) / VOLUME_AVERAGE
    short = float(volume[-VOLUME_SHORT:].sum()) / VOLUME_SHORT
    long = float(volume[-VOLUME_AVERAGE:].sum()) / VOLUME_AVERAGE
    ratio = latest / average if average > 0 else None
    trend_ratio = short / long if long > 0 else None
    trend = None
    if trend_ratio is not None:
        trend = "rising" if trend_ratio > 1.1 else "falling" if trend_ratio < 0.9 else "flat"
    return {
        "available": True,
        "latest": latest,
        "average_20": average,
        "ratio_to_average": ratio,
        "unusual": ratio is not None and ratio >= unusual_ratio,
        "unusual_threshold": unusual_ratio,
        "trend": trend,
        "average_5_vs_20": trend_ratio,
    }
