"""Calibrated probability: how often, in history, a signal like this one had its direction right.

The decision's combined score ranks the moments; it is not a probability. A calibration maps it
to one, measured on past decisions: for each market regime (bull, sideways, bear, none) with
enough cases, and pooled over all of them (``all``) for the rest, two step curves of the combined
score, the share of cases whose adjusted close was higher (``up``) or lower (``down``)
``horizon_sessions`` sessions later, before costs. The curves are fitted by isotonic regression
over equal-count bins of the score (scikit-learn's ``IsotonicRegression``, weighted by the bins'
counts): a higher score never means a lower chance of a rise, and each step holds at least
``MIN_BIN_CASES`` cases. Each step's share is shrunk towards the base rate as if ``PRIOR_CASES``
cases at the base rate were added: out of sample, unshrunk steps of a few hundred cases promised
0.72 and were right 43% of the time (2010-2022, the Big 4).

A BUY is right if the price rose, a SELL if it fell, a HOLD if it moved the way its score leans.
Each estimate says how many past cases stand behind it (its step's count) and gives their 95%
Wilson interval. Inputs missing where the history had them widen it: the count is scaled by the
signal's coverage over the mean coverage of those cases (a signal with the ML input missing
counts for fewer cases), the probability itself is left as measured.

A calibration is fitted for one set of the decision's weights (``decision_settings``): with
others the combined score means something else, and ``mismatch`` says so.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.prediction.config import REGIMES, PredictionConfig

FORMAT = 1
HORIZON_SESSIONS = 5
NO_REGIME = "none"
POOLED = "all"
GROUPS = (*REGIMES, NO_REGIME)
DIRECTIONS = ("up", "down")
# A regime with fewer labelled cases than this is read from the pooled curves.
MIN_GROUP_CASES = 1000
# Each step of a curve holds at least this many cases; at most MAX_BINS bins before merging.
MIN_BIN_CASES = 300
MAX_BINS = 10
# Each step's share is shrunk towards the curve's base rate as if this many cases at the base rate
# were added: a step of few cases says little beyond the base rate.
PRIOR_CASES = 1000
Z_95 = 1.959963984540054
LABEL = "adjusted close higher (up) or lower (down) after the horizon, before costs"


@dataclass(frozen=True, slots=True)
class Curve:
    """A step function of the combined score: the share of cases in ``direction`` per step."""

    edges: tuple[float, ...]  # step i holds edges[i-1] <= score < edges[i]
    p: tuple[float, ...]
    n: tuple[int, ...]
    coverage: float  # the cases' mean coverage

    def at(self, combined: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probability, cases) of each score."""
        step = np.searchsorted(np.asarray(self.edges, dtype=float), combined, side="right")
        return np.asarray(self.p, dtype=float)[step], np.asarray(self.n, dtype=np.int64)[step]

    def to_json(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "p": list(self.p), "n": list(self.n), "coverage": self.coverage}

    @classmethod
    def from_json(cls, data: Any, where: str) -> Curve:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: not an object")
        edges, p, n, coverage = data.get("edges"), data.get("p"), data.get("n"), data.get("coverage")
        if not (isinstance(edges, list) and isinstance(p, list) and isinstance(n, list)):
            raise ValueError(f"{where}: edges, p and n must be lists")
        if len(p) != len(n) or len(edges) != len(p) - 1 or not p:
            raise ValueError(f"{where}: needs one more p and n than edges")
        if any(not isinstance(v, int | float) or isinstance(v, bool) for v in (*edges, *p)):
            raise ValueError(f"{where}: edges and p must be numbers")
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError(f"{where}: edges must increase")
        if any(not 0 <= v <= 1 for v in p) or any(not isinstance(v, int) or v < 1 for v in n):
            raise ValueError(f"{where}: p must be in [0, 1] and n whole numbers >= 1")
        if not isinstance(coverage, int | float) or not 0 < coverage <= 1:
            raise ValueError(f"{where}: coverage must be in (0, 1]")
        return cls(tuple(map(float, edges)), tuple(map(float, p)), tuple(n), float(coverage))


@dataclass(frozen=True, slots=True)
class Estimates:
    """Calibrated figures of many signals, each an element of the arrays."""

    probability: np.ndarray
    cases: np.ndarray  # effective: scaled down when inputs are missing
    low: np.ndarray  # 95% Wilson interval
    high: np.ndarray
    group: np.ndarray  # the curves read: a regime, or "all"


@dataclass(frozen=True, slots=True)
class Calibration:
    version: str
    settings: Mapping[str, Any]  # decision_settings of the decisions it was fitted on
    fitted: Mapping[str, Any]  # from, to, through (the last price used), cases, symbols, source
    curves: Mapping[str, Mapping[str, Curve]]  # group -> direction -> curve
    horizon_sessions: int = HORIZON_SESSIONS

    @property
    def name(self) -> str:
        """How a signal names its source: ``calibration v3``."""
        return f"calibration {self.version}"

    def mismatch(self, config: PredictionConfig) -> str | None:
        """Why this calibration does not fit the decision ``config`` makes, or None."""
        wanted = decision_settings(config)
        for key, value in self.settings.items():
            if wanted.get(key) != value:
                return (
                    f"{self.name} was fitted for prediction.{key} = {value}, the config has "
                    f"{wanted.get(key)}: run tradingctl calibrate"
                )
        return None

    def estimate(
        self, signal: np.ndarray, combined: np.ndarray, coverage: np.ndarray, regime: np.ndarray
    ) -> Estimates:
        """The probability that each signal (1 BUY, 0 HOLD, -1 SELL) is right, with its cases.
        ``regime``: bull, sideways, bear, or "" / None for none."""
        size = len(signal)
        probability, cases, reference = np.zeros(size), np.zeros(size, dtype=np.int64), np.ones(size)
        regimes = np.array([r or NO_REGIME for r in regime.tolist()], dtype=object)
        own = np.isin(regimes, [name for name in self.curves if name != POOLED])
        group = np.where(own, regimes, POOLED)
        up = (signal == 1) | ((signal == 0) & (combined >= 0))
        for name, pair in self.curves.items():
            for direction, which in (("up", up), ("down", ~up)):
                rows = (group == name) & which
                if rows.any():
                    probability[rows], cases[rows] = pair[direction].at(combined[rows])
                    reference[rows] = pair[direction].coverage
        effective = np.floor(cases * np.minimum(1.0, coverage / reference)).astype(np.int64)
        low, high = wilson(probability, effective)
        return Estimates(probability, effective, low, high, group)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "horizon_sessions": self.horizon_sessions,
            "label": LABEL,
            "settings": dict(self.settings),
            "fitted": dict(self.fitted),
            "curves": {
                group: {direction: curve.to_json() for direction, curve in pair.items()}
                for group, pair in self.curves.items()
            },
        }

    @classmethod
    def from_json(cls, data: Any, version: str) -> Calibration:
        """A calibration from its JSON; ``ValueError`` naming what is wrong."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a calibration of format {FORMAT}")
        curves = data.get("curves")
        if not isinstance(curves, dict) or POOLED not in curves:
            raise ValueError(f"curves must include the pooled {POOLED!r} ones")
        unknown = sorted(set(curves) - {*GROUPS, POOLED})
        if unknown:
            raise ValueError(f"unknown curve group {unknown[0]!r}")
        parsed = {}
        for group, pair in curves.items():
            if not isinstance(pair, dict) or set(pair) != set(DIRECTIONS):
                raise ValueError(f"curves.{group} must have exactly up and down")
            parsed[group] = {d: Curve.from_json(pair[d], f"curves.{group}.{d}") for d in DIRECTIONS}
        settings, fitted = data.get("settings"), data.get("fitted")
        if not isinstance(settings, dict) or not isinstance(fitted, dict):
            raise ValueError("settings and fitted must be objects")
        horizon = data.get("horizon_sessions")
        if not isinstance(horizon, int) or horizon < 1:
            raise ValueError("horizon_sessions must be a whole number >= 1")
        return cls(version, settings, fitted, parsed, horizon)


def decision_settings(config: PredictionConfig) -> dict[str, Any]:
    """What the combined score and coverage depend on: a calibration holds for these only."""
    return {
        "weights": dict(config.weights),
        "technical_weights": dict(config.technical_weights),
        "stale_after_sessions": config.stale_after_sessions,
        "stale_confidence": config.stale_confidence,
    }


def wilson(p: np.ndarray, n: np.ndarray, z: float = Z_95) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval of a share ``p`` of ``n`` cases ((0, 1) where n is 0)."""
    n = np.asarray(n, dtype=float)
    safe = np.where(n > 0, n, 1.0)
    centre = (p + z * z / (2 * safe)) / (1 + z * z / safe)
    half = z / (1 + z * z / safe) * np.sqrt(p * (1 - p) / safe + z * z / (4 * safe * safe))
    return np.where(n > 0, np.clip(centre - half, 0, 1), 0.0), np.where(
        n > 0, np.clip(centre + half, 0, 1), 1.0
    )


def forward_moves(
    keys: Sequence[str], adjusted: np.ndarray, days: Sequence[str], horizon: int = HORIZON_SESSIONS
) -> tuple[np.ndarray, np.ndarray]:
    """(move, row ahead) of each day of ``days``: what the adjusted close did from the last row
    dated on or before it to ``horizon`` rows later (NaN and -1 where not known)."""
    at = np.searchsorted(np.asarray(keys, dtype=object), np.asarray(days, dtype=object), side="right") - 1
    ahead = at + horizon
    known = (at >= 0) & (ahead < len(keys))
    safe_at, safe_ahead = np.where(known, at, 0), np.where(known, ahead, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        move = adjusted[safe_ahead] / adjusted[safe_at] - 1.0
    known &= move == move
    return np.where(known, move, np.nan), np.where(known, ahead, -1)


def fit(
    combined: np.ndarray,
    coverage: np.ndarray,
    regime: np.ndarray,
    move: np.ndarray,
    *,
    settings: Mapping[str, Any],
    fitted: Mapping[str, Any],
    version: str = "unsaved",
) -> Calibration | None:
    """A calibration from past decisions and the moves after them (NaN moves are left out);
    None with fewer than ``MIN_GROUP_CASES`` labelled cases."""
    labelled = move == move
    combined, coverage, move = combined[labelled], coverage[labelled], move[labelled]
    groups = np.array([r or NO_REGIME for r in regime[labelled].tolist()], dtype=object)
    if len(move) < MIN_GROUP_CASES:
        return None
    curves: dict[str, dict[str, Curve]] = {}
    for name in (POOLED, *GROUPS):
        rows = np.ones(len(move), dtype=bool) if name == POOLED else groups == name
        if rows.sum() >= MIN_GROUP_CASES:
            curves[name] = {
                "up": _curve(combined[rows], coverage[rows], move[rows] > 0, increasing=True),
                "down": _curve(combined[rows], coverage[rows], move[rows] < 0, increasing=False),
            }
    counts = {name: int((groups == name).sum()) for name in GROUPS}
    return Calibration(
        version,
        dict(settings),
        {
            **fitted,
            "cases": len(move),
            "cases_by_regime": counts,
            "base_rate_up": round(float((move > 0).mean()), 4),
        },
        curves,
    )


def _curve(combined: np.ndarray, coverage: np.ndarray, hits: np.ndarray, *, increasing: bool) -> Curve:
    """Equal-count bins of the score, joined into steps until their shares, shrunk towards the base
    rate, are monotone (isotonic regression)."""
    from sklearn.isotonic import IsotonicRegression  # type: ignore[import-untyped]

    bins = max(1, min(MAX_BINS, len(combined) // MIN_BIN_CASES))
    edges = list(np.unique(np.quantile(combined, np.arange(1, bins) / bins)))
    counts, hit_counts = _bin(combined, hits, edges)
    while len(counts) > 1 and counts.min() < MIN_BIN_CASES:
        small = int(np.argmin(counts))  # joined with its smaller neighbour
        right = small == 0 or (small < len(counts) - 1 and counts[small + 1] < counts[small - 1])
        del edges[small if right else small - 1]
        counts, hit_counts = _bin(combined, hits, edges)
    # Steps of (lower edge, cases, hits): each bin at first. A step's share is shrunk towards the
    # base rate; isotonic regression over the shares (weighted by cases) finds where they break
    # the order, and steps given the same value are joined, until none are.
    steps = [
        (edges[i - 1] if i else None, int(n), int(k))
        for i, (n, k) in enumerate(zip(counts, hit_counts, strict=True))
    ]
    base = float(hits.mean())
    while True:
        shares = np.array([(k + PRIOR_CASES * base) / (n + PRIOR_CASES) for _lower, n, k in steps])
        weights = np.array([n for _lower, n, _k in steps], dtype=float)
        ordered = IsotonicRegression(increasing=increasing).fit_transform(
            np.arange(len(steps)), shares, sample_weight=weights
        )
        joined: list[tuple[float | None, int, int]] = []
        for i, step in enumerate(steps):
            if joined and abs(ordered[i] - ordered[i - 1]) < 1e-12:
                lower, n, k = joined[-1]
                joined[-1] = (lower, n + step[1], k + step[2])
            else:
                joined.append(step)
        if len(joined) == len(steps):
            break
        steps = joined
    return Curve(
        tuple(float(lower) for lower, _n, _k in steps[1:] if lower is not None),
        tuple(round(float(share), 4) for share in shares),
        tuple(n for _lower, n, _k in steps),
        round(float(coverage.mean()), 4),
    )


def _bin(combined: np.ndarray, hits: np.ndarray, edges: list[float]) -> tuple[np.ndarray, np.ndarray]:
    which = np.searchsorted(np.asarray(edges, dtype=float), combined, side="right")
    size = len(edges) + 1
    return (
        np.bincount(which, minlength=size).astype(float),
        np.bincount(which, weights=hits.astype(float), minlength=size),
    )
