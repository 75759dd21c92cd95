"""RSS and Atom feeds: fetched with httpx (conditional GET), parsed with feedparser, matched to
symbols by company aliases.

One fetch reads every configured feed concurrently. Each feed is asked at most once per
``min_interval_s`` and, after a failure, not again for ``failure_backoff_s``. Entries without a
publication date are left out: their age, and so their weight, would be a guess.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import feedparser
import httpx

from services.sentiment.articles import AliasMatcher, Article, Mention, plain_text, source_domain
from services.sentiment.config import RssConfig
from services.sentiment.sources import FetchOutcome, SourceHealth

log = logging.getLogger("services.sentiment.rss")

NAME = "rss"
SUMMARY_LIMIT = 2000


@dataclass(slots=True)
class FeedState:
    url: str
    health: SourceHealth = field(default_factory=SourceHealth)
    etag: str | None = None
    modified: str | None = None
    entries: int = 0


class _FeedFailed(Exception):
    pass


class RssSource:
    name = NAME

    def __init__(
        self,
        config: RssConfig,
        matcher: AliasMatcher,
        market_matcher: AliasMatcher,
        now: Callable[[], datetime],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self._matcher = matcher
        self._market = market_matcher
        self._now = now
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=config.timeout_s,
            follow_redirects=True,
            headers={"User-Agent": "asx-trading-services (RSS reader)"},
        )
        self.feeds = [FeedState(url) for url in config.feeds]

    @property
    def health(self) -> SourceHealth:
        """One state for all feeds: ok while any feed answers."""
        summary = SourceHealth()
        if not self.config.enabled or not self.feeds:
            summary.status, summary.detail = "disabled", "no RSS feeds configured"
            return summary
        states = [feed.health for feed in self.feeds]
        ok = [s for s in states if s.status == "ok"]
        failing = [s for s in states if s.status == "failing"]
        summary.last_success = max((s.last_success for s in states if s.last_success), default=None)
        errors = [s for s in states if s.last_error_at]
        if errors:
            newest = max(errors, key=lambda s: s.last_error_at or datetime.min.replace(tzinfo=UTC))
            summary.last_error, summary.last_error_at = newest.last_error, newest.last_error_at
        if ok:
            summary.status = "ok"
        elif failing and len(failing) == len(states):
            summary.status = "failing"
        summary.detail = f"{len(ok)} of {len(states)} feeds answering" + (
            f", {len(failing)} failing" if failing else ""
        )
        return summary

    def unavailable(self) -> str | None:
        if not self.config.enabled or not self.feeds:
            return "no RSS feeds configured"
        return None

    async def fetch(self) -> FetchOutcome:
        """Every feed that is due (not fetched within ``min_interval_s``, not backing off)."""
        reason = self.unavailable()
        if reason is not None:
            return FetchOutcome(NAME, False, reason)
        now = self._now()
        due = [feed for feed in self.feeds if self._due(feed, now)]
        fresh = [feed for feed in self.feeds if _recent(feed, now, self.config.min_interval_s)]
        results = await asyncio.gather(*(self._fetch_feed(feed) for feed in due))
        articles = [article for batch in results if batch is not None for article in batch]
        answered = [feed for feed, batch in zip(due, results, strict=True) if batch is not None]
        failed = [feed for feed in self.feeds if feed.health.status == "failing"]
        if answered or fresh:
            detail = f"{len(articles)} matching entries from {len(answered)} feeds"
            if fresh:
                detail += f" ({len(fresh)} fetched recently, not asked again)"
            if failed:
                detail += f"; {len(failed)} failing"
            return FetchOutcome(NAME, True, detail, articles, requests=len(due))
        errors = "; ".join(f"{feed.url}: {feed.health.last_error}" for feed in failed) or "no feed due"
        return FetchOutcome(NAME, False, f"no RSS feed answered: {errors}", requests=len(due))

    def _due(self, feed: FeedState, now: datetime) -> bool:
        if _recent(feed, now, self.config.min_interval_s):
            return False
        until = feed.health.blocked_until
        return until is None or now >= until

    async def _fetch_feed(self, feed: FeedState) -> list[Article] | None:
        try:
            body = await self._download(feed)
            if body is None:  # 304: nothing new
                feed.health.succeeded(self._now(), "not modified")
                return []
            parsed = await asyncio.to_thread(feedparser.parse, body)
            # feedparser reads almost anything; no entries and no recognised format is not a feed.
            if not parsed.entries and (parsed.get("bozo") or not parsed.get("version")):
                problem = parsed.get("bozo_exception")
                raise _FeedFailed("not a feed" + (f" ({type(problem).__name__})" if problem else ""))
        except _FeedFailed as exc:
            until = self._now() + timedelta(seconds=self.config.failure_backoff_s)
            feed.health.failed(self._now(), str(exc), until=until)
            log.warning("RSS %s: %s", feed.url, exc)
            return None
        articles: list[Article] = []
        undated = 0
        for entry in parsed.entries:
            stamp = entry.get("published_parsed") or entry.get("updated_parsed")
            if not stamp:
                undated += 1
                continue
            article = self._article(entry, datetime.fromtimestamp(calendar.timegm(stamp), UTC), feed.url)
            if article is not None:
                articles.append(article)
        feed.entries = len(parsed.entries)
        detail = f"{len(parsed.entries)} entries, {len(articles)} about watched symbols or the market"
        if undated:
            detail += f", {undated} without a date left out"
        feed.health.succeeded(self._now(), detail)
        return articles

    async def _download(self, feed: FeedState) -> bytes | None:
        headers = {}
        if feed.etag:
            headers["If-None-Match"] = feed.etag
        if feed.modified:
            headers["If-Modified-Since"] = feed.modified
        try:
            async with self._client.stream("GET", feed.url, headers=headers) as response:
                if response.status_code == 304:
                    return None
                if response.status_code != 200:
                    raise _FeedFailed(f"HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self.config.max_feed_bytes:
                        raise _FeedFailed(f"larger than {self.config.max_feed_bytes} bytes")
                feed.etag = response.headers.get("ETag")
                feed.modified = response.headers.get("Last-Modified")
                return bytes(body)
        except httpx.TimeoutException as exc:
            raise _FeedFailed(f"no answer within {self.config.timeout_s:g}s") from exc
        except httpx.HTTPError as exc:
            raise _FeedFailed(f"{type(exc).__name__}: {exc}"[:300]) from exc

    def _article(self, entry: Any, published: datetime, feed_url: str) -> Article | None:
        """The entry as an article, or None when it is about nothing watched."""
        title = plain_text(entry.get("title", ""))
        link = entry.get("link") or ""
        if not title or not link.startswith(("http://", "https://")):
            return None
        summary = plain_text(entry.get("summary", ""))[:SUMMARY_LIMIT]
        mentions = [
            Mention(symbol, relevance)
            for symbol in self._matcher.symbols
            if (relevance := self._matcher.relevance(symbol, title, summary)) > 0
        ]
        for market in self._market.symbols:
            relevance = self._market.relevance(market, title, summary)
            if relevance > 0:
                mentions.append(Mention(market, relevance))
        if not mentions:
            return None
        return Article(
            url=link,
            title=title,
            summary=summary,
            source=source_domain(link) or urlsplit(feed_url).netloc,
            provider=NAME,
            published_at=published,
            mentions=tuple(mentions),
        )

    def to_wire(self) -> list[dict[str, Any]]:
        return [{"url": feed.url, "entries": feed.entries, **feed.health.to_wire()} for feed in self.feeds]

    async def aclose(self) -> None:
        await self._client.aclose()


def _recent(feed: FeedState, now: datetime, interval: float) -> bool:
    last = feed.health.last_success
    return feed.health.status == "ok" and last is not None and (now - last).total_seconds() < interval
