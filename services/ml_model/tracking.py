"""Live tracking: every prediction stored, scored once its horizon has passed.

One row per symbol, model (or ``ensemble``) and session date: asking again about the same day
replaces the unscored row, so a caller that asks every few minutes does not count ten times.
A row is scored with the adjusted close of its day and the close ``horizon`` sessions later
(closed sessions only: the caller trims a bar still in progress): up or down beyond the
threshold, or ``flat`` in between (left out of accuracy, like in training). A symbol the market
data service does not serve is marked unscorable with the reason, once, not asked about again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import pandas as pd

from services.base.clock import utc_iso
from services.base.db import Database, transaction
from services.ml_model.features import clean_bars, label_of

ENSEMBLE = "ensemble"


@dataclass(frozen=True, slots=True)
class PredictionRow:
    symbol: str
    model: str
    as_of: str
    scope: str
    version: str | None
    p_up: float


class PredictionLog:
    def __init__(self, db: Database, *, horizon: int, threshold: float) -> None:
        self.db = db
        self.horizon = horizon
        self.threshold = threshold

    async def record(self, rows: Sequence[PredictionRow], made_at: datetime) -> None:
        """Store predictions in one transaction; an unscored row for the same day is replaced."""
        made = utc_iso(made_at)
        values = [
            (r.symbol, r.model, r.as_of, r.scope, r.version, made, self.horizon, self.threshold, r.p_up,
             int(r.p_up >= 0.5))
            for r in rows
        ]  # fmt: skip

        def write(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.executemany(
                    """
                    INSERT INTO predictions (symbol, model, as_of, scope, version, made_at, horizon,
                                             threshold, p_up, predicted)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (symbol, model, as_of) DO UPDATE SET
                        scope = excluded.scope, version = excluded.version, made_at = excluded.made_at,
                        asked = asked + 1, p_up = excluded.p_up, predicted = excluded.predicted
                    WHERE scored_at IS NULL
                    """,
                    values,
                )

        await self.db.run(write)

    async def due(self, today: date) -> dict[str, str]:
        """Symbols with unscored predictions made before ``today``: symbol -> earliest as_of."""

        def read(conn: sqlite3.Connection) -> dict[str, str]:
            rows = conn.execute(
                "SELECT symbol, min(as_of) FROM predictions WHERE scored_at IS NULL AND as_of < ? "
                "GROUP BY symbol",
                (today.isoformat(),),
            ).fetchall()
            return {symbol: first for symbol, first in rows}

        return await self.db.run(read)

    async def score(self, symbol: str, bars: pd.DataFrame, now: datetime) -> int:
        """Score ``symbol``'s open predictions whose horizon the bars now cover; the count scored."""
        close = clean_bars(bars)["close"] if len(bars) else pd.Series(dtype=float)
        days = pd.Index([d.date().isoformat() for d in close.index])
        values = close.to_numpy(dtype=float)

        def work(conn: sqlite3.Connection) -> int:
            open_rows = conn.execute(
                "SELECT model, as_of, horizon, threshold FROM predictions "
                "WHERE symbol = ? AND scored_at IS NULL",
                (symbol,),
            ).fetchall()
            updates = []
            for model, as_of, horizon, threshold in open_rows:
                # The session the features describe: that day, or the last one before it.
                at = int(days.searchsorted(as_of, side="right")) - 1
                if at < 0 or at + horizon >= len(values):
                    continue
                realised = float(values[at + horizon] / values[at] - 1.0)
                updates.append((realised, label_of(realised, threshold), utc_iso(now), symbol, model, as_of))
            with transaction(conn):
                conn.executemany(
                    "UPDATE predictions SET realised_return = ?, outcome = ?, scored_at = ? "
                    "WHERE symbol = ? AND model = ? AND as_of = ?",
                    updates,
                )
            return len(updates)

        return await self.db.run(work)

    async def mark_unscorable(self, symbol: str, reason: str, now: datetime) -> int:
        """Close ``symbol``'s open predictions as never scorable (e.g. market data lacks it)."""

        def work(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                return conn.execute(
                    "UPDATE predictions SET scored_at = ?, unscorable = ? "
                    "WHERE symbol = ? AND scored_at IS NULL",
                    (utc_iso(now), reason[:500], symbol),
                ).rowcount

        return await self.db.run(work)

    async def performance(self, symbol: str, window: int) -> dict[str, Any]:
        """Live figures per model for ``symbol``: counts, accuracy overall and over the last ``window``."""

        def read(conn: sqlite3.Connection) -> dict[str, Any]:
            rows = conn.execute(
                "SELECT model, as_of, p_up, predicted, outcome, scored_at, realised_return, unscorable "
                "FROM predictions WHERE symbol = ? ORDER BY model, as_of",
                (symbol,),
            ).fetchall()
            by_model: dict[str, list[tuple[Any, ...]]] = {}
            for row in rows:
                by_model.setdefault(row[0], []).append(row)
            return {model: _figures(model_rows, window) for model, model_rows in by_model.items()}

        return await self.db.run(read)

    async def prune(self, before: date) -> int:
        def work(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                return conn.execute("DELETE FROM predictions WHERE as_of < ?", (before.isoformat(),)).rowcount

        return await self.db.run(work)


def _accuracy(rows: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    decided = [r for r in rows if r[4] is not None]
    if not decided:
        return {"scored": 0, "accuracy": None, "brier": None}
    hits = sum(1 for r in decided if r[3] == r[4])
    brier = sum((r[2] - r[4]) ** 2 for r in decided) / len(decided)
    return {"scored": len(decided), "accuracy": round(hits / len(decided), 4), "brier": round(brier, 4)}


def _figures(rows: list[tuple[Any, ...]], window: int) -> dict[str, Any]:
    unscorable = [r for r in rows if r[7] is not None]
    scored = [r for r in rows if r[5] is not None and r[7] is None]
    decided = [r for r in scored if r[4] is not None]
    return {
        "predictions": len(rows),
        "pending": len(rows) - len(scored) - len(unscorable),
        "flat": len(scored) - len(decided),
        "unscorable": len(unscorable),
        "unscorable_reason": unscorable[-1][7] if unscorable else None,
        "all": _accuracy(scored),
        "rolling": {"window": window, **_accuracy(decided[-window:])},
        "last_as_of": rows[-1][1] if rows else None,
        "up_share_predicted": round(sum(r[3] for r in rows) / len(rows), 4) if rows else None,
    }
