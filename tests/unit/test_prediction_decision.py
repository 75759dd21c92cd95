"""Every signal path of the decision, with inputs shaped like the services' answers."""

from __future__ import annotations

from typing import Any

import pytest

from services.base.errors import ConfigError
from services.prediction.config import PredictionConfig
from services.prediction.decision import (
    Context,
    Input,
    best_technical,
    check_reachable,
    context_for,
    decide,
    market_context,
    ml_input,
    no_context,
    sentiment_input,
    technical_input,
    unavailable,
)
from tests.prediction_fakes import (
    BEARISH_TECHNICALS,
    BULLISH_TECHNICALS,
    context_answer,
    market_data_answer,
    ml_answer,
    sentiment_answer,
)

# The formula's behaviour, with weights and thresholds of its own (the defaults are tuned).
CONFIG = PredictionConfig(
    weights={"technical": 0.50, "sentiment": 0.20, "ml": 0.30},
    buy_threshold={"bull": 0.20, "sideways": 0.25, "bear": 0.35},
)
# Bullish, as real data gets: an uptrend with momentum, RSI mid-range (technical score 57.65).
MODERATE = {"rsi": 58.0, "histogram": 0.2, "percent_b": 0.7, "vs_sma50": 0.02, "vs_sma200": 0.05}


def inputs(technical: dict[str, Any], sentiment: dict | None, ml: dict | None) -> dict[str, Input]:
    return {
        "technical": technical_input(market_data_answer(**technical), CONFIG),
        "sentiment": sentiment_input(sentiment, CONFIG) if sentiment else unavailable("sentiment", "down"),
        "ml": ml_input(ml) if ml else unavailable("ml", "down"),
    }


def context(regime: str = "bull", volatility: str = "normal") -> Context:
    return market_context(context_answer(regime, volatility))


def test_technical_score_from_each_indicator() -> None:
    neutral = technical_input(market_data_answer(), CONFIG)
    bullish = technical_input(market_data_answer(**BULLISH_TECHNICALS), CONFIG)
    bearish = technical_input(market_data_answer(**BEARISH_TECHNICALS), CONFIG)
    moderate = technical_input(market_data_answer(**MODERATE), CONFIG)
    assert bullish.details["parts"] == {
        "rsi": 75.0,
        "macd": 80.0,
        "bollinger": 75.0,
        "trend": 75.0,
        "volume": 65.0,
    }
    assert bearish.details["parts"] == {
        "rsi": 25.0,
        "macd": 20.0,
        "bollinger": 25.0,
        "trend": 25.0,
        "volume": 35.0,
    }
    # 0.25*75 + 0.25*80 + 0.15*75 + 0.25*75 + 0.10*65 = 75.25: past 75, fully bullish.
    assert bullish.details["score_0_100"] == pytest.approx(75.25)
    assert bullish.score == 1.0
    assert bearish.score == -1.0
    # 0.25*(60 - 28/40*20) + 0.25*62 + 0.15*(60 - 0.7*20) + 0.25*75 + 0.10*50 = 57.65 -> 7.65 / 25
    assert moderate.details["score_0_100"] == pytest.approx(57.65)
    assert moderate.score == pytest.approx(0.306)
    assert neutral.score is not None
    assert abs(neutral.score) < 0.3
    assert any("RSI 28 oversold" in r for r in bullish.reasons)
    assert best_technical(CONFIG) == 1.0


def test_missing_indicators_are_left_out_of_the_technical_score() -> None:
    answer = market_data_answer(**BULLISH_TECHNICALS)
    answer["indicators"]["moving_averages"] = {"price_vs_sma_50": None, "price_vs_sma_200": None}
    answer["volume"] = {"available": False}
    technical = technical_input(answer, CONFIG)
    assert set(technical.details["parts"]) == {"rsi", "macd", "bollinger"}
    assert technical.details["score_0_100"] == pytest.approx((18.75 + 20 + 11.25) / 0.65, abs=0.01)
    answer["indicators"] = {}
    assert not technical_input(answer, CONFIG).used


def test_buy_sell_and_hold() -> None:
    buy = decide(inputs(MODERATE, sentiment_answer(0.6, 0.8), ml_answer(0.7)), context("bull"), CONFIG)
    sell = decide(
        inputs(BEARISH_TECHNICALS, sentiment_answer(-0.6, 0.8), ml_answer(0.3)), context("bear"), CONFIG
    )
    hold = decide(inputs({}, sentiment_answer(0.05, 0.8), ml_answer(0.52)), context("sideways"), CONFIG)
    assert (buy.signal, sell.signal, hold.signal) == ("BUY", "SELL", "HOLD")
    assert not buy.degraded
    assert buy.missing == {}
    assert "BUY threshold 0.20 in a bull market" in buy.reasons[0]
    assert "SELL threshold -0.20 in a bear market" in sell.reasons[0]
    assert "between -0.25 and 0.25 in a sideways market" in hold.reasons[0]
    assert any(r.startswith("market: bull market") for r in buy.reasons)


def test_the_combined_score_and_confidence_by_formula() -> None:
    given = inputs(MODERATE, sentiment_answer(0.6, 0.5), ml_answer(0.75, agreement=2 / 3))
    decision = decide(given, context("bull"), CONFIG)
    w = CONFIG.weights
    parts = [(w["technical"], 1.0, 0.306), (w["sentiment"], 0.5, 0.6), (w["ml"], 2 / 3, 0.5)]
    expected = sum(wi * ci * si for wi, ci, si in parts) / sum(wi * ci for wi, ci, _ in parts)
    coverage = sum(wi * ci for wi, ci, _ in parts) / sum(w.values())
    assert decision.combined == pytest.approx(expected, abs=1e-4)
    assert decision.coverage == pytest.approx(coverage, abs=1e-4)
    margin = (decision.combined - 0.20) / 0.80
    assert decision.confidence == pytest.approx(coverage * (0.5 + 0.5 * margin), abs=1e-4)
    # A HOLD's margin: how far from the threshold on its side.
    hold = decide(inputs({}, None, None), context("bull"), CONFIG)
    assert hold.signal == "HOLD"
    side = 0.20 if hold.combined >= 0 else 0.25
    distance = (0.20 - hold.combined) if hold.combined >= 0 else (hold.combined + 0.25)
    assert hold.confidence == pytest.approx(hold.coverage * (0.5 + 0.5 * distance / side), abs=1e-4)


def test_high_volatility_lowers_confidence_only() -> None:
    calm = decide(inputs(MODERATE, sentiment_answer(0.6, 0.8), ml_answer(0.7)), context("bull"), CONFIG)
    wild = decide(
        inputs(MODERATE, sentiment_answer(0.6, 0.8), ml_answer(0.7)), context("bull", "high"), CONFIG
    )
    assert wild.signal == calm.signal == "BUY"
    assert wild.combined == calm.combined
    assert wild.confidence == pytest.approx(calm.confidence * CONFIG.high_volatility_confidence, abs=1e-4)


def test_a_bear_market_is_stricter_but_a_buy_stays_reachable() -> None:
    views = sentiment_answer(0.3, 0.5), ml_answer(0.6)
    in_bull = decide(inputs(MODERATE, *views), context("bull"), CONFIG)
    in_bear = decide(inputs(MODERATE, *views), context("bear"), CONFIG)
    assert in_bull.combined == in_bear.combined  # the regime moves the bar, not the score
    assert in_bull.signal == "BUY"
    assert in_bear.signal == "HOLD"
    assert in_bear.threshold == CONFIG.buy_threshold["bear"] > CONFIG.buy_threshold["bull"]
    # Stronger but realistic evidence buys against a bear market, even with the technicals alone.
    stronger = {**MODERATE, "crossover": "bullish", "percent_b": 0.4}
    alone = decide(inputs(stronger, None, None), context("bear"), CONFIG)
    assert alone.signal == "BUY"
    assert "in a bear market" in alone.reasons[0]
    assert set(alone.missing) == {"sentiment", "ml"}


def test_an_unreachable_buy_is_a_config_error() -> None:
    check_reachable(CONFIG)
    strict = PredictionConfig(
        technical_weights={"rsi": 1.0, "macd": 0.0, "bollinger": 0.0, "trend": 0.0, "volume": 0.0}
    )
    # RSI alone tops out at 75 -> +1.0: still reachable.
    check_reachable(strict)
    lenient_parts = PredictionConfig(
        technical_weights={"rsi": 0.0, "macd": 0.0, "bollinger": 0.0, "trend": 0.0, "volume": 1.0}
    )
    # Volume alone tops out at 65 -> +0.6, below the bear threshold 0.35? No: 0.6 >= 0.35.
    check_reachable(lenient_parts)
    too_strict = PredictionConfig(
        technical_weights={"rsi": 0.0, "macd": 0.0, "bollinger": 0.0, "trend": 0.0, "volume": 1.0},
        buy_threshold={"bull": 0.2, "sideways": 0.25, "bear": 0.7},
    )
    with pytest.raises(ConfigError, match=r"buy_threshold\.bear = 0\.7 is unreachable"):
        check_reachable(too_strict)
    with pytest.raises(ValueError, match="exactly the keys"):
        PredictionConfig(weights={"technical": 1.0})
    with pytest.raises(ValueError, match="stale_confidence"):
        PredictionConfig(stale_confidence=3.0)


def test_missing_inputs_are_left_out_and_said() -> None:
    full = decide(inputs(MODERATE, sentiment_answer(0.6, 0.8), ml_answer(0.7)), context("bull"), CONFIG)
    partial = decide(inputs(MODERATE, None, None), context("bull"), CONFIG)
    assert partial.degraded
    assert set(partial.missing) == {"sentiment", "ml"}
    assert partial.confidence < full.confidence
    assert partial.coverage == pytest.approx(CONFIG.weights["technical"] / sum(CONFIG.weights.values()))
    assert any(r.startswith("sentiment left out: down") for r in partial.reasons)
    blind = decide(inputs(MODERATE, None, None), no_context("market context unavailable: down"), CONFIG)
    assert blind.regime is None
    assert "no market context" in blind.reasons[0]
    assert blind.threshold == CONFIG.buy_threshold["sideways"]
    assert blind.missing["market"] == "market context unavailable: down"


def test_zero_confidence_inputs_count_as_missing() -> None:
    none_source = sentiment_answer(0.0, 0.0, source="none", reason="no MarketAux token")
    decision = decide(inputs(MODERATE, none_source, ml_answer(0.5)), context("bull"), CONFIG)
    assert decision.missing == {
        "sentiment": "sentiment has zero confidence: no MarketAux token",
        "ml": "the ML ensemble is undecided (P(up) 0.50)",
    }
    assert decision.degraded


def test_stale_inputs_count_less_and_degrade() -> None:
    fresh = technical_input(market_data_answer(**MODERATE, sessions_behind=1), CONFIG)
    stale = technical_input(market_data_answer(**MODERATE, sessions_behind=3), CONFIG)
    assert not fresh.stale  # one session behind is normal before the day's bar arrives
    assert stale.confidence == CONFIG.stale_confidence * fresh.confidence
    assert "market data is 3 sessions behind" in stale.reasons
    assert decide({"technical": stale}, context("bull"), CONFIG).degraded
    old_context = Context("bull", "normal", "2026-11-19", stale=True)
    assert decide({"technical": fresh}, old_context, CONFIG).degraded


def test_a_market_context_far_from_the_price_is_left_out() -> None:
    current = context("bull")  # as of 2026-11-19
    assert context_for(current, "2026-11-20", CONFIG) is current
    old = context_for(current, "2026-12-20", CONFIG)
    assert old.regime is None
    assert old.missing == "market context is of 2026-11-19, 31 days older than the price (2026-12-20)"
    ahead = context_for(current, "2025-11-19", CONFIG)
    assert ahead.missing is not None
    assert "365 days newer" in ahead.missing
    with pytest.raises(ValueError, match="unknown market regime"):
        market_context({**context_answer(), "regime": "euphoric"})
