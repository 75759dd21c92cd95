"""Bars as every part of the service sees them: a DataFrame indexed by bar key, one column per field.

The bar key is text that sorts as time: the session date (``2024-01-02``) for daily bars, the UTC
start (``utc_iso``) for intraday ones. A field a source did not give is NaN: a ``null`` row has
no prices at all, and a clocked bar of a session still in progress has only its open.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from services.asx.calendar import SYDNEY
from services.base.clock import utc_iso

DAILY = "1d"
INTERVALS: dict[str, timedelta] = {
    "1d": timedelta(days=1),
    "1h": timedelta(hours=1),
    "15m": timedelta(minutes=15),
    "5m": timedelta(minutes=5),
}
COLUMNS = ("open", "high", "low", "close", "adj_close", "volume")
PRICE_COLUMNS = ("open", "high", "low", "close")


def empty_bars() -> pd.DataFrame:
    frame = pd.DataFrame({name: np.array([], dtype=float) for name in COLUMNS})
    frame.index = pd.Index([], dtype=object, name="time")
    return frame


def make_bars(keys: list[str], values: dict[str, Any]) -> pd.DataFrame:
    """Bars from keys and column arrays (missing columns become NaN), sorted, last duplicate kept."""
    columns = {
        name: np.asarray(values[name], dtype=float) if name in values else np.full(len(keys), np.nan)
        for name in COLUMNS
    }
    frame = pd.DataFrame(columns, index=pd.Index(keys, dtype=object, name="time"))
    frame = frame[~frame.index.duplicated(keep="last")]
    return frame.sort_index(kind="stable")


def bar_key(when: datetime | date | pd.Timestamp, interval: str) -> str:
    """The key of a bar starting at ``when``. A daily bar's date is its date on the exchange."""
    if interval == DAILY:
        if isinstance(when, datetime) and when.tzinfo is not None:
            return when.astimezone(SYDNEY).date().isoformat()
        if isinstance(when, datetime):
            return when.date().isoformat()
        return when.isoformat()
    if not isinstance(when, datetime) or when.tzinfo is None:
        raise ValueError(f"an intraday bar needs a timezone-aware start, got {when!r}")
    return utc_iso(when)


def key_date(key: str) -> date:
    return date.fromisoformat(key[:10])


def complete(bars: pd.DataFrame) -> pd.DataFrame:
    """The bars with a close: what indicators and analysis use."""
    return bars[bars["close"].notna()]


def to_columns(bars: pd.DataFrame) -> dict[str, list[Any]]:
    """Column lists for the wire, NaN as null."""
    out: dict[str, list[Any]] = {"time": list(bars.index)}
    for name in COLUMNS:
        values = bars[name].to_numpy()
        out[name] = [None if v != v else float(v) for v in values.tolist()]
    return out


def from_columns(columns: dict[str, list[Any]]) -> pd.DataFrame:
    """Bars back from ``to_columns`` (what ``get_history`` answers), null as NaN."""
    values = {name: column for name, column in columns.items() if name != "time"}
    return make_bars(list(columns["time"]), values)


def to_records(bars: pd.DataFrame) -> list[dict[str, Any]]:
    """One dict per bar for the wire, NaN as null."""
    columns = to_columns(bars)
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]
