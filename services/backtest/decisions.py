"""Every prediction the stack would make over a stretch of history, computed a symbol at a time.

The live services answer one moment at a time; here each series is worked once: indicators over
the whole series (``indicator_series``), features over the whole series (``feature_frame``), each
model's ``predict_proba`` over every row at once. Then each prediction round reads its row through
the very functions the services call (``indicators_at``, ``volume_figures``, ``market_context``,
``ensemble_answer``, and prediction's ``technical_input``, ``ml_input``, ``decide``).

What a round sees is what the stack saw then (the ``clocked_csv`` source's rule): a bar's open
from its session's open, the rest from its close. So the 09:30 round works on the last close and
the 17:00 round on the day's. The ML window is the ml_model service's: bars from ``history_days``
before the round to the last closed session.

Where a whole-series value could differ from the live one, the live computation is used: an ML
window with fewer than ``EXACT_BELOW`` bars (a gap in the data) is computed from that window
alone, as ml_model would. Recursive indicators (RSI, MACD, ATR) over a 400-bar window differ from
the whole-series ones by less than 1e-12 of their value.
"""

from __future__ import annotations

import bisect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from services.asx.calendar import SYDNEY, AsxCalendar, local_day_end
from services.base.errors import InvalidParams
from services.market_data.config import MarketDataConfig
from services.market_data.context import NotEnoughHistory, market_context
from services.market_data.indicators import IndicatorSeries, indicator_series, indicators_at, volume_figures
from services.ml_model.config import MlModelConfig
from services.ml_model.features import (
    FEATURE_NAMES,
    check_row,
    clean_bars,
    feature_frame,
    latest_row,
    out_of_range,
)
from services.ml_model.ml_model_service import ensemble_answer, model_probabilities
from services.ml_model.registry import LoadedModel
from services.prediction.config import PredictionConfig
from services.prediction.decision import (
    Context,
    Decision,
    Input,
    context_for,
    decide,
    ml_input,
    no_context,
    technical_input,
    unavailable,
)
from services.prediction.decision import (
    market_context as read_context,
)

# An ML window with fewer complete bars than this is computed from the window alone.
EXACT_BELOW = 260
SMA_LONG = 200
NO_NEWS = "sentiment has zero confidence: no historical news in a back-test"


@dataclass(frozen=True, slots=True)
class Made:
    """One prediction: when, on which price, the decision, and the inputs it was made on."""

    symbol: str
    at: datetime  # UTC
    price: float
    price_time: str
    decision: Decision
    # The times of the inputs used (prediction's cache key): the same key again is a repeat of
    # the same decision, stored and sent once.
    key: tuple[Any, ...]


@dataclass(slots=True)
class Timeline:
    """One price file as the clock reveals it: each row's open from ``open_known``, the rest from
    ``all_known`` (a session's open and close; the day's end for a row dated on no session)."""

    keys: list[str]
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    open_known: list[float]  # POSIX times: compared millions of times
    all_known: list[float]
    complete: np.ndarray  # positions of the rows with a close
    complete_before: np.ndarray  # complete rows among the first i rows, for i = 0..len

    @classmethod
    def of(cls, bars: pd.DataFrame, calendar: AsxCalendar) -> Timeline:
        keys = [str(key) for key in bars.index]
        opens: list[float] = []
        closes: list[float] = []
        for key in keys:
            day = date.fromisoformat(key)
            session = calendar.session(day) if calendar.first <= day <= calendar.last else None
            opens.append((session.open if session else local_day_end(day)).timestamp())
            closes.append((session.close if session else local_day_end(day)).timestamp())
        close = bars["close"].to_numpy(float)
        has_close = ~np.isnan(close)
        return cls(
            keys,
            bars["open"].to_numpy(float),
            bars["high"].to_numpy(float),
            bars["low"].to_numpy(float),
            close,
            bars["volume"].to_numpy(float),
            opens,
            closes,
            np.flatnonzero(has_close),
            np.concatenate([[0], np.cumsum(has_close)]),
        )

    def known(self, now: datetime) -> int:
        """How many rows are wholly visible at ``now``."""
        return bisect.bisect_right(self.all_known, now.timestamp())

    def newest(self, now: datetime) -> str | None:
        """The date of the newest row visible at ``now``, whole or only its open."""
        known = self.known(now)
        if known < len(self.keys) and self.open_known[known] <= now.timestamp():
            return self.keys[known]
        return self.keys[known - 1] if known else None

    def latest_price(self, now: datetime) -> tuple[float, str] | None:
        """The price market data shows at ``now`` and the date of its bar: the last visible close,
        or the open of a session in progress (as ``get_market_data``'s ``_latest_price``)."""
        known = self.known(now)
        visible_open = known < len(self.keys) and self.open_known[known] <= now.timestamp()
        if visible_open and self.open[known] == self.open[known]:
            return float(self.open[known]), self.keys[known]
        if known == 0:
            return None
        last = known - 1
        if self.close[last] == self.close[last]:
            return float(self.close[last]), self.keys[last]
        if self.open[last] == self.open[last]:
            return float(self.open[last]), self.keys[last]
        done = int(self.complete_before[known])
        if done == 0:
            return None
        at = int(self.complete[done - 1])
        return float(self.close[at]), self.keys[at]


@dataclass(frozen=True, slots=True)
class Models:
    """The models that serve a symbol (its own scope, else the pooled one)."""

    scope: str
    members: list[LoadedModel]


class SymbolHistory:
    """One symbol's series worked once: indicators and ML probabilities for every complete bar."""

    def __init__(
        self,
        symbol: str,
        bars: pd.DataFrame,
        index_bars: pd.DataFrame,
        timeline: Timeline,
        models: Models | None,
        md: MarketDataConfig,
        ml: MlModelConfig,
    ) -> None:
        self.symbol = symbol
        self.timeline = timeline
        self.md = md
        self.ml_config = ml
        self.models = models
        done = timeline.complete
        self.closes = timeline.close[done]
        self.complete_keys = [timeline.keys[i] for i in done]
        self.series: IndicatorSeries = indicator_series(
            np.ascontiguousarray(self.closes),
            np.ascontiguousarray(timeline.high[done]),
            np.ascontiguousarray(timeline.low[done]),
        )
        self.volumes = timeline.volume[done]
        self._bars, self._index_bars = bars, index_bars
        self.features = feature_frame(bars, index_bars)
        self.feature_days = [stamp.date() for stamp in self.features.index]
        self.bad = out_of_range(self.features).to_numpy()
        self.p_up: list[np.ndarray] = []
        self.rows = self.features[list(FEATURE_NAMES)].to_numpy(float)
        if models is not None:
            good = ~self.bad
            for member in models.members:
                p = np.full(len(self.rows), np.nan)
                if good.any():
                    p[good] = model_probabilities(member, self.rows[good])
                self.p_up.append(p)
        self._index_days = [stamp.date() for stamp in clean_bars(index_bars).index]
        self._technical: dict[tuple[Any, ...], tuple[dict[str, Any], Input] | None] = {}
        self._ml: dict[int, Input] = {}

    # -- market data ----------------------------------------------------------------------

    def technical(
        self, now: datetime, calendar: AsxCalendar, config: PredictionConfig
    ) -> tuple[dict[str, Any], Input] | None:
        """Market data's answer at ``now`` and prediction's technical input from it; None where
        prediction fails the symbol (too few bars). The same visible bars give the same answer:
        worked out once."""
        known = self.timeline.known(now)
        newest = self.timeline.newest(now)
        behind = calendar.sessions_after(date.fromisoformat(newest), now) if newest else None
        key = (known, newest, behind)
        if key not in self._technical:
            answer = self.market_data(now, behind)
            technical = technical_input(answer, config) if answer is not None else None
            self._technical[key] = (answer, technical) if answer and technical and technical.used else None
        return self._technical[key]

    def market_data(self, now: datetime, sessions_behind: int | None) -> dict[str, Any] | None:
        """What ``get_market_data`` answers at ``now`` (the parts prediction reads), or None
        without a complete bar."""
        known = self.timeline.known(now)
        count = int(self.timeline.complete_before[known])
        if count == 0:
            return None
        latest = self.timeline.latest_price(now)
        assert latest is not None
        price, price_time = latest
        last = count - 1
        # The price is the last close here: rounds are outside sessions (the open's partial bar
        # is read the same way by latest_price when a round falls inside one).
        in_session = price_time != self.complete_keys[last]
        before = self.closes[last] if in_session else (self.closes[last - 1] if count >= 2 else None)
        if count < 2:
            return None  # market data cannot compute indicators: prediction fails the symbol
        size = max(self.md.analysis_bars, self.md.quality_window_sessions + 30)
        return {
            "price": price,
            "price_time": price_time,
            "change_percent": None if not before else (price / before - 1.0) * 100.0,
            "indicators": indicators_at(self.series, last, self.complete_keys[last]),
            "volume": volume_figures(
                self.volumes[max(0, count - size) : count], self.md.unusual_volume_ratio
            ),
            "sessions_behind": sessions_behind,
        }

    # -- ML -------------------------------------------------------------------------------

    def ml(self, now: datetime, calendar: AsxCalendar) -> Input:
        """The ML input at ``now``: the ensemble over the features of the last closed session, as
        ml_model answers ``get_ensemble_prediction``; unavailable where ml_model would refuse."""
        if self.models is None:
            return unavailable("ml", "ml unavailable: no model serves this symbol")
        session = calendar.last_closed(now)
        if session is None:
            return unavailable("ml", "ml unavailable: no session has closed yet")
        since = now.astimezone(SYDNEY).date() - timedelta(days=self.ml_config.history_days)
        row = bisect.bisect_right(self.feature_days, session.date) - 1
        if row < 0 or self.feature_days[row] < since:
            return unavailable("ml", "ml unavailable: no complete bars to compute features from")
        as_of = self.feature_days[row]
        if self.bad[row]:  # in a window too: a value out of range, or no index bar near it
            if row not in self._ml:
                try:
                    check_row(dict(zip(FEATURE_NAMES, self.rows[row].tolist(), strict=True)))
                except InvalidParams as exc:
                    self._ml[row] = unavailable("ml", f"ml unavailable: {exc.message}")
            return self._ml[row]
        # The window ml_model computes on starts at ``since``: too short for SMA 200, it gives no
        # usable features; short enough for the recursive ones to differ, it is computed as is.
        rows = self._rows_in_window(self.feature_days, since, as_of)
        matched = bisect.bisect_right(self._index_days, as_of) - 1
        index_rows = (
            self._rows_in_window(self._index_days, since, self._index_days[matched]) if matched >= 0 else 0
        )
        if min(rows, index_rows) < SMA_LONG:
            return unavailable("ml", f"ml unavailable: fewer than {SMA_LONG} bars since {since} for SMA 200")
        if min(rows, index_rows) < EXACT_BELOW:
            return self._ml_from_window(since, session.date)
        if row not in self._ml:
            p_up = [float(p[row]) for p in self.p_up]
            answer = ensemble_answer(
                self.symbol, self.models.scope, as_of, self.models.members, p_up, self.ml_config.horizon
            )
            self._ml[row] = ml_input(answer)
        return self._ml[row]

    @staticmethod
    def _rows_in_window(days: Sequence[date], since: date, last: date) -> int:
        """Rows from ``since`` to ``last``; every row when ``since`` is before the first (the
        window then holds the whole series, as the whole-series computation does)."""
        first = bisect.bisect_left(days, since)
        count = bisect.bisect_right(days, last) - first
        return sys.maxsize if first == 0 else count

    def _ml_from_window(self, since: date, last: date) -> Input:
        """The live computation itself, over the window ml_model would use."""
        assert self.models is not None

        def window(bars: pd.DataFrame) -> pd.DataFrame:
            return bars[(bars.index >= since.isoformat()) & (bars.index <= last.isoformat())]

        try:
            as_of, values = latest_row(feature_frame(window(self._bars), window(self._index_bars)))
            row = check_row(values)[None, :]
        except (ValueError, InvalidParams) as exc:
            message = exc.message if isinstance(exc, InvalidParams) else str(exc)
            return unavailable("ml", f"ml unavailable: {message}")
        p_up = [float(model_probabilities(m, row)[0]) for m in self.models.members]
        return ml_input(
            ensemble_answer(
                self.symbol,
                self.models.scope,
                date.fromisoformat(as_of),
                self.models.members,
                p_up,
                self.ml_config.horizon,
            )
        )


class IndexContext:
    """The market context from the index, as ``get_market_context`` answers at a moment."""

    def __init__(self, timeline: Timeline, md: MarketDataConfig) -> None:
        self.timeline = timeline
        self.md = md
        self.closes = timeline.close[timeline.complete]
        self.keys = [timeline.keys[i] for i in timeline.complete]
        self._cache: dict[tuple[int, int], Context] = {}

    def at(self, now: datetime, calendar: AsxCalendar) -> Context:
        count = int(self.timeline.complete_before[self.timeline.known(now)])
        newest = self.timeline.newest(now)
        if count == 0 or newest is None:
            return no_context(f"market context unavailable: no price data for {self.md.context_symbol}")
        behind = calendar.sessions_after(date.fromisoformat(newest), now)
        cached = self._cache.get((count, behind))
        if cached is not None:
            return cached
        try:
            first = max(0, count - self.md.analysis_bars)
            figures = market_context(
                self.keys[first:count],
                self.closes[first:count],
                trend_return_threshold=self.md.trend_return_threshold,
                low_volatility=self.md.low_volatility,
                high_volatility=self.md.high_volatility,
            )
            context = read_context({**figures, "stale": bool(behind)})
        except NotEnoughHistory as exc:
            context = no_context(f"market context unavailable: {exc}")
        self._cache[(count, behind)] = context
        return context


def predictions(
    history: SymbolHistory,
    index: IndexContext,
    times: Sequence[datetime],
    calendar: AsxCalendar,
    config: PredictionConfig,
    on_made: Callable[[Made], None],
) -> None:
    """Each round's prediction of one symbol, as prediction's ``generate_predictions`` makes it."""
    sentiment = unavailable("sentiment", NO_NEWS)
    decided: dict[tuple[int, int, int], Decision] = {}  # the same inputs decide the same
    for now in times:
        technical = history.technical(now, calendar, config)
        if technical is None:
            continue  # prediction fails this symbol: too few bars
        answer, market = technical
        inputs = {"technical": market, "sentiment": sentiment, "ml": history.ml(now, calendar)}
        context = context_for(index.at(now, calendar), answer["price_time"], config)
        key = (
            answer["price_time"],
            context.at,
            context.regime,
            *(i.at if i.used else None for i in inputs.values()),
        )
        same = (id(market), id(inputs["ml"]), id(context))
        if same not in decided:
            decided[same] = decide(inputs, context, config)
        on_made(Made(history.symbol, now, answer["price"], answer["price_time"], decided[same], key))
