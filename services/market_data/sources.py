"""What every price source is, and the one error each of them raises."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Protocol

import pandas as pd

from services.base.errors import DependencyUnavailable


class DataUnavailable(DependencyUnavailable):
    """A source has no data for a request; the message says why (answered as -32000)."""

    def __init__(self, message: str, *, source: str, symbol: str, **data: Any) -> None:
        super().__init__(message, source=source, symbol=symbol, **data)


class PriceSource(Protocol):
    name: str
    intervals: frozenset[str]
    # True when reading everything it has is cheap (files): the first refresh then takes it all.
    local: bool

    async def fetch(self, symbol: str, interval: str, start: date | datetime, end: datetime) -> pd.DataFrame:
        """Bars of ``symbol`` from ``start`` to ``end`` (both included) as ``bars`` frames them.

        Raises ``DataUnavailable`` with the reason when the source cannot answer.
        """
        ...

    def close(self) -> None:
        """Release what the source holds (threads, files)."""
        ...


def canonical_column(name: str) -> str:
    """``Adj Close`` -> ``adj_close``: the column names sources use, in the form ``bars`` uses."""
    return str(name).strip().lower().replace(" ", "_")
