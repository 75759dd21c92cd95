"""Calibrated probabilities through history, never fitted on the days they are applied to.

A run through history calibrates its decisions one of two ways:

- ``WalkForward`` (the back-test's and the tuning's): every ``REFIT_MONTHS`` from the run's start,
  a calibration is fitted (``prediction.calibration.fit``) on the run's own decisions whose move
  over the horizon was known by then, and serves until the next refit. Before the first one has
  enough cases, decisions are uncalibrated (paper trading opens nothing on them). Only the run's
  own decisions count: its models were trained on the bars before its start, so an ML score
  before it would be in-sample.
- ``Fixed``: one calibration for every decision (one of ``tradingctl calibrate``, or the shipped
  one), as the stack uses it; ``in_sample`` says when it was fitted on prices of the run's days.

``tradingctl calibrate`` fits one on all of a window's decisions (``fit_window``) for the stack.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np

from services.asx.calendar import SYDNEY
from services.backtest.decisions import Made, RoundInputs, scored
from services.backtest.replay import Window, midnight_before
from services.prediction.calibration import Calibration, decision_settings, fit
from services.prediction.config import PredictionConfig

REFIT_MONTHS = 3

# (from when, in POSIX seconds; the calibration then, None for none), in time order.
Schedule = list[tuple[float, Calibration | None]]


@dataclass(frozen=True, slots=True)
class Fixed:
    calibration: Calibration | None

    def schedule(
        self,
        inputs: Sequence[RoundInputs],
        config: PredictionConfig,
        window: Window,
        memo: dict[Any, Schedule] | None = None,
    ) -> Schedule:
        return [(-math.inf, self.calibration)]

    def describe(self, window: Window) -> dict[str, Any]:
        if self.calibration is None:
            return {"kind": "none", "reading": "uncalibrated: no BUY signal opens a position"}
        through = self.calibration.fitted.get("through")
        in_sample = bool(through) and str(through) >= window.start.isoformat()
        return {
            "kind": "fixed",
            "version": self.calibration.version,
            "fitted": dict(self.calibration.fitted),
            "in_sample": in_sample,
            "reading": (
                f"{self.calibration.name} was fitted on prices up to {through}, inside this window: "
                "its figures are in sample"
                if in_sample
                else f"{self.calibration.name}, fitted on prices up to {through}, before this window"
            ),
        }


@dataclass(frozen=True, slots=True)
class WalkForward:
    since: date  # the first day whose decisions count
    months: int = REFIT_MONTHS

    def schedule(
        self,
        inputs: Sequence[RoundInputs],
        config: PredictionConfig,
        window: Window,
        memo: dict[Any, Schedule] | None = None,
    ) -> Schedule:
        """The calibrations serving ``window``: the latest refit at its start, then each one in it.
        They depend on the decision's weights alone (not its thresholds): ``memo`` keeps them for
        the settings of a sweep that share those."""
        key = (repr(sorted(decision_settings(config).items())), self, window.start, window.end)
        if memo is not None and key in memo:
            return memo[key]
        refits = refit_times(self.since, window.end, self.months)
        serving = [t for t in refits if t <= window.begins_at]
        wanted = serving[-1:] + [t for t in refits if t > window.begins_at]
        cases = labelled_cases(inputs, config, midnight_before(self.since), window.ends_at)
        schedule: Schedule = [(-math.inf, None)]
        for refit in wanted:
            known = cases.known < refit.timestamp()
            schedule.append((refit.timestamp(), cases.fit(known, config, f"walk-forward {refit.date()}")))
        if memo is not None:
            memo[key] = schedule
        return schedule

    def describe(self, window: Window) -> dict[str, Any]:
        return {
            "kind": "walk-forward",
            "refit_months": self.months,
            "since": self.since.isoformat(),
            "reading": (
                f"refitted every {self.months} months on this run's decisions since {self.since} whose "
                "outcome was known by then; never on the days it serves"
            ),
        }


Policy = Fixed | WalkForward


def refit_times(since: date, end: date, months: int) -> list[datetime]:
    """Every ``months`` from ``since`` (excluded) to ``end``: Sydney midnights, in UTC."""
    times: list[datetime] = []
    year, month = since.year, since.month
    while True:
        month += months
        year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
        day = date(year, month, 1)
        if day > end:
            return times
        times.append(midnight_before(day))


@dataclass(frozen=True, slots=True)
class Cases:
    """Decisions with their outcome over the horizon, as arrays."""

    symbols: tuple[str, ...]
    days: np.ndarray  # the price's day
    combined: np.ndarray
    coverage: np.ndarray
    regime: np.ndarray
    move: np.ndarray
    known: np.ndarray  # when the move was known (POSIX): the close of the day it ends at

    def fit(self, rows: np.ndarray, config: PredictionConfig, source: str) -> Calibration | None:
        if not rows.any():
            return None
        return fit(
            self.combined[rows],
            self.coverage[rows],
            self.regime[rows],
            self.move[rows],
            settings=decision_settings(config),
            fitted={
                "from": str(min(self.days[rows])),
                "to": str(max(self.days[rows])),
                "through": datetime.fromtimestamp(float(self.known[rows].max()), SYDNEY).date().isoformat(),
                "symbols": list(self.symbols),
                "source": source,
            },
            version=source,
        )


def labelled_cases(
    inputs: Sequence[RoundInputs], config: PredictionConfig, first: datetime, end: datetime
) -> Cases:
    """Every decision from ``first`` up to ``end`` whose move over the horizon is known."""
    parts: list[dict[str, np.ndarray]] = []
    for symbol in inputs:
        chosen, scores = scored(symbol, config, first, end)
        move = symbol.move[chosen]
        labelled = move == move
        rows = chosen[labelled]
        parts.append(
            {
                "days": np.array([symbol.price_time[i][:10] for i in rows.tolist()], dtype=object),
                "combined": scores.combined[labelled],
                "coverage": scores.coverage[labelled],
                "regime": symbol.regime[rows],
                "move": move[labelled],
                "known": symbol.move_known[rows],
            }
        )
    joined = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]} if parts else {}
    return Cases(tuple(symbol.symbol for symbol in inputs), **joined)


def calibrated(made: Sequence[Made], schedule: Schedule) -> list[Made]:
    """Each decision with the probability the calibration serving its time gives it."""
    starts = np.array([start for start, _calibration in schedule])
    serving = np.searchsorted(starts, [m.at.timestamp() for m in made], side="right") - 1
    out = list(made)
    for s, (_start, calibration) in enumerate(schedule):
        rows = np.flatnonzero(serving == s)
        if calibration is None or not len(rows):
            continue
        chosen = [made[i] for i in rows.tolist()]
        estimates = calibration.estimate(
            np.array([{"BUY": 1, "SELL": -1}.get(m.signal, 0) for m in chosen]),
            np.array([m.combined for m in chosen]),
            np.array([m.coverage for m in chosen]),
            np.array([m.regime or "" for m in chosen], dtype=object),
        )
        for j, i in enumerate(rows.tolist()):
            out[i] = dataclasses.replace(
                made[i],
                probability=round(float(estimates.probability[j]), 4),
                cases=int(estimates.cases[j]),
                calibration=calibration.name,
            )
    return out


def fit_window(
    inputs: Sequence[RoundInputs], config: PredictionConfig, window: Window, source: str
) -> Calibration | None:
    """A calibration of every decision in ``window`` whose outcome is known by its end."""
    cases = labelled_cases(inputs, config, window.begins_at, window.ends_at)
    return cases.fit(cases.known < window.ends_at.timestamp(), config, source)
