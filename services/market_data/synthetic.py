"""A generated ASX market for the offline demo: deterministic, and labelled SYNTHETIC wherever it
shows (the home it lives in carries the marker; see ``TradingHome.synthetic``).

Daily bars on real ASX sessions, in Yahoo's CSV format, so the ``clocked_csv`` source reads them like
real files: an index (^AXJO) as a geometric random walk with slow regime changes, and each stock
as beta times the index plus its own noise, with overnight gaps and volume that rises on big
moves. Nothing here pretends to be a forecast of anything.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import numpy as np

from services.asx.calendar import AsxCalendar

INDEX = "^AXJO"
# Starting prices near the real ones, so the figures look familiar; nothing else is real.
STARTS = {"CBA.AX": 100.0, "WBC.AX": 25.0, "ANZ.AX": 27.0, "NAB.AX": 30.0, INDEX: 7000.0}
HEADER = ("Date", "Open", "High", "Low", "Close", "Adj Close", "Volume")


def write_synthetic_market(
    directory: Path, first: date, last: date, symbols: Sequence[str], *, seed: int = 7
) -> list[Path]:
    """One ``<SYMBOL>.csv`` per symbol and one for ^AXJO, on the ASX sessions from ``first`` to
    ``last``; the same seed gives the same files."""
    days = AsxCalendar(first=first, last=last).sessions_between(first, last)
    rng = np.random.default_rng(seed)
    n = len(days)
    # The index: drift and volatility switch between calm and stressed regimes every few months.
    regime = np.repeat(rng.random(n // 60 + 1) < 0.25, 60)[:n]
    drift = np.where(regime, -0.0006, 0.0004)
    vol = np.where(regime, 0.017, 0.008)
    index_returns = drift + vol * rng.standard_normal(n)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [_write(directory, INDEX, days, index_returns, rng, volume=5e8)]
    for symbol in symbols:
        beta = 0.9 + 0.3 * rng.random()
        own = 0.011 * rng.standard_normal(n)
        # A little short-term persistence, so trends exist for the indicators to find.
        for i in range(1, n):
            own[i] += 0.15 * own[i - 1]
        paths.append(_write(directory, symbol, days, beta * index_returns + own, rng, volume=3e6))
    return paths


def _write(
    directory: Path, symbol: str, days: Sequence[date], returns: np.ndarray, rng: np.random.Generator,
    *, volume: float,
) -> Path:  # fmt: skip
    closes = STARTS.get(symbol, 50.0) * np.exp(np.cumsum(returns))
    gaps = 1 + 0.003 * rng.standard_normal(len(days))
    opens = np.concatenate([[closes[0]], closes[:-1]]) * gaps
    spread = np.abs(0.006 * rng.standard_normal(len(days)))
    highs = np.maximum(opens, closes) * (1 + spread)
    lows = np.minimum(opens, closes) * (1 - spread)
    volumes = volume * np.exp(0.3 * rng.standard_normal(len(days))) * (1 + 40 * np.abs(returns))
    path = directory / f"{symbol}.csv"
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(HEADER)
        for row in zip(days, opens, highs, lows, closes, closes, volumes, strict=True):
            day, o, h, low, c, adj, v = row
            writer.writerow(
                [day.isoformat(), f"{o:.4f}", f"{h:.4f}", f"{low:.4f}", f"{c:.4f}", f"{adj:.4f}", int(v)]
            )
    return path
