"""Weighting and aggregation of stored mentions, with figures worked out by hand."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta

import pytest

from services.sentiment.aggregate import Weighting, big4_view, per_article, source_quality, summarize, weigh
from services.sentiment.store import MentionRow

NOW = datetime(2026, 11, 20, tzinfo=UTC)
WEIGHTING = Weighting(
    half_life_hours=24.0,
    source_weights={"reuters.com": 1.0, "fool.com.au": 0.5},
    default_source_weight=0.6,
    prefer_provider_sentiment=True,
    confidence_articles=3.0,
    window=timedelta(days=7),
)


def label_for(score: float) -> str:
    return "positive" if score >= 0.05 else "negative" if score <= -0.05 else "neutral"


def row(
    article_id: int,
    score: float,
    *,
    hours_ago: float = 0.0,
    source: str = "reuters.com",
    relevance: float = 1.0,
    provider_score: float | None = None,
    symbol: str = "CBA.AX",
) -> MentionRow:
    return MentionRow(
        article_id=article_id,
        symbol=symbol,
        relevance=relevance,
        provider_score=provider_score,
        text_score=score,
        title=f"headline {article_id}",
        url=f"https://example.com/{article_id}",
        source=source,
        provider="rss",
        published_at=NOW - timedelta(hours=hours_ago),
    )


def test_weight_is_source_quality_times_decay_times_relevance() -> None:
    (fresh, day_old, fool, other) = weigh(
        [
            row(1, 0.5),
            row(2, 0.5, hours_ago=24),
            row(3, 0.5, source="fool.com.au", relevance=0.5),
            row(4, 0.5, source="news.example.org"),
        ],
        NOW,
        WEIGHTING,
    )
    assert fresh.weight == pytest.approx(1.0)
    assert day_old.weight == pytest.approx(0.5)
    assert fool.weight == pytest.approx(0.25)
    assert other.weight == pytest.approx(0.6)
    assert source_quality("uk.reuters.com", WEIGHTING) == 1.0


def test_provider_sentiment_is_preferred_when_configured() -> None:
    (scored,) = weigh([row(1, -0.2, provider_score=0.7)], NOW, WEIGHTING)
    assert scored.score == 0.7
    ours = dataclasses.replace(WEIGHTING, prefer_provider_sentiment=False)
    (scored,) = weigh([row(1, -0.2, provider_score=0.7)], NOW, ours)
    assert scored.score == -0.2


def test_summary_score_confidence_and_headlines() -> None:
    rows = [row(1, 0.6), row(2, 0.4, hours_ago=24), row(3, -0.5, hours_ago=24), row(4, 0.9, hours_ago=200)]
    summary = summarize(rows, NOW, WEIGHTING, label_for)
    # Article 4 is outside the 7-day window; weights 1, 0.5, 0.5.
    assert summary["article_count"] == 3
    assert summary["score"] == pytest.approx((0.6 + 0.2 - 0.25) / 2.0, abs=1e-4)
    assert summary["label"] == "positive"
    effective = 2.0**2 / (1 + 0.25 + 0.25)
    agreement = 1.5 / 2.0
    assert summary["effective_articles"] == pytest.approx(effective, abs=0.01)
    assert summary["agreement"] == pytest.approx(agreement)
    assert summary["confidence"] == pytest.approx((1 - math.exp(-effective / 3)) * agreement, abs=1e-4)
    assert summary["news_volume"] == {"24h": 3, "7d": 3}
    assert [h["title"] for h in summary["top_positive"]] == ["headline 1", "headline 2"]
    assert [h["title"] for h in summary["top_negative"]] == ["headline 3"]


def test_no_articles_means_zero_confidence() -> None:
    summary = summarize([], NOW, WEIGHTING, label_for)
    assert (summary["score"], summary["confidence"], summary["label"]) == (0.0, 0.0, "neutral")


def test_one_article_gives_low_confidence_many_agreeing_give_high() -> None:
    one = summarize([row(1, 0.8)], NOW, WEIGHTING, label_for)
    many = summarize([row(i, 0.5) for i in range(10)], NOW, WEIGHTING, label_for)
    assert one["confidence"] == pytest.approx(1 - math.exp(-1 / 3), abs=1e-4)
    assert many["confidence"] > 0.95


def test_an_article_about_several_symbols_counts_once_for_the_market() -> None:
    merged = per_article(
        [row(1, 0.4, relevance=1.0), row(1, 0.4, relevance=0.5, symbol="^AXJO"), row(2, -0.1)]
    )
    assert len(merged) == 2
    first = next(r for r in merged if r.article_id == 1)
    assert first.relevance == 1.0
    assert first.text_score == pytest.approx(0.4)


def result(score: float, confidence: float = 0.5) -> dict[str, object]:
    return {"score": score, "confidence": confidence, "label": label_for(score)}


def test_big4_mean_dispersion_and_consensus() -> None:
    agreeing = big4_view(
        {"CBA.AX": result(0.3), "WBC.AX": result(0.2), "ANZ.AX": result(0.25), "NAB.AX": result(0.0, 0.0)},
        0.25,
        label_for,
    )
    assert agreeing["informed_symbols"] == 3
    assert agreeing["mean_score"] == pytest.approx(0.25)
    assert agreeing["consensus"] == "positive"
    assert agreeing["confidence"] == pytest.approx(1.5 / 4)
    assert agreeing["label_counts"] == {"positive": 3, "neutral": 1, "negative": 0}
    split = big4_view({"CBA.AX": result(0.6), "WBC.AX": result(-0.6)}, 0.25, label_for)
    assert split["dispersion"] == pytest.approx(0.6)
    assert split["consensus"] == "mixed"
    empty = big4_view({"CBA.AX": result(0.0, 0.0)}, 0.25, label_for)
    assert (empty["consensus"], empty["confidence"]) == ("neutral", 0.0)
