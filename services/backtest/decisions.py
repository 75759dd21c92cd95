"""Every prediction the stack would make over a stretch of history, a symbol's whole series at once.

The live services answer one moment at a time; here each series is worked once and every
prediction round is an element of arrays: indicators over the whole series
(``indicator_series``), features over the whole series (``feature_frame``) and each model's
``predict_proba`` over every row at once, then the services' own array functions for the rest
(``technical_scores`` and the points of each indicator, ``ensemble_figures``, ``ml_scores`` and
``score``, the formula of ``decide``), so a round's decision is the one the stack makes.

What a round sees is what the stack saw then (the ``clocked_csv`` source's rule): a bar's open
from its session's open, the rest from its close. So the 09:30 round works on the last close and
the 17:00 round on the day's. The ML window is the ml_model service's: bars from ``history_days``
before the round to the last closed session.

Where a whole-series value could differ from the live one, the live computation is used: an ML
window with fewer than ``EXACT_BELOW`` bars (a gap in the data) is computed from that window
alone, as ml_model would. Recursive indicators (RSI, MACD, ATR) over market data's 400-bar window
differ from the whole-series ones by less than 1e-12 of their value.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from services.asx.calendar import SYDNEY, AsxCalendar, local_day_end
from services.base.errors import InvalidParams
from services.market_data.config import MarketDataConfig
from services.market_data.context import NotEnoughHistory, market_context
from services.market_data.indicators import IndicatorSeries, indicator_series, volume_figures
from services.ml_model.config import MlModelConfig
from services.ml_model.features import (
    FEATURE_NAMES,
    check_row,
    clean_bars,
    feature_frame,
    latest_row,
    out_of_range,
)
from services.ml_model.ml_model_service import ensemble_answer, ensemble_figures, model_probabilities
from services.ml_model.registry import LoadedModel
from services.prediction.calibration import forward_moves
from services.prediction.config import PredictionConfig
from services.prediction.decision import (
    SIGNALS,
    Context,
    Input,
    Scored,
    bollinger_points,
    macd_points,
    ml_input,
    ml_scores,
    no_context,
    rounded,
    rsi_points,
    score,
    technical_scores,
    trend_points,
    volume_points,
)
from services.prediction.decision import market_context as read_context

# An ML window with fewer complete bars than this is computed from the window alone.
EXACT_BELOW = 260
SMA_LONG = 200


@dataclass(frozen=True, slots=True)
class Made:
    """One prediction: when, on which price, what it decided."""

    symbol: str
    at: datetime  # UTC
    price: float
    price_time: str
    signal: str
    confidence: float  # the formula's (coverage x margin), a detail
    combined: float
    coverage: float
    regime: str | None
    degraded: bool
    # The times of the inputs used (prediction's cache key): the same key again is a repeat of
    # the same decision, stored and sent once.
    key: tuple[Any, ...]
    # Calibrated: the probability that the signal is right and the past cases behind it (None and
    # 0: uncalibrated), and the calibration that says so.
    probability: float | None = None
    cases: int = 0
    calibration: str = "uncalibrated"


@dataclass(slots=True)
class Timeline:
    """One price file as the stack sees it through the clock: each row's open from
    ``open_known``, the rest from ``all_known`` (a session's open and close; the next session's
    open for a row dated on no session)."""

    keys: list[str]
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    open_known: np.ndarray  # POSIX times
    all_known: np.ndarray
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
            if session is None:
                # A row dated on a day without a session (a defect of the file) shows at that
                # day's end in the price file, but market data fetches nothing until the next
                # session opens (by the calendar nothing can be missing before): the stack sees
                # it then.
                later = (
                    calendar.next_open(local_day_end(day)) if calendar.first <= day < calendar.last else None
                )
                known = (later.open if later else local_day_end(day)).timestamp()
                opens.append(known)
                closes.append(known)
                continue
            opens.append(session.open.timestamp())
            closes.append(session.close.timestamp())
        close = bars["close"].to_numpy(float)
        has_close = ~np.isnan(close)
        return cls(
            keys,
            bars["open"].to_numpy(float),
            bars["high"].to_numpy(float),
            bars["low"].to_numpy(float),
            close,
            bars["volume"].to_numpy(float),
            np.array(opens),
            np.array(closes),
            np.flatnonzero(has_close),
            np.concatenate([[0], np.cumsum(has_close)]),
        )

    def known(self, now: datetime) -> int:
        """How many rows are wholly visible at ``now``."""
        return int(np.searchsorted(self.all_known, now.timestamp(), side="right"))

    def seen_at(self, rounds: Rounds) -> tuple[np.ndarray, np.ndarray]:
        """At each round: (complete rows visible, sessions the newest visible row is behind, as
        market data's ``sessions_behind`` counts them; -1 without a row)."""
        known = np.searchsorted(self.all_known, rounds.posix, side="right")
        last = max(len(self.keys) - 1, 0)
        partial = (known < len(self.keys)) & (self.open_known[np.minimum(known, last)] <= rounds.posix)
        newest = np.where(partial, known, known - 1)  # a session's open shows before its close
        ordinals = np.array([date.fromisoformat(key).toordinal() for key in self.keys], dtype=np.int64)
        behind = rounds.behind(ordinals[np.clip(newest, 0, last)] if len(self.keys) else newest)
        return self.complete_before[known], np.where(newest >= 0, behind, -1)

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


@dataclass(frozen=True, slots=True)
class Rounds:
    """The moments predictions are made, with what every symbol's rounds need of the calendar."""

    times: list[datetime]
    posix: np.ndarray
    day: np.ndarray  # the round's date in Sydney, as an ordinal
    closed: np.ndarray  # sessions closed by then
    last_closed: np.ndarray  # the ordinal of the latest of them (-1: none)
    session_days: np.ndarray  # every session's date, as an ordinal

    @classmethod
    def of(cls, times: Sequence[datetime], calendar: AsxCalendar) -> Rounds:
        sessions = calendar.sessions_between(calendar.first, calendar.last)
        days = np.array([d.toordinal() for d in sessions])
        closes = np.array([session.close.timestamp() for d in sessions if (session := calendar.session(d))])
        posix = np.array([t.timestamp() for t in times])
        closed = np.searchsorted(closes, posix, side="right")
        return cls(
            list(times),
            posix,
            np.array([t.astimezone(SYDNEY).date().toordinal() for t in times]),
            closed,
            np.where(closed > 0, days[np.maximum(closed - 1, 0)], -1),
            days,
        )

    def behind(self, newest: np.ndarray) -> np.ndarray:
        """Sessions closed since the day ``newest`` (ordinals): ``calendar.sessions_after``."""
        return np.maximum(0, self.closed - np.searchsorted(self.session_days, newest, side="right"))


@dataclass(frozen=True, slots=True)
class RoundInputs:
    """One symbol's prediction rounds and the inputs of each decision, as arrays: what does not
    change with the decision's weights and thresholds, so a sweep of them works it out once."""

    symbol: str
    times: list[datetime]
    posix: np.ndarray  # the times as POSIX seconds
    price: np.ndarray
    price_time: list[str]
    usable: np.ndarray
    technical: np.ndarray
    technical_confidence: np.ndarray
    ml: np.ndarray  # NaN: left out
    ml_confidence: np.ndarray
    ml_at: list[str | None]
    regime: np.ndarray  # "" without a market context
    high_volatility: np.ndarray
    context_at: list[str | None]
    # What the adjusted close did over the calibration's horizon from the price's day (NaN: not
    # known), and when that was known (POSIX; inf: never within the prices).
    move: np.ndarray
    move_known: np.ndarray

    @classmethod
    def unusable(cls, symbol: str, times: list[datetime]) -> RoundInputs:
        """Rounds where prediction fails the symbol, every one."""
        size = len(times)
        nothing, never = np.full(size, np.nan), np.zeros(size, dtype=bool)
        return cls(
            symbol=symbol,
            times=times,
            posix=np.array([t.timestamp() for t in times]),
            price=nothing,
            price_time=[""] * size,
            usable=never,
            technical=nothing,
            technical_confidence=nothing,
            ml=nothing,
            ml_confidence=nothing,
            ml_at=[None] * size,
            regime=np.full(size, "", dtype=object),
            high_volatility=never,
            context_at=[None] * size,
            move=nothing,
            move_known=np.full(size, np.inf),
        )


def scored(
    inputs: RoundInputs, config: PredictionConfig, first: datetime, end: datetime
) -> tuple[np.ndarray, Scored]:
    """(the rounds chosen, their scores): every usable round from ``first`` up to ``end``
    (excluded), scored as prediction's ``decide`` scores it (no news: sentiment is left out)."""
    times = inputs.posix
    chosen = np.flatnonzero(inputs.usable & (times >= first.timestamp()) & (times < end.timestamp()))
    return chosen, score(
        {
            "technical": (inputs.technical[chosen], inputs.technical_confidence[chosen]),
            "sentiment": (np.full(len(chosen), np.nan), np.zeros(len(chosen))),
            "ml": (inputs.ml[chosen], inputs.ml_confidence[chosen]),
        },
        inputs.regime[chosen],
        inputs.high_volatility[chosen],
        config,
    )


def decisions(inputs: RoundInputs, config: PredictionConfig, first: datetime, end: datetime) -> list[Made]:
    """The decision of each usable round from ``first`` up to ``end`` (excluded), as prediction's
    ``decide`` makes it (no news, so each is degraded), not yet calibrated."""
    chosen, scores = scored(inputs, config, first, end)
    made = []
    for j, i in enumerate(chosen.tolist()):
        ml_used = inputs.ml[i] == inputs.ml[i] and inputs.ml_confidence[i] > 0
        regime = inputs.regime[i] or None
        key = (
            inputs.price_time[i],
            inputs.context_at[i],
            regime,
            inputs.price_time[i],
            None,
            inputs.ml_at[i] if ml_used else None,
        )
        made.append(
            Made(
                symbol=inputs.symbol,
                at=inputs.times[i],
                price=float(inputs.price[i]),
                price_time=inputs.price_time[i],
                signal=SIGNALS[int(scores.signal[j])],
                confidence=float(scores.confidence[j]),
                combined=float(scores.combined[j]),
                coverage=round(float(scores.coverage[j]), 4),
                regime=regime,
                degraded=True,
                key=key,
            )
        )
    return made


class IndexContext:
    """The market context from the index, as ``get_market_context`` answers at a moment."""

    def __init__(self, timeline: Timeline, md: MarketDataConfig) -> None:
        self.timeline = timeline
        self.md = md
        self.closes = timeline.close[timeline.complete]
        self.keys = [timeline.keys[i] for i in timeline.complete]
        self._cache: dict[tuple[int, int], Context] = {}

    def at(self, rounds: Rounds) -> list[Context]:
        """The context of each round."""
        counts, behind = self.timeline.seen_at(rounds)
        return [self._context(int(c), int(b)) for c, b in zip(counts, behind, strict=True)]

    def _context(self, count: int, behind: int) -> Context:
        if count == 0 or behind < 0:
            return no_context(f"market context unavailable: no price data for {self.md.context_symbol}")
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
        self.feature_days = np.array(
            [stamp.date().toordinal() for stamp in self.features.index], dtype=np.int64
        )
        self.index_days = np.array(
            [stamp.date().toordinal() for stamp in clean_bars(index_bars).index], dtype=np.int64
        )
        self.rows = self.features[list(FEATURE_NAMES)].to_numpy(float)
        # A row ml_model would refuse (a feature missing or out of range), in any window too.
        self.bad = out_of_range(self.features).to_numpy()
        self.p_up = np.full((len(models.members) if models else 0, len(self.rows)), np.nan)
        if models is not None and (~self.bad).any():
            for m, member in enumerate(models.members):
                self.p_up[m, ~self.bad] = model_probabilities(member, self.rows[~self.bad])

    # -- the rounds -----------------------------------------------------------------------

    def inputs(self, rounds: Rounds, contexts: Sequence[Context], config: PredictionConfig) -> RoundInputs:
        """The inputs of each round's decision, as prediction gathers them; ``usable`` is False
        where prediction fails the symbol (fewer than two bars, no technical input)."""
        if len(self.closes) < 2:  # market data cannot compute indicators: no round is usable
            return RoundInputs.unusable(self.symbol, rounds.times)
        count, behind = self.timeline.seen_at(rounds)
        last = np.clip(count - 1, 1, len(self.closes) - 1)  # the last complete bar (the indicators')
        quotes = [self.timeline.latest_price(t) for t in rounds.times]
        price = np.array([q[0] if q else np.nan for q in quotes])
        price_time = [q[1] if q else "" for q in quotes]
        # A close compares with the close before it; a session's open with the last close.
        in_session = np.array([p != self.complete_keys[i] for p, i in zip(price_time, last, strict=True)])
        before = np.where(in_session, self.closes[last], self.closes[last - 1])
        with np.errstate(invalid="ignore", divide="ignore"):
            change = np.where(before != 0, (price / before - 1.0) * 100.0, np.nan)
        technical, technical_confidence = self._technical(last, change, behind, config)
        ml, ml_confidence, ml_at = self._ml(rounds)
        regime, high, context_at = _contexts(contexts, price_time, config)
        move, move_known = self._moves(price_time)
        return RoundInputs(
            symbol=self.symbol,
            times=rounds.times,
            posix=rounds.posix,
            price=price,
            price_time=price_time,
            usable=(count >= 2) & (technical == technical),
            technical=technical,
            technical_confidence=technical_confidence,
            ml=ml,
            ml_confidence=ml_confidence,
            ml_at=ml_at,
            regime=regime,
            high_volatility=high,
            context_at=context_at,
            move=move,
            move_known=move_known,
        )

    def _moves(self, price_times: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(move, known at) over the calibration's horizon from each price's day."""
        adjusted = self._bars["adj_close"].fillna(self._bars["close"]).to_numpy(float)
        rows = np.flatnonzero(~np.isnan(adjusted))
        keys = [self.timeline.keys[i] for i in rows]
        move, ahead = forward_moves(keys, adjusted[rows], [t[:10] for t in price_times])
        known = np.where(ahead >= 0, self.timeline.all_known[rows[np.maximum(ahead, 0)]], np.inf)
        return move, known

    def _technical(
        self, last: np.ndarray, change: np.ndarray, behind: np.ndarray, config: PredictionConfig
    ) -> tuple[np.ndarray, np.ndarray]:
        """(score, confidence) of the technical input at each round's last complete bar; the
        score NaN where no part of it can be computed."""
        s = self.series
        rsi, histogram, percent_b = s.rsi[last], s.histogram[last], s.percent_b[last]
        vs50, vs200 = s.vs_sma[50][last], s.vs_sma[200][last]
        available, unusual = self._volume(last + 1)
        points = {
            "rsi": rsi_points(rsi),
            "macd": macd_points(histogram, s.crossover[last]),
            "bollinger": bollinger_points(percent_b),
            "trend": trend_points(vs50, vs200),
            "volume": volume_points(unusual, change),
        }
        present = {
            "rsi": rsi == rsi,
            "macd": histogram == histogram,
            "bollinger": percent_b == percent_b,
            "trend": (vs50 == vs50) & (vs200 == vs200),
            "volume": available & (change == change),
        }
        _score_100, technical, used = technical_scores(points, present, config)
        stale = behind >= config.stale_after_sessions
        return np.where(used, technical, np.nan), np.where(stale, config.stale_confidence, 1.0)

    def _volume(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(available, unusual) of market data's volume figures over each round's window."""
        size = max(self.md.analysis_bars, self.md.quality_window_sessions + 30)
        figures = {}
        for count in np.unique(counts).tolist():
            answer = volume_figures(self.volumes[max(0, count - size) : count], self.md.unusual_volume_ratio)
            figures[count] = (
                bool(answer["available"]),
                bool(answer.get("unusual")) and answer.get("ratio_to_average") is not None,
            )
        pairs = [figures[c] for c in counts.tolist()]
        return np.array([a for a, _ in pairs], dtype=bool), np.array([u for _, u in pairs], dtype=bool)

    # -- ML -------------------------------------------------------------------------------

    def _ml(self, rounds: Rounds) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """(score, confidence, as of) of the ML input at each round: the ensemble over the
        features of the last closed session, as ml_model answers ``get_ensemble_prediction``;
        the score NaN where ml_model would refuse or the ensemble is undecided."""
        size = len(rounds.times)
        ml, confidence = np.full(size, np.nan), np.zeros(size)
        at: list[str | None] = [None] * size
        if self.models is None or not len(self.feature_days):
            return ml, confidence, at
        since = rounds.day - self.ml_config.history_days
        row = np.searchsorted(self.feature_days, rounds.last_closed, side="right") - 1
        safe = np.maximum(row, 0)
        day = self.feature_days[safe]
        found = (rounds.last_closed >= 0) & (row >= 0) & (day >= since) & ~self.bad[safe]
        # The window ml_model computes on starts at ``since``: too short for SMA 200, it gives no
        # usable features; short enough for the recursive ones to differ, it is computed as is.
        rows = _in_window(self.feature_days, since, day)
        matched = np.searchsorted(self.index_days, day, side="right") - 1
        index_rows = np.where(
            matched >= 0, _in_window(self.index_days, since, self.index_days[np.maximum(matched, 0)]), 0
        )
        shortest = np.minimum(rows, index_rows)
        fast = found & (shortest >= EXACT_BELOW)
        p, agreement, ensemble_confidence = ensemble_figures(self.p_up[:, safe])
        score, weight = ml_scores(rounded(p, 6), rounded(agreement, 4), rounded(ensemble_confidence, 6))
        ml = np.where(fast, score, np.nan)
        confidence = np.where(fast & (score == score), weight, 0.0)
        for i in np.flatnonzero(fast):
            at[i] = date.fromordinal(int(day[i])).isoformat()
        for i in np.flatnonzero(found & (shortest >= SMA_LONG) & (shortest < EXACT_BELOW)):
            exact = self._ml_from_window(
                date.fromordinal(int(since[i])), date.fromordinal(int(rounds.last_closed[i]))
            )
            if exact.used:
                ml[i], confidence[i], at[i] = exact.score, exact.confidence, exact.at
        return ml, confidence, at

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
            return Input("ml", None, 0.0, None, missing=f"ml unavailable: {message}")
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


def _in_window(days: np.ndarray, since: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Rows from ``since`` to ``last`` (ordinals); every row when ``since`` is before the first
    (the window then holds the whole series, as the whole-series computation does)."""
    first = np.searchsorted(days, since, side="left")
    count = np.searchsorted(days, last, side="right") - first
    return np.where(first == 0, sys.maxsize, count)


def _contexts(
    contexts: Sequence[Context], price_times: Sequence[str], config: PredictionConfig
) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """(regime or "", high volatility, as of) of each round's context, left out where it is more
    than ``max_context_lag_days`` from the price (prediction's ``context_for``)."""
    regime, high, at = [], [], []
    for context, price_time in zip(contexts, price_times, strict=True):
        lagging = False
        if context.regime is not None and context.at and price_time:
            lag = (date.fromisoformat(price_time[:10]) - date.fromisoformat(context.at[:10])).days
            lagging = abs(lag) > config.max_context_lag_days
        regime.append("" if lagging else context.regime or "")
        high.append(not lagging and context.volatility == "high")
        at.append(context.at)
    return np.array(regime, dtype=object), np.array(high, dtype=bool), at
