"""Every signal path of the decision, with inputs shaped like the services' answers."""

from __future__ import annotations

import pytest

from services.base.errors import ConfigError
from services.prediction.config import PredictionConfig
from services.prediction.decision import (
    best_score,
    check_reachable,
    context_for,
    decide,
    market_input,
    ml_input,
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

CONFIG = PredictionConfig()


def inputs(technical: dict, sentiment: dict | None, ml: dict | None, regime: str | None) -> dict:
    return {
        "technical": technical_input(market_data_answer(**technical), CONFIG),
        "sentiment": sentiment_input(sentiment, CONFIG) if sentiment else unavailable("sentiment", "down"),
        "ml": ml_input(ml) if ml else unavailable("ml", "down"),
        "market": market_input(context_answer(regime), CONFIG) if regime else unavailable("market", "down"),
    }


def test_technical_score_from_each_indicator() -> None:
    neutral = technical_input(market_data_answer(), CONFIG)
    bullish = technical_input(market_data_answer(**BULLISH_TECHNICALS), CONFIG)
    bearish = technical_input(market_data_answer(**BEARISH_TECHNICALS), CONFIG)
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
    # 0.25*75 + 0.25*80 + 0.15*75 + 0.25*75 + 0.10*65 = 75.25 -> (75.25 / 50) - 1
    assert bullish.details["score_0_100"] == pytest.approx(75.25)
    assert bullish.score == pytest.approx(0.505)
    assert bearish.score == pytest.approx(-0.505)
    assert neutral.score is not None
    assert -0.15 < neutral.score < 0.15
    assert any("RSI 28 oversold" in r for r in bullish.reasons)


def test_missing_indicators_are_left_out_of_the_technical_score() -> None:
    answer = market_data_answer(**BULLISH_TECHNICALS)
    answer["indicators"]["moving_averages"] = {"price_vs_sma_50": None, "price_vs_sma_200": None}
    answer["volume"] = {"available": False}
    technical = technical_input(answer, CONFIG)
    assert set(technical.details["parts"]) == {"rsi", "macd", "bollinger"}
    # (0.25*75 + 0.25*80 + 0.15*75) / 0.65
    assert technical.details["score_0_100"] == pytest.approx((18.75 + 20 + 11.25) / 0.65, abs=0.01)
    answer["indicators"] = {}
    assert not technical_input(answer, CONFIG).used


def test_buy_sell_and_hold() -> None:
    buy = decide(inputs(BULLISH_TECHNICALS, sentiment_answer(0.6, 0.8), ml_answer(0.7), "bull"), CONFIG)
    sell = decide(inputs(BEARISH_TECHNICALS, sentiment_answer(-0.6, 0.8), ml_answer(0.3), "bear"), CONFIG)
    hold = decide(inputs({}, sentiment_answer(0.05, 0.8), ml_answer(0.52), "sideways"), CONFIG)
    assert (buy.signal, sell.signal, hold.signal) == ("BUY", "SELL", "HOLD")
    assert not buy.degraded
    assert buy.missing == {}
    assert buy.reasons[0].startswith("combined score +")
    assert "BUY threshold 0.20 in a bull market" in buy.reasons[0]
    assert "SELL threshold -0.20 in a bear market" in sell.reasons[0]
    assert 0 < hold.confidence <= 1
    assert buy.coverage < 1  # sentiment and ML count at their confidence


def test_the_combined_score_is_the_confidence_weighted_mean() -> None:
    given = inputs(BULLISH_TECHNICALS, sentiment_answer(0.6, 0.5), ml_answer(0.75, 1.0), "bull")
    decision = decide(given, CONFIG)
    w = CONFIG.weights
    parts = [
        (w["technical"], 1.0, 0.505),
        (w["sentiment"], 0.5, 0.6),
        (w["ml"], 0.5, 0.5),
        (w["market"], 1.0, 1.0),
    ]
    expected = sum(wi * ci * si for wi, ci, si in parts) / sum(wi * ci for wi, ci, _ in parts)
    assert decision.combined == pytest.approx(expected, abs=1e-4)
    assert decision.coverage == pytest.approx(sum(wi * ci for wi, ci, _ in parts) / sum(w.values()), abs=1e-4)
    margin = (expected - 0.20) / 0.80
    assert decision.confidence == pytest.approx(decision.coverage * (0.5 + 0.5 * margin), abs=1e-3)


def test_a_bear_market_is_stricter_but_a_buy_stays_reachable() -> None:
    moderate = {**BULLISH_TECHNICALS, "crossover": None, "volume_ratio": 1.0}
    sentiment, ml = sentiment_answer(0.5, 0.6), ml_answer(0.65)
    in_bull = decide(inputs(moderate, sentiment, ml, "bull"), CONFIG)
    in_bear = decide(inputs(moderate, sentiment, ml, "bear"), CONFIG)
    assert in_bull.signal == "BUY"
    assert in_bear.signal == "HOLD"
    assert in_bear.threshold == CONFIG.buy_threshold["bear"] > CONFIG.buy_threshold["bull"]
    # Strong evidence still buys against a bear market...
    strong = decide(inputs(BULLISH_TECHNICALS, sentiment_answer(0.9, 1.0), ml_answer(0.9), "bear"), CONFIG)
    assert strong.signal == "BUY"
    assert "in a bear market" in strong.reasons[0]
    assert strong.combined <= best_score(CONFIG, "bear")


def test_an_unreachable_buy_is_a_config_error() -> None:
    check_reachable(CONFIG)
    # The technical input is at best +0.505 (75.25 of 100: RSI 75, a MACD cross 80, below the band 75,
    # uptrend 75, volume 65).
    assert best_score(CONFIG, "bear") == pytest.approx(0.4 * 0.505 + 0.2 + 0.25 - 0.15, abs=1e-3)
    strict = PredictionConfig(buy_threshold={"bull": 0.2, "sideways": 0.25, "bear": 0.6})
    with pytest.raises(ConfigError, match=r"buy_threshold\.bear = 0\.6 is unreachable"):
        check_reachable(strict)
    with pytest.raises(ValueError, match="exactly the keys"):
        PredictionConfig(weights={"technical": 1.0})


def test_missing_inputs_are_left_out_and_said() -> None:
    full = decide(inputs(BULLISH_TECHNICALS, sentiment_answer(0.6, 0.8), ml_answer(0.7), "bull"), CONFIG)
    partial = decide(inputs(BULLISH_TECHNICALS, None, None, "bull"), CONFIG)
    assert partial.degraded
    assert set(partial.missing) == {"sentiment", "ml"}
    assert partial.confidence < full.confidence
    assert partial.coverage == pytest.approx((CONFIG.weights["technical"] + CONFIG.weights["market"]) / 1.0)
    assert any(r.startswith("sentiment left out: down") for r in partial.reasons)
    # No market context: sideways thresholds, and said.
    no_context = decide(inputs(BULLISH_TECHNICALS, None, None, None), CONFIG)
    assert no_context.regime is None
    assert "no market context" in no_context.reasons[0]
    assert no_context.threshold == CONFIG.buy_threshold["sideways"]


def test_zero_confidence_inputs_count_as_missing() -> None:
    none_source = sentiment_answer(0.0, 0.0, source="none", reason="no MarketAux token")
    given = inputs(BULLISH_TECHNICALS, none_source, ml_answer(0.5), "bull")
    decision = decide(given, CONFIG)
    assert decision.missing == {
        "sentiment": "sentiment has zero confidence: no MarketAux token",
        "ml": "the ML ensemble is undecided (P(up) 0.50)",
    }
    assert decision.degraded


def test_stale_inputs_count_less_and_degrade() -> None:
    fresh = technical_input(market_data_answer(**BULLISH_TECHNICALS), CONFIG)
    stale = technical_input(market_data_answer(**BULLISH_TECHNICALS, stale=True), CONFIG)
    assert stale.confidence == CONFIG.stale_confidence * fresh.confidence
    assert "market data is 3 sessions behind" in stale.reasons
    decision = decide({"technical": stale, "market": market_input(context_answer("bull"), CONFIG)}, CONFIG)
    assert decision.degraded
    high = market_input(context_answer("bull", volatility="high"), CONFIG)
    assert high.confidence == CONFIG.high_volatility_confidence


def test_a_market_context_much_older_than_the_price_is_left_out() -> None:
    market = market_input(context_answer("bull"), CONFIG)  # as of 2026-11-19
    assert context_for(market, "2026-11-20", CONFIG) is market
    old = context_for(market, "2026-12-20", CONFIG)
    assert not old.used
    assert old.missing == "market context is of 2026-11-19, 31 days older than the price (2026-12-20)"
