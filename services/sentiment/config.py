"""The ``[sentiment]`` config section: news sources, company aliases, weighting and caching.

The MarketAux token is a secret: ``MARKETAUX_API_TOKEN`` in the environment, or
``marketaux_api_token`` in ``$TRADING_HOME/secrets.toml`` (mode 0600). Never in ``config.toml``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.base.config import register_section

BIG4 = ("CBA.AX", "WBC.AX", "ANZ.AX", "NAB.AX")

# Word-boundary aliases per symbol. An alias written all in capitals (an acronym such as NAB)
# matches only in capitals, so the verb "nab" is not National Australia Bank.
DEFAULT_ALIASES: dict[str, tuple[str, ...]] = {
    "CBA.AX": ("Commonwealth Bank", "CommBank", "CBA"),
    "WBC.AX": ("Westpac", "WBC"),
    "ANZ.AX": ("ANZ",),
    "NAB.AX": ("National Australia Bank", "NAB"),
}

# Words that make an article general market news (counted for the market, not a symbol).
DEFAULT_MARKET_ALIASES = (
    "ASX",
    "ASX 200",
    "S&P/ASX 200",
    "All Ordinaries",
    "sharemarket",
    "share market",
    "Australian shares",
    "local shares",
    "Reserve Bank",
    "RBA",
)

# Australian business news feeds (RSS 2.0). Any number may be configured; each is fetched with
# a conditional GET, at most once per ``rss.min_interval_s``.
DEFAULT_FEEDS = (
    "https://www.abc.net.au/news/feed/51892/rss.xml",
    "https://www.smh.com.au/rss/business.xml",
)

# How much an article counts, by publisher domain or feed host; others get default_source_weight.
DEFAULT_SOURCE_WEIGHTS: dict[str, float] = {
    "reuters.com": 1.0,
    "afr.com": 1.0,
    "bloomberg.com": 1.0,
    "abc.net.au": 0.9,
    "smh.com.au": 0.9,
    "theaustralian.com.au": 0.9,
    "marketindex.com.au": 0.8,
    "finance.yahoo.com": 0.7,
    "fool.com.au": 0.5,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class MarketAuxConfig:
    enabled: bool = True
    base_url: str = "https://api.marketaux.com/v1"
    # Requests per UTC day the plan allows (free plan: 100). Counted and kept across restarts.
    daily_quota: int = 100
    # Articles asked for per request (the free plan returns at most 3).
    articles_per_request: int = 3
    # The first fetch of a symbol looks this far back; later ones start from the newest article.
    lookback_hours: int = 72
    # A symbol is fetched at most this often (each fetch costs one request of the quota).
    min_interval_s: float = 1800.0
    timeout_s: float = 10.0
    # Attempts after the first for timeouts, connection errors and 5xx answers.
    retries: int = 2
    retry_backoff_s: float = 1.0
    # After a 429 without Retry-After, no request for this long.
    rate_limit_backoff_s: float = 60.0
    # After a failure (unreachable after retries, a server error, an answer it cannot read).
    failure_backoff_s: float = 300.0
    # After a refused token (401/403), no request for this long.
    auth_failure_backoff_s: float = 3600.0
    # Extra filters for one market-wide request per refresh (empty: none), e.g. countries = "au".
    market_query: Mapping[str, str] = field(default_factory=lambda: {"countries": "au"})
    # match_score at or above this counts as full relevance (MarketAux scores run 0 to ~100).
    full_match_score: float = 50.0

    def __post_init__(self) -> None:
        if self.daily_quota < 0 or self.articles_per_request < 1 or self.lookback_hours < 1:
            raise ValueError("marketaux: daily_quota >= 0, articles_per_request and lookback_hours >= 1")
        if self.timeout_s <= 0 or self.retries < 0 or self.full_match_score <= 0:
            raise ValueError("marketaux: timeout_s and full_match_score must be positive, retries >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class RssConfig:
    enabled: bool = True
    feeds: tuple[str, ...] = DEFAULT_FEEDS
    min_interval_s: float = 900.0
    timeout_s: float = 10.0
    # A feed that failed is tried again after this long.
    failure_backoff_s: float = 300.0
    max_feed_bytes: int = 5_000_000

    def __post_init__(self) -> None:
        bad = [url for url in self.feeds if not url.startswith(("http://", "https://"))]
        if bad:
            raise ValueError(f"rss.feeds: {bad[0]!r} is not an http(s) URL")
        if self.timeout_s <= 0 or self.max_feed_bytes < 1024:
            raise ValueError("rss: timeout_s must be positive and max_feed_bytes at least 1024")


@dataclass(frozen=True, slots=True, kw_only=True)
class SentimentConfig:
    symbols: tuple[str, ...] = BIG4
    # The Big 4 view: mean, dispersion and consensus over these symbols.
    big4: tuple[str, ...] = BIG4
    # The key general market news is stored under.
    market_symbol: str = "^AXJO"
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_ALIASES))
    market_aliases: tuple[str, ...] = DEFAULT_MARKET_ALIASES
    # Results are recomputed (and sources asked for news) at most this often per symbol.
    cache_ttl_s: float = 1800.0
    # Articles older than this do not count.
    window_days: int = 7
    # An article's weight halves every this many hours.
    half_life_hours: float = 24.0
    source_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_SOURCE_WEIGHTS))
    default_source_weight: float = 0.6
    # Use the provider's entity sentiment (MarketAux) when it has one; else our scorer's.
    prefer_provider_sentiment: bool = True
    # Effective article count at which volume gives 63% confidence (1 - 1/e).
    confidence_articles: float = 3.0
    # Big 4 dispersion (std of the four scores) above which the consensus is "mixed".
    consensus_max_dispersion: float = 0.25
    # Titles at least this similar (difflib ratio, after normalising) are the same story.
    duplicate_title_similarity: float = 0.9
    # Stored articles older than this are deleted (daily).
    keep_days: int = 90
    marketaux: MarketAuxConfig = field(default_factory=MarketAuxConfig)
    rss: RssConfig = field(default_factory=RssConfig)

    def __post_init__(self) -> None:
        if not self.symbols:
            raise ValueError("symbols must name at least one symbol")
        missing = [symbol for symbol in self.big4 if symbol not in self.symbols]
        if missing:
            raise ValueError(f"big4: {missing[0]} is not in symbols")
        unknown = [symbol for symbol in self.aliases if symbol not in self.symbols]
        if unknown:
            raise ValueError(f"aliases: {unknown[0]} is not in symbols")
        empty = [symbol for symbol, names in self.aliases.items() if not all(name.strip() for name in names)]
        if empty:
            raise ValueError(f"aliases.{empty[0]}: aliases must not be empty")
        if self.cache_ttl_s < 0 or self.window_days < 1 or self.half_life_hours <= 0:
            raise ValueError("cache_ttl_s >= 0, window_days >= 1 and half_life_hours > 0")
        if not 0 < self.duplicate_title_similarity <= 1 or self.confidence_articles <= 0:
            raise ValueError("duplicate_title_similarity in (0, 1] and confidence_articles > 0")
        weights = [*self.source_weights.values(), self.default_source_weight]
        if any(not 0 <= weight <= 1 for weight in weights):
            raise ValueError("source weights must lie in [0, 1]")
        if self.keep_days < self.window_days:
            raise ValueError("keep_days must be at least window_days")

    @property
    def scopes(self) -> tuple[str, ...]:
        """Every key articles are stored under: the symbols and the market."""
        return (*self.symbols, self.market_symbol)


register_section("sentiment", SentimentConfig)
