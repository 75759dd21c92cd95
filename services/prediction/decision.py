"""The decision: three scored inputs and the market context into BUY, HOLD or SELL.

Pure functions over the answers of the other services, so every signal path can be tested
without them. ``technical_input`` reads market data's indicators, ``sentiment_input`` the
sentiment service's result, ``ml_input`` the ensemble: each a score from -1 (bearish) to +1
(bullish) with a confidence from 0 to 1. ``market_context`` reads the index's regime and
volatility: the regime chooses the thresholds (stricter in a bear market), high volatility lowers
the confidence. It is not a score of its own, so one market reading cannot push every symbol the
same way.

combined   = sum(w_i c_i s_i) / sum(w_i c_i) over the available inputs (c_i > 0)
coverage   = sum(w_i c_i) / sum(w_i) over every configured input: missing, stale or unsure inputs
             lower it
signal     = BUY if combined >= buy_threshold[regime], SELL if combined <= -sell_threshold[regime]
margin     = how far past its threshold the score is, as a share of the room beyond it (a HOLD:
             how far from the threshold on its side, as a share of that threshold)
confidence = coverage x (0.5 + 0.5 margin), x high_volatility_confidence in high volatility
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np

from services.base.errors import ConfigError
from services.prediction.config import REGIMES, PredictionConfig

# Sub-scores of the technical input, 0..100 (50 is neutral).
RSI_OVERSOLD, RSI_OVERBOUGHT = 30.0, 70.0
# Points from 50 that make the technical input fully bullish (75) or bearish (25).
TECHNICAL_FULL_SCALE = 25.0
TECHNICAL_PARTS = ("rsi", "macd", "bollinger", "trend", "volume")


@dataclass(frozen=True, slots=True)
class Input:
    """One input to the decision; ``score`` None means unavailable (``missing`` says why)."""

    name: str
    score: float | None
    confidence: float
    at: str | None
    reasons: tuple[str, ...] = ()
    missing: str | None = None
    stale: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def used(self) -> bool:
        return self.score is not None and self.confidence > 0


def unavailable(name: str, why: str) -> Input:
    return Input(name, None, 0.0, None, missing=why)


@dataclass(frozen=True, slots=True)
class Decision:
    signal: str
    confidence: float
    combined: float
    coverage: float
    regime: str | None
    threshold: float
    reasons: list[str]
    missing: dict[str, str]
    degraded: bool


# -- inputs ----------------------------------------------------------------------------------


def rsi_points(rsi: np.ndarray) -> np.ndarray:
    """The RSI's part: oversold 75, overbought 25, linear between (30 -> 60, 70 -> 40)."""
    between = 60.0 - (rsi - RSI_OVERSOLD) / (RSI_OVERBOUGHT - RSI_OVERSOLD) * 20.0
    return np.where(rsi <= RSI_OVERSOLD, 75.0, np.where(rsi >= RSI_OVERBOUGHT, 25.0, between))


def macd_points(histogram: np.ndarray, crossover: np.ndarray) -> np.ndarray:
    """MACD's part: a crossover (+1 above its signal, -1 below) 80 or 20, else momentum 62 or 38."""
    momentum = np.where(histogram > 0, 62.0, 38.0)
    return np.where(crossover == 1, 80.0, np.where(crossover == -1, 20.0, momentum))


def bollinger_points(percent_b: np.ndarray) -> np.ndarray:
    """Bollinger %B's part: below the lower band 75, above the upper 25; inside, 60 .. 40 (nearer
    the lower band leans bullish: mean reversion)."""
    return np.where(percent_b < 0, 75.0, np.where(percent_b > 1, 25.0, 60.0 - percent_b * 20.0))


def trend_points(vs_sma50: np.ndarray, vs_sma200: np.ndarray) -> np.ndarray:
    """The trend's part: above both SMAs 75, above SMA 200 only 55, above SMA 50 only 45, below both 25."""
    above50, above200 = vs_sma50 > 0, vs_sma200 > 0
    return np.where(above200, np.where(above50, 75.0, 55.0), np.where(above50, 45.0, 25.0))


def volume_points(unusual: np.ndarray, change_percent: np.ndarray) -> np.ndarray:
    """Volume's part: unusual volume on a rise 65, on a fall 35; else 50."""
    moved = np.where(change_percent > 0, 65.0, np.where(change_percent < 0, 35.0, 50.0))
    return np.where(unusual, moved, 50.0)


def technical_scores(
    points: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray], config: PredictionConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(score 0..100, score -1..+1 rounded to 6 places, any part present) of each row: the
    weighted mean of the parts present, in ``TECHNICAL_PARTS`` order."""
    weights = config.technical_weights
    total = np.zeros(len(next(iter(points.values()))))
    weighted = np.zeros_like(total)
    for name in TECHNICAL_PARTS:
        if weights[name] > 0:
            weighted = weighted + np.where(present[name], weights[name] * points[name], 0.0)
            total = total + np.where(present[name], weights[name], 0.0)
    used = total > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        score_100 = np.where(used, weighted / np.where(used, total, 1.0), np.nan)
    score = rounded(np.clip((score_100 - 50.0) / TECHNICAL_FULL_SCALE, -1.0, 1.0), 6)
    return score_100, score, used


def rounded(values: np.ndarray, places: int) -> np.ndarray:
    """Python's ``round`` of each value (correctly rounded; numpy's ``round`` is not always)."""
    return np.array([round(v, places) if v == v else v for v in values.tolist()], dtype=float)


def _one(value: float | None) -> np.ndarray:
    return np.array([np.nan if value is None else value], dtype=float)


def _rsi_part(rsi: float) -> tuple[float, str]:
    zone = "oversold" if rsi <= RSI_OVERSOLD else "overbought" if rsi >= RSI_OVERBOUGHT else "neutral"
    return float(rsi_points(_one(rsi))[0]), f"RSI {rsi:.0f} {zone}"


def _macd_part(macd: Mapping[str, Any]) -> tuple[float, str] | None:
    histogram = macd.get("histogram")
    if histogram is None:
        return None
    crossover = macd.get("crossover")
    code = 1 if crossover == "bullish" else -1 if crossover == "bearish" else 0
    text = {
        1: "MACD crossed above its signal",
        -1: "MACD crossed below its signal",
        0: "MACD momentum positive" if histogram > 0 else "MACD momentum negative",
    }[code]
    return float(macd_points(_one(histogram), np.array([code]))[0]), text


def _bollinger_part(percent_b: float) -> tuple[float, str]:
    if percent_b < 0:
        text = f"price below the lower Bollinger band (%B {percent_b:.2f})"
    elif percent_b > 1:
        text = f"price above the upper Bollinger band (%B {percent_b:.2f})"
    else:
        text = f"%B {percent_b:.2f} inside the bands"
    return float(bollinger_points(_one(percent_b))[0]), text


TREND_TEXT = {
    75.0: "price above SMA 50 and SMA 200 (uptrend)",
    55.0: "price above SMA 200, below SMA 50 (pullback in an uptrend)",
    45.0: "price above SMA 50, below SMA 200 (rally in a downtrend)",
    25.0: "price below SMA 50 and SMA 200 (downtrend)",
}


def _trend_part(vs_sma50: float | None, vs_sma200: float | None) -> tuple[float, str] | None:
    if vs_sma50 is None or vs_sma200 is None:
        return None
    points = float(trend_points(_one(vs_sma50), _one(vs_sma200))[0])
    return points, TREND_TEXT[points]


def _volume_part(volume: Mapping[str, Any], change_percent: float | None) -> tuple[float, str] | None:
    if not volume.get("available") or change_percent is None:
        return None
    ratio = volume.get("ratio_to_average")
    unusual = bool(volume.get("unusual")) and ratio is not None
    points = float(volume_points(np.array([unusual]), _one(change_percent))[0])
    if not unusual:
        return points, "volume normal"
    moved = (
        " on a rise" if change_percent > 0 else " on a fall" if change_percent < 0 else ", price unchanged"
    )
    return points, f"volume {ratio:.1f}x average{moved}"


def technical_input(market_data: Mapping[str, Any], config: PredictionConfig) -> Input:
    """The technical input from ``market_data.get_market_data``: a 0-100 score of RSI zones,
    MACD, Bollinger %B, trend against the SMAs and volume, as -1..+1: (score - 50) / 25, capped.

    The parts pull against each other (an oversold RSI rarely comes with an uptrend), so real
    scores stay near the middle: over CBA's 2000-2022 bars they span 36-64 (5th-95th percentile
    42-58). A score of 75, which needs every part bullish at once, counts as fully bullish."""
    ind = market_data.get("indicators") or {}
    averages = ind.get("moving_averages") or {}
    rsi = (ind.get("rsi") or {}).get("value")
    percent_b = (ind.get("bollinger") or {}).get("percent_b")
    parts = {
        "rsi": _rsi_part(rsi) if rsi is not None else None,
        "macd": _macd_part(ind.get("macd") or {}),
        "bollinger": _bollinger_part(percent_b) if percent_b is not None else None,
        "trend": _trend_part(averages.get("price_vs_sma_50"), averages.get("price_vs_sma_200")),
        "volume": _volume_part(market_data.get("volume") or {}, market_data.get("change_percent")),
    }
    present = {name: part for name, part in parts.items() if part is not None}
    at = market_data.get("price_time")
    score_100, score, used = technical_scores(
        {name: _one(part[0] if part else None) for name, part in parts.items()},
        {name: np.array([part is not None]) for name, part in parts.items()},
        config,
    )
    if not used[0]:
        return Input("technical", None, 0.0, at, missing="market data has too few bars for indicators")
    present = {name: part for name, part in present.items() if config.technical_weights[name] > 0}
    behind = market_data.get("sessions_behind")
    stale = behind is None or behind >= config.stale_after_sessions
    reasons = [part[1] for part in present.values()]
    if stale:
        reasons.append(f"market data is {market_data.get('sessions_behind')} sessions behind")
    return Input(
        "technical",
        float(score[0]),
        config.stale_confidence if stale else 1.0,
        at,
        tuple(reasons),
        stale=stale,
        details={
            "score_0_100": round(float(score_100[0]), 2),
            "parts": {n: round(p[0], 1) for n, p in present.items()},
        },
    )


def sentiment_input(result: Mapping[str, Any], config: PredictionConfig) -> Input:
    """From ``sentiment.analyze_sentiment``: its score, weighed by its confidence."""
    confidence = min(1.0, float(result.get("confidence") or 0.0))
    at = result.get("computed_at")
    if result.get("source") == "none" or confidence <= 0:
        why = result.get("reason") or "no news to go on"
        return Input("sentiment", None, 0.0, at, missing=f"sentiment has zero confidence: {why}")
    stale = bool(result.get("stale"))
    score = float(result["score"])
    reasons = [
        f"news sentiment {result.get('label', '')} ({score:+.2f}, {result.get('article_count', 0)} articles)"
    ]
    if stale:
        reasons.append(f"sentiment is stale ({result.get('reason')})")
    return Input(
        "sentiment",
        max(-1.0, min(1.0, score)),
        confidence * (config.stale_confidence if stale else 1.0),
        at,
        tuple(reasons),
        stale=stale,
    )


def ml_scores(
    probability_up: np.ndarray, agreement: np.ndarray, confidence: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(score, confidence) of the ML input from the ensemble's figures: 2 P(up) - 1, weighed by the
    agreement; the score is NaN where the ensemble is undecided (its confidence 0)."""
    agreement = np.minimum(1.0, agreement)
    decided = (confidence > 0) & (agreement > 0)
    return np.where(decided, np.clip(2.0 * probability_up - 1.0, -1.0, 1.0), np.nan), agreement


def ml_input(ensemble: Mapping[str, Any]) -> Input:
    """From ``ml_model.get_ensemble_prediction``: 2 P(up) - 1, weighed by the models' agreement
    (the score already carries how sure the ensemble is). Undecided (confidence 0): left out."""
    p_up = float(ensemble["probability_up"])
    score, agreement = (
        float(v[0])
        for v in ml_scores(
            _one(p_up), _one(ensemble.get("agreement") or 0.0), _one(ensemble.get("confidence") or 0.0)
        )
    )
    at = ensemble.get("as_of")
    if score != score:
        return Input("ml", None, 0.0, at, missing=f"the ML ensemble is undecided (P(up) {p_up:.2f})")
    days = ensemble.get("horizon_days")
    return Input(
        "ml",
        score,
        agreement,
        at,
        (f"ML ensemble P(up over {days} days) {p_up:.2f}, agreement {agreement:.0%}",),
    )


@dataclass(frozen=True, slots=True)
class Context:
    """The market context: the regime sets the thresholds, high volatility lowers confidence."""

    regime: str | None  # bull | sideways | bear; None when unavailable
    volatility: str | None
    at: str | None
    reasons: tuple[str, ...] = ()
    missing: str | None = None
    stale: bool = False


def market_context(context: Mapping[str, Any]) -> Context:
    """From ``market_data.get_market_context``."""
    regime = context["regime"]
    if regime not in REGIMES:
        raise ValueError(f"unknown market regime {regime!r}")
    volatility = context.get("volatility_regime")
    reasons = [f"{regime} market ({context.get('reason', '')})"]
    if volatility == "high":
        reasons.append("high market volatility")
    return Context(regime, volatility, context.get("as_of"), tuple(reasons), stale=bool(context.get("stale")))


def no_context(why: str, at: str | None = None) -> Context:
    return Context(None, None, at, missing=why)


def context_for(context: Context, price_time: str | None, config: PredictionConfig) -> Context:
    """The context for a symbol priced at ``price_time``: left out when the index's context and
    the price are more than ``max_context_lag_days`` apart (e.g. an index file that ends years
    before the symbol's prices)."""
    if context.regime is None or not context.at or not price_time:
        return context
    lag = (date.fromisoformat(price_time[:10]) - date.fromisoformat(context.at[:10])).days
    if abs(lag) <= config.max_context_lag_days:
        return context
    relation = "older" if lag > 0 else "newer"
    return no_context(
        f"market context is of {context.at[:10]}, {abs(lag)} days {relation} than the price "
        f"({price_time[:10]})",
        context.at,
    )


# -- the decision ----------------------------------------------------------------------------


SIGNALS = {1: "BUY", 0: "HOLD", -1: "SELL"}


@dataclass(frozen=True, slots=True)
class Scored:
    """The numbers of many decisions at once: each an element of the arrays."""

    signal: np.ndarray  # 1 BUY, 0 HOLD, -1 SELL
    confidence: np.ndarray  # rounded to 4 places
    combined: np.ndarray  # rounded to 4 places
    coverage: np.ndarray
    threshold: np.ndarray  # the BUY threshold, or minus the SELL one for a SELL


def score(
    inputs: Mapping[str, tuple[np.ndarray, np.ndarray]],
    regime: np.ndarray,
    high_volatility: np.ndarray,
    config: PredictionConfig,
) -> Scored:
    """The formula of ``decide`` over arrays. ``inputs``: name -> (score, confidence) with NaN
    scores where an input is not used, in the order ``decide`` weighs them; ``regime``: bull,
    sideways, bear or "" (none: the sideways thresholds)."""
    weights = config.weights
    total = np.zeros(len(regime))
    weighted = np.zeros_like(total)
    for name, (values, confidence) in inputs.items():
        used = (values == values) & (confidence > 0) & (weights[name] > 0)
        effective = weights[name] * confidence
        total = total + np.where(used, effective, 0.0)
        weighted = weighted + np.where(used, effective * np.where(used, values, 0.0), 0.0)
    combined = rounded(weighted / total, 4)  # rounded first: the reported score and the signal agree
    coverage = total / sum(weights.values())
    rule = np.where(regime == "", "sideways", regime)
    buy = np.array([config.buy_threshold[r] for r in rule.tolist()], dtype=float)
    sell = np.array([config.sell_threshold[r] for r in rule.tolist()], dtype=float)
    signal = np.where(combined >= buy, 1, np.where(combined <= -sell, -1, 0))
    hold_margin = np.where(combined >= 0, (buy - combined) / buy, (combined + sell) / sell)
    margin = np.where(
        signal == 1,
        (combined - buy) / (1.0 - buy),
        np.where(signal == -1, (-combined - sell) / (1.0 - sell), hold_margin),
    )
    confidence = coverage * (0.5 + 0.5 * np.minimum(1.0, margin))
    confidence = np.where(high_volatility, confidence * config.high_volatility_confidence, confidence)
    return Scored(signal, rounded(confidence, 4), combined, coverage, np.where(signal == -1, -sell, buy))


def decide(inputs: Mapping[str, Input], context: Context, config: PredictionConfig) -> Decision:
    """BUY, HOLD or SELL from the available inputs (``technical`` must be among them)."""
    weights = config.weights
    used = {name: i for name, i in inputs.items() if i.used and weights[name] > 0}
    assert "technical" in used, "the technical input is required"
    scored = score(
        {name: (_one(i.score if i.used else None), _one(i.confidence)) for name, i in inputs.items()},
        np.array([context.regime or ""]),
        np.array([context.volatility == "high"]),
        config,
    )
    signal = SIGNALS[int(scored.signal[0])]
    combined = float(scored.combined[0])
    regime = context.regime
    rule = regime or "sideways"
    buy, sell = config.buy_threshold[rule], config.sell_threshold[rule]

    missing = {name: i.missing or "zero confidence" for name, i in inputs.items() if not i.used}
    missing.update({name: "not asked" for name in weights if name not in inputs})
    if context.missing:
        missing["market"] = context.missing
    where = f"in a {regime} market" if regime else "with no market context (sideways thresholds)"
    if signal == "BUY":
        verdict = f"combined score {combined:+.2f} at or above the BUY threshold {buy:.2f} {where}"
    elif signal == "SELL":
        verdict = f"combined score {combined:+.2f} at or below the SELL threshold -{sell:.2f} {where}"
    else:
        verdict = f"combined score {combined:+.2f} between -{sell:.2f} and {buy:.2f} {where}"
    reasons = [verdict]
    for name, i in used.items():
        reasons.extend(f"{name}: {text}" for text in i.reasons)
    reasons.extend(f"market: {text}" for text in context.reasons)
    reasons.extend(f"{name} left out: {why}" for name, why in missing.items())
    degraded = bool(missing) or context.stale or any(i.stale for i in used.values())
    return Decision(
        signal=signal,
        confidence=float(scored.confidence[0]),
        combined=combined,
        coverage=round(float(scored.coverage[0]), 4),
        regime=regime,
        threshold=buy if signal != "SELL" else -sell,
        reasons=reasons,
        missing=missing,
        degraded=degraded,
    )


# The most bullish market data answer the technical input can read.
_MOST_BULLISH = {
    "price_time": None,
    "sessions_behind": 0,
    "change_percent": 1.0,
    "indicators": {
        "rsi": {"value": 0.0},
        "macd": {"histogram": 1.0, "crossover": "bullish"},
        "bollinger": {"percent_b": -1.0},
        "moving_averages": {"price_vs_sma_50": 0.1, "price_vs_sma_200": 0.1},
    },
    "volume": {"available": True, "ratio_to_average": 3.0, "unusual": True},
}


def best_technical(config: PredictionConfig) -> float:
    """The technical input's score with every indicator bullish."""
    score = technical_input(_MOST_BULLISH, config).score
    assert score is not None
    return score


def check_reachable(config: PredictionConfig) -> None:
    """A ConfigError when a regime's buy threshold is above what the technical input alone (the
    one input always there) can reach: a BUY must stay possible in every market, a bear one too."""
    best = best_technical(config)
    for regime in REGIMES:
        needed = config.buy_threshold[regime]
        if best < needed:
            raise ConfigError(
                f"prediction.buy_threshold.{regime} = {needed} is unreachable: the technical input "
                f"alone reaches at most {best:.3f}"
            )
