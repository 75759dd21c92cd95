"""The sentiment service: news from MarketAux and RSS feeds, scored, stored and aggregated.

A request for a symbol's sentiment answers from a cache (``cache_ttl_s``). Past it, the sources
are asked for news (each within its own limits: MarketAux's quota and interval, the feeds'
interval), new articles are scored and stored, and the result is computed from every stored
article in the window. When no source can answer, the last stored result is returned marked
stale with its age and the reason; with none stored, a neutral score with zero confidence and
``source: "none"``. Nothing is ever made up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import httpx

from services.base.clock import utc_iso
from services.base.config import Settings, load_secret
from services.base.db import migrate
from services.base.errors import InvalidParams
from services.base.events import EventType
from services.base.logs import RootLogRedaction
from services.base.rpc import rpc_method
from services.base.service import BaseService, Check, ServiceState
from services.base.symbols import configured_symbol
from services.sentiment.aggregate import Weighting, big4_view, per_article, summarize
from services.sentiment.articles import AliasMatcher, Article
from services.sentiment.config import SentimentConfig
from services.sentiment.marketaux import MarketAuxSource
from services.sentiment.rss import RssSource
from services.sentiment.schema import MIGRATIONS
from services.sentiment.scoring import SentimentScorer
from services.sentiment.sources import USABLE, FetchOutcome
from services.sentiment.store import NewsStore, ScoredArticle

log = logging.getLogger("services.sentiment")

T = TypeVar("T")

MARKET = "market"
MAX_TEXT = 20_000
MAX_NEWS = 200
# News volume is reported over 24 hours and 7 days whatever the weighting window.
VOLUME_DAYS = 7
CURSOR_OVERLAP = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Cached:
    computed_at: datetime
    payload: dict[str, Any]


class SentimentService(BaseService):
    name = "sentiment"
    uses_database = True

    def __init__(
        self,
        settings: Settings,
        *,
        scorer: SentimentScorer | None = None,
        marketaux_transport: httpx.AsyncBaseTransport | None = None,
        rss_transport: httpx.AsyncBaseTransport | None = None,
        env: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(settings, **kwargs)
        self.config = settings.section("sentiment", SentimentConfig)
        self.scorer = scorer or SentimentScorer()
        self._marketaux_transport = marketaux_transport
        self._rss_transport = rss_transport
        self._env = env
        self.weighting = Weighting(
            half_life_hours=self.config.half_life_hours,
            source_weights=self.config.source_weights,
            default_source_weight=self.config.default_source_weight,
            prefer_provider_sentiment=self.config.prefer_provider_sentiment,
            confidence_articles=self.config.confidence_articles,
            window=timedelta(days=self.config.window_days),
        )
        # Fresh results by scope (a symbol or "market"), served until cache_ttl_s has passed.
        self._cache: dict[str, Cached] = {}
        # The last result computed per scope, kept in the database too: the stale fallback.
        self._last: dict[str, Cached] = {}
        # Work in progress by key, shared by every caller that wants the same thing.
        self._in_flight: dict[str, asyncio.Task[Any]] = {}
        # When MarketAux last answered for a scope: it is not asked again within min_interval_s.
        self._marketaux_answered: dict[str, datetime] = {}
        # The newest publication time MarketAux has returned per scope: the next request starts there.
        self._marketaux_newest: dict[str, datetime] = {}
        self._articles_stored = 0
        self._newest_article: datetime | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def _start(self) -> None:
        assert self.db is not None
        await self.db.run(lambda conn: migrate(conn, MIGRATIONS))
        self.store = NewsStore(
            self.db,
            title_similarity=self.config.duplicate_title_similarity,
            market_symbol=self.config.market_symbol,
        )
        # httpx logs every request URL at INFO, and MarketAux's carries the token.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        token = load_secret(
            "marketaux_api_token",
            env_var="MARKETAUX_API_TOKEN",
            home=self.home,
            env=self._env,
            redact=RootLogRedaction(),
        )
        self.marketaux = MarketAuxSource(
            self.config.marketaux,
            token,
            self.store,
            self.clock.now,
            transport=self._marketaux_transport,
            sleep=self.clock.sleep,
        )
        await self.marketaux.load_usage()
        self.rss = RssSource(
            self.config.rss,
            AliasMatcher(self.config.aliases),
            AliasMatcher({self.config.market_symbol: self.config.market_aliases}),
            self.clock.now,
            transport=self._rss_transport,
        )
        self._last = {
            scope: Cached(at, payload) for scope, (at, payload) in (await self.store.load_results()).items()
        }
        self._articles_stored, self._newest_article = await self.store.summary()
        log.info(
            "news sources: marketaux %s, rss %s; %d articles stored",
            self.marketaux.health.status,
            self.rss.health.status,
            self._articles_stored,
        )
        self.spawn(self._prune_daily(), name="sentiment:prune", on_clock=True)

    async def _stop(self) -> None:
        in_flight = list(self._in_flight.values())
        for task in in_flight:
            task.cancel()
        # Their last database writes finish before the clients close under them.
        await asyncio.gather(*in_flight, return_exceptions=True)
        await self.marketaux.aclose()
        await self.rss.aclose()

    async def _prune_daily(self) -> None:
        while True:
            try:
                removed = await self.store.prune(self.clock.now() - timedelta(days=self.config.keep_days))
                if removed:
                    log.info("pruned %d articles older than %d days", removed, self.config.keep_days)
                    self._articles_stored, self._newest_article = await self.store.summary()
            except sqlite3.Error as exc:  # tried again tomorrow
                log.error("pruning old articles failed: %s", exc)
            await self.clock.sleep(86400)

    # -- RPC ------------------------------------------------------------------------------

    @rpc_method(idempotent=True)
    async def analyze_sentiment(self, symbol: str) -> dict[str, Any]:
        """News sentiment for ``symbol``: score -1..1, label, confidence 0..1, news volume, the
        strongest headlines, which sources answered; stale (with its age) when none could."""
        return await self._symbol_result(self._symbol(symbol), force=False)

    @rpc_method(idempotent=True)
    async def get_big4_sentiment(self) -> dict[str, Any]:
        """The Big 4 banks: each one's result, their mean, dispersion and consensus label."""
        symbols = self.config.big4
        results = await asyncio.gather(*(self._symbol_result(s, force=False) for s in symbols))
        return self._big4(dict(zip(symbols, results, strict=True)))

    @rpc_method(idempotent=True)
    async def get_market_sentiment(self) -> dict[str, Any]:
        """Sentiment across every configured symbol plus general market news (each article once)."""
        return await self._market_result(force=False)

    @rpc_method(idempotent=True)
    async def refresh_sentiment_cache(self) -> dict[str, Any]:
        """Ask the sources for news now (within their limits) and recompute every result."""
        before = self.marketaux.calls_today
        symbols = self.config.symbols
        results = await asyncio.gather(*(self._symbol_result(s, force=True) for s in symbols))
        by_symbol = dict(zip(symbols, results, strict=True))
        market = await self._market_result(force=True)
        big4 = self._big4({s: by_symbol[s] for s in self.config.big4})
        return {
            "symbols": {symbol: _brief(result) for symbol, result in by_symbol.items()},
            "big4": {key: value for key, value in big4.items() if key != "symbols"},
            "market": _brief(market),
            "marketaux_requests": self.marketaux.calls_today - before,
            "sources": self._sources_wire(),
        }

    @rpc_method(idempotent=True)
    async def get_news(self, symbol: str, limit: int = 20) -> dict[str, Any]:
        """Stored articles about ``symbol`` (or the market symbol), newest first, with their scores."""
        scope = self._symbol(symbol, allow_market=True)
        if not 1 <= limit <= MAX_NEWS:
            raise InvalidParams(f"limit must be between 1 and {MAX_NEWS}", field="limit")
        articles = await self.store.news(scope, limit)
        return {"symbol": scope, "count": len(articles), "articles": articles}

    @rpc_method(idempotent=True)
    async def score_text(self, text: str) -> dict[str, Any]:
        """Our scorer on ``text``: score -1..1, label, plain VADER's score and the rules that fired."""
        if len(text) > MAX_TEXT:
            raise InvalidParams(f"text is longer than {MAX_TEXT} characters", field="text")
        # On a worker thread: a long text takes tens of milliseconds, which other calls would wait.
        scored = await asyncio.to_thread(self.scorer.score, text)
        return {
            "score": scored.score,
            "label": scored.label,
            "vader": scored.vader,
            "matches": list(scored.matches),
        }

    # -- results --------------------------------------------------------------------------

    async def _symbol_result(self, symbol: str, *, force: bool) -> dict[str, Any]:
        cached = self._fresh(symbol)
        if cached is not None and not force:
            return cached
        return await self._once(f"result:{symbol}", lambda: self._compute_symbol(symbol))

    async def _market_result(self, *, force: bool) -> dict[str, Any]:
        cached = self._fresh(MARKET)
        if cached is not None and not force:
            return cached
        return await self._once(f"result:{MARKET}", self._compute_market)

    def _fresh(self, scope: str) -> dict[str, Any] | None:
        cached = self._cache.get(scope)
        if cached is None:
            return None
        age = (self.clock.now() - cached.computed_at).total_seconds()
        if age >= self.config.cache_ttl_s:
            return None
        return {**cached.payload, "cached": True, "age_s": round(age, 3)}

    async def _compute_symbol(self, symbol: str) -> dict[str, Any]:
        outcomes = await asyncio.gather(self._marketaux_news(symbol), self._rss_news())
        return await self._conclude(symbol, {"symbol": symbol}, [symbol], outcomes)

    async def _compute_market(self) -> dict[str, Any]:
        symbols = self.config.symbols
        # Cached symbol results serve (refresh_sentiment_cache has just recomputed them).
        results = await asyncio.gather(*(self._symbol_result(s, force=False) for s in symbols))
        outcomes = await asyncio.gather(self._marketaux_market_news(), self._rss_news())
        # A source that just answered for the symbols counts as answering for the market: the
        # market result covers their news.
        for_symbols = {
            provider
            for result in results
            if not result["stale"] and result["source"] != "none"
            for provider in result["source"].split("+")
        }
        answered = [FetchOutcome(p, True, "answered for the symbols") for p in sorted(for_symbols)]
        head = {"scope": MARKET, "symbols": list(symbols)}
        return await self._conclude(MARKET, head, self.config.scopes, [*answered, *outcomes])

    async def _conclude(
        self, scope: str, head: dict[str, Any], keys: Sequence[str], outcomes: Sequence[FetchOutcome]
    ) -> dict[str, Any]:
        """The result for ``scope`` from the articles stored under ``keys``, once a source answered."""
        now = self.clock.now()
        answered = sorted({o.provider for o in outcomes if o.answered})
        # One detail per provider; a later outcome (the scope's own request) wins.
        details = {o.provider: o.detail for o in outcomes}
        if not answered:
            return self._unavailable(scope, head, details, now)
        rows = await self.store.mentions_since(keys, self._volume_since())
        if len(keys) > 1:
            rows = per_article(rows)  # an article about several symbols counts once
        summary = summarize(rows, now, self.weighting, self.scorer.label_for)
        reason = None
        if summary["article_count"] == 0:
            reason = f"no articles in the last {self.config.window_days} days"
        payload = self._payload(head, summary, "+".join(answered), details, now, reason)
        self._cache[scope] = self._last[scope] = Cached(now, payload)
        await self.store.save_result(scope, now, payload)
        await self.bus.publish(
            EventType.SENTIMENT_UPDATED,
            {key: payload[key] for key in ("score", "label", "confidence", "article_count", "source")}
            | {"scope": scope, "symbol": head.get("symbol"), "stale": False},
        )
        self.stats.incr("results.computed")
        return payload

    def _unavailable(
        self, scope: str, head: dict[str, Any], details: dict[str, str], now: datetime
    ) -> dict[str, Any]:
        reason = "no news source could answer: " + "; ".join(f"{p}: {d}" for p, d in details.items())
        self.stats.incr("results.unavailable")
        last = self._last.get(scope)
        if last is not None:
            age = (now - last.computed_at).total_seconds()
            return {**last.payload, "stale": True, "age_s": round(age, 3), "cached": False, "reason": reason}
        # No articles: the same zero score and confidence as an empty window, from the one summary.
        nothing = summarize([], now, self.weighting, self.scorer.label_for)
        return self._payload(head, nothing, "none", details, now, reason)

    def _payload(
        self,
        head: dict[str, Any],
        summary: dict[str, Any],
        source: str,
        details: dict[str, str],
        now: datetime,
        reason: str | None,
    ) -> dict[str, Any]:
        return {
            **head,
            **summary,
            "source": source,
            "sources": details,
            "computed_at": utc_iso(now),
            "stale": False,
            "age_s": 0.0,
            "cached": False,
            "reason": reason,
        }

    def _big4(self, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        view = big4_view(results, self.config.consensus_max_dispersion, self.scorer.label_for)
        sources = sorted({part for r in results.values() for part in r["source"].split("+")} - {"none"})
        stale = [symbol for symbol, result in results.items() if result["stale"]]
        return {
            "symbols": {symbol: _brief(result) for symbol, result in results.items()},
            **view,
            "source": "+".join(sources) or "none",
            "stale_symbols": stale,
            "computed_at": utc_iso(self.clock.now()),
        }

    # -- sources --------------------------------------------------------------------------

    async def _marketaux_news(self, symbol: str) -> FetchOutcome:
        return await self._once(
            f"marketaux:{symbol}",
            lambda: self._ask_marketaux(symbol, lambda since: self.marketaux.fetch_symbol(symbol, since)),
        )

    async def _marketaux_market_news(self) -> FetchOutcome:
        if not self.config.marketaux.market_query:
            return FetchOutcome("marketaux", False, "no market query configured (marketaux.market_query)")
        symbols, market = self.config.symbols, self.config.market_symbol
        return await self._once(
            "marketaux:market",
            lambda: self._ask_marketaux(
                market, lambda since: self.marketaux.fetch_market(market, symbols, since)
            ),
        )

    async def _ask_marketaux(
        self, scope: str, fetch: Callable[[datetime], Awaitable[FetchOutcome]]
    ) -> FetchOutcome:
        now = self.clock.now()
        last = self._marketaux_answered.get(scope)
        if last is not None and (now - last).total_seconds() < self.config.marketaux.min_interval_s:
            minutes = (now - last).total_seconds() / 60
            return FetchOutcome("marketaux", True, f"asked {minutes:.0f} min ago, not asked again yet")
        lookback = now - timedelta(hours=self.config.marketaux.lookback_hours)
        newest = self._marketaux_newest.get(scope) or await self.store.newest_published("marketaux", scope)
        # An hour of overlap: MarketAux indexes some articles after later ones (copies are dropped).
        since = max(lookback, min(newest, now) - CURSOR_OVERLAP) if newest else lookback
        outcome = await fetch(since)
        if outcome.answered:
            self._marketaux_answered[scope] = self.clock.now()
            if outcome.articles:
                # Kept here too: a copy another source stored first is not credited to MarketAux.
                latest = min(max(article.published_at for article in outcome.articles), now)
                self._marketaux_newest[scope] = max(latest, newest) if newest else latest
            await self._save(outcome.articles)
        return outcome

    async def _rss_news(self) -> FetchOutcome:
        return await self._once("rss", self._ask_rss)

    async def _ask_rss(self) -> FetchOutcome:
        outcome = await self.rss.fetch()
        if outcome.articles:
            await self._save(outcome.articles)
        return outcome

    async def _save(self, articles: list[Article]) -> None:
        if not articles:
            return
        now = self.clock.now()
        # A date in the future is a source's mistake: it would outweigh everything and never age.
        articles = [
            a if a.published_at <= now else dataclasses.replace(a, published_at=now) for a in articles
        ]
        scored = await asyncio.to_thread(self._score_all, articles)
        result = await self.store.save(scored, now)
        self.stats.incr("articles.new", result.new)
        self.stats.incr("articles.duplicate", result.duplicates)
        self._articles_stored += result.new
        if result.newest is not None and (
            self._newest_article is None or result.newest > self._newest_article
        ):
            self._newest_article = result.newest

    def _score_all(self, articles: list[Article]) -> list[ScoredArticle]:
        scored = []
        for article in articles:
            text = self.scorer.score(article.text)
            scored.append(ScoredArticle(article, text.score, text.matches))
        return scored

    async def _once(self, key: str, make: Callable[[], Awaitable[T]]) -> T:
        """Run ``make()`` once for every caller that asks for ``key`` meanwhile. Shielded: a caller
        that gives up (a client timeout) does not cancel it for the others."""
        task = self._in_flight.get(key)
        if task is None or task.done():
            task = asyncio.ensure_future(make())
            self._in_flight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        result: T = await asyncio.shield(task)
        return result

    def _forget(self, key: str, task: asyncio.Task[Any]) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("sentiment %s failed: %s", key, task.exception(), exc_info=task.exception())

    # -- helpers --------------------------------------------------------------------------

    def _symbol(self, symbol: str, *, allow_market: bool = False) -> str:
        allowed = self.config.scopes if allow_market else self.config.symbols
        return configured_symbol(symbol, allowed, setting="sentiment.symbols")

    def _volume_since(self) -> datetime:
        return self.clock.now() - timedelta(days=max(self.config.window_days, VOLUME_DAYS))

    def _sources_wire(self) -> dict[str, Any]:
        return {
            "marketaux": {
                **self.marketaux.health.to_wire(),
                "calls_today": self.marketaux.calls_today,
                "calls_left": self.marketaux.calls_left,
                "daily_quota": self.config.marketaux.daily_quota,
            },
            "rss": {**self.rss.health.to_wire(), "feeds": self.rss.to_wire()},
        }

    # -- health ---------------------------------------------------------------------------

    def health_checks(self) -> dict[str, Check]:
        checks = super().health_checks()
        if self.state is not ServiceState.RUNNING:
            return checks
        marketaux_reason = self.marketaux.unavailable()
        states = {
            "marketaux": (
                "unavailable" if marketaux_reason else self.marketaux.health.status,
                marketaux_reason or self.marketaux.health.detail,
            ),
            "rss": (self.rss.health.status, self.rss.health.detail),
        }
        usable = [name for name, (status, _) in states.items() if status in USABLE]
        detail = "; ".join(f"{name}: {status} ({text})" for name, (status, text) in states.items())
        checks["news_sources"] = {"status": "ok" if usable else "degraded", "detail": detail}
        return checks

    def health_figures(self) -> dict[str, Any]:
        if self.state is not ServiceState.RUNNING:
            return {}
        age = (
            round((self.clock.now() - self._newest_article).total_seconds(), 1)
            if self._newest_article is not None
            else None
        )
        return {
            "sources": self._sources_wire(),
            "calls_left_today": self.marketaux.calls_left,
            "newest_article_age_s": age,
            "articles_stored": self._articles_stored,
            "cache_size": len(self._cache),
        }


def _brief(result: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("score", "label", "confidence", "article_count", "source", "stale", "age_s", "reason")
    return {key: result.get(key) for key in keys}
