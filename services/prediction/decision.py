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

from services.base.errors import ConfigError
from services.prediction.config import REGIMES, PredictionConfig

# Sub-scores of the technical input, 0..100 (50 is neutral).
RSI_OVERSOLD, RSI_OVERBOUGHT = 30.0, 70.0
# Points from 50 that make the technical input fully bullish (75) or bearish (25).
TECHNICAL_FULL_SCALE = 25.0


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


def _rsi_part(rsi: float) -> tuple[float, str]:
    if rsi <= RSI_OVERSOLD:
        return 75.0, f"RSI {rsi:.0f} oversold"
    if rsi >= RSI_OVERBOUGHT:
        return 25.0, f"RSI {rsi:.0f} overbought"
    # Linear between the zones: 30 -> 60, 70 -> 40.
    return 60.0 - (rsi - RSI_OVERSOLD) / (RSI_OVERBOUGHT - RSI_OVERSOLD) * 20.0, f"RSI {rsi:.0f} neutral"


def _macd_part(macd: Mapping[str, Any]) -> tuple[float, str] | None:
    histogram = macd.get("histogram")
    if histogram is None:
        return None
    crossover = macd.get("crossover")
    if crossover == "bullish":
        return 80.0, "MACD crossed above its signal"
    if crossover == "bearish":
        return 20.0, "MACD crossed below its signal"
    return (62.0, "MACD momentum positive") if histogram > 0 else (38.0, "MACD momentum negative")


def _bollinger_part(percent_b: float) -> tuple[float, str]:
    if percent_b < 0:
        return 75.0, f"price below the lower Bollinger band (%B {percent_b:.2f})"
    if percent_b > 1:
        return 25.0, f"price above the upper Bollinger band (%B {percent_b:.2f})"
    # Inside the bands: nearer the lower band leans bullish (mean reversion), 60 .. 40.
    return 60.0 - percent_b * 20.0, f"%B {percent_b:.2f} inside the bands"


def _trend_part(vs_sma50: float | None, vs_sma200: float | None) -> tuple[float, str] | None:
    if vs_sma50 is None or vs_sma200 is None:
        return None
    above50, above200 = vs_sma50 > 0, vs_sma200 > 0
    if above50 and above200:
        return 75.0, "price above SMA 50 and SMA 200 (uptrend)"
    if above200:
        return 55.0, "price above SMA 200, below SMA 50 (pullback in an uptrend)"
    if above50:
        return 45.0, "price above SMA 50, below SMA 200 (rally in a downtrend)"
    return 25.0, "price below SMA 50 and SMA 200 (downtrend)"


def _volume_part(volume: Mapping[str, Any], change_percent: float | None) -> tuple[float, str] | None:
    if not volume.get("available") or change_percent is None:
        return None
    ratio = volume.get("ratio_to_average")
    if not volume.get("unusual") or ratio is None:
        return 50.0, "volume normal"
    if change_percent > 0:
        return 65.0, f"volume {ratio:.1f}x average on a rise"
    if change_percent < 0:
        return 35.0, f"volume {ratio:.1f}x average on a fall"
    return 50.0, f"volume {ratio:.1f}x average, price unchanged"


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
    weights = config.technical_weights
    present = {name: part for name, part in parts.items() if part is not None and weights[name] > 0}
    at = market_data.get("price_time")
    if not present:
        return Input("technical", None, 0.0, at, missing="market data has too few bars for indicators")
    total = sum(weights[name] for name in present)
    score_100 = sum(weights[name] * part[0] for name, part in present.items()) / total
    behind = market_data.get("sessions_behind")
    stale = behind is None or behind >= config.stale_after_sessions
    reasons = [part[1] for part in present.values()]
    if stale:
        reasons.append(f"market data is {market_data.get('sessions_behind')} sessions behind")
    return Input(
        "technical",
        round(max(-1.0, min(1.0, (score_100 - 50.0) / TECHNICAL_FULL_SCALE)), 6),
        config.stale_confidence if stale else 1.0,
        at,
        tuple(reasons),
        stale=stale,
        details={
            "score_0_100": round(score_100, 2),
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


def ml_input(ensemble: Mapping[str, Any]) -> Input:
    """From ``ml_model.get_ensemble_prediction``: 2 P(up) - 1, weighed by the models' agreement
    (the score already carries how sure the ensemble is). Undecided (confidence 0): left out."""
    p_up = float(ensemble["probability_up"])
    agreement = min(1.0, float(ensemble.get("agreement") or 0.0))
    at = ensemble.get("as_of")
    if float(ensemble.get("confidence") or 0.0) <= 0 or agreement <= 0:
        return Input("ml", None, 0.0, at, missing=f"the ML ensemble is undecided (P(up) {p_up:.2f})")
    days = ensemble.get("horizon_days")
    return Input(
        "ml",
        max(-1.0, min(1.0, 2.0 * p_up - 1.0)),
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


def decide(inputs: Mapping[str, Input], context: Context, config: PredictionConfig) -> Decision:
    """BUY, HOLD or SELL from the available inputs (``technical`` must be among them)."""
    weights = config.weights
    used = {name: i for name, i in inputs.items() if i.used and weights[name] > 0}
    assert "technical" in used, "the technical input is required"
    effective = {name: weights[name] * i.confidence for name, i in used.items()}
    total = sum(effective.values())
    # Rounded first, so the reported score and the signal cannot disagree.
    combined = round(sum(effective[name] * (i.score or 0.0) for name, i in used.items()) / total, 4)
    coverage = total / sum(weights.values())
    regime = context.regime
    rule = regime or "sideways"
    buy, sell = config.buy_threshold[rule], config.sell_threshold[rule]
    if combined >= buy:
        signal, margin = "BUY", (combined - buy) / (1.0 - buy)
    elif combined <= -sell:
        signal, margin = "SELL", (-combined - sell) / (1.0 - sell)
    else:
        signal = "HOLD"
        margin = (buy - combined) / buy if combined >= 0 else (combined + sell) / sell
    confidence = coverage * (0.5 + 0.5 * min(1.0, margin))
    if context.volatility == "high":
        confidence *= config.high_volatility_confidence

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
        confidence=round(confidence, 4),
        combined=combined,
        coverage=round(coverage, 4),
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
