"""The news sources through their seams: MarketAux and RSS clients over recorded HTTP answers,
the quota kept in a real SQLite database, de-duplication and alias matching."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from services.base.clock import SimulatedClock
from services.base.config import Secret
from services.base.db import Database, migrate
from services.sentiment.articles import AliasMatcher, Article, Mention, same_story, title_key, url_key
from services.sentiment.config import DEFAULT_ALIASES, DEFAULT_MARKET_ALIASES, MarketAuxConfig, RssConfig
from services.sentiment.marketaux import MarketAuxSource
from services.sentiment.rss import RssSource
from services.sentiment.schema import MIGRATIONS
from services.sentiment.store import NewsStore, ScoredArticle
from tests.sentiment_fakes import FEED_URL, TOKEN, FakeFeeds, FakeMarketAux

NOW = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)  # Friday 11:00 in Sydney
SINCE = NOW - timedelta(hours=72)


async def no_sleep(_: float) -> None:
    return None


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[NewsStore]:
    db = Database(tmp_path / "sentiment.db")
    await db.run(lambda conn: migrate(conn, MIGRATIONS))
    yield NewsStore(db, title_similarity=0.9)
    db.close()


def marketaux(
    store: NewsStore, fake: FakeMarketAux, clock: SimulatedClock, token: str | None = TOKEN, **config: object
) -> MarketAuxSource:
    return MarketAuxSource(
        MarketAuxConfig(**config),  # type: ignore[arg-type]
        Secret(token) if token else None,
        store,
        clock.now,
        transport=fake.transport,
        sleep=no_sleep,
    )


# -- articles ---------------------------------------------------------------------------------


def test_url_key_ignores_tracking_scheme_www_and_trailing_slash() -> None:
    plain = url_key("https://www.reuters.com/business/cba-profit/")
    assert url_key("http://reuters.com/business/cba-profit?utm_source=x&utm_medium=api#top") == plain
    assert url_key("https://www.reuters.com/business/cba-profit?page=2") != plain


def test_near_identical_titles_are_the_same_story() -> None:
    a = title_key("CBA posts record cash profit of $10.2 billion as margins hold up")
    b = title_key("CBA posts record cash profit of $10.2bn as margins hold up")
    assert same_story(a, b, 0.9)
    assert same_story(title_key("Westpac cuts dividend"), title_key("WESTPAC CUTS DIVIDEND!"), 0.99)
    assert not same_story(a, title_key("CBA posts record loss as margins collapse"), 0.9)
    assert not same_story(a, "", 0.9)


def test_aliases_match_on_word_boundaries_and_acronyms_in_capitals_only() -> None:
    matcher = AliasMatcher(DEFAULT_ALIASES)
    assert matcher.hits("ANZ.AX", "ANZ shares gain after upgrade") == 1
    assert matcher.hits("ANZ.AX", "ANZAC Day trading hours") == 0
    assert matcher.hits("NAB.AX", "Shoppers nab bargains") == 0
    assert matcher.hits("NAB.AX", "NAB and National Australia Bank's board") == 2
    assert matcher.hits("WBC.AX", "shares in westpac fell") == 1
    assert matcher.hits("CBA.AX", "CommBank's app; Commonwealth Bank, CBA.") == 3
    assert matcher.relevance("CBA.AX", "CBA profit", "") == 1.0
    assert matcher.relevance("CBA.AX", "Bank profits", "CBA and CBA and CBA") == 1.0
    assert matcher.relevance("CBA.AX", "Bank profits", "only CBA") == 0.5
    assert matcher.relevance("CBA.AX", "Bank profits", "no one") == 0.0
    market = AliasMatcher({"^AXJO": DEFAULT_MARKET_ALIASES})
    assert market.hits("^AXJO", "The S&P/ASX 200 rose") == 1
    assert market.hits("^AXJO", "the ASX closed higher") == 1


async def test_store_keeps_one_copy_and_merges_mentions(store: NewsStore) -> None:
    published = NOW - timedelta(hours=2)
    first = Article(
        url="https://www.reuters.com/a?utm_source=x",
        title="CBA posts record cash profit of $10.2 billion",
        summary="",
        source="reuters.com",
        provider="marketaux",
        published_at=published,
        mentions=(Mention("CBA.AX", 0.8, 0.7),),
    )
    same_url = _copy(first, url="http://reuters.com/a/")
    retitled = _copy(first, url="https://abc.net.au/b", title="CBA posts record cash profit of $10.2bn")
    other_symbol = _copy(
        retitled, url="https://abc.net.au/c", provider="rss", mentions=(Mention("^AXJO", 0.5),)
    )
    items = [
        ScoredArticle(a, 0.5, ("lexicon: record profit",)) for a in (first, same_url, retitled, other_symbol)
    ]
    other_bank = _copy(first, url="https://abc.net.au/d", mentions=(Mention("NAB.AX", 1.0),))
    result = await store.save(items, NOW)
    assert (result.new, result.duplicates, result.mentions_added) == (1, 3, 1)
    # The same title about another bank only is another story.
    assert (await store.save([ScoredArticle(other_bank, 0.5, ())], NOW)).new == 1
    count, newest = await store.summary()
    assert (count, newest) == (2, published)
    rows = await store.mentions_since(["CBA.AX", "^AXJO"], NOW - timedelta(days=7))
    assert sorted(row.symbol for row in rows) == ["CBA.AX", "^AXJO"]
    assert [item["title"] for item in await store.news("NAB.AX", 10)] == [first.title]
    news = await store.news("CBA.AX", 10)
    assert news[0]["url"] == first.url
    assert news[0]["matches"] == ["lexicon: record profit"]
    # Old articles go, with their mentions.
    assert await store.prune(NOW) == 2
    assert await store.mentions_since(["CBA.AX", "^AXJO"], NOW - timedelta(days=7)) == []


def _fields(article: Article) -> dict[str, object]:
    return {name: getattr(article, name) for name in Article.__slots__}


def _copy(article: Article, **changes: object) -> Article:
    return Article(**{**_fields(article), **changes})  # type: ignore[arg-type]


# -- MarketAux --------------------------------------------------------------------------------


async def test_marketaux_request_and_parsed_articles(store: NewsStore) -> None:
    fake = FakeMarketAux()
    clock = SimulatedClock(NOW)
    source = marketaux(store, fake, clock)
    await source.load_usage()
    outcome = await source.fetch_symbol("CBA.AX", SINCE)
    assert outcome.answered
    assert outcome.requests == 1
    assert outcome.detail == "3 articles"
    assert fake.requests == [
        {
            "symbols": "CBA.AX",
            "filter_entities": "true",
            "language": "en",
            "published_after": "2026-11-17T00:00:00",
            "limit": "3",
            "api_token": TOKEN,
        }
    ]
    record = outcome.articles[0]
    assert record.source == "reuters.com"
    assert record.provider == "marketaux"
    assert record.published_at == datetime(2026, 11, 19, 22, 30, tzinfo=UTC)
    (mention,) = record.mentions
    assert mention.symbol == "CBA.AX"
    assert mention.relevance == 1.0  # match_score 62.41 is above full_match_score (50)
    assert mention.provider_score == pytest.approx(0.6908)
    assert mention.highlights[0].text.startswith("Commonwealth Bank of Australia reported")  # <em> gone
    assert outcome.articles[1].mentions[0].relevance == pytest.approx(31.07 / 50, abs=1e-4)
    assert source.calls_today == 1
    assert source.calls_left == 99
    assert source.health.status == "ok"


async def test_marketaux_skips_malformed_articles_and_uses_highlights_without_entity_score(
    store: NewsStore,
) -> None:
    source = marketaux(store, FakeMarketAux(), SimulatedClock(NOW))
    await source.load_usage()
    outcome = await source.fetch_symbol("NAB.AX", SINCE)
    assert outcome.detail == "2 articles, 1 malformed skipped"
    remediation = outcome.articles[0].mentions[0]
    # No sentiment_score on the entity: the mean of its highlights' sentiment.
    assert remediation.provider_score == pytest.approx((-0.3818 - 0.2023) / 2, abs=1e-4)


async def test_market_request_credits_the_market_and_configured_symbols(store: NewsStore) -> None:
    source = marketaux(store, FakeMarketAux(), SimulatedClock(NOW))
    await source.load_usage()
    outcome = await source.fetch_market("^AXJO", ("CBA.AX", "WBC.AX"), SINCE)
    slips, rba = outcome.articles
    assert [m.symbol for m in slips.mentions] == ["WBC.AX", "^AXJO"]
    assert slips.mentions[1].provider_score == pytest.approx((-0.3612 + 0.25) / 2, abs=1e-4)
    assert [m.symbol for m in rba.mentions] == ["^AXJO"]
    assert rba.mentions[0].provider_score is None


async def test_quota_is_counted_before_each_request_and_kept_across_restarts(store: NewsStore) -> None:
    fake = FakeMarketAux()
    clock = SimulatedClock(NOW)
    source = marketaux(store, fake, clock, daily_quota=2)
    await source.load_usage()
    assert (await source.fetch_symbol("CBA.AX", SINCE)).answered
    assert (await source.fetch_symbol("NAB.AX", SINCE)).answered
    spent = await source.fetch_symbol("WBC.AX", SINCE)
    assert not spent.answered
    assert "quota exhausted (2/2 requests used)" in spent.detail
    assert len(fake.requests) == 2
    # A new process the same day reads the count back and asks nothing.
    again = marketaux(store, fake, clock, daily_quota=2)
    await again.load_usage()
    assert again.calls_left == 0
    assert again.health.status == "quota_exhausted"
    assert not (await again.fetch_symbol("CBA.AX", SINCE)).answered
    assert len(fake.requests) == 2
    # The next UTC day starts a new count.
    await clock.advance(timedelta(days=1))
    assert again.calls_left == 2
    assert (await again.fetch_symbol("CBA.AX", SINCE)).answered


async def test_402_means_no_more_calls_today_even_after_a_restart(store: NewsStore) -> None:
    fake = FakeMarketAux()
    clock = SimulatedClock(NOW)
    source = marketaux(store, fake, clock)
    await source.load_usage()
    fake.fail_next(402)
    outcome = await source.fetch_symbol("CBA.AX", SINCE)
    assert not outcome.answered
    assert "usage limit is reached (HTTP 402 usage_limit_reached)" in outcome.detail
    assert "MarketAux says the plan's limit is reached" in source.health.detail
    assert source.health.status == "quota_exhausted"
    assert source.calls_left == 0
    assert not (await source.fetch_symbol("NAB.AX", SINCE)).answered
    assert len(fake.requests) == 1
    restarted = marketaux(store, fake, clock)
    await restarted.load_usage()
    assert restarted.unavailable() is not None
    assert restarted.calls_left == 0


async def test_429_backs_off_for_retry_after(store: NewsStore) -> None:
    fake = FakeMarketAux()
    clock = SimulatedClock(NOW)
    source = marketaux(store, fake, clock)
    await source.load_usage()
    fake.fail_next(429, headers={"Retry-After": "120"})
    outcome = await source.fetch_symbol("CBA.AX", SINCE)
    assert not outcome.answered
    assert "rate limit reached (HTTP 429 rate_limit_reached)" in outcome.detail
    assert source.health.status == "rate_limited"
    assert source.health.blocked_until == NOW + timedelta(seconds=120)
    blocked = await source.fetch_symbol("CBA.AX", SINCE)
    assert not blocked.answered
    assert "no requests until 00:02:00 UTC" in blocked.detail
    assert len(fake.requests) == 1
    await clock.advance(121)
    assert (await source.fetch_symbol("CBA.AX", SINCE)).answered


async def test_server_errors_and_timeouts_are_retried_then_reported_without_the_token(
    store: NewsStore,
) -> None:
    fake = FakeMarketAux()
    source = marketaux(store, fake, SimulatedClock(NOW), retries=2)
    await source.load_usage()
    fake.fail_next(503)
    fake.script.append(httpx.ConnectTimeout("timed out"))
    outcome = await source.fetch_symbol("CBA.AX", SINCE)
    assert outcome.answered
    # The 503 counts against the quota; the connect timeout never reached MarketAux and does not.
    assert outcome.requests == 2
    fake.script.extend(
        httpx.ConnectError(f"cannot reach https://api.marketaux.com/?api_token={TOKEN}") for _ in range(3)
    )
    failed = await source.fetch_symbol("CBA.AX", SINCE)
    assert not failed.answered
    assert failed.detail == "MarketAux unreachable after 3 attempts: ConnectError"
    assert TOKEN not in str(source.health.to_wire())
    assert source.calls_today == 2  # connection errors are given back
    assert await store.usage("marketaux", "2026-11-20") == (2, False)
    # After the failure, no request for failure_backoff_s.
    assert source.health.blocked_until == NOW + timedelta(seconds=300)
    assert source.unavailable() is not None


async def test_refused_token_and_bad_answers_are_reported(store: NewsStore) -> None:
    fake = FakeMarketAux()
    source = marketaux(store, fake, SimulatedClock(NOW), token="wrong-token")
    await source.load_usage()
    refused = await source.fetch_symbol("CBA.AX", SINCE)
    assert refused.detail == (
        "MarketAux refused the token (HTTP 401 invalid_api_token): An invalid API token was supplied."
    )
    assert source.health.status == "unauthorized"
    assert source.unavailable() is not None

    fine = marketaux(store, fake, SimulatedClock(NOW))
    await fine.load_usage()
    fake.script.append(httpx.Response(200, text="<html>maintenance</html>"))
    garbled = await fine.fetch_symbol("CBA.AX", SINCE)
    assert garbled.detail == "MarketAux answered with something that is not its news format"
    fake.script.append(httpx.Response(200, json={"meta": {}, "data": "nope"}))
    assert not (await fine.fetch_symbol("CBA.AX", SINCE)).answered


async def test_no_token_or_disabled_makes_no_request(store: NewsStore) -> None:
    fake = FakeMarketAux()
    source = marketaux(store, fake, SimulatedClock(NOW), token=None)
    await source.load_usage()
    outcome = await source.fetch_symbol("CBA.AX", SINCE)
    assert not outcome.answered
    assert "no MarketAux token" in outcome.detail
    assert source.health.status == "unconfigured"
    disabled = marketaux(store, fake, SimulatedClock(NOW), enabled=False)
    assert "disabled" in (await disabled.fetch_symbol("CBA.AX", SINCE)).detail
    assert fake.requests == []


async def test_usage_header_lower_than_our_count_wins(store: NewsStore) -> None:
    fake = FakeMarketAux()
    fake.headers = {"X-UsageLimit-Limit": "100", "X-UsageLimit-Remaining": "40"}
    source = marketaux(store, fake, SimulatedClock(NOW))
    await source.load_usage()
    await source.fetch_symbol("CBA.AX", SINCE)
    assert source.calls_today == 60
    assert source.calls_left == 40
    assert await store.usage("marketaux", "2026-11-20") == (60, False)


# -- RSS --------------------------------------------------------------------------------------


def rss(fake: FakeFeeds, clock: SimulatedClock, **config: object) -> RssSource:
    return RssSource(
        RssConfig(**{"feeds": (FEED_URL,), **config}),  # type: ignore[arg-type]
        AliasMatcher(DEFAULT_ALIASES),
        AliasMatcher({"^AXJO": DEFAULT_MARKET_ALIASES}),
        clock.now,
        transport=fake.transport,
    )


async def test_feed_entries_are_matched_to_symbols_and_the_market() -> None:
    source = rss(FakeFeeds(), SimulatedClock(NOW))
    outcome = await source.fetch()
    assert outcome.answered
    by_title = {a.title: {m.symbol: m.relevance for m in a.mentions} for a in outcome.articles}
    assert by_title == {
        "Westpac cuts dividend as bad debts climb": {"WBC.AX": 1.0},
        "CBA posts record cash profit of $10.2bn as margins hold up": {"CBA.AX": 1.0},
        "ASX closes higher as banks rally; ANZ shares gain after upgrade": {"ANZ.AX": 1.0, "^AXJO": 1.0},
    }
    westpac = outcome.articles[0]
    assert westpac.summary.startswith("Westpac has cut its final dividend after a jump in impairment charges")
    assert westpac.published_at == datetime(2026, 11, 19, 7, 10, tzinfo=UTC)
    assert westpac.source == "abc.net.au"
    # The undated NAB entry is left out rather than given a made-up date.
    assert "1 without a date left out" in source.feeds[0].health.detail


async def test_feeds_are_not_asked_again_within_the_interval_and_304_is_nothing_new() -> None:
    feeds = FakeFeeds()
    clock = SimulatedClock(NOW)
    source = rss(feeds, clock, min_interval_s=900)
    await source.fetch()
    recent = await source.fetch()
    assert recent.answered
    assert "fetched recently" in recent.detail
    assert len(feeds.requests) == 1
    await clock.advance(901)
    again = await source.fetch()
    assert feeds.requests[-1].headers["If-None-Match"]
    assert again.answered
    assert again.articles == []
    assert source.feeds[0].health.detail == "not modified"


async def test_failing_feeds_back_off_and_report_why() -> None:
    other = "https://feeds.example.com/broken.xml"
    feeds = FakeFeeds({FEED_URL: b"<html><body>Service unavailable</body></html>"})
    feeds.answers[other] = lambda request: httpx.Response(500, text="oops")
    clock = SimulatedClock(NOW)
    source = rss(feeds, clock, feeds=(FEED_URL, other), failure_backoff_s=300)
    outcome = await source.fetch()
    assert not outcome.answered
    assert f"{FEED_URL}: not a feed" in outcome.detail
    assert f"{other}: HTTP 500" in outcome.detail
    assert source.health.status == "failing"
    await source.fetch()
    assert len(feeds.requests) == 2  # backing off
    await clock.advance(301)
    await source.fetch()
    assert len(feeds.requests) == 4


async def test_oversized_and_unreachable_feeds_fail_cleanly() -> None:
    feeds = FakeFeeds({FEED_URL: b"<rss>" + b" " * 4096 + b"</rss>"})
    source = rss(feeds, SimulatedClock(NOW), max_feed_bytes=1024)
    outcome = await source.fetch()
    assert "larger than 1024 bytes" in outcome.detail

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    feeds = FakeFeeds()
    feeds.answers[FEED_URL] = unreachable
    outcome = await rss(feeds, SimulatedClock(NOW)).fetch()
    assert not outcome.answered
    assert "ConnectError: connection refused" in outcome.detail


def test_feed_config_rejects_non_http_urls() -> None:
    with pytest.raises(ValueError, match="is not an http"):
        RssConfig(feeds=("file:///etc/passwd",))


async def test_articles_with_fields_of_the_wrong_shape_are_skipped(store: NewsStore) -> None:
    fake = FakeMarketAux()
    bad = [
        {
            "url": "https://a.example/1",
            "title": "CBA one",
            "published_at": "2026-11-19T00:00:00Z",
            "entities": 5,
        },
        {
            "url": "https://a.example/2",
            "title": "CBA two",
            "published_at": "2026-11-19T00:00:00Z",
            "entities": [{"symbol": "CBA.AX", "highlights": 3}],
        },
        {"url": "https://a.example/3", "title": "CBA three", "published_at": "0001-01-01T00:00:00+05:00"},
        {"url": "https://a.example/4", "title": "CBA four", "published_at": "2026-11-19T01:00:00Z"},
    ]
    fake.script.append(httpx.Response(200, json={"meta": {}, "data": bad}))
    source = marketaux(store, fake, SimulatedClock(NOW))
    await source.load_usage()
    outcome = await source.fetch_symbol("CBA.AX", SINCE)
    assert outcome.answered
    assert outcome.detail == "1 articles, 3 malformed skipped"
    assert outcome.articles[0].title == "CBA four"
