"""From stored mentions to one sentiment per symbol, for the Big 4 and for the market.

An article's weight is source quality x recency decay x relevance:

- source quality: ``source_weights[publisher domain]`` (or ``default_source_weight``);
- recency: 0.5 ** (age in hours / ``half_life_hours``);
- relevance: the provider's entity match score, or how prominently the aliases appear.

The symbol's score is the weighted mean of its articles' scores. Confidence is volume times
agreement: volume is 1 - exp(-n / ``confidence_articles``) over the effective number of articles
n = (sum w)^2 / sum w^2 (ten equal articles count as ten, one dominant article as about one);
agreement is the share of the weight whose article label matches the overall label.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from services.base.clock import utc_iso
from services.sentiment.store import MentionRow

TOP_HEADLINES = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Weighting:
    half_life_hours: float
    source_weights: Mapping[str, float]
    default_source_weight: float
    prefer_provider_sentiment: bool
    confidence_articles: float
    window: timedelta


@dataclass(frozen=True, slots=True)
class Scored:
    """One article as it counts for a scope."""

    row: MentionRow
    score: float
    weight: float


def article_score(row: MentionRow, prefer_provider: bool) -> float:
    if prefer_provider and row.provider_score is not None:
        return max(-1.0, min(1.0, row.provider_score))
    return row.text_score


def source_quality(source: str, weighting: Weighting) -> float:
    """The weight of ``source`` or of the nearest parent domain configured (news.abc.net.au -> abc.net.au)."""
    parts = source.split(".")
    for start in range(len(parts) - 1):
        weight = weighting.source_weights.get(".".join(parts[start:]))
        if weight is not None:
            return weight
    return weighting.default_source_weight


def weigh(rows: Iterable[MentionRow], now: datetime, weighting: Weighting) -> list[Scored]:
    scored = []
    for row in rows:
        age_hours = max(0.0, (now - row.published_at).total_seconds() / 3600)
        decay = 0.5 ** (age_hours / weighting.half_life_hours)
        weight = source_quality(row.source, weighting) * decay * row.relevance
        scored.append(Scored(row, article_score(row, weighting.prefer_provider_sentiment), weight))
    return scored


def per_article(rows: Iterable[MentionRow]) -> list[MentionRow]:
    """One row per article: an article about several symbols counts once for the market, with the
    relevance-weighted mean of its scores and its highest relevance."""
    by_article: dict[int, list[MentionRow]] = {}
    for row in rows:
        by_article.setdefault(row.article_id, []).append(row)
    merged = []
    for group in by_article.values():
        if len(group) == 1:
            merged.append(group[0])
            continue
        total = sum(row.relevance for row in group) or 1.0
        provider = [row for row in group if row.provider_score is not None]
        provider_score = (
            sum(row.provider_score * row.relevance for row in provider if row.provider_score is not None)
            / (sum(row.relevance for row in provider) or 1.0)
            if provider
            else None
        )
        first = group[0]
        merged.append(
            MentionRow(
                article_id=first.article_id,
                symbol="*",
                relevance=max(row.relevance for row in group),
                provider_score=provider_score,
                text_score=sum(row.text_score * row.relevance for row in group) / total,
                title=first.title,
                url=first.url,
                source=first.source,
                provider=first.provider,
                published_at=first.published_at,
            )
        )
    return merged


def summarize(
    rows: Sequence[MentionRow], now: datetime, weighting: Weighting, label_for: Callable[[float], str]
) -> dict[str, Any]:
    """Score, label, confidence, volume and the strongest headlines of ``rows`` (one scope)."""
    volume = {
        "24h": sum(1 for row in rows if now - row.published_at <= timedelta(hours=24)),
        "7d": sum(1 for row in rows if now - row.published_at <= timedelta(days=7)),
    }
    counted = weigh((row for row in rows if now - row.published_at <= weighting.window), now, weighting)
    total = sum(item.weight for item in counted)
    if not counted or total <= 0:
        return {
            "score": 0.0,
            "label": "neutral",
            "confidence": 0.0,
            "agreement": 0.0,
            "effective_articles": 0.0,
            "article_count": len(counted),
            "news_volume": volume,
            "top_positive": [],
            "top_negative": [],
        }
    score = sum(item.score * item.weight for item in counted) / total
    label = label_for(score)
    effective = total**2 / sum(item.weight**2 for item in counted)
    agreement = sum(item.weight for item in counted if label_for(item.score) == label) / total
    volume_factor = 1 - math.exp(-effective / weighting.confidence_articles)
    ranked = sorted(counted, key=lambda item: item.score)
    return {
        "score": round(score, 4),
        "label": label,
        "confidence": round(volume_factor * agreement, 4),
        "agreement": round(agreement, 4),
        "effective_articles": round(effective, 2),
        "article_count": len(counted),
        "news_volume": volume,
        "top_positive": [_headline(item) for item in reversed(ranked[-TOP_HEADLINES:]) if item.score > 0],
        "top_negative": [_headline(item) for item in ranked[:TOP_HEADLINES] if item.score < 0],
    }


def big4_view(
    results: Mapping[str, Mapping[str, Any]], max_dispersion: float, label_for: Callable[[float], str]
) -> dict[str, Any]:
    """Mean, dispersion and consensus of the banks that have news (confidence above zero)."""
    informed = {symbol: result for symbol, result in results.items() if result["confidence"] > 0}
    labels = {symbol: result["label"] for symbol, result in results.items()}
    counts = {
        label: sum(1 for value in labels.values() if value == label)
        for label in ("positive", "neutral", "negative")
    }
    if not informed:
        return {
            "mean_score": 0.0,
            "dispersion": 0.0,
            "consensus": "neutral",
            "confidence": 0.0,
            "informed_symbols": 0,
            "label_counts": counts,
        }
    scores = [result["score"] for result in informed.values()]
    mean = statistics.fmean(scores)
    dispersion = statistics.pstdev(scores) if len(scores) > 1 else 0.0
    consensus = label_for(mean) if dispersion <= max_dispersion else "mixed"
    # Banks without news pull the confidence down: the view covers fewer of them.
    confidence = sum(result["confidence"] for result in informed.values()) / len(results)
    return {
        "mean_score": round(mean, 4),
        "dispersion": round(dispersion, 4),
        "consensus": consensus,
        "confidence": round(confidence, 4),
        "informed_symbols": len(informed),
        "label_counts": counts,
    }


def _headline(item: Scored) -> dict[str, Any]:
    row = item.row
    return {
        "title": row.title,
        "score": round(item.score, 4),
        "weight": round(item.weight, 4),
        "source": row.source,
        "url": row.url,
        "published_at": utc_iso(row.published_at),
    }
