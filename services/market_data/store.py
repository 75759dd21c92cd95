"""The SQLite price store: bars keyed by (symbol, interval, time) and the state of each series."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np
import pandas as pd

from services.base.clock import utc_iso
from services.base.db import Database, transaction
from services.market_data.bars import COLUMNS, empty_bars

_UPSERT = f"""
INSERT INTO bars (symbol, interval, time, {", ".join(COLUMNS)}, source, fetched_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (symbol, interval, time) DO UPDATE SET
    {", ".join(f"{name} = excluded.{name}" for name in COLUMNS)},
    source = excluded.source, fetched_at = excluded.fetched_at
WHERE {" OR ".join(f"bars.{name} IS NOT excluded.{name}" for name in COLUMNS)}
"""
_SELECT = f"SELECT time, {', '.join(COLUMNS)} FROM bars WHERE symbol = ? AND interval = ?"


@dataclass(frozen=True, slots=True)
class SeriesState:
    """What the store holds for one (symbol, interval) and how its last refresh went."""

    symbol: str
    interval: str
    revision: int = 0
    newest: str | None = None
    bar_count: int = 0
    source: str | None = None
    last_attempt: str | None = None
    last_success: str | None = None
    last_error: str | None = None


class PriceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def load_series(self) -> dict[tuple[str, str], SeriesState]:
        def read(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
            return conn.execute(
                "SELECT symbol, interval, revision, newest, bar_count, source, last_attempt, last_success,"
                " last_error FROM series"
            ).fetchall()

        rows = await self.db.run(read)
        return {(str(row[0]), str(row[1])): SeriesState(*row) for row in rows}  # type: ignore[arg-type]

    async def save(
        self, state: SeriesState, bars: pd.DataFrame, source: str, at: datetime
    ) -> tuple[int, SeriesState]:
        """Upsert ``bars``; return how many bars were new or changed, and the series' new state."""
        stamp = utc_iso(at)
        symbol, interval = state.symbol, state.interval
        rows = [
            (symbol, interval, key, *(None if v != v else v for v in values), source, stamp)
            for key, values in zip(bars.index, bars[list(COLUMNS)].itertuples(index=False), strict=True)
        ]

        def write(conn: sqlite3.Connection) -> tuple[int, SeriesState]:
            with transaction(conn):
                before = conn.total_changes
                conn.executemany(_UPSERT, rows)
                changed = conn.total_changes - before
                newest, count = conn.execute(
                    "SELECT MAX(time), COUNT(*) FROM bars WHERE symbol = ? AND interval = ?",
                    (symbol, interval),
                ).fetchone()
                new_state = replace(
                    state,
                    revision=state.revision + (1 if changed else 0),
                    newest=newest,
                    bar_count=count,
                    source=source,
                    last_attempt=stamp,
                    last_success=stamp,
                    last_error=None,
                )
                _write_state(conn, new_state)
            return changed, new_state

        return await self.db.run(write)

    async def record_failure(self, state: SeriesState, error: str, at: datetime) -> SeriesState:
        new_state = replace(state, last_attempt=utc_iso(at), last_error=error)

        def write(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                _write_state(conn, new_state)

        await self.db.run(write)
        return new_state

    async def bars(
        self,
        symbol: str,
        interval: str,
        *,
        start: str | None = None,
        end: str | None = None,
        last: int | None = None,
    ) -> pd.DataFrame:
        """Bars oldest first, between ``start`` and ``end`` keys (included), or the ``last`` N."""
        sql = _SELECT
        params: list[str | int] = [symbol, interval]
        if start is not None:
            sql += " AND time >= ?"
            params.append(start)
        if end is not None:
            sql += " AND time <= ?"
            params.append(end)
        if last is not None:
            sql += " ORDER BY time DESC LIMIT ?"
            params.append(last)
        else:
            sql += " ORDER BY time"
        rows = await self.db.run(lambda conn: conn.execute(sql, params).fetchall())
        if not rows:
            return empty_bars()
        if last is not None:
            rows.reverse()
        values = np.array([row[1:] for row in rows], dtype=float)
        frame = pd.DataFrame(values, columns=list(COLUMNS))
        frame.index = pd.Index([row[0] for row in rows], dtype=object, name="time")
        return frame


def _write_state(conn: sqlite3.Connection, state: SeriesState) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO series (symbol, interval, revision, newest, bar_count, source, last_attempt,"
        " last_success, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            state.symbol,
            state.interval,
            state.revision,
            state.newest,
            state.bar_count,
            state.source,
            state.last_attempt,
            state.last_success,
            state.last_error,
        ),
    )
