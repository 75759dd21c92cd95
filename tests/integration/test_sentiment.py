"""The sentiment service over its socket, with real Redis and SQLite; MarketAux and the feeds are
recorded answers behind httpx transports (the real clients run above them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
import pytest
import redis.asyncio as aioredis

from services.base.clock import SimulatedClock
from services.base.config import TradingHome, load_settings
from services.base.errors import InvalidParams
from services.base.redis_server import EmbeddedRedis
from services.base.rpc.client import RpcClient
from services.sentiment.sentiment_service import SentimentService
from tests.conftest import eventually
from tests.sentiment_fakes import FEED_URL, TOKEN, FakeFeeds, FakeMarketAux

NOW = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)  # Friday 11:00 in Sydney
# The record-profit story: MarketAux has it at 22:30 UTC, the feed at 22:45 UTC on the 19th.
RECORD_PROFIT_AGE_S = 90 * 60
RECORD_PROFIT_RSS_AGE_S = 75 * 60
CONFIG = f"""
[sentiment.rss]
feeds = ["{FEED_URL}"]
"""


@dataclass
class Stack:
    home: TradingHome
    redis: EmbeddedRedis
    clock: SimulatedClock = field(default_factory=lambda: SimulatedClock(NOW))
    marketaux: FakeMarketAux = field(default_factory=FakeMarketAux)
    feeds: FakeFeeds = field(default_factory=FakeFeeds)
    service: SentimentService | None = None

    async def start(self, config: str = CONFIG, token: str | None = TOKEN) -> SentimentService:
        self.home.config_file.write_text(config)
        settings = load_settings(self.home, env={"REDIS_URL": self.redis.url})
        self.service = SentimentService(
            settings,
            clock=self.clock,
            marketaux_transport=self.marketaux.transport,
            rss_transport=self.feeds.transport,
            env={"MARKETAUX_API_TOKEN": token} if token else {},
        )
        await self.service.start()
        return self.service

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
            self.service = None

    def client(self) -> RpcClient:
        return RpcClient(self.home.socket_path("sentiment"), timeout=10)


@pytest.fixture
async def stack(home: TradingHome, redis: EmbeddedRedis) -> AsyncIterator[Stack]:
    stack = Stack(home, redis)
    yield stack
    await stack.stop()


async def test_symbol_sentiment_from_both_sources_stored_once_and_published(stack: Stack) -> None:
    redis = aioredis.Redis.from_url(stack.redis.url)
    events = redis.pubsub()
    await events.subscribe("trading.sentiment_updated")
    await stack.start()
    async with stack.client() as client:
        cba = await client.call("analyze_sentiment", {"symbol": "cba.ax"})
        assert cba["symbol"] == "CBA.AX"
        assert cba["source"] == "marketaux+rss"
        assert cba["stale"] is False
        assert cba["cached"] is False
        # MarketAux gave three articles, the feed one more copy of the record-profit story.
        assert cba["article_count"] == 3
        assert cba["news_volume"] == {"24h": 2, "7d": 3}
        assert cba["label"] == "positive"
        assert 0 < cba["score"] < 1
        assert 0 < cba["confidence"] < 1
        assert cba["top_positive"][0]["title"].startswith("CBA posts record cash profit")
        assert cba["top_negative"][0]["title"].startswith("CommBank flags higher bad debts")
        news = await client.call("get_news", {"symbol": "CBA.AX", "limit": 10})
        assert news["count"] == 3
        titles = [item["title"] for item in news["articles"]]
        assert sum("record cash profit" in title for title in titles) == 1

        message = await _next_message(events)
        event = orjson.loads(message["data"])
        assert event["type"] == "sentiment_updated"
        assert event["data"]["symbol"] == "CBA.AX"
        assert event["data"]["score"] == cba["score"]

        # Within the cache lifetime: the same answer, no new requests.
        requests = len(stack.marketaux.requests)
        again = await client.call("analyze_sentiment", {"symbol": "CBA.AX"})
        assert again["cached"] is True
        assert again["score"] == cba["score"]
        assert len(stack.marketaux.requests) == requests
    await redis.aclose()


async def _next_message(events: aioredis.client.PubSub) -> dict[str, object]:
    found: dict[str, object] = {}

    async def arrived() -> bool:
        message = await events.get_message(ignore_subscribe_messages=True, timeout=0.05)
        if message is not None:
            found.update(message)
        return bool(found)

    await eventually(arrived)
    return found


async def test_big4_and_market_views(stack: Stack) -> None:
    await stack.start()
    async with stack.client() as client:
        big4 = await client.call("get_big4_sentiment")
        assert set(big4["symbols"]) == {"CBA.AX", "WBC.AX", "ANZ.AX", "NAB.AX"}
        # Westpac: a dividend cut; ANZ: an upgrade; CBA: a record profit, and bad debts.
        assert big4["symbols"]["WBC.AX"]["label"] == "negative"
        assert big4["symbols"]["ANZ.AX"]["label"] == "positive"
        assert big4["symbols"]["CBA.AX"]["label"] == "positive"
        # NAB: a remediation charge against a steady dividend: neutral, and no article agrees.
        assert big4["symbols"]["NAB.AX"]["label"] == "neutral"
        assert big4["symbols"]["NAB.AX"]["confidence"] == 0.0
        assert big4["informed_symbols"] == 3
        assert big4["label_counts"] == {"positive": 2, "neutral": 1, "negative": 1}
        assert big4["consensus"] == "mixed"
        assert big4["dispersion"] > 0.25
        assert big4["source"] == "marketaux+rss"

        market = await client.call("get_market_sentiment")
        assert market["scope"] == "market"
        assert market["source"] == "marketaux+rss"
        # Every bank's articles and the general market news, each article once.
        stored = {
            item["url"]
            for s in ("CBA.AX", "WBC.AX", "ANZ.AX", "NAB.AX", "^AXJO")
            for item in (await client.call("get_news", {"symbol": s, "limit": 50}))["articles"]
        }
        assert market["article_count"] == len(stored)
        assert market["news_volume"]["7d"] == len(stored)
        market_news = await client.call("get_news", {"symbol": "^AXJO"})
        assert {item["title"] for item in market_news["articles"]} >= {
            "RBA holds cash rate, signals patience on inflation",
            "ASX closes higher as banks rally; ANZ shares gain after upgrade",
        }


async def test_refresh_respects_the_marketaux_interval_and_reports_sources(stack: Stack) -> None:
    await stack.start()
    async with stack.client() as client:
        first = await client.call("refresh_sentiment_cache")
        # One request per symbol and one for the market.
        assert first["marketaux_requests"] == 5
        assert set(first["symbols"]) == {"CBA.AX", "WBC.AX", "ANZ.AX", "NAB.AX"}
        assert first["market"]["source"] == "marketaux+rss"
        assert first["sources"]["marketaux"]["calls_left"] == 95
        await stack.clock.advance(600)
        second = await client.call("refresh_sentiment_cache")
        assert second["marketaux_requests"] == 0  # asked 10 minutes ago: not again
        assert second["symbols"]["CBA.AX"]["stale"] is False
        await stack.clock.advance(1800)
        third = await client.call("refresh_sentiment_cache")
        assert third["marketaux_requests"] == 5
        # The later request starts an hour before the newest article MarketAux gave (22:30).
        cba = [r for r in stack.marketaux.requests if r.get("symbols") == "CBA.AX"]
        assert cba[-1]["published_after"] == "2026-11-19T21:30:00"


async def test_without_any_source_the_answer_says_none_and_why(stack: Stack) -> None:
    stack.feeds = FakeFeeds({})  # every feed answers 404
    await stack.start(token=None)
    async with stack.client() as client:
        result = await client.call("analyze_sentiment", {"symbol": "WBC.AX"})
        assert result["source"] == "none"
        assert (result["score"], result["confidence"], result["article_count"]) == (0.0, 0.0, 0)
        assert "no MarketAux token" in result["reason"]
        assert "HTTP 404" in result["reason"]
        health = await client.call("health")
        assert health["status"] == "degraded"
        assert health["checks"]["news_sources"]["status"] == "degraded"
        assert health["sources"]["marketaux"]["status"] == "unconfigured"
        assert health["sources"]["rss"]["status"] == "failing"
        assert health["newest_article_age_s"] is None
        assert stack.marketaux.requests == []


async def test_stale_result_with_its_age_when_sources_fail_after_a_restart(stack: Stack) -> None:
    await stack.start()
    async with stack.client() as client:
        fresh = await client.call("analyze_sentiment", {"symbol": "CBA.AX"})
    await stack.stop()

    # Two hours later: MarketAux's quota is gone and the feed is down.
    await stack.clock.advance(7200)
    stack.marketaux.fail_next(402)
    stack.feeds = FakeFeeds({})
    await stack.start()
    async with stack.client() as client:
        stale = await client.call("analyze_sentiment", {"symbol": "CBA.AX"})
        assert stale["stale"] is True
        assert stale["age_s"] == pytest.approx(7200, abs=1)
        assert stale["score"] == fresh["score"]
        assert stale["computed_at"] == fresh["computed_at"]
        assert "usage limit is reached" in stale["reason"]
        health = await client.call("health")
        assert health["calls_left_today"] == 0
        assert health["sources"]["marketaux"]["status"] == "quota_exhausted"
        assert health["newest_article_age_s"] in {7200 + RECORD_PROFIT_AGE_S, 7200 + RECORD_PROFIT_RSS_AGE_S}


async def test_quota_survives_a_restart(stack: Stack) -> None:
    config = CONFIG + "\n[sentiment.marketaux]\ndaily_quota = 3\n"
    await stack.start(config)
    async with stack.client() as client:
        await client.call("refresh_sentiment_cache")
    assert len(stack.marketaux.requests) == 3
    await stack.stop()
    await stack.start(config)
    async with stack.client() as client:
        health = await client.call("health")
        assert health["calls_left_today"] == 0
        assert health["sources"]["marketaux"]["calls_today"] == 3
        await stack.clock.advance(3600)
        result = await client.call("analyze_sentiment", {"symbol": "NAB.AX"})
        assert result["source"] == "rss"
    assert len(stack.marketaux.requests) == 3


async def test_bad_requests_get_precise_errors(stack: Stack) -> None:
    await stack.start()
    async with stack.client() as client:
        with pytest.raises(InvalidParams) as unknown:
            await client.call("analyze_sentiment", {"symbol": "BHP.AX"})
        assert unknown.value.field == "symbol"
        assert "configured: CBA.AX, WBC.AX, ANZ.AX, NAB.AX" in unknown.value.message
        with pytest.raises(InvalidParams) as limit:
            await client.call("get_news", {"symbol": "CBA.AX", "limit": 0})
        assert limit.value.field == "limit"
        with pytest.raises(InvalidParams) as long_text:
            await client.call("score_text", {"text": "x" * 20_001})
        assert long_text.value.field == "text"
        with pytest.raises(InvalidParams) as wrong_type:
            await client.call("score_text", {"text": 42})
        assert wrong_type.value.field == "text"
        # The service is still answering.
        assert (await client.call("health"))["status"] == "ok"


async def test_score_text_explains_itself(stack: Stack) -> None:
    await stack.start()
    async with stack.client() as client:
        good = await client.call("score_text", {"text": "Westpac beat expectations with a record profit"})
        bad = await client.call("score_text", {"text": "Westpac issues profit warning as bad debts soar"})
        assert good["label"] == "positive"
        assert bad["label"] == "negative"
        assert good["matches"]
        assert -1 <= bad["score"] < 0 < good["score"] <= 1
        assert set(good) == {"score", "label", "vader", "matches"}


async def test_health_reports_sources_without_calling_them(stack: Stack) -> None:
    await stack.start()
    async with stack.client() as client:
        await client.call("analyze_sentiment", {"symbol": "CBA.AX"})
        requests = (len(stack.marketaux.requests), len(stack.feeds.requests))
        health = await client.call("health")
        assert (len(stack.marketaux.requests), len(stack.feeds.requests)) == requests
    assert health["status"] == "ok"
    assert health["calls_left_today"] == 99
    assert health["sources"]["marketaux"]["status"] == "ok"
    assert health["sources"]["rss"]["feeds"][0]["url"] == FEED_URL
    assert health["articles_stored"] == 5
    # The newest article: the record-profit story, in whichever copy was stored first.
    assert health["newest_article_age_s"] in {RECORD_PROFIT_AGE_S, RECORD_PROFIT_RSS_AGE_S}
    assert TOKEN not in orjson.dumps(health).decode()


async def test_redis_down_answers_go_on(stack: Stack) -> None:
    await stack.start()
    stack.redis.stop()
    async with stack.client() as client:
        result = await client.call("analyze_sentiment", {"symbol": "CBA.AX"})
        assert result["source"] == "marketaux+rss"
        health = await client.call("health")
        assert health["status"] == "degraded"
        assert health["checks"]["redis"]["status"] == "degraded"
