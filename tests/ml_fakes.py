"""Synthetic daily bars and feature rows for the ml_model tests.

Bars have the shape the market data service keeps them in (``make_bars``): an object index of
ISO session dates named ``time`` and float columns open, high, low, close, adj_close, volume.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

from services.market_data.bars import make_bars
from services.ml_model.features import FEATURE_NAMES


def session_days(count: int, start: str = "2020-01-01", end: str | None = None) -> list[str]:
    """``count`` business days from ``start`` (or up to ``end``) as ISO date strings."""
    days = pd.bdate_range(end=end, periods=count) if end else pd.bdate_range(start, periods=count)
    return [day.date().isoformat() for day in days]


def random_walk_bars(
    count: int,
    *,
    seed: int,
    start: str = "2020-01-01",
    end: str | None = None,
    price: float = 100.0,
    daily_sd: float = 0.012,
    adj_factor: np.ndarray | float = 1.0,
) -> pd.DataFrame:
    """A seeded geometric random walk; ``close`` is the raw price, ``adj_close`` = close * factor."""
    rng = np.random.default_rng(seed)
    close = price * np.exp(np.cumsum(rng.normal(0.0003, daily_sd, count)))
    spread = np.abs(rng.normal(0.0, daily_sd / 2, count))
    open_ = close * (1.0 + rng.normal(0.0, daily_sd / 3, count))
    high = np.maximum(open_, close) * (1.0 + spread)
    low = np.minimum(open_, close) * (1.0 - spread)
    volume = rng.integers(500_000, 2_000_000, count).astype(float)
    factor = np.broadcast_to(np.asarray(adj_factor, dtype=float), (count,))
    return make_bars(
        session_days(count, start, end),
        {
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "adj_close": close * factor,
            "volume": volume,
        },
    )


def signal_data(rows: int, *, seed: int, features: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose label follows the first column (plus noise): a signal any model can learn."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, features))
    y = (X[:, 0] + rng.normal(0.0, 0.5, rows) > 0).astype(int)
    return X, y


def valid_features() -> dict[str, float]:
    """One plausible value per feature, every one inside its bounds."""
    values = {
        "ret_1d": 0.004,
        "ret_5d": -0.012,
        "ret_20d": 0.03,
        "rsi_14": 55.0,
        "macd_hist": 0.001,
        "bb_percent_b": 0.6,
        "atr_pct": 0.015,
        "volume_ratio": 1.2,
        "dist_sma50": 0.02,
        "dist_sma200": 0.05,
        "index_ret_1d": 0.002,
        "index_ret_5d": 0.006,
        "index_ret_20d": -0.01,
        "index_trend": 0.03,
    }
    assert tuple(values) == FEATURE_NAMES
    return values


class Tripwire(ClassifierMixin, BaseEstimator):
    """An up/down classifier of a type no allow-list knows; records every time one is rebuilt.

    skops rebuilds an object with ``cls.__new__`` and ``__setstate__``: a loader that builds it
    leaves a mark in ``REBUILT``.
    """

    REBUILT: list[str] = []

    def fit(self, X: np.ndarray, y: np.ndarray) -> Tripwire:
        self.classes_ = np.array([0, 1])
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.zeros(len(X), dtype=int)

    def __setstate__(self, state: dict[str, Any]) -> None:
        Tripwire.REBUILT.append(type(self).__qualname__)
        super().__setstate__(state)
