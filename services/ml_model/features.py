"""Features and labels from daily bars: one function for training and for live prediction.

``feature_frame`` turns a symbol's bars and the index's bars into one row of features per day,
using only that day's bar and the bars before it. Training takes every row that has a label;
live prediction takes the last row. Both go through ``check_row``, so a value the models were
never meant to see (NaN, infinite, absurd) is refused, not zero-filled.

Prices are adjusted for dividends and splits with the ``adj_close / close`` factor when the
source gives one, so a bank's ex-dividend drop is not read as a fall.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import talib

from services.base.errors import InvalidParams
from services.market_data.indicators import (
    ATR_PERIOD,
    BOLLINGER_DEVIATIONS,
    BOLLINGER_PERIOD,
    MACD_FAST,
    MACD_SIGNAL,
    MACD_SLOW,
    RSI_PERIOD,
    VOLUME_AVERAGE,
)

# The index's last bar may be a few days older than the symbol's (a late or missing index bar);
# older than this, its features are missing rather than stale.
INDEX_TOLERANCE = pd.Timedelta(days=5)


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    low: float
    high: float
    meaning: str


# The bounds are far outside anything real data gives; a value past them is a data error
# (a bad tick, a unit mistake), not a market move.
FEATURES: tuple[Feature, ...] = (
    Feature("ret_1d", -0.9, 3.0, "return over the last trading day"),
    Feature("ret_5d", -0.95, 5.0, "return over the last 5 trading days"),
    Feature("ret_20d", -0.99, 10.0, "return over the last 20 trading days"),
    Feature("rsi_14", 0.0, 100.0, "RSI(14)"),
    Feature("macd_hist", -0.5, 0.5, "MACD(12,26,9) histogram as a fraction of the price"),
    Feature("bb_percent_b", -10.0, 11.0, "where the close sits in its Bollinger(20,2) bands; 0..1 inside"),
    Feature("atr_pct", 0.0, 1.0, "ATR(14) as a fraction of the price"),
    Feature("volume_ratio", 0.0, 100.0, "volume over its 20-day average"),
    Feature("dist_sma50", -0.95, 5.0, "close over SMA50, less 1"),
    Feature("dist_sma200", -0.95, 10.0, "close over SMA200, less 1"),
    Feature("index_ret_1d", -0.5, 1.0, "index return over the last trading day"),
    Feature("index_ret_5d", -0.6, 1.5, "index return over the last 5 trading days"),
    Feature("index_ret_20d", -0.8, 3.0, "index return over the last 20 trading days"),
    Feature("index_trend", -0.8, 3.0, "index SMA50 over SMA200, less 1 (above 0: uptrend)"),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
_BY_NAME = {f.name: f for f in FEATURES}


def clean_bars(bars: pd.DataFrame) -> pd.DataFrame:
    """Complete, positive bars adjusted for dividends and splits, indexed by session date."""
    needed = bars[["high", "low", "close"]]
    usable = needed.notna().all(axis=1) & (needed > 0).all(axis=1)
    frame = bars.loc[usable].copy()
    # One resolution whatever the input (an empty index would otherwise parse as seconds and not
    # merge with a parsed one).
    frame.index = pd.DatetimeIndex(pd.to_datetime(frame.index.astype(str).str[:10]), name="date").as_unit(
        "ns"
    )
    frame = frame[~frame.index.duplicated(keep="last")].sort_index()
    if "adj_close" in frame:
        factor = (frame["adj_close"] / frame["close"]).where(lambda f: (f > 0) & np.isfinite(f))
        factor = factor.ffill().bfill().fillna(1.0)
    else:
        factor = pd.Series(1.0, index=frame.index)
    for column in ("open", "high", "low", "close"):
        if column in frame:
            frame[column] = frame[column] * factor
    return frame


def _returns(close: pd.Series, days: int) -> pd.Series:
    return close / close.shift(days) - 1.0


def _symbol_features(bars: pd.DataFrame) -> pd.DataFrame:
    close = bars["close"].to_numpy(dtype=float)
    high = bars["high"].to_numpy(dtype=float)
    low = bars["low"].to_numpy(dtype=float)
    _macd, _signal, histogram = talib.MACD(
        close, fastperiod=MACD_FAST, slowperiod=MACD_SLOW, signalperiod=MACD_SIGNAL
    )
    upper, _middle, lower = talib.BBANDS(
        close, timeperiod=BOLLINGER_PERIOD, nbdevup=BOLLINGER_DEVIATIONS, nbdevdn=BOLLINGER_DEVIATIONS
    )
    width = upper - lower
    with np.errstate(divide="ignore", invalid="ignore"):
        percent_b = np.where(width > 0, (close - lower) / width, np.nan)
    volume = bars["volume"] if "volume" in bars else pd.Series(np.nan, index=bars.index)
    average_volume = volume.rolling(VOLUME_AVERAGE, min_periods=VOLUME_AVERAGE).mean()
    series = pd.Series(close, index=bars.index)
    return pd.DataFrame(
        {
            "ret_1d": _returns(series, 1),
            "ret_5d": _returns(series, 5),
            "ret_20d": _returns(series, 20),
            "rsi_14": talib.RSI(close, timeperiod=RSI_PERIOD),
            "macd_hist": histogram / close,
            "bb_percent_b": percent_b,
            "atr_pct": talib.ATR(high, low, close, timeperiod=ATR_PERIOD) / close,
            "volume_ratio": volume / average_volume.where(average_volume > 0),
            "dist_sma50": close / talib.SMA(close, timeperiod=50) - 1.0,
            "dist_sma200": close / talib.SMA(close, timeperiod=200) - 1.0,
        },
        index=bars.index,
    )


def _index_features(index_bars: pd.DataFrame) -> pd.DataFrame:
    close = index_bars["close"]
    values = close.to_numpy(dtype=float)
    return pd.DataFrame(
        {
            "index_ret_1d": _returns(close, 1),
            "index_ret_5d": _returns(close, 5),
            "index_ret_20d": _returns(close, 20),
            "index_trend": talib.SMA(values, timeperiod=50) / talib.SMA(values, timeperiod=200) - 1.0,
            "index_date": index_bars.index,
        },
        index=index_bars.index,
    )


def feature_frame(bars: pd.DataFrame, index_bars: pd.DataFrame) -> pd.DataFrame:
    """One row per session of ``bars`` with every feature (NaN where it cannot be computed yet).

    Both frames are raw bars as the market data service keeps them (``clean_bars`` is applied
    here). An index bar is matched to the latest one on or before the symbol's date, at most
    ``INDEX_TOLERANCE`` older.
    """
    symbol = clean_bars(bars)
    index = clean_bars(index_bars)
    own = _symbol_features(symbol)
    market = _index_features(index)
    joined = pd.merge_asof(
        own.reset_index(),
        market.reset_index(drop=True),
        left_on="date",
        right_on="index_date",
        direction="backward",
        tolerance=INDEX_TOLERANCE,
    ).set_index("date")
    joined["close"] = symbol["close"]
    return joined[[*FEATURE_NAMES, "close"]]


def forward_returns(close: pd.Series, horizon: int) -> pd.Series:
    """The return from each day's close to the close ``horizon`` trading days later (NaN at the end)."""
    return close.shift(-horizon) / close - 1.0


def labels(forward: pd.Series, threshold: float) -> pd.Series:
    """1.0 for up beyond +threshold, 0.0 for down beyond -threshold, NaN in between or unknown."""
    out = pd.Series(np.nan, index=forward.index)
    out[forward > threshold] = 1.0
    out[forward < -threshold] = 0.0
    return out


def label_of(forward_return: float, threshold: float) -> int | None:
    """``labels`` for one return: 1 up, 0 down, None inside the threshold."""
    if forward_return > threshold:
        return 1
    if forward_return < -threshold:
        return 0
    return None


def out_of_range(frame: pd.DataFrame) -> pd.Series:
    """True for rows with any feature missing, infinite or outside its bounds."""
    bad = pd.Series(False, index=frame.index)
    for feature in FEATURES:
        column = frame[feature.name]
        bad |= ~np.isfinite(column) | (column < feature.low) | (column > feature.high)
    return bad


def check_row(values: Any, *, field: str = "features") -> np.ndarray:
    """A caller's feature mapping as a model input row, or -32602 naming the first bad feature."""
    if not isinstance(values, Mapping):
        raise InvalidParams(f"{field} must be an object of feature name to number", field=field)
    missing = [name for name in FEATURE_NAMES if name not in values]
    if missing:
        raise InvalidParams(
            f"missing feature(s): {', '.join(missing)}", field=f"{field}.{missing[0]}", missing=missing
        )
    extra = sorted(str(name) for name in values if name not in _BY_NAME)
    if extra:
        raise InvalidParams(
            f"unknown feature(s): {', '.join(extra)}; expected: {', '.join(FEATURE_NAMES)}",
            field=f"{field}.{extra[0]}",
            unknown=extra,
        )
    row = np.empty(len(FEATURES), dtype=float)
    for i, feature in enumerate(FEATURES):
        value = values[feature.name]
        where = f"{field}.{feature.name}"
        if value is None:
            raise InvalidParams(f"{feature.name} is null (not computable from the bars given)", field=where)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidParams(f"{feature.name} must be a number, not {type(value).__name__}", field=where)
        try:
            value = float(value)
        except OverflowError:
            raise InvalidParams(f"{feature.name} is too large for a number", field=where) from None
        if math.isnan(value):
            raise InvalidParams(f"{feature.name} is NaN", field=where)
        if math.isinf(value):
            raise InvalidParams(f"{feature.name} is infinite", field=where)
        if not feature.low <= value <= feature.high:
            raise InvalidParams(
                f"{feature.name} = {value:g} is outside {feature.low:g}..{feature.high:g} "
                f"({feature.meaning})",
                field=where,
            )
        row[i] = value
    return row


def latest_row(frame: pd.DataFrame) -> tuple[str, dict[str, float]]:
    """The last day of a ``feature_frame`` as (date, features); NaN stays NaN for ``check_row`` to name."""
    if frame.empty:
        raise ValueError("no complete bars to compute features from")
    last = frame.iloc[-1]
    return frame.index[-1].date().isoformat(), {name: float(last[name]) for name in FEATURE_NAMES}
